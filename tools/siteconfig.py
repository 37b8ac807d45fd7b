"""Reading a site config for :mod:`tools.devsite`: pure checks, no processes.

Every check raises :class:`SiteError` with one line naming the file, the
entry and what was wrong, before anything is started.

* the hub's port (``hub.wamp_server``; ``hub.wamp_http`` must agree);
* the host's ``agent-instances``, including ``agent-file`` / ``entrypoint``
  for an agent of one's own and the registry's ``--resources`` file (both
  resolved against the site config's directory), and which agent classes
  the installed OCS plugins provide;
* the host's ``simulated-devices``;
* the crossbar config template, which must carry no port and listen on
  loopback only: :func:`crossbar_config` fills in the port and, for a router
  running the bus component, puts this checkout's ``ocs_locking`` on the
  worker's python path (nothing is installed in crossbar's environment);
  :func:`stock_crossbar_config` is ocs's stock config (no component), for
  the tests of that path.
"""
import copy
import ipaddress
import os

import yaml

import ocs_locking
from ocs_locking.bus import config as bus_config

__all__ = ['SiteError', 'load_site', 'url_port', 'check_port', 'instance_specs',
           'device_specs', 'rewrite_device_ports', 'crossbar_config', 'plugin_agents',
           'unknown_agent_class', 'stock_crossbar_config', 'link_code', 'CROSSBAR_DIR']

CROSSBAR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            'site-config', 'crossbar')
#: where, relative to crossbar's node directory, the router worker finds
#: ``ocs_locking`` (a directory holding only a link to this checkout's package:
#: the repository root would put tools/, tests/ ... on crossbar's path too)
CODE_DIR = 'code'


def link_code(cbdir):
    """Make ``<cbdir>/code/ocs_locking`` a link to the ``ocs_locking``
    package this process imports (from ``ocs_locking.__file__``), so that the
    router runs this checkout's component."""
    code = os.path.join(cbdir, CODE_DIR)
    os.makedirs(code, exist_ok=True)
    link = os.path.join(code, 'ocs_locking')
    target = os.path.dirname(os.path.abspath(ocs_locking.__file__))
    if os.path.islink(link) and os.readlink(link) == target:
        return link
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)
    return link


def stock_crossbar_config():
    """The path of ocs's stock crossbar config template (ocs's generated
    config: static roles, no bus component, no disclosure), for
    ``Site(..., crossbar_config=stock_crossbar_config())``."""
    return os.path.join(CROSSBAR_DIR, 'stock.json')


class SiteError(RuntimeError):
    """The site could not be started; the message says which part and why."""


def load_site(path):
    """The site config at ``path`` as a dict with ``hub`` and ``hosts`` mappings."""
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


def url_port(site_file, key, url):
    """The port of ``ws://127.0.0.1:18001/ws``; SiteError naming the key if none."""
    try:
        port = int(url.rsplit(':', 1)[1].split('/')[0])
    except (IndexError, ValueError):
        port = None
    if port is None or not 1 <= port <= 65535:
        raise SiteError(f'site config {site_file}: hub.{key} {url!r} has no port '
                        f'(expected e.g. ws://127.0.0.1:18001/ws)')
    return port


def check_port(port):
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SiteError(f'port must be an integer 0..65535 (0: a free one), not {port!r}')
    return port


def is_loopback(interface):
    if interface == 'localhost':
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def crossbar_config(cfg, port, where='crossbar config', address_root=None, standbys=None):
    """A copy of the crossbar config ``cfg`` (a dict) with every transport's
    endpoint on 127.0.0.1:``port``. Refuses a template that sets a port (it
    would be overwritten silently) or a non-loopback interface. A router
    running the bus component gets :data:`CODE_DIR` on its python path and,
    with ``address_root``, the site's address root in the component's extra
    (and with ``standbys``, the standby registries that may follow the registry)."""
    cfg = copy.deepcopy(cfg)
    workers = cfg.get('workers') if isinstance(cfg, dict) else None
    if not isinstance(workers, list):
        raise SiteError(f'{where}: needs a list of workers')
    for w, worker in enumerate(workers):
        for t, transport in enumerate(worker.get('transports', [])):
            endpoint = transport.setdefault('endpoint', {})
            at = f'{where}: workers[{w}].transports[{t}].endpoint'
            if 'port' in endpoint:
                raise SiteError(f'{at} sets port {endpoint["port"]!r}; remove it: the '
                                f'port comes from the site config (hub.wamp_server) '
                                f'or --port')
            interface = endpoint.get('interface', '127.0.0.1')
            if not is_loopback(interface):
                raise SiteError(f'{at}: interface {interface!r} is not loopback; '
                                f'the devsite serves 127.0.0.1 only')
            endpoint['port'] = port
            endpoint['interface'] = '127.0.0.1'
    if address_root is not None:
        for worker in filter(bus_config.uses_component, workers):
            for c in worker['components']:
                if isinstance(c, dict) and c.get('classname') == bus_config.COMPONENT_CLASS:
                    c.setdefault('extra', {})['address_root'] = address_root
                    if standbys:
                        c['extra']['standbys'] = list(standbys)
    return bus_config.add_pythonpath(cfg, CODE_DIR)


_PLUGIN_AGENTS = None


def plugin_agents():
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


def instance_specs(site_file, site_dir, entries):
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
        if isinstance(inst.get('arguments'), list):
            inst['arguments'] = resolve_file_args(inst['arguments'], site_dir)
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


#: Agent arguments naming a public file relative to the site config's
#: directory (the registry's ``--resources``): the work directory's copy of
#: the site config names it by its absolute path. (``--access-file`` is
#: copied instead, mode 0600: see ``tools.devsite.copy_access_files``.)
FILE_ARGS = ('--resources',)


def resolve_file_args(arguments, site_dir):
    """``arguments`` with each relative FILE_ARGS value made absolute
    against ``site_dir`` (the agent finds it wherever its site file is)."""
    out = []
    for arg in arguments:
        if isinstance(arg, list) and len(arg) == 2 and arg[0] in FILE_ARGS \
                and isinstance(arg[1], str) and not os.path.isabs(arg[1]):
            arg = [arg[0], os.path.normpath(os.path.join(site_dir, arg[1]))]
        out.append(arg)
    return out


def device_specs(site_file, entries):
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


def rewrite_device_ports(arguments, moved):
    """Point ``--device-port`` arguments at the devices' new ports."""
    out = []
    for arg in arguments:
        if isinstance(arg, list) and len(arg) == 2 and arg[0] == '--device-port' \
                and arg[1] in moved:
            arg = ['--device-port', moved[arg[1]]]
        out.append(arg)
    return out


def unknown_agent_class(instances):
    """The first instance whose agent-class no installed OCS plugin provides
    and that names no ``agent-file`` (ocs-agent-cli would die with a
    KeyError), as a SiteError; None if there is none."""
    for inst in instances:
        if not inst.get('agent-file') and inst['agent-class'] not in plugin_agents():
            return SiteError(
                f"instance {inst['instance-id']}: agent-class {inst['agent-class']!r} is not "
                f"provided by any installed OCS plugin ({', '.join(sorted(plugin_agents()))}); "
                f"for your own agent add 'agent-file: my_agent.py' (relative to the site "
                f"config) and 'entrypoint: main' to the instance")
    return None
