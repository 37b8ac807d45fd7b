"""LeaseState (pure): grants, tokens, trees, queues, leases, and bad input.

Time is always passed in explicitly; nothing here sleeps.
"""
import json
import logging
import math
import re

import pytest

from ocs_locking.leases import state as state_module
from ocs_locking.leases.state import Grant, LeaseError, LeaseState, Outcome
from .lease_keys import UNISSUED, KeyedState
from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.paths import when
from ocs_locking.leases.store import LeaseStore


def at(t):
    """How a registry time appears in a message: local time with tenths."""
    return re.escape(f'{when(t)} (registry time)')


@pytest.fixture
def store():
    s = LeaseStore(':memory:')
    yield s
    s.close()


@pytest.fixture
def state(store):
    return KeyedState(store=store)


def tokens(outcome):
    return {g.resource: g.token for g in outcome.grants}


def test_LeaseState_grants_a_free_resource(state):
    """When a resource is free, acquire grants it at once: token 1, a lease
    from now, the caller's note and client, and poll says granted."""
    out = state.acquire('satp1/hwp', 'alice', 30, 100.0, note='tuning', client='op-1')
    assert out == Outcome('granted', 1, (Grant('satp1/hwp', 'alice', 1, 130.0, False, 'tuning',
                                               'op-1', 100.0, 1),))
    assert state.poll(1) == out
    assert state.holders() == out.grants


def test_LeaseState_tokens_increase_across_release_and_expiry(state):
    """When a resource is granted, released, granted, expires and is granted
    again, each grant's token is larger than the last."""
    t1 = state.acquire('a', 'o', 10, 0).grants[0].token
    state.release('a', t1, 1)
    t2 = state.acquire('a', 'o', 10, 2).grants[0].token
    assert state.expire(12)['expired'][0].token == t2
    t3 = state.acquire('a', 'o', 10, 13).grants[0].token
    assert t1 < t2 < t3


def test_LeaseState_tree_grant_excludes_the_path_and_everything_below(state):
    """When 'satp1' is held as a tree, 'satp1' and 'satp1/...' are busy, and
    the busy outcome names the holder; 'satp10' and 'satp2' are free."""
    held = state.acquire('satp1', 'alice', 10, 0, tree=True).grants
    for path in ('satp1', 'satp1/hwp', 'satp1/hwp/motor'):
        out = state.acquire(path, 'bob', 10, 1)
        assert (out.status, out.holders, out.request_id) == ('busy', held, None)
    assert state.acquire('satp10', 'bob', 10, 1).status == 'granted'
    assert state.acquire('satp2', 'bob', 10, 1, tree=True).status == 'granted'


def test_LeaseState_grant_below_excludes_a_tree_grant_above(state):
    """When 'satp1/hwp' is held (not as a tree), a tree lease on 'satp1' is
    busy, but a plain lease on 'satp1' is granted beside it."""
    state.acquire('satp1/hwp', 'alice', 10, 0)
    assert state.acquire('satp1', 'bob', 10, 1, tree=True).status == 'busy'
    assert state.acquire('satp1', 'bob', 10, 1).status == 'granted'


def test_LeaseState_siblings_and_plain_parent_child_coexist(state):
    """When tree leases are on siblings 'a/b' and 'a/c', and plain leases on
    'x' and 'x/y', all are granted; the same path twice is not."""
    for path, tree in (('a/b', True), ('a/c', True), ('x', False), ('x/y', False)):
        assert state.acquire(path, path, 10, 0, tree=tree).status == 'granted'
    assert state.acquire('x/y', 'other', 10, 0).status == 'busy'


def test_LeaseState_tokens_grow_along_a_path(state):
    """When 'a/b' has had tokens up to 3 and 'a' is then taken as a tree, the
    tree grant's token exceeds 3, and a later 'a/b' grant exceeds that: a
    device under 'a/b' sees growing tokens whoever covers it."""
    for i in range(3):
        state.release('a/b', state.acquire('a/b', 'o', 10, i).grants[0].token, i)
    tree_token = state.acquire('a', 'o', 10, 5, tree=True).grants[0].token
    assert tree_token == 4
    state.release('a', tree_token, 6)
    assert state.acquire('a/b', 'o', 10, 7).grants[0].token == 5


def test_LeaseState_multi_resource_is_all_or_nothing_in_sorted_order(state):
    """When one of several resources is held the request gets none of them;
    once it is free it gets all, in sorted order, one token each."""
    d = state.acquire('d', 'alice', 10, 0).grants[0]
    assert state.acquire(['d', 'b', 'a'], 'bob', 10, 1).status == 'busy'
    assert [g.resource for g in state.holders()] == ['d']
    state.release('d', d.token, 2)
    out = state.acquire(['d', 'b', 'a'], 'bob', 10, 3)
    assert [g.resource for g in out.grants] == ['a', 'b', 'd']
    assert tokens(out) == {'a': 1, 'b': 1, 'd': 2}
    assert {g.request_id for g in out.grants} == {out.request_id}


def test_LeaseState_release_through_one_resource_releases_the_request(state):
    """When a multi-resource grant is released through any one of its
    resources, all of them are released and poll says released."""
    out = state.acquire(['a', 'b'], 'bob', 10, 0)
    assert state.release('b', tokens(out)['b'], 1) == []
    assert state.holders() == ()
    assert state.poll(out.request_id).status == 'released'


def test_LeaseState_waiters_are_served_fifo(state):
    """When two requests wait for the same resource, the first is granted on
    release and the second moves to position 1."""
    t = state.acquire('a', 'x', 10, 0).grants[0].token
    w1 = state.acquire('a', 'w1', 10, 1, timeout=60)
    w2 = state.acquire('a', 'w2', 10, 2, timeout=60)
    assert (w1.status, w1.queue_position, w2.queue_position) == ('queued', 1, 2)
    [granted] = state.release('a', t, 3)
    assert granted.request_id == w1.request_id and granted.grants[0].owner == 'w1'
    assert granted.grants[0].expires == 13
    assert state.poll(w2.request_id).queue_position == 1
    assert state.poll(w1.request_id).status == 'granted'


def test_LeaseState_multi_resource_waiter_is_not_starved(state):
    """When a request for 'a'+'d' waits on 'a', later requests for the free
    'd' wait behind it (or are busy), and it is served first."""
    t = state.acquire('a', 'x', 10, 0).grants[0].token
    big = state.acquire(['a', 'd'], 'big', 10, 1, timeout=60)
    busy = state.acquire('d', 'small', 10, 2)
    assert (busy.status, busy.holders, busy.queue_position) == ('busy', (), 2)
    small = state.acquire('d', 'small', 10, 2, timeout=60)
    assert (small.status, small.queue_position) == ('queued', 2)
    [granted] = state.release('a', t, 3)
    assert granted.request_id == big.request_id
    [granted] = state.release('d', tokens(granted)['d'], 4)
    assert granted.request_id == small.request_id


def test_LeaseState_later_waiter_never_overtakes_an_earlier_conflicting_one(state):
    """When 'a' is freed while a plain and then a tree request for 'a' wait,
    and a request for 'a/b' waits behind the tree one, only the first is
    granted: 'a/b' stays behind the earlier tree request, though free."""
    t = state.acquire('a', 'x', 10, 0).grants[0].token
    first = state.acquire('a', 'w1', 10, 1, timeout=60)
    tree = state.acquire('a', 'w2', 10, 1, timeout=60, tree=True)
    below = state.acquire('a/b', 'w3', 10, 1, timeout=60)
    assert (tree.queue_position, below.queue_position) == (2, 2)   # w1 does not block a/b
    revoked, granted = state.force_release('a', 'test', 'op', 2)
    assert [o.request_id for o in granted] == [first.request_id]
    assert [w.request_id for w in state.waiting()] == [tree.request_id, below.request_id]
    [granted] = state.release('a', t + 1, 3)
    assert granted.request_id == tree.request_id
    [granted] = state.release('a', t + 2, 4)
    assert granted.request_id == below.request_id


def test_LeaseState_unrelated_requests_do_not_wait_for_earlier_waiters(state):
    """When a request waits for 'a', a request for 'b' or for a plain 'a/x'
    is granted at once; queue_position counts only conflicting waiters."""
    state.acquire('a', 'x', 10, 0)
    state.acquire('a', 'w', 10, 1, timeout=60)
    assert state.acquire('b', 'y', 10, 2).status == 'granted'
    assert state.acquire('a/x', 'y', 10, 2).status == 'granted'
    state.acquire('b', 'z', 10, 3, timeout=60)
    assert state.acquire('b', 'z2', 10, 3, timeout=60).queue_position == 2
    assert state.acquire('a', 'z3', 10, 3, timeout=60).queue_position == 2


def test_LeaseState_waiter_times_out_through_expire(state):
    """When a waiter's timeout passes, expire reports it timed out, removes
    it, records it, and poll says timed_out."""
    state.acquire('a', 'x', 100, 0)
    w = state.acquire('a', 'w', 10, 1, timeout=5)
    assert state.expire(5.9) == {'expired': [], 'timed_out': [], 'granted': []}
    assert state.expire(6.0) == {'expired': [], 'timed_out': [w.request_id], 'granted': []}
    assert state.waiting() == () and state.poll(w.request_id).status == 'timed_out'


def test_LeaseState_expire_applies_due_events_in_time_order(state, store):
    """When expire runs late, events apply in the order they fell due: a
    waiter whose deadline came before the lease ended times out, one whose
    deadline came after is granted with a lease starting now."""
    state.acquire('a', 'x', 10, 0)
    early = state.acquire('a', 'early', 5, 1, timeout=4)       # deadline 5
    late = state.acquire('a', 'late', 5, 2, timeout=20)        # deadline 22
    result = state.expire(30)
    assert [g.owner for g in result['expired']] == ['x']
    assert result['timed_out'] == [early.request_id]
    assert [o.request_id for o in result['granted']] == [late.request_id]
    assert result['granted'][0].grants[0].expires == 35
    assert [r['action'] for r in reversed(store.history())][-3:] == \
        ['timeout', 'expire', 'grant']


def test_LeaseState_renew_extends_the_whole_request(state, store):
    """When a holder renews through one resource with its token, every
    resource of its request gets the new expiry; the token stays."""
    out = state.acquire(['a', 'b'], 'o', 10, 0)
    g = state.renew('a', tokens(out)['a'], 30, 5, client='c2')
    assert (g.resource, g.token, g.expires) == ('a', 1, 35)
    assert [h.expires for h in state.holders()] == [35, 35]
    assert state.expire(34)['expired'] == []
    assert store.history(limit=1)[0]['client'] == 'c2'


def test_LeaseState_renew_with_a_wrong_lease_id_is_refused(state):
    """When renew names the lease id of an ended grant, LeaseError says how
    it ended; a lease id never issued is told it does not hold the lease."""
    first = state.acquire('a', 'o', 10, 0)
    state.release('a', first.lease_id, 1)
    state.acquire('a', 'p', 10, 2)
    state.acquire('a', 'q', 10, 2, timeout=60)
    with pytest.raises(LeaseError, match=rf"^lease on 'a' was released at {at(1)}$"):
        state.renew('a', first.lease_id, 10, 3)
    with pytest.raises(LeaseError, match=r"^that lease_id does not hold 'a' \(held by 'p', "
                                         r"token 2\)"):
        state.renew('a', UNISSUED, 10, 3)


def test_LeaseState_renew_after_expiry_is_refused(state):
    """When a lease has expired, renewing it says when it expired, and the
    next grant of that resource has a larger token."""
    t = state.acquire('a', 'o', 10, 0).grants[0].token
    with pytest.raises(LeaseError, match=rf"^lease on 'a' expired at {at(10)}$"):
        state.renew('a', t, 10, 10)
    assert state.acquire('a', 'p', 10, 11).grants[0].token > t


def test_LeaseState_release_hands_over_to_waiters_and_refuses_wrong_tokens(state):
    """When a non-holder's token is used to release, LeaseError; the holder's
    release returns the outcome granted to the waiter."""
    t = state.acquire('a', 'o', 10, 0).grants[0].token
    w = state.acquire('a', 'w', 10, 1, timeout=60)
    with pytest.raises(LeaseError, match=r"^that lease_id does not hold 'a' \(held by 'o', "
                                         r"token 1\)"):
        state.release('a', t + 1, 2)
    assert [o.request_id for o in state.release('a', t, 2)] == [w.request_id]
    with pytest.raises(LeaseError, match=rf"^lease on 'a' was released at {at(2)}$"):
        state.release('a', t, 3)


def test_LeaseState_force_release_revokes_and_hands_over(state, store):
    """When an operator force-releases a held resource, the holder's whole
    request is revoked, the waiter is granted, the audit row names who and
    why, and the old token is refused with the reason."""
    out = state.acquire(['a', 'b'], 'alice', 100, 0, client='c-alice')
    w = state.acquire('b', 'bob', 10, 1, timeout=60)
    revoked, granted = state.force_release('a', 'pump stuck', 'op-carol', 2, client='c-op')
    assert [g.resource for g in revoked] == ['a', 'b']
    assert [o.request_id for o in granted] == [w.request_id]
    assert state.poll(out.request_id).status == 'revoked'
    row = [r for r in store.history() if r['action'] == 'force_release'][0]
    assert (row['owner'], row['client'], row['detail']['holder'], row['detail']['reason']) == \
        ('op-carol', 'c-op', 'alice', 'pump stuck')
    with pytest.raises(LeaseError, match=rf"^lease on 'a' was revoked at {at(2)} by "
                                         r"'op-carol': 'pump stuck'$"):
        state.renew('a', tokens(out)['a'], 10, 3)


def test_LeaseState_force_release_of_nothing_is_refused(state):
    """When nothing is held on the resource, force_release raises, and says
    when a tree lease above covers it."""
    with pytest.raises(LeaseError, match=r"^nothing is held on 'a'$"):
        state.force_release('a', 'r', 'op', 0)
    state.acquire('a', 'o', 10, 0, tree=True)
    with pytest.raises(LeaseError, match=r"^nothing is held on 'a/b' "
                                         r"\(it is covered by a tree lease on 'a'\)$"):
        state.force_release('a/b', 'r', 'op', 0)


def test_LeaseState_cancel_withdraws_and_unblocks_later_waiters(state):
    """When an earlier waiter that blocks a later one is cancelled, the later
    one is granted at once; cancelling again raises."""
    state.acquire('a', 'x', 10, 0)
    big = state.acquire(['a', 'd'], 'big', 10, 1, timeout=60)
    small = state.acquire('d', 'small', 10, 2, timeout=60)
    [granted] = state.cancel(big.request_id, 3)
    assert granted.request_id == small.request_id
    assert state.poll(big.request_id) == Outcome('cancelled', big.request_id)
    with pytest.raises(LeaseError, match=r'^request \d+ is not waiting \(cancelled\)$'):
        state.cancel(big.request_id, 4)


def test_LeaseState_poll_reports_every_stage(state):
    """When a request queues, is granted, and expires, poll follows it; an id
    never issued is unknown."""
    state.acquire('a', 'x', 10, 0)
    w = state.acquire('a', 'w', 5, 1, timeout=60)
    assert (state.poll(w.request_id).status, state.poll(w.request_id).holders[0].owner) == \
        ('queued', 'x')
    state.expire(10)
    assert state.poll(w.request_id).status == 'granted'
    state.expire(15)
    assert state.poll(w.request_id).status == 'expired'
    assert state.poll(999) == Outcome('unknown', 999)


def test_LeaseState_holders_of_a_path_are_what_a_tree_lease_would_wait_for(state):
    """When asked for the holders of 'a/b', it lists grants on it, below it,
    and tree grants above it, not plain grants above it or on siblings."""
    for path, tree in (('a', False), ('a/b', False), ('a/b/c', False), ('a/x', True)):
        state.acquire(path, 'o', 10, 0, tree=tree)
    assert [g.resource for g in state.holders('a/b')] == ['a/b', 'a/b/c']
    state.acquire('q', 'o', 10, 0, tree=True)
    assert [g.resource for g in state.holders('q/r')] == ['q']


def test_LeaseState_snapshot_is_plain_data(state):
    """When asked for a snapshot it gives grants, waiters with positions and
    counters as plain dicts and lists."""
    state.acquire('a', 'x', 10, 0)
    state.acquire(['a', 'b'], 'w', 10, 1, timeout=60)
    snap = state.snapshot()
    assert snap['counters'] == {'a': 1}
    assert snap['waiting'][0]['resources'] == ['a', 'b']
    assert snap['waiting'][0]['position'] == 1
    assert snap['grants'][0]['owner'] == 'x'


def test_LeaseState_outcome_as_dict_is_json_ready(state):
    """When an outcome is turned into a dict (for session.data), it is plain
    JSON: lists of grant dicts with every Grant field."""
    state.acquire('a', 'x', 10, 0)
    out = state.acquire(['a', 'b'], 'w', 10, 1, timeout=60)
    d = json.loads(json.dumps(out.as_dict()))
    assert d == {'status': 'queued', 'request_id': 2, 'grants': [], 'queue_position': 1,
                 'holders': [{'resource': 'a', 'owner': 'x', 'token': 1, 'expires': 10.0,
                              'tree': False, 'note': '', 'client': '', 'granted_at': 0.0,
                              'request_id': 1}], 'queued_for': 0.0}


def test_LeaseState_remembers_a_bounded_number_of_finished_requests(state, monkeypatch):
    """When more requests finish than KEEP_DONE, poll forgets the oldest."""
    monkeypatch.setattr(state_module, 'KEEP_DONE', 3)
    for i in range(5):
        state.release('a', state.acquire('a', 'o', 10, i).grants[0].token, i)
    assert [state.poll(i).status for i in range(1, 6)] == ['unknown'] * 2 + ['released'] * 3


def test_LeaseState_audits_every_change(store):
    """When requests are granted, renewed and released (folding off), each is
    one audit row per resource: who, what, token, when, why, client; a
    request that queued adds no row of its own, its grant says how long it
    waited."""
    state = KeyedState(store=store, fold_window=0)
    out = state.acquire(['a', 'b'], 'alice', 10, 1, note='cooldown', client='sched')
    state.acquire('a', 'bob', 10, 2, timeout=1, client='cli')
    state.renew('a', 1, 10, 2.5)
    state.release('a', 1, 2.5, client='sched')
    state.acquire('c', 'carol', 10, 4, timeout=0)
    rows = list(reversed(store.history()))
    assert [(r['action'], r['resource'], r['owner'], r['token'], r['at']) for r in rows] == [
        ('grant', 'a', 'alice', 1, 1), ('grant', 'b', 'alice', 1, 1),
        ('renew', 'a', 'alice', 1, 2.5), ('renew', 'b', 'alice', 1, 2.5),
        ('release', 'a', 'alice', 1, 2.5), ('release', 'b', 'alice', 1, 2.5),
        ('grant', 'a', 'bob', 2, 2.5),
        ('grant', 'c', 'carol', 1, 4)]
    assert rows[0]['detail'] == {'request': out.request_id, 'tree': False, 'expires': 11,
                                 'note': 'cooldown'}
    assert (rows[0]['client'], rows[6]['client']) == ('sched', 'cli')
    assert rows[6]['detail']['queued_for'] == 0.5 and 'queued_for' not in rows[0]['detail']


def test_LeaseState_listeners_hear_changes_after_they_are_stored(state, store, caplog):
    """When a listener is added it is called with (action, item) for each
    change once stored; a failing listener is logged and the others still run."""
    heard = []
    state.add_listener(lambda action, item: 1 / 0)
    state.add_listener(lambda action, item: heard.append((action, len(store.history()))))
    with caplog.at_level(logging.ERROR):
        out = state.acquire('a', 'x', 10, 0)
        state.acquire('a', 'w', 10, 1, timeout=60)
        state.release('a', 1, 2)
    assert heard == [('grant', 1), ('queue', 1), ('release', 3), ('grant', 3)]
    assert 'lease listener' in caplog.text and out.status == 'granted'


class BrokenStore:
    """A store whose writes fail, as a full disk would."""

    def load(self):
        return {'grants': [], 'counters': {}, 'last_request_id': 0}

    def apply(self, **changes):
        raise OSError('disk full')


def test_LeaseState_failed_write_changes_nothing():
    """When the store cannot write, the call raises and the state is as
    before: no grant, no counter, no request id used."""
    state = KeyedState(store=BrokenStore())
    with pytest.raises(OSError, match='disk full'):
        state.acquire('a', 'o', 10, 0)
    assert state.snapshot() == {'grants': [], 'waiting': [], 'counters': {}}
    assert state.poll(1).status == 'unknown'


def test_LeaseState_without_store_keeps_state_in_memory():
    """When no store is given, leases work the same and nothing persists."""
    state = KeyedState()
    assert state.acquire('a', 'o', 10, 0).grants[0].token == 1
    assert KeyedState().holders() == ()


def test_LeaseState_queue_full_is_refused(store):
    """When max_waiting requests already wait, another that would wait is
    refused with LeaseError; one that can be granted still is."""
    state = KeyedState(store=store, max_waiting=1)
    state.acquire('a', 'x', 10, 0)
    state.acquire('a', 'w', 10, 0, timeout=5)
    with pytest.raises(LeaseError, match=r"^queue is full \(max_waiting=1; most waiting: "
                                         r"'w' 1\)$"):
        state.acquire('a', 'v', 10, 0, timeout=5)
    assert state.acquire('b', 'v', 10, 0, timeout=5).status == 'granted'


@pytest.mark.parametrize('kwargs, message', [
    ({'max_lease': 0}, r"^max_lease must be in \[0\.5, 3600\] seconds, not 0$"),
    ({'max_timeout': math.nan}, r'^max_timeout must be in \[0, 1e\+09\] seconds, not nan$'),
    ({'max_resources': 0}, r'^max_resources must be a positive integer, not 0$'),
    ({'max_waiting': 1.5}, r'^max_waiting must be a positive integer, not 1\.5$'),
    ({'max_waiting_per_owner': 0},
     r'^max_waiting_per_owner must be a positive integer, not 0$'),
    ({'max_waiting_per_client': '8'},
     r"^max_waiting_per_client must be a positive integer, not '8'$"),
])
def test_LeaseState_bad_limits_are_refused(kwargs, message):
    """When a limit is out of range, the constructor raises LeaseError."""
    with pytest.raises(LeaseError, match=message):
        KeyedState(**kwargs)


# -- malformed requests: a clear error, and nothing changes ---------------------------

@pytest.fixture
def busy(store):
    """A state with history: 'a' held by bob (token 2, after alice's 1, until
    10), 'b/c' by carol as a tree, 'd' by gina (token 3), erin waiting for 'a'."""
    state = KeyedState(store=store, max_waiting=1)
    state.release('a', state.acquire('a', 'alice', 10, 0).grants[0].token, 0)
    state.acquire('a', 'bob', 10, 0)
    state.acquire('b/c', 'carol', 100, 0, tree=True)
    for owner in ('dave', 'frank'):
        state.release('d', state.acquire('d', owner, 100, 0).grants[0].token, 0)
    state.acquire('d', 'gina', 100, 0)
    state.acquire('a', 'erin', 10, 0, timeout=50)
    return state


def acquire(resources='q', owner='o', lease=10, now=1, **kw):
    return lambda s: s.acquire(resources, owner, lease, now, **kw)


LONG = 'x' * 300
MALFORMED = [
    ('resources None', acquire(None),
     r"^resources must be a resource path or a list of them, not None$"),
    ('resources int', acquire(42), r"^resources must be a resource path or a list of them, "
                                   r"not 42$"),
    ('resources set', acquire({'a'}), r"^resources must be a resource path or a list"),
    ('resources empty list', acquire([]), r"^resources must not be an empty list$"),
    ('resource empty', acquire(''), r"^resource must not be empty$"),
    ('resource not str in list', acquire([1]), r"^resource must be a path like 'satp1/hwp', "
                                               r"not 1$"),
    ('resource upper case', acquire('A/b'), r"^resource segment 'A' must match "
                                            r"\[a-z0-9\]\[a-z0-9_.-\]\{0,31\}: 'A/b'$"),
    ('resource double slash', acquire('a//b'), r"^resource segment '' must match .*: 'a//b'$"),
    ('resource leading slash', acquire('/a'), r"^resource segment '' must match .*: '/a'$"),
    ('resource trailing slash', acquire('a/'), r"^resource segment '' must match .*: 'a/'$"),
    ('resource space', acquire('a b'), r"^resource segment 'a b' must match"),
    ('resource dot first', acquire('a/.x'), r"^resource segment '\.x' must match"),
    ('resource newline', acquire('a\n'), r"^resource segment 'a\\n' must match"),
    ('resource wildcard', acquire('a/*'), r"^resource segment '\*' must match"),
    ('resource segment too long', acquire('a' * 33), r"^resource segment 'a{33}' must match"),
    ('resource too long', acquire(LONG), r"^resource must be at most 200 characters, not 300: "
                                         r"'x{79}$"),
    ('resource too deep', acquire('/'.join('abcdefghi')),
     r"^resource must have at most 8 segments, not 9: 'a/b/c/d/e/f/g/h/i'$"),
    ('resources duplicate', acquire(['q', 'q']), r"^resources must not list 'q' twice$"),
    ('resources overlap as tree', acquire(['q', 'q/r'], tree=True),
     r"^resources 'q' and 'q/r' overlap \(tree=True\)$"),
    ('too many resources', acquire([f'r{i}' for i in range(17)]),
     r"^resources must list at most 16 paths, not 17$"),
    ('owner empty', acquire(owner=''), r"^owner must not be empty$"),
    ('owner blank', acquire(owner='   '), r"^owner must not be empty$"),
    ('owner None', acquire(owner=None), r"^owner must be a string, not None$"),
    ('owner too long', acquire(owner='o' * 129), r"^owner must be at most 128 characters, "
                                                 r"not 129: 'o{79}$"),
    ('owner two lines', acquire(owner='a\nb'), r"^owner must be printable text on one line, "
                                               r"not 'a\\nb'$"),
    ('lease zero', acquire(lease=0), r"^lease must be in \[0\.5, 3600\] seconds, not 0$"),
    ('lease negative', acquire(lease=-1), r"^lease must be in \[0\.5, 3600\] seconds, not -1$"),
    ('lease nan', acquire(lease=math.nan), r"^lease must be in \[0\.5, 3600\] seconds, not nan$"),
    ('lease inf', acquire(lease=math.inf), r"^lease must be in \[0\.5, 3600\] seconds, not inf$"),
    ('lease huge', acquire(lease=1e12), r"^lease must be in \[0\.5, 3600\] seconds, "
                                        r"not 1000000000000\.0$"),
    ('lease string', acquire(lease='10'), r"^lease must be a number of seconds, not '10'$"),
    ('lease bool', acquire(lease=True), r"^lease must be a number of seconds, not True$"),
    ('timeout negative', acquire(timeout=-1), r"^timeout must be in \[0, 600\] seconds, "
                                              r"not -1$"),
    ('timeout huge', acquire(timeout=1e6), r"^timeout must be in \[0, 600\] seconds"),
    ('lease huge int', acquire(lease=10 ** 400), r"^lease must be in \[0\.5, 3600\] seconds, "
                                                 r"not 1{1}0{79}$"),
    ('timeout None', acquire(timeout=None), r"^timeout must be a number of seconds, not None$"),
    ('tree string', acquire(tree='yes'), r"^tree must be True or False, not 'yes'$"),
    ('note not str', acquire(note=5), r"^note must be a string, not 5$"),
    ('note too long', acquire(note='n' * 501), r"^note must be at most 500 characters"),
    ('client bytes', acquire(client=b'x'), r"^client must be a string, not b'x'$"),
    ('now nan', acquire(now=math.nan), r"^now must be a finite time in seconds, not nan$"),
    ('now huge int', acquire(now=10 ** 400), r"^now must be a finite time in seconds, "
                                             r"not 1{1}0{79}$"),
    ('now string', acquire(now='1'), r"^now must be a finite time in seconds, not '1'$"),
    ('queue full', acquire('a', timeout=5), r"^queue is full \(max_waiting=1; most waiting: "
                                            r"'erin' 1\)$"),
    ('renew lease_id never issued', lambda s: s.renew('a', UNISSUED, 10, 1),
     r"^that lease_id does not hold 'a' \(held by 'bob', token 2\): only its holder may "
     r"renew or release it; force_release revokes someone else's lease$"),
    ('renew lease_id short', lambda s: s.renew('a', 'abc', 10, 1),
     r"^lease_id must be 32 lower-case hex digits, not 3 character\(s\) of something else$"),
    ('renew lease_id upper case', lambda s: s.renew('a', 'F' * 32, 10, 1),
     r"^lease_id must be 32 lower-case hex digits, not 32 character\(s\)"),
    ('renew lease_id an int', lambda s: LeaseState.renew(s, 'a', 2, 10, 1),
     r"^lease_id must be a string of 32 hex digits, not a int$"),
    ('renew lease_id None', lambda s: s.renew('a', None, 10, 1),
     r"^lease_id is required: renew and release need the lease_id acquire returned"),
    ('renew lease_id bytes', lambda s: s.renew('a', b'f' * 32, 10, 1),
     r"^lease_id must be a string of 32 hex digits, not a bytes$"),
    ('renew lease negative', lambda s: s.renew('a', 2, -5, 1),
     r"^lease must be in \[0\.5, 3600\] seconds, not -5$"),
    ('renew unknown resource', lambda s: s.renew('zz', 1, 10, 1),
     r"^that lease_id holds nothing on 'zz': nothing is held there$"),
    ('renew after expiry', lambda s: s.renew('a', 2, 10, 10),
     rf"^lease on 'a' expired at {at(10)}$"),
    ('renew bad resource', lambda s: s.renew('a/', 2, 10, 1), r"^resource segment ''"),
    ('release released token', lambda s: s.release('a', 1, 1),
     rf"^lease on 'a' was released at {at(0)}$"),
    ('release by non-owner', lambda s: s.release('d', 1, 1),
     r"^that lease_id does not hold 'd' \(held by 'gina', token 3\)"),
    ('release lease_id of other resource', lambda s: s.release('a', s.lease_id('d', 3), 1),
     r"^that lease_id does not hold 'a' \(held by 'bob', token 2\)"),
    ('release lease_id of a token, as text', lambda s: s.release('a', '2', 1),
     r"^lease_id must be 32 lower-case hex digits, not 1 character\(s\)"),
    ('release empty resource', lambda s: s.release('', 2, 1), r"^resource must not be empty$"),
    ('release client not str', lambda s: s.release('a', 2, 1, client=7),
     r"^client must be a string, not 7$"),
    ('force_release no reason', lambda s: s.force_release('a', '', 'op', 1),
     r"^reason must not be empty$"),
    ('force_release long reason', lambda s: s.force_release('a', 'r' * 501, 'op', 1),
     r"^reason must be at most 500 characters, not 501"),
    ('force_release by None', lambda s: s.force_release('a', 'r', None, 1),
     r"^by must be a string, not None$"),
    ('force_release nothing held', lambda s: s.force_release('q', 'r', 'op', 1),
     r"^nothing is held on 'q'$"),
    ('force_release covered path', lambda s: s.force_release('b/c/d', 'r', 'op', 1),
     r"^nothing is held on 'b/c/d' \(it is covered by a tree lease on 'b/c'\)$"),
    ('cancel unknown', lambda s: s.cancel(999, 1), r"^request 999 is not waiting \(unknown\)$"),
    ('cancel granted', lambda s: s.cancel(2, 1), r"^request 2 is not waiting \(granted\)$"),
    ('cancel id string', lambda s: s.cancel('7', 1),
     r"^request_id must be a positive integer, not '7'$"),
    ('poll id negative', lambda s: s.poll(-1), r"^request_id must be a positive integer, "
                                               r"not -1$"),
    ('holders bad path', lambda s: s.holders('Q'), r"^resource segment 'Q' must match"),
]


@pytest.mark.parametrize('call, message', [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_LeaseState_malformed_request_is_refused_and_changes_nothing(busy, store, call,
                                                                     message):
    """When a request is malformed (or names a wrong token, a non-owner, an
    expired lease, a full queue), LeaseError says what is wrong in one line,
    and the state and its audit trail are exactly as before."""
    before = (busy.snapshot(), len(store.history(limit=None)), busy.poll(6))
    with pytest.raises(LeaseError, match=message) as err:
        call(busy)
    assert '\n' not in str(err.value) and len(str(err.value)) < 300
    assert (busy.snapshot(), len(store.history(limit=None)), busy.poll(6)) == before


def test_LeaseState_has_at_least_30_malformed_cases():
    """When the malformed list is counted, it covers the issue's 30 or more."""
    assert len(MALFORMED) >= 30


# -- what the audit log keeps ------------------------------------------------------


def test_LeaseState_quick_regrants_of_one_holder_fold_into_one_row(state, store):
    """When one holder takes and gives back a resource 100 times at 10 Hz
    (an agent's --site-lock device commands), the audit log gets 3 rows, not
    200: the first grant and release, then one regrant row whose count,
    token and released flag follow the cycles; the log still replays clean."""
    t = 0.0
    for _ in range(100):
        g = state.acquire('lab/dev', 'dev-1', 5, t, client='observatory.dev-1').grants[0]
        state.release('lab/dev', g.token, t + 0.05, client='observatory.dev-1')
        t += 0.1
    rows = list(reversed(store.history(limit=None)))
    assert [r['action'] for r in rows] == ['grant', 'release', 'regrant']
    fold = rows[2]
    assert fold['token'] == 100 and fold['owner'] == 'dev-1'
    assert fold['detail']['count'] == 99 and fold['detail']['released'] is True
    assert fold['detail']['since'] == pytest.approx(0.1)
    assert fold['detail']['last_at'] == pytest.approx(9.95)
    assert check_audit(rows) == []


def test_LeaseState_agents_taking_turns_fold_and_anything_else_ends_the_fold(state, store):
    """When two agents take turns on one resource (each releasing it), their
    hand-overs fold into the same regrant row, which counts each owner; a
    grant on a path above it, a gap longer than the fold window, or a
    revocation end the fold (those are rows of their own)."""
    def cycle(owner, t, resource='lab/dev', tree=False):
        g = state.acquire(resource, owner, 5, t, tree=tree).grants[0]
        state.release(resource, g.token, t + 0.01)
    cycle('a', 0)
    for i in range(10):
        cycle('ab'[i % 2], 0.1 + i * 0.1)     # folded: b, a, b, a, ...
    cycle('c', 1.5, 'lab', tree=True)        # a tree above: a row, ends the fold
    cycle('b', 1.6)
    cycle('b', 30)                           # after the fold window
    g = state.acquire('lab/dev', 'b', 5, 30.1).grants[0]    # folded ...
    state.force_release('lab/dev', 'stuck', 'op', 31)        # ... revoked: its own row
    rows = list(reversed(store.history(limit=None)))
    assert [(r['action'], r['resource'], r['owner']) for r in rows] == [
        ('grant', 'lab/dev', 'a'), ('release', 'lab/dev', 'a'), ('regrant', 'lab/dev', 'b'),
        ('grant', 'lab', 'c'), ('release', 'lab', 'c'),
        ('grant', 'lab/dev', 'b'), ('release', 'lab/dev', 'b'),
        ('grant', 'lab/dev', 'b'), ('release', 'lab/dev', 'b'),
        ('regrant', 'lab/dev', 'b'), ('force_release', 'lab/dev', 'op')]
    assert rows[2]['detail']['owners'] == {'a': 5, 'b': 5}
    assert rows[2]['detail']['count'] == 10 and rows[2]['detail']['released'] is True
    assert rows[-2]['token'] == g.token and rows[-2]['detail']['released'] is False
    assert check_audit(rows) == []


def test_LeaseState_renewals_are_sampled(state, store):
    """When a holder renews every second for five minutes, the log keeps one
    renew row per minute (the first renewal, then one every 60 s)."""
    g = state.acquire('hwp', 'sched', 10, 0).grants[0]
    for t in range(1, 301):
        state.renew('hwp', g.token, 10, float(t))
    renews = [r['at'] for r in store.history(limit=None, actions=['renew'])]
    assert sorted(renews) == [1.0, 61.0, 121.0, 181.0, 241.0]
    assert state.holders()[0].expires == 310.0


def test_LeaseState_refused_call_rolls_back_the_fold_journal(state, store):
    """When an operation fails after folding started (the store cannot
    write), everything it changed is undone: the next cycle folds as if the
    failed one never happened."""
    g = state.acquire('a', 'x', 5, 0).grants[0]
    state.release('a', g.token, 0.01)
    before = (state.snapshot(), dict(state._runs), len(store.history(limit=None)))
    real = store.apply
    store.apply = lambda **kw: (_ for _ in ()).throw(RuntimeError('disk full'))
    with pytest.raises(RuntimeError, match='disk full'):
        state.acquire('a', 'x', 5, 0.1)
    store.apply = real
    assert (state.snapshot(), dict(state._runs), len(store.history(limit=None))) == before
    state.acquire('a', 'x', 5, 0.2)
    assert [r['action'] for r in store.history(limit=1)] == ['regrant']


def test_LeaseState_grant_outcome_reports_the_queue_wait(state):
    """When a request waits in the queue, its grant's Outcome says how long it
    queued (a duration on the caller's clock); granted at once, 0."""
    assert state.acquire('a', 'x', 20, 100).queued_for == 0.0
    w = state.acquire('a', 'y', 5, 101, timeout=60)
    [out] = state.expire(120)['granted']
    assert out.request_id == w.request_id and out.queued_for == 19.0


# -- fair queues and withdrawn waiters (issue 9) --------------------------------------

def test_LeaseState_one_owners_flood_does_not_refuse_another_owner(store):
    """When one owner floods the queue up to its per-owner limit, its next
    request is refused naming it and the limit, while another owner's request
    for an unrelated busy resource still queues, and one for a free resource
    is granted."""
    state = KeyedState(store=store, max_waiting_per_owner=3, max_waiting=5)
    state.acquire('a', 'holder', 60, 0)
    state.acquire('b', 'holder', 60, 0)
    for i in range(3):
        assert state.acquire('a', 'flood', 10, 1, timeout=30).status == 'queued'
    before = state.snapshot()
    with pytest.raises(LeaseError, match=r"^owner 'flood' already has 3 requests waiting "
                                         r"\(max_waiting_per_owner=3\)$"):
        state.acquire('a', 'flood', 10, 1, timeout=30)
    assert state.snapshot() == before
    assert state.acquire('b', 'alice', 10, 2, timeout=30).status == 'queued'
    assert state.acquire('c', 'alice', 10, 2, timeout=30).status == 'granted'


def test_LeaseState_one_clients_flood_under_many_owners_is_limited_per_client(store):
    """When one client queues requests under many owner names, its requests
    are limited per client; another client and requests without a client
    still queue."""
    state = KeyedState(store=store, max_waiting_per_client=2)
    state.acquire('a', 'holder', 60, 0)
    for owner in ('o1', 'o2'):
        state.acquire('a', owner, 10, 1, timeout=30, client='script-7')
    with pytest.raises(LeaseError, match=r"^client 'script-7' already has 2 requests "
                                         r"waiting \(max_waiting_per_client=2\)$"):
        state.acquire('a', 'o3', 10, 1, timeout=30, client='script-7')
    assert state.acquire('a', 'o3', 10, 1, timeout=30, client='other').status == 'queued'
    for owner in ('o4', 'o5', 'o6'):
        assert state.acquire('a', owner, 10, 1, timeout=30).status == 'queued'


def test_LeaseState_full_queue_message_names_who_fills_it(store):
    """When the global limit is reached, the refusal names the owners with
    the most waiting requests, most first, at most three."""
    state = KeyedState(store=store, max_waiting=6, max_waiting_per_owner=6)
    state.acquire('a', 'holder', 60, 0)
    for owner, n in (('bob', 1), ('flood', 3), ('carl', 1), ('dan', 1)):
        for _ in range(n):
            state.acquire('a', owner, 10, 1, timeout=30)
    with pytest.raises(LeaseError, match=r"^queue is full \(max_waiting=6; most waiting: "
                                         r"'flood' 3, 'bob' 1, 'carl' 1\)$"):
        state.acquire('a', 'eve', 10, 1, timeout=30)


def test_LeaseState_cancel_records_its_reason_and_the_request_is_never_granted(store):
    """When a waiting request is cancelled with a reason, its cancel audit
    row carries the reason, the holder's release grants nobody (or the next
    real waiter), and the cancelled request stays cancelled."""
    state = KeyedState(store=store)
    held = state.acquire('a', 'x', 10, 0)
    gone = state.acquire('a', 'gone', 10, 1, timeout=60)
    stays = state.acquire('a', 'stays', 10, 2, timeout=60)
    assert state.cancel(gone.request_id, 3, reason='the caller left') == []
    [granted] = state.release('a', held.grants[0].token, 4)
    assert granted.request_id == stays.request_id
    assert state.poll(gone.request_id) == Outcome('cancelled', gone.request_id)
    rows = [r for r in store.history(limit=100) if r['action'] == 'cancel']
    assert [(r['owner'], r['detail']['reason']) for r in rows] == [('gone', 'the caller left')]
    assert check_audit(list(reversed(store.history(limit=100)))) == []


def test_LeaseState_cancel_with_a_bad_reason_changes_nothing(state):
    """When cancel's reason is not a string, it raises naming it and the
    request still waits."""
    state.acquire('a', 'x', 10, 0)
    w = state.acquire('a', 'w', 10, 0, timeout=60)
    with pytest.raises(LeaseError, match=r'^reason must be a string, not 5$'):
        state.cancel(w.request_id, 1, reason=5)
    assert state.poll(w.request_id).status == 'queued'


def test_LeaseState_refuses_at_once_a_wait_that_would_close_a_deadlock(state):
    """When schedule-A holds satp1/mount and ops-console, holding satp1/hwp,
    waits for it, schedule-A asking to wait for satp1/hwp would close a
    cycle: it is refused at once with the cycle spelled out, nothing is
    queued, and the waiting request is untouched (it is served once
    schedule-A releases)."""
    mount = state.acquire('satp1/mount', 'schedule-A', 30, 0.0).grants[0]
    hwp = state.acquire('satp1/hwp', 'ops-console', 30, 0.0).grants[0]
    queued = state.acquire('satp1/mount', 'ops-console', 30, 1.0, timeout=20)
    assert queued.status == 'queued'
    with pytest.raises(LeaseError, match=(
            r'^deadlock: schedule-A holds satp1/mount, waits for satp1/hwp held by '
            r'ops-console, which waits for satp1/mount$')):
        state.acquire('satp1/hwp', 'schedule-A', 30, 2.0, timeout=20)
    assert [w.owner for w in state._waiting] == ['ops-console']
    # without a timeout it is only busy, as any request for a held resource
    assert state.acquire('satp1/hwp', 'schedule-A', 30, 2.0).status == 'busy'
    state.release('satp1/mount', mount.token, 3.0)
    assert state.poll(queued.request_id).status == 'granted'
    assert hwp.owner == 'ops-console'


def test_LeaseState_tells_an_agents_operations_apart_in_the_deadlock_check(state):
    """When one operation of agent sim-1 holds demo/y and another of its
    operations waits for demo/x (held by ops-console), ops-console waiting
    for demo/y closes no cycle (the holder of demo/y waits for nothing): it
    is queued, not refused. Once the holding operation itself waits for
    demo/x, ops-console's wait would close one and is refused, naming the
    operations."""
    state.acquire('demo/x', 'ops-console', 30, 0.0)
    state.acquire('demo/y', 'sim-1', 30, 0.0, party='acq (session 3)')
    assert state.acquire('demo/x', 'sim-1', 30, 1.0, timeout=20,
                         party='cal (session 4)').status == 'queued'
    assert state.snapshot()['waiting'][0]['party'] == 'cal (session 4)'
    out = state.acquire('demo/y', 'ops-console', 30, 2.0, timeout=20)
    assert out.status == 'queued'
    state.cancel(out.request_id, 2.5)
    state.acquire('demo/x', 'sim-1', 30, 3.0, timeout=20, party='acq (session 3)')
    with pytest.raises(LeaseError, match=(
            r'^deadlock: ops-console holds demo/x, waits for demo/y held by sim-1 acq '
            r'\(session 3\), which waits for demo/x$')):
        state.acquire('demo/y', 'ops-console', 30, 4.0, timeout=20)


def test_LeaseState_party_is_checked_and_forgotten_with_its_request(state):
    """A bad party is refused in one line and changes nothing; a party is
    kept while its request waits or holds, and dropped when it ends."""
    with pytest.raises(LeaseError, match=r'^party must be a string'):
        state.acquire('demo/x', 'sim-1', 30, 0.0, party=5)
    assert state.snapshot()['grants'] == []
    g = state.acquire('demo/x', 'sim-1', 30, 0.0, party='acq')
    assert state.party(g.request_id) == 'acq'
    state.release('demo/x', g.lease_id, 1.0)
    assert state.party(g.request_id) is None and state._parties == {}
