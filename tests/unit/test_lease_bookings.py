"""Booked reservations in the lease state machine (``LeaseState.book``,
``booking_state.py``): activation at the start, first in line; the holders
in the way warned and revoked; the end, its warning and extensions;
cancelling; persistence across a restart. Time is passed in (a fake clock)."""
import json

import pytest

from ocs_locking.errors import LeaseError
from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.bookings import WARN_AHEAD
from ocs_locking.leases.state import LeaseState
from ocs_locking.leases.store import LeaseStore

T0 = 1_700_000_000.0


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / 'l.db')


@pytest.fixture
def state(db):
    st = LeaseState(store=LeaseStore(db))
    st.store = st._store
    return st


def rows(state):
    return list(reversed(state.store.history(limit=None)))


def test_book_refuses_an_overlap_on_a_covered_path_and_changes_nothing(state):
    """When a booking overlaps a live one on a conflicting path (a tree
    booking above it), it is refused in one line naming the other booking,
    and nothing is stored."""
    state.book('satp1', 'alice', T0 + 100, T0 + 200, T0, tree=True, note='maintenance')
    before = len(rows(state))
    with pytest.raises(LeaseError, match=r"^overlaps satp1 \(tree\) from .* UTC to .* UTC "
                                         r"\(booking 1, 'alice'\): 'maintenance'$"):
        state.book('satp1/hwp', 'bob', T0 + 150, T0 + 300, T0)
    assert len(rows(state)) == before and [b.booking_id for b in state.bookings()] == [1]
    b, _ = state.book('satp1/hwp', 'bob', T0 + 200, T0 + 300, T0)     # back to back
    assert b.booking_id == 2


def test_book_limits_the_bookings_of_one_owner(db):
    """When an owner has max_bookings_per_owner live bookings, the next is
    refused in one line; another owner may still book."""
    state = LeaseState(store=LeaseStore(db), bookings={'max_bookings_per_owner': 2})
    for i in range(2):
        state.book('a', 'alice', T0 + 10 * i + 10, T0 + 10 * i + 15, T0)
    with pytest.raises(LeaseError, match=r"^owner 'alice' already has 2 bookings"):
        state.book('a', 'alice', T0 + 100, T0 + 110, T0)
    state.book('a', 'bob', T0 + 100, T0 + 110, T0)


def test_booking_becomes_a_lease_at_its_start_first_in_line_until_its_end(state):
    """When a booking's start comes, its request is queued ahead of every
    waiter and granted at once (a larger token) with the claim key as its
    lease id; the lease ends at the booking's end (audited with its id)."""
    a = state.acquire('hwp', 'alice', 50, T0)                 # ends before the start
    state.acquire('hwp', 'carol', 50, T0 + 1, timeout=500)    # waits
    b, key = state.book('hwp', 'bob', T0 + 50, T0 + 150, T0 + 2, note='calibration')
    state.expire(T0 + 49.999)
    assert state.holders()[0].owner == 'alice'
    out = state.expire(T0 + 50)
    assert [g.owner for o in out['granted'] for g in o.grants] == ['bob']
    g = state.holders()[0]
    assert (g.owner, g.expires, g.token > a.grants[0].token) == ('bob', T0 + 150, True)
    assert state.holding('hwp', key) == g
    assert state.booking(b.booking_id).state == 'held'
    assert [w.owner for w in state.waiting()] == ['carol']
    state.expire(T0 + 150)
    assert state.holders()[0].owner == 'carol'
    assert state.booking(b.booking_id).outcome == 'expire'
    grant = [r for r in rows(state) if r['action'] == 'grant' and r['owner'] == 'bob'][0]
    end = [r for r in rows(state) if r['action'] == 'expire' and r['owner'] == 'bob'][0]
    assert grant['at'] == T0 + 50 and grant['detail']['booking'] == b.booking_id
    assert end['at'] == T0 + 150 and end['detail']['booking'] == b.booking_id
    assert check_audit(rows(state)) == []


def test_holder_in_the_way_is_warned_ahead_and_revoked_at_the_start(state):
    """When a lease would hold into a booking, its holder is preempted
    WARN_AHEAD before the start (deadline: the start; listeners hear
    ``preempt``), and revoked at the start if it has not released."""
    heard = []
    state.add_listener(lambda action, item: heard.append(action))
    state.acquire('hwp', 'alice', 3600, T0)
    b, _ = state.book('hwp', 'bob', T0 + 300, T0 + 400, T0)
    state.expire(T0 + 300 - WARN_AHEAD - 0.01)
    assert 'preempt' not in heard
    state.expire(T0 + 300 - WARN_AHEAD)
    (p,) = [state.preemption(g.request_id) for g in state.holders()]
    assert (p.holder, p.deadline, p.by) == ('alice', T0 + 300, 'booking 1')
    assert 'preempt' in heard and "booked: hwp from" in p.reason
    state.expire(T0 + 300)
    assert state.holders()[0].owner == 'bob'
    revoked = [r for r in rows(state) if r['action'] == 'force_release']
    assert revoked and revoked[0]['detail']['holder'] == 'alice'
    assert check_audit(rows(state)) == []


def test_lease_granted_inside_the_warning_window_is_warned_at_once(state):
    """When a lease is granted less than WARN_AHEAD before a booking on its
    path, its holder is asked to give way by the next call (deadline: the
    booking's start)."""
    state.book('hwp', 'bob', T0 + 100, T0 + 200, T0)
    state.acquire('hwp', 'alice', 600, T0 + 90)
    state.expire(T0 + 90)
    (g,) = state.holders()
    assert state.preemption(g.request_id).deadline == T0 + 100


def test_booked_lease_is_warned_before_its_end_and_may_extend_if_nothing_follows(state):
    """When a booked lease nears its end, its holder gets a preempt notice
    (deadline: the end, 'nothing is booked after'); a renewal with the claim
    key then extends it past the end and drops the warning."""
    b, key = state.book('hwp', 'bob', T0 + 10, T0 + 200, T0)
    state.expire(T0 + 10)
    state.expire(T0 + 200 - WARN_AHEAD)
    (g,) = state.holders()
    p = state.preemption(g.request_id)
    assert p.deadline == T0 + 200 and 'nothing is booked after' in p.reason
    g = state.renew('hwp', key, 300, T0 + 190)
    assert g.expires == T0 + 490 and state.preemption(g.request_id) is None
    state.expire(T0 + 200)
    assert state.holders()[0].owner == 'bob'


def test_extension_is_capped_at_the_next_booking_and_refused_when_it_starts_at_the_end(state):
    """When another booking follows on a covered path, an extension of a
    booked lease stops at its start; with one starting right at the end,
    the renewal is refused in one line naming it, and changes nothing."""
    _, k1 = state.book('hwp', 'bob', T0 + 10, T0 + 100, T0)
    state.book('hwp', 'carol', T0 + 130, T0 + 200, T0)
    _, k3 = state.book('mount', 'bob', T0 + 10, T0 + 100, T0)
    state.book('mount', 'dave', T0 + 100, T0 + 200, T0)
    state.expire(T0 + 10)
    assert state.renew('hwp', k1, 600, T0 + 90).expires == T0 + 130
    with pytest.raises(LeaseError, match=r"^cannot extend mount past .* UTC: mount from .* "
                                         r"\(booking 4, 'dave'\) starts then$"):
        state.renew('mount', k3, 600, T0 + 90)
    assert [g.expires for g in state.holders()] == [T0 + 130, T0 + 100]


def test_renewal_never_shortens_a_booked_lease(state):
    """When the booker renews for less than what is left, the lease keeps
    its end (a short renewal is not a release)."""
    _, key = state.book('hwp', 'bob', T0 + 10, T0 + 1000, T0)
    state.expire(T0 + 10)
    assert state.renew('hwp', key, 30, T0 + 20).expires == T0 + 1000


def test_unbook_needs_the_claim_key_or_privilege(state):
    """When someone without the claim key cancels a booking it is refused
    in one line (never showing a key); the booker's key cancels it, and a
    privileged unbook of a held booking revokes its lease."""
    b, key = state.book('hwp', 'bob', T0 + 10, T0 + 100, T0)
    with pytest.raises(LeaseError, match=r'^booking 1 needs its claim key'):
        state.unbook(1, T0, claim=None)
    with pytest.raises(LeaseError, match=r'^that claim key is not the key of booking 1$'):
        state.unbook(1, T0, claim='0' * 32)
    assert state.unbook(1, T0 + 1, claim=key).outcome == 'cancelled'
    with pytest.raises(LeaseError, match=r'^booking 1 is already over \(cancelled\)$'):
        state.unbook(1, T0 + 2, claim=key)
    state.expire(T0 + 10)
    assert state.holders() == ()
    state.book('hwp', 'bob', T0 + 20, T0 + 100, T0 + 3)
    state.expire(T0 + 20)
    b = state.unbook(2, T0 + 30, by='ops (declared, cred_level 2)', reason='hwp jammed')
    assert b.outcome == 'cancelled' and state.holders() == ()
    assert [r['action'] for r in rows(state)][-2:] == ['force_release', 'unbook']


def test_booker_releases_its_booked_lease_early_with_the_claim_key(state):
    """When the booker releases the booked lease, the booking is over
    (``release``) and the resource free for others."""
    b, key = state.book('hwp', 'bob', T0 + 10, T0 + 100, T0)
    state.expire(T0 + 10)
    state.release('hwp', key, T0 + 20)
    assert state.booking(1).outcome == 'release' and state.holders() == ()


def test_booking_without_a_claim_key_becomes_a_lease_nobody_can_renew(state):
    """When a booking was made without a claim key (the public task), its
    lease at the start can be neither renewed nor released; it ends at the
    booking's end."""
    b, key = state.book('hwp', 'ops', T0 + 10, T0 + 100, T0, claimable=False)
    assert key is None and b.public()['claimable'] is False
    state.expire(T0 + 10)
    with pytest.raises(LeaseError):
        state.renew('hwp', '1' * 32, 30, T0 + 20)
    state.expire(T0 + 100)
    assert state.holders() == ()


def test_bookings_persist_and_one_started_while_down_activates_at_the_first_call(db):
    """When the registry restarts (a new LeaseState on the same file),
    every booking is back with its id; one whose start passed meanwhile
    activates at the first call; one whose whole window passed is missed;
    booking ids never repeat."""
    state = LeaseState(store=LeaseStore(db))
    _, key = state.book('hwp', 'bob', T0 + 10, T0 + 100, T0)
    state.book('mount', 'bob', T0 + 10, T0 + 20, T0)
    state._store.close()
    state = LeaseState(store=LeaseStore(db))
    assert [b.state for b in state.bookings()] == ['booked', 'booked']
    state.expire(T0 + 50)
    assert [(g.resource, g.owner, g.expires) for g in state.holders()] == [
        ('hwp', 'bob', T0 + 100)]
    assert state.booking(2).outcome == 'missed'
    state._store.close()
    state = LeaseState(store=LeaseStore(db))             # held across a restart
    assert state.holding('hwp', key).owner == 'bob'
    assert state.book('hwp', 'x', T0 + 200, T0 + 300, T0 + 60)[0].booking_id == 3


def test_nothing_secret_is_stored_or_shown(state):
    """When a booking is made, held and ended, neither the store's file
    rows nor the audit nor the snapshot carries its claim key."""
    b, key = state.book('hwp', 'bob', T0 + 10, T0 + 100, T0)
    state.expire(T0 + 10)
    dump = json.dumps([rows(state), state.snapshot(), [b.public() for b in state.bookings()],
                       state._store.load()], default=str)
    assert key not in dump
    assert state.bookings()[0].public()['claimable'] is True


def test_a_store_that_fails_stores_no_booking(state, monkeypatch):
    """When the store fails to write a booking, the call raises one line and
    the calendar is as before (rolled back with the rest)."""
    def fail(**changes):
        from ocs_locking.errors import LeaseStoreError
        raise LeaseStoreError('disk full')
    monkeypatch.setattr(state._store, 'apply', fail)
    with pytest.raises(LeaseError, match='^lease storage is failing'):
        state.book('hwp', 'bob', T0 + 10, T0 + 100, T0)
    assert state.bookings() == [] and state._last_bid == 0


def test_next_booking_event_names_the_warning_then_the_start_then_the_end(state):
    """When a booking is ahead, the next instant the registry must call
    the state is its warning, then its start, then its end warning, then
    its end (the registry arms its timer there)."""
    state.book('hwp', 'bob', T0 + 100, T0 + 200, T0)
    assert state.next_booking_event(T0) == T0 + 100 - WARN_AHEAD
    assert state.next_booking_event(T0 + 50) == T0 + 100
    state.expire(T0 + 100)
    assert state.next_booking_event(T0 + 100) == T0 + 200 - WARN_AHEAD
    assert state.next_booking_event(T0 + 150) == T0 + 200
