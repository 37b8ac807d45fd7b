"""The LockRegistryAgent on a real site: crossbar on loopback, the registry and
two SimulatedDeviceAgents launched with ocs-agent-cli, OCSClient and
ocs-locks as clients, and a raw WAMP client for forged and malformed events.

The destructive tests (kill -9, registry restart, router restart) run last.
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tools.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
EXPIRY = 5.0    # --expiry of the registry in site-config/default.yaml

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('registry-site'), port=0) as s:
        yield s


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


def table(registry):
    data = registry.monitor.status().session.get('data') or {}
    return data.get('locks') or {}


def wait_table(registry, pred, what, timeout=30):
    """Poll the registry's table (HTTP clients cannot be pushed to) until
    pred(table) holds; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            t = table(registry)
            if pred(t):
                return t
        except Exception:       # registry or router restarting
            t = None
        assert time.monotonic() < deadline, f'registry never showed {what}; last table {t}'
        time.sleep(0.2)


def ocs_locks(site, *args, timeout=60):
    return subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *args],
                          capture_output=True, text=True, timeout=timeout)


def test_lock_taken_in_an_agent_appears_in_the_registry_table(site, registry):
    """When an agent's acq holds its lock, and when it stops, the registry's
    table (session.data of monitor) follows: holder 'acq', then free."""
    wait_table(registry, lambda t: t.get('sim-device-1/hw', {}).get('job') == 'acq'
               and t.get('sim-device-2/hw', {}).get('job') == 'acq', 'both acq holds')
    dev = site.wait_agent('sim-device-1')
    dev.acq.stop()
    dev.acq.wait(timeout=30)
    wait_table(registry, lambda t: t['sim-device-1/hw']['job'] is None, 'the lock freed')
    dev.acq.start()
    t = wait_table(registry, lambda t: t['sim-device-1/hw']['job'] == 'acq', 'acq again')
    row = t['sim-device-1/hw']
    assert row['agent'] == 'sim-device-1' and row['alive'] is True
    assert row['session_id'] == dev.acq.status().session['session_id']


def test_ocs_locks_status_prints_the_table_and_json(site, registry):
    """When ocs-locks status runs against the site, it prints one row per lock;
    --json prints rows with the documented keys."""
    wait_table(registry, lambda t: len(t) >= 2, 'two locks')
    proc = ocs_locks(site, 'status')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ['LOCK', 'HOLDER', 'HELD', 'FOR', 'WAITERS', 'AGENT']
    assert any(line.startswith('sim-device-1/hw') and line.endswith('alive') for line in lines)
    proc = ocs_locks(site, 'status', '--json')
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r['lock'] for r in rows} >= {'sim-device-1/hw', 'sim-device-2/hw'}
    assert all(set(r) == {'lock', 'agent', 'job', 'session_id', 'since', 'waiters', 'alive'}
               for r in rows)


def test_ocs_locks_watch_follows_the_ownership_feed(site, registry):
    """When ocs-locks watch runs, it redraws the table from the ownership feed
    over WAMP (here: two updates, then it exits)."""
    proc = ocs_locks(site, 'watch', '--count', '2', '--no-clear')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count('ocs-locks watch  observatory.lock-registry.feeds.ownership') >= 3
    assert 'sim-device-2/hw' in proc.stdout


def test_ocs_locks_watch_ends_quietly_on_ctrl_c(site, registry):
    """When the watch gets SIGINT (Ctrl-C), it exits 0 without an error line."""
    proc = subprocess.Popen([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                             'watch', '--no-clear'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:      # wait for the first table drawn over WAMP
            if line.startswith('LOCK'):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err) == (0, '')


def test_ocs_locks_without_a_registry_says_so_in_one_line(site):
    """When the named registry is not running, ocs-locks prints one line and
    exits 1 (no traceback)."""
    proc = ocs_locks(site, '--registry', 'no-such-registry', 'status')
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "ocs-locks: cannot reach the lock registry 'no-such-registry' at "
        f"http://127.0.0.1:{site.port}/call: it is not running (no such agent on the router)"]


def _wamp_publish(reactor_thread, site, items):
    """Publish (topic, payload) items from a raw WAMP session, acknowledged."""
    from autobahn.twisted.component import Component
    from autobahn.wamp.types import PublishOptions
    from twisted.internet.defer import inlineCallbacks
    done = concurrent.futures.Future()

    def start():
        comp = Component(transports=[{'url': f'ws://127.0.0.1:{site.port}/ws',
                                      'max_retries': 0}], realm=site.realm)

        @comp.on_join
        @inlineCallbacks
        def joined(session, details):
            for topic, payload in items:
                yield session.publish(topic, payload, options=PublishOptions(acknowledge=True))
            yield session.leave()
        comp.start(reactor_thread.reactor).addBoth(
            lambda r: done.done() or done.set_result(r))
    reactor_thread.reactor.callFromThread(start)
    done.result(30)


def test_forged_and_malformed_events_are_dropped_and_the_registry_keeps_running(
        site, registry, reactor_thread):
    """When a client publishes on another agent's locks topic, names another
    agent's lock, or sends garbage, the registry drops each with a log line,
    its table is unchanged, and it keeps answering."""
    good = {'lock': 'hw', 'event': 'acquired', 'job': 'forged', 'op': None,
            'session_id': None, 'since': time.time(), 'waiters': 0, 'token': 10 ** 9,
            'seq': 10 ** 9, 'boot': 1.0}
    evil_info = {'agent_address': 'observatory.evil', 'feed_name': 'locks'}
    _wamp_publish(reactor_thread, site, [
        # on sim-device-1's topic, but the feed info says it is someone else
        ('observatory.sim-device-1.feeds.locks', [good, evil_info]),
        # on its own topic, about sim-device-1's lock
        ('observatory.evil.feeds.locks', [dict(good, lock='sim-device-1/hw'), evil_info]),
        ('observatory.evil.feeds.locks', ['hello', evil_info]),
        ('observatory.evil.feeds.locks', 'not even a pair'),
        ('observatory.evil.feeds.locks', [dict(good, event='exploded'), evil_info]),
    ])
    deadline = time.monotonic() + 30
    log = site.log_path('lock-registry')
    while open(log).read().count('dropped lock message on ') < 5:
        assert time.monotonic() < deadline, 'the registry did not log 5 dropped messages'
        time.sleep(0.2)
    text = open(log).read()
    assert "feed info claims 'observatory.evil', but the message came on " \
           "observatory.sim-device-1.feeds.locks" in text
    assert 'lock must be a name of 1-64 letters' in text
    assert 'event must be one of' in text
    t = table(registry)
    assert not any(k.startswith('evil/') for k in t)
    assert all(row['job'] != 'forged' for row in t.values())
    assert registry.status().session['success'] is True


def test_kill9_of_an_agent_marks_its_locks_stale_then_alive_again(site, registry):
    """When an agent is killed with SIGKILL its locks are marked stale within
    the heartbeat expiry; when it is started again they are alive."""
    proc = site.agents['sim-device-2']
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t0 = time.monotonic()
    wait_table(registry, lambda t: t['sim-device-2/hw']['alive'] is False, 'stale locks',
               timeout=EXPIRY + 10)
    assert time.monotonic() - t0 < EXPIRY + 10
    assert table(registry)['sim-device-1/hw']['alive'] is True
    site.agents.pop('sim-device-2')
    site.start_agent('sim-device-2')
    site.wait_agent('sim-device-2')
    wait_table(registry, lambda t: t['sim-device-2/hw']['alive'] is True
               and t['sim-device-2/hw']['job'] == 'acq', 'the agent back')


def test_registry_restart_rebuilds_the_table(site):
    """When the registry restarts, it rebuilds the whole table from the agents'
    snapshots, without an operator."""
    site.stop_agent('lock-registry')
    site.start_agent('lock-registry')
    registry = site.wait_agent('lock-registry')
    wait_table(registry, lambda t: {'sim-device-1/hw', 'sim-device-2/hw'} <= set(t)
               and all(r['job'] == 'acq' and r['alive'] for r in t.values()),
               'both locks after the restart')


def test_router_restart_everyone_rejoins_and_the_table_converges(site):
    """When the crossbar router restarts under the running site, every agent
    re-joins, and the registry's table converges to the true state."""
    site.stop_router()
    site.start_router()
    registry = site.wait_agent('lock-registry')
    for instance_id in ('sim-device-1', 'sim-device-2'):
        site.wait_agent(instance_id)
    wait_table(registry, lambda t: {'sim-device-1/hw', 'sim-device-2/hw'} <= set(t)
               and all(r['alive'] for r in t.values()), 'both locks after the restart',
               timeout=60)
    dev = site.wait_agent('sim-device-1')
    assert dev.set_heater(value=9).session['success'] is True
