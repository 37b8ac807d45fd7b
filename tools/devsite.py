"""Run an OCS site on loopback: a real crossbar router and agents from a site config.

Used by ``make run`` (``python -m tools.devsite run``) and by the
integration tests, so both exercise the same start-up and shutdown code.

* **The port** is set in one place: the site config's ``hub.wamp_server``
  (``hub.wamp_http`` must name the same port), or ``--port`` / ``Site(port=)``,
  which wins; 0 picks free ports for the router and every simulated device.
  The crossbar config (``<site-config dir>/crossbar/config.json``, else the
  repository's ``site-config/crossbar/config.json``) carries no port: it is
  copied into the work directory with the port filled in and the interface
  set to 127.0.0.1. The router is ready when its ``info`` (nodeinfo) path
  answers.
* **Agents** are started with ``ocs-agent-cli`` (``python -m ocs.agent_cli`` of
  this interpreter), only after the router answers; each logs to
  ``<workdir>/logs``. An instance whose class is not an installed OCS plugin
  names its own file: ``agent-file: my_agent.py`` (relative to the site
  config) and optionally ``entrypoint: main``; it is started with
  ``ocs-agent-cli --agent FILE --entrypoint main``.
* **Simulated devices** listed under the host's ``simulated-devices`` key (name,
  port, channels, latency) are started before the agents, as processes of
  ``python -m ocs_locking.agents.simulated_device.server``.
* **Children never outlive the site**: each runs in its own session and dies
  with the process that started it, even if that one is killed with SIGKILL
  (see :mod:`tools.processes`).
* **``run``** (``make run``) keeps the site up until SIGINT, SIGTERM or SIGHUP
  (a closed terminal), then stops everything it started; a second signal does
  not interrupt that. An agent or device that exits is reported and the rest
  keeps running; if the router exits, the site is stopped (exit status 1).
* crossbar runs from its own virtual environment: ``--crossbar``, else
  ``$OCS_LOCKING_CROSSBAR``, else ``.venv-crossbar/bin/crossbar`` beside the
  site config's repository, else ``crossbar`` on PATH.
"""
import argparse
import ipaddress
import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

import yaml

from tools.processes import exit_text, signal_group, spawn, stop as _stop_proc
from tools.supervisor import ExitWatcher, Shutdown, Stop

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SITE_FILE = os.path.join('site-config', 'default.yaml')
_CROSSBAR_TEMPLATE = os.path.join(_REPO, 'site-config', 'crossbar', 'config.json')


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


def _url_port(site_file, key, url):
    """The port of ``ws://127.0.0.1:18001/ws``; SiteError naming the key if none."""
    try:
        port = int(url.rsplit(':', 1)[1].split('/')[0])
    except (IndexError, ValueError):
        port = None
    if port is None or not 1 <= port <= 65535:
        raise SiteError(f'site config {site_file}: hub.{key} {url!r} has no port '
                        f'(expected e.g. ws://127.0.0.1:18001/ws)')
    return port


def _check_port(port):
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SiteError(f'port must be an integer 0..65535 (0: a free one), not {port!r}')
    return port


class Site:
    """A router plus agents, started from a site config into ``workdir``.

    Args:
        site_file (str): the ocs site config (YAML).
        host (str): which ``hosts`` entry holds the agent instances.
        workdir (str): where the patched configs, crossbar state and logs go.
        port (int): router port; ``None`` keeps the site config's
            (``hub.wamp_server``), 0 picks a free one for the router and
            for every simulated device (tests).
        crossbar (str): path of the crossbar executable.
        extra_agent_args (list): appended to every ``ocs-agent-cli`` command.
        crossbar_config (str): the router config template; default
            ``<site-config dir>/crossbar/config.json`` if it exists, else the
            repository's ``site-config/crossbar/config.json``.

    Processes are started from the calling thread; started from the main
    thread they die with this process even on SIGKILL.
    """

    def __init__(self, site_file, host, workdir, port=None, crossbar=None,
                 extra_agent_args=(), crossbar_config=None):
        self.host = host
        self.workdir = os.path.abspath(workdir)
        self.crossbar_bin = find_crossbar(crossbar)
        site_dir = os.path.dirname(os.path.abspath(site_file))
        data = _load_yaml(site_file)
        if host not in data['hosts']:
            raise SiteError(f'site config {site_file} has no host {host!r}; '
                            f'hosts: {", ".join(data["hosts"])}')
        hub = data['hub']
        for key in ('wamp_server', 'wamp_http', 'wamp_realm', 'address_root'):
            if not isinstance(hub.get(key), str):
                raise SiteError(f"site config {site_file}: hub.{key} must be a string")
        configured = _url_port(site_file, 'wamp_server', hub['wamp_server'])
        http_port = _url_port(site_file, 'wamp_http', hub['wamp_http'])
        if http_port != configured:
            raise SiteError(f'site config {site_file}: hub.wamp_http port {http_port} '
                            f'differs from hub.wamp_server port {configured} '
                            f'(one router serves both)')
        relocate = port == 0
        if port is None:
            port = configured
        elif _check_port(port) == 0:
            port = free_port()
        self.port = port
        hub['wamp_server'] = f'ws://127.0.0.1:{port}/ws'
        hub['wamp_http'] = f'http://127.0.0.1:{port}/call'
        self.realm = hub['wamp_realm']
        self.address_root = hub['address_root']
        host_cfg = data['hosts'][host]
        if not isinstance(host_cfg, dict):
            raise SiteError(f'site config {site_file}: hosts.{host} must be a mapping')
        self.instances = _instance_specs(site_file, site_dir,
                                         host_cfg.get('agent-instances') or [])
        self.devices = _device_specs(site_file, host_cfg.get('simulated-devices') or [])
        if relocate:
            moved = {}
            for dev in self.devices:
                new = free_port()
                moved[dev['port']] = new
                dev['port'] = new
            for inst in self.instances:
                inst['arguments'] = _rewrite_device_ports(inst.get('arguments') or [], moved)
        if crossbar_config is None:
            crossbar_config = os.path.join(site_dir, 'crossbar', 'config.json')
            if not os.path.exists(crossbar_config):
                crossbar_config = _CROSSBAR_TEMPLATE
        os.makedirs(os.path.join(self.workdir, 'logs'), exist_ok=True)
        self.site_file = os.path.join(self.workdir, 'site.yaml')
        with open(self.site_file, 'w') as f:
            yaml.safe_dump(data, f, sort_keys=False)
        self.cbdir = os.path.join(self.workdir, 'crossbar')
        self._write_crossbar_config(crossbar_config)
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
        for w, worker in enumerate(cfg.get('workers', [])):
            for t, transport in enumerate(worker.get('transports', [])):
                endpoint = transport.setdefault('endpoint', {})
                where = f'crossbar config {template}: workers[{w}].transports[{t}].endpoint'
                if 'port' in endpoint:
                    raise SiteError(f'{where} sets port {endpoint["port"]!r}; remove it: the '
                                    f'port comes from the site config (hub.wamp_server) '
                                    f'or --port')
                interface = endpoint.get('interface', '127.0.0.1')
                if not _is_loopback(interface):
                    raise SiteError(f'{where}: interface {interface!r} is not loopback; '
                                    f'the devsite serves 127.0.0.1 only')
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
                            f'is another site running? (another port: --port N, '
                            f'or make run PORT=N)')
        log = self.log_path('crossbar')
        self.router = spawn([self.crossbar_bin, 'start', '--cbdir', self.cbdir,
                             '--loglevel', 'warn'], log)
        _wait_ready(self.router, self.router_ready, f'crossbar on port {self.port}',
                    timeout, log)

    def stop_router(self, timeout=15):
        if self.router is not None:
            _stop_proc(self.router, signal.SIGTERM, timeout)
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
        proc = self.device_procs[name] = spawn(
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
            _stop_proc(proc, signal.SIGINT, timeout)

    # -- agents ---------------------------------------------------------------

    def instance(self, instance_id):
        for inst in self.instances:
            if inst['instance-id'] == instance_id:
                return inst
        return None

    def agent_command(self, instance_id):
        inst = self.instance(instance_id) or {}
        own = []
        if inst.get('agent-file'):
            own = ['--agent', inst['agent-file'], '--entrypoint', inst['entrypoint']]
        return [sys.executable, '-u', '-m', 'ocs.agent_cli',
                '--site-file', self.site_file, '--site-host', self.host,
                '--instance-id', instance_id, '--crossbar-timeout', '0',
                *own, *self.extra_agent_args]

    def check_agents(self):
        """Refuse, before anything starts, an instance whose agent-class no
        installed OCS plugin provides and that names no ``agent-file``
        (ocs-agent-cli would die with a KeyError)."""
        missing = [i for i in self.instances
                   if not i.get('agent-file') and i['agent-class'] not in _plugin_agents()]
        if missing:
            inst = missing[0]
            raise SiteError(
                f"instance {inst['instance-id']}: agent-class {inst['agent-class']!r} is not "
                f"provided by any installed OCS plugin ({', '.join(sorted(_plugin_agents()))}); "
                f"for your own agent add 'agent-file: my_agent.py' (relative to the site "
                f"config) and 'entrypoint: main' to the instance")

    def start_agent(self, instance_id):
        if instance_id in self.agents and self.agents[instance_id].poll() is None:
            raise SiteError(f'agent {instance_id} is already running')
        env = dict(os.environ)
        env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
        env.setdefault('LOGLEVEL', 'info')
        # Agents run in the work directory: relative paths (a --db) land there.
        self.agents[instance_id] = spawn(self.agent_command(instance_id),
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
                raise SiteError(f'agent {instance_id} {exit_text(proc.returncode)}; '
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
            _stop_proc(proc, signal.SIGINT, timeout)

    def start(self):
        """Start the router and the simulated devices, then every agent instance."""
        self.check_agents()
        self.start_router()
        for dev in self.devices:
            self.start_device(dev['name'])
        for inst in self.instances:
            self.start_agent(inst['instance-id'])
        for inst in self.instances:
            self.wait_agent(inst['instance-id'])

    def stop(self):
        """Stop everything this site started: agents (all signalled at once,
        so their shutdowns overlap), devices, then the router."""
        for proc in self.agents.values():
            signal_group(proc, signal.SIGINT)
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


def _is_loopback(interface):
    if interface == 'localhost':
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def _wait_ready(proc, ready, what, timeout, log_path):
    """Wait until ready() is true; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise SiteError(f'{what} {exit_text(proc.returncode)}; see {log_path}')
        if time.monotonic() > deadline:
            raise SiteError(f'{what} did not answer within {timeout} s; see {log_path}')
        time.sleep(0.05)


_PLUGIN_AGENTS = None


def _plugin_agents():
    """agent-class names that installed OCS plugins provide (as ocs-agent-cli finds them)."""
    global _PLUGIN_AGENTS
    if _PLUGIN_AGENTS is None:
        from importlib.metadata import entry_points
        names = set()
        for ep in entry_points(group='ocs.plugins'):
            try:
                names.update(ep.load().agents)
            except Exception:   # a broken plugin: ocs-agent-cli skips it too
                continue
        _PLUGIN_AGENTS = names
    return _PLUGIN_AGENTS


def _instance_specs(site_file, site_dir, entries):
    """Check the host's ``agent-instances``; resolve ``agent-file`` against the
    site config's directory (the copy in the work directory keeps it absolute)."""
    if not isinstance(entries, list):
        raise SiteError(f'site config {site_file}: agent-instances must be a list')
    seen = set()
    for i, inst in enumerate(entries):
        where = f'site config {site_file}: agent-instances[{i}]'
        if not isinstance(inst, dict):
            raise SiteError(f'{where} must be a mapping')
        for key in ('instance-id', 'agent-class'):
            if not isinstance(inst.get(key), str) or not inst[key]:
                raise SiteError(f'{where} needs {key} (a non-empty string)')
        if inst['instance-id'] in seen:
            raise SiteError(f"{where}: duplicate instance-id {inst['instance-id']!r}")
        seen.add(inst['instance-id'])
        where = f"site config {site_file}: instance {inst['instance-id']}"
        agent_file = inst.get('agent-file')
        if agent_file is None:
            if 'entrypoint' in inst:
                raise SiteError(f'{where}: entrypoint needs an agent-file')
            continue
        if not isinstance(agent_file, str) or not agent_file.endswith('.py'):
            raise SiteError(f'{where}: agent-file must be the path of a .py file, '
                            f'not {agent_file!r}')
        path = os.path.normpath(os.path.join(site_dir, agent_file))
        if not os.path.isfile(path):
            raise SiteError(f'{where}: agent-file {agent_file!r} not found (looked for {path})')
        entrypoint = inst.setdefault('entrypoint', 'main')
        if not isinstance(entrypoint, str) or not entrypoint.isidentifier():
            raise SiteError(f'{where}: entrypoint must be a function name, not {entrypoint!r}')
        inst['agent-file'] = path
    return entries


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


# -- python -m tools.devsite run ------------------------------------------------------

def _port_arg(text):
    try:
        return _check_port(int(text))
    except (ValueError, SiteError):
        raise argparse.ArgumentTypeError(f'must be an integer 0..65535 (0: a free one), '
                                         f'not {text!r}') from None


def make_parser():
    parser = argparse.ArgumentParser(
        prog='python -m tools.devsite',
        description='Run an OCS site (crossbar router + agents) on loopback.')
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='start the site and keep it up until Ctrl-C')
    run.add_argument('site_file', nargs='?', default=DEFAULT_SITE_FILE)
    run.add_argument('--host', default='demo', help='hosts entry to run (default demo)')
    run.add_argument('--workdir', default='run', help='state and logs (default ./run)')
    run.add_argument('--port', type=_port_arg, default=None,
                     help="router port (default: the site config's hub.wamp_server); "
                          "0 picks free ports for the router and the simulated devices")
    run.add_argument('--crossbar', default=None, help='crossbar executable')
    run.add_argument('--watch', action='store_true',
                     help='show `ocs-locks watch` below the banner (needs a LockRegistryAgent)')
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


class _Screen:
    """Lines for the terminal that survive a closed terminal (SIGHUP): once a
    write fails, later ones are dropped instead of raising mid-shutdown."""

    def __init__(self):
        self.gone = False

    def say(self, text, err=False):
        if self.gone:
            return
        stream = sys.stderr if err else sys.stdout
        try:
            stream.write(text + '\n')
            stream.flush()
        except (OSError, ValueError):
            self.gone = True


class _Watch:
    """``ocs-locks watch`` under a header that repeats the banner and every
    notice since (restarted with the new header when a notice is added)."""

    MAX_RESTARTS = 3

    def __init__(self, site, banner):
        self.site = site
        self.banner = banner
        self.notes = []
        self.proc = None
        self.restarts = 0

    def header(self):
        return '\n'.join([self.banner, *self.notes])

    def start(self):
        self.proc = spawn([sys.executable, '-m', 'ocs_locking.cli', *self.site.client_args,
                           'watch', '--header', self.header()], None)
        return self.proc

    def stop(self):
        if self.proc is not None:
            _stop_proc(self.proc, signal.SIGTERM, 5)
            self.proc = None

    def note(self, line):
        self.notes.append(line)
        self.stop()
        return self.start()


def run(opts, screen=None, restore_signals=True):
    """``python -m tools.devsite run``: the site until a signal; the exit status.

    ``restore_signals=False`` (the command line) keeps stop signals harmless
    until the process exits."""
    screen = screen or _Screen()
    shutdown = Shutdown(on_repeat=lambda signum: screen.say(
        f'devsite: {signal.Signals(signum).name} while stopping: still stopping', err=True))
    shutdown.install()
    site = watch = None
    try:
        try:
            site = Site(opts.site_file, opts.host, opts.workdir, port=opts.port,
                        crossbar=opts.crossbar)
            site.start()
        except SiteError as e:
            shutdown.begin()
            screen.say(f'devsite: {e}', err=True)
            return 2
        banner = _banner(site)
        screen.say(banner)
        exits = ExitWatcher()
        exits.add(('router', 'crossbar'), site.router)
        for name, proc in site.device_procs.items():
            exits.add(('device', name), proc)
        for instance_id, proc in site.agents.items():
            exits.add(('agent', instance_id), proc)
        if opts.watch:
            watch = _Watch(site, banner)
            exits.add(('watch', 'watch'), watch.start())
        while True:
            for kind, name in exits.wait():
                if kind == 'router':
                    shutdown.begin()
                    screen.say(f'devsite: the crossbar router (pid {site.router.pid}) '
                               f'{exit_text(site.router.returncode)}; stopping the site '
                               f'(see {site.log_path("crossbar")})', err=True)
                    return 1
                if kind == 'watch':
                    if site.router.poll() is None and watch.restarts < watch.MAX_RESTARTS:
                        watch.restarts += 1
                        exits.add(('watch', 'watch'), watch.start())
                    continue
                proc = site.agents[name] if kind == 'agent' else site.device_procs[name]
                what = (f"agent {name} ({site.instance(name)['agent-class']})"
                        if kind == 'agent' else f'simulated device {name}')
                line = (f'devsite: {time.strftime("%H:%M:%S")} {what}, pid {proc.pid}, '
                        f'{exit_text(proc.returncode)}; the rest of the site keeps running '
                        f'(see {site.log_path(name if kind == "agent" else "device-" + name)})')
                screen.say(line, err=True)
                if watch is not None:
                    exits.add(('watch', 'watch'), watch.note(line))
    except Stop as e:
        screen.say(f'\n{e.name}: stopping everything this command started...')
        return 0
    finally:
        shutdown.begin()
        if watch is not None:
            watch.stop()
        if site is not None:
            site.stop()
            if shutdown.signum is not None:
                screen.say('stopped.')
        if restore_signals:
            shutdown.restore()


def main(args=None):
    opts = make_parser().parse_args(args)
    return run(opts, restore_signals=False)


if __name__ == '__main__':
    sys.exit(main())
