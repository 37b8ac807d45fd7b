"""Two agents sharing one simulated bridge: with a site-wide lock (--site-lock)
they never talk to it at once; without one they collide. Real crossbar, real
agents launched with ocs-agent-cli, the LockRegistryAgent arbitrating."""
import socket
import time

import pytest
import yaml

from tools.devsite import Site

pytestmark = pytest.mark.integration

SITE = {
    'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws', 'wamp_http': 'http://127.0.0.1:18001/call',
            'wamp_realm': 'test_realm', 'address_root': 'observatory'},
    'hosts': {'shared': {
        'crossbar_timeout': 0,
        'simulated-devices': [
            {'name': 'locked-bridge', 'port': 18111, 'channels': 2, 'latency': 0.02},
            {'name': 'open-bridge', 'port': 18112, 'channels': 2, 'latency': 0.02}],
        'agent-instances': [
            {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry',
             'arguments': [['--db', 'leases.db']]}] + [
            {'agent-class': 'SimulatedDeviceAgent', 'instance-id': f'{name}-{i}',
             'arguments': [['--device-port', port], ['--mode', 'idle']] + extra}
            for name, port, extra in (('locked', 18111, [['--site-lock', 'lab/bridge-1']]),
                                      ('open', 18112, []))
            for i in (1, 2)]}},
}


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp('shared-site')
    (root / 'crossbar').mkdir()
    import shutil

    from .test_registry import SITE_FILE
    shutil.copy(SITE_FILE.replace('default.yaml', 'crossbar/config.json'),
                root / 'crossbar' / 'config.json')
    site_file = root / 'site.yaml'
    site_file.write_text(yaml.safe_dump(SITE))
    with Site(str(site_file), 'shared', root / 'work', port=0, teardown='kill') as s:
        yield s


def collisions(site, name):
    with socket.create_connection(('127.0.0.1', site.device(name)['port']), timeout=5) as s:
        s.sendall(b'STATS?\n')
        stats = dict(kv.split('=') for kv in s.makefile().readline().split())
    return int(stats['collisions']), int(stats['commands'])


#: Commands the bridge must have seen, and samples each agent must have
#: taken, before a pair's run ends: counts, not a duration, so a loaded
#: machine only makes the run longer. BOUND only stops a broken run.
COMMANDS = 100
SAMPLES = 10
BOUND = 120.0


def run_pair(site, prefix, name, enough, tasks_must_succeed=True):
    """Both agents sample flat out and run set_heater tasks until the
    bridge's counters satisfy ``enough(collisions, commands)`` and each
    agent has taken SAMPLES samples; the acq sessions."""
    clients = [site.wait_agent(f'{prefix}-{i}') for i in (1, 2)]
    for c in clients:
        c.acq.start(rate=25)
    deadline = time.monotonic() + BOUND
    while True:
        for c in clients:
            ok = c.set_heater(value=5).session['success']
            assert ok is True or not tasks_must_succeed
        sampled = all((c.acq.status().session['data'] or {}).get('samples', 0) > SAMPLES
                      for c in clients)
        if sampled and enough(*collisions(site, name)):
            break
        assert time.monotonic() < deadline, \
            f'{name}: counters {collisions(site, name)} not reached within {BOUND} s'
    for c in clients:
        c.acq.stop()
        c.acq.wait(timeout=30)
    return [c.acq.status().session for c in clients]


def test_site_lock_keeps_two_agents_off_the_bridge_at_once(site):
    """When two agents with --site-lock on the same path sample one bridge and
    run tasks at the same time, the bridge never sees two commands at once."""
    sessions = run_pair(site, 'locked', 'locked-bridge',
                        lambda hit, commands: hit > 0 or commands >= COMMANDS)
    assert all(s['data']['samples'] > SAMPLES for s in sessions)
    hit, commands = collisions(site, 'locked-bridge')
    assert commands >= COMMANDS and hit == 0


def test_without_a_site_lock_the_same_pair_collides(site):
    """When the same pair runs without a site lock (local locks only), the
    bridge sees commands collide: the site lock is what prevents it."""
    run_pair(site, 'open', 'open-bridge',                # collisions make tasks fail
             lambda hit, commands: hit > 0 and commands >= COMMANDS, tasks_must_succeed=False)
    hit, commands = collisions(site, 'open-bridge')
    assert commands >= COMMANDS and hit > 0


def test_site_lock_grants_are_in_the_audit_log_with_growing_tokens(site):
    """When the locked pair has run, the registry's audit log shows their
    grants on lab/bridge-1 from both agents, with tokens that only grew."""
    registry = site.wait_agent('lock-registry')
    rows = registry.history(resource='lab/bridge-1', limit=200).session['data']['history']
    grants = [r for r in reversed(rows) if r['action'] in ('grant', 'regrant')]
    assert {r['owner'] for r in grants} == {'locked-1', 'locked-2'}
    tokens = [r['token'] for r in grants]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
