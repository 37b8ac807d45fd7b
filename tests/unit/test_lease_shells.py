"""One suite of lease-loss rules, run against both lease-holder shells:
SiteLock (agents, Twisted) and Reservation (scripts, threads).

Both talk to the registry's real lease procedures (``LeaseOps`` on an
in-memory SQLite store) on one fake clock. SiteLock runs on a fake reactor;
Reservation's renewals run on a :class:`Renewer` without a thread that the
driver runs as the fake clock passes, so nothing here sleeps or waits.
"""
import re
from unittest import mock

import pytest
from twisted.internet import defer

from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.errors import LeaseBusy, LeaseError, LeaseLost, LeaseUnavailable
from ocs_locking.leases.holder import RELEASE_RESEND_FOR, Answer, utc
from ocs_locking.leases.paths import when
from ocs_locking.leases.renewer import Renewer
from ocs_locking.leases.reservation import Reservation, RetryPolicy
from ocs_locking.leases.sitelock import SiteLock

from ..support import FakeReactor


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class Reactor(FakeReactor):
    def callWhenRunning(self, f, *args, **kwargs):
        f(*args, **kwargs)


class Registry:
    """The registry's lease procedures (the real LeaseOps) on the fake clock.
    A queued acquire runs the registry's clock on until it is granted or
    times out (as if the caller waited). ``down``: every call fails like an
    unreachable router."""

    def __init__(self, clock, reactor):
        self.clock, self.reactor = clock, reactor
        self.ops = LeaseOps(mock.MagicMock(name='agent'), ':memory:', reactor=reactor,
                            clock=clock)
        self.state = self.ops.state
        self.down = False
        self.calls = []

    def call(self, name, *args, **kwargs):
        self.calls.append(name)
        if self.down:
            raise ConnectionError('router unreachable')
        if name == 'watch':         # a long poll: its Deferred, as it is
            return self.ops._rpc_watch(*args, **kwargs)
        out = []
        defer.maybeDeferred(getattr(self.ops, f'_rpc_{name}'), *args, **kwargs).addBoth(
            out.append)
        for _ in range(100):
            if out:
                break
            due = [g.expires for g in self.state.holders()] + \
                [w.deadline for w in self.state.waiting()]
            self.clock.t = max(self.clock.t, min(due))
            self.ops._expire()
            self.reactor.advance(0)
        assert out, 'the queued acquire never ended'
        if isinstance(out[0], Exception) or hasattr(out[0], 'raiseException'):
            out[0].raiseException()
        return out[0]

    def count(self, name):
        return self.calls.count(name)


class SiteLockShell:
    name = 'SiteLock'

    def __init__(self, clock):
        self.clock, self.reactor = clock, Reactor()
        self.registry = Registry(clock, self.reactor)

    def make(self, resource='bridge', lease=9.0, owner=None, on_lost=None, instance='dev-1',
             watch=False, on_preempt=None):
        """A SiteLock on the registry; ``watch`` False by default: this
        suite pins the renewal rules (the fallback when no watch answers);
        test_lease_watch.py runs it with the watch."""
        shell = self

        class Agent:
            agent_address = f'observatory.{instance}'

            def call(self, uri, *args):
                try:
                    return defer.maybeDeferred(shell.registry.call, uri.rsplit('.', 1)[-1],
                                               *args)
                except Exception as e:
                    return defer.fail(e)
        return SiteLock(Agent(), resource, owner=owner, lease=lease, on_lost=on_lost,
                        clock=self.clock, reactor=self.reactor, watch=watch,
                        on_preempt=on_preempt)

    def acquire(self, holder, timeout=0.0):
        out = []
        holder.acquire_deferred(timeout).addBoth(out.append)
        self.settle()
        if hasattr(out[0], 'raiseException'):
            out[0].raiseException()
        return out[0]

    def release(self, holder):
        out = []
        holder.release_deferred().addBoth(out.append)
        return out[0]

    def release_through_outage(self, holder, outage):
        """Release while the registry is unreachable for ``outage`` s of
        the clock (which runs on meanwhile); what the release fired with."""
        self.registry.down = True
        end = self.clock.t + outage
        out = []
        holder.release_deferred().addBoth(out.append)
        for _ in range(1000):
            if out:
                break
            self.clock.t += 0.1
            self.registry.down = self.clock.t < end - 1e-9
            self.reactor.advance(0.1)
        assert out, 'the release never ended'
        return out[0]

    def run_for(self, seconds):
        """Let ``seconds`` pass with the reactor running (renewals happen)."""
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-9:
            step = min(0.25, end - self.clock.t)
            self.clock.t += step
            self.reactor.advance(step)
        self.settle()

    def settle(self):
        self.reactor.advance(0)


class ReservationShell:
    name = 'Reservation'

    def __init__(self, clock):
        self.clock = clock
        self.registry = Registry(clock, Reactor())
        self.renewer = Renewer(clock, thread=False)

    def make(self, resource='bridge', lease=9.0, owner='dev-1', on_lost=None, timeout=0.0):
        registry = self.registry

        class Transport:
            def lease_call(self, name, params, wait=0.0):
                try:
                    reply = registry.call(name, **params)
                except ConnectionError as e:
                    return Answer(False, f'cannot reach the router: {e}', answered=False)
                return Answer(reply['ok'], reply['message'], reply['data'])
        return Reservation(resource, owner, lease=lease, client=Transport(), clock=self.clock,
                           timeout=timeout, on_lost=on_lost, renewer=self.renewer,
                           retry=RetryPolicy(attempts=1, deadline=None), sleep=lambda d: None)

    def acquire(self, holder, timeout=0.0):
        holder.timeout = timeout
        return holder.acquire()

    def release(self, holder):
        return holder.release()

    def release_through_outage(self, holder, outage):
        """Release while the registry is unreachable for ``outage`` s of
        the clock (its retry pauses run the clock on); what it returned."""
        self.registry.down = True
        end = self.clock.t + outage

        def sleep(delay):
            self.clock.t += delay
            self.registry.down = self.clock.t < end - 1e-9
        holder._sleep = sleep
        return holder.release()

    def run_for(self, seconds):
        """Let ``seconds`` pass, renewing as renewals fall due."""
        end = self.clock.t + seconds
        for _ in range(100000):
            nxt = self.renewer.next_due()
            if nxt is None or nxt > end:
                break
            self.clock.t = max(self.clock.t, nxt)
            self.renewer.run_due()
        self.clock.t = max(self.clock.t, end)

    def settle(self):
        pass


@pytest.fixture(params=[SiteLockShell, ReservationShell], ids=lambda c: c.name)
def shell(request):
    return request.param(Clock())


def owner_of(shell, resource='bridge'):
    return [g.owner for g in shell.registry.state.holders() if g.resource == resource]


def test_shell_grant_gives_a_token_and_guard_lets_the_call_through(shell):
    """When the lease is granted, acquire returns the holder and guard()
    yields the fencing token; the registry records the owner."""
    h = shell.make()
    assert shell.acquire(h) is h
    with h.guard() as token:
        assert token == h.token == 1
    assert h.held and owner_of(shell) == ['dev-1']


def test_shell_guard_with_a_timeout_refuses_a_call_that_would_outlast_the_lease(shell):
    """When guard(timeout=...) is given the device call's own bound, the
    body runs while timeout + GUARD_MARGIN fits in what is left of the lease
    (on the holder's clock) and is not run once it does not (LeaseTooShort,
    a LeaseLost); the lease itself is kept and on_lost is not called."""
    from ocs_locking.errors import LeaseTooShort
    from ocs_locking.leases.holder import GUARD_MARGIN
    lost = []
    h = shell.make(lease=9, on_lost=lost.append)
    shell.acquire(h)
    with h.guard(timeout=3.0) as token:
        assert token == 1
    shell.clock.t = h.deadline - (3.0 + GUARD_MARGIN) + 0.05     # 0.05 s short
    with pytest.raises(LeaseTooShort, match=r'too little for a 3 s device call'):
        with h.guard(timeout=3.0):
            raise AssertionError('the device was touched')
    shell.settle()
    assert h.held and lost == [] and h.lost is None
    with h.guard(timeout=1.0) as token:
        assert token == 1


def test_shell_renewals_keep_the_lease_past_several_leases(shell):
    """When time passes, the lease is renewed every lease/3 and stays held
    with the same token, its deadline a lease after the last renewal sent."""
    h = shell.make(lease=9)
    shell.acquire(h)
    shell.run_for(30)
    assert h.held and h.check() == 1
    assert shell.registry.count('renew') == 10
    assert h.deadline == pytest.approx(shell.clock() + 9)      # renewed at 30 s


def test_shell_revoked_lease_is_lost_at_the_next_renewal(shell):
    """When an operator force-releases the lease, the next renewal finds out:
    on_lost gets one readable reason (no 'Refused:', no raw Unix time) and
    guarded calls raise LeaseLost without running."""
    lost = []
    h = shell.make(on_lost=lost.append)
    shell.acquire(h)
    at = shell.clock()
    shell.registry.state.force_release('bridge', 'manual work', 'operator', at)
    shell.run_for(3)
    reason = (f"renewal of the lease on bridge was refused: lease on 'bridge' was revoked "
              f"at {when(at)} (registry time) by 'operator': 'manual work'")
    assert lost == [reason] and h.lost == reason
    with pytest.raises(LeaseLost) as info:
        with h.guard():
            raise AssertionError('the device was touched')
    assert str(info.value) == reason
    shell.run_for(9)
    assert lost == [reason] and shell.registry.count('renew') == 1


def test_shell_frozen_past_its_lease_is_refused_on_waking(shell):
    """When the holder was frozen (no renewals) past its lease, its next
    guarded call is refused at once; the next grant's token is larger."""
    lost = []
    h = shell.make(on_lost=lost.append)
    shell.acquire(h)
    shell.clock.t += 10.0
    with pytest.raises(LeaseLost, match=r'^the lease on bridge \(token 1\) ran out 1\.0 s ago '
                                        r'without a renewal$'):
        h.check()
    shell.settle()
    assert len(lost) == 1 and not h.held
    shell.registry.ops._expire()
    other = shell.make(owner='dev-2')
    shell.acquire(other)
    assert other.token == 2


def test_shell_unreachable_registry_holds_until_the_deadline_then_loses(shell):
    """When renewals cannot reach the registry, the lease stays usable until
    its local deadline, then it is lost naming the error."""
    lost = []
    h = shell.make(on_lost=lost.append)
    shell.acquire(h)
    shell.registry.down = True
    shell.run_for(8.75)
    assert h.check() == 1 and lost == []
    shell.run_for(0.5)
    assert len(lost) == 1 and lost[0].startswith(
        'the registry stayed unreachable until the lease on bridge ran out: ')
    assert 'router unreachable' in lost[0]
    with pytest.raises(LeaseLost):
        h.check()


def test_shell_short_outage_is_bridged_by_quick_retries(shell):
    """When one renewal fails, it is retried every 0.5 s, so an outage
    shorter than the rest of the lease does not cost the lease."""
    h = shell.make(lease=9)
    shell.acquire(h)
    shell.registry.down = True
    shell.run_for(7.5)
    shell.registry.down = False
    shell.run_for(0.5)
    assert h.held and h.lost is None
    assert h.deadline == pytest.approx(shell.clock() + 9, abs=0.5)


def test_shell_queue_wait_longer_than_the_lease_still_holds_a_whole_lease(shell):
    """When the request waited in the registry's queue longer than its lease
    (20 s behind bob, lease 9), the lease is held for a whole lease after the
    grant, renewed from there on (regression: it was lost right after the grant)."""
    shell.registry.state.acquire('bridge', 'bob', 20, shell.clock())
    h = shell.make(lease=9)
    start = shell.clock()
    shell.acquire(h, timeout=30)
    assert shell.clock() == start + 20          # the registry granted it after 20 s
    assert h.held and h.check() == 2
    assert h.deadline == pytest.approx(start + 20 + 9)
    shell.run_for(30)
    assert h.held and h.lost is None


def test_shell_busy_resource_raises_naming_the_holder_until_when(shell):
    """When someone else holds the resource, acquire raises LeaseBusy naming
    the holder, its token and until when; nothing is held."""
    bob = shell.registry.state.acquire('bridge', 'bob', 300, shell.clock(), note='cal')
    h = shell.make()
    with pytest.raises(LeaseBusy) as info:
        shell.acquire(h)
    assert re.search(rf"bridge held by 'bob' \(token 1\) for another \d+ s, until "
                     rf"{utc(bob.grants[0].expires)} \(cal\)", str(info.value)), str(info.value)
    assert [x['owner'] for x in info.value.holders] == ['bob']
    with pytest.raises(LeaseLost, match=r'^no lease held on bridge$'):
        h.check()


def test_shell_unreachable_registry_on_acquire_raises_unavailable(shell):
    """When the registry cannot be reached, acquire raises LeaseUnavailable
    (not LeaseBusy) saying why."""
    shell.registry.down = True
    h = shell.make()
    with pytest.raises(LeaseUnavailable, match='router unreachable') as info:
        shell.acquire(h)
    assert not isinstance(info.value, LeaseBusy)


@pytest.mark.parametrize('lease', [1e-9, 0.4, 3600.5, float('inf')])
def test_shell_lease_outside_the_bounds_is_refused_at_construction(shell, lease):
    """When the lease is shorter than MIN_LEASE or longer than MAX_LEASE, the
    constructor raises LeaseError naming it; the registry is not called."""
    with pytest.raises(LeaseError, match=r'^lease must be in \[0\.5, 3600\] seconds, not '):
        shell.make(lease=lease)
    assert shell.registry.calls == []


def test_shell_release_not_answered_is_sent_again_until_the_registry_answers(shell):
    """When a release gets no answer (the registry failing over to its
    standby for 1 s), it is sent again every RETRY s until one is answered:
    the lease is given back at once, not left to block others until its
    expiry."""
    a = shell.make()
    shell.acquire(a)
    assert shell.release_through_outage(a, 1.0)
    assert owner_of(shell) == [] and not a.held
    assert shell.registry.count('release') >= 3     # (t+0, t+0.5 unanswered; then answered)


def test_shell_release_resends_stop_after_a_bound_and_the_lease_ends_by_itself(shell):
    """When the registry stays unreachable, the release is sent again for
    at most RELEASE_RESEND_FOR s (a script's exit never waits long), then
    given up: the lease is left to its expiry and nothing else changes."""
    a = shell.make()
    shell.acquire(a)
    t0 = shell.clock()
    assert not shell.release_through_outage(a, 60.0)
    assert shell.clock() - t0 <= RELEASE_RESEND_FOR + 0.2
    assert 2 <= shell.registry.count('release') <= RELEASE_RESEND_FOR / 0.5 + 1
    assert owner_of(shell) == ['dev-1'] and not a.held and a.lost is None


def test_shell_release_gives_it_back_and_a_lost_lease_is_not_released(shell):
    """When the holder releases, the next holder gets a larger token; a lost
    lease is forgotten without a release call."""
    a = shell.make()
    shell.acquire(a)
    assert shell.release(a) and not a.held and owner_of(shell) == []
    b = shell.make(owner='dev-2')
    shell.acquire(b)
    assert b.token == 2
    shell.registry.state.force_release('bridge', 'stop', 'op', shell.clock())
    shell.run_for(3)
    assert b.lost and not shell.release(b)
    assert shell.registry.count('release') == 1
