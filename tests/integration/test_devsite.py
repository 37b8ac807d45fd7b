"""``python -m tools.devsite run`` (what ``make run`` runs) as a process, with a
real crossbar router, simulated devices and agents: signals, a dead agent, a
dead router, the banner under the watch, an agent file of one's own, and
the standby pair of docs/examples/standby_site.yaml.

Every wait is bounded and waits on an event: a line on the devsite's output,
a process exit (pidfd), or an OCS reply."""
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time

import ocs
import pytest
from ocs.ocs_client import OCSClient

from tools.processes import spawn
from ..faults.support import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SITE = os.path.join(REPO, 'site-config', 'default.yaml')
OWN_AGENT_SITE = os.path.join(REPO, 'docs', 'examples', 'own_agent_site.yaml')
STANDBY_SITE = os.path.join(REPO, 'docs', 'examples', 'standby_site.yaml')
#: Bound on the site's start-up with both cores busy, in seconds.
STARTUP = 180
#: Bound on a stop (agents' SIGINT shutdown, then the router), in seconds.
STOPPING = 60

pytestmark = pytest.mark.integration

SMALL_SITE = """\
hub:
  wamp_server: ws://127.0.0.1:18001/ws
  wamp_http: http://127.0.0.1:18001/call
  wamp_realm: test_realm
  address_root: observatory
hosts:
  demo:
    crossbar_timeout: 0
    log-dir: null
    simulated-devices:
      - {name: bridge-1, port: 18101}
    agent-instances:
      - agent-class: SimulatedDeviceAgent
        instance-id: sim-device-1
        arguments: [['--device-port', 18101], ['--mode', 'acq']]
"""


def _ppid(pid):
    with open(f'/proc/{pid}/stat') as f:
        stat = f.read()
    return int(stat.rsplit(')', 1)[1].split()[1])


def _cmdline(pid):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
        return ''


def descendants(root):
    """Every process below ``root`` right now: ``{pid: cmdline}``."""
    children = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                children.setdefault(_ppid(int(entry)), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found[pid] = _cmdline(pid)
            todo.append(pid)
    return found


def wait_gone(pids, timeout=STOPPING):
    """Wait (on pidfds) until every process in ``pids`` has exited; return
    those still alive after ``timeout`` seconds."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    try:
        while fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], remaining)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def port_is_free(port):
    import socket
    try:
        socket.create_connection(('127.0.0.1', port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


class Devsite:
    """``python -m tools.devsite run SITE --port 0`` with its output read line by line."""

    def __init__(self, workdir, site_file, *extra):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
        # spawn: in its own session, and killed if this test process dies.
        self.proc = spawn(
            [sys.executable, '-m', 'tools.devsite', 'run', str(site_file),
             '--workdir', str(workdir), '--port', '0', *extra],
            None, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = []
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = None
        self.tree = {}
        self.site_args = None

    def _read(self):
        for raw in iter(self.proc.stdout.readline, b''):
            self._lines.put(raw.decode(errors='replace'))
        self._lines.put(None)

    def expect(self, pattern, timeout=STOPPING):
        """The first line from now on that matches ``pattern`` (a regex)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                line = ''
            if line is None or line == '':
                tail = ''.join(self.output[-15:])
                why = 'the devsite ended' if line is None else f'nothing within {timeout} s'
                pytest.fail(f'{why} before a line matching {pattern!r}; last output:\n{tail}')
            self.output.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def up(self):
        """Wait for the banner; remember the port and every process started."""
        self.port = int(self.expect(r'crossbar router +ws://127\.0\.0\.1:(\d+)/ws',
                                    STARTUP).group(1))
        site_file = self.expect(r"--site-file (\S+) --site-host demo status", STARTUP).group(1)
        self.site_args = ['--site-file', site_file, '--site-host', 'demo']
        self.expect('Ctrl-C stops everything this command started', STARTUP)
        self.tree = descendants(self.proc.pid)
        return self

    def pid_of(self, text):
        pids = [pid for pid, cmd in self.tree.items() if text in cmd]
        assert len(pids) == 1, (text, self.tree)
        return pids[0]

    def wait(self, timeout=STOPPING):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOPPING)


@pytest.fixture
def small_site(tmp_path):
    site_file = tmp_path / 'site.yaml'
    site_file.write_text(SMALL_SITE)
    ds = Devsite(tmp_path / 'run', site_file)
    yield ds
    ds.kill()


def assert_all_gone(ds):
    assert any('crossbar-worker' in cmd for cmd in ds.tree.values()), ds.tree
    assert wait_gone(ds.tree) == [], {p: ds.tree[p] for p in wait_gone(ds.tree, 0)}
    assert port_is_free(ds.port)


def test_devsite_sighup_stops_everything_it_started(small_site):
    """When the terminal running the devsite closes (SIGHUP), it stops the
    router (and crossbar's worker), the device and the agent, exits 0 and
    frees the port."""
    ds = small_site.up()
    os.kill(ds.proc.pid, signal.SIGHUP)
    ds.expect('SIGHUP: stopping everything this command started')
    ds.expect('^stopped.$')
    assert ds.wait() == 0
    assert_all_gone(ds)


def test_devsite_sigterm_during_sigint_shutdown_does_not_interrupt_it(small_site):
    """When SIGTERM arrives while the devsite stops after SIGINT (an agent is
    held stopped so the shutdown is certainly in progress), the shutdown goes
    on to the end: no traceback, exit 0, nothing left running."""
    ds = small_site.up()
    agent = ds.pid_of('ocs-agent:sim-device-1')
    os.kill(agent, signal.SIGSTOP)
    try:
        os.kill(ds.proc.pid, signal.SIGINT)
        ds.expect('SIGINT: stopping everything this command started')
        os.kill(ds.proc.pid, signal.SIGTERM)
        ds.expect('SIGTERM while stopping: still stopping')
    finally:
        os.kill(agent, signal.SIGCONT)
    ds.expect('^stopped.$')
    assert ds.wait() == 0
    assert not any('Traceback' in line for line in ds.output), ''.join(ds.output)
    assert_all_gone(ds)


def test_devsite_sigkill_leaves_no_process_behind(small_site):
    """When the devsite itself is killed with SIGKILL (no clean-up at all),
    every process it started dies with it, crossbar's worker included, and
    the port is free again."""
    ds = small_site.up()
    ds.proc.kill()
    assert ds.wait() == -signal.SIGKILL
    assert_all_gone(ds)


def test_router_death_stops_the_site_with_one_line(small_site):
    """When the crossbar router dies, the devsite says so in one line naming
    it, stops the rest of the site and exits 1."""
    ds = small_site.up()
    os.kill(ds.pid_of('crossbar-controller'), signal.SIGKILL)
    ds.expect(r'^devsite: the crossbar router \(pid \d+\) killed by SIGKILL; '
              r'stopping the site \(see .*crossbar\.log\)$')
    assert ds.wait() == 1
    assert_all_gone(ds)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    ds = Devsite(tmp_path_factory.mktemp('demo'), DEMO_SITE, '--watch').up()
    yield ds
    ds.kill()


def test_watch_keeps_the_banner_as_its_header(demo):
    """When the demo runs with --watch, every screen the watch draws starts
    with the banner (what runs, how to talk to it), then the lock table."""
    demo.expect(r'\x1b\[2Jocs-locking demo site is up')
    demo.expect(r'^Talk to it from another terminal:$')
    demo.expect(r'ocs-locks --site-file \S+ --site-host demo status')
    demo.expect(r'^ocs-locks watch  observatory\.lock-registry\.feeds\.ownership')
    demo.expect(r'^sim-device-1/hw +acq')


def test_agent_kill9_is_reported_and_the_site_keeps_running(demo):
    """When one agent is killed with SIGKILL, the devsite prints a line naming
    it, the watch keeps that line under the banner and shows the agent's lock
    STALE, and the devsite, the registry and the other agent keep serving."""
    demo.expect(r'^sim-device-2/hw +acq .*alive$', timeout=STARTUP)
    pid = demo.pid_of('ocs-agent:sim-device-2')
    os.kill(pid, signal.SIGKILL)
    demo.expect(rf'^devsite: \d\d:\d\d:\d\d agent sim-device-2 \(SimulatedDeviceAgent\), '
                rf'pid {pid}, killed by SIGKILL; the rest of the site keeps running')
    demo.expect(r'\x1b\[2Jocs-locking demo site is up')
    demo.expect(rf'^devsite: .* agent sim-device-2 .* pid {pid}, killed by SIGKILL')
    demo.expect(r'^sim-device-2/hw .*STALE$', timeout=STARTUP)
    assert demo.proc.poll() is None
    reply = OCSClient('sim-device-1', args=demo.site_args).get_reading(channel=0)
    assert reply.status == ocs.OK and reply.session['success'] is True, reply
    rows = json.loads(subprocess.run(
        [sys.executable, '-m', 'ocs_locking.cli', *demo.site_args, 'status', '--json'],
        capture_output=True, text=True, timeout=STOPPING, check=True).stdout)
    alive = {r['lock']: r['alive'] for r in rows}
    assert alive == {'sim-device-1/hw': True, 'sim-device-2/hw': False}


def test_own_agent_file_runs_beside_the_demo(tmp_path):
    """When the site config names an agent file of one's own
    (docs/examples/own_agent_site.yaml), the devsite starts it with
    ocs-agent-cli --agent/--entrypoint: its task answers and its lock shows
    in ocs-locks status."""
    ds = Devsite(tmp_path / 'run', OWN_AGENT_SITE)
    try:
        ds.up()
        reply = OCSClient('counter-1', args=ds.site_args).bump(by=3)
        assert reply.status == ocs.OK and reply.session['data'] == {'count': 3}, reply
        status = subprocess.run(
            [sys.executable, '-m', 'ocs_locking.cli', *ds.site_args, 'status'],
            capture_output=True, text=True, timeout=STOPPING, check=True).stdout
        assert re.search(r'^counter-1/counter +\(free\) .* alive$', status, re.M), status
        cmd = ds.tree[ds.pid_of('--instance-id counter-1')]
        assert re.search(r'--agent \S+/docs/examples/own_agent\.py --entrypoint main', cmd), cmd
        os.kill(ds.proc.pid, signal.SIGINT)
        ds.expect('^stopped.$')
        assert ds.wait() == 0
    finally:
        ds.kill()


def test_standby_pair_site_fails_over_and_keeps_the_site_lease(tmp_path):
    """When the example standby site (docs/examples/standby_site.yaml) runs
    under the devsite, ocs-locks status shows lock-registry-b following,
    verified; when the primary is killed (kill -9), the devsite reports it,
    status says the standby serves, and the device agent's site lease is
    still its own with the same token."""
    ds = Devsite(tmp_path / 'run', STANDBY_SITE)
    try:
        ds.up()

        def cli(*argv):
            return subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *ds.site_args, *argv],
                                  capture_output=True, text=True, timeout=STOPPING).stdout

        def status():
            return cli('status')
        wait_for(lambda: re.search(r'^standby lock-registry-b follows \(verified\)', status(),
                                 re.M), 'lock-registry-b following, verified', STARTUP)
        reply = OCSClient('sim-device-1', args=ds.site_args).take_site_lock()
        assert reply.session['success'] is True, reply

        def lease():
            held = [g for g in json.loads(cli('leases', '--json') or '{}').get('grants', [])
                    if g.get('resource') == 'lab/bridge']
            return held[0] if held else None
        before = wait_for(lease, 'the site lease lab/bridge held', STARTUP)
        [pid] = [p for p, cmd in ds.tree.items()
                 if re.search(r'ocs-agent:lock-registry(\s|$)', cmd)]
        os.kill(pid, signal.SIGKILL)
        ds.expect(rf'^devsite: .* agent lock-registry \(LockRegistryAgent\), pid {pid}, '
                  rf'killed by SIGKILL; the rest of the site keeps running')
        wait_for(lambda: re.search(r'^registry served by standby lock-registry-b since ',
                                 status(), re.M), 'status saying lock-registry-b serves', STARTUP)
        after = wait_for(lease, 'the site lease still held', STARTUP)
        assert (after['owner'], after['token']) == (before['owner'], before['token']), \
            (before, after)
        os.kill(ds.proc.pid, signal.SIGINT)
        ds.expect('^stopped.$')
        assert ds.wait() == 0
    finally:
        ds.kill()


def test_site_kill_leaves_no_process_behind_and_frees_the_port(tmp_path):
    """When a Site made with teardown='kill' (the tests' and benchmarks'
    sites) is closed, every process it started is gone at once (the router,
    crossbar's worker, the device and the agent: SIGKILL, no shutdown), and
    the port is free again."""
    from tools.devsite import Site
    site_file = tmp_path / 'site.yaml'
    site_file.write_text(SMALL_SITE)
    site = Site(str(site_file), 'demo', str(tmp_path / 'work'), port=0, teardown='kill')
    try:
        site.start()
        procs = [site.router, *site.device_procs.values(), *site.agents.values()]
        tree = {p.pid: _cmdline(p.pid) for p in procs}
        for p in procs:
            tree.update(descendants(p.pid))
        assert any('crossbar-worker' in cmd for cmd in tree.values()), tree
        assert any('ocs.agent_cli' in cmd or 'ocs-agent' in cmd for cmd in tree.values()), tree
    finally:
        site.close()
    assert site.agents == {} and site.device_procs == {} and site.router is None
    # (exited: a pidfd is readable at once; an orphaned worker may stay a
    # zombie until init reaps it, which is gone all the same)
    assert wait_gone(tree) == [], {p: tree[p] for p in wait_gone(tree, 0)}
    assert port_is_free(site.port)
