"""ocs_locking.testing: the helpers agent authors test their lock use with."""
import threading

import pytest
from ocs import ocs_agent

from ocs_locking import TimeoutLock
from ocs_locking.testing import FakeSession, LockHog, LockProbe, run_op, start_op


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
        probe.waited('zz')
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
