"""ocs_locking.bus.authorizer.BusAuthorizer, its Twisted shell, with the
router's meta API faked: the map from meta events, the lookup on a miss, the
snapshot at join, malformed events counted, never raised."""
import pytest
from autobahn.wamp.types import ComponentConfig
from twisted.internet import defer

from ocs_locking.bus.authorizer import BusAuthorizer

AGENT, OTHER, REGISTRY = 101, 202, 303
OPS = 'observatory.sim-device-1.ops'
FEED = 'observatory.sim-device-1.feeds.locks'


class FakeRouter:
    """What the meta procedures would answer: uri -> (registration id, callees)."""

    def __init__(self):
        self.regs = {}
        self.calls = []

    def call(self, proc, *args):
        self.calls.append((proc, *args))
        if proc == 'wamp.registration.lookup':
            entry = self.regs.get(args[0])
            return defer.succeed(entry[0] if entry else None)
        if proc == 'wamp.registration.list_callees':
            for reg_id, callees in self.regs.values():
                if reg_id == args[0]:
                    return defer.succeed(list(callees))
            return defer.fail(RuntimeError('no such registration'))
        if proc == 'wamp.registration.list':
            return defer.succeed({'exact': [r for r, _ in self.regs.values()],
                                  'prefix': [], 'wildcard': []})
        if proc == 'wamp.registration.get':
            for uri, (reg_id, _) in self.regs.items():
                if reg_id == args[0]:
                    return defer.succeed({'id': reg_id, 'uri': uri, 'match': 'exact'})
        return defer.fail(RuntimeError(f'unexpected {proc}'))


@pytest.fixture
def bus():
    b = BusAuthorizer(ComponentConfig('test_realm', extra={'address_root': 'observatory',
                                                           'registry': 'lock-registry'}))
    b.router = FakeRouter()
    b.call = b.router.call
    return b


def authorize(bus, session, uri, action, options=None):
    results = []
    bus.authorize({'session': session}, uri, action, options).addBoth(results.append)
    [result] = results
    return result


def test_a_publish_by_the_holder_from_the_meta_events_needs_no_lookup(bus):
    bus._on_create(AGENT, {'id': 1, 'uri': OPS, 'match': 'exact', 'created': 'x',
                           'invoke': 'single'})
    assert authorize(bus, AGENT, FEED, 'publish') == {'allow': True, 'disclose': True,
                                                      'cache': False}
    assert bus.router.calls == []


def test_a_miss_is_looked_up_before_refusing_the_race_with_on_create(bus):
    bus.router.regs[OPS] = (1, [AGENT])     # registered; on_create not seen yet
    assert authorize(bus, AGENT, FEED, 'publish')['allow'] is True
    assert bus.regs.holder(OPS) == AGENT and bus.lookups == 1
    assert authorize(bus, AGENT, FEED, 'publish')['allow'] is True
    assert bus.lookups == 1     # known now


def test_a_foreign_publish_is_refused_after_the_lookup_confirms(bus):
    bus._on_create(AGENT, {'id': 1, 'uri': OPS, 'match': 'exact'})
    bus.router.regs[OPS] = (1, [AGENT])
    assert authorize(bus, OTHER, FEED, 'publish') == {'allow': False, 'disclose': False,
                                                      'cache': False}
    assert bus.refused['publish'] == 1
    assert bus.regs.holder(OPS) == AGENT


def test_a_stale_holder_is_replaced_by_what_the_router_says(bus):
    bus._on_create(AGENT, {'id': 1, 'uri': OPS, 'match': 'exact'})
    bus.router.regs[OPS] = (2, [OTHER])     # AGENT left, OTHER registered; events late
    assert authorize(bus, OTHER, FEED, 'publish')['allow'] is True
    assert bus.regs.holder(OPS) == OTHER


def test_no_registration_or_several_callees_hold_nothing(bus):
    assert authorize(bus, OTHER, FEED, 'publish')['allow'] is False
    bus.router.regs[OPS] = (1, [AGENT, OTHER])
    assert authorize(bus, AGENT, FEED, 'publish')['allow'] is False
    assert bus.regs.holder(OPS) is None


def test_delete_unregister_and_leave_end_a_holding(bus):
    for reg_id, session in ((1, AGENT), (2, OTHER), (3, REGISTRY)):
        bus._on_create(session, {'id': reg_id, 'uri': f'observatory.a{reg_id}.ops'})
    bus._on_delete(AGENT, 1)
    bus._on_unregister(OTHER, 2)
    bus._on_leave(REGISTRY)
    assert len(bus.regs) == 0 and sum(bus.dropped.values()) == 0


def test_a_detached_sessions_events_without_session_id_end_its_holding(bus):
    """crossbar sends on_unregister / on_delete (None, registration id) when a
    leaving session's registrations go: not malformed."""
    bus._on_create(AGENT, {'id': 1, 'uri': OPS})
    bus._on_create(OTHER, {'id': 2, 'uri': 'observatory.b.ops'})
    bus._on_unregister(None, 1)
    bus._on_delete(None, 2)
    assert len(bus.regs) == 0 and sum(bus.dropped.values()) == 0


def test_untracked_registrations_are_not_kept(bus):
    bus._on_create(AGENT, {'id': 1, 'uri': 'observatory.a.lease.acquire'})
    bus._on_create(AGENT, {'id': 2, 'uri': 'observatory.a.ops', 'match': 'prefix'})
    bus._on_create(AGENT, {'id': 3, 'uri': 'elsewhere.a.ops'})
    assert len(bus.regs) == 0


@pytest.mark.parametrize('handler, args', [
    ('_on_create', ()), ('_on_create', (AGENT,)), ('_on_create', ('x', {'id': 1, 'uri': OPS})),
    ('_on_create', (AGENT, {'id': 'one', 'uri': OPS})), ('_on_create', (AGENT, {'id': 1})),
    ('_on_create', (AGENT, [1, OPS])), ('_on_create', (True, {'id': 1, 'uri': OPS})),
    ('_on_delete', (AGENT,)), ('_on_delete', (AGENT, None)), ('_on_delete', (1, 2, 3)),
    ('_on_delete', ('x', 9)), ('_on_unregister', (None, 'nine')),
    ('_on_unregister', ('a', 1)), ('_on_leave', ()), ('_on_leave', ('101',)),
    ('_on_leave', (1, 2)), ('_on_leave', (None,))])
def test_malformed_meta_events_are_counted_logged_and_change_nothing(bus, handler, args):
    bus._on_create(AGENT, {'id': 9, 'uri': OPS})
    getattr(bus, handler)(*args)
    assert sum(bus.dropped.values()) == 1
    assert bus.regs.holder(OPS) == AGENT


@pytest.mark.parametrize('session', [None, 'x', {'session': 'x'}, 42])
def test_bad_session_details_are_refused_not_raised(bus, session):
    results = []
    bus.authorize(session, FEED, 'publish', None).addBoth(results.append)
    assert results == [{'allow': False, 'disclose': False, 'cache': False}]


def test_an_error_inside_is_a_refusal(bus):
    def broken(*a, **k):
        raise RuntimeError('bug')
    bus._decide = broken
    assert authorize(bus, AGENT, FEED, 'publish') == {'allow': False, 'disclose': False,
                                                      'cache': False}


def test_a_lookup_that_fails_is_a_refusal(bus):
    bus.call = lambda *a: defer.fail(RuntimeError('router gone'))
    assert authorize(bus, AGENT, FEED, 'publish')['allow'] is False


def test_concurrent_misses_share_one_lookup(bus):
    pending = defer.Deferred()
    calls = []

    def slow(proc, *args):
        calls.append(proc)
        return pending if proc == 'wamp.registration.lookup' else defer.succeed([AGENT])
    bus.call = slow
    results = []
    for _ in range(3):
        bus.authorize({'session': AGENT}, FEED, 'publish', None).addBoth(results.append)
    assert results == [] and calls == ['wamp.registration.lookup']
    pending.callback(1)
    assert [r['allow'] for r in results] == [True, True, True]
    assert calls == ['wamp.registration.lookup', 'wamp.registration.list_callees']


def test_the_snapshot_at_join_learns_existing_holders(bus):
    bus.router.regs[OPS] = (1, [AGENT])
    bus.router.regs['observatory.sim-device-1.other'] = (2, [AGENT])
    bus.router.regs['observatory.lock-registry.ops'] = (3, [REGISTRY])
    d = bus._snapshot()
    assert d.called
    assert bus.regs.holder(OPS) == AGENT
    assert bus.regs.holder('observatory.lock-registry.ops') == REGISTRY
    assert len(bus.regs) == 2


def test_a_failing_snapshot_is_counted_not_raised(bus):
    bus.call = lambda *a: defer.fail(RuntimeError('not authorized'))
    d = bus._snapshot()
    assert d.called and bus.dropped['snapshot'] == 1


def test_info_says_what_is_enforced(bus):
    info = bus.info()
    assert info.pop('version')
    assert info == {'component': 'ocs_locking.bus', 'address_root': 'observatory',
                    'registry': 'lock-registry', 'standbys': [], 'disclose': True}
