"""The standby registry's pure core (ocs_locking.leases.replica) and the
store and state calls it relies on: batches checked, the primary's log of
batches and acknowledgements, the follower's place and clock, the epoch
rule; LeaseStore.install / raise_epoch and LeaseState.reload."""
import json

import pytest

from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.replica import (Follower, ReplicaError, ReplicaLog, Resync, check_batch,
                                        check_reply, takeover_epoch)
from ocs_locking.leases.state import LeaseState
from ocs_locking.leases.store import EPOCH_BITS, LeaseStore, epoch_file


class Recorder:
    """A store double that keeps every apply's changes (the batches)."""

    def __init__(self):
        self.batches = []

    def load(self):
        return {'grants': [], 'counters': {}, 'last_request_id': 0}

    def apply(self, **changes):
        self.batches.append(changes)


class Tee:
    """A real store whose applies are also kept in ``rec`` (the batches a
    standby would get; ``wire``: as JSON carries them)."""

    def __init__(self, store, rec, wire=False):
        self._store, self._rec, self._wire = store, rec, wire

    def __getattr__(self, name):
        return getattr(self._store, name)

    def apply(self, **changes):
        self._store.apply(**changes)
        self._rec.append(json.loads(json.dumps(changes)) if self._wire else changes)


def snapshot(seq=0, stream='s1', now=1000.0, epoch=3, grants=(), counters=None):
    return {'kind': 'snapshot', 'stream': stream, 'seq': seq, 'now': now, 'epoch': epoch,
            'db_id': 7, 'state': {'grants': list(grants), 'counters': counters or {},
                                  'last_request_id': 5, 'privs': [], 'audit': []}}


# -- batches and replies ------------------------------------------------------------------


def test_check_batch_accepts_what_LeaseState_writes():
    """When a LeaseState grants, renews and releases, each apply it makes
    is a batch check_batch accepts unchanged (so the standby can apply it)."""
    rec = Recorder()
    state = LeaseState(store=rec)
    out = state.acquire('a/b', 'alice', 10.0, now=1.0)
    state.renew('a/b', out.lease_id, 10.0, now=2.0)
    state.release('a/b', out.lease_id, now=3.0)
    assert len(rec.batches) == 3
    for i, changes in enumerate(rec.batches, 1):
        assert check_batch([i, 'apply', changes]) == (i, 'apply', changes)


def test_check_batch_accepts_a_booking_as_it_travels_over_the_wire():
    """When a LeaseState books and cancels, each apply it makes (bookings
    keyed by id, as JSON carries them: strings) is a batch check_batch
    accepts, so a booking reaches the standby instead of making it resync."""
    rec = Recorder()
    state = LeaseState(store=rec)
    b, claim = state.book(['a/b'], 'alice', 1000.0, 2000.0, now=1.0)
    state.unbook(b.booking_id, now=2.0, claim=claim)
    booked = [c for c in rec.batches if c.get('bookings')]
    assert len(booked) == 2
    for i, changes in enumerate(booked, 1):
        wire = json.loads(json.dumps(changes))
        assert check_batch([i, 'apply', wire])[2] == wire
    with pytest.raises(ReplicaError, match=r'^batch 1: bookings map booking ids'):
        check_batch([1, 'apply', {'bookings': {'3': {'booking_id': 4}}}])
    with pytest.raises(ReplicaError, match=r'^batch 1: last_booking_id must be an integer'):
        check_batch([1, 'apply', {'last_booking_id': 'x'}])


@pytest.mark.parametrize('batch, pattern', [
    ('nope', r'^a batch is \[seq, op, payload\]'),
    ([0, 'apply', {}], r'^batch seq must be an integer >= 1'),
    ([1, 'drop', {}], r'^batch 1: op must be one of apply, privs'),
    ([1, 'apply', {'sql': 'DROP TABLE grants'}], r"^batch 1: apply takes .*\['sql'\]"),
    ([1, 'apply', {'counters': {'a': 'x'}}], r'^batch 1: counters map resources to tokens'),
    ([1, 'apply', {'grants': {'a': {'resource': 'b'}}}], r'^batch 1: grants map resources'),
    ([1, 'apply', {'audit': [{'action': 'grant'}]}], r'^batch 1: an audit row needs'),
    ([1, 'privs', [1, 'h']], r'^batch 1: privs is \[request_id, hash, value\]'),
])
def test_check_batch_refuses_a_bad_batch_in_one_line(batch, pattern):
    """When a batch breaks the protocol, ReplicaError says how in one line."""
    with pytest.raises(ReplicaError, match=pattern) as e:
        check_batch(batch)
    assert '\n' not in str(e.value)


def test_check_reply_refuses_a_snapshot_without_its_state():
    """When a snapshot lacks part of the state, it is refused, not installed."""
    bad = snapshot()
    del bad['state']['privs']
    with pytest.raises(ReplicaError, match=r'^snapshot: state needs grants, counters'):
        check_reply(bad)
    assert check_reply(snapshot())['kind'] == 'snapshot'
    with pytest.raises(ReplicaError, match='kind snapshot, batches or resync'):
        check_reply({'kind': 'sql'})


# -- the primary's log -------------------------------------------------------------------


def test_ReplicaLog_keeps_batches_only_while_a_follower_is_attached():
    """When nobody follows, batches are numbered but not kept; a follower
    attached at seq n gets exactly the batches after n."""
    log = ReplicaLog('s1')
    log.append('apply', {'audit': []}, now=0.0)
    assert log.seq == 1 and log.synced(1)
    assert log.attach('b', now=0.0) == 1
    log.append('apply', {'n': 2}, now=1.0)
    log.append('apply', {'n': 3}, now=1.0)
    assert not log.synced(3)
    assert [b[0] for b in log.ack('b', 's1', 1, now=1.1)] == [2, 3]
    assert log.ack('b', 's1', 3, now=1.2) == []
    assert log.synced(3)


def test_ReplicaLog_drops_a_follower_that_does_not_ack_within_the_timeout():
    """When a follower leaves a batch unacknowledged past ack_timeout, it is
    overdue; once dropped, the answers no longer wait for it and its next
    pull is told to resync, saying why."""
    log = ReplicaLog('s1', ack_timeout=0.5)
    log.attach('b', now=0.0)
    log.append('apply', {}, now=10.0)
    assert log.overdue(10.4) == []
    assert log.overdue(10.6) == ['b']
    log.drop('b', 'no acknowledgement within 0.5 s', now=10.6)
    assert log.synced(1)
    with pytest.raises(Resync, match='not following: no acknowledgement within 0.5 s'):
        log.ack('b', 's1', 1, now=11.0)
    assert log.status(11.0)['last_drop']['name'] == 'b'


def test_ReplicaLog_tells_a_follower_of_another_stream_or_a_bad_mark_to_resync():
    """When a pull names another primary run, or acknowledges a batch it was
    never sent, the follower is told to resync (never given a gap)."""
    log = ReplicaLog('s1')
    log.attach('b', now=0.0)
    with pytest.raises(Resync, match='another primary run'):
        log.ack('b', 's0', 0, now=0.0)
    with pytest.raises(Resync, match='outside 0..0'):
        log.ack('b', 's1', 5, now=0.0)
    assert 'b' not in log.followers


def test_ReplicaLog_refuses_a_follower_name_with_dots():
    """When a follower names itself with a URI's dots, it is refused."""
    with pytest.raises(ReplicaError, match='follower must be an instance id'):
        ReplicaLog('s1').attach('a.b', now=0.0)


# -- the follower ------------------------------------------------------------------------


def test_Follower_applies_batches_in_order_and_resyncs_on_a_gap():
    """When batches come in order they are handed out once each (a batch
    sent again is skipped); a gap or another stream raises Resync and
    hands out nothing."""
    f = Follower()
    f.snapshot(check_reply(snapshot(seq=4)), mono=0.0)
    assert f.in_sync
    reply = {'kind': 'batches', 'stream': 's1', 'now': 1001.0,
             'batches': [[4, 'apply', {}], [5, 'apply', {}], [6, 'privs', [1, 'h', 'v']]]}
    got = f.batches(check_reply(reply), mono=1.0)
    assert [s for s, _op, _p in got] == [5, 6]
    f.applied_upto(6)
    with pytest.raises(Resync, match='batch 8 after 6: a gap'):
        f.batches(dict(reply, batches=[[8, 'apply', {}]]), mono=2.0)
    with pytest.raises(Resync, match='another primary run'):
        f.batches(dict(reply, stream='s2', batches=[]), mono=2.0)
    with pytest.raises(Resync, match='dropped'):
        f.batches({'kind': 'resync', 'reason': 'dropped'}, mono=2.0)


def test_Follower_rebase_keeps_each_lease_s_time_left_on_the_monotonic_clock():
    """When the primary's clock is 500 s ahead of the standby's and 1.5 s
    (monotonic) passed since it was last heard, a grant with 10 s left then
    has 8.5 s left on the standby's clock: wall clocks never compared."""
    f = Follower()
    f.snapshot(check_reply(snapshot(now=1500.0)), mono=100.0)
    grant = {'resource': 'a', 'expires': 1510.0, 'granted_at': 1490.0}
    [moved] = f.rebase([grant], own_now=1001.5, mono=101.5)
    assert moved['expires'] == pytest.approx(1001.5 + 8.5)
    assert moved['granted_at'] == pytest.approx(1001.5 - 11.5)


def test_takeover_epoch_is_above_both_epochs():
    """When a standby takes over, its epoch exceeds the primary's and its
    own, so its first token exceeds any the primary issued in its epoch."""
    assert takeover_epoch(1, 4) == 5
    assert takeover_epoch(6, 4) == 7
    assert (takeover_epoch(0, 4) << EPOCH_BITS) + 1 > (4 << EPOCH_BITS) + 2 ** 31
    with pytest.raises(ReplicaError, match='primary epoch must be an integer >= 0'):
        takeover_epoch(1, -1)


# -- the store and the state under a standby ----------------------------------------------


def test_standby_store_copy_then_takeover_grants_tokens_above_the_primary_s(tmp_path):
    """When a standby installs a primary's snapshot, applies its batches,
    raises its epoch above the primary's and reloads its state, the grant
    the primary made is still held by its lease id and a new grant's token
    exceeds every token the primary issued; the copied audit log passes
    the checker."""
    primary = LeaseStore(str(tmp_path / 'p.db'))
    rec = []
    state = LeaseState(store=Tee(primary, rec))
    held = state.acquire('a/b', 'alice', 30.0, now=1.0)
    standby = LeaseStore(str(tmp_path / 's.db'))
    loaded = primary.load()
    standby.install(loaded['grants'], loaded['counters'], loaded['last_request_id'],
                    list(reversed(primary.history(limit=None))), [])
    other = state.acquire('c', 'bob', 30.0, now=2.0)
    for changes in rec[1:]:
        standby.apply(**changes)
    standby.raise_epoch(takeover_epoch(standby.epoch, primary.epoch))
    assert standby.epoch > primary.epoch
    took_over = LeaseState(store=standby)
    assert took_over.renew('a/b', held.lease_id, 30.0, now=3.0).owner == 'alice'
    took_over.release('c', other.lease_id, now=3.5)
    new = took_over.acquire('c', 'carol', 30.0, now=4.0)
    assert new.grants[0].token > max(g.token for g in held.grants + other.grants)
    assert check_audit(list(reversed(standby.history(limit=None)))) == []
    standby.close()
    assert LeaseStore(str(tmp_path / 's.db')).epoch == took_over._store.epoch
    assert epoch_file(str(tmp_path / 's.db'))


def test_LeaseState_reload_sees_what_was_written_behind_its_back(tmp_path):
    """When the store is written by someone else (a standby's replication),
    reload() makes the state hold exactly what the store holds."""
    store = LeaseStore(str(tmp_path / 'x.db'))
    state = LeaseState(store=store)
    writer = LeaseState(store=store)
    out = writer.acquire('a', 'alice', 30.0, now=1.0)
    assert state.holders() == ()
    state.reload()
    assert [g.owner for g in state.holders()] == ['alice']
    assert state.release('a', out.lease_id, now=2.0) == []


def test_standby_copy_keeps_bookings_and_their_ids_never_repeat(tmp_path):
    """When a standby installs a snapshot holding a booking, then applies
    the batch of a second one, the state it serves after a takeover holds
    both (claimable with their keys) and its next booking id is above them."""
    primary = LeaseStore(str(tmp_path / 'p.db'))
    rec = []
    state = LeaseState(store=Tee(primary, rec, wire=True))
    first, key1 = state.book(['hwp'], 'alice', 1000.0, 2000.0, now=1.0)
    loaded = primary.load()
    snap = snapshot(grants=loaded['grants'], counters=loaded['counters'])
    snap['state'].update(bookings=loaded['bookings'], last_booking_id=loaded['last_booking_id'])
    snap = check_reply(json.loads(json.dumps(snap)))
    standby = LeaseStore(str(tmp_path / 's.db'))
    st = snap['state']
    standby.install(st['grants'], st['counters'], st['last_request_id'], st['audit'],
                    st['privs'], st['bookings'], st['last_booking_id'])
    mark = len(rec)
    second, key2 = state.book(['mount'], 'bob', 3000.0, 4000.0, now=2.0)
    for changes in rec[mark:]:
        standby.apply(**check_batch([1, 'apply', changes])[2])
    took_over = LeaseState(store=standby)
    assert [(b.booking_id, b.owner) for b in took_over.bookings()] == [
        (first.booking_id, 'alice'), (second.booking_id, 'bob')]
    assert took_over.check_claim(first.booking_id, key1)
    assert took_over.check_claim(second.booking_id, key2)
    third, _ = took_over.book(['x'], 'carol', 5000.0, 6000.0, now=3.0)
    assert third.booking_id > second.booking_id
