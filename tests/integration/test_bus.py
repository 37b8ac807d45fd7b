"""The bus component on a real router: the demo site's crossbar config runs
ocs_locking.bus.authorizer.BusAuthorizer; raw WAMP sessions (tests.support.
WampPeer) try what a forger would. The last tests start a second site on
ocs's stock config (no component) and check it still works as before.
"""
import json
import os
import urllib.error
import urllib.request

import pytest
from ocs.ocs_client import OCSClient

from ocs_locking.wire import TABLE_KEY
from tests.support import CROSSBAR_CONFIGS, WAIT, WampPeer
from tools.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
NOT_AUTHORIZED = 'wamp.error.not_authorized'
FORGED = [{'lock': 'hw', 'event': 'acquired', 'job': 'forged', 'op': None,
           'session_id': None, 'since': 1.0, 'waiters': 0, 'token': 1, 'seq': 10 ** 9,
           'boot': 1.0}, {'agent_address': 'observatory.sim-device-1', 'feed_name': 'locks'}]
INFO = {'component': 'ocs_locking.bus', 'address_root': 'observatory',
        'registry': 'lock-registry', 'disclose': True, 'standbys': []}

pytestmark = pytest.mark.integration


def _started(site):
    for instance in ('lock-registry', 'sim-device-1', 'sim-device-2'):
        site.wait_agent(instance)
    return site


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('bus-site'), port=0,
              teardown='kill') as s:
        yield _started(s)


@pytest.fixture
def peer(site, reactor_thread):
    p = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    yield p
    p.close()


def http_call(site, procedure, *args):
    """Call through the router's HTTP bridge: the reply dict (args or error)."""
    body = json.dumps({'procedure': procedure, 'args': list(args)}).encode()
    req = urllib.request.Request(f'http://127.0.0.1:{site.port}/call', data=body,
                                 headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def table(site):
    client = OCSClient('lock-registry', args=site.client_args)
    return (client.monitor.status().session.get('data') or {}).get(TABLE_KEY) or {}


def wait_table(site, pred, what):
    import time
    deadline = time.monotonic() + WAIT
    while not pred(table(site)):
        assert time.monotonic() < deadline, f'never saw {what} in the registry table'
        time.sleep(0.1)


def test_a_foreign_session_cannot_publish_on_an_agents_feeds_or_the_registrys_ownership(peer):
    for topic in ('observatory.sim-device-1.feeds.locks',
                  'observatory.sim-device-1.feeds.heartbeat',
                  'observatory.lock-registry.feeds.ownership'):
        assert peer.publish(topic, *FORGED) == NOT_AUTHORIZED, topic
    # outside any agent's feeds, ocs's default permissions still apply
    assert peer.publish('observatory.some-topic', 1) is None
    assert peer.publish('elsewhere.topic', 1) == NOT_AUTHORIZED


def test_an_agents_own_publishes_pass_with_the_publisher_disclosed(site, peer):
    peer.subscribe('observatory..feeds.heartbeat', match='wildcard')
    publishers = {}
    while len(publishers) < 3:      # heartbeats come every second from each agent
        topic, args, details = peer.events.get(timeout=WAIT)
        publishers[topic] = details
    for topic, details in publishers.items():
        assert isinstance(details.publisher, int) and details.publisher != peer.id, topic
        assert details.publisher_authrole == 'iocs_agent'
    assert len({d.publisher for d in publishers.values()}) == 3
    # and the registry still gets the agents' lock events
    wait_table(site, lambda t: 'sim-device-1/hw' in t and 'sim-device-2/hw' in t,
               'both agents\' locks')


def test_the_first_publish_right_after_registering_ops_is_not_refused(peer):
    """Races between a registration and its first publish (the component's
    on_create meta event may come later) must not deny a genuine agent."""
    for i in range(20):
        assert peer.register(f'observatory.racer-{i}.ops') is None
        assert peer.publish(f'observatory.racer-{i}.feeds.heartbeat', {}) is None, i


def test_after_an_agent_leaves_the_next_holder_of_its_ops_owns_its_feeds(site, reactor_thread):
    url = f'ws://127.0.0.1:{site.port}/ws'
    first = WampPeer(reactor_thread, url, site.realm)
    second = WampPeer(reactor_thread, url, site.realm)
    try:
        assert first.register('observatory.mover.ops') is None
        assert second.publish('observatory.mover.feeds.locks', 1) == NOT_AUTHORIZED
        assert second.register('observatory.mover.ops') == 'wamp.error.procedure_already_exists'
        first.close()
        assert second.register('observatory.mover.ops') is None
        assert second.publish('observatory.mover.feeds.locks', 1) is None
    finally:
        first.close()
        second.close()


def test_a_session_not_holding_the_registrys_ops_gets_no_meta_api(peer):
    assert peer.error('subscribe', lambda *a: None, 'wamp.session.on_leave') == NOT_AUTHORIZED
    assert peer.error('subscribe', lambda *a: None, 'wamp.registration.on_create') \
        == NOT_AUTHORIZED
    assert peer.error('call', 'wamp.session.kill', peer.id) == NOT_AUTHORIZED
    assert peer.error('call', 'wamp.registration.lookup', 'observatory.lock-registry.ops') \
        == NOT_AUTHORIZED


def test_a_squatter_cannot_register_another_agents_procedures_or_the_components(peer):
    # held by the registry: the router's single-registration rule answers first
    assert peer.register('observatory.lock-registry.lease.acquire') \
        == 'wamp.error.procedure_already_exists'
    assert peer.register('observatory.lock-registry.lease.squat') == NOT_AUTHORIZED
    assert peer.register('observatory.sim-device-1.agent_poll') == NOT_AUTHORIZED
    assert peer.register('ocs_locking.bus.info') == 'wamp.error.procedure_already_exists'
    assert peer.register('ocs_locking.bus.other') == NOT_AUTHORIZED
    # its own namespace, after registering its ops: allowed
    assert peer.register('observatory.squatter.ops') is None
    assert peer.register('observatory.squatter.more') is None


def test_bus_info_answers_over_wamp_and_http(site, peer):
    info = peer.run('call', 'ocs_locking.bus.info')
    assert {k: v for k, v in info.items() if k != 'version'} == INFO
    assert isinstance(info['version'], str)
    assert http_call(site, 'ocs_locking.bus.info')['args'] == [info]


def test_ocs_clients_over_http_and_wamp_still_work(site, peer):
    client = OCSClient('sim-device-1', args=site.client_args)     # HTTP bridge
    assert client.acq.status().session['status'] == 'running'
    # WAMP, as ocs's client_t does: <agent>.ops (action, op name) and the management call
    status = peer.run('call', 'observatory.sim-device-1.ops', 'status', 'acq')
    assert status[2]['status'] == 'running'
    api = peer.run('call', 'observatory.sim-device-1', 'get_api')
    assert 'acq' in [p[0] for p in api['processes']]


def test_while_the_registry_is_down_its_procedures_stay_its_own(site, reactor_thread):
    """With the registry stopped, a squatter still cannot register its lease
    procedures; the first session to register its ops is the registry: it may
    use exactly the meta URIs the registry needs and nothing more."""
    url = f'ws://127.0.0.1:{site.port}/ws'
    site.kill_agent('lock-registry')     # down (how it stopped is not under test)
    squatter = WampPeer(reactor_thread, url, site.realm)
    stand_in = WampPeer(reactor_thread, url, site.realm)
    try:
        assert squatter.register('observatory.lock-registry.lease.acquire') == NOT_AUTHORIZED
        assert stand_in.register('observatory.lock-registry.ops') is None
        for topic in ('wamp.session.on_join', 'wamp.session.on_leave',
                      'wamp.registration.on_create', 'wamp.registration.on_delete'):
            assert stand_in.error('subscribe', lambda *a: None, topic) is None, topic
        assert stand_in.error('subscribe', lambda *a: None, 'wamp.session.',
                              options=_prefix()) == NOT_AUTHORIZED
        assert stand_in.error('call', 'wamp.registration.lookup',
                              'observatory.lock-registry.ops') is None
        assert stand_in.error('call', 'wamp.session.kill', squatter.id) == NOT_AUTHORIZED
        assert stand_in.error('call', 'wamp.session.list') == NOT_AUTHORIZED
        assert stand_in.register('observatory.lock-registry.lease.acquire') is None
        assert stand_in.publish('observatory.lock-registry.feeds.ownership', {}) is None
        assert squatter.publish('observatory.lock-registry.feeds.ownership', {}) \
            == NOT_AUTHORIZED
    finally:
        squatter.close()
        stand_in.close()
        site.start_agent('lock-registry')
    site.wait_agent('lock-registry')


def test_every_meta_event_crossbar_sent_the_component_was_understood(site, reactor_thread):
    """After sessions registered, unregistered and left (the tests above, and
    one more here), the component logged no dropped meta event: it reads
    crossbar's real argument shapes (e.g. on_delete with no session id when
    a session detaches)."""
    p = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    assert p.register('observatory.leaver.ops') is None
    p.close()
    again = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    try:    # the leave was seen (or looked up): the new session holds it
        assert again.register('observatory.leaver.ops') is None
        assert again.publish('observatory.leaver.feeds.locks', 1) is None
    finally:
        again.close()
    with open(site.log_path('crossbar')) as f:
        log = f.read()
    assert 'ocs_locking.bus: dropped' not in log
    assert 'ocs_locking.bus: refused' not in log       # no error inside the component


def _prefix():
    from autobahn.wamp.types import SubscribeOptions
    return SubscribeOptions(match='prefix')


# -- ocs's stock config (no component): works as before ---------------------------

@pytest.fixture(scope='module')
def stock_site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('stock-site'), port=0,
              crossbar_config=CROSSBAR_CONFIGS['stock'], teardown='kill') as s:
        yield _started(s)


def test_the_stock_config_still_works_without_the_component(stock_site, reactor_thread):
    peer = WampPeer(reactor_thread, f'ws://127.0.0.1:{stock_site.port}/ws', stock_site.realm)
    try:
        # no component: its info procedure is not there for anyone
        assert peer.error('call', 'ocs_locking.bus.info') == NOT_AUTHORIZED
        assert 'error' in http_call(stock_site, 'ocs_locking.bus.info')
        # ocs's static permissions: anyone may publish on an agent's feed (what the bus stops)
        assert peer.publish('observatory.sim-device-1.feeds.heartbeat', {}) is None
        client = OCSClient('sim-device-1', args=stock_site.client_args)
        assert client.acq.status().session['status'] == 'running'
        wait_table(stock_site, lambda t: 'sim-device-1/hw' in t, 'the agent\'s lock')
    finally:
        peer.close()
