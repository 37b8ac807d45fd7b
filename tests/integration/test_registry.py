"""The LockRegistryAgent on a real site: crossbar on loopback, the registry and
two SimulatedDeviceAgents launched with ocs-agent-cli, OCSClient and
ocs-locks as clients, and a raw WAMP client for forged and malformed events.

The destructive tests (kill -9, registry restart, router restart) run last.
"""
import concurrent.futures
import json
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from ocs_locking.wire import LOCKS_FEED, OWNERSHIP_FEED, TABLE_KEY, feed_topic
from tools.devsite import Site, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
EXPIRY = 5.0    # --expiry of the registry in site-config/default.yaml
WAIT = 30.0     # bound on every wait for a process

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('registry-site'), port=0,
              teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


def table(registry):
    data = registry.monitor.status().session.get('data') or {}
    return data.get(TABLE_KEY) or {}


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


def start_watch(site, *args, preexec_fn=None):
    """``ocs-locks watch --no-clear`` in the background, once it has drawn
    its first table over WAMP (bounded)."""
    proc = subprocess.Popen([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                             'watch', '--no-clear', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    deadline = time.monotonic() + WAIT
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                proc.kill()
                _, err = proc.communicate(timeout=WAIT)
                pytest.fail(f'the watch drew no table within {WAIT:g} s; stderr: {err}')
            line = proc.stdout.readline()
            if line.startswith('LOCK'):
                return proc
            if not line:
                _, err = proc.communicate(timeout=WAIT)
                pytest.fail(f'the watch ended before drawing a table: {err}')


def end_of(proc):
    """Wait (bounded) for a background ocs-locks to exit: (status, stderr)."""
    try:
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
    return proc.returncode, err


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
    assert all(set(r) == {'lock', 'agent', 'job', 'session_id', 'since', 'waiters', 'alive',
                          'held_for', 'queue'} for r in rows)
    held = [r for r in rows if r['job'] is not None]
    assert held and all(isinstance(r['held_for'], float) and r['held_for'] >= 0 for r in held)


def test_ocs_locks_watch_follows_the_ownership_feed(site, registry):
    """When ocs-locks watch runs, it redraws the table from the ownership feed
    over WAMP (here: two updates, then it exits)."""
    proc = ocs_locks(site, 'watch', '--count', '2', '--no-clear')
    assert proc.returncode == 0, proc.stderr
    topic = feed_topic(site.address_root, 'lock-registry', OWNERSHIP_FEED)
    assert proc.stdout.count(f'ocs-locks watch  {topic}') >= 3
    assert 'sim-device-2/hw' in proc.stdout


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize('sig,preexec_fn', [
    (signal.SIGINT, None),
    # a shell starts background jobs with SIGINT ignored; Twisted then left
    # it ignored and the watch never ended (the "alive 30 s after SIGINT")
    (signal.SIGINT, _ignore_sigint),
    (signal.SIGTERM, None),
    (signal.SIGHUP, None)], ids=['SIGINT', 'SIGINT-from-a-background-job', 'SIGTERM', 'SIGHUP'])
def test_ocs_locks_watch_ends_quietly_on_ctrl_c(site, registry, sig, preexec_fn):
    """When the watch gets SIGINT (Ctrl-C, also when started as a background
    job), SIGTERM or SIGHUP, it exits 0 without an error line."""
    proc = start_watch(site, preexec_fn=preexec_fn)
    proc.send_signal(sig)
    assert end_of(proc) == (0, '')


def test_ocs_locks_watch_with_an_unreachable_router_says_so_in_one_line(site, registry):
    """When the router's WebSocket cannot be reached, the watch prints one
    line and exits 1."""
    url = f'ws://127.0.0.1:{free_port()}/ws'
    proc = ocs_locks(site, 'watch', '--site-hub', url)
    assert (proc.returncode, proc.stderr) == (
        1, f'ocs-locks: cannot connect to the router at {url}: Connection refused\n')


@pytest.mark.parametrize('command', [['status'], ['status', '--json'], ['history'],
                                     ['watch', '--count', '1']])
def test_ocs_locks_with_a_closed_stdout_ends_quietly(site, registry, command):
    """When stdout's reader is gone (``| head``), the command exits 0 with
    nothing on stderr: no BrokenPipeError traceback."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                               *command], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=WAIT * 2)
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (0, '')


def test_ocs_locks_site_options_after_the_command(site, registry):
    """When the site options follow the command, ocs-locks reads the site
    as with them before it."""
    proc = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', 'status', '--json',
                           *site.client_args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert {r['lock'] for r in json.loads(proc.stdout)} >= {'sim-device-1/hw'}


def test_ocs_locks_without_a_registry_says_so_in_one_line(site):
    """When the named registry is not running, ocs-locks prints one line and
    exits 1 (no traceback)."""
    proc = ocs_locks(site, '--registry', 'no-such-registry', 'status')
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "ocs-locks: cannot reach the lock registry 'no-such-registry' at "
        f"http://127.0.0.1:{site.port}/call: it is not running (no such agent on the router)"]


def _wamp_publish(reactor_thread, site, items, agent=None):
    """Publish (topic, payload) items from a raw WAMP session, acknowledged;
    with ``agent``, the session first registers ``<root>.<agent>.ops`` (the
    bus component lets only that session publish on the agent's feeds)."""
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
            if agent is not None:
                yield session.register(lambda *a, **k: None, f'{site.address_root}.{agent}.ops')
            for topic, payload in items:
                yield session.publish(topic, payload, options=PublishOptions(acknowledge=True))
            yield session.leave()
        comp.start(reactor_thread.reactor).addBoth(
            lambda r: done.done() or done.set_result(r))
    reactor_thread.reactor.callFromThread(start)
    done.result(30)


def test_forged_and_malformed_events_are_dropped_and_the_registry_keeps_running(
        site, registry, reactor_thread):
    """When a client that registered an agent ('evil') names another agent's
    lock on its own locks topic or sends garbage, the registry drops each
    with a log line, its table is unchanged, and it keeps answering. (The
    router refuses its publishes on other agents' topics: tests/integration/
    test_bus.py.)"""
    good = {'lock': 'hw', 'event': 'acquired', 'job': 'forged', 'op': None,
            'session_id': None, 'since': time.time(), 'waiters': 0, 'token': 10 ** 9,
            'seq': 10 ** 9, 'boot': 1.0}
    root = site.address_root
    evil_info = {'agent_address': f'{root}.evil', 'feed_name': LOCKS_FEED}
    evil = feed_topic(root, 'evil', LOCKS_FEED)
    _wamp_publish(reactor_thread, site, [
        # on its own topic, but the feed info says it is someone else
        (evil, [good, dict(evil_info, agent_address=f'{root}.sim-device-1')]),
        # on its own topic, about sim-device-1's lock
        (evil, [dict(good, lock='sim-device-1/hw'), evil_info]),
        (evil, ['hello', evil_info]),
        (evil, 'not even a pair'),
        (evil, [dict(good, event='exploded'), evil_info]),
        # out of bounds: a hold of 1e300 s, 10**30 waiters, a 2**100 token
        (evil, [dict(good, since=-1e300), evil_info]),
        (evil, [dict(good, waiters=10 ** 30), evil_info]),
        (evil, [dict(good, token=2 ** 100), evil_info]),
    ], agent='evil')
    deadline = time.monotonic() + 30
    log = site.log_path('lock-registry')
    while open(log).read().count('dropped lock message on ') < 8:
        assert time.monotonic() < deadline, 'the registry did not log 8 dropped messages'
        time.sleep(0.2)
    text = open(log).read()
    assert f"feed info claims '{root}.sim-device-1', but the message came on {evil}" in text
    assert 'lock must be a name of 1-64 letters' in text
    assert 'event must be one of' in text
    assert 'since must be a Unix time in seconds (0..1e+10) or null, not -1e+300' in text
    assert 'waiters must be an integer 0..1000000, not 1000000000000000000000000000000' in text
    assert 'token must be an integer 0..9007199254740991, not 12676506002282294014967' in text
    t = table(registry)
    assert not any(k.startswith('evil/') for k in t)
    assert all(row['job'] != 'forged' for row in t.values())
    assert registry.status().session['success'] is True


def test_clean_stop_of_an_agent_removes_its_rows_once_it_is_stale(site, registry):
    """When an agent is stopped cleanly (SIGINT: ocs ends its operations, so
    it holds nothing), its rows leave the table once it goes stale; started
    again, they come back."""
    wait_table(registry, lambda t: 'sim-device-2/hw' in t, 'the agent in the table')
    site.stop_agent('sim-device-2')
    try:
        wait_table(registry, lambda t: 'sim-device-2/hw' not in t, 'its rows removed',
                   timeout=EXPIRY + 20)
        assert 'sim-device-1/hw' in table(registry)
    finally:
        site.start_agent('sim-device-2')
        site.wait_agent('sim-device-2')
    wait_table(registry, lambda t: t.get('sim-device-2/hw', {}).get('job') == 'acq',
               'the agent back')


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
    """When the crossbar router restarts under the running site, a running
    watch says it lost the router in one line and exits 1; every agent
    re-joins, and the registry's table converges to the true state."""
    watch = start_watch(site)
    site.stop_router()
    assert end_of(watch) == (1, 'ocs-locks: lost the connection to the router at '
                                f'ws://127.0.0.1:{site.port}/ws\n')
    site.start_router()
    registry = site.wait_agent('lock-registry')
    for instance_id in ('sim-device-1', 'sim-device-2'):
        site.wait_agent(instance_id)
    wait_table(registry, lambda t: {'sim-device-1/hw', 'sim-device-2/hw'} <= set(t)
               and all(r['alive'] for r in t.values()), 'both locks after the restart',
               timeout=60)
    dev = site.wait_agent('sim-device-1')
    assert dev.set_heater(value=9).session['success'] is True
    # the registry checked the new router's bus again and follows its meta
    # events again: a killed agent is seen at once (long before --expiry)
    bus = wait_table_bus(registry)
    assert bus['verified'] is True, bus
    proc = site.agents.pop('sim-device-2')
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_table(registry, lambda t: t['sim-device-2/hw']['alive'] is False, 'not alive',
               timeout=EXPIRY - 1)
    assert time.monotonic() - t0 < EXPIRY - 1
    site.start_agent('sim-device-2')
    site.wait_agent('sim-device-2')
    wait_table(registry, lambda t: t['sim-device-2/hw']['alive'] is True, 'the agent back')


def wait_table_bus(registry, timeout=30):
    """The registry's bus block once it has checked the bus (bounded poll)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            bus = (registry.monitor.status().session.get('data') or {}).get('bus') or {}
        except Exception:       # the registry re-joining
            bus = {}
        if bus.get('verified') is True or bus.get('reason') not in (
                None, 'being checked', 'the registry is not joined to the router'):
            return bus
        assert time.monotonic() < deadline, f'the registry never checked the bus: {bus}'
        time.sleep(0.1)
