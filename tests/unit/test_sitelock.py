"""SiteLock's own rules (the loss rules shared with Reservation are in
test_lease_shells.py): the registry's wall clock plays no part, the
deprecated ``on_revoked=``, the thread API, one resource only."""
import threading

import pytest
from twisted.internet import defer

from ocs_locking.errors import LeaseError, ReactorBlockingError
from ocs_locking.leases.sitelock import LeaseLost, SiteLock

from ..support import FakeReactor
from .test_lease_shells import Clock, SiteLockShell


class SkewedAgent:
    """A registry whose wall clock is a year behind (or ahead of) this host:
    every expiry it reports is far off."""
    agent_address = 'observatory.dev-1'

    def __init__(self, skew):
        self.skew = skew
        self.calls = []

    def call(self, uri, *args):
        if uri.endswith('.watch'):
            return defer.Deferred()     # a lease watch nothing happens to (a long poll)
        self.calls.append(uri.rsplit('.', 1)[-1])
        return defer.succeed({'ok': True, 'message': '', 'data': {
            'resource': 'bridge', 'token': 4, 'expires': 1.7e9 + self.skew,
            'queued_for': 0.0}})


@pytest.mark.parametrize('skew', [-3.2e7, 3.2e7])
def test_SiteLock_clock_skew_between_hosts_does_not_change_the_lease(skew):
    """When the registry's wall clock is a year off this host's, the lease
    still lasts exactly one lease on this host's monotonic clock, renewed
    from each renewal's send time (regression: SiteLock compared its wall
    clock with the registry's ``expires``)."""
    clock, reactor = Clock(), FakeReactor()
    lock = SiteLock(SkewedAgent(skew), 'bridge', lease=9, clock=clock, reactor=reactor)
    lock.acquire_deferred()
    assert lock.held and lock.deadline == clock() + 9
    clock.t += 8.9
    assert lock.check() == 4
    clock.t += 0.1
    with pytest.raises(LeaseLost, match=r'ran out 0\.0 s ago without a renewal$'):
        lock.check()


def test_SiteLock_on_revoked_is_a_deprecated_alias_of_on_lost():
    """When an agent still passes on_revoked=, it gets a DeprecationWarning
    and the callback is called on a loss like on_lost."""
    shell = SiteLockShell(Clock())
    reasons = []
    with pytest.warns(DeprecationWarning, match=r'on_revoked=.*deprecated; use on_lost='):
        lock = SiteLock(shell.make().agent, 'bridge', lease=9, on_revoked=reasons.append,
                        clock=shell.clock, reactor=shell.reactor, watch=False)
    assert lock.on_revoked is lock.on_lost
    shell.acquire(lock)
    shell.registry.state.force_release('bridge', 'x', 'op', shell.clock())
    shell.run_for(3)
    assert len(reasons) == 1 and reasons[0].startswith('renewal of the lease on bridge was '
                                                       'refused: ')


def test_SiteLock_holds_one_resource_and_refuses_bad_arguments():
    """When SiteLock is given a list, a bad path or a bad lease, it raises
    at construction naming what was wrong."""
    reactor = FakeReactor()
    with pytest.raises(ValueError, match=r'^SiteLock holds one resource, not a list'):
        SiteLock(SkewedAgent(0), ['a', 'b'], reactor=reactor)
    with pytest.raises(LeaseError, match=r'^resource segment '):
        SiteLock(SkewedAgent(0), 'Bad Name', reactor=reactor)
    with pytest.raises(LeaseError, match=r'^lease must be in \[0\.5, 3600\] seconds, not 0$'):
        SiteLock(SkewedAgent(0), 'bridge', lease=0, reactor=reactor)


def test_SiteLock_thread_api_waits_for_the_reactor_and_refuses_on_it(reactor_thread):
    """When a worker thread calls acquire()/release(), they run on the reactor
    and return its result; called on the reactor thread they raise
    ReactorBlockingError instead of freezing it."""
    rt = reactor_thread
    agent = SkewedAgent(0)
    lock = SiteLock(agent, 'bridge', lease=9, reactor=rt.reactor, watch=False)
    assert lock.acquire() is lock and lock.token == 4
    assert lock.release() is True and agent.calls == ['acquire', 'release']
    errors = []
    done = threading.Event()

    def on_reactor():
        try:
            lock.acquire()
        except ReactorBlockingError as e:
            errors.append(str(e))
        done.set()
    rt.reactor.callFromThread(on_reactor)
    assert done.wait(10)
    assert errors == ['SiteLock.acquire() would block the reactor thread; use '
                      'acquire_deferred()']


def test_SiteLock_acquire_while_holding_is_refused():
    """When a SiteLock that holds its lease is asked to acquire again, it
    raises LeaseUnavailable naming the token it holds and calls nobody."""
    from ocs_locking.errors import LeaseUnavailable
    agent = SkewedAgent(0)
    lock = SiteLock(agent, 'bridge', lease=9, clock=Clock(), reactor=FakeReactor())
    lock.acquire_deferred()
    out = []
    lock.acquire_deferred().addErrback(lambda f: out.append(f.value))
    assert isinstance(out[0], LeaseUnavailable)
    assert str(out[0]) == 'already holding bridge (token 4)' and agent.calls == ['acquire']


def test_SiteLock_guard_with_timeout_refuses_a_call_that_would_outlast_the_lease():
    """When guard(timeout=...) is given a device call's timeout, the body runs
    while timeout + GUARD_MARGIN fits in what is left of the lease and is not
    run once it does not (LeaseTooShort); the lease is not lost by that and
    on_lost is not called."""
    from ocs_locking.errors import LeaseTooShort
    clock, reactor, lost = Clock(), FakeReactor(), []
    lock = SiteLock(SkewedAgent(0), 'bridge', lease=9, clock=clock, reactor=reactor,
                    on_lost=lost.append)
    lock.acquire_deferred()
    ran = []
    with lock.guard(timeout=3.0) as token:
        ran.append(token)
    clock.t += 5.8                      # 3.2 s left, 3.25 s needed
    with pytest.raises(LeaseTooShort, match=r'^3\.20 s left of the lease on bridge \(token 4\)'):
        with lock.guard(timeout=3.0):
            ran.append('the device was touched')
    reactor.advance(0)
    assert ran == [4] and lock.held and lost == [] and lock.lost is None
    with lock.guard(timeout=2.0) as token:
        ran.append(token)
    assert ran == [4, 4]


class SilentAgent:
    """A registry that never answers (frozen): each call's Deferred is kept,
    and records whether it was cancelled."""
    agent_address = 'observatory.dev-1'

    def __init__(self):
        self.cancelled = []

    def call(self, uri, *args):
        return defer.Deferred(canceller=lambda d: self.cancelled.append(uri))


def test_SiteLock_acquire_gives_up_at_its_timeout_plus_the_stated_margin():
    """When the registry never answers a queued acquire (timeout 3 s), the
    call is given up at 3 s + ANSWER_MARGIN, not before and not at a fixed
    transport timeout: the WAMP call is cancelled (so the registry would
    withdraw it) and LeaseUnavailable says how long it waited."""
    from ocs_locking.errors import LeaseUnavailable
    from ocs_locking.wire import ANSWER_MARGIN
    reactor, agent = FakeReactor(), SilentAgent()
    lock = SiteLock(agent, 'bridge', lease=9, clock=Clock(), reactor=reactor)
    out = []
    lock.acquire_deferred(timeout=3).addBoth(out.append)
    reactor.advance(3 + ANSWER_MARGIN - 0.01)
    assert out == [] and agent.cancelled == []
    reactor.advance(0.01)
    assert agent.cancelled == ['observatory.lock-registry.lease.acquire']
    assert isinstance(out[0].value, LeaseUnavailable)
    assert str(out[0].value).endswith(f'did not answer within {3 + ANSWER_MARGIN:g} s')


class KeyedAgent:
    """A registry that grants with a lease id and records every call's arguments."""
    agent_address = 'observatory.dev-1'
    LEASE_ID = '0123456789abcdef' * 2

    def __init__(self):
        self.calls = []

    def call(self, uri, *args):
        self.calls.append((uri.rsplit('.', 1)[-1], args))
        if uri.endswith('.watch'):
            return defer.Deferred()     # a lease watch nothing happens to
        return defer.succeed({'ok': True, 'message': '', 'data': {
            'resource': 'bridge', 'token': 4, 'expires': 1.7e9, 'queued_for': 0.0,
            'lease_id': self.LEASE_ID}})


def test_SiteLock_renews_and_releases_with_its_lease_id_never_the_token(caplog):
    """When a SiteLock holds a lease, its lease watch, its renewals and its
    release send the lease id the grant returned (the token only fences the
    hardware), and no
    log line or attribute repr shows the lease id."""
    clock, reactor, agent = Clock(), FakeReactor(), KeyedAgent()
    lock = SiteLock(agent, 'bridge', lease=9, clock=clock, reactor=reactor)
    lock.acquire_deferred()
    clock.t += 3.0
    reactor.advance(3.0)
    lock.release_deferred()
    assert [(name, args[:2]) for name, args in agent.calls[1:]] == [
        ('watch', ('bridge', KeyedAgent.LEASE_ID)), ('renew', ('bridge', KeyedAgent.LEASE_ID)), ('release', ('bridge', KeyedAgent.LEASE_ID))]
    assert lock.token is None and lock._core.lease_id is None
    assert KeyedAgent.LEASE_ID not in caplog.text + repr(vars(lock))


class QueuedAgent(KeyedAgent):
    """A registry whose acquire answers only when told (the request waits in its queue)."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def call(self, uri, *args, **kwargs):
        if uri.endswith('.acquire'):
            self.calls.append(('acquire', args, kwargs))
            d = defer.Deferred()
            self.pending.append(d)
            return d
        return super().call(uri, *args)


def test_reported_SiteLock_names_the_operation_that_waits_then_holds():
    """When a reported SiteLock's acquire waits in the registry's queue, the
    agent's locks feed says which operation waits for which lease; when it
    is granted, that operation holds the row; released, the row is free:
    every message is one the registry's table accepts, with ``lease``."""
    from ocs_locking.events import LockReporter
    from ocs_locking.ownership import OwnershipTable
    from .test_events import FakeAgent, Reactor
    reactor, feed, agent = Reactor(), FakeAgent(), QueuedAgent()
    reporter = LockReporter(feed, min_interval=0.0, reactor=reactor)
    lock = SiteLock(agent, 'demo/hwp', lease=9, clock=Clock(), reactor=reactor)
    assert lock.name == 'lease:demo:hwp'
    reporter.attach(lock)
    reactor.advance(0)
    lock.acquire_deferred(30, 'cal', op='cal', session_id=4)
    reactor.advance(0)
    agent.pending[0].callback({'ok': True, 'message': '', 'data': {
        'resource': 'demo/hwp', 'token': 7, 'expires': 1.7e9, 'queued_for': 1.0,
        'lease_id': KeyedAgent.LEASE_ID}})
    lock.release_deferred()
    reactor.advance(0)
    msgs = feed.published
    assert [m['event'] for m in msgs] == ['snapshot', 'waiting', 'acquired', 'released']
    assert all(m['lease'] == 'demo/hwp' and m['lock'] == 'lease:demo:hwp' for m in msgs)
    # the request names the operation too, for the registry's deadlock check
    assert agent.calls[0][2] == {'party': 'cal (session 4)'}
    assert msgs[1]['queue'][0]['job'] == 'cal' and msgs[1]['queue'][0]['session_id'] == 4
    assert (msgs[2]['job'], msgs[2]['session_id'], msgs[2]['queue']) == ('cal', 4, [])
    table = OwnershipTable()
    for m in msgs[:2]:
        table.lock_message('dev-1', m, 100.0)
    [row] = table.waits()
    assert row['lease'] == 'demo/hwp' and row['queue'] == [{'job': 'cal', 'session_id': 4}]
    for m in msgs[2:]:
        table.lock_message('dev-1', m, 100.0)
    assert table.snapshot()[0]['job'] is None and table.snapshot()[0]['lease'] == 'demo/hwp'


def test_reported_SiteLock_that_is_refused_gives_up_in_its_row():
    """When the queued acquire is refused (timed out in the queue), the
    waiting operation leaves the row (``gave_up``)."""
    from ocs_locking.events import LockReporter
    from .test_events import FakeAgent, Reactor
    from ocs_locking.errors import LeaseUnavailable
    reactor, feed, agent = Reactor(), FakeAgent(), QueuedAgent()
    reporter = LockReporter(feed, min_interval=0.0, reactor=reactor)
    lock = SiteLock(agent, 'demo/hwp', lease=9, clock=Clock(), reactor=reactor,
                    name='hwp-lease')
    reporter.attach(lock)
    reactor.advance(0)
    out = []
    lock.acquire_deferred(5, 'cal', session_id=4).addErrback(lambda f: out.append(f.value))
    agent.pending[0].callback({'ok': False, 'message': 'timed out in the queue', 'data': {}})
    reactor.advance(0)
    assert isinstance(out[0], LeaseUnavailable)
    assert [m['event'] for m in feed.published] == ['snapshot', 'waiting', 'gave_up']
    assert feed.published[-1]['waiters'] == 0 and feed.published[-1]['lock'] == 'hwp-lease'


def test_SiteLock_report_name_must_fit_the_locks_feed():
    """A name the locks feed cannot carry is refused in one line; a long
    path gets a shortened default name."""
    with pytest.raises(ValueError, match=r'^a SiteLock is reported as a lock named .*not '
                                         r"'bad name'$"):
        SiteLock(SkewedAgent(0), 'bridge', name='bad name', reactor=FakeReactor())
    long = '/'.join(['segment-name'] * 6)
    lock = SiteLock(SkewedAgent(0), long, reactor=FakeReactor())
    assert lock.name.startswith('lease:') and lock.name.endswith(':segment-name')
    assert len(lock.name) == 64
