"""ocs-locks reserve / release / force-release / history without a site: a
fake registry client stands in for OCSClient (the registry's own side is
tested in tests/integration/test_leases.py)."""
from types import SimpleNamespace

import pytest
from ocs import ERROR, OK

from ocs_locking import cli
from ocs_locking.cli import leases as cli_leases
from ocs_locking.leases.paths import MAX_LEASE, MIN_LEASE

ROW = {'at': 1.0, 'action': 'grant', 'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
       'client': 'it', 'detail': {}, 'ok': True}


class FakeTask:
    """One registry task: records the params it is started with."""

    def __init__(self, ok=True, message='done', data=None, refuse=None):
        self.calls = []
        self.ok, self.message, self.data, self.refuse = ok, message, data or {}, refuse

    def start(self, **params):
        self.calls.append(params)
        if self.refuse is not None:         # refused by ocs before the task runs
            return SimpleNamespace(status=ERROR, msg=self.refuse, session={})
        return SimpleNamespace(status=OK, msg='started', session={'session_id': 1})

    def wait(self, timeout=None):
        return SimpleNamespace(status=OK, msg='', session={
            'session_id': 1, 'status': 'done', 'success': self.ok, 'data': self.data,
            'messages': [[0.0, self.message], [0.1, 'Status is now "done".']]})


@pytest.fixture
def registry(monkeypatch):
    """A fake registry: its tasks, and the privs each client was made with."""
    reg = SimpleNamespace(history=FakeTask(message='1 audit record(s).',
                                           data={'history': [ROW]}),
                          force_release=FakeTask(), release=FakeTask(), privs=[])

    def client(args, privs=None):
        reg.privs.append(privs)
        return reg
    monkeypatch.setattr(cli_leases, 'registry_client', client)
    return reg


def test_ocs_locks_history_sends_only_the_filters_given(registry, capsys):
    """When history runs with no filter, the task gets only kind all (the
    registry's defaults stand for the rest; --kind lease sends nothing, as
    an older registry expects); with filters, exactly those, since as an
    age in seconds and one action as a string."""
    assert cli.main(['history']) == 0
    assert cli.main(['history', '--kind', 'lease']) == 0
    assert cli.main(['history', 'satp1', '--owner', 'alice', '--action', 'grant',
                     '--since', '10m', '--limit', '5']) == 0
    assert registry.history.calls == [
        {'kind': 'all'}, {},
        {'kind': 'all', 'resource': 'satp1', 'owner': 'alice', 'action': 'grant',
         'since': 600.0, 'limit': 5}]
    assert capsys.readouterr().out.splitlines()[1].split()[2:5] == ['grant', 'satp1/hwp',
                                                                    'alice']


def test_ocs_locks_history_sends_several_actions_as_a_list(registry):
    """When --action is given several times, the task gets them as a list
    (a repeated one once)."""
    assert cli.main(['history', '--action', 'grant', '--action', 'expire',
                     '--action', 'grant']) == 0
    assert registry.history.calls == [{'kind': 'all', 'action': ['grant', 'expire']}]


@pytest.mark.parametrize('argv,error', [
    (['--action', 'granted'], "--action must be one of grant, queue, renew, release, "
                              "force_release, expire, timeout, cancel, preempt, notice, book, unbook, "
                              "missed, not 'granted'"),
    (['--since', 'yesterday'], "--since must be an age like 90, 30s, 10m, 2h or 1d, "
                               "not 'yesterday'"),
    (['--limit', '0'], '--limit must be 1..1000, not 0'),
    (['--limit', '1001'], '--limit must be 1..1000, not 1001'),
    (['--owner', ' '], "--owner must be 1..128 characters, not ' '"),
    (['Bad/Path'], None),
    (['--kind', 'lock', '--action', 'grant'], "--action filters the site leases' audit "
                                              "only: give --kind lease or all")])
def test_ocs_locks_history_bad_filter_is_one_line_and_asks_nothing(registry, capsys, argv,
                                                                   error):
    """When a history filter is not valid, one line names it and the
    registry is not asked."""
    assert cli.main(['history', *argv]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('ocs-locks: ')
    if error is not None:
        assert err == f'ocs-locks: {error}\n'
    assert registry.history.calls == []


def test_ocs_locks_history_of_an_older_registry_says_it_cannot_filter(registry, capsys):
    """When the registry's history task does not take a filter yet, one line
    says the registry needs updating."""
    registry.history.refuse = "params included unexpected values: ['since']"
    assert cli.main(['history', '--since', '1h']) == 1
    assert capsys.readouterr().err == (
        "ocs-locks: history: this registry cannot filter its history that way (params "
        "included unexpected values: ['since']); it needs a newer lock registry "
        "(or give --kind lease)\n")


SPAN = {'kind': 'lock', 'at': 1.0, 'id': '1-1', 'lock': 'sim-device-1/hw',
        'agent': 'sim-device-1', 'name': 'hw', 'job': 'acq', 'op': 'acq', 'session_id': 0,
        'start': 1.0, 'end': 158.0, 'holds': 1570, 'held': 151.2, 'longest': 0.2,
        'lent': 14, 'gave_up': 2, 'token': 1570, 'outcome': 'released'}


def test_ocs_locks_history_kind_lock_prints_spans(registry, capsys):
    """When --kind lock is asked, the spans print one line each: the lock,
    the holder and what the span held."""
    registry.history.data = {'history': [SPAN]}
    assert cli.main(['history', 'sim-device-1/hw', '--kind', 'lock', '--since', '1h']) == 0
    assert registry.history.calls == [{'kind': 'lock', 'resource': 'sim-device-1/hw',
                                       'since': 3600.0}]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['LOCK', 'HOLDER', 'HELD']
    assert lines[1].startswith('sim-device-1/hw  acq (session 0)  ')
    assert lines[1].endswith(' held 2m31s in 1570 holds (longest 0.2 s), lent 14 times, '
                             '2 gave up; released')


def test_ocs_locks_history_json_keeps_each_kinds_keys(registry, capsys):
    """When --json is asked for both kinds, each row has exactly its kind's
    documented keys."""
    import json
    from ocs_locking.cli.formatters import HISTORY_KEYS, SPAN_ROW_KEYS
    registry.history.data = {'history': [SPAN, dict(ROW, kind='lease')]}
    assert cli.main(['history', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [tuple(r) for r in rows] == [SPAN_ROW_KEYS, HISTORY_KEYS]


@pytest.mark.parametrize('lease', ['1e-9', '0', '-1', '0.49', '3600.1', 'inf', 'nan'])
def test_ocs_locks_reserve_lease_out_of_bounds_is_refused_before_any_call(lease, capsys):
    """When --lease is outside the registry's bounds, the CLI refuses it
    (before reading the site config or calling anything)."""
    assert cli.main(['reserve', 'x', '--lease', lease]) == 1
    assert capsys.readouterr().err == (f'ocs-locks: --lease must be {MIN_LEASE:g}..'
                                       f'{MAX_LEASE:g} seconds, not {float(lease):g}\n')


REFUSED = ('The action requires credential level 2-ADVANCED but the client has only '
           'level 1-BASIC')


def test_ocs_locks_force_release_with_a_wrong_password_says_wrong_password(registry, capsys,
                                                                           monkeypatch):
    """When the password given is refused by the registry, the line says
    "wrong password", not ocs's credential levels."""
    monkeypatch.delenv('OCS_LOCKS_PASSWORD', raising=False)
    registry.force_release.refuse = REFUSED
    assert cli.main(['force-release', 'satp1/hwp', '--reason', 'stuck', '--password',
                     'nope']) == 1
    assert capsys.readouterr().err == ("ocs-locks: force-release satp1/hwp: wrong password "
                                       "(the registry's force_release requires credential "
                                       "level 2)\n")
    assert registry.privs == ['nope']


def test_ocs_locks_force_release_without_a_password_says_how_to_give_one(
        registry, capsys, monkeypatch, tmp_path):
    """When no password is given (nor a password file found), the line says
    how to give one."""
    monkeypatch.delenv('OCS_LOCKS_PASSWORD', raising=False)
    monkeypatch.setenv('OCS_PASSWORDS_FILE', str(tmp_path / 'none.yaml'))
    registry.force_release.refuse = REFUSED
    assert cli.main(['force-release', 'satp1/hwp', '--reason', 'stuck']) == 1
    assert capsys.readouterr().err == (
        "ocs-locks: force-release satp1/hwp: the registry's force_release requires "
        "credential level 2: pass --password or set $OCS_LOCKS_PASSWORD\n")
    assert registry.privs == [None]


def test_ocs_locks_force_release_uses_the_ocs_password_file_when_there_is_one(
        registry, capsys, monkeypatch, tmp_path):
    """When no password is given but an ocs password file exists, ocs is asked
    for the level-2 password from it."""
    monkeypatch.delenv('OCS_LOCKS_PASSWORD', raising=False)
    pw = tmp_path / 'pw.yaml'
    pw.write_text('- default: true\n  password_2: pw\n')
    monkeypatch.setenv('OCS_PASSWORDS_FILE', str(pw))
    registry.force_release.message = 'Revoked satp1/hwp from bob: stuck'
    assert cli.main(['force-release', 'satp1/hwp', '--reason', 'stuck']) == 0
    assert capsys.readouterr().out == 'Revoked satp1/hwp from bob: stuck\n'
    assert registry.privs == [2]


@pytest.mark.parametrize('argv, message', [
    (['--timeout', '1e9'], 'timeout must be in [0, 1e+06] seconds, not 1000000000.0'),
    (['--note', 'x' * 501], 'note must be at most 500 characters, not 501: '),
])
def test_ocs_locks_reserve_argument_the_registry_refuses_is_one_line(argv, message, capsys,
                                                                     monkeypatch):
    """When an argument passes the CLI's own checks but not the lease rules
    (Reservation raises LeaseError), the CLI prints one line and exits 1
    instead of a traceback, before any call to the registry."""
    monkeypatch.setattr(cli_leases, 'load_site', lambda args: None)
    assert cli.main(['reserve', 'x', '--lease', '10'] + argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'ocs-locks: {message}') and err.count('\n') == 1, err


LEASE_ID = '0123456789abcdef' * 2


def test_ocs_locks_release_without_a_lease_id_is_refused_with_a_pointer_to_force_release(
        registry, capsys, monkeypatch):
    """When release is given no lease id (someone else's lease; or only the
    public token), one line says a lease id is needed and points to
    force-release, and nothing is asked of the registry."""
    monkeypatch.delenv('OCS_LOCKS_LEASE_ID', raising=False)
    assert cli.main(['release', 'satp1/hwp']) == 1
    assert cli.main(['release', 'satp1/hwp', '--token', '7']) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and registry.release.calls == []
    assert err[0] == ("ocs-locks: release satp1/hwp: releasing needs the lease_id its holder "
                      "was given; pass --lease-id or set $OCS_LOCKS_LEASE_ID; to end someone "
                      "else's lease: ocs-locks force-release satp1/hwp --reason TEXT "
                      "(credential level 2)")
    assert '(a token no longer releases a lease: tokens are public)' in err[1]


@pytest.mark.parametrize('lease_id, message', [
    ('abc', r'not 3 character\(s\) of something else$'),
    ('G' * 32, r'not 32 character\(s\) of something else$'),
])
def test_ocs_locks_release_bad_lease_id_is_one_line_without_it(registry, capsys, lease_id,
                                                                message):
    """When --lease-id is malformed, one line says how (never echoing it)
    and nothing is asked of the registry."""
    assert cli.main(['release', 'satp1/hwp', '--lease-id', lease_id]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and __import__('re').search(message, err.strip())
    assert lease_id not in err and registry.release.calls == []


def test_ocs_locks_release_sends_the_lease_id_from_the_environment(registry, capsys,
                                                                   monkeypatch):
    """When $OCS_LOCKS_LEASE_ID holds the lease id, release sends it (not
    printed) and prints the registry's message."""
    monkeypatch.setenv('OCS_LOCKS_LEASE_ID', LEASE_ID)
    registry.release.message = 'Released satp1/hwp.'
    assert cli.main(['release', 'satp1/hwp']) == 0
    out = capsys.readouterr()
    assert out.out == 'Released satp1/hwp.\n' and LEASE_ID not in out.out + out.err
    [params] = registry.release.calls
    assert params['lease_id'] == LEASE_ID and params['resource'] == 'satp1/hwp'


def test_ocs_locks_history_shows_who_verified_or_declared(registry, capsys):
    """When audit rows carry a caller, history prints it in the BY column
    (declared ones marked) and --json has the caller key."""
    registry.history.data = {'history': [
        dict(ROW, caller={'identity': 'sim-device-1', 'verified': True, 'via': 'wamp'}),
        dict(ROW, action='force_release', caller={'identity': 'ocs-locks force-release (al@h)',
                                                  'verified': False, 'via': 'ocs-task'})]}
    assert cli.main(['history']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'BY' in lines[0].split() and lines[1].split()[7] == 'sim-device-1'
    assert 'ocs-locks force-release (al@h) (declared)' in lines[2]
    assert cli.main(['history', '--json']) == 0
    rows = __import__('json').loads(capsys.readouterr().out)
    assert rows[0]['caller']['identity'] == 'sim-device-1'


@pytest.mark.parametrize('argv, error', [
    (['--reason', ' ', '--grace', '5'], 'ocs-locks: --reason must not be empty'),
    (['--reason', 'x', '--grace', '-1'], 'ocs-locks: --grace must be 0..3600 seconds, not -1'),
    (['--reason', 'x', '--grace', '3601'],
     'ocs-locks: --grace must be 0..3600 seconds, not 3601')])
def test_ocs_locks_preempt_bad_arguments_are_one_line_before_any_call(argv, error, capsys):
    """When preempt is given an empty reason or a grace out of bounds, one
    line says so (before reading the site config or calling anything)."""
    assert cli.main(['preempt', 'satp1/hwp', *argv]) == 1
    assert capsys.readouterr().err == error + '\n'
