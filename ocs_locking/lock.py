"""TimeoutLock: one FIFO lock shared by worker threads and the Twisted reactor.

Contract
--------
* **Single owner, not re-entrant.** A grant belongs to the thread that asked for
  it (for :meth:`TimeoutLock.acquire_deferred`, the reactor thread). Only that
  thread may :meth:`~TimeoutLock.release`; anyone else gets :class:`NotOwner`.
* **FIFO.** Waiters are served strictly in arrival order, whether they wait in a
  thread or through a Deferred. A release hands the lock directly to the first
  waiter, so nobody can barge in between. :meth:`~TimeoutLock.release_and_acquire`
  queues the holder behind everyone already waiting.
* **One deadline.** ``timeout`` is measured once, from the call, on a monotonic
  clock: ``0`` tries once, ``-1`` waits forever, ``None`` uses the default.
* **Never freezes the reactor.** A thread call (:meth:`~TimeoutLock.acquire`,
  :meth:`~TimeoutLock.acquire_timeout`, :meth:`~TimeoutLock.release_and_acquire`)
  made on the reactor thread is served at once when it needs no wait (the lock
  is free, or nobody is queued), exactly as ocs's lock serves it. When it would
  have to wait it returns False at once, as if ``timeout`` were 0, and logs one
  warning naming the lock, the job and the holder. With ``strict_reactor=True``
  any such call with ``timeout != 0`` raises :class:`ReactorBlockingError`
  instead, free or not. Reactor code that must wait uses
  :meth:`~TimeoutLock.acquire_deferred`; Deferred waiters are created on the
  reactor thread and woken through ``reactor.callFromThread``.
* **Shutdown.** :meth:`~TimeoutLock.close` wakes every waiter with
  :class:`LockClosed` and refuses new acquires; the holder may still release.
* **Observable.** :meth:`~TimeoutLock.status` returns a frozen snapshot;
  listeners receive :class:`~ocs_locking.status.LockEvent` values in ``seq``
  order, outside the internal mutex (:mod:`ocs_locking.listeners`).

This module knows nothing of OCS or the network: Twisted is used only for
Deferreds and, lazily, the reactor to schedule timeouts.
"""
import logging
import math
import threading
import time
from collections import deque
from itertools import islice

from twisted.internet import defer
from twisted.python import threadable as _threadable

from .errors import LockClosed, LockTimeout, NotOwner, ReactorBlockingError
from .listeners import Listeners
from .status import (HolderInfo, LockCounters, LockEvent, LockStatus, QueuedWaiter,
                     WaiterInfo)
from .wire import QUEUE_SHOWN

__all__ = ['TimeoutLock', 'Cancel', 'NotOwner', 'LockClosed', 'ReactorBlockingError',
           'LockTimeout']

log = logging.getLogger(__name__)

_get_ident = threading.get_ident
_monotonic = time.monotonic
_MAX_WAIT = threading.TIMEOUT_MAX
_inf = math.inf

# Waiter states. A waiter leaves WAITING exactly once, under the mutex.
_WAITING, _GRANTED, _GAVE_UP, _CANCELLED, _CLOSED = range(5)


def check_timeout(timeout):
    """Validate a timeout: a number >= 0, or -1 (or +inf) to wait forever.

    Returns the value to use (-1 for forever); raises TypeError/ValueError
    with a one-line message otherwise. ``None`` is not accepted here.
    """
    t = type(timeout)
    if (t is int or t is float) and 0 <= timeout < _inf:
        return timeout
    if t is bool or not isinstance(timeout, (int, float)):
        raise TypeError(f'timeout must be a number or None, not {t.__name__} {timeout!r}')
    if timeout == -1 or timeout == _inf:
        return -1
    if timeout >= 0:
        return float(timeout)
    raise ValueError(f'timeout must be >= 0 or -1 (wait forever), not {timeout!r}')


def _thread_name(ident):
    for t in threading.enumerate():
        if t.ident == ident:
            return t.name
    return str(ident)


class _Waiter:
    __slots__ = ('job', 'op', 'session_id', 'owner', 'since', 'state',
                 'wake', 'deferred', 'timer', 'token')

    def __init__(self, job, op, session_id, owner, since):
        self.job = job
        self.op = op
        self.session_id = session_id
        self.owner = owner
        self.since = since
        self.state = _WAITING
        self.wake = None       # threading.Lock held until granted or closed
        self.deferred = None   # or the Deferred handed to reactor code
        self.timer = None
        self.token = 0         # the grant's token, once granted


class Cancel:
    """A token that ends a thread's wait for a lock early.

    Pass it as ``cancel=`` to :meth:`TimeoutLock.acquire` or
    :meth:`TimeoutLock.release_and_acquire`; :meth:`cancel` (from any thread)
    makes a wait in progress return False at once, and any later wait with
    this token return False without waiting. Used to stop a process that is
    waiting for its lock.
    """
    __slots__ = ('_guard', '_cancelled', '_pending')

    def __init__(self):
        self._guard = threading.Lock()
        self._cancelled = False
        self._pending = None    # (lock, waiter) while a wait is in progress

    @property
    def cancelled(self):
        return self._cancelled

    def cancel(self):
        with self._guard:
            self._cancelled = True
            pending, self._pending = self._pending, None
        if pending is not None:
            pending[0]._abort(pending[1])

    def _attach(self, lock, w):
        # Called with lock._mutex held. Returns False if already cancelled.
        with self._guard:
            if self._cancelled:
                return False
            self._pending = (lock, w)
            return True

    def _detach(self, w):
        with self._guard:
            if self._pending is not None and self._pending[1] is w:
                self._pending = None


class _AcquireTimeout:
    """Context manager returned by :meth:`TimeoutLock.acquire_timeout`."""
    __slots__ = ('_lock', '_timeout', '_job', '_op', '_session_id', '_owner')

    def __init__(self, lock, timeout, job, op, session_id):
        self._lock = lock
        self._timeout = timeout
        self._job = job
        self._op = op
        self._session_id = session_id
        self._owner = None

    def __enter__(self):
        lock = self._lock
        if lock._acquire(self._timeout, self._job, self._op, self._session_id):
            self._owner = lock._owner       # this thread: only it can change it now
            return True
        return False

    def __exit__(self, *exc):
        # Release only a hold this thread still has: after a failed
        # release_and_acquire the lock belongs to someone else (ocs released it
        # anyway, letting two threads talk to the hardware at once). Only this
        # thread can change _owner away from itself, so the check is exact.
        owner = self._owner
        if owner is not None:
            lock = self._lock
            if lock._owner == owner and not lock._by_deferred:
                # release() without its owner check, just made
                with lock._mutex:
                    w = lock._release_locked()
                if w is not None:
                    lock._wake(w)
                if lock._events:
                    lock._listeners.run()
        return False


class _Hold(_AcquireTimeout):
    """Context manager returned by :meth:`TimeoutLock.hold`: raises if not acquired."""
    __slots__ = ()

    def __enter__(self):
        if not _AcquireTimeout.__enter__(self):
            raise LockTimeout(
                f'could not acquire {self._lock.status().describe()}')
        return self._lock


class TimeoutLock:
    """A fair, owner-checked lock with timeouts, for OCS agents.

    Drop-in for :class:`ocs.ocs_twisted.TimeoutLock`: same methods, arguments
    and return values. See the module docstring for the full contract.

    Args:
        default_timeout (float): timeout used when a call passes ``None``
            (default 0: try once).
        name (str): name used in messages, status and events.
        reactor: the Twisted reactor used by :meth:`acquire_deferred` to
            schedule timeouts and wake-ups; defaults to the global reactor,
            looked up on first use. Tests may pass a
            :class:`twisted.internet.task.Clock` with ``callFromThread``.
        strict_reactor (bool): if True, every thread call with ``timeout != 0``
            made on the reactor thread raises :class:`ReactorBlockingError`,
            even when the lock is free (it finds reactor code that would
            freeze the reactor under contention). Default False: such a call
            is served when it needs no wait, and returns False at once with a
            logged warning when it would.
    """

    def __init__(self, default_timeout=0, *, name='lock', reactor=None, strict_reactor=False):
        if not isinstance(name, str) or not name:
            raise TypeError(f'name must be a non-empty string, not {name!r}')
        if type(strict_reactor) is not bool:
            raise TypeError(f'strict_reactor must be True or False, not {strict_reactor!r}')
        self.name = name
        self._default_timeout = 0
        self._default_timeout = self._check_timeout(default_timeout)
        self._reactor = reactor
        self._strict_reactor = strict_reactor
        self._mutex = threading.Lock()
        # Holder state, changed only under the mutex by a grant or a release.
        # Invariant: _owner is None => _waiters is empty (a release hands the
        # lock straight to the first waiter).
        # Invariant: _by_deferred, _op, _session_id and _since describe the
        # holder only while _owner is not None (every grant sets them); _job
        # is None whenever _owner is None.
        self._owner = None          # thread ident of the holder
        self._by_deferred = False   # granted through acquire_deferred
        self._job = None
        self._op = None
        self._session_id = None
        self._since = 0.0           # monotonic time of the grant
        self._waiters = deque()     # of _Waiter, FIFO
        self._closed = False
        # Counters (see LockCounters). Derived, not stored: the holder's token
        # is _n_acquired (every grant takes the next number), and released is
        # _n_acquired minus 1 while the lock is held.
        self._n_acquired = 0
        self._n_timed_out = 0
        self._n_cancelled = 0
        self._n_handoffs = 0
        self._longest_hold = 0.0
        self._longest_wait = 0.0
        # Events are put under the mutex (so seq order is the order of the
        # changes) and delivered after it is let go.
        self._listeners = Listeners(f"TimeoutLock '{name}'")
        self._events = self._listeners.queue    # the same deque: a cheap "any to deliver?"
        self._seq = 0

    # -- argument checks (before any state is touched) ----------------------

    def _check_timeout(self, timeout):
        if timeout is None:
            return self._default_timeout
        t = type(timeout)
        if (t is int or t is float) and 0 <= timeout < _inf:
            return timeout
        return check_timeout(timeout)

    @staticmethod
    def _check_job(job, op, session_id):
        if job is not None and type(job) is not str:
            raise TypeError(f'job must be a string or None, not {type(job).__name__} {job!r}')
        if op is not None and type(op) is not str:
            raise TypeError(f'op must be a string or None, not {type(op).__name__} {op!r}')
        if session_id is not None and (type(session_id) is not int):
            raise TypeError(f'session_id must be an int or None, not '
                            f'{type(session_id).__name__} {session_id!r}')

    def _refuse_on_reactor(self, what, timeout):
        raise ReactorBlockingError(
            f"{what}(timeout={timeout!r}) on TimeoutLock '{self.name}' would "
            f"block the reactor thread; use acquire_deferred() or timeout=0")

    def _reactor_wait_message(self, what, timeout, job, outcome):
        # mutex held. One line: the lock, the call, the job, who is in the way.
        return (f"TimeoutLock '{self.name}': {what}(timeout={timeout!r}) for job {job!r} "
                f"on the reactor thread returned False at once: {outcome}, "
                f"{len(self._waiters)} waiting (waiting here would freeze the reactor; "
                f"reactor code waits with acquire_deferred())")

    # -- the one grant path and the one release path (mutex held) -----------

    def _grant(self, owner, by_deferred, job, op, session_id, wake=None):
        """Make the grant; a thread waiter's ``wake`` is released as early as
        possible. Returns the (monotonic) time of the grant."""
        self._owner = owner
        self._by_deferred = by_deferred
        self._job = job
        if wake is not None:
            # A thread waiter reads only its own state and the fields set
            # above (``held_by_me``, ``job``); everything else is read under
            # the mutex, still held. Waking it first shortens the hand-off.
            wake.release()
        self._op = op
        self._session_id = session_id
        self._since = now = _monotonic()
        self._n_acquired += 1
        if self._listeners.fns:
            self._queue_event('acquired', job, op, session_id, now, self._n_acquired)
        return now

    def _release_locked(self):
        """End the current hold: hand the lock to the first waiter, or free it.

        A thread waiter is woken here (see :meth:`_grant`). Returns a
        Deferred waiter that the caller must wake with :meth:`_wake` after
        letting go of the mutex, or None.
        """
        since = self._since
        if self._listeners.fns:
            self._queue_event('released', self._job, self._op, self._session_id,
                              since, self._n_acquired)
        if self._waiters:
            w = self._waiters.popleft()
            w.state = _GRANTED
            now = self._grant(w.owner, w.deferred is not None, w.job, w.op, w.session_id,
                              w.wake)
            w.token = self._n_acquired
            self._n_handoffs += 1
            waited = now - w.since
            if waited > self._longest_wait:
                self._longest_wait = waited
        else:
            w = self._owner = self._job = None
            now = _monotonic()
        held = now - since
        if held > self._longest_hold:
            self._longest_hold = held
        return w if w is not None and w.wake is None else None

    def _wake(self, w):
        """Tell a waiter its state changed (mutex NOT held)."""
        if w.deferred is None:
            w.wake.release()
        else:
            self._get_reactor().callFromThread(self._settle_deferred, w)

    # -- thread API ---------------------------------------------------------

    @property
    def job(self):
        """The job name of the current holder, or None when free."""
        return self._job

    def acquire(self, timeout=None, job=None, *, op=None, session_id=None, cancel=None):
        """Acquire the lock, waiting at most ``timeout`` seconds.

        Args:
            timeout (float): None for the default timeout; 0 to try once; -1
                to wait forever; > 0 for one deadline for the whole call.
            job (str): name recorded as the holder's job (``lock.job``).
            op (str): the OCS operation taking the lock, for status/events.
            session_id (int): that operation's session id.
            cancel (Cancel): a token whose ``cancel()`` ends the wait early
                (the call then returns False).

        Returns:
            bool: True if this thread now holds the lock. On the reactor
            thread a call that would have to wait returns False at once and
            logs a warning (see the module docstring).

        Raises:
            ReactorBlockingError: timeout != 0 on the reactor thread, for a
                lock made with ``strict_reactor=True``.
            LockClosed: the lock is closed, or was closed while waiting.
            RuntimeError: this thread already holds the lock and would wait
                for itself.
        """
        timeout = self._check_timeout(timeout)
        if (job is not None and type(job) is not str) or op is not None \
                or session_id is not None:
            self._check_job(job, op, session_id)
        if cancel is not None and not isinstance(cancel, Cancel):
            raise TypeError(f'cancel must be a Cancel token or None, not {cancel!r}')
        return self._acquire(timeout, job, op, session_id, cancel)

    def _acquire(self, timeout, job, op, session_id, cancel=None):
        # Arguments already checked.
        me = _get_ident()
        if self._strict_reactor and timeout != 0 and _threadable.ioThread == me:
            self._refuse_on_reactor('acquire', timeout)
        with self._mutex:
            if self._owner is None and not self._closed:
                self._grant(me, False, job, op, session_id)
                if not self._events:
                    return True
                granted = True
            elif self._closed:
                raise LockClosed(f"TimeoutLock '{self.name}' is closed")
            elif timeout == 0:
                return False
            elif self._owner == me and not self._by_deferred:
                raise RuntimeError(
                    f"TimeoutLock '{self.name}' is already held by this thread "
                    f"(job {self._job!r}); it is not re-entrant")
            elif _threadable.ioThread == me:
                warning = self._reactor_wait_message('acquire', timeout, job,
                                                     f'held by job {self._job!r}')
                granted = False
            else:
                warning = None
                now = _monotonic()     # the deadline counts from here
                w = self._enqueue_thread(job, op, session_id, me, now, cancel)
                granted = None if w is not None else False
        if self._events:
            self._listeners.run()
        if granted is None:
            # The first wait is inlined: a waiter woken with the grant returns
            # with the least work (it is on the hand-off's critical path).
            wake = w.wake
            if timeout == -1:
                deadline = None
                woken = wake.acquire()
            else:
                deadline = now + timeout
                left = deadline - _monotonic()
                woken = left > 0 and wake.acquire(True, left if left < _MAX_WAIT else _MAX_WAIT)
            if woken and w.state == _GRANTED and cancel is None:
                return True
            return self._wait(w, deadline, cancel, woken)
        if not granted and warning is not None:
            log.warning(warning)
        return granted

    def _enqueue_thread(self, job, op, session_id, me, now, cancel=None):
        """Queue a thread waiter (mutex held); None if ``cancel`` already fired."""
        w = _Waiter(job, op, session_id, me, now)
        if cancel is not None and not cancel._attach(self, w):
            return None
        w.wake = threading.Lock()
        w.wake.acquire()
        self._waiters.append(w)
        if self._listeners.fns:
            self._queue_event('waiting', job, op, session_id, now, 0)
        return w

    def _wait(self, w, deadline, cancel=None, woken=False):
        """Block until ``w`` is granted, closed, cancelled or the deadline
        passes (``woken``: its wake lock was already taken)."""
        wake = w.wake
        if woken:
            pass
        elif deadline is None:
            woken = wake.acquire()
        else:
            while True:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                if wake.acquire(True, min(remaining, _MAX_WAIT)):
                    woken = True
                    break
        if woken:
            # Whoever released ``wake`` set the final state under the mutex first.
            state = w.state
        else:
            with self._mutex:
                state = w.state
                if state == _WAITING:
                    self._withdraw_locked(w, _GAVE_UP)
            if self._events:
                self._listeners.run()
        if cancel is not None:
            cancel._detach(w)
        if state == _GRANTED:
            return True
        if state == _CLOSED:
            raise LockClosed(f"TimeoutLock '{self.name}' was closed while waiting")
        return False

    def _withdraw_locked(self, w, state):
        """Take a waiting ``w`` out of the queue as timed out or cancelled
        (mutex held); the caller wakes it if it must."""
        self._waiters.remove(w)
        w.state = state
        if state == _GAVE_UP:
            self._n_timed_out += 1
        else:
            self._n_cancelled += 1
        if self._listeners.fns:
            self._queue_event('gave_up', w.job, w.op, w.session_id, w.since, 0)

    def _abort(self, w):
        """End a thread waiter's wait (its call returns False); see Cancel."""
        with self._mutex:
            if w.state != _WAITING:
                return
            self._withdraw_locked(w, _CANCELLED)
        w.wake.release()
        if self._events:
            self._listeners.run()

    def release(self):
        """Release the lock; only the holder may.

        If anyone waits, the lock passes directly to the first waiter.

        Raises:
            NotOwner: the calling thread does not hold the lock.
        """
        me = _get_ident()
        with self._mutex:
            if self._owner != me:
                raise NotOwner(self._not_owner_message('release'))
            w = self._release_locked()
        if w is not None:
            self._wake(w)
        if self._events:
            self._listeners.run()

    def _not_owner_message(self, what):
        if self._owner is None:
            return f"cannot {what} TimeoutLock '{self.name}': it is not held"
        return (f"cannot {what} TimeoutLock '{self.name}': it is held by job "
                f"{self._job!r} in another thread; only the holder may release it")

    def release_and_acquire(self, timeout=None, *, cancel=None):
        """Let every current waiter have the lock, then take it back.

        With nobody waiting this returns True at once and the caller keeps the
        lock. Otherwise the caller queues behind every waiter present now and
        waits at most ``timeout`` for its turn, keeping its job name. A
        :class:`Cancel` token passed as ``cancel`` ends that wait early. On
        the reactor thread, with someone waiting, the lock is handed on and
        the call returns False at once with a logged warning.

        Returns:
            bool: True if the caller holds the lock again. On False the caller
            does **not** hold the lock (and ``acquire_timeout`` will not
            release it on exit).

        Raises:
            NotOwner: the caller does not hold the lock.
            ReactorBlockingError: timeout != 0 on the reactor thread, for a
                lock made with ``strict_reactor=True``.
            LockClosed: the lock is closed (the caller's hold is released).
        """
        timeout = self._check_timeout(timeout)
        if cancel is not None and not isinstance(cancel, Cancel):
            raise TypeError(f'cancel must be a Cancel token or None, not {cancel!r}')
        me = _get_ident()
        if self._strict_reactor and timeout != 0 and _threadable.ioThread == me:
            self._refuse_on_reactor('release_and_acquire', timeout)
        mine = warning = None
        with self._mutex:
            if self._owner != me:
                raise NotOwner(self._not_owner_message('release_and_acquire'))
            if not self._waiters and not self._closed:
                return True
            now = _monotonic()
            job, op, session_id = self._job, self._op, self._session_id
            closed = self._closed
            if not closed and timeout != 0 and _threadable.ioThread == me:
                warning = self._reactor_wait_message(
                    'release_and_acquire', timeout, job,
                    f'it handed the lock to job {self._waiters[0].job!r}')
                timeout = 0
            w = self._release_locked()
            if not closed and timeout != 0:
                mine = self._enqueue_thread(job, op, session_id, me, now, cancel)
        if w is not None:
            self._wake(w)
        if self._events:
            self._listeners.run()
        if closed:
            raise LockClosed(f"TimeoutLock '{self.name}' is closed; the hold was released")
        if warning is not None:
            log.warning(warning)
        if mine is None:
            return False
        return self._wait(mine, None if timeout == -1 else now + timeout, cancel)

    def acquire_timeout(self, timeout=None, job='unnamed', *, op=None, session_id=None):
        """Context manager: try to acquire; yields True if acquired.

        On exit it releases the lock only if this thread still holds it, so a
        failed :meth:`release_and_acquire` inside the block never releases
        someone else's hold. Prefer :meth:`hold`, which cannot be misused::

            with lock.acquire_timeout(3, job='set_heater') as acquired:
                if not acquired:
                    return False, f'Lock held by {lock.job}'
                ...
        """
        if timeout is None:
            timeout = self._default_timeout
        elif not ((type(timeout) is int or type(timeout) is float) and 0 <= timeout < _inf):
            timeout = check_timeout(timeout)
        if (job is not None and type(job) is not str) or op is not None \
                or session_id is not None:
            self._check_job(job, op, session_id)
        return _AcquireTimeout(self, timeout, job, op, session_id)

    def hold(self, timeout=None, job=None, *, op=None, session_id=None):
        """Context manager that holds the lock or raises :class:`LockTimeout`.

        The body never runs unlocked; the lock is released on exit if still
        held by this thread.
        """
        timeout = self._check_timeout(timeout)
        self._check_job(job, op, session_id)
        return _Hold(self, timeout, job, op, session_id)

    # -- reactor API --------------------------------------------------------

    def _get_reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def acquire_deferred(self, timeout=None, job=None, *, op=None, session_id=None):
        """Acquire from reactor code; never blocks.

        Joins the same FIFO queue as thread waiters. Call it on the reactor
        thread. The grant belongs to the reactor thread: release it from
        reactor code with :meth:`release`.

        Returns:
            Deferred: fires True when acquired, False when ``timeout`` passes
            first (at once for ``timeout=0`` if the lock is busy); errbacks
            with :class:`LockClosed` if the lock is (or gets) closed.
            Cancelling it withdraws the request, or releases the lock if it
            had just been granted.
        """
        timeout = self._check_timeout(timeout)
        self._check_job(job, op, session_id)
        me = _get_ident()
        io = _threadable.ioThread
        if self._reactor is None and io is not None and io != me:
            raise RuntimeError(
                f"acquire_deferred on TimeoutLock '{self.name}' must be called "
                f"from the reactor thread; worker threads use acquire()")
        now = _monotonic()
        w = None
        with self._mutex:
            if self._closed:
                result = defer.fail(LockClosed(f"TimeoutLock '{self.name}' is closed"))
            elif self._owner is None:
                self._grant(me, True, job, op, session_id)
                result = defer.succeed(True)
            elif timeout == 0:
                result = defer.succeed(False)
            else:
                w = _Waiter(job, op, session_id, me, now)
                w.deferred = result = defer.Deferred(lambda d: self._cancel_deferred(w))
                self._waiters.append(w)
                if self._listeners.fns:
                    self._queue_event('waiting', job, op, session_id, now, 0)
        if w is not None and timeout > 0:
            w.timer = self._get_reactor().callLater(timeout, self._deferred_timed_out, w)
        if self._events:
            self._listeners.run()
        return result

    def _deferred_timed_out(self, w):
        w.timer = None
        with self._mutex:
            if w.state != _WAITING:
                return  # granted or closed: _settle_deferred fires it
            self._withdraw_locked(w, _GAVE_UP)
        if self._events:
            self._listeners.run()
        w.deferred.callback(False)

    def _cancel_deferred(self, w):
        handed = None
        with self._mutex:
            state = w.state
            if state == _WAITING:
                self._waiters.remove(w)
            elif state == _GRANTED and self._n_acquired == w.token:
                # Granted but not yet delivered: give it to the next in line.
                handed = self._release_locked()
            w.state = _CANCELLED
            if state in (_WAITING, _GRANTED):
                self._n_cancelled += 1
                if self._listeners.fns:
                    self._queue_event('gave_up', w.job, w.op, w.session_id, w.since, 0)
        if w.timer is not None and w.timer.active():
            w.timer.cancel()
        if handed is not None:
            self._wake(handed)
        if self._events:
            self._listeners.run()
        # Leaving the Deferred uncalled makes Twisted errback CancelledError.

    def _settle_deferred(self, w):
        """Deliver a grant or a close to a Deferred waiter (reactor thread)."""
        if w.timer is not None and w.timer.active():
            w.timer.cancel()
        w.timer = None
        if w.state == _GRANTED:
            w.deferred.callback(True)
        elif w.state == _CLOSED:
            w.deferred.errback(LockClosed(
                f"TimeoutLock '{self.name}' was closed while waiting"))
        # _CANCELLED: the Deferred already failed with CancelledError.

    # -- shutdown -----------------------------------------------------------

    def close(self):
        """Refuse new acquires and wake every waiter with :class:`LockClosed`.

        The current holder keeps the lock until it releases. Idempotent.
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            woken = list(self._waiters)
            self._waiters.clear()
            for w in woken:
                w.state = _CLOSED
            if self._listeners.fns:
                self._queue_event('closed', None, None, None, None, 0)
        for w in woken:
            self._wake(w)
        if self._events:
            self._listeners.run()

    @property
    def closed(self):
        return self._closed

    # -- observability ------------------------------------------------------

    def status(self):
        """A consistent :class:`~ocs_locking.status.LockStatus` snapshot."""
        with self._mutex:
            now = _monotonic()
            wall = time.time() - now
            holder = None
            held = self._owner is not None
            if held:
                holder = HolderInfo(
                    job=self._job, op=self._op, session_id=self._session_id,
                    thread=('reactor' if self._by_deferred else _thread_name(self._owner)),
                    since=wall + self._since, held_for=now - self._since,
                    token=self._n_acquired)
            waiters = tuple(
                WaiterInfo(job=w.job, op=w.op, session_id=w.session_id,
                           since=wall + w.since, waited_for=now - w.since,
                           reactor=w.deferred is not None)
                for w in self._waiters)
            counters = LockCounters(
                acquired=self._n_acquired, released=self._n_acquired - held,
                timed_out=self._n_timed_out, cancelled=self._n_cancelled,
                handoffs=self._n_handoffs, longest_hold=self._longest_hold,
                longest_wait=self._longest_wait)
            return LockStatus(name=self.name, holder=holder, waiters=waiters,
                              counters=counters, closed=self._closed)

    def waiting(self):
        """How many callers wait right now (a cheap read, no snapshot)."""
        return len(self._waiters)

    def held_by_me(self):
        """True if the calling thread holds the lock (reactor grants count
        for the reactor thread)."""
        return self._owner == _get_ident()

    def add_listener(self, fn):
        """Call ``fn(event)`` for every later :class:`LockEvent`.

        Listeners run in the thread that caused the event, outside the lock's
        mutex, one event at a time and in ``seq`` order; they may call
        :meth:`status`. An exception in a listener is logged and dropped.
        """
        if not callable(fn):
            raise TypeError(f'listener must be callable, not {fn!r}')
        with self._mutex:
            self._listeners.add(fn)

    def remove_listener(self, fn):
        with self._mutex:
            self._listeners.remove(fn)

    def _queue_event(self, event, job, op, session_id, since_mono, token):
        # mutex held: seq order == queue order == delivery order
        self._seq += 1
        wall = time.time() - _monotonic()      # wall-clock time of monotonic 0, now
        since = None if since_mono is None else wall + since_mono
        # the first QUEUE_SHOWN waiters (named tuples: cheap under the mutex)
        queue = tuple([QueuedWaiter(w.job, w.op, w.session_id, wall + w.since)
                       for w in islice(self._waiters, QUEUE_SHOWN)]) if self._waiters else ()
        self._listeners.put(LockEvent(
            lock=self.name, event=event, job=job, op=op, session_id=session_id,
            since=since, waiters=len(self._waiters), token=token, seq=self._seq,
            queue=queue))

    def __repr__(self):
        holder = 'free' if self._owner is None else f'held by {self._job!r}'
        state = ' closed' if self._closed else ''
        return (f"<TimeoutLock '{self.name}' {holder}, "
                f"{len(self._waiters)} waiting{state}>")
