"""ocs_locking.testing: the helpers agent authors test their lock use with."""
import re
import threading

import pytest
from ocs import ocs_agent

from ocs_locking import TimeoutLock
from ocs_locking.ops import YieldingHold, locked
from ocs_locking.testing import (WAIT, FakeSession, LockHog, LockProbe, run_op, short_timeouts,
                                start_op)


class Agentish:
    @ocs_agent.param('x', default=2, type=int)
    def op(self, session, params):
        session.data['x'] = params['x']
        return True, 'ok'

    def blocks(self, session, params):
        params['gate'].wait(10)
        return True, 'released'


def test_run_op_applies_ocs_param_defaults_and_checks():
    """When an op declares @ocs_agent.param, run_op processes params exactly
    as ocs does: defaults filled in, stray or bad values refused."""
    assert run_op(Agentish().op) == (True, 'ok')
    with pytest.raises(ocs_agent.ParamError, match=r"unexpected values: \['y'\]"):
        run_op(Agentish().op, {'y': 1})


def test_start_op_result_timeout_says_what_did_not_finish():
    """When an op does not finish within the bound, result() fails naming it."""
    gate = threading.Event()
    op = start_op(Agentish().blocks, {'gate': gate})
    with pytest.raises(AssertionError, match=r'^blocks did not finish within 0.01 s$'):
        op.result(timeout=0.01)
    gate.set()
    assert op.result() == (True, 'released')
    assert op.session.status == 'done'


def test_FakeSession_refuses_unknown_status():
    """When code sets a status ocs does not know, FakeSession raises."""
    with pytest.raises(ValueError, match=r"^unknown session status 'finished'$"):
        FakeSession().set_status('finished')


def test_LockProbe_measures_waits_and_enforces_bounds():
    """When a job got the lock at once its wait is 0; when it queued, the
    wait is measured, and a bound it exceeds fails with the figure."""
    lock = TimeoutLock(name='hw')
    probe = LockProbe(lock)
    assert lock.acquire(0, job='a')
    lock.release()
    assert probe.waited('a') == 0.0
    hog = LockHog(lock, job='hog').start()
    hog.wait_holding()
    t = threading.Thread(target=lambda: lock.acquire(10, job='b') and lock.release())
    t.start()
    probe.wait_for('waiting', job='b')
    hog.release()
    t.join(10)
    assert probe.waited('b') > 0.0
    with pytest.raises(AssertionError, match=r"^job 'b' waited \d+\.\d{3} s for the lock \(bound 0 s\)$"):
        probe.assert_acquired_within('b', 0)
    with pytest.raises(AssertionError, match=r"^job 'zz' never acquired the lock$"):
        probe.waited('zz', timeout=0.01)
    with pytest.raises(AssertionError, match=r"^no 'acquired' event for job 'zz' within 0.01 s"):
        probe.wait_for('acquired', job='zz', timeout=0.01)
    probe.close()


def test_LockHog_holds_until_released():
    """When a hog is started it takes the lock and keeps it until released."""
    lock = TimeoutLock(name='hw')
    with LockHog(lock, job='hog') as hog:
        hog.wait_holding()
        assert lock.job == 'hog' and lock.acquire(0) is False
    assert lock.status().holder is None


class Locked:
    def __init__(self):
        self.lock = TimeoutLock(name='hw', default_timeout=30)
        self.ran = 0

    @locked(timeout=30)
    def task(self, session, params):
        self.ran += 1
        return True, 'ran'


def test_short_timeouts_makes_a_locked_task_give_up_after_the_short_timeout():
    """When a @locked(timeout=30) task runs inside short_timeouts(lock, 0.05)
    while another job holds the lock, it is refused at once with the standard
    refusal, the body does not run, and the queue is left empty."""
    agent = Locked()
    probe = LockProbe(agent.lock)
    assert agent.lock.acquire(0, job='calibrate', session_id=12)
    try:
        with short_timeouts(agent.lock, 0.05):
            ok, msg = run_op(agent.task, timeout=5)
    finally:
        agent.lock.release()
    assert ok is False
    assert re.match(r"^Could not acquire lock 'hw': held by 'calibrate' \(session 12\) "
                    r"for \d+\.\d s; 0 waiting$", msg), msg
    assert agent.ran == 0
    probe.wait_for('gave_up', job='task')
    assert agent.lock.status().waiters == ()


def test_short_timeouts_caps_every_timed_wait_and_keeps_zero_and_forever():
    """When short_timeouts is active, acquire, acquire_timeout,
    release_and_acquire and the lock's default timeout (None) are all capped;
    0 still tries once and -1 still waits until granted; after the block the
    lock is a plain TimeoutLock again."""
    lock = TimeoutLock(name='hw', default_timeout=30)
    probe = LockProbe(lock)
    with LockHog(lock, job='hog') as hog:
        hog.wait_holding()
        with short_timeouts(lock, 0.01) as same:
            assert same is lock and isinstance(lock, TimeoutLock)
            assert lock.acquire(30, job='a') is False
            assert lock.acquire(job='b') is False                   # None: the default, capped
            assert lock.acquire(timeout=30, job='c') is False
            with lock.acquire_timeout(30, job='d') as got:
                assert got is False
            assert lock.acquire(0, job='e') is False
            forever = LockHog(lock, job='f').start(timeout=-1)      # -1 is not capped
            probe.wait_for('waiting', job='f')
            hog.release()
            forever.wait_holding()
            forever.release()
    gave_up = [e.job for _, e in probe.events if e.event == 'gave_up']
    assert {'a', 'b', 'c', 'd'} <= set(gave_up) and 'f' not in gave_up, gave_up
    assert type(lock) is TimeoutLock

    # The holder lends the lock and must take it back within the cap.
    assert lock.acquire(0, job='main')
    with LockHog(lock, job='slow') as slow, short_timeouts(lock, 0.01):
        probe.wait_for('waiting', job='slow')
        assert lock.release_and_acquire(30) is False                # 'slow' keeps it
        slow.wait_holding()
    assert not lock.held_by_me()
    assert lock.status().holder is None


def test_short_timeouts_shortens_acquire_deferred_on_the_reactor(reactor_thread):
    """When a reactor caller waits through acquire_deferred(30) inside
    short_timeouts, its Deferred fires False after the short timeout."""
    lock = TimeoutLock(name='hw')
    with LockHog(lock) as hog:
        hog.wait_holding()
        with short_timeouts(lock, 0.02):
            assert reactor_thread.call(lock.acquire_deferred, 30, job='r', timeout=5) is False


def test_short_timeouts_shortens_a_yielding_hold_start():
    """When a YieldingHold(timeout=30) starts inside short_timeouts while the
    lock is held, its run() ends at once with the standard refusal."""
    lock = TimeoutLock(name='hw')
    hold = YieldingHold(lock, timeout=30)
    with LockHog(lock, job='hog') as hog:
        hog.wait_holding()
        with short_timeouts(lock, 0.02):
            samples = list(hold.run(FakeSession('acq'), period=60))
    assert samples == []
    assert hold.result[0] is False
    assert hold.result[1].startswith("Could not acquire lock 'hw': held by 'hog' for "), hold.result


@pytest.mark.parametrize('bad, message', [
    (0, r"^short_timeouts: timeout must be seconds > 0, not 0$"),
    (-1, r"^short_timeouts: timeout must be seconds > 0, not -1$"),
    (True, r"^short_timeouts: timeout must be seconds > 0, not True$"),
    ('1', r"^short_timeouts: timeout must be seconds > 0, not '1'$"),
    (float('inf'), r"^short_timeouts: timeout must be seconds > 0, not inf$"),
])
def test_short_timeouts_refuses_a_bad_timeout_and_changes_nothing(bad, message):
    """When short_timeouts gets a timeout that is not a positive number of
    seconds, it raises ValueError naming it and the lock is untouched."""
    lock = TimeoutLock(name='hw')
    with pytest.raises(ValueError, match=message):
        with short_timeouts(lock, bad):
            pass                            # pragma: no cover
    assert type(lock) is TimeoutLock


def test_short_timeouts_refuses_what_is_not_a_TimeoutLock():
    """When short_timeouts is given another kind of lock, it raises TypeError."""
    with pytest.raises(TypeError, match=r'^short_timeouts needs a TimeoutLock, not '):
        with short_timeouts(threading.Lock()):
            pass                            # pragma: no cover


def test_LockProbe_waited_waits_for_a_grant_not_yet_delivered():
    """When waited() is asked about a grant that happens (and is delivered to
    listeners) only after the question, it waits for it instead of failing,
    and a grant taken at once waited 0 s."""
    lock = TimeoutLock(name='hw')
    probe = LockProbe(lock)
    go = threading.Event()
    taker = threading.Thread(target=lambda: go.wait(WAIT) and lock.acquire(job='late'))
    taker.start()
    go.set()
    assert probe.waited('late') == 0.0
    taker.join(WAIT)


def test_LockProbe_waited_is_measured_from_the_events_own_times():
    """When a job queued behind a holder and was granted on release, waited()
    is the time between its queueing and its grant as the lock stamped them."""
    lock = TimeoutLock(name='hw')
    probe = LockProbe(lock)
    assert lock.acquire(job='holder')
    waiter = threading.Thread(target=lambda: lock.acquire(timeout=WAIT, job='w'))
    waiter.start()
    probe.wait_for('waiting', job='w')
    lock.release()
    waiter.join(WAIT)
    queued = [e for _, e in probe.events if e.event == 'waiting'][-1]
    grant = [e for _, e in probe.events if e.event == 'acquired' and e.job == 'w'][-1]
    assert probe.waited('w') == pytest.approx(grant.since - queued.since)
