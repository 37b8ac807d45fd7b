"""The registry's lease tasks without a router: a fake reactor clock, the real
LeaseState on an SQLite file, ocs's param handling via the testing kit."""
import os
import sqlite3
from unittest import mock

import pytest

from ocs_locking.leases.audit import check_audit

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


def hold(ops, resource, owner, **params):
    """Acquire through the lease procedure (as holders do): the grant's data,
    with its lease_id."""
    out = []
    ops._rpc_acquire(resource, owner, **params).addBoth(out.append)
    assert out and out[0]['ok'], out
    return out[0]['data']


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
    assert msg.startswith("Busy (busy): satp1 held by 'sched' (token 1) for another 30 s, "
                          "until ") and ' UTC ' in msg
    assert msg.endswith(' (obs block 4).')
    assert data['holders'][0]['owner'] == 'sched'
    refused = data['refused']
    assert (refused['target'], refused['kind'], refused['holder'], refused['waiting']) == \
        ('satp1/hwp', 'lease', 'sched (token 1)', 0)
    assert refused['text'] == msg and refused['left'] > 0


def test_LeaseOps_queued_acquire_is_granted_when_the_holder_releases(ops):
    """When an acquire waits in the queue, releasing the holder's lease grants
    it, with a larger token."""
    first = hold(ops, 'hwp', 'a')
    session = FakeSession('acquire')
    d = ops.acquire(session, _params(ops.acquire, {'resource': 'hwp', 'owner': 'b',
                                                   'timeout': 10}))
    out = []
    d.addBoth(out.append)
    assert out == [] and session.data['queue_position'] == 1
    (ok, _), _ = run(ops, 'release', resource='hwp', lease_id=first['lease_id'])
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
    ('renew', {'resource': 'hwp', 'lease_id': 'f' * 32}, r'^Refused: that lease_id holds '),
    ('release', {'resource': 'hwp', 'lease_id': 'f' * 32}, r'^Refused: that lease_id holds '),
    ('renew', {'resource': 'other', 'lease_id': 99},
     r'^Refused: lease_id must be a string of 32 hex digits, not a int$'),
    ('release', {'resource': 'other', 'lease_id': 'x' * 5000},
     r'^Refused: lease_id must be 32 lower-case hex digits, not 5000 character'),
    ('release', {'resource': 'other'}, r'^Refused: lease_id is required: '),
    ('renew', {'resource': 'other', 'lease_id': ['f' * 32]},
     r'^Refused: lease_id must be a string of 32 hex digits, not a list$'),
    ('force_release', {'resource': 'other', 'reason': ' '}, r'^Refused: reason must not be '),
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
    g = hold(ops, 'hwp', 'a', note='why')
    run(ops, 'release', resource='hwp', lease_id=g['lease_id'])
    (ok, msg), data = run(ops, 'history', limit=5)
    assert ok and [r['action'] for r in data['history']][:2] == ['release', 'grant']
    (ok, msg), data = run(ops, 'leases')
    assert ok and data['grants'] == [] and msg == '0 lease(s), 0 waiting.'


class Clock:
    def __init__(self, t=1.7e9):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def timed(tmp_path):
    """LeaseOps on a fake wall clock."""
    clock = Clock()
    ops = LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'leases.db'),
                   reactor=Reactor(), clock=clock)
    ops.clock_ = clock
    return ops


def test_LeaseOps_acquire_reply_says_how_long_it_queued(timed):
    """When an acquire waits 12.5 s in the queue, its reply carries
    queued_for=12.5 (a duration on the registry's clock) and the lease; an
    acquire granted at once says 0."""
    first = hold(timed, 'hwp', 'a', lease=20)
    assert first['queued_for'] == 0.0 and first['lease'] == 20.0
    d = timed.do_acquire('hwp', 'b', lease=5, timeout=60)
    out = []
    d.addBoth(out.append)
    timed.clock_.t += 12.5
    run(timed, 'release', resource='hwp', lease_id=first['lease_id'])
    timed.reactor.advance(0)
    ok, msg, data = out[0]
    assert ok and data['queued_for'] == 12.5 and data['token'] == 2


def test_LeaseOps_registers_the_lease_procedures_at_every_join(timed):
    """When the registry's session becomes ready (first join, and again after
    every router restart), the three lease procedures are registered."""
    agent = timed.agent
    [handler] = [c.args[1] for c in agent.on.call_args_list if c.args[0] == 'ready']
    agent.agent_address = 'observatory.lock-registry'
    for _ in range(2):
        handler(agent)
    uris = [c.args[1] for c in agent.register.call_args_list]
    assert uris == [f'observatory.lock-registry.lease.{n}'
                    for n in ('acquire', 'renew', 'release', 'watch', 'preempt')] * 2


def test_LeaseOps_unopenable_database_raises_one_line(tmp_path):
    """When the database cannot be opened, LeaseOps raises LeaseStoreError
    in one line naming the file (not SystemExit)."""
    from ocs_locking.errors import LeaseStoreError
    bad = str(tmp_path / 'no-such-dir' / 'x.db')
    with pytest.raises(LeaseStoreError, match=r"^cannot open the lease database '.*x\.db': "
                                              r"cannot open lease store .*does not exist$"):
        LeaseOps(mock.MagicMock(name='agent'), bad, reactor=Reactor())


def test_LeaseOps_refusals_are_audited_with_their_reason_at_a_bounded_rate(timed):
    """When a call is refused (busy, a stale token), the audit log gets a
    'refuse' row (ok false) with the reason; repeats of one refusal within
    10 s are not written again."""
    _, g = run(timed, 'acquire', resource='hwp', owner='a')
    for _ in range(20):
        run(timed, 'acquire', resource='hwp', owner='b')
    run(timed, 'renew', resource='hwp', lease_id='f' * 32)
    (ok, _), data = run(timed, 'history', action='refuse')
    rows = data['history']
    assert ok and [(r['owner'], r['detail']['call'], r['ok']) for r in rows] == [
        ('', 'renew', False), ('b', 'acquire', False)]
    assert rows[1]['detail']['reason'].startswith("busy: hwp held by 'a' (token 1) for another ")
    assert rows[0]['detail']['reason'].startswith("that lease_id does not hold 'hwp' "
                                                  "(held by 'a', token 1)")
    timed.clock_.t += 10
    run(timed, 'acquire', resource='hwp', owner='b')
    assert len(run(timed, 'history', action='refuse')[1]['history']) == 3


def test_LeaseOps_history_filters_by_age_on_the_registry_clock(timed):
    """When history is asked for rows of the last 30 s of one owner and
    action, it answers by the registry's own clock."""
    run(timed, 'acquire', resource='lab/a', owner='alice', lease=600)
    timed.clock_.t += 60
    run(timed, 'acquire', resource='lab/b', owner='alice', lease=600)
    run(timed, 'acquire', resource='lab/c', owner='bob', lease=600)
    (ok, msg), data = run(timed, 'history', resource='lab', owner='alice', action=['grant'],
                          since=30)
    assert ok and msg == '1 audit record(s).'
    assert [r['resource'] for r in data['history']] == ['lab/b']
    assert len(run(timed, 'history', resource='lab', since=120)[1]['history']) == 3


def test_LeaseOps_prunes_the_audit_log_to_its_bounds(tmp_path):
    """When audit rows are older than --audit-days or beyond --audit-rows, the
    expiry ticker prunes the oldest (at most once a minute); grants stay."""
    clock = Clock()
    ops = LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'l.db'), reactor=Reactor(),
                   clock=clock, audit_days=1, audit_rows=100)
    run(ops, 'acquire', resource='old', owner='x', lease=3600)
    clock.t += 2 * 86400
    ops.reactor.advance(61)
    # the 2-day-old grant row went; the expiry written just now stays
    assert [r['action'] for r in ops.store.history(limit=None)] == ['expire']
    for i in range(150):
        run(ops, 'acquire', resource=f'r{i}', owner='x', lease=3600)
    clock.t += 61
    ops.reactor.advance(61)
    assert len(ops.store.history(limit=None)) == 100
    assert len(ops.state.holders()) == 150


def test_LeaseOps_procedures_answer_compact_grants(timed):
    """When an agent or a script calls the lease procedures, a grant's data
    has the holder's keys only (grants listed only for several resources) and
    a renewal's data its new expiry; refusals carry the error."""
    out = []
    timed._rpc_acquire('hwp', 'a', lease=9).addBoth(out.append)
    data = out[0]['data']
    assert out[0]['ok'] and set(data) == {'resource', 'owner', 'token', 'expires',
                                          'request_id', 'lease', 'queued_for', 'lease_id'}
    timed._rpc_acquire(['x', 'y'], 'a', lease=9).addBoth(out.append)
    assert out[1]['data']['grants'] == [{'resource': 'x', 'token': 1},
                                        {'resource': 'y', 'token': 1}]
    renewed = timed._rpc_renew('hwp', data['lease_id'], lease=9)
    assert renewed['data'] == {'resource': 'hwp', 'token': 1,
                               'expires': timed.clock_() + 9, 'lease': 9,
                               'expires_in': 9.0}
    refused = timed._rpc_release('hwp', 'f' * 32)
    assert refused['ok'] is False and refused['data']['error'].startswith(
        "that lease_id does not hold 'hwp'")


class TestStorageFaults:
    """Issue 9 items 1-3: a failed write, a deleted database, epochs, --db
    taken from the site's directory (a fake clock and reactor)."""

    @staticmethod
    def make(tmp_path, **kw):
        clock = Clock()
        ops = LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'leases.db'),
                       reactor=Reactor(), clock=clock, **kw)
        ops.clock_ = clock
        return ops

    @staticmethod
    def tick(ops, seconds):
        """Advance the registry's clock and its reactor together, one tick at a time."""
        for _ in range(round(seconds / 0.1)):
            ops.clock_.t += 0.1
            ops.reactor.advance(0.1)

    @staticmethod
    def fail_writes(ops, times):
        """Make the store's next ``times`` transactions fail as on a full
        disk (SQLite's own error, from its connection); returns the count
        left, to change."""
        left = [times]

        class Failing:
            def __init__(self, db):
                self._db = db

            def execute(self, statement, *args):
                if statement == 'BEGIN IMMEDIATE' and left[0] > 0:
                    left[0] -= 1
                    raise sqlite3.OperationalError('database or disk is full')
                return self._db.execute(statement, *args)

            def __getattr__(self, name):
                return getattr(self._db, name)
        ops.store._db = Failing(ops.store._db)
        return left

    def test_write_failing_once_does_not_stop_expiry(self, tmp_path):
        """When the expiry tick's write fails once, the timer goes on: a 1 s
        lease is gone within 1.5 s, and grants resume after."""
        ops = self.make(tmp_path)
        _, g = run(ops, 'acquire', resource='hwp', owner='a', lease=1)
        t0 = ops.clock_.t
        self.tick(ops, 1.0)
        assert ops.state.holders()          # not due yet (the tick at t0 + 1.0 expires it)
        self.fail_writes(ops, 1)
        self.tick(ops, 0.5)
        assert ops.state.holders() == () and ops.clock_.t <= t0 + 1.5
        (ok, msg), data = run(ops, 'acquire', resource='hwp', owner='b', lease=1)
        assert ok and data['token'] == g['token'] + 1, msg
        assert run(ops, 'leases')[1]['storage']['ok'] is True
        assert check_audit(list(reversed(ops.store.history(limit=None)))) == []

    def test_ticker_survives_any_exception_and_logs_it_once(self, tmp_path):
        """When the expiry tick raises anything, every tick still runs, the
        failure is logged once, and leases keep ending."""
        ops = self.make(tmp_path)
        real = ops.state.expire
        ops.state.expire = mock.Mock(side_effect=RuntimeError('boom'))
        self.tick(ops, 1.0)
        assert [c.args[0] for c in ops.log.error.call_args_list].count('{message}') == 1
        ops.state.expire = real
        run(ops, 'acquire', resource='hwp', owner='a', lease=0.5)
        self.tick(ops, 0.7)
        assert ops.state.holders() == ()

    def test_failing_storage_refuses_calls_says_so_and_still_ends_leases(self, tmp_path):
        """When writes keep failing, acquire and renew are refused in one line
        naming the storage problem, leases/status say so, a lease still ends
        on time in memory and its waiter is not granted; once writes work the
        state is written whole, the waiter gets it, and disk equals memory."""
        ops = self.make(tmp_path)
        g = hold(ops, 'hwp', 'a', lease=1)
        d = ops.do_acquire('hwp', 'b', lease=5, timeout=30)
        answer = []
        d.addBoth(answer.append)
        left = self.fail_writes(ops, 10 ** 6)
        self.tick(ops, 0.2)
        (ok, msg), _ = run(ops, 'acquire', resource='other', owner='c')
        assert not ok and msg == (
            "Refused: lease storage is failing, so nothing is granted, renewed or released: "
            f"write to lease database {ops.store.path!r} failed: database or disk is full")
        (ok, msg), _ = run(ops, 'renew', resource='hwp', lease_id=g['lease_id'])
        assert not ok and 'lease storage is failing' in msg
        (ok, msg), data = run(ops, 'leases')
        assert ok and data['storage']['ok'] is False and 'disk is full' in data['storage']['error']
        assert msg.startswith('1 lease(s), 1 waiting. Storage failing, nothing is granted: ')
        self.tick(ops, 1.0)
        assert ops.state.holders() == () and answer == []      # ended; nobody got it
        left[0] = 0
        self.tick(ops, 0.1)
        ops.reactor.advance(0)
        assert answer[0][0] is True and answer[0][2]['owner'] == 'b'
        assert run(ops, 'leases')[1]['storage']['ok'] is True
        on_disk = ops.store.load()
        assert [r['resource'] for r in on_disk['grants']] == ['hwp']
        assert on_disk['counters'] == ops.state.snapshot()['counters']
        assert check_audit(list(reversed(ops.store.history(limit=None)))) == []

    def test_deleted_database_refuses_until_new_database(self, tmp_path):
        """When the database is deleted while running, grants are refused and
        leases/history still answer; a restart refuses until new_database,
        whose tokens exceed every earlier one."""
        ops = self.make(tmp_path)
        _, g = run(ops, 'acquire', resource='hwp', owner='a', lease=60)
        os.unlink(ops.store.path)
        self.tick(ops, 0.1)
        (ok, msg), _ = run(ops, 'acquire', resource='other', owner='b')
        assert not ok and 'was deleted or replaced while open' in msg
        assert run(ops, 'history')[0][0] is True
        assert run(ops, 'leases')[1]['storage']['ok'] is False
        ops.close()
        again = self.make(tmp_path)
        (ok, msg), _ = run(again, 'acquire', resource='hwp', owner='b')
        assert not ok and msg.endswith('no grant until the registry is started with '
                                       '--new-database')
        again.close()
        fresh = self.make(tmp_path, new_database=True)
        (ok, msg), data = run(fresh, 'acquire', resource='hwp', owner='b')
        assert ok and data['token'] > g['token'] and data['token'] == 2 ** 32 + 1, msg
        fresh.close()

    def test_relative_db_is_taken_from_the_site_directory(self, tmp_path, monkeypatch):
        """When --db is relative, it is taken from the site config file's
        directory whatever the working directory; leases reports the
        absolute path; tokens go on across restarts from another cwd."""
        from ocs_locking.agents.lock_registry.leases import site_dir
        site = tmp_path / 'site'
        site.mkdir()
        args = mock.Mock(site_file=str(site / 'default.yaml'))
        for cwd in ('a', 'b'):
            (tmp_path / cwd).mkdir()
            monkeypatch.chdir(tmp_path / cwd)
            ops = LeaseOps(mock.MagicMock(name='agent'), 'leases.db', reactor=Reactor(),
                           base=site_dir(args))
            data = hold(ops, 'hwp', cwd)
            assert data['token'] == {'a': 1, 'b': 2}[cwd]
            run(ops, 'release', resource='hwp', lease_id=data['lease_id'])
            assert run(ops, 'leases')[1]['storage']['path'] == str(site / 'leases.db')
            ops.close()
        assert sorted(os.listdir(tmp_path / 'a') + os.listdir(tmp_path / 'b')) == []
        monkeypatch.setenv('OCS_CONFIG_DIR', str(site))
        assert site_dir(mock.Mock(site_file=None)) == str(site)
