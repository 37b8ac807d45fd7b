"""The pure lease-holder core (ocs_locking.leases.holder) on a fake monotonic
clock: deadlines, transitions, loss reasons, refusals, argument checks."""
import math
import re

import pytest

from ocs_locking.errors import LeaseBusy, LeaseError, LeaseLost, LeaseUnavailable
from ocs_locking.leases.holder import Answer, LeaseHolder, describe_holders, utc
from ocs_locking.leases.paths import MAX_LEASE, MIN_LEASE, when


class Clock:
    def __init__(self, t=500.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


def grant(token=1, resource='satp1/hwp', queued_for=0.0, **extra):
    return dict({'resource': resource, 'token': token, 'expires': 1.7e9, 'request_id': 4,
                 'queued_for': queued_for}, **extra)


def test_LeaseHolder_grant_deadline_is_send_time_plus_queue_wait_plus_lease(clock):
    """When a request sent at t waited q seconds in the registry's queue, the
    local deadline is t + q + lease: a whole lease after the grant, even when
    the wait was longer than the lease."""
    h = LeaseHolder('satp1/hwp', 10, clock)
    sent = clock()
    clock.t += 25.0                 # the reply comes back after 25 s in the queue
    h.granted(grant(queued_for=24.9), sent)
    assert h.deadline == pytest.approx(sent + 24.9 + 10)
    assert h.held and h.check() == 1 and h.tokens == {'satp1/hwp': 1}
    clock.t = sent + 34.8
    assert h.check() == 1
    clock.t = sent + 34.9
    with pytest.raises(LeaseLost, match=r"^the lease on satp1/hwp \(token 1\) ran out 0\.0 s "
                                        r"ago without a renewal$"):
        h.check()


def test_LeaseHolder_queue_wait_never_reaches_past_now_plus_lease(clock):
    """When the registry reports a queue wait longer than the time since the
    request was sent (or nonsense), the deadline is at most now + lease."""
    for reported in (1e6, -5, math.nan, 'soon', None, True):
        h = LeaseHolder('a', 10, clock)
        sent = clock()
        clock.t += 2.0
        h.granted(grant(queued_for=reported), sent)
        assert h.deadline <= clock() + 10, reported
        assert h.deadline >= sent + 10, reported


def test_LeaseHolder_renewal_counts_from_its_send_time_and_never_shortens(clock):
    """When a renewal sent at t is accepted, the deadline becomes t + lease;
    a late reply of an older renewal does not shorten it."""
    h = LeaseHolder('a', 9, clock)
    h.granted(grant(), clock())
    clock.t += 3
    sent = clock()
    clock.t += 0.4
    h.renewed({'expires': 1.7e9 + 3}, sent)
    assert h.deadline == sent + 9 and h.expires == 1.7e9 + 3
    h.renewed({}, sent - 2)
    assert h.deadline == sent + 9


def test_LeaseHolder_refused_renewal_loses_the_lease_once(clock):
    """When the registry refuses a renewal, the lease is lost with the
    registry's reason (no 'Refused:' prefix), only the first loss counts, and
    it stays lost until the next grant."""
    h = LeaseHolder('a', 9, clock)
    h.granted(grant(resource='a'), clock())
    reason = h.refused("lease on 'a' was revoked at 10:00:00.0 (registry time) by 'op': 'x'")
    assert reason == ("renewal of the lease on a was refused: lease on 'a' was revoked at "
                      "10:00:00.0 (registry time) by 'op': 'x'")
    assert h.refused('again') is None and h.lost == reason
    with pytest.raises(LeaseLost, match=f'^{re.escape(reason)}$'):
        h.check()
    h.granted(grant(token=2, resource='a'), clock())
    assert h.lost is None and h.check() == 2


def test_LeaseHolder_unreachable_registry_loses_only_past_the_deadline(clock):
    """When renewals get no answer, the lease holds until its local deadline,
    then it is lost naming the last error."""
    h = LeaseHolder('a', 9, clock)
    h.granted(grant(resource='a'), clock())
    clock.t += 8.9
    assert h.unreachable('router gone') is None and h.held
    clock.t += 0.1
    assert h.unreachable('router gone') == ('the registry stayed unreachable until the lease '
                                            'on a ran out: router gone')
    assert not h.held


def test_LeaseHolder_release_and_no_lease(clock):
    """When nothing is held (never granted, or released), check says so and
    unreachable() loses nothing."""
    h = LeaseHolder(['b', 'a'], 9, clock)
    assert h.resources == ('a', 'b') and h.first == 'a' and h.token is None
    with pytest.raises(LeaseLost, match=r'^no lease held on a, b$'):
        h.check()
    h.granted({'grants': [grant(resource='a', token=3), grant(resource='b', token=5)]},
              clock())
    assert h.tokens == {'a': 3, 'b': 5} and h.token == 3
    h.released()
    assert not h.held and h.unreachable('x') is None and h.lost is None


def test_LeaseHolder_refusal_names_holders_until_when(clock):
    """When an acquire was busy, the exception is LeaseBusy naming each
    holder, its token, until when (the registry's clock) and its note;
    a refused request is LeaseUnavailable with the registry's reason; no
    answer at all is LeaseUnavailable too."""
    h = LeaseHolder('satp1/hwp', 9, clock)
    holder = {'resource': 'satp1/hwp', 'owner': 'bob', 'token': 3, 'expires': 1.7e9,
              'note': 'cal'}
    busy = h.refusal(Answer(False, 'Busy (busy): ...', {'holders': [holder]}), 2, 1.25)
    assert isinstance(busy, LeaseBusy) and busy.holders == [holder] and busy.attempts == 2
    assert str(busy) == (f"satp1/hwp still busy after 2 attempt(s) in 1.2 s: satp1/hwp held "
                         f"by 'bob' (token 3) until {utc(1.7e9)} (cal)")
    refused = h.refusal(Answer(False, 'Refused: lease must be ...',
                               {'error': 'lease must be ...'}))
    assert type(refused) is LeaseUnavailable
    assert str(refused) == 'the registry refused satp1/hwp: lease must be ...'
    gone = h.refusal(Answer(False, 'cannot reach the router', answered=False), 1, 0.0)
    assert type(gone) is LeaseUnavailable
    assert str(gone) == 'could not reserve satp1/hwp after 1 attempt(s) in 0.0 s: ' \
                        'cannot reach the router'
    assert describe_holders([holder, 'junk', {'resource': 'x', 'owner': 'y', 'token': 1}]) == \
        f"satp1/hwp held by 'bob' (token 3) until {utc(1.7e9)} (cal); x held by 'y' (token 1)"


def test_describe_holders_says_for_how_much_longer_and_until_when_in_UTC():
    """When the registry says how long a lease still holds (expires_in, its
    clock), the refusal says "for another" and the UTC instant; the wording
    scales from tenths to minutes."""
    h = {'resource': 'satp1/hwp', 'owner': 'ops-console', 'token': 7, 'expires': 1.7e9,
         'expires_in': 23.2}
    assert describe_holders([h]) == (f"satp1/hwp held by 'ops-console' (token 7) for "
                                     f"another 23 s, until {utc(1.7e9)}")
    assert utc(1.7e9).endswith(' UTC')
    assert describe_holders([dict(h, expires_in=0.44)]).count('for another 0.4 s, until ') == 1
    assert 'for another 12 min 5 s, until' in describe_holders([dict(h, expires_in=725.0)])
    assert describe_holders([dict(h, expires_in=float('nan'), expires=None)]) == \
        "satp1/hwp held by 'ops-console' (token 7)"


@pytest.mark.parametrize('kw,message', [
    ({'lease': MIN_LEASE / 2}, r'^lease must be in \[0\.5, 3600\] seconds, not 0\.25$'),
    ({'lease': 1e-9}, r'^lease must be in \[0\.5, 3600\] seconds, not 1e-09$'),
    ({'lease': MAX_LEASE + 1}, r'^lease must be in \[0\.5, 3600\] seconds, not 3601\.0$'),
    ({'lease': math.nan}, r'^lease must be in \[0\.5, 3600\] seconds, not nan$'),
    ({'lease': '10'}, r"^lease must be a number of seconds, not '10'$"),
    ({'resources': 'Bad Name'}, r"^resource segment 'Bad Name' must match "),
    ({'resources': []}, r'^resources must not be an empty list$'),
    ({'resources': ['a', 'a']}, r"^resources must not list 'a' twice$"),
    ({'resources': ['a', 'a/b'], 'tree': True}, r"^resources 'a' and 'a/b' overlap"),
    ({'tree': 'yes'}, r"^tree must be True or False, not 'yes'$"),
    ({'owner': ' '}, r'^owner must not be empty$'),
])
def test_LeaseHolder_bad_arguments_are_refused_in_one_line(clock, kw, message):
    """When resources, lease, tree or owner are malformed, LeaseError (a
    ValueError) names the argument in one line."""
    args = dict({'resources': 'a', 'lease': 9}, **kw)
    with pytest.raises(LeaseError, match=message) as info:
        LeaseHolder(args.pop('resources'), args.pop('lease'), clock, **args)
    assert isinstance(info.value, ValueError) and '\n' not in str(info.value)
    assert LeaseHolder('a', MIN_LEASE, clock).lease == 0.5
    assert LeaseHolder('a', MAX_LEASE, clock).lease == 3600.0


# -- a device call must fit in what is left of the lease ------------------------------

def test_LeaseHolder_check_with_timeout_needs_timeout_plus_margin_left(clock):
    """When check() is given a device call's timeout, it passes only while
    timeout + GUARD_MARGIN s are left before the local deadline; past that it
    raises LeaseTooShort (a LeaseLost) naming what is left, and the lease is
    kept (check() without a timeout still passes, a renewal extends it)."""
    from ocs_locking.errors import LeaseTooShort
    from ocs_locking.leases.holder import GUARD_MARGIN
    h = LeaseHolder('lab/bridge', 10, clock)
    h.granted(grant(resource='lab/bridge', token=3), clock())
    clock.t += 10 - 3.0 - GUARD_MARGIN          # exactly 3.25 s left
    assert h.check(timeout=3.0) == 3
    clock.t += 0.01
    with pytest.raises(LeaseTooShort, match=r'^3\.24 s left of the lease on lab/bridge '
                                            r'\(token 3\): too little for a 3 s device call '
                                            r'\(it needs its timeout \+ 0\.25 s\)$'):
        h.check(timeout=3.0)
    assert issubclass(LeaseTooShort, LeaseLost)
    assert h.lost is None and h.check() == 3 and h.check(timeout=0) == 3
    h.renewed({}, clock())
    assert h.check(timeout=3.0) == 3


def test_LeaseHolder_timeout_longer_than_the_lease_allows_says_so(clock):
    """When a device call's timeout can never fit in the lease as it is
    renewed (more than 2/3 of it), the refusal says to make the lease longer."""
    from ocs_locking.errors import LeaseTooShort
    h = LeaseHolder('lab/bridge', 1, clock)
    h.granted(grant(resource='lab/bridge'), clock())
    with pytest.raises(LeaseTooShort, match=r'too little for a 3 s device call .*; the 1 s '
                                            r'lease is too short for it: make the lease '
                                            r'longer than 1\.5 x \(timeout \+ 0\.25 s\)$'):
        h.check(timeout=3.0)


def test_LeaseHolder_lost_lease_wins_over_a_short_one(clock):
    """When the lease has run out, check(timeout=...) raises the loss (not
    LeaseTooShort), and a bad timeout is refused in one line before anything."""
    from ocs_locking.errors import LeaseTooShort
    h = LeaseHolder('a', 2, clock)
    h.granted(grant(resource='a'), clock())
    for bad in (-1, math.nan, math.inf, True, '3', 3601):
        with pytest.raises(LeaseError, match=r'^timeout must be a number of seconds in '
                                             r'\[0, 3600\] or None, not '):
            h.check(timeout=bad)
    assert h.lost is None
    clock.t += 2
    with pytest.raises(LeaseLost, match='ran out') as info:
        h.check(timeout=0.5)
    assert not isinstance(info.value, LeaseTooShort) and h.lost
