"""Booked reservations, the pure calendar (``ocs_locking.leases.bookings``):
the window checks, the overlap rule and next_free, the last two checked by
Hypothesis against brute-force references."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocs_locking.errors import LeaseError
from ocs_locking.leases.bookings import (MAX_AHEAD, START_SLACK, Booking, check_window, clash,
                                         following, next_free)
from ocs_locking.leases.paths import conflicts

NOW = 1_000_000.0


def booking(i, resources, start, end, tree=False, state='booked', owner='o'):
    return Booking(i, tuple(sorted(resources)), tree, owner, float(start), float(end),
                   state=state)


@pytest.mark.parametrize('start, end, message', [
    (NOW + 100, NOW + 50, r'^end \(.*\) must be after start \(.*\)$'),
    (NOW + 100, NOW + 100, r'^end .* must be after start'),
    (NOW - 60, NOW + 100, r'^start \(.*\) is in the past \(now is .*\)$'),
    (NOW + MAX_AHEAD + 1, NOW + MAX_AHEAD + 10, r'^start .* is too far ahead: at most 30 days'),
    (NOW + 10, NOW + 10 + 2 * 86400, r'^the window is too long: 48 h, at most 24 h$'),
    (NOW + 10, NOW + 10.5, r'^the window must be at least 1 s long'),
    ('soon', NOW + 10, r"^start must be a time in seconds \(UTC\), not 'soon'$"),
    (NOW, True, r'^end must be a time in seconds'),
])
def test_check_window_refuses_each_bad_window_in_one_line(start, end, message):
    """When a window is bad (end before start, in the past, too far ahead,
    too long, too short, not a time), the refusal is one line naming the rule."""
    with pytest.raises(LeaseError, match=message) as e:
        check_window(start, end, NOW)
    assert '\n' not in str(e.value)


def test_check_window_takes_a_start_just_past_as_now():
    """When the start is less than START_SLACK in the past, the window
    starts now (a booking 'from now' typed a moment ago)."""
    assert check_window(NOW - START_SLACK / 2, NOW + 60, NOW) == (NOW, NOW + 60)
    assert check_window(NOW + 5, NOW + 60, NOW) == (NOW + 5, NOW + 60)


def test_clash_needs_both_time_and_path_overlap():
    """When two windows overlap in time on conflicting paths they clash;
    back-to-back windows, unrelated paths, a non-tree parent and a finished
    booking do not."""
    b = [booking(1, ['satp1/hwp'], 100, 200)]
    assert clash(b, ('satp1/hwp',), False, 150, 250).booking_id == 1
    assert clash(b, ('satp1/hwp',), False, 200, 300) is None          # back to back
    assert clash(b, ('satp1/hwp',), False, 0, 100) is None
    assert clash(b, ('satp1/mount',), False, 150, 250) is None
    assert clash(b, ('satp1',), False, 150, 250) is None              # not a tree
    assert clash(b, ('satp1',), True, 150, 250).booking_id == 1       # a tree above it
    assert clash([booking(1, ['satp1'], 100, 200, tree=True)], ('satp1/hwp',), False,
                 150, 160).booking_id == 1
    assert clash([booking(1, ['satp1/hwp'], 100, 200, state='done')], ('satp1/hwp',),
                 False, 150, 250) is None
    assert clash(b, ('satp1/hwp',), False, 150, 250, exclude=1) is None


def test_following_finds_the_next_booking_on_a_covered_path():
    """When a booked lease would be extended past ``after``, following()
    names the first later booking on a conflicting path."""
    b = [booking(1, ['a'], 100, 200), booking(2, ['a'], 300, 400), booking(3, ['b'], 250, 260)]
    assert following(b, ('a',), False, 200, exclude=1).booking_id == 2
    assert following(b, ('a',), False, 400, exclude=1) is None


def test_next_free_refuses_a_bad_length_in_one_line():
    """When the length is not a number of seconds in range, next_free
    refuses in one line."""
    with pytest.raises(LeaseError, match=r'^length must be in \[1, 86400\] seconds'):
        next_free([], ('a',), False, 0, NOW)


PATHS = ['a', 'a/b', 'a/c', 'a/b/d', 'e']
windows = st.tuples(st.integers(0, 40), st.integers(1, 10)).map(lambda t: (t[0], t[0] + t[1]))
bookings_st = st.lists(st.tuples(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2,
                                          unique=True),
                                 st.booleans(), windows, st.sampled_from(['booked', 'held',
                                                                          'done'])),
                       max_size=8)


def _books(items):
    return [booking(i + 1, r, w[0], w[1], tree=t, state=s)
            for i, (r, t, w, s) in enumerate(items)]


def _brute_clash(bs, resources, tree, start, end):
    return [b.booking_id for b in bs if b.state != 'done'
            and any(start <= x < end and b.start <= x < b.end
                    for x in [v / 2 for v in range(0, 200)])
            and any(conflicts(p, tree, q, b.tree) for p in resources for q in b.resources)]


@settings(max_examples=300, deadline=None)
@given(bookings_st, st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True),
       st.booleans(), windows)
def test_clash_agrees_with_a_brute_force_overlap(items, resources, tree, window):
    """When any calendar is asked about any window, clash() finds a
    booking exactly when some half-second instant lies in both windows on
    a conflicting path of a live booking (the brute-force reference)."""
    bs = _books(items)
    found = clash(bs, tuple(resources), tree, *window)
    expected = _brute_clash(bs, resources, tree, *window)
    assert (found is None) == (not expected)
    if found is not None:
        assert found.booking_id in expected


@settings(max_examples=300, deadline=None)
@given(bookings_st, st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True),
       st.booleans(), st.integers(1, 12), st.integers(0, 30))
def test_next_free_is_the_earliest_free_window_of_a_brute_force_search(items, resources, tree,
                                                                        length, after):
    """When any calendar is asked for the next free window, next_free()
    returns the smallest start (tried on every whole second, where the
    answer must fall) whose window clashes with no live booking; and
    that window is indeed free."""
    bs = _books(items)
    got = next_free(bs, tuple(resources), tree, length, after, horizon=100)
    candidates = [t for t in range(after, after + 101 - length)
                  if not _brute_clash(bs, resources, tree, t, t + length)]
    assert got == (float(candidates[0]) if candidates else None)
    if got is not None:
        assert clash(bs, tuple(resources), tree, got, got + length) is None


def test_Booking_public_shows_no_key():
    """When a booking is shown (tables, feeds, task data), its claim key's
    hash is not there, only whether it has one."""
    b = Booking(1, ('a',), False, 'o', 1.0, 2.0, key='ab' * 32)
    assert 'key' not in b.public() and b.public()['claimable'] is True
    assert 'ab' * 32 not in repr(b) and 'ab' * 32 not in str(b.public())
    assert re.search('ab' * 32, str(b.stored()))
    assert Booking.from_stored(b.stored()).key == 'ab' * 32
