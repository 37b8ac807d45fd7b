"""Negotiated preemption (issue 11 part 5): the pure state machine
(``LeaseState.preempt``), the registry's task and watch notice
(``LeaseOps.do_preempt``), and the holder shells' ``on_preempt``."""
import re

import pytest

from ocs_locking.errors import LeaseError
from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.state import LeaseState

from .lease_ops_support import fired, make_ops
from .test_lease_shells import Clock, SiteLockShell

T0 = 1000.0


def actions(state_or_store, resource=None):
    rows = list(reversed(state_or_store.history(limit=1000)))
    return [r['action'] for r in rows if resource is None or r['resource'] == resource]


@pytest.fixture
def state(tmp_path):
    from ocs_locking.leases.store import LeaseStore
    store = LeaseStore(str(tmp_path / 'l.db'))
    st = LeaseState(store=store)
    st.store = store
    return st


def test_LeaseState_preempt_holder_that_releases_in_time_lets_the_requester_in_first(state):
    """When a holder is asked to give way and releases within the grace,
    the requester (queued first, ahead of an earlier waiter) is granted with
    a larger token; the audit has asked, released, granted."""
    a = state.acquire('hwp', 'alice', 60, T0)
    bob = state.acquire('hwp', 'bob', 60, T0 + 1, timeout=100)
    p, out = state.preempt('hwp', 'calibration', 5, 'calib (declared, cred_level 2)', T0 + 2,
                           owner='calib', lease=30)
    assert (p.holder, p.token, p.deadline, p.requester_rid) == ('alice', 1, T0 + 7,
                                                                out.request_id)
    assert out.status == 'queued' and out.queue_position == 1
    assert [w.owner for w in state.waiting()] == ['calib', 'bob']
    granted = state.release('hwp', a.lease_id, T0 + 3)
    assert [(o.grants[0].owner, o.grants[0].token) for o in granted] == [('calib', 2)]
    assert state.preemption(p.holder_rid) is None
    # (a quick hand-over is folded: the requester's grant is a ``regrant`` row)
    assert actions(state.store, 'hwp') == ['grant', 'preempt', 'release', 'regrant']
    assert check_audit(list(reversed(state.store.history(limit=100)))) == []
    assert bob.status == 'queued'


def test_LeaseState_preempt_not_released_by_the_deadline_is_revoked(state):
    """When the holder has not released by the deadline, its lease is
    revoked then (as a force_release naming the preemption) and the
    requester is granted; not a moment before."""
    state.acquire('hwp', 'alice', 60, T0)
    p, out = state.preempt('hwp', 'emergency', 5, 'ops', T0, owner='ops-script', lease=30)
    state.expire(T0 + 4.99)
    assert state.holders()[0].owner == 'alice'
    done = state.expire(T0 + 5)
    assert [o.grants[0].owner for o in done['granted']] == ['ops-script']
    assert state.holders()[0].token == 2
    row = [r for r in state.store.history(limit=10) if r['action'] == 'force_release'][0]
    assert row['owner'] == 'ops' and row['detail']['holder'] == 'alice'
    assert row['detail']['reason'] == ('preempted: emergency (not released within its 5 s '
                                       'grace)')


def test_LeaseState_preempt_without_a_requester_revokes_and_serves_the_queue(state):
    """When nobody in particular asks for it (no owner), the holder is
    revoked at the deadline and the queue is served as usual."""
    state.acquire('hwp', 'alice', 60, T0)
    state.acquire('hwp', 'bob', 60, T0, timeout=100)
    p, out = state.preempt('hwp', 'maintenance', 2, 'ops', T0)
    assert out is None and p.requester_rid is None
    done = state.expire(T0 + 2)
    assert [o.grants[0].owner for o in done['granted']] == ['bob']


def test_LeaseState_preempt_refusals_change_nothing(state):
    """When the resource is not held, already being preempted, or an
    argument is bad, preempt raises LeaseError in one line and changes
    nothing (no waiter, no audit row)."""
    with pytest.raises(LeaseError, match=r"^nothing is held on 'hwp'$"):
        state.preempt('hwp', 'x', 5, 'ops', T0)
    state.acquire('hwp', 'alice', 60, T0)
    state.preempt('hwp', 'x', 5, 'ops', T0)
    before = actions(state.store)
    with pytest.raises(LeaseError, match=r"^the lease on 'hwp' \('alice', token 1\) is already "
                                         r"being preempted by 'ops': it is revoked at "):
        state.preempt('hwp', 'y', 5, 'other', T0, owner='z', lease=30)
    for kwargs, why in (({'grace': -1}, r'^grace must be in \[0, 3600\] seconds, not -1'),
                        ({'reason': ' '}, r'^reason must not be '),
                        ({'owner': 'z', 'lease': 0}, r'^lease must be in ')):
        args = dict(resource='hwp', reason='r', grace=5, by='ops', now=T0)
        args.update(kwargs)
        with pytest.raises(LeaseError, match=why):
            state.preempt(**args)
    assert actions(state.store) == before and state.waiting() == ()


def test_LeaseState_noticed_is_audited_once(state):
    """When the ask reaches the holder, one ``notice`` row is written; a
    second notice writes nothing."""
    a = state.acquire('hwp', 'alice', 60, T0)
    p, _ = state.preempt('hwp', 'x', 5, 'ops', T0)
    assert state.noticed(p.holder_rid, T0 + 0.1).noticed is True
    assert state.noticed(p.holder_rid, T0 + 0.2) is None
    state.release('hwp', a.lease_id, T0 + 1)
    assert actions(state.store) == ['grant', 'preempt', 'notice', 'release']
    row = [r for r in state.store.history(limit=10) if r['action'] == 'notice'][0]
    assert row['owner'] == 'alice' and row['token'] == 1 and row['detail']['left'] == 4.9


# -- the registry and the holder ------------------------------------------------------

@pytest.fixture
def ops(tmp_path):
    return make_ops(tmp_path)


def test_LeaseOps_preempt_tells_the_requester_who_what_and_when_then_grants(ops):
    """When preempt asks with a requester, the requester hears at once who
    holds, what was asked and when the deadline falls, and its answer
    comes at the grant; the holder's watch gets the notice at once and the
    notice is audited."""
    ok, _, data = fired(ops.do_acquire('hwp', 'alice', lease=60, secret=True))[0]
    watch = fired(ops.do_watch('hwp', data['lease_id'], 20))
    asked = []
    out = fired(ops.do_preempt('hwp', 'calibration', 5, 'calib (declared, cred_level 2)',
                               owner='calib', lease=30, on_asked=asked.append))
    assert asked[0]['holder'] == 'alice' and asked[0]['token'] == 1
    assert asked[0]['reason'] == 'calibration' and asked[0]['deadline'] == 1.7e9 + 5
    assert re.match(r"^Asked 'alice' \(token 1\) to give hwp way: 'calibration'; it is "
                    r"revoked at \d\d:\d\d:\d\d UTC \(in 5 s\) unless released", asked[0]['message'])
    assert watch[0]['data']['event'] == 'preempt' and watch[0]['data']['grace_left'] == 5
    ops.reactor.advance(0)
    assert 'notice' in actions(ops.store)
    assert out == []
    ops.reactor.advance(5)
    ops._expire()
    ops.reactor.advance(0)
    ok, msg, data = out[0]
    assert ok and data['owner'] == 'calib' and data['token'] == 2
    assert data['preempt']['holder'] == 'alice' and 'lease_id' not in data


def test_LeaseOps_preempt_without_requester_waits_for_how_the_holder_gave_way(ops):
    """When preempt asks with no requester and waits, its answer says how
    the holder gave way (released in time, or revoked at the deadline);
    with wait=False it answers at once with the ask."""
    ok, _, data = fired(ops.do_acquire('hwp', 'alice', lease=60, secret=True))[0]
    out = fired(ops.do_preempt('hwp', 'x', 5, 'ops'))
    ops.do_release('hwp', data['lease_id'])
    ops.reactor.advance(0)
    assert out[0][0] is True and out[0][1].startswith("'alice' released hwp")
    fired(ops.do_acquire('hwp', 'bob', lease=60, secret=True))
    quick = fired(ops.do_preempt('hwp', 'y', 2, 'ops', wait=False))
    assert quick[0][0] is True and quick[0][1].startswith("Asked 'bob' (token 2)")
    out = fired(ops.do_preempt('hwp', 'z', 2, 'ops2'))
    assert out[0][0] is False and 'already being preempted' in out[0][1]


def test_SiteLock_on_preempt_gets_the_notice_at_once_with_a_local_deadline():
    """When someone preempts a SiteLock's lease, on_preempt(reason, deadline)
    is called at once with a deadline on the holder's own clock (now + the
    grace left); if it releases, the requester gets the resource; without a
    release it is revoked at the deadline and on_lost says so."""
    shell = SiteLockShell(Clock())
    notices, lost = [], []
    h = shell.make(watch=True, on_preempt=lambda r, d: notices.append((r, d)),
                   on_lost=lost.append, lease=60)
    shell.acquire(h)
    shell.registry.ops.do_preempt('bridge', 'calibration', 4, 'calib', owner='calib',
                                  lease=30)
    shell.settle()
    assert len(notices) == 1
    reason, deadline = notices[0]
    assert deadline == shell.clock() + 4 and "calib asks for bridge: 'calibration'" in reason
    shell.run_for(4)
    shell.registry.ops._expire()
    shell.settle()
    assert len(lost) == 1 and 'preempted: calibration' in lost[0]
    assert [g.owner for g in shell.registry.state.holders()] == ['calib']


def test_Reservation_on_preempt_gets_the_notice_and_releasing_lets_the_requester_in(ops):
    """When a Reservation's lease is preempted, on_preempt(reason, deadline)
    is called from its watch thread with a deadline on its own clock; the
    holder releases there and the requester, queued first, is granted."""
    import threading

    from ocs_locking.leases.renewer import Renewer
    from ocs_locking.leases.reservation import Reservation, RetryPolicy

    from .test_lease_watch import WAIT, WatchedTransport
    told = threading.Event()
    notices = []
    transport = WatchedTransport(ops)
    res = Reservation('hwp', 'schedule', lease=30, client=transport,
                      renewer=Renewer(thread=False), retry=RetryPolicy(attempts=1),
                      on_preempt=lambda r, d: (notices.append((r, d)), told.set()))
    res.acquire()
    transport.serve()
    out = fired(ops.do_preempt('hwp', 'calibration', 5, 'calib', owner='calib', lease=30))
    assert told.wait(WAIT)
    reason, deadline = notices[0]
    assert "calib asks for hwp: 'calibration'; it is revoked in 5.0 s" in reason
    transport.serve()           # the watch goes on after the notice
    res.release()
    ops.reactor.advance(0)
    assert out[0][0] is True and out[0][2]['owner'] == 'calib'


def test_LeaseOps_preempt_procedure_without_a_level_2_password_is_refused(ops):
    """When the preempt procedure comes without a level-2 password, it is
    refused in one line (audited, without the password) and the holder
    keeps its lease."""
    fired(ops.do_acquire('hwp', 'alice', lease=60, secret=True))
    reply = ops._rpc_preempt('hwp', 'x', 5, password='guess')     # refused at once
    assert reply == {'ok': False, 'message': 'Refused: preempt requires credential level 2 '
                     '(the password given has level 0)',
                     'data': {'error': 'preempt requires credential level 2 (the password '
                              'given has level 0)'}}
    assert ops.state.holders()[0].owner == 'alice' and ops.state.preemption(1) is None
    assert 'guess' not in repr(ops.store.history(limit=10))
