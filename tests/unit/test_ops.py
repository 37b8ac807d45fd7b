"""The agent-author kit: @locked operations, Cancel, YieldingHold, and the
testing helpers they are tested with."""
import threading

import pytest
from ocs import ocs_agent
from twisted.internet import defer, task

from ocs_locking import Cancel, TimeoutLock
from ocs_locking.ops import YieldingHold, locked, refusal
from ocs_locking.testing import (FakeSession, LockHog, LockProbe, run_op, short_timeouts,
                                start_op)

from ..support import WAIT

REFUSAL = r"^Could not acquire lock 'hw': held by '{job}' \(session {sid}\) for \d+\.\d s; {n} waiting$"


#: The tasks' @locked timeout: far longer than any scheduling delay.
TASK_TIMEOUT = 10.0


class Device:
    """A tiny agent-like class using the kit."""

    def __init__(self, timeout=0.05):
        self.lock = TimeoutLock(name='hw')
        self.seen = []
        self.acq_hold = YieldingHold(self.lock, timeout=0, retake_timeout=60)
        self.timeout = timeout

    # Long timeouts, so that only what a test does decides whether a task gets
    # the lock, however loaded the machine; refusal tests cut them with
    # short_timeouts instead of waiting them out.
    @ocs_agent.param('value', type=float, check=lambda v: 0 <= v <= 100)
    @locked(timeout=TASK_TIMEOUT)
    def set_value(self, session, params):
        self.seen.append((self.lock.job, self.lock.status().holder.session_id,
                          self.lock.held_by_me()))
        return True, f"set {params['value']}"

    @locked(timeout=TASK_TIMEOUT)
    def explode(self, session, params):
        raise ValueError('boom')

    @locked(timeout=TASK_TIMEOUT)
    @defer.inlineCallbacks
    def reactor_op(self, session, params):
        from twisted.internet import reactor
        self.seen.append((self.lock.job, self.lock.held_by_me()))
        yield task.deferLater(reactor, 0, lambda: None)
        return True, 'done on the reactor'

    @ocs_agent.param('period', default=0.05, type=float)
    def acq(self, session, params):
        for n in self.acq_hold.run(session, period=params['period']):
            session.data['n'] = n
        return self.acq_hold.result

    def _stop_acq(self, session, params):
        return self.acq_hold.stop()


@pytest.fixture
def dev():
    return Device()


# -- @locked -------------------------------------------------------------------

def test_locked_runs_body_holding_the_lock_named_after_the_operation(dev):
    """When a decorated task runs, its body holds the lock under the op's name
    and session id, and the lock is free afterwards."""
    assert run_op(dev.set_value, {'value': 5}, session_id=7) == (True, 'set 5.0')
    assert dev.seen == [('set_value', 7, True)]
    assert dev.lock.status().holder is None


def test_locked_refusal_names_holder_session_time_and_waiters(dev):
    """When the lock is busy past the timeout, the op returns (False, msg)
    naming the lock, the holder's job and session, how long, how many wait."""
    assert dev.lock.acquire(0, job='acq', session_id=12)
    with short_timeouts(dev.lock, 0.05):
        ok, msg = run_op(dev.set_value, {'value': 5})
    assert ok is False
    assert msg.startswith("Could not acquire lock 'hw': held by 'acq' (session 12) for ")
    assert msg.endswith(' s; 0 waiting')
    assert dev.seen == []
    dev.lock.release()


def test_locked_refusal_puts_the_structured_reason_in_session_data(dev):
    """When the lock is busy past the timeout, session.data['refused'] holds
    the same facts as the text (target, kind, holder, held_for, waiting)."""
    assert dev.lock.acquire(0, job='acq', session_id=12)
    with short_timeouts(dev.lock, 0.05):
        op = start_op(dev.set_value, {'value': 5})
        ok, msg = op.result(WAIT)
    reason = op.session.data['refused']
    assert ok is False and reason['text'] == msg
    assert (reason['target'], reason['kind'], reason['holder'], reason['waiting']) == \
        ('hw', 'lock', 'acq (session 12)', 0)
    assert reason['held_for'] >= 0
    dev.lock.release()


def test_locked_releases_when_the_body_raises(dev):
    """When the body raises, the exception propagates and the lock is free."""
    with pytest.raises(ValueError, match='^boom$'):
        run_op(dev.explode)
    assert dev.lock.status().holder is None


def test_locked_keeps_ocs_param_checks(dev):
    """When @ocs_agent.param sits above @locked, ocs still sees and applies it."""
    assert dev.set_value._ocs_prescreen[0][0] == 'value'
    with pytest.raises(ocs_agent.ParamError, match="failed validity check"):
        run_op(dev.set_value, {'value': 500})


def test_locked_on_the_reactor_waits_through_acquire_deferred(reactor_thread, dev):
    """When a reactor operation is decorated, it waits without blocking the
    reactor, holds the lock across its Deferred and releases when it fires."""
    hog = LockHog(dev.lock, job='acq').start()
    hog.wait_holding()
    probe = LockProbe(dev.lock)
    d_holder = []

    def start():
        d = dev.reactor_op(FakeSession('reactor_op', 3), {})
        d.addCallback(d_holder.append)
    reactor_thread.call(start)
    probe.wait_for('waiting', job='reactor_op')
    hog.release()
    probe.wait_for('released', job='reactor_op')
    reactor_thread.call(lambda: None)
    assert d_holder == [(True, 'done on the reactor')]
    assert dev.seen == [('reactor_op', True)]
    assert dev.lock.status().holder is None


def test_locked_on_the_reactor_refuses_with_the_standard_message(reactor_thread):
    """When a reactor operation cannot get the lock in time, it returns the
    same (False, message) as a thread operation."""
    dev = Device()
    with LockHog(dev.lock, job='acq') as hog, short_timeouts(dev.lock, 0.05):
        hog.wait_holding()
        ok, msg = reactor_thread.run_op(dev.reactor_op)
    assert ok is False
    assert msg.startswith("Could not acquire lock 'hw': held by 'acq' for ")


def test_locked_bad_arguments_raise_when_decorating():
    """When @locked gets a bad timeout or job, it fails at import time."""
    with pytest.raises(ValueError, match=r'^timeout must be >= 0 or -1'):
        locked(timeout=-3)
    with pytest.raises(TypeError, match=r'^@locked: job must be a string or None, not 3$'):
        locked(job=3)


def test_locked_missing_lock_attribute_raises_TypeError():
    """When the named attribute is not a TimeoutLock, the call says so."""
    class NoLock:
        @locked('hw_lock')
        def op(self, session, params):
            return True, 'never'
    with pytest.raises(TypeError, match=r"^@locked: 'hw_lock' is not a TimeoutLock on NoLock$"):
        run_op(NoLock().op)


def test_refusal_for_a_lock_freed_meanwhile_says_so():
    """When the holder released between the timeout and the message, the
    refusal says the lock is free now."""
    lock = TimeoutLock(name='hw')
    assert refusal(lock, 3) == "Could not acquire lock 'hw' within 3 s; it is free now, try again"
    lock.close()
    assert refusal(lock) == "Could not acquire lock 'hw': it is closed (the agent is shutting down)"


# -- Cancel --------------------------------------------------------------------

def test_Cancel_ends_a_thread_wait_at_once(dev):
    """When a waiting acquire's token is cancelled, the call returns False
    at once and leaves the queue."""
    probe = LockProbe(dev.lock)
    token = Cancel()
    with LockHog(dev.lock) as hog:
        hog.wait_holding()
        out = []
        t = threading.Thread(target=lambda: out.append(dev.lock.acquire(-1, job='w', cancel=token)))
        t.start()
        probe.wait_for('waiting', job='w')
        token.cancel()
        t.join(WAIT)
        assert out == [False]
        assert dev.lock.status().waiters == ()
        assert dev.lock.status().counters.cancelled == 1


def test_Cancel_before_the_wait_returns_false_without_queueing(dev):
    """When the token was cancelled already, acquire does not wait or queue."""
    token = Cancel()
    token.cancel()
    with LockHog(dev.lock) as hog:
        hog.wait_holding()
        assert dev.lock.acquire(-1, cancel=token) is False
        assert dev.lock.status().waiters == ()
    with pytest.raises(TypeError, match=r'^cancel must be a Cancel token or None'):
        dev.lock.acquire(0, cancel=object())


# -- YieldingHold --------------------------------------------------------------

def test_YieldingHold_never_hands_over_when_nobody_waits(dev):
    """When no task waits, the loop keeps its one grant for every sample:
    no handover, no lock event between the first grant and the end."""
    probe = LockProbe(dev.lock)
    session = FakeSession('acq')
    for n in dev.acq_hold.run(session, period=0.001):
        assert dev.lock.status().holder.token == 1
        if n == 50:
            break
    assert dev.acq_hold.handovers == 0
    assert [e.event for _, e in probe.events] == ['acquired', 'released']


def test_YieldingHold_task_gets_the_lock_long_before_the_period_ends(dev):
    """When a task waits while the loop sleeps out a 30 s period (socs #614:
    5 s), it gets the lock at once instead of timing out."""
    probe = LockProbe(dev.lock)
    acq = start_op(dev.acq, {'period': 30.0})
    probe.wait_for('acquired', job='acq')
    assert run_op(dev.set_value, {'value': 1}) == (True, 'set 1.0')
    # At once, not at the end of the 30 s period (the bound leaves room for a
    # loaded machine's scheduling delays).
    probe.assert_acquired_within('set_value', 5.0)
    probe.wait_for('acquired', job='acq', n=2)        # the loop took the lock back
    assert dev.acq_hold.handovers == 1
    acq.stop(dev._stop_acq)
    assert acq.result()[0] is True


def test_YieldingHold_stop_ends_the_sleep_at_once(dev):
    """When the process is stopped during a 60 s sleep, it ends now."""
    probe = LockProbe(dev.lock)
    acq = start_op(dev.acq, {'period': 60.0})
    probe.wait_for('acquired', job='acq')
    assert acq.stop(dev._stop_acq) == (True, 'Requested stop.')
    assert acq.result(timeout=WAIT) == (True, 'Stopped on request after 1 samples.')
    assert dev.lock.status().holder is None


def test_YieldingHold_stop_while_waiting_to_take_the_lock_back(dev):
    """When the process is stopped while it waits (60 s allowed) to take the
    lock back from a task, it ends now, without the lock."""
    probe = LockProbe(dev.lock)
    acq = start_op(dev.acq, {'period': 60.0})
    probe.wait_for('acquired', job='acq')
    with LockHog(dev.lock, job='long-task') as hog:
        hog.wait_holding()
        probe.wait_for('waiting', job='acq')
        acq.stop(dev._stop_acq)
        assert acq.result(timeout=WAIT) == (True, 'Stopped on request after 1 samples.')
        assert dev.lock.job == 'long-task'
    assert dev.lock.status().waiters == ()


def test_YieldingHold_retake_failure_ends_the_process_with_a_message():
    """When a task keeps the lock past retake_timeout, the loop ends with
    (False, message) naming who holds it."""
    lock = TimeoutLock(name='hw')
    hold = YieldingHold(lock, job='acq', timeout=0, retake_timeout=0.05)
    session = FakeSession('acq', 4)
    probe = LockProbe(lock)
    samples = []
    hog = LockHog(lock, job='long-task')

    def body():
        for n in hold.run(session, period=60):
            samples.append(n)
            if n == 1:
                hog.start()
                probe.wait_for('waiting', job='long-task')
    t = threading.Thread(target=body)
    t.start()
    t.join(WAIT)
    hog.release()
    ok, msg = hold.result
    assert ok is False
    assert msg.startswith("Stopped: could not take the lock back within 0.05 s. "
                          "Could not acquire lock 'hw': held by 'long-task' for ")
    assert samples == [1]
    assert not hold.running


def test_YieldingHold_refuses_to_start_when_the_lock_is_busy(dev):
    """When the lock is held past the start timeout, run() yields nothing and
    result is the standard refusal."""
    with LockHog(dev.lock, job='set_value') as hog:
        hog.wait_holding()
        ok, msg = run_op(dev.acq)
    assert ok is False
    assert msg.startswith("Could not acquire lock 'hw': held by 'set_value' for ")


def test_YieldingHold_keeps_lock_state_in_session_data(dev):
    """When the loop runs, session.data['lock'] shows holder, session,
    since, waiters and handovers at every sample."""
    session = FakeSession('acq', 9)
    for n in dev.acq_hold.run(session, period=0.001):
        lock_data = session.data['lock']
        assert lock_data['holder'] == 'acq' and lock_data['session_id'] == 9
        assert lock_data['waiters'] == 0 and lock_data['handovers'] == 0
        assert isinstance(lock_data['since'], float)
        if n == 3:
            break
    assert dev.lock.status().holder is None


def test_YieldingHold_releases_when_the_loop_body_raises():
    """When the code inside the loop raises, the lock is released."""
    lock = TimeoutLock(name='hw')
    hold = YieldingHold(lock, timeout=0)
    with pytest.raises(KeyError):
        for n in hold.run(FakeSession('acq'), period=1):
            raise KeyError('device')
    assert lock.status().holder is None and not hold.running


def test_YieldingHold_misuse_raises(dev):
    """When run() gets a bad period, or runs twice at once, or stop() is
    called when idle, each says what is wrong."""
    with pytest.raises(ValueError, match=r'^period must be a number of seconds > 0, not 0$'):
        next(dev.acq_hold.run(FakeSession(), period=0))
    assert dev.acq_hold.stop() == (False, 'Not running.')
    gen = dev.acq_hold.run(FakeSession(), period=60)
    assert next(gen) == 1
    with pytest.raises(RuntimeError, match=r"^YieldingHold on lock 'hw' is already running$"):
        next(dev.acq_hold.run(FakeSession(), period=60))
    gen.close()
    assert dev.lock.status().holder is None
    with pytest.raises(TypeError, match=r'^lock must be a TimeoutLock'):
        YieldingHold('hw')


def test_locked_after_close_returns_the_closed_refusal(dev):
    """When the lock is closed (agent shutting down), a decorated task returns
    (False, message) instead of crashing with LockClosed."""
    dev.lock.close()
    assert run_op(dev.set_value, {'value': 1}) == (
        False, "Could not acquire lock 'hw': it is closed (the agent is shutting down)")


def test_locked_on_the_reactor_after_close_returns_the_closed_refusal(reactor_thread, dev):
    """When the lock is closed, a decorated reactor task also returns the refusal."""
    dev.lock.close()
    ok, msg = reactor_thread.run_op(dev.reactor_op)
    assert (ok, msg) == (False, "Could not acquire lock 'hw': it is closed "
                                "(the agent is shutting down)")


def test_YieldingHold_close_while_waiting_to_retake_ends_the_loop(dev):
    """When the lock is closed while the loop waits to take it back, the loop
    ends with a message saying the agent is shutting down."""
    probe = LockProbe(dev.lock)
    acq = start_op(dev.acq, {'period': 60.0})
    probe.wait_for('acquired', job='acq')
    with LockHog(dev.lock, job='long-task') as hog:
        hog.wait_holding()
        probe.wait_for('waiting', job='acq')
        dev.lock.close()
        assert acq.result() == (True, "Stopped after 1 samples: lock 'hw' was closed "
                                      "(the agent is shutting down).")
