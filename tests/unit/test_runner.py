"""tools.runner without a site: the banner, the watch's header, and lines to
a terminal that is gone."""
import sys
from types import SimpleNamespace

from tools import runner


def fake_site():
    return SimpleNamespace(
        workdir='/w', port=18001, realm='test_realm',
        devices=[{'name': 'bridge-1', 'port': 18101, 'channels': 4}],
        instances=[{'instance-id': 'lock-registry', 'agent-class': 'LockRegistryAgent'},
                   {'instance-id': 'sim-device-1', 'agent-class': 'SimulatedDeviceAgent'}],
        agents={'lock-registry': SimpleNamespace(pid=11), 'sim-device-1': SimpleNamespace(pid=12)},
        client_args=['--site-file', '/w/site.yaml', '--site-host', 'demo'],
        page_url='http://127.0.0.1:18001/locks/')


def test_banner_names_every_part_and_the_commands_to_talk_to_it():
    """When the site is up, the banner gives the router, each device and agent
    (with its pid), a set_heater call, ocs-locks status and how to stop."""
    lines = runner.banner(fake_site()).splitlines()
    assert lines[1].split() == ['crossbar', 'router', 'ws://127.0.0.1:18001/ws', '(HTTP',
                                'calls:', 'http://127.0.0.1:18001/call,', 'realm',
                                'test_realm)']
    assert lines[2].split()[:3] == ['live', 'page', 'http://127.0.0.1:18001/locks/']
    assert 'bridge-1          simulated device on 127.0.0.1:18101 (4 channels)' in lines[3]
    assert lines[5].strip() == 'sim-device-1      SimulatedDeviceAgent (pid 12)'
    assert "OCSClient('sim-device-1', args=['--site-file', '/w/site.yaml'" in lines[8]
    assert lines[9].strip() == \
        '.venv/bin/ocs-locks --site-file /w/site.yaml --site-host demo status'
    assert lines[-1] == 'Ctrl-C stops everything this command started.'


def test_a_site_without_the_page_has_no_page_line():
    """When the router serves no page (ocs's stock config), the banner says nothing of one."""
    site = fake_site()
    site.page_url = None
    assert 'live page' not in runner.banner(site)


def test_watch_header_is_the_banner_then_every_notice():
    """When notices are added, the watch's header keeps the banner first and
    the notices below it, in order."""
    watch = runner.Watch(fake_site(), 'BANNER')
    watch.notes += ['devsite: one exited', 'devsite: two exited']
    assert watch.header() == 'BANNER\ndevsite: one exited\ndevsite: two exited'


def test_screen_drops_lines_once_the_terminal_is_gone(monkeypatch):
    """When writing to the terminal fails (it was closed: SIGHUP), later lines
    are dropped instead of raising in the middle of the shutdown."""
    writes = []

    class Closed:
        def write(self, text):
            writes.append(text)
            raise OSError(5, 'Input/output error')

        def flush(self):
            pass
    monkeypatch.setattr(sys, 'stdout', Closed())
    screen = runner.Screen()
    screen.say('one')
    screen.say('two')
    assert screen.gone and writes == ['one\n']
