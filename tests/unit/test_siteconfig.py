"""tools.siteconfig, pure: the crossbar config transformation, the plugin
check for agent classes, the hub's port."""
import pytest

from tools.siteconfig import SiteError, crossbar_config, unknown_agent_class, url_port

TEMPLATE = {'workers': [{'type': 'router', 'transports': [
    {'type': 'web', 'endpoint': {'type': 'tcp', 'interface': '127.0.0.1'}}]}]}


def test_crossbar_config_fills_in_port_and_loopback_without_touching_the_template():
    """When the template is filled in, the copy listens on 127.0.0.1:port and
    the template itself is unchanged."""
    cfg = crossbar_config(TEMPLATE, 18011)
    assert cfg['workers'][0]['transports'][0]['endpoint'] == \
        {'type': 'tcp', 'interface': '127.0.0.1', 'port': 18011}
    assert 'port' not in TEMPLATE['workers'][0]['transports'][0]['endpoint']


def test_crossbar_config_without_interface_gets_loopback():
    """When the template names no interface, the copy gets 127.0.0.1 (never
    all interfaces, crossbar's default)."""
    cfg = crossbar_config({'workers': [{'transports': [{'endpoint': {'type': 'tcp'}}]}]}, 1)
    assert cfg['workers'][0]['transports'][0]['endpoint']['interface'] == '127.0.0.1'


def test_crossbar_config_without_workers_is_refused():
    """When the template has no workers list, one line says so."""
    with pytest.raises(SiteError, match=r'^crossbar config: needs a list of workers$'):
        crossbar_config({'version': 2}, 18001)


def test_unknown_agent_class_names_the_first_unprovided_instance():
    """When instances are checked, plugin classes and agent files pass; the
    first class no plugin provides is named."""
    ok = [{'instance-id': 'r', 'agent-class': 'LockRegistryAgent'},
          {'instance-id': 'mine', 'agent-class': 'Mine', 'agent-file': '/x/mine.py'}]
    assert unknown_agent_class(ok) is None
    error = unknown_agent_class(ok + [{'instance-id': 'x', 'agent-class': 'Nope'}])
    assert str(error).startswith("instance x: agent-class 'Nope' is not provided by any "
                                 "installed OCS plugin")


@pytest.mark.parametrize('url', ['ws://127.0.0.1/ws', 'ws://127.0.0.1:0/ws',
                                 'ws://127.0.0.1:99999/ws', 'ws://h:port/ws'])
def test_url_without_a_valid_port_is_refused(url):
    """When a hub URL has no port 1..65535, the key and URL are named."""
    with pytest.raises(SiteError, match=r"^site config s\.yaml: hub\.wamp_server '.*' has "
                                        r"no port"):
        url_port('s.yaml', 'wamp_server', url)
