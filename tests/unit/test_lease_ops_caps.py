"""Leases as capabilities and who did it, in the registry's lease calls,
without a router: the real LeaseOps on an SQLite file, WAMP call details and
ocs sessions stood in for (the router side: tests/integration/test_leases.py)."""
import os
import re
from types import SimpleNamespace
from unittest import mock

import pytest
from ocs import access

from ocs_locking.agents.lock_registry.leases import (LeaseOps, caller_of, check_arguments,
                                                     load_access_file)
from ocs_locking.errors import LeaseStoreError
from ocs_locking.testing import FakeSession, _params

from ..support import FakeReactor

UNISSUED = 'f' * 32


class Reactor(FakeReactor):
    def callWhenRunning(self, f, *a, **kw):
        f(*a, **kw)


def details(session, role='iocs_agent'):
    """WAMP CallDetails as autobahn passes them (``details_arg``)."""
    return SimpleNamespace(caller=session, caller_authrole=role, caller_authid=None)


@pytest.fixture
def agents():
    return {77: 'sim-device-1'}


@pytest.fixture
def ops(tmp_path, agents):
    agent = mock.MagicMock(name='agent')
    agent.agent_address = 'observatory.lock-registry'
    return LeaseOps(agent, str(tmp_path / 'leases.db'), reactor=Reactor(),
                    identify=agents.get)


def rpc(ops, name, *args, **kwargs):
    out = getattr(ops, f'_rpc_{name}')(*args, **kwargs)
    if hasattr(out, 'addBoth'):
        got = []
        out.addBoth(got.append)
        out = got[0]
    return out


def task(ops, name, cred_level=1, **params):
    fn = getattr(ops, name)
    session = FakeSession(name)
    session.cred_level = cred_level
    result = fn(session, _params(fn, params))
    if hasattr(result, 'addBoth'):
        got = []
        result.addBoth(got.append)
        result = got[0]
    return result, session


def history(ops, action=None):
    return [r for r in ops.store.history(limit=None) if action in (None, r['action'])]


def test_lease_procedures_are_registered_with_call_details(ops):
    """When the registry joins, each lease procedure is registered with
    ``details_arg='details'``, so it learns the caller the router discloses."""
    ready = next(c.args[1] for c in ops.agent.on.call_args_list if c.args[0] == 'ready')
    ready(None)
    calls = ops.agent.register.call_args_list
    assert sorted(c.args[1].rsplit(".", 1)[1] for c in calls) == [
        "acquire", "preempt", "release", "renew", "watch"]
    assert {c.kwargs['options'].details_arg for c in calls} == {'details'}


def test_acquire_procedure_returns_a_lease_id_that_renews_and_releases(ops):
    """When a holder acquires through the procedure, the reply has a
    32-hex-digit lease_id; renew and release with it succeed."""
    grant = rpc(ops, 'acquire', 'hwp', 'a', details=details(77))['data']
    assert re.fullmatch(r'[0-9a-f]{32}', grant['lease_id'])
    assert rpc(ops, 'renew', 'hwp', grant['lease_id'], 10, details=details(77))['ok']
    assert rpc(ops, 'release', 'hwp', grant['lease_id'], details=details(77))['ok']
    assert ops.state.holders() == ()


def test_third_party_with_only_the_token_cannot_renew_or_release(ops):
    """When another client renews or releases with the public token only (or
    a made-up lease id), it is refused in one line, the lease is unchanged,
    and each refusal is counted and audited (caller named, no lease id)."""
    grant = rpc(ops, 'acquire', 'hwp', 'a', lease=30, details=details(77))['data']
    before = ops.state.snapshot()
    answers = [rpc(ops, 'renew', 'hwp', token=grant['token'], details=details(91)),
               rpc(ops, 'release', 'hwp', token=grant['token'], details=details(91)),
               rpc(ops, 'release', 'hwp', UNISSUED, details=details(92)),
               rpc(ops, 'renew', 'hwp', grant['token'], details=details(93))]
    assert [a['ok'] for a in answers] == [False] * 4
    assert answers[0]['message'].startswith('Refused: lease_id is required: ')
    assert answers[2]['message'].startswith("Refused: that lease_id does not hold 'hwp' "
                                            "(held by 'a', token 1)")
    assert answers[3]['message'] == ('Refused: lease_id must be a string of 32 hex digits, '
                                     'not a int')
    assert all('\n' not in a['message'] for a in answers)
    assert ops.state.snapshot() == before
    assert ops.refused_lease_ids == {'renew': 2, 'release': 2}
    refusals = history(ops, 'refuse')
    assert {r['caller']['identity'] for r in refusals} == {'wamp session 91',
                                                           'wamp session 92',
                                                           'wamp session 93'}
    assert grant['lease_id'] not in repr(ops.store.history(limit=None))
    assert task(ops, 'leases')[1].data['refused_lease_ids'] == {'renew': 2, 'release': 2}


def test_audit_names_the_verified_agent_or_session_and_marks_declared_callers(ops):
    """When the router discloses the caller, the grant row names its agent
    (or its WAMP session), verified; an HTTP-bridge caller and an
    undisclosed one are recorded as what they declare, not verified."""
    rpc(ops, 'acquire', 'a', 'x', client='anything', details=details(77))
    rpc(ops, 'acquire', 'b', 'x', details=details(78))
    rpc(ops, 'acquire', 'c', 'bob', client='sched-4', details=details(5, 'iocs_controller'))
    rpc(ops, 'acquire', 'd', 'eve', client='claims-to-be-bob', details=None)
    callers = {r['resource']: r['caller'] for r in history(ops, 'grant')}
    assert (callers['a']['identity'], callers['a']['verified'], callers['a']['declared']) == \
        ('sim-device-1', True, 'anything')
    assert (callers['b']['identity'], callers['b']['verified']) == ('wamp session 78', True)
    assert (callers['c']['identity'], callers['c']['verified'], callers['c']['via']) == \
        ('sched-4', False, 'http-bridge')
    assert (callers['d']['identity'], callers['d']['verified']) == ('claims-to-be-bob', False)


def test_caller_of_survives_a_failing_identify_and_malformed_details():
    """When identify raises or the details are malformed, the caller is the
    session (or declared), never an exception."""
    def boom(session):
        raise KeyError(session)
    assert caller_of(details(3), 'c', boom)['identity'] == 'wamp session 3'
    assert caller_of(details('3'), 'c')['verified'] is False
    assert caller_of(details(True), 7)['identity'] == 'unknown'


def test_acquire_task_never_shows_a_lease_id_and_says_where_to_get_one(ops):
    """When the OCS acquire task grants (its session is public), neither its
    data nor its message holds a lease id; the message names the procedure;
    the audit row marks the task caller as declared, with its credential
    level."""
    (ok, msg), session = task(ops, 'acquire', resource='hwp', owner='alice', client='me')
    assert ok and 'lease_id' not in session.data
    assert 'No lease_id (task results are public)' in msg
    assert 'observatory.lock-registry.lease.acquire' in msg
    [row] = history(ops, 'grant')
    assert row['caller'] == {'identity': 'me', 'verified': False, 'via': 'ocs-task',
                             'cred_level': 1}


def test_force_release_records_who_and_why(ops):
    """When an operator force-releases, the row says who (declared, with the
    credential level) and why; a missing reason is refused in one line and
    nothing changes."""
    rpc(ops, 'acquire', 'hwp', 'a', details=details(77))
    (ok, msg), _ = task(ops, 'force_release', cred_level=2, resource='hwp', reason=' ',
                        client='ocs-locks force-release (carol@ctl)')
    assert not ok and msg == 'Refused: reason must not be empty' and ops.state.holders()
    (ok, msg), _ = task(ops, 'force_release', cred_level=2, resource='hwp',
                        reason='pump stuck', client='ocs-locks force-release (carol@ctl)')
    assert ok
    [row] = history(ops, 'force_release')
    assert row['owner'] == 'ocs-locks force-release (carol@ctl) (declared, cred_level 2)'
    assert (row['detail']['holder'], row['detail']['reason']) == ('a', 'pump stuck')
    assert row['caller'] == {'identity': 'ocs-locks force-release (carol@ctl)',
                             'verified': False, 'via': 'ocs-task', 'cred_level': 2}


def test_no_lease_id_in_tables_history_logs_or_the_database_file(ops, tmp_path):
    """When a lease is taken, renewed and released (and a third party is
    refused), the lease id appears in no task data, audit row, log call or
    byte of the database files; only its hash is stored."""
    grant = rpc(ops, 'acquire', 'hwp', 'a', details=details(77))['data']
    lid = grant['lease_id']
    public = [task(ops, 'leases')[1].data]
    rpc(ops, 'renew', 'hwp', lid, details=details(77))
    rpc(ops, 'renew', 'hwp', lid[::-1], details=details(9))
    public += [task(ops, 'leases')[1].data, task(ops, 'history', limit=50)[1].data]
    rpc(ops, 'release', 'hwp', lid, details=details(77))
    public += [task(ops, 'history', limit=50)[1].data, repr(ops.agent.log.mock_calls)]
    ops.close()
    raw = b''.join(open(os.path.join(tmp_path, f), 'rb').read() for f in os.listdir(tmp_path))
    assert lid not in repr(public) and lid.encode() not in raw
    assert lid[::-1] not in repr(public) and lid[::-1].encode() not in raw


DEMO = {'passwords': [{'default': True,
                       'password_2': {'hash': 'md5', 'value': '3958d197a20525c8'},
                       'password_3': 'admin-pw'}]}


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_access_file_gives_level_2_to_its_password_and_level_1_to_anyone(tmp_path):
    """When the registry is given an access file (hashed or clear text
    passwords), ocs's access control answers level 2 for the level-2
    password, 3 for the level-3 one, 1 for anyone else."""
    import yaml
    agent = mock.MagicMock(name='agent', instance_id='lock-registry',
                           class_name='LockRegistryAgent', access_data={'policy': 'none'})
    path = write(tmp_path / 'access.yaml', yaml.safe_dump(DEMO))
    LeaseOps(agent, ':memory:', reactor=Reactor(), access_file=path)
    rules = agent.access_config

    def level(password):
        return access.agent_get_creds(password, rules, rules.agent)[0].value
    assert (level('demo-operator'), level('admin-pw'), level(None), level('guess')) == \
        (2, 3, 1, 1)
    assert agent.access_data['policy'] == 'override'


@pytest.mark.parametrize('text, message', [
    (None, r"^cannot read the access file '.*/access\.yaml': No such file or directory$"),
    ('passwords: [\n', r"^the access file '.*' is not YAML \(line 2\)$"),
    ('- a\n', r"^the access file '.*' must be a mapping with 'passwords': a list of ocs "),
    ('passwords: []\nsecret: 1\n', r"^the access file '.*' must be a mapping with "),
    ('passwords: [{password_2: x}]\nsecret: 1\n', r"^the access file '.*' has unknown key\(s\) "
                                                  r"secret; known: passwords, "),
    ('passwords: [{password_2: {hash: sha9, value: x}}]\n',
     r"^the access file '.*': passwords\[0\]\.password_2 hash must be one of none, blocked, "),
    ('passwords: [7]\n', r"^the access file '.*': passwords\[0\] must be a mapping$"),
])
def test_bad_access_file_is_one_line_and_never_shows_a_password(tmp_path, text, message):
    """When the access file is missing, not YAML or not an ocs password
    list, the registry's argument check answers one line (no password in
    it) and LeaseOps refuses to start with the same line."""
    path = tmp_path / 'access.yaml'
    if text is not None:
        write(path, text)
    args = SimpleNamespace(site_file=str(tmp_path / 'site.yaml'), access_file='access.yaml',
                           access_policy=None)
    complaint = check_arguments(args)
    assert complaint is not None and re.match(message, complaint), complaint
    assert '\n' not in complaint and 'sha9' not in complaint.split('must be')[0]
    with pytest.raises(LeaseStoreError, match=message):
        LeaseOps(mock.MagicMock(), ':memory:', reactor=Reactor(), access_file=str(path))


def test_access_file_and_access_policy_together_are_refused(tmp_path):
    """When both --access-file and --access-policy are given, one line says
    to give one."""
    args = SimpleNamespace(site_file=str(tmp_path / 's.yaml'), access_file='a.yaml',
                           access_policy='override:x,y')
    assert check_arguments(args) == ('--access-file and --access-policy both set the '
                                     'passwords: give one')


def test_access_file_readable_by_others_is_warned_about(tmp_path):
    """When the access file is readable by others, the registry logs one
    warning saying to chmod 600 it (and still uses it)."""
    import yaml
    agent = mock.MagicMock(name='agent', instance_id='r', class_name='LockRegistryAgent')
    path = write(tmp_path / 'access.yaml', yaml.safe_dump(DEMO), mode=0o644)
    LeaseOps(agent, ':memory:', reactor=Reactor(), access_file=path)
    [warning] = agent.log.warn.call_args_list
    assert 'chmod 600' in warning.args[0] and warning.kwargs['mode'] == 0o644
    assert len(load_access_file(path)) == 3
