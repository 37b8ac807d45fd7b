"""ocs-locks without a site: table formatting, JSON rows and bad input."""
import json

import pytest

from ocs_locking import cli

ROWS = [
    {'lock': 'dev-1/hw', 'agent': 'dev-1', 'job': 'acq', 'session_id': 3, 'since': 90.0,
     'waiters': 1, 'alive': True, 'token': 4},
    {'lock': 'dev-2/hw', 'agent': 'dev-2', 'job': None, 'session_id': None, 'since': None,
     'waiters': 0, 'alive': False, 'token': 0},
]


def test_format_table_shows_holder_time_waiters_and_liveness():
    """When rows are printed, each shows holder and session, held-for, waiters,
    and alive or STALE; a free lock shows (free)."""
    lines = cli.format_table(ROWS, now=100.0).splitlines()
    assert lines[0].split() == ['LOCK', 'HOLDER', 'HELD', 'FOR', 'WAITERS', 'AGENT']
    assert lines[1].split() == ['dev-1/hw', 'acq', '(session', '3)', '10.0', 's', '1', 'alive']
    assert lines[2].split() == ['dev-2/hw', '(free)', '-', '0', 'STALE']
    assert cli.format_table([]).splitlines()[-1] == '(no locks reported yet)'


def test_json_rows_keep_exactly_the_documented_keys():
    """When rows are printed as JSON, each has exactly the contract's keys."""
    rows = json.loads(json.dumps(cli.json_rows(ROWS)))
    assert [sorted(r) for r in rows] == [sorted(cli.JSON_KEYS)] * 2
    assert rows[0]['session_id'] == 3


def test_ocs_locks_without_a_command_is_a_usage_error(capsys):
    """When no command is given, argparse prints usage and exits 2."""
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert 'the following arguments are required: command' in capsys.readouterr().err


def test_ocs_locks_without_a_site_config_says_so(monkeypatch, capsys):
    """When there is no site file and no OCS_CONFIG_DIR, one line says so."""
    monkeypatch.delenv('OCS_CONFIG_DIR', raising=False)
    assert cli.main(['status']) == 1
    assert capsys.readouterr().err == ('ocs-locks: no site config: pass --site-file or '
                                       'set OCS_CONFIG_DIR\n')


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
