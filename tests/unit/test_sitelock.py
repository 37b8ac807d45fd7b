"""SiteLock against an in-process registry (the real LeaseState behind the
three lease procedures), a fake reactor and a controllable clock."""
import pytest
from twisted.internet import defer

from ocs_locking.leases.sitelock import LeaseLost, SiteLock
from ocs_locking.leases.state import LeaseError, LeaseState

from ..support import FakeReactor


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeAgent:
    """Answers the registry's lease procedures from a LeaseState."""

    def __init__(self, state, clock, instance='dev-1'):
        self.state, self.clock = state, clock
        self.agent_address = f'observatory.{instance}'
        self.reachable = True
        self.calls = []

    def call(self, uri, *args):
        self.calls.append(uri)
        if not self.reachable:
            return defer.fail(ConnectionError('router unreachable'))
        name = uri.rsplit('.', 1)[-1]
        try:
            if name == 'acquire':
                resource, owner, lease, timeout, tree, note, client = args
                out = self.state.acquire(resource, owner, lease, self.clock(), tree=tree,
                                         note=note, client=client)
                if out.status != 'granted':
                    return defer.succeed({'ok': False, 'message': f'Busy: {out.status}'})
                g = out.grants[0]
                return defer.succeed({'ok': True, 'data': {'token': g.token,
                                                           'expires': g.expires}})
            if name == 'renew':
                resource, token, lease, client = args
                g = self.state.renew(resource, token, lease, self.clock())
                return defer.succeed({'ok': True, 'data': {'expires': g.expires}})
            resource, token, client = args
            self.state.release(resource, token, self.clock())
            return defer.succeed({'ok': True})
        except LeaseError as e:
            return defer.succeed({'ok': False, 'message': f'Refused: {e}'})


@pytest.fixture
def env():
    clock, reactor, state = Clock(), FakeReactor(), LeaseState()
    return clock, reactor, state, FakeAgent(state, clock)


def acquired(lock):
    out = []
    lock.acquire_deferred().addBoth(out.append)
    return out[0]


def test_SiteLock_grant_gives_a_token_and_guard_lets_calls_through(env):
    """When the lease is granted, guard() yields its fencing token."""
    clock, reactor, state, agent = env
    lock = SiteLock(agent, 'satp1/bridge', lease=9, clock=clock, reactor=reactor)
    assert acquired(lock) is True
    with lock.guard() as token:
        assert token == lock.token == 1
    assert agent.calls == ['observatory.lock-registry.lease.acquire']
    assert state.holders()[0].owner == 'dev-1'


def test_SiteLock_renews_in_the_background(env):
    """When time passes, the lease is renewed every lease/3 and stays valid."""
    clock, reactor, state, agent = env
    lock = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor)
    assert acquired(lock)
    for _ in range(10):
        clock.now += 3
        reactor.advance(3)
    assert lock.held and lock.check() == 1
    assert agent.calls.count('observatory.lock-registry.lease.renew') == 10


def test_SiteLock_revoked_lease_is_refused_and_reported(env):
    """When an operator force-releases the lease, the next renewal finds out:
    on_revoked gets the reason and guarded calls raise LeaseLost."""
    clock, reactor, state, agent = env
    reasons = []
    lock = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor,
                    on_revoked=reasons.append)
    assert acquired(lock)
    state.force_release('bridge', 'manual work on the bridge', 'operator', clock())
    clock.now += 3
    reactor.advance(3)
    reactor.advance(0)
    assert len(reasons) == 1 and "lease on 'bridge' was lost: Refused: " in reasons[0]
    with pytest.raises(LeaseLost, match=r"^lease on 'bridge' was lost: Refused: "):
        with lock.guard():
            raise AssertionError('the device was touched')


def test_SiteLock_frozen_past_its_lease_is_refused_on_waking(env):
    """When the agent was frozen (SIGSTOP) past its lease, its next guarded
    call is refused at once, before any renewal runs."""
    clock, reactor, state, agent = env
    lock = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor)
    assert acquired(lock)
    clock.now += 30            # no reactor turns: the process was stopped
    with pytest.raises(LeaseLost, match=r"^lease on 'bridge' \(token 1\) expired 21.0 s ago$"):
        lock.check()
    other = SiteLock(FakeAgent(state, clock, 'dev-2'), 'bridge', clock=clock, reactor=reactor)
    assert acquired(other) and other.token == 2        # the next grant's token is larger


def test_SiteLock_unreachable_registry_holds_until_the_lease_runs_out(env):
    """When renewals cannot reach the registry, the lease stays usable until
    its expiry, then every guarded call raises LeaseLost."""
    clock, reactor, state, agent = env
    lock = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor)
    assert acquired(lock)
    agent.reachable = False
    clock.now += 3
    reactor.advance(3)
    assert lock.check() == 1
    clock.now += 6
    reactor.advance(3)
    with pytest.raises(LeaseLost, match=r"^could not renew the lease on 'bridge' before it "
                                        r"expired: router unreachable$"):
        lock.check()


def test_SiteLock_busy_release_and_bad_arguments(env):
    """When the resource is held, acquire is False; release gives it back so
    another owner gets a larger token; bad arguments fail at construction."""
    clock, reactor, state, agent = env
    a = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor)
    b = SiteLock(FakeAgent(state, clock, 'dev-2'), 'bridge', clock=clock, reactor=reactor)
    assert acquired(a) and acquired(b) is False
    assert b.last_refusal == 'Busy: busy'
    with pytest.raises(LeaseLost, match=r"^no lease on 'bridge'$"):
        b.check()
    out = []
    a.release_deferred().addBoth(out.append)
    assert out == [True] and not a.held
    assert acquired(b) and b.token == 2
    with pytest.raises(LeaseError, match=r'^resource '):
        SiteLock(agent, 'Bad Name', reactor=reactor)
    with pytest.raises(ValueError, match=r'^lease must be seconds in \(0, 3600\], not 0$'):
        SiteLock(agent, 'bridge', lease=0, reactor=reactor)


def test_SiteLock_unreachable_registry_refuses_acquire_with_a_reason(env):
    """When the registry cannot be reached, acquire answers False and says
    why, instead of failing."""
    clock, reactor, state, agent = env
    agent.reachable = False
    lock = SiteLock(agent, 'bridge', clock=clock, reactor=reactor)
    assert acquired(lock) is False
    assert lock.last_refusal == 'the lock registry is unreachable: router unreachable'
    with pytest.raises(LeaseLost, match=r"^no lease on 'bridge'$"):
        lock.check()


def test_SiteLock_short_outage_is_bridged_by_quick_retries(env):
    """When one renewal fails, it is retried every 0.5 s, so an outage
    shorter than the rest of the lease does not cost the lease."""
    clock, reactor, state, agent = env
    lock = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor)
    assert acquired(lock)
    agent.reachable = False
    clock.now += 3
    reactor.advance(3)              # the regular renewal fails
    clock.now += 4.5
    reactor.advance(4.5)            # retries keep failing, lease not yet over
    agent.reachable = True
    clock.now += 0.5
    reactor.advance(0.5)            # the next retry succeeds
    assert lock.held and lock.expires == pytest.approx(clock.now + 9)
