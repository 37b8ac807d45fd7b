"""The registry's waiters (agents/lock_registry/leases.py, issue 9): a queued
request is answered at its own deadline, and withdrawn when its caller is
gone (WAMP call cancelled or interrupted, OCS task aborted, the registry off
the router). A fake reactor drives time; the wall clock follows it."""
from unittest import mock

import pytest
from twisted.internet import defer

from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.leases.audit import check_audit
from ocs_locking.testing import FakeSession, _params

from .lease_ops_support import T0, Reactor, fired, hold, make_ops



@pytest.fixture
def ops(tmp_path):
    return make_ops(tmp_path)


def rows(ops, action):
    return [r for r in ops.store.history(limit=1000) if r['action'] == action]


def audit_ok(ops):
    assert check_audit(list(reversed(ops.store.history(limit=1000)))) == []


def test_LeaseOps_waiter_is_answered_at_its_own_deadline_not_the_next_tick(ops):
    """When a queued request's timeout (0.35 s) falls between two expiry
    ticks, its refusal comes at the deadline itself (its own timer), not
    at the next tick."""
    hold(ops)
    out = fired(ops.do_acquire('hwp', 'b', lease=5, timeout=0.35))
    ops.reactor.advance(0.34)
    assert out == []
    ops.reactor.advance(0.01)
    ok, msg, data = out[0]
    assert ok is False and msg.startswith('Busy (timed_out): ')
    assert ops.state.waiting() == ()


def test_LeaseOps_cancelled_wamp_call_withdraws_the_request_and_it_is_never_granted(ops):
    """When the router interrupts a queued WAMP call (its caller left or
    cancelled: autobahn cancels the handler's Deferred), the request is
    withdrawn with a cancel audit row naming why; the holder's release then
    grants nobody."""
    lease_id = hold(ops)
    d = ops._rpc_acquire('hwp', 'gone', lease=5, timeout=60)
    out = fired(d)
    d.cancel()
    assert isinstance(out[0].value, defer.CancelledError)
    assert ops.state.waiting() == ()
    [row] = rows(ops, 'cancel')
    assert row['owner'] == 'gone' and 'left' in row['detail']['reason']
    ok, _, data = ops.do_release('hwp', lease_id)
    assert ok and data['granted'] == []
    ops.reactor.advance(1)
    assert ops.state.holders() == () and not ops._waiters and not ops._deadlines
    audit_ok(ops)


def test_LeaseOps_cancelled_call_only_withdraws_its_own_request(ops):
    """When one of two queued callers is interrupted, the other one is
    granted at the holder's release."""
    lease_id = hold(ops)
    gone = ops._rpc_acquire('hwp', 'gone', lease=5, timeout=60)
    fired(gone)
    stays = fired(ops._rpc_acquire('hwp', 'stays', lease=5, timeout=60))
    gone.cancel()
    ops.do_release('hwp', lease_id)
    ops.reactor.advance(0)
    assert stays[0]['ok'] is True and stays[0]['data']['owner'] == 'stays'
    assert [g.owner for g in ops.state.holders()] == ['stays']


def test_LeaseOps_call_cancelled_after_its_grant_but_before_delivery_gives_it_back(ops):
    """When a request is granted and its caller's call is interrupted before
    the answer left, the grant is given back at once, not left to its lease."""
    lease_id = hold(ops)
    d = ops._rpc_acquire('hwp', 'gone', lease=600, timeout=60)
    fired(d)
    ops.do_release('hwp', lease_id)
    assert [g.owner for g in ops.state.holders()] == ['gone']
    d.cancel()
    assert ops.state.holders() == ()
    ops.reactor.advance(1)
    assert ops.state.holders() == ()
    audit_ok(ops)


def test_LeaseOps_aborting_the_acquire_task_withdraws_its_request(ops):
    """When a queued acquire task is aborted, its request is withdrawn and
    the task ends with a one-line 'Withdrawn' refusal; the holder's release
    grants nobody."""
    lease_id = hold(ops)
    session = FakeSession('acquire')
    out = fired(ops.acquire(session, _params(ops.acquire, {
        'resource': 'hwp', 'owner': 'b', 'timeout': 60})))
    aborted = fired(ops.abort_acquire(session, {}))
    assert aborted == [(True, f"Withdrew request {session.data['request_id']}.")]
    ops.reactor.advance(0)
    ok, msg = out[0]
    assert ok is False and msg.startswith('Withdrawn: the request for hwp was cancelled')
    assert session.data['status'] == 'cancelled'
    assert rows(ops, 'cancel')[0]['detail']['reason'] == 'the acquire task was aborted'
    ops.do_release('hwp', lease_id)
    assert ops.state.holders() == ()
    assert fired(ops.abort_acquire(session, {}))[0][0] is False


def test_LeaseOps_registry_leaving_the_router_withdraws_every_waiter(ops):
    """When the registry's session leaves the router (router restart), every
    waiting request is withdrawn: no caller can hear an answer, and none is
    granted after the registry re-joins."""
    lease_id = hold(ops)
    task = fired(ops.do_acquire('hwp', 'task-caller', lease=5, timeout=60))
    rpc = fired(ops._rpc_acquire('hwp', 'rpc-caller', lease=5, timeout=60))
    [leave] = [c.args[1] for c in ops.agent.on.call_args_list if c.args[0] == 'leave']
    leave(ops.agent, mock.Mock(name='details'))
    ops.reactor.advance(0)
    assert task[0][0] is False and rpc[0]['ok'] is False
    assert ops.state.waiting() == ()
    assert {r['owner'] for r in rows(ops, 'cancel')} == {'task-caller', 'rpc-caller'}
    ops.do_release('hwp', lease_id)
    assert ops.state.holders() == ()
    audit_ok(ops)


def test_LeaseOps_queue_limits_are_options_checked_in_one_line(tmp_path):
    """When the registry is started with --max-waiting-per-owner/-client,
    the state gets those limits; an out-of-range value is one complaint."""
    import argparse
    from ocs_locking.agents.lock_registry.leases import add_arguments, check_arguments
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(['--max-waiting-per-owner', '3'])
    assert check_arguments(args) is None
    assert (args.max_waiting_per_owner, args.max_waiting_per_client) == (3, 64)
    ops = LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'l.db'), reactor=Reactor(),
                   max_waiting_per_owner=args.max_waiting_per_owner)
    assert (ops.state.max_waiting_per_owner, ops.state.max_waiting_per_client) == (3, 64)
    bad = parser.parse_args(['--max-waiting-per-client', '0'])
    assert check_arguments(bad) == '--max-waiting-per-client must be an integer in [1, 1000], not 0'
