"""The registry's booking shell (``agents/lock_registry/bookings.py``) on a
fake reactor: the timer armed at the exact start, the claim long poll, the
procedures' and tasks' answers and refusals, the feed's calendar."""
from unittest import mock

import pytest

from ocs_locking.agents.lock_registry.bookings import BookingOps
from ocs_locking.agents.lock_registry.lease_feed import leases_message
from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.leases.bookings import WARN_AHEAD
from ocs_locking.leases.resources import ResourceTree

from .lease_ops_support import T0, Reactor, fired

DECLARED = {'adhoc': False, 'resources': {'satp1/hwp': {}, 'satp1/mount': {}}}


@pytest.fixture
def ops(tmp_path):
    reactor = Reactor()
    leases = LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'leases.db'),
                      reactor=reactor, clock=lambda: T0 + reactor.seconds(),
                      resources=ResourceTree.from_config(DECLARED, 'res.yaml'))
    bookings = BookingOps(leases)
    bookings.reactor_ = reactor
    return bookings


def book(ops, start_in, end_in, resource='satp1/hwp', owner='bob', **kw):
    ok, msg, data = ops.do_book(resource, owner, start_in=start_in, end_in=end_in, **kw)
    assert ok, msg
    return data


def test_booking_timer_activates_at_the_exact_start_not_before(ops):
    """When a booking starts at T, the registry's timer fires at T (not at
    a periodic tick): 1 ms before T nothing is granted, at T the booker
    holds it, and the grant's audit row is at T."""
    data = book(ops, 10.0, 20.0)
    reactor = ops.reactor_
    reactor.advance(10.0 - 0.001)
    assert ops.state.holders() == ()
    reactor.advance(0.001)
    (g,) = ops.state.holders()
    assert (g.owner, g.granted_at, g.expires) == ('bob', T0 + 10.0, T0 + 20.0)
    assert ops.state.booking(data['booking_id']).state == 'held'
    reactor.advance(10.0)
    assert ops.state.holders() == ()
    assert ops.state.booking(data['booking_id']).outcome == 'expire'


def test_claim_waits_for_the_start_and_answers_with_the_grant(ops):
    """When the booker claims before the start with a wait, the call is
    answered at the start with the grant (token, expires_in on the
    registry's clock, late 0); a wrong key is refused in one line."""
    data = book(ops, 5.0, 65.0)
    early = fired(ops.do_claim(data['booking_id'], data['claim'], wait=0))[0]
    assert early[0] and early[2]['state'] == 'booked' and early[2]['starts_in'] == 5.0
    d = fired(ops.do_claim(data['booking_id'], data['claim'], wait=30))
    ops.reactor_.advance(4.9)
    assert d == []
    ops.reactor_.advance(0.1)
    ok, msg, grant = d[0]
    assert ok and grant['state'] == 'held' and grant['expires_in'] == 60.0
    assert grant['late'] == 0 and grant['tokens'] == {'satp1/hwp': grant['token']}
    ok, msg, _ = fired(ops.do_claim(data['booking_id'], 'f' * 32))[0]
    assert not ok and msg == f"Refused: that claim key is not the key of booking " \
                             f"{data['booking_id']}"


def test_claim_wait_ends_at_its_bound_with_starts_in(ops):
    """When a claim's wait ends before the start, it is answered then,
    saying how long until the start (the booker asks again)."""
    data = book(ops, 100.0, 200.0)
    d = fired(ops.do_claim(data['booking_id'], data['claim'], wait=2))
    ops.reactor_.advance(2)
    assert d[0][0] and d[0][2]['state'] == 'booked' and d[0][2]['starts_in'] == 98.0
    assert ops._claims == {}            # nothing kept for a poll that ended


@pytest.mark.parametrize('resource, kw, message', [
    ('satp1/hwpp', {'start_in': 10, 'end_in': 20},
     r"^Refused: .*'satp1/hwpp'.*did you mean 'satp1/hwp'\?"),
    ('satp1/hwp', {'start_in': 20, 'end_in': 10}, r'^Refused: end \(.*\) must be after start'),
    ('satp1/hwp', {'start_in': 40 * 86400, 'end_in': 40 * 86400 + 10},
     r'^Refused: start .* is too far ahead'),
    ('satp1/hwp', {'start_in': 10}, r'^Refused: give end \(UTC seconds\) or end_in'),
    ('satp1/hwp', {'start': 'noon', 'end_in': 10}, r"^Refused: start must be a number"),
])
def test_book_refusals_are_one_line_and_store_nothing(ops, resource, kw, message):
    """When a booking's resource or window is bad, the answer is one line
    (an unknown resource with its "did you mean") and nothing is booked."""
    ok, msg, data = ops.do_book(resource, 'bob', **kw)
    assert not ok and '\n' not in msg
    assert __import__('re').match(message, msg), msg
    assert ops.state.bookings() == []


def test_book_overlap_is_refused_naming_the_other_booking(ops):
    """When a booking overlaps another on the same path, the refusal names
    that booking, its owner and window."""
    book(ops, 10, 20, owner='alice', note='cal')
    ok, msg, _ = ops.do_book('satp1/hwp', 'bob', start_in=15, end_in=30)
    assert not ok and "overlaps satp1/hwp from" in msg and "(booking 1, 'alice'): 'cal'" in msg


def test_only_the_procedure_reply_carries_the_claim_key(ops):
    """When booked through the procedure the reply has the claim key; the
    public task's booking has none, and neither the calendar nor the feed
    shows a key."""
    reply = ops._rpc_book('satp1/hwp', 'bob', start_in=10, end_in=20)
    key = reply['data']['claim']
    session = mock.MagicMock()
    session.cred_level = 1
    ok, msg = ops.book(session, {'resource': 'satp1/mount', 'owner': 'ops', 'start': None,
                                 'end': None, 'start_in': 10, 'end_in': 20, 'tree': False,
                                 'note': '', 'client': ''})
    assert ok and 'claim' not in session.data and session.data['claimable'] is False
    cal = ops.do_calendar()[2]
    msg = leases_message(ops.state.snapshot(), 1, T0, T0, 10 ** 6,
                         bookings=ops.state.bookings())
    assert [b['booking_id'] for b in msg['bookings']] == [1, 2]
    assert key not in repr(cal) and key not in repr(msg)


def test_next_free_answers_the_first_window_after_the_bookings(ops):
    """When a schedule asks for the next free window of two resources, the
    answer starts after the bookings on either (registry clock)."""
    book(ops, 10, 100, resource='satp1/hwp')
    book(ops, 90, 200, resource='satp1/mount')
    ok, msg, data = ops.do_next_free(['satp1/hwp', 'satp1/mount'], 50)
    assert ok and data['start'] == T0 + 200 and data['starts_in'] == 200
    ok, msg, data = ops.do_next_free('satp1/hwp', 10)
    assert data['start'] == T0


def test_holder_in_the_way_hears_the_preempt_on_its_watch(ops):
    """When a lease holder is in a booking's way, the warning reaches its
    lease watch (event ``preempt``, deadline the start) WARN_AHEAD before it."""
    ok, _, g = fired(ops.leases.do_acquire('satp1/hwp', 'alice', lease=600, secret=True))[0]
    book(ops, WARN_AHEAD + 30, WARN_AHEAD + 90)
    watch = fired(ops.leases.do_watch('satp1/hwp', g['lease_id'], wait=60))
    ops.reactor_.advance(29.9)
    assert watch == []
    ops.reactor_.advance(0.1)
    assert watch[0]['data']['event'] == 'preempt'
    assert watch[0]['data']['deadline'] == T0 + WARN_AHEAD + 30


def test_writing_procedures_answer_only_after_the_standbys_ack(ops):
    """When a standby must acknowledge what a call wrote (``answer_after``),
    the book, unbook and claim procedures' answers wait for it (so a
    booking a caller heard of is on the standby too); calendar and
    next_free answer at once."""
    from twisted.internet import defer
    held = []

    def answer_after(result):
        d = defer.Deferred()
        held.append((d, result))
        return d
    ops.leases.answer_after = answer_after
    procs = {n: ops._answered(n) for n in ('book', 'unbook', 'claim', 'calendar', 'next_free')}
    got = fired(procs['book']('satp1/hwp', 'bob', start_in=10.0, end_in=20.0))
    assert got == [] and len(held) == 1
    d, result = held.pop()
    d.callback(result)
    booking = got[0]['data']
    assert got[0]['ok'] and booking['claim']
    assert procs['calendar']()['data']['bookings'][0]['booking_id'] == booking['booking_id']
    assert procs['next_free']('satp1/hwp', 5.0)['ok']
    claimed = fired(procs['claim'](booking['booking_id'], booking['claim']))
    assert claimed == [] and len(held) == 1
    d, result = held.pop()
    d.callback(result)
    assert claimed[0]['ok']
    gone = fired(procs['unbook'](booking['booking_id'], booking['claim']))
    assert gone == [] and len(held) == 1
    d, result = held.pop()
    d.callback(result)
    assert gone[0]['ok'] and ops.state.booking(booking['booking_id']).outcome is not None
