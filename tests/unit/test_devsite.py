"""tools.devsite without starting anything: the site config and crossbar config
checks, the port's one place, own agent files, the command line."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tools import devsite
from tools.devsite import Site, SiteError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, 'site-config', 'default.yaml')
TEMPLATE = os.path.join(REPO, 'site-config', 'crossbar', 'config.json')
ACCESS = os.path.join(REPO, 'site-config', 'lock-registry-access.yaml')


def site(tmp_path, data=None, **kwargs):
    """A Site from ``data`` (default: the demo's site config) in tmp_path."""
    path = DEMO
    if data is not None:
        path = tmp_path / 'site.yaml'
        path.write_text(yaml.safe_dump(data))
        shutil.copy(ACCESS, tmp_path)       # the registry's --access-file, beside it
    return Site(str(path), 'demo', str(tmp_path / 'run'), crossbar=sys.executable, **kwargs)


def demo_data():
    with open(DEMO) as f:
        return yaml.safe_load(f)


def written_endpoints(s):
    with open(os.path.join(s.cbdir, 'config.json')) as f:
        cfg = json.load(f)
    return [t['endpoint'] for w in cfg['workers'] for t in w['transports']]


def test_port_comes_from_the_site_config_hub_by_default(tmp_path):
    """When no port is given, the router listens on hub.wamp_server's port
    and the crossbar config written for it says so, on 127.0.0.1."""
    s = site(tmp_path)
    assert s.port == 18001
    assert written_endpoints(s) == [{'type': 'tcp', 'interface': '127.0.0.1', 'port': 18001}]


def test_port_argument_moves_the_router_and_both_hub_urls(tmp_path):
    """When a port is given, it wins: the copied site config's wamp_server and
    wamp_http and the crossbar config all name it; the devices keep theirs."""
    s = site(tmp_path, port=18011)
    with open(s.site_file) as f:
        hub = yaml.safe_load(f)['hub']
    assert hub['wamp_server'] == 'ws://127.0.0.1:18011/ws'
    assert hub['wamp_http'] == 'http://127.0.0.1:18011/call'
    assert written_endpoints(s)[0]['port'] == 18011
    assert [d['port'] for d in s.devices] == [18101, 18102]


def test_port_zero_moves_router_and_devices_to_free_ports(tmp_path):
    """When the port is 0, the router and every device get free ports and the
    agents' --device-port arguments follow their devices."""
    s = site(tmp_path, port=0)
    assert s.port not in (0, 18001)
    ports = [d['port'] for d in s.devices]
    assert 18101 not in ports and 18102 not in ports
    args = [dict(a for a in i['arguments'] if isinstance(a, list)).get('--device-port')
            for i in s.instances if i['agent-class'] == 'SimulatedDeviceAgent']
    assert args == ports


def test_crossbar_template_carries_no_port(tmp_path):
    """When the shipped crossbar config is read, it has no port to be
    silently overwritten: the port lives in the site config only."""
    with open(TEMPLATE) as f:
        cfg = json.load(f)
    endpoints = [t['endpoint'] for w in cfg['workers'] for t in w['transports']]
    assert endpoints and all('port' not in e for e in endpoints)


def test_crossbar_template_with_a_port_is_refused(tmp_path):
    """When a crossbar config sets a port, the site is refused with one line
    saying where the port belongs."""
    with open(TEMPLATE) as f:
        cfg = json.load(f)
    cfg['workers'][0]['transports'][0]['endpoint']['port'] = 18001
    bad = tmp_path / 'config.json'
    bad.write_text(json.dumps(cfg))
    with pytest.raises(SiteError, match=r'^crossbar config .*config\.json: workers\[0\]\.'
                                        r'transports\[0\]\.endpoint sets port 18001; remove '
                                        r'it: the port comes from the site config'):
        site(tmp_path, crossbar_config=str(bad))


def test_crossbar_template_on_all_interfaces_is_refused(tmp_path):
    """When a crossbar config listens on a non-loopback interface, the site is
    refused: the devsite serves 127.0.0.1 only."""
    with open(TEMPLATE) as f:
        cfg = json.load(f)
    cfg['workers'][0]['transports'][0]['endpoint']['interface'] = '0.0.0.0'
    bad = tmp_path / 'config.json'
    bad.write_text(json.dumps(cfg))
    with pytest.raises(SiteError, match=r"interface '0\.0\.0\.0' is not loopback"):
        site(tmp_path, crossbar_config=str(bad))


def test_hub_urls_on_two_ports_are_refused(tmp_path):
    """When hub.wamp_http names another port than hub.wamp_server, the site is
    refused with one line naming both (one router serves both)."""
    data = demo_data()
    data['hub']['wamp_http'] = 'http://127.0.0.1:18002/call'
    with pytest.raises(SiteError, match=r'hub\.wamp_http port 18002 differs from '
                                        r'hub\.wamp_server port 18001'):
        site(tmp_path, data)


@pytest.mark.parametrize('port', [-1, 65536, 'x', True])
def test_bad_port_is_refused(tmp_path, port):
    """When the port is not an integer 0..65535, the site is refused."""
    with pytest.raises(SiteError, match=r'^port must be an integer 0\.\.65535'):
        site(tmp_path, port=port)


def test_port_option_rejects_a_bad_value(capsys):
    """When --port is not a port, the command line says so and exits 2."""
    with pytest.raises(SystemExit) as e:
        devsite.make_parser().parse_args(['run', '--port', '70000'])
    assert e.value.code == 2
    assert "--port: must be an integer 0..65535 (0: a free one), not '70000'" \
        in capsys.readouterr().err


def test_make_run_passes_port_to_the_devsite():
    """When `make run PORT=18011` runs, the devsite gets --port 18011; without
    PORT it gets no --port (the site config's port)."""
    def recipe(*extra):
        out = subprocess.run(['make', '-n', '-C', REPO, 'run', *extra], capture_output=True,
                             text=True, timeout=60).stdout
        return [line for line in out.splitlines() if 'tools.devsite run' in line][0]
    assert '--port 18011' in recipe('PORT=18011')
    assert '--port' not in recipe()


def test_unknown_agent_class_is_refused_before_anything_starts(tmp_path):
    """When an instance's agent-class is no installed plugin's and it names no
    agent-file (ocs-agent-cli would die with a KeyError), the site refuses it
    by name and says how to run one's own agent."""
    data = demo_data()
    data['hosts']['demo']['agent-instances'].append(
        {'agent-class': 'MyAgent', 'instance-id': 'mine', 'arguments': []})
    s = site(tmp_path, data)
    with pytest.raises(SiteError, match=r"^instance mine: agent-class 'MyAgent' is not "
                                        r"provided by any installed OCS plugin \(.*"
                                        r"LockRegistryAgent.*\); for your own agent add "
                                        r"'agent-file: my_agent.py'"):
        s.check_agents()
    assert s.router is None and s.agents == {}


def test_agent_file_is_started_with_agent_and_entrypoint(tmp_path):
    """When an instance names an agent-file, ocs-agent-cli gets --agent with
    the file's absolute path (resolved against the site config) and
    --entrypoint (default main), and the plugin check lets it through."""
    (tmp_path / 'mine.py').write_text('def main(args=None):\n    pass\n')
    data = demo_data()
    data['hosts']['demo']['agent-instances'].append(
        {'agent-class': 'MyAgent', 'instance-id': 'mine', 'agent-file': 'mine.py'})
    s = site(tmp_path, data)
    s.check_agents()
    cmd = s.agent_command('mine')
    i = cmd.index('--agent')
    assert cmd[i:i + 4] == ['--agent', str(tmp_path / 'mine.py'), '--entrypoint', 'main']
    assert '--agent' not in s.agent_command('sim-device-1')


@pytest.mark.parametrize('extra, complaint', [
    ({'agent-file': 'nope.py'}, r"agent-file 'nope\.py' not found \(looked for .*nope\.py\)"),
    ({'agent-file': 'mine.txt'}, r"agent-file must be the path of a \.py file, not 'mine\.txt'"),
    ({'agent-file': 'mine.py', 'entrypoint': 'not a name'},
     r"entrypoint must be a function name, not 'not a name'"),
    ({'entrypoint': 'main'}, r'entrypoint needs an agent-file'),
])
def test_bad_agent_file_settings_are_refused(tmp_path, extra, complaint):
    """When agent-file or entrypoint is wrong, the site is refused with one
    line naming the instance and the setting."""
    (tmp_path / 'mine.py').write_text('def main(args=None):\n    pass\n')
    (tmp_path / 'mine.txt').write_text('')
    data = demo_data()
    data['hosts']['demo']['agent-instances'].append(
        {'agent-class': 'MyAgent', 'instance-id': 'mine', **extra})
    with pytest.raises(SiteError, match=r'^site config .*: instance mine: ' + complaint):
        site(tmp_path, data)


def test_duplicate_instance_id_is_refused(tmp_path):
    """When two instances share an instance-id, the site is refused."""
    data = demo_data()
    data['hosts']['demo']['agent-instances'].append(
        dict(data['hosts']['demo']['agent-instances'][1]))
    with pytest.raises(SiteError, match=r"duplicate instance-id 'sim-device-1'"):
        site(tmp_path, data)


def test_own_agent_example_site_is_valid(tmp_path):
    """When the docs' own-agent example site config is read, its agent file
    resolves next to it and the plugin check passes."""
    s = Site(os.path.join(REPO, 'docs', 'examples', 'own_agent_site.yaml'), 'demo',
             str(tmp_path), crossbar=sys.executable)
    s.check_agents()
    assert s.instance('counter-1')['agent-file'] == os.path.join(
        REPO, 'docs', 'examples', 'own_agent.py')


def test_free_port_is_below_the_ephemeral_range_and_free():
    """When the devsite picks a port, it lies below the kernel's range for
    outgoing connections' local ports (so no client connection can take it
    first) and nothing listens on it."""
    import socket

    from tools.devsite import _ephemeral_range, free_port
    low = _ephemeral_range()[0]
    for _ in range(20):
        port = free_port()
        assert 20000 <= port < low
        with socket.socket() as s:
            s.bind(('127.0.0.1', port))


def test_demo_site_file_holds_no_password_and_the_access_file_is_copied_mode_0600(tmp_path):
    """When the demo site is set up, its site file (read by every client)
    holds no password and no override policy; the registry's access file is
    copied beside the work directory's site file, readable by its owner only;
    a missing access file is one line naming it."""
    s = site(tmp_path)
    for path in (DEMO, s.site_file):
        with open(path) as f:
            text = f.read()
        assert 'demo-operator' not in text and 'override:' not in text
        assert '--access-file' in text
    copy = os.path.join(s.workdir, 'lock-registry-access.yaml')
    assert os.stat(copy).st_mode & 0o777 == 0o600
    with open(copy) as f, open(ACCESS) as g:
        assert f.read() == g.read()
    data = demo_data()
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'site.yaml').write_text(yaml.safe_dump(data))
    with pytest.raises(SiteError, match=r"instance lock-registry: cannot copy --access-file "
                                        r"'lock-registry-access\.yaml' \(.*\): No such file"):
        Site(str(tmp_path / 'other' / 'site.yaml'), 'demo', str(tmp_path / 'run2'),
             crossbar=sys.executable)


def test_the_demo_router_serves_the_live_page_and_the_stock_one_does_not(tmp_path):
    """When the demo's crossbar config is written, the site knows the live
    page's address on its port (the banner prints it); ocs's stock config
    serves no page."""
    from tools.siteconfig import stock_crossbar_config
    s = site(tmp_path, port=18011)
    assert s.page_url == 'http://127.0.0.1:18011/locks/'
    with open(os.path.join(s.cbdir, 'config.json')) as f:
        paths = json.load(f)['workers'][0]['transports'][0]['paths']
    assert paths['locks']['package'] == 'ocs_locking.web'
    stock = Site(DEMO, 'demo', str(tmp_path / 'stock'), crossbar=sys.executable, port=18012,
                 crossbar_config=stock_crossbar_config())
    assert stock.page_url is None


def test_a_standby_registry_in_the_site_is_named_to_the_bus_component(tmp_path):
    """When the site starts a registry with --standby-for, the crossbar
    config written for it names that instance in the bus component's
    standbys (the router lets only it follow the registry)."""
    data = demo_data()
    data['hosts']['demo']['agent-instances'].append(
        {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry-b',
         'arguments': [['--db', 'b.db'], ['--standby-for', 'lock-registry']]})
    s = site(tmp_path, data)
    assert s.standbys == ['lock-registry-b']
    with open(os.path.join(s.cbdir, 'config.json')) as f:
        cfg = json.load(f)
    extras = [c['extra'] for w in cfg['workers'] for c in w.get('components', [])]
    assert extras and all(e['standbys'] == ['lock-registry-b'] for e in extras)
