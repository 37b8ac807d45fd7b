"""ocs_locking.bus.rules: every rule, every action, bad input."""
import pytest

from ocs_locking.bus import rules
from ocs_locking.bus.rules import RegistrationMap, decide

AGENT, OTHER, REGISTRY = 101, 202, 303


@pytest.fixture
def regs():
    r = RegistrationMap()
    r.created(AGENT, 1, 'observatory.sim-device-1.ops')
    r.created(REGISTRY, 2, 'observatory.lock-registry.ops')
    return r


def allowed(regs, session, uri, action, options=None):
    return decide(regs, session, uri, action, options).allow


@pytest.mark.parametrize('topic', ['observatory.sim-device-1.feeds.locks',
                                   'observatory.sim-device-1.feeds.heartbeat'])
def test_publish_on_an_agents_feeds_only_by_the_holder_of_its_ops(regs, topic):
    assert allowed(regs, AGENT, topic, 'publish')
    assert not allowed(regs, OTHER, topic, 'publish')
    assert not allowed(regs, REGISTRY, topic, 'publish')


def test_the_registrys_ownership_feed_only_by_the_registry(regs):
    topic = 'observatory.lock-registry.feeds.ownership'
    assert allowed(regs, REGISTRY, topic, 'publish')
    assert not allowed(regs, AGENT, topic, 'publish')


def test_a_refused_feed_publish_asks_to_verify_the_ops_holder(regs):
    d = decide(regs, OTHER, 'observatory.sim-device-1.feeds.locks', 'publish')
    assert not d.allow and d.verify == 'observatory.sim-device-1.ops'
    d = decide(regs, OTHER, 'observatory.unknown.feeds.locks', 'publish')
    assert not d.allow and d.verify == 'observatory.unknown.ops'


def test_publish_elsewhere_under_root_is_allowed_outside_refused(regs):
    assert allowed(regs, OTHER, 'observatory.sim-device-1', 'publish')
    assert allowed(regs, OTHER, 'observatory.sim-device-1.feed', 'publish')
    assert not allowed(regs, OTHER, 'elsewhere.x.feeds.y', 'publish')
    assert not allowed(regs, OTHER, 'observatory..feeds.locks', 'publish')


def test_registering_an_agent_address_and_its_ops_is_open_to_anyone(regs):
    assert allowed(regs, OTHER, 'observatory.new-agent', 'register')
    assert allowed(regs, OTHER, 'observatory.new-agent.ops', 'register')
    # (the router itself refuses a second registration of a held one)
    assert allowed(regs, OTHER, 'observatory.sim-device-1.ops', 'register')


def test_registering_more_under_an_agent_only_by_the_holder_of_its_ops(regs):
    uri = 'observatory.lock-registry.lease.acquire'
    assert allowed(regs, REGISTRY, uri, 'register')
    assert not allowed(regs, OTHER, uri, 'register')
    d = decide(regs, OTHER, uri, 'register')
    assert d.verify == 'observatory.lock-registry.ops'
    assert allowed(regs, AGENT, 'observatory.sim-device-1.agent_poll', 'register')
    assert not allowed(regs, AGENT, 'observatory.lock-registry.lease.acquire', 'register')


def test_prefix_registration_only_inside_ones_own_agent_and_wildcard_never(regs):
    prefix, wildcard = {'match': 'prefix'}, {'match': 'wildcard'}
    assert allowed(regs, AGENT, 'observatory.sim-device-1.', 'register', prefix)
    assert not allowed(regs, OTHER, 'observatory.sim-device-1.', 'register', prefix)
    assert not allowed(regs, AGENT, 'observatory.lock-reg', 'register', prefix)
    assert not allowed(regs, AGENT, 'observatory.', 'register', prefix)
    assert not allowed(regs, REGISTRY, 'observatory..ops', 'register', wildcard)


@pytest.mark.parametrize('action', ['call', 'subscribe'])
@pytest.mark.parametrize('match', ['exact', 'prefix', 'wildcard'])
def test_call_and_subscribe_under_root_as_ocs_allows(regs, action, match):
    assert allowed(regs, OTHER, 'observatory.sim-device-1.ops', action, {'match': match})
    assert allowed(regs, OTHER, 'observatory..feeds.locks', action, {'match': match})
    assert not allowed(regs, OTHER, 'elsewhere.x', action, {'match': match})


@pytest.mark.parametrize('topic', sorted(rules.META_SUBSCRIBE))
def test_meta_subscriptions_only_for_the_registry_and_exact(regs, topic):
    assert allowed(regs, REGISTRY, topic, 'subscribe')
    assert not allowed(regs, AGENT, topic, 'subscribe')
    assert not allowed(regs, REGISTRY, topic, 'subscribe', {'match': 'prefix'})
    assert not allowed(regs, REGISTRY, topic, 'call')
    assert not allowed(regs, REGISTRY, topic, 'publish')
    assert not allowed(regs, REGISTRY, topic, 'register')


@pytest.mark.parametrize('proc', sorted(rules.META_CALL))
def test_meta_calls_only_for_the_registry(regs, proc):
    assert allowed(regs, REGISTRY, proc, 'call')
    assert not allowed(regs, AGENT, proc, 'call')
    assert not allowed(regs, REGISTRY, proc, 'register')


@pytest.mark.parametrize('uri', ['wamp.session.kill', 'wamp.session.list',
                                 'wamp.session.kill_by_authrole', 'wamp.subscription.list',
                                 'wamp.registration.remove_callee', 'wamp.session.'])
def test_other_meta_uris_for_nobody(regs, uri):
    for action in rules.ACTIONS:
        assert not allowed(regs, REGISTRY, uri, action)
    assert not allowed(regs, REGISTRY, 'wamp.session.', 'subscribe', {'match': 'prefix'})


def test_the_components_own_uris(regs):
    assert allowed(regs, OTHER, rules.INFO_URI, 'call')
    for action in ('register', 'publish', 'subscribe'):
        assert not allowed(regs, OTHER, rules.INFO_URI, action)
    for action in rules.ACTIONS:
        assert not allowed(regs, REGISTRY, rules.AUTHORIZE_URI, action)
        assert not allowed(regs, OTHER, 'ocs_locking.bus.other', action)
    assert not allowed(regs, OTHER, rules.INFO_URI, 'call', {'match': 'prefix'})


@pytest.mark.parametrize('session, uri, action, options', [
    (None, 'observatory.x', 'call', None), ('101', 'observatory.x', 'call', None),
    (True, 'observatory.x', 'call', None), (AGENT, None, 'call', None),
    (AGENT, '', 'call', None), (AGENT, 42, 'publish', None),
    (AGENT, 'observatory.x', 'delete', None), (AGENT, 'observatory.x', None, None),
    (AGENT, 'observatory.x', 'call', {'match': 'regex'})])
def test_bad_input_is_refused_not_raised(regs, session, uri, action, options):
    d = decide(regs, session, uri, action, options)
    assert d.allow is False and d.reason


def test_answers_disclose_when_allowed_and_never_cache(regs):
    yes = rules.answer(decide(regs, AGENT, 'observatory.sim-device-1.feeds.locks', 'publish'))
    no = rules.answer(decide(regs, OTHER, 'observatory.sim-device-1.feeds.locks', 'publish'))
    assert yes == {'allow': True, 'disclose': True, 'cache': False}
    assert no == {'allow': False, 'disclose': False, 'cache': False}


def test_other_roots_and_registry_ids(regs):
    regs.created(7, 9, 'site.reg.ops')
    assert decide(regs, 7, 'wamp.session.on_leave', 'subscribe', root='site',
                  registry='reg').allow
    assert not decide(regs, 7, 'observatory.x', 'call', root='site').allow


def test_registration_map_follows_create_unregister_delete_and_leave():
    r = RegistrationMap()
    r.created(AGENT, 1, 'observatory.a.ops')
    r.created(AGENT, 2, 'observatory.b.ops')
    assert r.holder('observatory.a.ops') == AGENT and len(r) == 2
    assert r.uris_of(AGENT) == ['observatory.a.ops', 'observatory.b.ops']
    r.unregistered(OTHER, 1)            # not the holder: nothing changes
    assert r.holder('observatory.a.ops') == AGENT
    r.unregistered(AGENT, 1)
    assert r.holder('observatory.a.ops') is None
    assert r.deleted(2) and not r.deleted(2)
    r.created(AGENT, 3, 'observatory.a.ops')
    r.created(OTHER, 4, 'observatory.a.ops')    # a newer registration of the uri wins
    assert r.holder('observatory.a.ops') == OTHER and r.uris_of(AGENT) == []
    r.created(OTHER, 5, 'observatory.c.ops')
    r.left(OTHER)
    assert len(r) == 0 and r.holder('observatory.c.ops') is None
    r.created(AGENT, 6, 'observatory.d.ops')
    r.forget('observatory.d.ops')
    r.forget('observatory.never.ops')
    assert len(r) == 0


def test_feed_owner_uri():
    assert rules.feed_owner_uri('observatory.a.feeds.locks', 'observatory') == 'observatory.a.ops'
    assert rules.feed_owner_uri('observatory.a.locks', 'observatory') is None
    assert rules.feed_owner_uri('other.a.feeds.x', 'observatory') is None


STANDBY = 404


def test_replica_calls_only_by_a_configured_standby(regs):
    """When a session calls the registry's replica procedures (lease-key
    and credential hashes travel there), only the holder of a configured
    standby's .ops is let through; with no standby configured, nobody; a
    refusal for a standby not seen yet asks to verify its .ops holder."""
    uri = 'observatory.lock-registry.replica.pull'
    regs.created(STANDBY, 3, 'observatory.lock-registry-b.ops')
    standbys = ('lock-registry-b',)
    assert decide(regs, STANDBY, uri, 'call', standbys=standbys).allow
    for session in (AGENT, OTHER, REGISTRY):
        assert not decide(regs, session, uri, 'call', standbys=standbys).allow
    assert not decide(regs, STANDBY, uri, 'call').allow
    unseen = decide(regs, OTHER, uri, 'call', standbys=('lock-registry-c',))
    assert not unseen.allow and unseen.verify == 'observatory.lock-registry-c.ops'
    # the registry's other procedures stay open to callers
    assert decide(regs, OTHER, 'observatory.lock-registry.lease.renew', 'call',
                  standbys=standbys).allow
