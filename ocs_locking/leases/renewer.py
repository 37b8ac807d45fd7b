"""One renewal thread per process for every Reservation.

A Reservation does not start (and, when it ends, join) a thread of its own:
entering and leaving one would then each wait for a thread to be scheduled,
which on a busy machine costs more than the lease calls themselves. It hands
itself to the process's :class:`Renewer` instead, which calls
``renew_once()`` on each holder when it falls due and reschedules it by the
delay that returns (``None``: done).
"""
import logging
import threading
import time

__all__ = ['Renewer', 'shared_renewer']

log = logging.getLogger(__name__)

#: The renewal thread ends after this many seconds with nothing to renew.
IDLE = 5.0
#: The longest a caller waits for a renewal in flight (of its own holder).
BUSY_WAIT = 15.0


class Renewer:
    """Calls ``holder.renew_once()`` when each holder's renewal is due.

    Args:
        clock: monotonic time source.
        thread (bool): run the schedule on a daemon thread (started on first
            use, ended after IDLE seconds with nothing to do); ``False``:
            the owner calls :meth:`run_due` (tests).

    ``add`` and ``remove`` never wait for the thread to be scheduled, except
    that ``remove`` waits (at most BUSY_WAIT s) for a renewal of that very
    holder already in flight, so that nothing is renewed after it returns.
    """

    def __init__(self, clock=time.monotonic, thread=True):
        self.clock = clock
        self._use_thread = thread
        self._cond = threading.Condition()
        self._due = {}          # holder -> clock time of its next renewal
        self._busy = None       # the holder being renewed now
        self._thread = None

    def add(self, holder, delay):
        """Renew ``holder`` in ``delay`` seconds (and then as it says)."""
        with self._cond:
            self._due[holder] = self.clock() + delay
            if self._use_thread and self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name='ocs_locking lease renewer')
                self._thread.start()
            self._cond.notify_all()

    def remove(self, holder):
        """Stop renewing ``holder``; returns once no renewal of it runs."""
        with self._cond:
            self._due.pop(holder, None)
            if self._busy is holder and threading.current_thread() is not self._thread:
                self._cond.wait_for(lambda: self._busy is not holder, BUSY_WAIT)

    def scheduled(self, holder):
        with self._cond:
            return holder in self._due or self._busy is holder

    def next_due(self):
        """The clock time of the next renewal, or None."""
        with self._cond:
            return min(self._due.values(), default=None)

    def run_due(self):
        """Run every renewal due by now (on the calling thread); returns how many."""
        n = 0
        while True:
            with self._cond:
                holder = self._pop_due()
                if holder is None:
                    return n
            self._renew(holder)
            n += 1

    # -- internals ----------------------------------------------------------------

    def _pop_due(self):
        now = self.clock()
        due = [(t, id(h), h) for h, t in self._due.items() if t <= now]
        if not due:
            return None
        holder = min(due)[2]
        del self._due[holder]
        self._busy = holder
        return holder

    def _renew(self, holder):
        delay = None
        try:
            delay = holder.renew_once()
        except Exception:
            log.exception('renewal of %r failed', holder)
        finally:
            with self._cond:
                self._busy = None
                if delay is not None and holder.renewing:
                    self._due[holder] = self.clock() + delay
                self._cond.notify_all()

    def _run(self):
        while True:
            with self._cond:
                holder = self._pop_due()
                if holder is None:
                    nxt = min(self._due.values(), default=None)
                    wait = IDLE if nxt is None else max(0.0, nxt - self.clock())
                    self._cond.wait(wait)
                    if not self._due and nxt is None and self._busy is None:
                        self._thread = None         # idle: end; add() starts another
                        return
                    continue
            self._renew(holder)


_SHARED = None
_SHARED_LOCK = threading.Lock()


def shared_renewer():
    """The process's Renewer (on ``time.monotonic``)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Renewer()
        return _SHARED
