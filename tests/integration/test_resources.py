"""Declared resources on a real registry: the demo site's config and its
resources file (site-config/lock-registry-resources.yaml), crossbar on
loopback, the registry under ocs-agent-cli; clients over ocs's OCSClient
(HTTP) and ``ocs-locks``. Only the router and the registry are started (the
declared agents need not run for their resources to be leased)."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from tools.devsite import Site
from tests.support import reserve_process
from tests.integration.test_leases import SITE_FILE, answer, grants, ocs_locks, take

pytestmark = pytest.mark.integration

TYPO = "no resource 'demo/hwpp'; did you mean 'demo/hwp'?"


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    s = Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('resources-site'), port=0,
             teardown='kill')
    try:
        s.start_router()
        s.start_agent('lock-registry')
        yield s
    finally:
        s.close()


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


def test_typo_is_refused_with_the_suggestion_over_the_ocs_task(site, registry):
    """When the acquire task (OCSClient) names demo/hwpp, it is refused with
    the suggestion, nothing is held, and the refusal is audited."""
    ok, msg, data = answer(registry.acquire(resource='demo/hwpp', owner='alice'))
    assert (ok, msg) == (False, f'Refused: {TYPO}')
    assert data == {'error': TYPO}
    assert 'demo/hwpp' not in grants(registry)
    rows = answer(registry.history(resource='demo/hwpp', action='refuse'))[2]['history']
    assert rows and rows[0]['detail']['reason'] == TYPO and rows[0]['owner'] == 'alice'


def test_typo_is_refused_over_the_lease_procedure(site, registry):
    """When the lease procedure (over the router's HTTP bridge, as
    Reservation calls it) names demo/hwpp, the reply is the same refusal."""
    ok, msg, data = take(registry, resource='demo/hwpp', owner='bob', lease=10)
    assert (ok, msg, data) == (False, f'Refused: {TYPO}', {'error': TYPO})


def test_typo_is_refused_by_ocs_locks_reserve_in_one_line(site, registry):
    """When `ocs-locks reserve demo/hwpp` runs, it exits 1 with one line on
    stderr holding the suggestion, and holds nothing."""
    p = ocs_locks(site, 'reserve', 'demo/hwpp', '--owner', 'carol')
    assert p.returncode == 1 and p.stdout == ''
    assert len(p.stderr.splitlines()) == 1 and TYPO in p.stderr, p.stderr
    assert 'demo/hwpp' not in grants(registry)


def test_declared_resource_is_granted_for_its_default_lease(site, registry):
    """When the task acquires demo/hwp without a lease, it is granted for
    the file's default_lease (60 s), not the old 30 s."""
    ok, msg, data = answer(registry.acquire(resource='demo/hwp', owner='dave', note='it'))
    assert ok is True, msg
    assert data['lease'] == 60.0 and data['resource'] == 'demo/hwp'
    assert grants(registry)['demo/hwp']['owner'] == 'dave'
    p = ocs_locks(site, 'force-release', 'demo/hwp', '--reason', 'test done',
                  env=dict(os.environ, OCS_LOCKS_PASSWORD='demo-operator'))
    assert p.returncode == 0, p.stderr


def test_declared_resource_is_reserved_by_ocs_locks_reserve(site, registry):
    """When `ocs-locks reserve demo/sim-device-1` runs, it is granted, the
    lease shows in the registry, its credential is printed, and Ctrl-C
    releases it."""
    with reserve_process(site, 'demo/sim-device-1', '--owner', 'erin') as r:
        proc = r.proc
        line = proc.stdout.readline()
        assert line.startswith("Reserved demo/sim-device-1 for 'erin'"), \
            line + (proc.stderr.read() if proc.poll() is not None else '')
        # the demo registry directs access: the grant of a declared resource
        # carries the holder's credential (read here: a line left in the
        # pipe's buffer would be lost to communicate())
        assert proc.stdout.readline().startswith('privs: ')
        assert grants(registry)['demo/sim-device-1']['owner'] == 'erin'
    assert (r.returncode, r.err, r.out.strip()) == (0, '', 'Released demo/sim-device-1.')


def test_lease_over_the_declared_max_is_refused(site, registry):
    """When a lease longer than the resource's max_lease (600 s for
    demo/hwp) is asked for, it is refused in one line naming the resource."""
    ok, msg, _ = take(registry, resource='demo/hwp', owner='frank', lease=900)
    assert (ok, msg) == (False, "Refused: lease 900 s is longer than the max_lease 600 s of "
                                "resource 'demo/hwp'")


def test_ocs_locks_resources_lists_what_the_registry_declares(site, registry):
    """When `ocs-locks resources` runs, it prints the registry's declared
    resources (demo/hwp covering fake-hwp, levels, leases) and the ad-hoc
    rule; --json is the registry's status block, as the file declares it."""
    p = ocs_locks(site, 'resources')
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ['RESOURCE', 'AGENTS', 'LOCKOUT', 'HOLDER', 'LEASE', 'MAX',
                                'LEASE', 'DESCRIPTION']
    assert lines[1].split()[:8] == ['demo/hwp', 'fake-hwp', '1,2,3', '3', '60', 's', '600',
                                    's']
    assert 'adhoc: true' in p.stdout
    p = ocs_locks(site, 'resources', '--json')
    tree = json.loads(p.stdout)
    status = registry.status(limit=1).session['data']['resources']
    assert tree == status
    assert [r['path'] for r in tree['resources']] == \
        ['demo/hwp', 'demo/sim-device-1', 'demo/sim-device-2']
    assert tree['source'].endswith('lock-registry-resources.yaml')


def test_registry_with_an_unknown_instance_exits_with_one_line(site, tmp_path):
    """When the registry's resources file names an instance the site config
    lacks, the registry exits non-zero at once (status 2, like any bad
    argument) with that one line."""
    bad = tmp_path / 'bad-resources.yaml'
    bad.write_text(yaml.safe_dump({'resources': {'demo/hwp': {'instances': ['fake-hwpp']}}}))
    with open(site.site_file) as f:
        data = yaml.safe_load(f)
    for inst in data['hosts']['demo']['agent-instances']:
        if inst['instance-id'] == 'lock-registry':
            inst['arguments'] = [a for a in inst['arguments']
                                 if a[0] not in ('--resources', '--access-file')] + \
                [['--resources', str(bad)]]
    site_file = tmp_path / 'site.yaml'
    site_file.write_text(yaml.safe_dump(data))
    p = subprocess.run([sys.executable, '-m', 'ocs.agent_cli', '--site-file', str(site_file),
                        '--site-host', 'demo', '--instance-id', 'lock-registry'],
                       capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert p.returncode == 2, p.stdout + p.stderr
    # (ocs's logging carries the agent's stderr to stdout, lines time-stamped)
    assert p.stdout.splitlines()[-1].endswith(
        f"error: {bad}: resources[demo/hwp].instances: no agent instance 'fake-hwpp' in the "
        f"site config {site_file}; did you mean 'fake-hwp'?")
