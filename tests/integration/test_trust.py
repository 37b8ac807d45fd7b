"""Trust on the bus, on real sites: crossbar on loopback with the router
component (the demo config) and with ocs's stock config, the registry and
two SimulatedDeviceAgents under ocs-agent-cli, raw WAMP peers for the
forgeries, OCSClient and ocs-locks as clients.

The destructive test (kill -9) runs last in its module.
"""
import json
import os
import queue
import signal
import time

import pytest
from autobahn.wamp.types import PublishOptions

from ocs_locking.wire import (BUS_KEY, HEARTBEAT_FEED, LOCKS_FEED, OWNERSHIP_FEED, TABLE_KEY,
                              feed_topic)
from tests.integration.test_registry import (SITE_FILE, end_of, ocs_locks, start_watch, table,
                                             wait_table, wait_table_bus)
from tests.support import WampPeer
from tools.devsite import Site
from tools.siteconfig import stock_crossbar_config

EXPIRY = 5.0    # --expiry of the registry in site-config/default.yaml
WAIT = 30.0     # bound on every wait

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 'wamp.error.not_authorized'


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('trust-site'), port=0,
              teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def registry(site):
    reg = site.wait_agent('lock-registry')
    wait_table(reg, lambda t: {'sim-device-1/hw', 'sim-device-2/hw'} <= set(t)
               and all(r['job'] == 'acq' for r in t.values()), 'both acq holds')
    return reg


def monitor_data(registry):
    return registry.monitor.status().session.get('data') or {}


def bus_of(registry):
    """The registry's bus block once it has checked the bus."""
    return wait_table_bus(registry, timeout=WAIT)


@pytest.fixture
def peer(site, reactor_thread):
    p = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    yield p
    p.close()


def lock_event(**kw):
    return dict({'lock': 'hw', 'event': 'acquired', 'job': 'forged', 'op': 'forged',
                 'session_id': 1, 'since': time.time(), 'waiters': 0, 'token': 10 ** 9,
                 'seq': 10 ** 12, 'boot': 1.0}, **kw)


def info(site, instance_id, feed):
    return {'agent_address': f'{site.address_root}.{instance_id}', 'feed_name': feed}


def acked(peer, topic, payload):
    """Publish, acknowledged: the router's error URI, or None if it took it."""
    return peer.error('publish', topic, payload, options=PublishOptions(acknowledge=True))


def history(site, kind='lease'):
    proc = ocs_locks(site, 'history', '--json', '--kind', kind, '--limit', '1000')
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_demo_site_bus_is_verified_and_names_the_registry_session(site, registry):
    """When the registry joins a router running the component, its bus block
    says verified with its own session and the caps, and ocs-locks status
    prints no bus line."""
    bus = bus_of(registry)
    assert bus['verified'] is True and bus['reason'] is None
    assert isinstance(bus['session'], int)
    assert bus['limits']['max_rows'] == 10000 and bus['limits']['payload_limit'] == 2 ** 24
    proc = ocs_locks(site, 'status')
    assert proc.returncode == 0 and 'bus not verified' not in proc.stdout + proc.stderr
    assert registry.status().session['data'][BUS_KEY]['verified'] is True


def test_a_foreign_sessions_forged_messages_are_refused_and_change_nothing(
        site, registry, peer):
    """When a client that is not the agent publishes a well-formed lock event
    or heartbeat on sim-device-1's feeds, or an ownership message on the
    registry's feed, the router refuses each (not_authorized); the table,
    a running watch and the history are unchanged."""
    before_history = history(site)
    watch = start_watch(site)
    root = site.address_root
    try:
        assert acked(peer, feed_topic(root, 'sim-device-1', LOCKS_FEED),
                     [lock_event(), info(site, 'sim-device-1', LOCKS_FEED)]) == NOT_AUTHORIZED
        assert acked(peer, feed_topic(root, 'sim-device-1', HEARTBEAT_FEED),
                     [{}, info(site, 'sim-device-1', HEARTBEAT_FEED)]) == NOT_AUTHORIZED
        assert acked(peer, feed_topic(root, 'lock-registry', OWNERSHIP_FEED),
                     [{'kind': 'snapshot', 'seq': 1, 'rows': []},
                      info(site, 'lock-registry', OWNERSHIP_FEED)]) == NOT_AUTHORIZED
        # a genuine change after the forgeries: the watch has drawn everything before it
        dev = site.wait_agent('sim-device-1')
        assert dev.set_heater(value=3).session['success'] is True
        wait_table(registry, lambda t: t['sim-device-1/hw']['acquired'] >= 2, 'a new grant')
    finally:
        watch.send_signal(signal.SIGINT)
        try:
            drawn, err = watch.communicate(timeout=WAIT)
        finally:
            end_of(watch)
    assert (watch.returncode, err) == (0, '')
    assert 'forged' not in drawn and 'ignored' not in drawn
    t = table(registry)
    assert all(r['job'] != 'forged' for r in t.values())
    assert {'sim-device-1/hw', 'sim-device-2/hw'} <= set(t)
    assert history(site) == before_history
    # the agents' lock history has the genuine set_heater, and nothing forged
    spans = history(site, 'lock')
    assert any(s['job'] == 'set_heater' for s in spans)
    assert all(s['job'] != 'forged' for s in spans)


def test_the_registry_drops_what_the_router_lets_through(site, registry, peer):
    """When a client registers its own agent ('evil-agent') and publishes on
    its own feed (the router lets it), a message whose feed info names
    sim-device-1 is dropped by the registry; its own rows are capped at
    --max-locks-per-agent (the refusals counted); when it leaves the bus
    its rows are not alive at once."""
    root = site.address_root
    assert peer.register(f'{root}.evil-agent.ops') is None
    topic = feed_topic(root, 'evil-agent', LOCKS_FEED)
    assert acked(peer, topic, [lock_event(), info(site, 'sim-device-1', LOCKS_FEED)]) is None
    cap = bus_of(registry)['limits']['max_locks_per_agent']
    for i in range(cap + 5):
        assert acked(peer, topic, [lock_event(lock=f'l{i}', seq=i + 1, token=1),
                                   info(site, 'evil-agent', LOCKS_FEED)]) is None
    t = wait_table(registry, lambda t: sum(k.startswith('evil-agent/') for k in t) >= 1,
                   "evil-agent's rows")
    deadline = time.monotonic() + WAIT
    while (monitor_data(registry).get(BUS_KEY) or {}).get('dropped', {}).get(
            'refused: max_locks_per_agent', 0) < 5:
        assert time.monotonic() < deadline, 'the registry did not count 5 refusals'
        time.sleep(0.1)
    data = registry.status(limit=10000).session['data']
    evil = [r for r in data[TABLE_KEY] if r['agent'] == 'evil-agent']
    assert len(evil) == cap
    assert data[TABLE_KEY] and all(r['job'] != 'forged' for r in data[TABLE_KEY]
                                   if r['agent'] == 'sim-device-1')
    log = open(site.log_path('lock-registry')).read()
    assert f"feed info claims '{root}.sim-device-1', but the message came on {topic}" in log
    peer.close()
    wait_table(registry, lambda t: all(not r['alive'] for k, r in t.items()
                                       if k.startswith('evil-agent/'))
               or not any(k.startswith('evil-agent/') for k in t), 'evil-agent not alive',
               timeout=EXPIRY - 1)
    assert table(registry)['sim-device-1/hw']['alive'] is True


def test_kill9_of_an_agent_is_seen_on_the_ownership_feed_at_once(
        site, registry, reactor_thread):
    """When an agent is killed with SIGKILL, the registry marks its locks not
    alive from the router's on_leave, well before any heartbeat expiry: on
    the ownership feed (waited for as an event), in the table and in
    ocs-locks status; started again it is alive."""
    watcher = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    try:
        watcher.subscribe(feed_topic(site.address_root, 'lock-registry', OWNERSHIP_FEED))
        proc = site.agents.pop('sim-device-2')
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        while True:
            left = t0 + WAIT - time.monotonic()
            assert left > 0, 'the ownership feed never said sim-device-2/hw is not alive'
            try:
                _, args, _ = watcher.events.get(timeout=left)
            except queue.Empty:
                continue
            rows = args[0][0].get('rows', []) if args and isinstance(args[0][0], dict) else []
            if any(r.get('lock') == 'sim-device-2/hw' and r.get('alive') is False
                   for r in rows):
                break
        elapsed = time.monotonic() - t0
    finally:
        watcher.close()
    # heartbeat expiry could not have done it: that needs EXPIRY s of silence
    assert elapsed < EXPIRY - 1, f'not alive after {elapsed:.2f} s: heartbeat expiry, not the bus'
    assert 'sim-device-2 left the bus' in open(site.log_path('lock-registry')).read()
    assert table(registry)['sim-device-2/hw']['alive'] is False
    status = ocs_locks(site, 'status')
    assert any(line.startswith('sim-device-2/hw') and line.endswith('STALE')
               for line in status.stdout.splitlines()), status.stdout
    site.start_agent('sim-device-2')
    site.wait_agent('sim-device-2')
    wait_table(registry, lambda t: t['sim-device-2/hw']['alive'] is True, 'the agent back')


# -- ocs's stock crossbar config: everything works, and says the bus is not verified --

@pytest.fixture(scope='module')
def stock(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('stock-site'), port=0,
              crossbar_config=stock_crossbar_config(), teardown='kill') as s:
        reg = s.wait_agent('lock-registry')
        wait_table(reg, lambda t: {'sim-device-1/hw', 'sim-device-2/hw'} <= set(t),
                   'both locks on the stock site')
        yield s, reg


def test_stock_config_works_and_says_the_bus_is_not_verified(stock):
    """When the router runs ocs's stock config, the registry's table works,
    its bus block and status text say not verified with the reason, and
    ocs-locks status and watch print 'bus not verified: <reason>' in one line."""
    site, registry = stock
    bus = bus_of(registry)
    assert bus['verified'] is False and 'not authorized' in bus['reason'].replace('_', ' ')
    messages = [m for _, m in registry.status().session['messages']]
    assert any(f"Bus not verified: {bus['reason']}." in m for m in messages), messages
    proc = ocs_locks(site, 'status')
    assert proc.returncode == 0, proc.stderr
    assert f"bus not verified: {bus['reason']}" in proc.stdout.splitlines()
    proc = ocs_locks(site, 'status', '--json')
    assert proc.stderr.splitlines() == [f"bus not verified: {bus['reason']}"]
    assert {r['lock'] for r in json.loads(proc.stdout)} >= {'sim-device-1/hw'}
    proc = ocs_locks(site, 'watch', '--count', '1', '--no-clear')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"bus not verified: {bus['reason']}\nocs-locks watch")


def test_stock_config_one_forged_huge_seq_does_not_block_the_agent(stock, reactor_thread):
    """When a client forges a lock event with a huge seq on sim-device-1's
    topic (the stock router lets it), the registry drops it (out of
    sequence) and the agent's next genuine events are still taken."""
    site, registry = stock
    dev = site.wait_agent('sim-device-1')
    boot = None
    peer = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    try:
        # the agent's own boot, so the forgery is in its sequence space
        peer.subscribe(feed_topic(site.address_root, 'sim-device-1', LOCKS_FEED))
        _, args, _ = peer.events.get(timeout=WAIT)
        boot = args[0][0]['boot']
        assert acked(peer, feed_topic(site.address_root, 'sim-device-1', LOCKS_FEED),
                     [lock_event(boot=boot, seq=2 ** 52),
                      info(site, 'sim-device-1', LOCKS_FEED)]) is None
    finally:
        peer.close()
    before = table(registry)['sim-device-1/hw']['acquired']
    assert dev.set_heater(value=5).session['success'] is True
    t = wait_table(registry, lambda t: t['sim-device-1/hw']['acquired'] > before,
                   'a genuine grant after the forgery')
    assert t['sim-device-1/hw']['job'] != 'forged'
    deadline = time.monotonic() + WAIT      # the bus block is refreshed every tick
    while bus_of(registry)['dropped'].get('locks: out of sequence', 0) < 1:
        assert time.monotonic() < deadline, f'no out-of-sequence drop: {bus_of(registry)}'
        time.sleep(0.1)


def test_stock_config_a_squatter_is_outlasted_by_the_registrar(stock, reactor_thread):
    """When, under the stock config, a client registers the registry's lease
    procedure while the registry restarts, the registry's status says it is
    missing (procedure_already_exists) and retries; once the squatter leaves
    the registry holds it again, without a restart."""
    site, _ = stock
    uri = f'{site.address_root}.lock-registry.lease.renew'
    site.kill_agent('lock-registry')     # down (how it stopped is not under test)
    squatter = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    try:
        assert squatter.register(uri) is None
        site.start_agent('lock-registry')
        registry = site.wait_agent('lock-registry')
        deadline = time.monotonic() + WAIT
        while True:
            procs = registry.status().session['data']['lease_procedures']
            if procs['missing'] == ['renew'] and 'already' in procs['errors']['renew']:
                break
            assert time.monotonic() < deadline, f'never reported the squatted renew: {procs}'
            time.sleep(0.2)
        messages = [m for _, m in registry.status().session['messages']]
        assert any('Lease procedures not registered: renew (retrying until held).' in m
                   for m in messages), messages
    finally:
        squatter.close()
    deadline = time.monotonic() + WAIT
    while not registry.status().session['data']['lease_procedures']['registered']:
        assert time.monotonic() < deadline, 'the registry never registered renew again'
        time.sleep(0.2)
