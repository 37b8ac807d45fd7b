"""ocs-locks without a site: main, table formatting, JSON rows and bad input
(the modules of the package have their own test_cli_<module>.py)."""
import io
import sys

import pytest

from ocs_locking import cli

def test_ocs_locks_without_a_command_is_a_usage_error(capsys):
    """When no command is given, argparse prints usage and exits 2."""
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert 'the following arguments are required: COMMAND' in capsys.readouterr().err


def test_ocs_locks_without_a_site_config_says_so(monkeypatch, capsys):
    """When there is no site file and no OCS_CONFIG_DIR, one line says so."""
    monkeypatch.delenv('OCS_CONFIG_DIR', raising=False)
    assert cli.main(['status']) == 1
    assert capsys.readouterr().err == (
        'ocs-locks: no site config: pass --site-file FILE (e.g. --site-file '
        'site-config/default.yaml --site-host demo for the demo site) or set OCS_CONFIG_DIR '
        'to a directory holding default.yaml\n')


def test_ocs_locks_watch_rejects_a_bad_count(capsys):
    """When --count is below 1, one line says so before connecting."""
    assert cli.main(['watch', '--count', '0']) == 1
    assert capsys.readouterr().err == 'ocs-locks: --count must be at least 1, not 0\n'


def test_ocs_locks_with_an_unreadable_site_file_says_so(tmp_path, capsys):
    """When the site file is not valid, one line names the problem."""
    bad = tmp_path / 'site.yaml'
    bad.write_text('hub: {}\nhosts: {}\n')
    assert cli.main(['--site-file', str(bad), 'status']) == 1
    assert capsys.readouterr().err == ("ocs-locks: the site config's hub lacks wamp_server, "
                                       "wamp_http, wamp_realm, address_root\n")
    bad.write_text('hub: [\n')
    assert cli.main(['--site-file', str(bad), 'status']) == 1
    err = capsys.readouterr().err
    assert err.startswith('ocs-locks: the site config is not valid: ParserError: ')
    assert err.count('\n') == 1
    assert cli.main(['--site-file', str(tmp_path / 'nope.yaml'), 'status']) == 1
    assert capsys.readouterr().err == (f"ocs-locks: cannot read the site config: No such "
                                       f"file or directory: {tmp_path / 'nope.yaml'}\n")


class Unreachable:
    """Stands in for OCSClient: any network call fails the test."""

    def __init__(self, *args, **kwargs):
        raise AssertionError('ocs-locks reached the network')


@pytest.fixture
def no_network(monkeypatch):
    import ocs.ocs_client
    monkeypatch.setattr(ocs.ocs_client, 'OCSClient', Unreachable)


@pytest.mark.parametrize('name', ['', 'a b/c', 'x.y', 'x' * 65, 'lock registry'])
def test_ocs_locks_bad_registry_name_is_refused_before_any_network_call(name, capsys,
                                                                          no_network):
    """When --registry cannot be an instance-id, one line says so (not an
    HTTP 500 from the router) and nothing is asked of the network."""
    assert cli.main(['--registry', name, 'status']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'ocs-locks: no such registry name {name!r:.70}: an instance-id '
                          'is 1-64 letters, digits, _ or -')
    assert err.count('\n') == 1


def write_site(tmp_path):
    site = tmp_path / 'site.yaml'
    site.write_text("""
hub:
  wamp_server: ws://127.0.0.1:1/ws
  wamp_http: http://127.0.0.1:1/call
  wamp_realm: test_realm
  address_root: observatory
hosts:
  demo:
    agent-instances:
      - {agent-class: LockRegistryAgent, instance-id: lock-registry}
      - {agent-class: SimulatedDeviceAgent, instance-id: sim-device-1}
""")
    return ['--site-file', str(site), '--site-host', 'demo']


class NotOnTheRouter:
    """Stands in for OCSClient: the router has no such agent."""
    calls = []

    def __init__(self, instance_id, **kwargs):
        self.calls.append(instance_id)
        raise Exception([0, 1, 2, 3, 'wamp.error.no_such_procedure', ['no callee'], {}])


@pytest.fixture
def empty_router(monkeypatch):
    import ocs.ocs_client
    NotOnTheRouter.calls = []
    monkeypatch.setattr(ocs.ocs_client, 'OCSClient', NotOnTheRouter)
    return NotOnTheRouter


def test_ocs_locks_near_miss_of_an_instance_gets_a_did_you_mean(tmp_path, capsys,
                                                                  empty_router):
    """When the router has no agent named --registry and the name is a typo
    of an instance in the site config, one line names the likely one."""
    assert cli.main(['--registry', 'lock-regsitry', *write_site(tmp_path), 'status']) == 1
    assert capsys.readouterr().err == \
        "ocs-locks: no such agent 'lock-regsitry'; did you mean 'lock-registry'?\n"
    assert empty_router.calls == ['lock-regsitry']     # a real registry of that name wins


def test_ocs_locks_site_options_work_after_the_command(tmp_path, capsys, empty_router):
    """When the site options follow the command, they are used just as
    before it (here: the did-you-mean needs the site file)."""
    assert cli.main(['status', *write_site(tmp_path), '--registry', 'lock-regsitry']) == 1
    assert 'did you mean' in capsys.readouterr().err


def test_ocs_locks_far_from_every_instance_says_it_is_not_running(tmp_path, capsys,
                                                                   empty_router):
    """When --registry is far from every instance in the site config, the
    line says the router has no such agent, with no guess."""
    assert cli.main(['--registry', 'no-such-registry', *write_site(tmp_path), 'status']) == 1
    assert capsys.readouterr().err == (
        "ocs-locks: cannot reach the lock registry 'no-such-registry' at "
        "http://127.0.0.1:1/call: it is not running (no such agent on the router)\n")


def test_ocs_locks_registry_not_in_the_site_config_is_still_asked(tmp_path, monkeypatch,
                                                                   capsys):
    """When --registry is not in the site config, it is asked anyway (it may
    run elsewhere): the failure is the network's."""
    calls = []

    class Refused:
        def __init__(self, instance_id, **kwargs):
            calls.append(instance_id)
            raise OSError('Failed to connect')
    import ocs.ocs_client
    monkeypatch.setattr(ocs.ocs_client, 'OCSClient', Refused)
    assert cli.main(['--registry', 'lock-registry-2', *write_site(tmp_path), 'status']) == 1
    assert calls == ['lock-registry-2']
    assert capsys.readouterr().err == ("ocs-locks: cannot reach the lock registry "
                                       "'lock-registry-2' at http://127.0.0.1:1/call: "
                                       "Failed to connect\n")


class ClosedPipe(io.TextIOBase):
    """A stdout whose reader has gone (| head)."""

    def write(self, text):
        raise BrokenPipeError(32, 'Broken pipe')

    def fileno(self):
        raise io.UnsupportedOperation('no fileno')


def test_ocs_locks_closed_stdout_ends_quietly(monkeypatch, capsys):
    """When stdout's reader has gone, the command ends with status 0 and
    nothing on stderr (no BrokenPipeError traceback)."""
    monkeypatch.setattr(cli, 'COMMANDS', dict(cli.COMMANDS, status=lambda args: print('x' * 10)))
    monkeypatch.setattr(sys, 'stdout', ClosedPipe())
    assert cli.main(['status']) == 0
    assert capsys.readouterr().err == ''



class GoneTerminal(ClosedPipe):
    """A stdout whose terminal was closed (writes fail with EIO)."""

    def write(self, text):
        raise OSError(5, 'Input/output error')


def test_ocs_locks_closed_terminal_ends_quietly(monkeypatch, capsys):
    """When the terminal is gone (SIGHUP, then EIO on every write), the
    command ends with status 0 and no traceback."""
    monkeypatch.setattr(cli, 'COMMANDS', dict(cli.COMMANDS, status=lambda args: print('x')))
    monkeypatch.setattr(sys, 'stdout', GoneTerminal())
    assert cli.main(['status']) == 0
    assert capsys.readouterr().err == ''
