"""Run an OCS site on loopback: a real crossbar router and agents from a site config.

Used by ``make run`` (``python -m tools.devsite run``) and by the
integration tests, so both exercise the same start-up and shutdown code.

* The crossbar config is ``<site-config dir>/crossbar/config.json``, copied into
  the work directory with the port patched and the interface forced to
  127.0.0.1; the router is ready when its ``info`` (nodeinfo) path answers.
* Agents are started with ``ocs-agent-cli`` (``python -m ocs.agent_cli`` of this
  interpreter), only after the router answers; each logs to ``<workdir>/logs``.
* Simulated devices listed under the host's ``simulated-devices`` key (name,
  port, channels, latency) are started before the agents, as processes of
  ``python -m ocs_locking.agents.simulated_device.server``. When the site is
  moved to free ports (``port=0``), each device gets a free port too and the
  agents' ``--device-port`` arguments are rewritten to match.
* crossbar runs from its own virtual environment: ``--crossbar``, else
  ``$OCS_LOCKING_CROSSBAR``, else ``.venv-crossbar/bin/crossbar`` beside the
  site config's repository, else ``crossbar`` on PATH.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SiteError(RuntimeError):
    """The site could not be started; the message says which part and why."""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def find_crossbar(explicit=None):
    for cand in (explicit, os.environ.get('OCS_LOCKING_CROSSBAR'),
                 os.path.join(_REPO, '.venv-crossbar', 'bin', 'crossbar'),
                 shutil.which('crossbar')):
        if cand and os.path.exists(cand):
            return cand
    raise SiteError('crossbar not found: run `make crossbar`, or set '
                    'OCS_LOCKING_CROSSBAR to the crossbar executable')


def _load_yaml(path):
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise SiteError(f'cannot read site config {path}: {e.strerror}') from None
    except yaml.YAMLError as e:
        raise SiteError(f'site config {path} is not valid YAML: '
                        f'{str(e).splitlines()[0]}') from None
    if not isinstance(data, dict) or not isinstance(data.get('hub'), dict) \
            or not isinstance(data.get('hosts'), dict):
        raise SiteError(f"site config {path} needs a 'hub' mapping and a 'hosts' mapping")
    return data


class Site:
    """A router plus agents, started from a site config into ``workdir``.

    Args:
        site_file (str): the ocs site config (YAML).
        host (str): which ``hosts`` entry holds the agent instances.
        workdir (str): where the patched configs, crossbar state and logs go.
        port (int): router port; ``None`` keeps the site config's, 0 picks a
            free one (tests).
        crossbar (str): path of the crossbar executable.
        extra_agent_args (list): appended to every ``ocs-agent-cli`` command.
    """

    def __init__(self, site_file, host, workdir, port=None, crossbar=None,
                 extra_agent_args=()):
        self.host = host
        self.workdir = os.path.abspath(workdir)
        self.crossbar_bin = find_crossbar(crossbar)
        data = _load_yaml(site_file)
        if host not in data['hosts']:
            raise SiteError(f'site config {site_file} has no host {host!r}; '
                            f'hosts: {", ".join(data["hosts"])}')
        hub = data['hub']
        for key in ('wamp_server', 'wamp_http', 'wamp_realm', 'address_root'):
            if not isinstance(hub.get(key), str):
                raise SiteError(f"site config {site_file}: hub.{key} must be a string")
        relocate = port == 0
        if port is None:
            port = int(hub['wamp_server'].rsplit(':', 1)[1].split('/')[0])
        elif port == 0:
            port = free_port()
        self.port = port
        hub['wamp_server'] = f'ws://127.0.0.1:{port}/ws'
        hub['wamp_http'] = f'http://127.0.0.1:{port}/call'
        self.realm = hub['wamp_realm']
        self.address_root = hub['address_root']
        host_cfg = data['hosts'][host]
        self.instances = list(host_cfg.get('agent-instances') or [])
        self.devices = _device_specs(site_file, host_cfg.get('simulated-devices') or [])
        if relocate:
            moved = {}
            for dev in self.devices:
                new = free_port()
                moved[dev['port']] = new
                dev['port'] = new
            for inst in self.instances:
                inst['arguments'] = _rewrite_device_ports(inst.get('arguments') or [], moved)
        os.makedirs(os.path.join(self.workdir, 'logs'), exist_ok=True)
        self.site_file = os.path.join(self.workdir, 'site.yaml')
        with open(self.site_file, 'w') as f:
            yaml.safe_dump(data, f, sort_keys=False)
        self.cbdir = os.path.join(self.workdir, 'crossbar')
        self._write_crossbar_config(os.path.join(os.path.dirname(
            os.path.abspath(site_file)), 'crossbar', 'config.json'))
        self.extra_agent_args = list(extra_agent_args)
        self.router = None
        self.agents = {}
        self.device_procs = {}

    @property
    def client_args(self):
        """Arguments for ``OCSClient(..., args=site.client_args)``."""
        return ['--site-file', self.site_file, '--site-host', self.host]

    def _write_crossbar_config(self, template):
        try:
            with open(template) as f:
                cfg = json.load(f)
        except (OSError, ValueError) as e:
            raise SiteError(f'cannot read crossbar config {template}: {e}') from None
        for worker in cfg.get('workers', []):
            for transport in worker.get('transports', []):
                endpoint = transport.get('endpoint', {})
                endpoint['port'] = self.port
                endpoint['interface'] = '127.0.0.1'
        os.makedirs(self.cbdir, exist_ok=True)
        with open(os.path.join(self.cbdir, 'config.json'), 'w') as f:
            json.dump(cfg, f, indent=2)

    # -- router ---------------------------------------------------------------

    def router_ready(self):
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{self.port}/info', timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def start_router(self, timeout=60):
        if self.router_ready():
            raise SiteError(f'port {self.port} on 127.0.0.1 is already serving; '
                            f'is another site running?')
        log = self.log_path('crossbar')
        self.router = _spawn([self.crossbar_bin, 'start', '--cbdir', self.cbdir,
                              '--loglevel', 'warn'], log)
        _wait_ready(self.router, self.router_ready, f'crossbar on port {self.port}',
                    timeout, log)

    def stop_router(self, timeout=15):
        if self.router is not None:
            _stop(self.router, signal.SIGTERM, timeout)
            self.router = None

    # -- simulated devices ------------------------------------------------------

    def device(self, name):
        for dev in self.devices:
            if dev['name'] == name:
                return dev
        raise SiteError(f'no simulated device {name!r} in this site')

    def start_device(self, name, timeout=30):
        """Start one simulated device and wait until it accepts connections."""
        dev = self.device(name)
        log = self.log_path(f'device-{name}')
        proc = self.device_procs[name] = _spawn(
            [sys.executable, '-u', '-m', 'ocs_locking.agents.simulated_device.server',
             '--port', str(dev['port']), '--channels', str(dev['channels']),
             '--latency', str(dev['latency']), '--serial', name], log)

        def listening():
            try:
                socket.create_connection(('127.0.0.1', dev['port']), timeout=1).close()
                return True
            except OSError:
                return False
        _wait_ready(proc, listening, f'simulated device {name} on port {dev["port"]}',
                    timeout, log)
        return proc

    def stop_device(self, name, timeout=10):
        proc = self.device_procs.pop(name, None)
        if proc is not None:
            _stop(proc, signal.SIGINT, timeout)

    # -- agents ---------------------------------------------------------------

    def agent_command(self, instance_id):
        return [sys.executable, '-u', '-m', 'ocs.agent_cli',
                '--site-file', self.site_file, '--site-host', self.host,
                '--instance-id', instance_id, '--crossbar-timeout', '0',
                *self.extra_agent_args]

    def start_agent(self, instance_id):
        if instance_id in self.agents and self.agents[instance_id].poll() is None:
            raise SiteError(f'agent {instance_id} is already running')
        env = dict(os.environ)
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
        env.setdefault('LOGLEVEL', 'info')
        # Agents run in the work directory: relative paths (a --db) land there.
        self.agents[instance_id] = _spawn(self.agent_command(instance_id),
                                          self.log_path(instance_id), env=env,
                                          cwd=self.workdir)
        return self.agents[instance_id]

    def wait_agent(self, instance_id, timeout=60):
        """Return an ``OCSClient`` once the agent answers; raise if it never does."""
        from ocs.ocs_client import OCSClient
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            proc = self.agents.get(instance_id)
            if proc is not None and proc.poll() is not None:
                raise SiteError(f'agent {instance_id} exited with code {proc.returncode}; '
                                f'see {self.log_path(instance_id)}')
            try:
                return OCSClient(instance_id, args=self.client_args)
            except Exception as e:  # ControlClientError until it registers
                last = e
            time.sleep(0.2)
        raise SiteError(f'agent {instance_id} did not answer within {timeout} s '
                        f'({last}); see {self.log_path(instance_id)}')

    def log_path(self, name):
        return os.path.join(self.workdir, 'logs', f'{name}.log')

    def stop_agent(self, instance_id, timeout=15):
        proc = self.agents.pop(instance_id, None)
        if proc is not None:
            _stop(proc, signal.SIGINT, timeout)

    def start(self):
        """Start the router and the simulated devices, then every agent instance."""
        self.start_router()
        for dev in self.devices:
            self.start_device(dev['name'])
        for inst in self.instances:
            self.start_agent(inst['instance-id'])
        for inst in self.instances:
            self.wait_agent(inst['instance-id'])

    def stop(self):
        # Signal every agent first, then wait: their shutdowns overlap.
        for proc in self.agents.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for instance_id in list(self.agents):
            self.stop_agent(instance_id)
        for name in list(self.device_procs):
            self.stop_device(name)
        self.stop_router()

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()


def _spawn(cmd, log_path, env=None, cwd=None):
    """Start a process in its own session, appending its output to a log."""
    with open(log_path, 'ab') as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                cwd=cwd)


def _wait_ready(proc, ready, what, timeout, log_path):
    """Wait until ready() is true; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise SiteError(f'{what} exited with code {proc.returncode}; see {log_path}')
        if time.monotonic() > deadline:
            raise SiteError(f'{what} did not answer within {timeout} s; see {log_path}')
        time.sleep(0.05)


def _stop(proc, sig, timeout):
    """Signal a process group, then kill it if it does not exit in time."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)


def _device_specs(site_file, entries):
    """Check the host's ``simulated-devices`` list; fill in defaults."""
    if not isinstance(entries, list):
        raise SiteError(f'site config {site_file}: simulated-devices must be a list')
    specs, names = [], set()
    for i, e in enumerate(entries):
        where = f'site config {site_file}: simulated-devices[{i}]'
        if not isinstance(e, dict) or not isinstance(e.get('name'), str) or not e['name']:
            raise SiteError(f'{where} needs a name (a non-empty string)')
        if e['name'] in names:
            raise SiteError(f"{where}: duplicate name {e['name']!r}")
        names.add(e['name'])
        port = e.get('port')
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise SiteError(f'{where}: port must be an integer 1..65535, not {port!r}')
        channels = e.get('channels', 4)
        if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= 64:
            raise SiteError(f'{where}: channels must be an integer 1..64, not {channels!r}')
        latency = e.get('latency', 0.002)
        if not isinstance(latency, (int, float)) or isinstance(latency, bool) \
                or not 0 <= latency <= 10:
            raise SiteError(f'{where}: latency must be seconds in 0..10, not {latency!r}')
        unknown = set(e) - {'name', 'port', 'channels', 'latency'}
        if unknown:
            raise SiteError(f'{where}: unknown keys {sorted(unknown)}')
        specs.append({'name': e['name'], 'port': port, 'channels': channels,
                      'latency': latency})
    return specs


def _rewrite_device_ports(arguments, moved):
    """Point ``--device-port`` arguments at the devices' new ports."""
    out = []
    for arg in arguments:
        if isinstance(arg, list) and len(arg) == 2 and arg[0] == '--device-port' \
                and arg[1] in moved:
            arg = ['--device-port', moved[arg[1]]]
        out.append(arg)
    return out


def make_parser():
    parser = argparse.ArgumentParser(
        prog='python -m tools.devsite',
        description='Run an OCS site (crossbar router + agents) on loopback.')
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='start the site and keep it up until Ctrl-C')
    run.add_argument('site_file', nargs='?',
                     default=os.path.join('site-config', 'default.yaml'))
    run.add_argument('--host', default='demo', help='hosts entry to run (default demo)')
    run.add_argument('--workdir', default='run', help='state and logs (default ./run)')
    run.add_argument('--crossbar', default=None, help='crossbar executable')
    run.add_argument('--watch', action='store_true',
                     help='end by showing `ocs-locks watch` (needs a LockRegistryAgent)')
    return parser


def _banner(site):
    lines = [f'ocs-locking demo site is up (logs in {site.workdir}/logs):',
             f'  crossbar router   ws://127.0.0.1:{site.port}/ws   '
             f'(HTTP calls: http://127.0.0.1:{site.port}/call, realm {site.realm})']
    for dev in site.devices:
        lines.append(f"  {dev['name']:<17} simulated device on 127.0.0.1:{dev['port']} "
                     f"({dev['channels']} channels)")
    for inst in site.instances:
        lines.append(f"  {inst['instance-id']:<17} {inst['agent-class']} "
                     f"(pid {site.agents[inst['instance-id']].pid})")
    devices = [i['instance-id'] for i in site.instances
               if i['agent-class'] == 'SimulatedDeviceAgent']
    lines += ['', 'Talk to it from another terminal:']
    if devices:
        lines.append('  .venv/bin/python -c "from ocs.ocs_client import OCSClient; '
                     f"c = OCSClient('{devices[0]}', args={site.client_args!r}); "
                     'print(c.set_heater(value=42))"')
    lines += [f"  .venv/bin/ocs-locks {' '.join(site.client_args)} status",
              '', 'Ctrl-C stops everything this command started.']
    return '\n'.join(lines)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args=None):
    opts = make_parser().parse_args(args)
    # Ctrl-C and SIGTERM both stop everything we started, even when this runs
    # in the background (where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        site = Site(opts.site_file, opts.host, opts.workdir, crossbar=opts.crossbar)
        with site:
            print(_banner(site), flush=True)
            watcher = None
            if opts.watch:
                time.sleep(2)       # let the banner be read before the table takes the screen
                watcher = subprocess.Popen(
                    [sys.executable, '-m', 'ocs_locking.cli', *site.client_args, 'watch',
                     '--header', f'ocs-locking demo site: router ws://127.0.0.1:{site.port}/ws, '
                                 f'logs in {site.workdir}/logs. Ctrl-C stops everything.'])
            try:
                while all(p.poll() is None for p in site.agents.values()):
                    time.sleep(0.5)
            finally:
                if watcher is not None and watcher.poll() is None:
                    watcher.terminate()
                    watcher.wait(10)
            dead = [i for i, p in site.agents.items() if p.poll() is not None]
            print(f'agent(s) exited: {", ".join(dead)}; stopping the site', file=sys.stderr)
            return 1
    except SiteError as e:
        print(f'devsite: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('\nstopped.', flush=True)
        return 0


if __name__ == '__main__':
    sys.exit(main())
