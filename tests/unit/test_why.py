"""ocs_locking.why: the answer to "why is this busy" from plain rows (pure)."""
import pytest

from ocs_locking.lock import TimeoutLock
from ocs_locking.why import MAX_CHAIN, REASON_KEYS, explain, lease_reason, lock_reason


def row(key, job=None, session_id=None, held_for=None, waiters=0, queue=(), alive=True,
        **extra):
    agent, name = key.split('/', 1)
    held = job is not None or session_id is not None
    return dict({'lock': key, 'agent': agent, 'name': name, 'job': job, 'op': job,
                 'session_id': session_id, 'since': 1.0 if held else None,
                 'held_for': held_for, 'waiters': waiters, 'queue': list(queue),
                 'alive': alive, 'closed': False}, **extra)


def q(job, session_id, waited_for):
    return {'job': job, 'op': job, 'session_id': session_id, 'since': 1.0,
            'waited_for': waited_for}


def grant(resource, owner, token, granted_at, expires, tree=False, note=''):
    return {'resource': resource, 'owner': owner, 'token': token, 'expires': expires,
            'tree': tree, 'note': note, 'client': '', 'granted_at': granted_at,
            'request_id': token}


def request(resources, owner, queued_at, rid, tree=False):
    return {'request_id': rid, 'resources': list(resources), 'owner': owner, 'lease': 30.0,
            'tree': tree, 'note': '', 'client': '', 'queued_at': queued_at,
            'deadline': queued_at + 60, 'position': 1}


def test_a_free_lock_is_free_and_nobody_waits():
    a = explain('dev/hw', [row('dev/hw')])
    assert a['kind'] == 'lock' and a['holder'] is None
    assert a['lines'] == ['dev/hw is free', 'nobody waits']


def test_a_held_lock_names_holder_queue_in_order_and_usual_hold():
    rows = [row('dev/hw', 'acq', 3, 12.3, waiters=2,
                queue=[q('set_heater', 5, 2.1), q('cycle', 6, 0.3)])]
    usual = {('dev/hw', 'acq'): {'n': 57, 'median': 0.4, 'p90': 1.2}}
    a = explain('dev/hw', rows, usual=lambda k, j: usual.get((k, j)))
    assert a['lines'][0] == ('dev/hw is held by acq (session 3) for 12.3 s; its holds '
                             'usually last 0.4 s (p90 1.2 s, 57 holds)')
    assert a['lines'][-1] == ('2 waiting: 1. set_heater (session 5) for 2.1 s; '
                              '2. cycle (session 6) for 0.3 s')
    assert [e['position'] for e in a['queue']] == [1, 2]


def test_waiters_beyond_the_queue_shown_are_counted():
    rows = [row('dev/hw', 'acq', 3, 1.0, waiters=12, queue=[q('t', 5, 1.0)])]
    assert explain('dev/hw', rows)['lines'][-1] == '12 waiting: 1. t (session 5) for 1.0 s; ' \
                                                   'and 11 more'


def test_the_chain_follows_a_holder_into_another_lock_of_its_agent():
    rows = [row('dev/hw', 'acq', 3, 5.0, waiters=1, queue=[q('set', 9, 1.0)]),
            row('dev/valve', 'set', 9, 2.0, waiters=1, queue=[q('other', 11, 0.5)])]
    a = explain('dev/hw', rows)
    assert a['lines'][1:] == ['1 waiting: 1. set (session 9) for 1.0 s']
    b = explain('dev/valve', rows)
    assert b['lines'][1] == '  set (session 9) waits for dev/hw, held by acq (session 3) for 5.0 s'
    assert b['lines'][2] == '  acq (session 3) waits for nothing'


def test_the_chain_crosses_from_an_agent_lock_into_a_site_lease_and_on():
    rows = [row('dev/hw', 'acq', 3, 5.0)]
    leases = {'grants': [grant('demo/hwp', 'ops-console', 7, 100.0, 130.0),
                         grant('demo/mount', 'schedule', 2, 90.0, 150.0)],
              'waiting': [request(['demo/hwp'], 'dev', 110.0, 9),
                          request(['demo/mount'], 'ops-console', 111.0, 10)]}
    a = explain('dev/hw', rows, leases, now=120.0)
    assert a['lines'][1] == ('  acq (session 3) waits for demo/hwp (site lease), held by '
                             'ops-console (token 7) for another 10.0 s')
    assert a['lines'][2] == ('  ops-console (token 7) waits for demo/mount (site lease), '
                             'held by schedule (token 2) for another 30.0 s')
    assert a['lines'][3] == '  schedule (token 2) waits for nothing'
    assert [c['cycle'] for c in a['chain']] == [False, False]


def test_a_cycle_among_leases_is_named_and_ends_the_chain():
    leases = {'grants': [grant('s/mount', 'A', 1, 0.0, 100.0), grant('s/hwp', 'B', 2, 0.0, 100.0)],
              'waiting': [request(['s/hwp'], 'A', 1.0, 3), request(['s/mount'], 'B', 2.0, 4)]}
    a = explain('s/mount', [], leases, now=10.0)
    assert a['kind'] == 'lease'
    assert a['lines'][0] == 's/mount (site lease) is held by A (token 1) for 10.0 s, ' \
                            'for another 90.0 s'
    # the cycle spelled out, second, then the chain that closes it
    assert a['deadlocks'] == ['deadlock: A holds s/mount, waits for s/hwp (site lease) held by '
                              'B, which waits for s/mount (site lease)']
    assert a['lines'][1] == a['deadlocks'][0]
    assert 'closes a cycle' in a['lines'][4]
    assert a['chain'][-1]['cycle'] is True
    assert a['lines'][-1] == '1 waiting: 1. B for 8.0 s'


def test_a_long_chain_stops_at_max_chain_links():
    n = MAX_CHAIN + 5
    grants = [grant(f'r/x{i}', f'o{i}', i + 1, 0.0, 100.0) for i in range(n)]
    waiting = [request([f'r/x{i + 1}'], f'o{i}', 1.0 + i, 100 + i) for i in range(n - 1)]
    a = explain('r/x0', [], {'grants': grants, 'waiting': waiting}, now=1.0)
    assert len(a['chain']) == MAX_CHAIN


def test_a_resource_held_through_a_tree_grant_says_through_what():
    leases = {'grants': [grant('demo', 'ops', 4, 0.0, 60.0, tree=True, note='maint')],
              'waiting': []}
    a = explain('demo/hwp', [], leases, now=30.0)
    assert a['lines'][0] == ("demo/hwp (site lease) is held by ops (token 4) (through "
                             "demo/**), note 'maint' for 30.0 s, for another 30.0 s")


def test_a_free_resource_and_an_agent_target():
    assert explain('demo/hwp', [], {'grants': [], 'waiting': []})['lines'] == \
        ['demo/hwp (site lease) is free', 'nobody waits']
    rows = [row('dev/a', 'x', 1, 1.0), row('dev/b')]
    a = explain('dev', rows)
    assert a['kind'] == 'agent'
    assert a['lines'] == ['dev/a is held by x (session 1) for 1.0 s', 'nobody waits',
                          'dev/b is free', 'nobody waits']


def test_a_stale_row_says_so_and_flags_are_shown():
    a = explain('dev/hw', [row('dev/hw', 'acq', 1, 3.0, alive=False, flags=['stuck'])])
    assert a['lines'][0] == ('dev/hw is held by acq (session 1) for 3.0 s (its agent is '
                             'silent: the row is stale) [stuck]')


@pytest.mark.parametrize('target', ['', None, 'a//b', '/x', 'x' * 500])
def test_bad_targets_get_one_line(target):
    with pytest.raises(ValueError) as e:
        explain(target, [row('dev/hw')])
    assert '\n' not in str(e.value) and str(e.value).startswith('why:')


def test_an_unknown_lock_of_a_known_agent_names_its_locks():
    with pytest.raises(ValueError, match=r"no lock 'dev/nope' \(agent 'dev' reports dev/hw\)"):
        explain('dev/nope', [row('dev/hw')])


def test_a_broken_usual_statistic_is_ignored():
    def usual(k, j):
        raise RuntimeError('db gone')
    a = explain('dev/hw', [row('dev/hw', 'acq', 1, 2.0)], usual=usual)
    assert a['lines'][0] == 'dev/hw is held by acq (session 1) for 2.0 s'


def test_lock_reason_has_the_reason_keys_and_the_refusal_text():
    lock = TimeoutLock(name='hw')
    assert lock.acquire(job='acq', session_id=4)
    r = lock_reason(lock.status())
    assert tuple(r) == REASON_KEYS
    assert r['kind'] == 'lock' and r['holder'] == 'acq (session 4)' and r['waiting'] == 0
    assert r['text'].startswith("Could not acquire lock 'hw': held by 'acq' (session 4)")
    lock.release()


def test_lease_reason_counts_time_left_on_the_given_clock():
    r = lease_reason('demo/hwp', [grant('demo/hwp', 'ops', 7, 100.0, 130.0)], 110.0,
                     waiting=2, text='Busy')
    assert tuple(r) == REASON_KEYS
    assert (r['holder'], r['held_for'], r['left'], r['waiting']) == \
        ('ops (token 7)', 10.0, 20.0, 2)
    assert lease_reason('demo/hwp', [], 1.0)['holder'] is None
