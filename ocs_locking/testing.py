"""A kit for testing an agent's lock use without a crossbar router.

The agent class is built on a mocked ``OCSAgent`` (as socs's own tests do);
its operation methods are run in threads with a :class:`FakeSession`, their
``params`` processed by ocs's own ``@ocs_agent.param`` handling. A
:class:`LockProbe` records when each job waited for and got the lock, and a
:class:`LockHog` holds the lock from another thread to drive the hard cases
("the process cannot take the lock back", "stop while waiting")::

    from ocs_locking.testing import LockProbe, mock_agent, run_op, start_op

    def test_set_heater_gets_the_lock_while_acq_runs():
        sim = SimulatedDeviceAgent(mock_agent(), ...)
        probe = LockProbe(sim.lock)
        acq = start_op(sim.acq, {'rate': 10})
        probe.wait_for('acquired', job='acq')
        ok, msg = run_op(sim.set_heater, {'value': 5})
        assert ok, msg
        probe.assert_acquired_within('set_heater', 0.25)
        acq.stop(sim._stop_acq)
        assert acq.result()[0]

Every wait here is bounded (``timeout``, default 10 s) and fails with a
message saying what did not happen.
"""
import contextlib
import functools
import threading
import time
from unittest import mock

from .lock import TimeoutLock

__all__ = ['FakeSession', 'mock_agent', 'start_op', 'run_op', 'RunningOp',
           'LockProbe', 'LockHog', 'ReactorThread', 'short_timeouts']

WAIT = 10.0


class FakeSession:
    """Stands in for ``ocs.ocs_agent.OpSession`` in operation code."""

    def __init__(self, op_name='op', session_id=0):
        self.op_name = op_name
        self.session_id = session_id
        self.data = {}
        self.messages = []
        self.status = 'starting'
        self.degraded = False
        self.success = None
        self.app = None

    def set_status(self, status):
        if status not in ('starting', 'running', 'stopping', 'done'):
            raise ValueError(f'unknown session status {status!r}')
        self.status = status

    def add_message(self, message):
        self.messages.append((time.time(), message))


def mock_agent():
    """A MagicMock ``OCSAgent`` (register_feed, publish_to_feed, log, ...)."""
    return mock.MagicMock(name='OCSAgent')


def _params(fn, params):
    """Apply the operation's ``@ocs_agent.param`` declarations, as ocs does."""
    prescreen = getattr(fn, '_ocs_prescreen', None)
    if prescreen is None:
        return dict(params or {})
    from ocs.ocs_agent import ParamHandler
    return ParamHandler(dict(params or {})).batch(prescreen)


class RunningOp:
    """An operation running in its own thread, like a ``blocking=True`` op."""

    def __init__(self, fn, params=None, op_name=None, session_id=0):
        self.params = _params(fn, params)
        self.session = FakeSession(op_name or fn.__name__, session_id)
        self._fn = fn
        self._done = threading.Event()
        self._result = self._error = None
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f'op-{self.session.op_name}')
        self.thread.start()

    def _run(self):
        try:
            self.session.set_status('running')
            self._result = self._fn(self.session, self.params)
        except BaseException as e:
            self._error = e
        finally:
            self.session.set_status('done')
            self._done.set()

    @property
    def done(self):
        return self._done.is_set()

    def result(self, timeout=WAIT):
        """The operation's ``(ok, message)``; re-raises what it raised."""
        if not self._done.wait(timeout):
            raise AssertionError(f'{self.session.op_name} did not finish within {timeout} s')
        if self._error is not None:
            raise self._error
        return self._result

    def stop(self, stopper, params=None):
        """Call the process's stop function as ocs would; returns its result."""
        self.session.set_status('stopping')
        return stopper(self.session, params or {})


def start_op(fn, params=None, op_name=None, session_id=0):
    """Start ``fn(session, params)`` in a thread; returns a :class:`RunningOp`."""
    return RunningOp(fn, params, op_name, session_id)


def run_op(fn, params=None, op_name=None, session_id=0, timeout=WAIT):
    """Run an operation to completion in a thread and return its result."""
    return start_op(fn, params, op_name, session_id).result(timeout)


class LockProbe:
    """Records a lock's events with times so tests can wait on and measure them."""

    def __init__(self, lock):
        if not isinstance(lock, TimeoutLock):
            raise TypeError(f'LockProbe needs a TimeoutLock, not {lock!r}')
        self.lock = lock
        self.events = []        # (monotonic time, LockEvent)
        self._cond = threading.Condition()
        lock.add_listener(self._record)

    def _record(self, ev):
        with self._cond:
            self.events.append((time.monotonic(), ev))
            self._cond.notify_all()

    def close(self):
        self.lock.remove_listener(self._record)

    def kinds(self):
        """The kinds of the events seen so far, in order (``['acquired', ...]``)."""
        with self._cond:
            return [e.event for _, e in self.events]

    def _matching(self, event, job):
        return [(t, e) for t, e in self.events
                if e.event == event and (job is None or e.job == job)]

    def wait_for(self, event, job=None, n=1, timeout=WAIT):
        """Wait until ``n`` events of this kind (for ``job``) have happened."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._matching(event, job)) >= n, timeout)
        if not ok:
            raise AssertionError(f'no {event!r} event for job {job!r} within {timeout} s; '
                                 f'saw {[(e.event, e.job) for _, e in self.events]}')

    def waited(self, job, timeout=WAIT):
        """Seconds the job's last grant waited (0.0 if it got the lock at once).

        Measured from the events' own times (when the waiter queued, when it
        was granted), not from when they reached this probe: listeners are
        called after the change, outside the lock's mutex, so a grant may be
        delivered a moment after the acquiring call returned. If no grant of
        ``job`` has been delivered yet, waits up to ``timeout`` seconds for it.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._matching('acquired', job), timeout)
            got = self._matching('acquired', job)
            if not got:
                raise AssertionError(f'job {job!r} never acquired the lock')
            (_, grant), earlier = got[-1], got[:-1]
            queued = [e for _, e in self._matching('waiting', job) if e.seq < grant.seq]
            if not queued or (earlier and queued[-1].seq < earlier[-1][1].seq):
                return 0.0
            return max(0.0, grant.since - queued[-1].since)

    def assert_acquired_within(self, job, bound):
        """Fail unless the job's last grant came within ``bound`` seconds."""
        waited = self.waited(job)
        if waited > bound:
            raise AssertionError(f'job {job!r} waited {waited:.3f} s for the lock '
                                 f'(bound {bound} s)')
        return waited


#: The methods of TimeoutLock whose first argument is a timeout.
_TIMED_METHODS = ('acquire', 'acquire_timeout', 'acquire_deferred', 'release_and_acquire',
                  'hold')


@contextlib.contextmanager
def short_timeouts(lock, timeout=0.05):
    """Cap every wait for ``lock`` at ``timeout`` seconds inside the block.

    For refusal tests: an operation declared with ``@locked(timeout=3)`` (or
    a ``YieldingHold`` with ``timeout=10``) then gives up after ``timeout``
    seconds instead of its full timeout, so the test does not wait 3 s to see
    the refusal::

        with short_timeouts(agent.lock, 0.05):
            ok, msg = run_op(agent.set_value, {'value': 1.5})
        assert ok is False and msg.startswith("Could not acquire lock 'hw': held by")

    Every ``acquire``, ``acquire_timeout``, ``acquire_deferred``, ``hold``
    and ``release_and_acquire`` on this lock object, from any thread, waits
    at most ``timeout`` seconds while the block runs. A timeout of 0 (try
    once) and -1 (wait forever) are left as they are; ``None`` (the lock's
    default) is capped like a number. Messages that quote a timeout (e.g.
    ``YieldingHold``'s "could not take the lock back within 10 s") still
    quote the declared one. Waits already in progress keep their deadline.
    Blocks may nest; on exit the lock behaves as before.

    Args:
        lock (TimeoutLock): the lock whose waits to shorten.
        timeout (float): the longest wait, in seconds (> 0).
    """
    if not isinstance(lock, TimeoutLock):
        raise TypeError(f'short_timeouts needs a TimeoutLock, not {lock!r}')
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout < float('inf'):
        raise ValueError(f'short_timeouts: timeout must be seconds > 0, not {timeout!r}')
    before = type(lock)

    def cap(t):
        if t is None:
            t = getattr(lock, '_default_timeout', None)
            if t is None:
                return None
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            return t            # 0, -1 and bad values: the lock itself decides
        return min(t, timeout)

    def capped(name):
        method = getattr(before, name)

        @functools.wraps(method)
        def call(self, timeout=None, *args, **kwargs):
            return method(self, cap(timeout), *args, **kwargs)
        return call
    namespace = {name: capped(name) for name in _TIMED_METHODS if hasattr(before, name)}
    namespace['__slots__'] = ()
    lock.__class__ = type(before.__name__, (before,), namespace)
    try:
        yield lock
    finally:
        lock.__class__ = before


class LockHog:
    """Another operation that queues for the lock and holds it until released.

    Use it to make a process's re-take fail (hold longer than its
    ``retake_timeout``) or to keep a process waiting while it is stopped.
    """

    def __init__(self, lock, job='hog'):
        self.lock = lock
        self.job = job
        self._holding = threading.Event()
        self._let_go = threading.Event()
        self._thread = None

    def start(self, timeout=-1):
        """Queue for the lock in a thread; returns at once."""
        def hog():
            if self.lock.acquire(timeout, job=self.job):
                self._holding.set()
                self._let_go.wait(60)
                self.lock.release()
        self._thread = threading.Thread(target=hog, daemon=True, name=f'hog-{self.job}')
        self._thread.start()
        return self

    def wait_holding(self, timeout=WAIT):
        if not self._holding.wait(timeout):
            raise AssertionError(f'{self.job!r} did not get the lock within {timeout} s')

    def release(self, timeout=WAIT):
        self._let_go.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.release()


class ReactorThread:
    """The global Twisted reactor running in a daemon thread, for tests of
    reactor (``blocking=False``) operations and ``acquire_deferred`` (and
    for benchmarks). If the reactor already runs, it is used as it is and
    :meth:`stop` leaves it running.

    The reactor cannot be restarted: start one per test session.
    """

    def __init__(self, timeout=WAIT):
        from twisted.internet import reactor
        self.reactor = reactor
        self.thread = None
        if reactor.running:
            return
        self.thread = threading.Thread(
            target=reactor.run, kwargs={'installSignalHandlers': False},
            name='test-reactor', daemon=True)
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        self.thread.start()
        if not started.wait(timeout):
            raise RuntimeError('the reactor did not start')

    def call(self, fn, *args, timeout=WAIT, **kwargs):
        """Run fn on the reactor thread and return its result, waiting (at
        most ``timeout`` s) for a Deferred if it returns one; re-raises its error."""
        import concurrent.futures

        from twisted.internet import defer
        fut = concurrent.futures.Future()

        def run():
            d = defer.maybeDeferred(fn, *args, **kwargs)
            d.addCallbacks(fut.set_result, lambda f: fut.set_exception(f.value))
        self.reactor.callFromThread(run)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f'{getattr(fn, "__name__", fn)} did not finish on the '
                               f'reactor within {timeout} s') from None

    def run_op(self, fn, params=None, op_name=None, session_id=0, timeout=WAIT):
        """Run a reactor operation (may return a Deferred) to completion."""
        session = FakeSession(op_name or fn.__name__, session_id)
        return self.call(fn, session, _params(fn, params), timeout=timeout)

    def stop(self):
        """Stop the reactor if this object started it."""
        if self.thread is not None:
            self.reactor.callFromThread(self.reactor.stop)
            self.thread.join(WAIT)
            self.thread = None
