"""Lock helpers for OCS operations: ``@locked`` tasks and yielding process loops.

They replace the prologue socs agents copy into every operation::

    with self.lock.acquire_timeout(timeout=3, job='set_heater') as acquired:
        if not acquired:
            self.log.warn(f"Could not start Task because {self.lock.job} is already running")
            return False, "Could not acquire lock."

and the acquisition loop that yields the lock once a second. Refusals say who
holds the lock, for how long and how many wait::

    (False, "Could not acquire lock 'hw': held by 'acq' (session 12) for 3.4 s; 1 waiting")
"""
import functools
import threading
import time

from twisted.internet import defer
from twisted.python import threadable

from .errors import LockClosed
from .lock import Cancel, TimeoutLock, check_timeout
from .why import lock_reason

__all__ = ['locked', 'refusal', 'YieldingHold']


def refusal(lock, timeout=None):
    """The standard one-line refusal for a lock that could not be acquired
    (the text is :meth:`LockStatus.refusal <ocs_locking.status.LockStatus.refusal>`)."""
    return lock.status().refusal(timeout)


def _refused(lock, session, timeout=None):
    """``(False, text)`` of a refusal; the session's data gets the same facts
    as a structured reason under ``refused`` (:func:`ocs_locking.why.lock_reason`:
    target, kind, holder, held_for, left, waiting, text), so that a client
    or schedule can act on it without parsing the text."""
    reason = lock_reason(lock.status(), timeout)
    data = getattr(session, 'data', None)
    if isinstance(data, dict):
        data['refused'] = reason
    return False, reason['text']


def _resolve(owner, lock):
    found = getattr(owner, lock, None) if isinstance(lock, str) else lock
    if not isinstance(found, TimeoutLock):
        raise TypeError(f'@locked: {lock!r} is not a TimeoutLock on {type(owner).__name__}')
    return found


def locked(lock='lock', timeout=3.0, job=None):
    """Run an OCS operation method while holding a :class:`TimeoutLock`.

    Decorates ``def op(self, session, params)``. The lock is taken with
    ``timeout`` before the body runs and released on every outcome (return,
    exception, failed Deferred). If it cannot be taken in time the operation
    returns ``(False, refusal)`` without running the body. The job is named
    after the operation (``session.op_name``) unless ``job`` is given, and the
    session id is recorded, so refusals and lock status say exactly who holds.

    Works for ``blocking=True`` operations (they wait in their worker thread)
    and for reactor operations (``blocking=False``; they wait through
    :meth:`TimeoutLock.acquire_deferred` and may return a Deferred, e.g. with
    ``@inlineCallbacks`` placed *below* ``@locked``). Put ``@ocs_agent.param``
    decorators above it, as ocs asks.

    Args:
        lock (str or TimeoutLock): attribute of ``self`` holding the lock
            (default ``'lock'``), or the lock itself.
        timeout (float): seconds to wait; 0 tries once; -1 waits forever.
        job (str): job name; default: the operation's name.
    """
    timeout = check_timeout(timeout)
    if job is not None and not isinstance(job, str):
        raise TypeError(f'@locked: job must be a string or None, not {job!r}')

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(self, session, params):
            lk = _resolve(self, lock)
            op = getattr(session, 'op_name', None) or fn.__name__
            name = job or op
            sid = getattr(session, 'session_id', None)
            if threadable.isInIOThread():
                return _run_on_reactor(lk, timeout, name, op, sid, fn, self, session, params)
            try:
                hold = lk.acquire_timeout(timeout, job=name, op=op, session_id=sid)
                acquired = hold.__enter__()
            except LockClosed:
                return _refused(lk, session)
            try:
                if not acquired:
                    return _refused(lk, session, timeout)
                return fn(self, session, params)
            finally:
                hold.__exit__(None, None, None)
        wrapper.__wrapped_lock__ = lock
        return wrapper
    return decorate


@defer.inlineCallbacks
def _run_on_reactor(lk, timeout, name, op, sid, fn, self, session, params):
    try:
        acquired = yield lk.acquire_deferred(timeout, job=name, op=op, session_id=sid)
    except LockClosed:
        return _refused(lk, session)
    if not acquired:
        return _refused(lk, session, timeout)
    try:
        result = yield defer.maybeDeferred(fn, self, session, params)
    finally:
        lk.release()
    return result


class YieldingHold:
    """A process's hold on a lock that it lends to waiting tasks.

    For acquisition loops in blocking processes. :meth:`run` takes the lock,
    then yields once per sample while holding it. Between samples it sleeps
    until the next sample time, and whenever someone waits for the lock during
    that sleep it hands the lock over at once (``release_and_acquire``) and
    takes it back, waiting at most ``retake_timeout``. So a task waits at most
    for the sample in progress, never for a whole yield period, and the loop
    never hands over when nobody waits.

    :meth:`stop` (the process's stopper, any thread) ends the loop at once,
    also while it sleeps or waits to take the lock back. If the lock cannot be
    taken back, the loop ends and :attr:`result` says why. The lock state is
    kept in ``session.data['lock']`` at every sample::

        {'holder': 'acq', 'session_id': 3, 'since': 1700000000.0, 'waiters': 0,
         'handovers': 12}

    Example::

        def acq(self, session, params):
            for n in self.acq_hold.run(session, period=0.1):
                session.data.update(self.device.read())
            return self.acq_hold.result

        def _stop_acq(self, session, params):
            return self.acq_hold.stop()

    Args:
        lock (TimeoutLock): the lock shared with the tasks.
        job (str): job name while holding; default: the operation's name.
        timeout (float): how long :meth:`run` waits for the lock at the start.
        retake_timeout (float): how long to wait to take the lock back after
            lending it.
    """

    def __init__(self, lock, job=None, *, timeout=3.0, retake_timeout=10.0):
        if not isinstance(lock, TimeoutLock):
            raise TypeError(f'lock must be a TimeoutLock, not {lock!r}')
        self.lock = lock
        self.job = job
        self.timeout = check_timeout(timeout)
        self.retake_timeout = check_timeout(retake_timeout)
        self.result = None
        self.handovers = 0
        self._guard = threading.Lock()
        self._cancel = None      # set while running; None when idle
        self._nudge = threading.Event()

    @property
    def running(self):
        return self._cancel is not None

    def stop(self):
        """Ask the loop to end now. Returns ``(ok, message)`` for a stopper."""
        with self._guard:
            cancel = self._cancel
        if cancel is None:
            return False, 'Not running.'
        cancel.cancel()
        self._nudge.set()
        return True, 'Requested stop.'

    def _on_event(self, ev):
        if ev.event == 'waiting':
            self._nudge.set()

    def run(self, session, period):
        """Hold the lock and yield the sample number once per ``period`` seconds.

        Ends when stopped, or when the lock cannot be taken (at the start) or
        taken back; :attr:`result` is then ``(ok, message)`` to return.
        """
        if not isinstance(period, (int, float)) or isinstance(period, bool) \
                or not 0 < period < float('inf'):
            raise ValueError(f'period must be a number of seconds > 0, not {period!r}')
        with self._guard:
            if self._cancel is not None:
                raise RuntimeError(f"YieldingHold on lock '{self.lock.name}' is already running")
            self._cancel = cancel = Cancel()
        self.result = None
        self.handovers = 0
        self._nudge.clear()
        lock = self.lock
        op = getattr(session, 'op_name', None)
        sid = getattr(session, 'session_id', None)
        lock.add_listener(self._on_event)
        n = 0
        try:
            if not lock.acquire(self.timeout, job=self.job or op, op=op, session_id=sid,
                                cancel=cancel):
                self.result = (True, 'Stopped before the lock was acquired.') \
                    if cancel.cancelled else (False, refusal(lock, self.timeout))
                return
            next_sample = time.monotonic()
            while not cancel.cancelled:
                n += 1
                self._publish(session)
                yield n
                next_sample = max(next_sample + period, time.monotonic())
                if not self._lend_until(next_sample, cancel):
                    break
            if self.result is None:
                self.result = (True, f'Stopped on request after {n} samples.')
        except LockClosed:
            self.result = (True, f"Stopped after {n} samples: lock '{lock.name}' was "
                                 f"closed (the agent is shutting down).")
        finally:
            if self.result is None:     # the caller left the loop early
                self.result = (True, f'Ended after {n} samples.')
            lock.remove_listener(self._on_event)
            if lock.held_by_me():
                lock.release()
            with self._guard:
                self._cancel = None

    def _lend_until(self, deadline, cancel):
        """Sleep until ``deadline``, lending the lock to whoever waits.

        Returns False when the loop must end (stopped, or the lock was not
        taken back)."""
        lock = self.lock
        while not cancel.cancelled:
            if lock.waiting():
                self.handovers += 1
                if not lock.release_and_acquire(self.retake_timeout, cancel=cancel):
                    if not cancel.cancelled:
                        self.result = (False, (
                            f'Stopped: could not take the lock back within '
                            f'{self.retake_timeout:g} s. ' + refusal(lock)))
                    return False
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._nudge.clear()
            if lock.waiting():      # arrived between the check and the clear
                continue
            self._nudge.wait(remaining)
        return False

    def _publish(self, session):
        st = self.lock.status()
        h = st.holder
        session.data['lock'] = {
            'holder': h.job if h else None,
            'session_id': h.session_id if h else None,
            'since': h.since if h else None,
            'waiters': len(st.waiters),
            'handovers': self.handovers,
        }
