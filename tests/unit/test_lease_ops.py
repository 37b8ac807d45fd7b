"""The registry's lease tasks without a router: a fake reactor clock, the real
LeaseState on an SQLite file, ocs's param handling via the testing kit."""
from unittest import mock

import pytest

from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.testing import FakeSession, _params

from ..support import FakeReactor


class Reactor(FakeReactor):
    def callWhenRunning(self, f, *a, **kw):
        f(*a, **kw)


@pytest.fixture
def ops(tmp_path):
    return LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'leases.db'), reactor=Reactor())


def run(ops, name, **params):
    """Run a task; Deferred-returning tasks must have fired already."""
    fn = getattr(ops, name)
    session = FakeSession(name)
    result = fn(session, _params(fn, params))
    if hasattr(result, 'addBoth'):
        out = []
        result.addBoth(out.append)
        assert out, f'{name} is still waiting'
        result = out[0]
    return result, session.data


def test_LeaseOps_acquire_grants_with_a_fencing_token(ops):
    """When a free resource is acquired, the grant and its token are returned."""
    (ok, msg), data = run(ops, 'acquire', resource='satp1/hwp', owner='alice', lease=30)
    assert ok is True and msg.startswith("Granted satp1/hwp to 'alice' (token 1) until ")
    assert (data['resource'], data['owner'], data['token']) == ('satp1/hwp', 'alice', 1)


def test_LeaseOps_busy_acquire_names_the_holder(ops):
    """When a tree lease covers the resource, a try-once acquire is refused
    naming the holder and its note."""
    run(ops, 'acquire', resource='satp1', owner='sched', tree=True, note='obs block 4')
    (ok, msg), data = run(ops, 'acquire', resource='satp1/hwp', owner='alice')
    assert ok is False
    assert msg.startswith("Busy (busy): satp1 held by 'sched' (token 1) until ")
    assert msg.endswith(' (obs block 4).')
    assert data['holders'][0]['owner'] == 'sched'


def test_LeaseOps_queued_acquire_is_granted_when_the_holder_releases(ops):
    """When an acquire waits in the queue, releasing the holder's lease grants
    it, with a larger token."""
    (_, _), first = run(ops, 'acquire', resource='hwp', owner='a')
    session = FakeSession('acquire')
    d = ops.acquire(session, _params(ops.acquire, {'resource': 'hwp', 'owner': 'b',
                                                   'timeout': 10}))
    out = []
    d.addBoth(out.append)
    assert out == [] and session.data['queue_position'] == 1
    (ok, _), _ = run(ops, 'release', resource='hwp', token=first['token'])
    assert ok
    ops.reactor.advance(0)
    assert out[0][0] is True and session.data['token'] == 2


def test_LeaseOps_queued_acquire_times_out(ops):
    """When the holder keeps the lease past the waiter's timeout, the waiter
    gets a busy answer."""
    run(ops, 'acquire', resource='hwp', owner='a', lease=600)
    session = FakeSession('acquire')
    d = ops.acquire(session, _params(ops.acquire, {'resource': 'hwp', 'owner': 'b',
                                                   'timeout': 0.5}))
    out = []
    d.addBoth(out.append)
    import time
    ops.state.expire(time.time() + 1)
    ops.reactor.advance(0)
    ok, msg = out[0]
    assert ok is False and msg.startswith('Busy (timed_out): ')


@pytest.mark.parametrize('name,params,error', [
    ('acquire', {'resource': 'Bad Name', 'owner': 'a'}, r'^Refused: resource '),
    ('acquire', {'resource': 'hwp', 'owner': ''}, r'^Refused: owner '),
    ('acquire', {'resource': 'hwp', 'owner': 'a', 'lease': -1}, r'^Refused: lease '),
    ('acquire', {'resource': 'hwp', 'owner': 'a', 'lease': 1e9}, r'^Refused: lease '),
    ('renew', {'resource': 'hwp', 'token': 99}, r'^Refused: '),
    ('release', {'resource': 'hwp', 'token': 99}, r'^Refused: '),
    ('force_release', {'resource': 'hwp', 'reason': 'x'}, r"^Refused: nothing is held on 'hwp'"),
    ('acquire', {'resource': 'hwp', 'owner': 'a', 'lease': 1e-9},
     r'^Refused: lease must be in \[0\.5, 3600\] seconds, not 1e-09$'),
    ('history', {'resource': 7}, r"^Refused: resource must be a path like 'satp1/hwp', not 7$"),
    ('history', {'resource': 'a//b'}, r"^Refused: resource segment '' must match "),
    ('history', {'resource': '/x'}, r"^Refused: resource segment '' must match "),
    ('history', {'action': 'grnat'}, r"^Refused: action must be one of grant, .*, not 'grnat'$"),
    ('history', {'action': ['grant', 7]}, r"^Refused: action must be one of .*, not 7$"),
    ('history', {'since': -1}, r'^Refused: since must be an age in seconds >= 0, not -1$'),
    ('history', {'since': 'yesterday'}, r"^Refused: since must be an age in seconds >= 0, "),
    ('history', {'limit': 0}, r'^Refused: limit must be an integer in \[1, 1000\], not 0$'),
    ('history', {'owner': ''}, r'^Refused: owner must not be empty$'),
])
def test_LeaseOps_bad_requests_are_refused_and_change_nothing(ops, name, params, error):
    """When a request is malformed or names an unknown lease, the task answers
    (False, 'Refused: ...') and the state is unchanged."""
    run(ops, 'acquire', resource='other', owner='z')
    before = ops.state.snapshot()
    (ok, msg), data = run(ops, name, **params)
    assert ok is False
    assert __import__('re').match(error, msg), msg
    assert '\n' not in msg
    assert ops.state.snapshot() == before


def test_LeaseOps_history_and_leases_report_the_state(ops):
    """When leases change, history lists the audit rows newest first and
    leases lists the current grants."""
    (_, _), g = run(ops, 'acquire', resource='hwp', owner='a', note='why')
    run(ops, 'release', resource='hwp', token=g['token'])
    (ok, msg), data = run(ops, 'history', limit=5)
    assert ok and [r['action'] for r in data['history']][:2] == ['release', 'grant']
    (ok, msg), data = run(ops, 'leases')
    assert ok and data['grants'] == [] and msg == '0 lease(s), 0 waiting.'
