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
* **``run``** (``make run``, :mod:`tools.runner`) keeps the site up until
  SIGINT, SIGTERM or SIGHUP (a closed terminal), then stops everything it
  started; a second signal does not interrupt that. An agent or device that
  exits is reported and the rest keeps running; if the router exits, the site
  is stopped (exit status 1).
* The site config checks are pure, in :mod:`tools.siteconfig`.
* crossbar runs from its own virtual environment: ``--crossbar``, else
  ``$OCS_LOCKING_CROSSBAR``, else ``.venv-crossbar/bin/crossbar`` beside the
  site config's repository, else ``crossbar`` on PATH.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

import yaml

from ocs_locking.bus.config import page_paths
from ocs_locking.web import page_url
from tools import siteconfig
from tools.processes import exit_text, kill as _kill_procs, signal_group, spawn, stop as _stop_proc
from tools.siteconfig import (SiteError, check_port, device_specs,
                              instance_specs, load_site, rewrite_device_ports,
                              unknown_agent_class, url_port)

__all__ = ['Site', 'SiteError', 'free_port', 'find_crossbar', 'make_parser', 'main']

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SITE_FILE = os.path.join('site-config', 'default.yaml')
_CROSSBAR_TEMPLATE = os.path.join(_REPO, 'site-config', 'crossbar', 'config.json')


def _ephemeral_range():
    """The kernel's range for the local ports of outgoing connections."""
    try:
        with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(_rng=random.SystemRandom()):
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    It is chosen below the kernel's ephemeral range when there is room: a
    port the kernel hands out for ``bind(0)`` is also one it hands to the
    next outgoing connection (of any process), which could take it before
    crossbar or a device server listens on it.
    """
    low = _ephemeral_range()[0]
    if low > 20000 + 1000:
        for _ in range(50):
            port = _rng.randrange(20000, low)
            with socket.socket() as s:
                try:
                    s.bind(('127.0.0.1', port))
                except OSError:
                    continue
                return port
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
        teardown (str): what :meth:`close` and leaving a ``with`` block do:
            ``'stop'`` (default; ``make run``) stops every agent gracefully
            (SIGINT: ocs ends its operations, which costs each ocs 0.12
            agent about 6 s), ``'kill'`` (tests, benchmarks) is
            :meth:`kill`.

    Processes are started from the calling thread; started from the main
    thread they die with this process even on SIGKILL.
    """

    def __init__(self, site_file, host, workdir, port=None, crossbar=None,
                 extra_agent_args=(), crossbar_config=None, teardown='stop'):
        if teardown not in ('stop', 'kill'):
            raise SiteError(f"teardown must be 'stop' or 'kill', not {teardown!r}")
        self.teardown = teardown
        self.host = host
        self.workdir = os.path.abspath(workdir)
        self.crossbar_bin = find_crossbar(crossbar)
        site_dir = os.path.dirname(os.path.abspath(site_file))
        data = load_site(site_file)
        if host not in data['hosts']:
            raise SiteError(f'site config {site_file} has no host {host!r}; '
                            f'hosts: {", ".join(data["hosts"])}')
        hub = data['hub']
        for key in ('wamp_server', 'wamp_http', 'wamp_realm', 'address_root'):
            if not isinstance(hub.get(key), str):
                raise SiteError(f"site config {site_file}: hub.{key} must be a string")
        configured = url_port(site_file, 'wamp_server', hub['wamp_server'])
        http_port = url_port(site_file, 'wamp_http', hub['wamp_http'])
        if http_port != configured:
            raise SiteError(f'site config {site_file}: hub.wamp_http port {http_port} '
                            f'differs from hub.wamp_server port {configured} '
                            f'(one router serves both)')
        relocate = port == 0
        if port is None:
            port = configured
        elif check_port(port) == 0:
            port = free_port()
        self.port = port
        hub['wamp_server'] = f'ws://127.0.0.1:{port}/ws'
        hub['wamp_http'] = f'http://127.0.0.1:{port}/call'
        self.realm = hub['wamp_realm']
        self.address_root = hub['address_root']
        host_cfg = data['hosts'][host]
        if not isinstance(host_cfg, dict):
            raise SiteError(f'site config {site_file}: hosts.{host} must be a mapping')
        self.instances = instance_specs(site_file, site_dir,
                                         host_cfg.get('agent-instances') or [])
        self.devices = device_specs(site_file, host_cfg.get('simulated-devices') or [])
        if relocate:
            moved = {}
            for dev in self.devices:
                new = free_port()
                moved[dev['port']] = new
                dev['port'] = new
            for inst in self.instances:
                inst['arguments'] = rewrite_device_ports(inst.get('arguments') or [], moved)
        if crossbar_config is None:
            crossbar_config = os.path.join(site_dir, 'crossbar', 'config.json')
            if not os.path.exists(crossbar_config):
                crossbar_config = _CROSSBAR_TEMPLATE
        os.makedirs(os.path.join(self.workdir, 'logs'), exist_ok=True)
        copy_access_files(self.instances, site_dir, self.workdir, site_file)
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
    def page_url(self):
        """The live page's address on this site's router (None when its
        crossbar config serves no page, e.g. ocs's stock config)."""
        if not self.page_paths:
            return None
        registry = next((i['instance-id'] for i in self.instances
                         if i['agent-class'] == 'LockRegistryAgent'), 'lock-registry')
        return page_url('127.0.0.1', self.port, self.realm, self.address_root, registry,
                        self.page_paths[0])

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
        cfg = siteconfig.crossbar_config(cfg, self.port, where=f'crossbar config {template}',
                                         address_root=self.address_root,
                                         standbys=self.standbys)
        self.page_paths = page_paths(cfg)
        os.makedirs(self.cbdir, exist_ok=True)
        siteconfig.link_code(self.cbdir)    # the bus component's code (pythonpath 'code')
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

    @property
    def standbys(self):
        """The instances started with ``--standby-for`` (standby registries:
        the router lets them follow the registry)."""
        return [inst['instance-id'] for inst in self.instances
                if any(isinstance(a, (list, tuple)) and a and a[0] == '--standby-for'
                       or a == '--standby-for' for a in inst.get('arguments') or [])]

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
        error = unknown_agent_class(self.instances)
        if error is not None:
            raise error

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
        """Stop one agent gracefully (SIGINT: ocs ends its operations)."""
        proc = self.agents.pop(instance_id, None)
        if proc is not None:
            _stop_proc(proc, signal.SIGINT, timeout)

    def kill_agent(self, instance_id, timeout=15):
        """SIGKILL one agent (and anything it started); return once it is gone."""
        proc = self.agents.pop(instance_id, None)
        if proc is not None:
            stuck = _kill_procs([proc], timeout)
            if stuck:
                raise SiteError(f'agent {instance_id} still running {timeout} s after '
                                f'SIGKILL: pids {", ".join(map(str, stuck))}')

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

    def kill(self, timeout=15):
        """SIGKILL everything this site started at once (agents, devices,
        the router, their process groups and every process below them,
        crossbar's worker included) and wait until all of them are gone.
        For teardown where a graceful stop proves nothing. Raises SiteError
        naming any process still alive after ``timeout`` seconds."""
        procs = [*self.agents.values(), *self.device_procs.values(), self.router]
        self.agents, self.device_procs, self.router = {}, {}, None
        stuck = _kill_procs(procs, timeout)
        if stuck:
            raise SiteError(f'still running {timeout} s after SIGKILL: pids '
                            f'{", ".join(map(str, stuck))}')

    def close(self):
        """End the site as its ``teardown`` says: :meth:`stop` or :meth:`kill`."""
        if self.teardown == 'kill':
            self.kill()
        else:
            self.stop()

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()


def copy_access_files(instances, site_dir, workdir, site_file):
    """Copy each agent's relative ``--access-file`` (the registry's
    passwords) from the site config's directory into ``workdir``, mode 0600:
    the agent resolves it against its site file, which is the copy there.
    An absolute path is left as it is. Raises SiteError in one line for a
    file that is missing or unreadable."""
    for inst in instances:
        for arg in inst.get('arguments') or []:
            if not (isinstance(arg, (list, tuple)) and len(arg) == 2
                    and arg[0] == '--access-file' and isinstance(arg[1], str)):
                continue
            if os.path.isabs(arg[1]):
                continue
            src = os.path.normpath(os.path.join(site_dir, arg[1]))
            dst = os.path.normpath(os.path.join(workdir, arg[1]))
            try:
                with open(src, 'rb') as f:
                    text = f.read()
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, 'wb') as f:
                    f.write(text)
                os.chmod(dst, 0o600)
            except OSError as e:
                raise SiteError(f"site config {site_file}: instance {inst['instance-id']}: "
                                f"cannot copy --access-file {arg[1]!r} ({src}): "
                                f"{e.strerror or type(e).__name__}") from None


def _wait_ready(proc, ready, what, timeout, log_path):
    """Wait until ready() is true; fail at once if the process exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise SiteError(f'{what} {exit_text(proc.returncode)}; see {log_path}')
        if time.monotonic() > deadline:
            raise SiteError(f'{what} did not answer within {timeout} s; see {log_path}')
        time.sleep(0.05)


# -- python -m tools.devsite run ------------------------------------------------------

def _port_arg(text):
    try:
        return check_port(int(text))
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


def main(args=None):
    from tools.runner import run
    opts = make_parser().parse_args(args)
    return run(opts, restore_signals=False)


if __name__ == '__main__':
    sys.exit(main())
