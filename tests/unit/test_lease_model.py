"""Hypothesis stateful test: LeaseState against a naive reference model.

Resources 'a', 'a/b', 'a/c', 'd'; random acquires (tree or not, one to three
resources, with or without waiting), releases and renewals with right and
wrong tokens, forced releases, cancels, clock advances (with or without an
explicit expire, so that the next call must apply what fell due) and restarts
on the same store. The model recomputes everything the simple way: pairwise
path conflicts, a FIFO list scanned from the front, and due events applied
in time order. After every step the state must match the model and keep its
invariants; at the end the audit log must pass ``check_audit``. A second
machine (at the end) adds failed writes and restarts in a new epoch.
"""
import copy
import itertools
import sqlite3

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.state import PREEMPT_MARGIN, LeaseError, LeaseState
from .lease_keys import UNISSUED, KeyedState
from ocs_locking.leases.store import LeaseStore

PATHS = ('a', 'a/b', 'a/c', 'd')
REQUESTS = [c for n in (1, 2, 3) for c in itertools.combinations(PATHS, n)]


def path_conflict(a, a_tree, b, b_tree):
    """Written again here from the contract, not imported."""
    return a == b or (a_tree and b.startswith(a + '/')) or (b_tree and a.startswith(b + '/'))


def claims_conflict(x, y):
    return any(path_conflict(a, x['tree'], b, y['tree'])
               for a in x['resources'] for b in y['resources'])


class Model:
    """What the state should be: plain dicts and lists."""

    def __init__(self):
        self.grants = {}      # rid -> {'resources', 'tree', 'owner', 'tokens', 'expires'}
        self.waiting = []     # [{'rid', 'resources', 'tree', 'owner', 'lease', 'deadline'}]
        self.counters = {}
        self.status = {}      # rid -> poll status
        self.last_rid = 0
        self.preempts = {}    # holder rid -> its revocation deadline (preempt)

    def grant(self, req, now):
        tokens = {}
        for r in sorted(req['resources']):
            related = [x for x in self.counters
                       if x == r or r.startswith(x + '/') or
                       (req['tree'] and x.startswith(r + '/'))]
            tokens[r] = self.counters[r] = 1 + max([0] + [self.counters[x] for x in related])
        self.grants[req['rid']] = dict(resources=req['resources'], tree=req['tree'],
                                       owner=req['owner'], tokens=tokens,
                                       expires=now + req['lease'])
        self.status[req['rid']] = 'granted'

    def serve(self, now):
        still, granted = [], []
        for w in self.waiting:
            if any(claims_conflict(w, g) for g in self.grants.values()) or \
                    any(claims_conflict(w, e) for e in still):
                still.append(w)
            else:
                self.grant(w, now)
                granted.append(w['rid'])
        self.waiting = still
        return granted

    def end(self, rid, status):
        self.status[rid] = status
        self.preempts.pop(rid, None)
        g = self.grants.pop(rid)
        return [(r, g['tokens'][r]) for r in sorted(g['resources'])]

    def expire(self, now):
        expired, timed_out, granted = [], [], []
        while True:
            due = [g['expires'] for g in self.grants.values() if g['expires'] <= now] + \
                  [w['deadline'] for w in self.waiting if w['deadline'] <= now] + \
                  [d for d in self.preempts.values() if d <= now]
            if not due:
                return expired, timed_out, granted
            t = min(due)
            for rid in sorted(r for r, g in self.grants.items() if g['expires'] <= t):
                expired += self.end(rid, 'expired')
            for rid in sorted(r for r, d in self.preempts.items() if d <= t):
                self.end(rid, 'revoked')        # the grace is over
            granted += self.serve(now)
            for w in [w for w in self.waiting if w['deadline'] <= t]:
                self.waiting.remove(w)
                self.status[w['rid']] = 'timed_out'
                timed_out.append(w['rid'])
            granted += self.serve(now)

    def holding(self, resource, token):
        return next((rid for rid, g in self.grants.items()
                     if g['tokens'].get(resource) == token), None)


class LeaseModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.store = LeaseStore(':memory:')
        self.state = KeyedState(store=self.store)
        self.model = Model()
        self.now = 0.0
        self.owners = (f'o{i}' for i in itertools.count())
        self.last_token = {}      # resource -> largest token seen granted
        self.seen = set()         # (resource, token) already checked

    def call(self, method, *args, **kwargs):
        """Run one call on state and model alike: due events first; on a
        LeaseError the model is put back (the state must roll back too)."""
        saved = copy.deepcopy(self.model)
        self.model.expire(self.now)
        try:
            return getattr(self.state, method)(*args, **kwargs)
        except LeaseError:
            self.model = saved
            raise

    # -- rules ----------------------------------------------------------------------

    ACQUIRE = dict(resources=st.sampled_from(REQUESTS), tree=st.booleans(),
                   lease=st.sampled_from([1.0, 2.5, 5.0]),
                   timeout=st.sampled_from([0, 2.0, 5.0, 10.0]))

    @rule(**ACQUIRE)
    def acquire(self, resources, tree, lease, timeout):
        self._acquire(resources, tree, lease, timeout)

    @rule(**ACQUIRE)
    def acquire_more(self, resources, tree, lease, timeout):
        """The same again, so that acquires are a good share of all steps."""
        self._acquire(resources, tree, lease, timeout)

    def _acquire(self, resources, tree, lease, timeout):
        owner = next(self.owners)
        invalid = any(path_conflict(a, tree, b, tree)
                      for a, b in itertools.combinations(resources, 2))
        if invalid:
            with pytest.raises(LeaseError, match=r'^resources .* overlap \(tree=True\)$'):
                self.call('acquire', list(resources), owner, lease, self.now, timeout, tree)
            return
        out = self.call('acquire', list(resources), owner, lease, self.now, timeout, tree)
        m = self.model
        req = dict(rid=m.last_rid + 1, resources=resources, tree=tree, owner=owner, lease=lease,
                   deadline=self.now + timeout)
        holders = sorted((r, t) for g in m.grants.values() for r, t in g['tokens'].items()
                         if any(path_conflict(r, g['tree'], x, tree) for x in resources))
        ahead = sum(claims_conflict(req, w) for w in m.waiting)
        if not holders and not ahead:
            m.last_rid += 1
            m.grant(req, self.now)
            assert (out.status, out.request_id) == ('granted', req['rid'])
            assert {g.resource: g.token for g in out.grants} == m.grants[req['rid']]['tokens']
            return
        assert sorted((g.resource, g.token) for g in out.holders) == holders
        assert out.queue_position == ahead + 1
        if timeout == 0:
            assert (out.status, out.request_id) == ('busy', None)
        else:
            m.last_rid += 1
            m.waiting.append(req)
            m.status[req['rid']] = 'queued'
            assert (out.status, out.request_id) == ('queued', req['rid'])

    def _pick(self, data, held):
        """A (resource, token): of a current grant when ``held``, else any."""
        if held and self.model.grants:
            rid = data.draw(st.sampled_from(sorted(self.model.grants)))
            return data.draw(st.sampled_from(sorted(self.model.grants[rid]['tokens'].items())))
        return data.draw(st.sampled_from(PATHS)), data.draw(st.integers(1, 8))

    @rule(data=st.data(), held=st.booleans())
    def release(self, data, held):
        resource, token = self._pick(data, held)
        check = copy.deepcopy(self.model)
        check.expire(self.now)
        rid = check.holding(resource, token)
        if rid is None:
            with pytest.raises(LeaseError):
                self.call('release', resource, token, self.now)
            return
        granted = self.call('release', resource, token, self.now)
        self.model.end(rid, 'released')
        assert [o.request_id for o in granted] == self.model.serve(self.now)

    @rule(data=st.data(), held=st.booleans(), lease=st.sampled_from([0.5, 2.0, 6.0]))
    def renew(self, data, held, lease):
        resource, token = self._pick(data, held)
        check = copy.deepcopy(self.model)
        check.expire(self.now)
        rid = check.holding(resource, token)
        if rid is None:
            with pytest.raises(LeaseError):
                self.call('renew', resource, token, lease, self.now)
            return
        g = self.call('renew', resource, token, lease, self.now)
        self.model.grants[rid]['expires'] = self.now + lease
        assert (g.resource, g.token, g.expires) == (resource, token, self.now + lease)

    @rule(resource=st.sampled_from(PATHS))
    def force_release(self, resource):
        check = copy.deepcopy(self.model)
        check.expire(self.now)
        rid = next((r for r, g in check.grants.items() if resource in g['resources']), None)
        if rid is None:
            with pytest.raises(LeaseError, match=r'^nothing is held on '):
                self.call('force_release', resource, 'test', 'operator', self.now)
            return
        revoked, granted = self.call('force_release', resource, 'test', 'operator', self.now)
        assert [(g.resource, g.token) for g in revoked] == self.model.end(rid, 'revoked')
        assert [o.request_id for o in granted] == self.model.serve(self.now)

    @rule(resource=st.sampled_from(PATHS), grace=st.sampled_from([0, 1.0, 3.0]),
          requester=st.booleans(), lease=st.sampled_from([1.0, 5.0]))
    def preempt(self, resource, grace, requester, lease):
        """A holder asked to give way: revoked at now + grace unless released;
        a requester is queued first (ahead of every waiter)."""
        check = copy.deepcopy(self.model)
        check.expire(self.now)
        rid = next((r for r, g in check.grants.items() if resource in g['resources']), None)
        owner = next(self.owners) if requester else None
        args = (resource, 'test', grace, 'operator', self.now)
        if rid is None or rid in check.preempts:
            why = r'^nothing is held on ' if rid is None else r'^the lease on .* is already ' \
                r'being preempted by '
            with pytest.raises(LeaseError, match=why):
                self.call('preempt', *args, owner=owner, lease=lease)
            return
        p, out = self.call('preempt', *args, owner=owner, lease=lease)
        m = self.model
        m.preempts[rid] = self.now + grace
        assert (p.holder_rid, p.deadline) == (rid, self.now + grace)
        if requester:
            m.last_rid += 1
            m.waiting.insert(0, dict(rid=m.last_rid, resources=(resource,), tree=False,
                                     owner=owner, lease=lease,
                                     deadline=self.now + grace + PREEMPT_MARGIN))
            m.status[m.last_rid] = 'queued'
            assert (out.status, out.request_id, out.queue_position) == ('queued',
                                                                        m.last_rid, 1)
        else:
            assert out is None

    @rule(data=st.data())
    def cancel(self, data):
        check = copy.deepcopy(self.model)
        check.expire(self.now)
        waiting = [w['rid'] for w in check.waiting]
        rid = data.draw(st.sampled_from(waiting) if waiting else st.integers(1, 3))
        if rid not in waiting:
            with pytest.raises(LeaseError, match=r'^request \d+ is not waiting'):
                self.call('cancel', rid, self.now)
            return
        granted = self.call('cancel', rid, self.now)
        self.model.waiting = [w for w in self.model.waiting if w['rid'] != rid]
        self.model.status[rid] = 'cancelled'
        assert [o.request_id for o in granted] == self.model.serve(self.now)

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5, 5.0]), explicit=st.booleans())
    def advance(self, dt, explicit):
        """Time passes; with ``explicit`` the registry's timer calls expire,
        otherwise the next call must apply what fell due."""
        self.now += dt
        if explicit:
            result = self.state.expire(self.now)
            expired, timed_out, granted = self.model.expire(self.now)
            assert [(g.resource, g.token) for g in result['expired']] == expired
            assert result['timed_out'] == timed_out
            assert [o.request_id for o in result['granted']] == granted

    @rule()
    def restart(self):
        """The registry restarts on the same store: grants, counters and the
        last request id survive; waiting requests and old outcomes do not."""
        self.state = KeyedState(store=self.store, lease_ids=self.state.lease_ids)
        m = self.model
        m.waiting = []
        m.preempts = {}     # (in memory only, like the waiters)
        m.status = {rid: 'granted' for rid in m.grants}

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def matches_the_model(self):
        snap = self.state.snapshot()
        expected = sorted((r, g['owner'], t, g['expires'], g['tree'], rid)
                          for rid, g in self.model.grants.items() for r, t in g['tokens'].items())
        assert sorted((g['resource'], g['owner'], g['token'], g['expires'], g['tree'],
                       g['request_id']) for g in snap['grants']) == expected
        assert [w['request_id'] for w in snap['waiting']] == [w['rid'] for w in self.model.waiting]
        assert snap['counters'] == self.model.counters
        for rid in range(1, self.model.last_rid + 2):
            assert self.state.poll(rid).status == self.model.status.get(rid, 'unknown')

    @invariant()
    def no_two_grants_conflict(self):
        grants = self.state.holders()
        for x, y in itertools.combinations(grants, 2):
            assert not path_conflict(x.resource, x.tree, y.resource, y.tree), (x, y)

    @invariant()
    def tokens_only_grow(self):
        for g in self.state.holders():
            if (g.resource, g.token) not in self.seen:
                assert g.token > self.last_token.get(g.resource, 0), g
                self.seen.add((g.resource, g.token))
                self.last_token[g.resource] = g.token

    @invariant()
    def nothing_grantable_is_left_waiting(self):
        grants = self.state.holders()
        waiting = self.state.waiting()
        for i, w in enumerate(waiting):
            me = {'resources': w.resources, 'tree': w.tree}
            assert any(path_conflict(g.resource, g.tree, r, w.tree)
                       for g in grants for r in w.resources) or \
                any(claims_conflict(me, {'resources': e.resources, 'tree': e.tree})
                    for e in waiting[:i]), w

    def teardown(self):
        rows = list(reversed(self.store.history(limit=None)))
        try:
            assert check_audit(rows) == []
        finally:
            self.store.close()


TestLeaseModel = LeaseModel.TestCase
TestLeaseModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                   report_multiple_bugs=False)


def test_check_audit_accepts_a_sound_log():
    """When the log shows grants that never overlap and growing tokens, no
    violation is reported."""
    rows = [
        {'id': 1, 'action': 'grant', 'resource': 'a', 'owner': 'x', 'token': 1,
         'detail': {'tree': True}},
        {'id': 2, 'action': 'grant', 'resource': 'b', 'owner': 'y', 'token': 1, 'detail': '{}'},
        {'id': 3, 'action': 'grant', 'resource': 'a/b', 'owner': 'y', 'token': 9, 'ok': False},
        {'id': 4, 'action': 'expire', 'resource': 'a', 'owner': 'x', 'token': 1},
        {'id': 5, 'action': 'grant', 'resource': 'a/b', 'owner': 'y', 'token': 2, 'detail': {}},
    ]
    assert check_audit(rows) == []


def test_check_audit_reports_overlaps_shrinking_tokens_and_unknown_ends():
    """When a log shows a grant below a held tree, a token that did not grow
    and the release of something not held, each is one violation."""
    rows = [
        {'id': 1, 'action': 'grant', 'resource': 'a', 'owner': 'x', 'token': 3,
         'detail': {'tree': True}},
        {'id': 2, 'action': 'grant', 'resource': 'a/b', 'owner': 'y', 'token': 1,
         'detail': {}},
        {'id': 3, 'action': 'release', 'resource': 'a', 'owner': 'x', 'token': 3},
        {'id': 4, 'action': 'grant', 'resource': 'a', 'owner': 'z', 'token': 3, 'detail': {}},
        {'id': 5, 'action': 'release', 'resource': 'q', 'owner': 'z', 'token': 1},
    ]
    assert check_audit(rows) == [
        "row 2: 'y' got 'a/b' (token 1, tree=False) while 'x' held 'a' (token 3, tree=True, "
        "row 1)",
        "row 4: token 3 on 'a' is not larger than the previous token 3",
        "row 5: release of 'q' token 1, which was not held"]


# -- failed writes and epoch restarts (issue 9) -------------------------------------------

class EpochModel(Model):
    """The model with an epoch: every token is also above ``base``."""
    base = 0

    def grant(self, req, now):
        tokens = {}
        for r in sorted(req['resources']):
            related = [x for x in self.counters
                       if x == r or r.startswith(x + '/') or
                       (req['tree'] and x.startswith(r + '/'))]
            tokens[r] = self.counters[r] = 1 + max([self.base] +
                                                   [self.counters[x] for x in related])
        self.grants[req['rid']] = dict(resources=req['resources'], tree=req['tree'],
                                       owner=req['owner'], tokens=tokens,
                                       expires=now + req['lease'])
        self.status[req['rid']] = 'granted'

    def expire_unstored(self, now):
        """What a registry whose store refuses writes does at a tick: leases
        and waits end on time, nobody is granted."""
        for rid in sorted(r for r, g in self.grants.items() if g['expires'] <= now):
            self.end(rid, 'expired')
        for w in [w for w in self.waiting if w['deadline'] <= now]:
            self.waiting.remove(w)
            self.status[w['rid']] = 'timed_out'


class FaultyLeaseModel(LeaseModel):
    """LeaseModel with two more rules: a write that fails (the registry then
    refuses every call, ends leases in memory only and writes everything
    again when the store works), and a restart after an unclean stop (a new
    epoch: tokens jump above every earlier one)."""

    def __init__(self):
        super().__init__()
        self.model = EpochModel()

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5, 5.0]), ticks=st.integers(1, 4))
    def failed_write(self, dt, ticks):
        real = self.store._write

        def full(*a, **kw):
            self.store._write = real
            raise sqlite3.OperationalError('database or disk is full')
        self.store._write = full
        self.now += dt
        before = copy.deepcopy(self.model)
        try:
            self.state.expire(self.now)         # fails if it has anything to write
            self.model.expire(self.now)
        except LeaseError as e:
            assert str(e).startswith('lease storage is failing, so nothing is granted')
            self.model = before
        self.store._write = real
        if self.store.error is None:
            self.store._refuse('test: disk full')
        with pytest.raises(LeaseError, match=r'^lease storage is failing'):
            self.state.acquire('d', 'x', 1.0, self.now)
        for _ in range(ticks):
            self.matches_the_model()
            self.state.expire_unstored(self.now)
            self.model.expire_unstored(self.now)
            self.now += dt / 2
        granted = self.state.resync(self.now)
        expected = self.model.expire(self.now)[2] + self.model.serve(self.now)
        assert self.store.error is None
        assert [o.request_id for o in granted] == expected
        assert self.store.load()['counters'] == self.model.counters

    @rule()
    def restart_after_unclean_stop(self):
        """A start after kill -9 or a power loss: the epoch goes up (as
        LeaseStore does on such a start), so the next token of every path
        exceeds every token ever issued on it."""
        self.store.epoch += 1
        self.model.base = self.store.token_base
        self.restart()


TestFaultyLeaseModel = FaultyLeaseModel.TestCase
TestFaultyLeaseModel.settings = settings(max_examples=100, stateful_step_count=40,
                                         deadline=None, report_multiple_bugs=False)
# -- withdrawn waiters (issue 9): callers gone while their request waits ----------------
#
# Added to LeaseModel after its definition (Hypothesis collects rules and
# invariants when the first test runs), so that every run mixes them in.

def _withdraw(self, data):
    """A waiting request's caller is gone (left the router, cancelled, its
    task aborted): the registry withdraws it with a reason."""
    check = copy.deepcopy(self.model)
    check.expire(self.now)
    waiting = [w['rid'] for w in check.waiting]
    if not waiting:
        return
    rid = data.draw(st.sampled_from(waiting))
    granted = self.call('cancel', rid, self.now, reason='the caller left')
    self.model.waiting = [w for w in self.model.waiting if w['rid'] != rid]
    self.model.status[rid] = 'cancelled'
    self.__dict__.setdefault('withdrawn', set()).add(rid)
    assert [o.request_id for o in granted] == self.model.serve(self.now)


def _withdrawn_never_granted(self):
    """A withdrawn request is never granted afterwards: no grant carries its
    id, poll says cancelled (unknown once a restart forgot it), and no audit
    grant row names it."""
    withdrawn = self.__dict__.get('withdrawn', set())
    if not withdrawn:
        return
    assert not [g for g in self.state.holders() if g.request_id in withdrawn]
    for rid in withdrawn:
        assert self.state.poll(rid).status in ('cancelled', 'unknown'), rid
    granted = {r['detail'].get('request') for r in self.store.history(limit=None)
               if r['action'] in ('grant', 'regrant') and isinstance(r['detail'], dict)}
    assert not granted & withdrawn


LeaseModel.withdraw = rule(data=st.data())(_withdraw)
LeaseModel.withdrawn_never_granted = invariant()(_withdrawn_never_granted)
