"""The registry's lease tasks with declared resources (``resources=`` /
``--resources``): unknown paths refused and audited, lease limits and
defaults, the tree in the leases data, the argument checks."""
import os
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

from ocs_locking.agents.lock_registry.leases import LeaseOps, check_arguments, resource_tree
from ocs_locking.leases.resource_file import site_agents
from ocs_locking.leases.resources import ResourceTree

from .test_lease_ops import Reactor, hold, run

NOW = 1_700_000_000.0
DECLARED = {'adhoc': False,
            'defaults': {'default_lease': 60, 'max_lease': 600},
            'resources': {'satp1/hwp': {'instances': ['hwp']},
                          'satp1/hwp/encoder': {'max_lease': 40, 'default_lease': 20},
                          'satp1/mount': {}}}


def make_ops(tmp_path, config=DECLARED):
    tree = ResourceTree.from_config(config, 'res.yaml')
    return LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'leases.db'), reactor=Reactor(),
                    clock=lambda: NOW, resources=tree)


@pytest.fixture
def ops(tmp_path):
    return make_ops(tmp_path)


def rpc(ops, resource, owner, **params):
    out = []
    ops._rpc_acquire(resource, owner, **params).addBoth(out.append)
    return out[0]


def refusals(ops):
    return run(ops, 'history', action='refuse')[1]['history']


def test_LeaseOps_unknown_resource_is_refused_with_the_suggestion_and_audited(ops):
    """When the task acquires an undeclared path one typo from a declared
    one, it is refused with the UnknownResource line, nothing is granted,
    and the refusal is in the audit log."""
    (ok, msg), data = run(ops, 'acquire', resource='satp1/hwpp', owner='alice')
    assert (ok, msg) == (False, "Refused: no resource 'satp1/hwpp'; did you mean 'satp1/hwp'?")
    assert data == {'error': "no resource 'satp1/hwpp'; did you mean 'satp1/hwp'?"}
    assert ops.state.holders() == ()
    [row] = refusals(ops)
    assert (row['resource'], row['owner'], row['ok']) == ('satp1/hwpp', 'alice', False)
    assert row['detail']['reason'] == "no resource 'satp1/hwpp'; did you mean 'satp1/hwp'?"


def test_LeaseOps_unknown_resource_over_the_procedure_is_the_same_line(ops):
    """When the lease procedure (WAMP and the HTTP bridge share it) asks for
    an undeclared path, the reply is the same refusal; one undeclared path in
    a multi-resource request refuses all of it."""
    reply = rpc(ops, ['satp1/mount', 'lab/cryostat'], 'bob')
    assert reply['ok'] is False
    assert reply['message'] == ("Refused: no resource 'lab/cryostat': it is none of the 3 the "
                                "site declares (ocs-locks resources lists them)")
    assert ops.state.holders() == ()


def test_LeaseOps_declared_resource_without_a_lease_gets_its_default(ops):
    """When an acquire gives no lease, the grant runs for the resource's
    default_lease (the defaults' 60 s here; a tree lease the smallest
    default of what it covers), and says so in its data."""
    (ok, _), data = run(ops, 'acquire', resource='satp1/mount', owner='alice')
    assert ok and data['lease'] == 60.0 and data['expires'] == NOW + 60
    reply = rpc(ops, 'satp1/hwp', 'bob', tree=True)
    assert reply['ok'] and reply['data']['lease'] == 20.0
    assert reply['data']['expires'] == NOW + 20


def test_LeaseOps_lease_over_the_max_is_refused_in_one_line(ops):
    """When the lease asked for is longer than the max_lease of a resource it
    covers (itself, or one below a tree lease), it is refused in one line
    naming that resource, and audited."""
    (ok, msg), _ = run(ops, 'acquire', resource='satp1/mount', owner='alice', lease=601)
    assert (ok, msg) == (False, "Refused: lease 601 s is longer than the max_lease 600 s of "
                                "resource 'satp1/mount'")
    reply = rpc(ops, 'satp1/hwp', 'bob', lease=60, tree=True)
    assert reply['message'] == ("Refused: lease 60 s is longer than the max_lease 40 s of "
                                "resource 'satp1/hwp/encoder'")
    assert len(refusals(ops)) == 2 and ops.state.holders() == ()


def test_LeaseOps_lease_within_the_max_is_granted_as_asked(ops):
    """When the lease asked for is within every covered max, it is granted
    for exactly that long."""
    data = hold(ops, 'satp1/hwp', 'alice', lease=600)
    assert data['lease'] == 600 and data['expires'] == NOW + 600


def test_LeaseOps_renewal_over_the_max_is_refused_and_keeps_the_lease(ops):
    """When a holder renews for longer than the max_lease of a resource its
    request covers (a tree lease: one below it too), the renewal is refused
    in one line and the lease keeps its expiry; within the max it renews."""
    data = hold(ops, 'satp1/hwp', 'alice', lease=30, tree=True)
    reply = ops._rpc_renew('satp1/hwp', data['lease_id'], lease=41)
    assert (reply['ok'], reply['message']) == (
        False, "Refused: lease 41 s is longer than the max_lease 40 s of resource "
               "'satp1/hwp/encoder'")
    assert ops.state.holders()[0].expires == NOW + 30
    (ok, _), renewed = run(ops, 'renew', resource='satp1/hwp', lease_id=data['lease_id'],
                           lease=40)
    assert ok and renewed['expires'] == NOW + 40


def test_LeaseOps_adhoc_tree_grants_undeclared_paths_with_the_default_lease(tmp_path):
    """When the tree allows ad-hoc paths, an undeclared one is granted (30 s
    when no lease is given and nothing declared covers it), a near miss of a
    declared one is still refused, and a tree lease on an undeclared parent
    is held to the declared children's limits."""
    ops = make_ops(tmp_path, dict(DECLARED, adhoc=True))
    (ok, _), data = run(ops, 'acquire', resource='lab/cryostat', owner='alice')
    assert ok and data['lease'] == 30.0
    (ok, msg), _ = run(ops, 'acquire', resource='satp1/mont', owner='alice')
    assert msg == "Refused: no resource 'satp1/mont'; did you mean 'satp1/mount'?"
    assert rpc(ops, 'satp1', 'bob', tree=True)['data']['lease'] == 20.0
    assert rpc(ops, 'satp2', 'bob', tree=True, lease=3600)['ok'] is True


def test_LeaseOps_without_resources_keeps_the_old_behaviour(tmp_path):
    """When no resources are given, every well-formed path is granted, an
    omitted lease is 30 s, and the leases data says nothing is declared."""
    ops = LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'l.db'), reactor=Reactor(),
                   clock=lambda: NOW)
    assert ops.resources.adhoc and len(ops.resources) == 0
    (ok, _), data = run(ops, 'acquire', resource='satp1/hwpp', owner='alice')
    assert ok and data['lease'] == 30.0 and data['expires'] == NOW + 30
    assert run(ops, 'leases')[1]['resources'] == {'adhoc': True, 'source': '',
                                                   'resources': []}


def test_LeaseOps_leases_data_carries_the_declared_tree(ops):
    """When the leases task runs, its data holds the declared tree under
    'resources', as ResourceTree.as_dict gives it (public: no lease id)."""
    hold(ops, 'satp1/hwp', 'alice')
    data = run(ops, 'leases')[1]
    assert data['resources'] == ops.resources.as_dict()
    assert [r['path'] for r in data['resources']['resources']] == \
        ['satp1/hwp', 'satp1/hwp/encoder', 'satp1/mount']
    assert 'lease_id' not in repr(data['resources'])


# -- --resources and the site check ------------------------------------------------

def write_site(tmp_path, instances=('hwp', 'lock-registry')):
    site = tmp_path / 'site'
    site.mkdir(exist_ok=True)
    data = {'hub': {}, 'hosts': {'h1': {'agent-instances': [
        {'agent-class': 'X', 'instance-id': i} for i in instances[:1]]},
        'h2': {'agent-instances': [
            {'agent-class': 'LockRegistryAgent', 'instance-id': i} for i in instances[1:]]}}}
    (site / 'default.yaml').write_text(yaml.safe_dump(data))
    (site / 'res.yaml').write_text(yaml.safe_dump(DECLARED))
    return site


def args_for(site, **kw):
    return SimpleNamespace(**dict({'site_file': str(site / 'default.yaml'),
                                   'resources': 'res.yaml'}, **kw))


def test_resources_argument_is_taken_from_the_site_directory(tmp_path, monkeypatch):
    """When --resources is relative, it is read from the site file's
    directory whatever the working directory, and checked against the
    instances of every host of the site file."""
    site = write_site(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = args_for(site)
    assert check_arguments(args) is None
    tree = resource_tree(args)
    assert tree.get('satp1/hwp').instances == ('hwp',)
    assert tree.source == str(site / 'res.yaml')
    assert resource_tree(args) is tree          # read once


def test_resources_naming_an_instance_the_site_lacks_is_one_line(tmp_path):
    """When a declared instance is not an agent of the site file, the
    registry's argument check is one line naming both files (main then
    exits non-zero, like any bad argument)."""
    site = write_site(tmp_path, instances=('hwpp', 'lock-registry'))
    assert check_arguments(args_for(site)) == (
        f"{site / 'res.yaml'}: resources[satp1/hwp].instances: no agent instance 'hwp' in the "
        f"site config {site / 'default.yaml'}; did you mean 'hwpp'?")


def test_resources_file_missing_or_malformed_is_one_line(tmp_path):
    """When the --resources file is missing or malformed, the argument check
    is its one line."""
    site = write_site(tmp_path)
    assert check_arguments(args_for(site, resources='none.yaml')) == (
        f"cannot read the resources file {site / 'none.yaml'}: No such file or directory")
    (site / 'bad.yaml').write_text('resources: {a: {lockout_levels: [4]}}\n')
    assert check_arguments(args_for(site, resources='bad.yaml')) == (
        f"{site / 'bad.yaml'}: resources[a].lockout_levels must hold credential levels 1..3, "
        f"not 4")


def test_resources_are_not_checked_against_a_site_file_that_cannot_be_read(tmp_path):
    """When the site file cannot be read, the declared instances are not
    checked (the tree is still loaded)."""
    site = write_site(tmp_path)
    os.remove(site / 'default.yaml')
    args = args_for(site)
    assert check_arguments(args) is None and len(resource_tree(args)) == 3


def test_no_resources_argument_is_the_adhoc_only_tree():
    """When --resources is not given, the tree declares nothing and allows
    every path."""
    tree = resource_tree(SimpleNamespace(site_file=None, resources=None))
    assert tree.adhoc and len(tree) == 0


def test_site_agents_reads_every_host(tmp_path):
    """When the site file has several hosts, site_agents maps every
    instance of each to its agent class; an unreadable file gives None."""
    site = write_site(tmp_path)
    assert site_agents(str(site / 'default.yaml')) == {'hwp': 'X',
                                                       'lock-registry': 'LockRegistryAgent'}
    assert site_agents(str(tmp_path / 'missing.yaml')) is None


def test_registry_status_carries_the_declared_tree_within_the_budget(tmp_path):
    """When the registry declares a tree near its JSON cap, the status task's
    data carries it whole under 'resources' and the reply stays within the
    message budget."""
    from ocs_locking.agents.lock_registry.agent import LockRegistryAgent
    from ocs_locking.leases.resources import MAX_TREE_JSON
    from ocs_locking.wire import MESSAGE_BUDGET, json_size

    from .test_registry_agent import FakeAgent, NowReactor
    big = {'adhoc': True, 'resources': {f'r/{i:04d}': {'description': 'd' * 150}
                                        for i in range(400)}}
    ops = make_ops(tmp_path, big)
    assert MAX_TREE_JSON / 2 < json_size(ops.resources.as_dict()) <= MAX_TREE_JSON
    reg = LockRegistryAgent(FakeAgent(), reactor=NowReactor())
    reg.leases = ops
    session = SimpleNamespace(data=None)
    reg.status(session, {})
    assert session.data['resources'] == ops.resources.as_dict()
    assert json_size(session.data) < MESSAGE_BUDGET
