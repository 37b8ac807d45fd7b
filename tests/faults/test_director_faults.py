"""The access director's failure model on a real site: crossbar on loopback,
the registry with ``--access-director`` and ocs's own FakeDataAgent as
``fake-hwp`` under ``director:lock-registry`` (their entries taken from the
demo site file). docs/failures.rst ("Reservations enforced by access
control") lists what each test here checks.

Faults: the registry killed (-9) while a reservation is held, and restarted;
a lease that ends while the registry is down; the directed agent killed and
restarted while a reservation is held. Each wait is on an event seen at the
agent (a refusal or an acceptance), bounded; none on a margin.
"""
import os
import time

import pytest

from tests.faults.support import BACK, give_back, take_lease, wait_for, wait_lease_rpcs
from tests.integration.test_director import OPERATOR, client, demo_instance, run, until

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESOURCE = 'demo/hwp'


@pytest.fixture(scope='module')
def site(tmp_path_factory, site_starter):
    import shutil
    import yaml
    from tools.devsite import Site
    data, registry = demo_instance('lock-registry')
    _, fake = demo_instance('fake-hwp')
    data['hosts']['demo']['agent-instances'] = [registry, fake]
    data['hosts']['demo'].pop('simulated-devices', None)
    base = tmp_path_factory.mktemp('director-faults-config')
    shutil.copy(os.path.join(REPO, 'site-config', 'lock-registry-access.yaml'), base)
    with open(base / 'lock-registry-resources.yaml', 'w') as f:
        yaml.safe_dump({'resources': {RESOURCE: {'instances': ['fake-hwp']}}}, f)
    with open(base / 'site.yaml', 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    s = site_starter(lambda attempt: Site(
        str(base / 'site.yaml'), 'demo', tmp_path_factory.mktemp(f'director-faults-{attempt}'),
        port=0, teardown='kill'))
    yield s
    s.close()


def kill9(site, instance_id):
    """SIGKILL one agent (its process group) and wait until it is gone."""
    site.kill_agent(instance_id)


def restart(site, instance_id):
    site.start_agent(instance_id)
    site.wait_agent(instance_id, timeout=BACK)
    if instance_id == 'lock-registry':
        wait_lease_rpcs(site)


def operator(site):
    return client(site, 'fake-hwp', OPERATOR)


def hold(site, owner, lease):
    """A grant of demo/hwp through the lease procedure: (token, privs)."""
    s = take_lease(site, RESOURCE, owner=owner, lease=lease)
    assert s['success'], s
    assert s['data'].get('privs'), f'no privs in the grant: {sorted(s["data"])}'
    return s['data']['token'], s['data']['privs']


def refused_naming(site, owner):
    """Wait until fake-hwp refuses the operator naming ``owner`` as the holder
    (an agent that has not yet heard from its director refuses without a
    name); bounded."""

    def named():
        ok, msg = run(operator(site), 'delay_task', delay=0)
        return not ok and f'{RESOURCE}[{owner}; ' in msg
    wait_for(named, f'fake-hwp refusing the operator because {owner} holds {RESOURCE}')


def test_registry_kill9_holder_stays_in_others_stay_out_until_release(site):
    """When the registry is killed (-9) while bob holds demo/hwp, fake-hwp
    keeps refusing the operator; after the registry restarts (grants and the
    credential's hash come back from its database) bob's privs still run
    delay_task and the operator is still refused; bob's release then lets
    the operator in."""
    token, privs = hold(site, 'bob', lease=300.0)
    refused_naming(site, 'bob')
    kill9(site, 'lock-registry')
    ok, msg = run(operator(site), 'delay_task', delay=0)
    assert not ok and f'{RESOURCE}[bob; ' in msg, f'opened by the registry dying: {msg}'
    restart(site, 'lock-registry')
    ok, msg = run(client(site, 'fake-hwp', privs), 'delay_task', delay=0)
    assert ok, f"the holder's privs were refused after the restart: {msg}"
    ok, msg = run(operator(site), 'delay_task', delay=0)
    assert not ok and f'{RESOURCE}[bob; ' in msg, msg
    assert give_back(site, RESOURCE, token)['success']
    assert until(operator(site), 'delay_task', True, delay=0)[0], 'still refused after release'


def test_lease_ending_while_registry_down_is_lifted_when_it_returns(site):
    """When carol's lease ends while the registry is down, fake-hwp keeps
    its last rules (nothing is opened or closed by the outage: the operator
    is still refused); the restarted registry expires the lease and the
    operator gets in."""
    lease = 3.0
    token, _ = hold(site, 'carol', lease=lease)
    ends = time.monotonic() + lease
    refused_naming(site, 'carol')
    kill9(site, 'lock-registry')
    wait_for(lambda: time.monotonic() > ends, 'the lease running out', timeout=lease + BACK)
    ok, msg = run(operator(site), 'delay_task', delay=0)
    assert not ok and f'{RESOURCE}[carol; ' in msg, msg
    restart(site, 'lock-registry')
    assert until(operator(site), 'delay_task', True, delay=0)[0], \
        'still refused after the restarted registry expired the lease'
    from tests.faults.support import history
    expired = [r for r in history(site) if r['action'] == 'expire' and r['token'] == token]
    assert expired, 'the restarted registry did not record the expiry'


def test_directed_agent_restart_while_held_obeys_the_lease_at_once(site):
    """When fake-hwp is killed (-9) and restarted while dave holds demo/hwp,
    the new fake-hwp (asking the registry at its join) refuses the operator
    and accepts dave's privs; after the release the operator gets in."""
    token, privs = hold(site, 'dave', lease=300.0)
    refused_naming(site, 'dave')
    kill9(site, 'fake-hwp')
    restart(site, 'fake-hwp')
    ok, msg = run(operator(site), 'delay_task', delay=0)
    assert not ok, f'the restarted agent let the operator in: {msg}'
    refused_naming(site, 'dave')
    ok, msg = run(client(site, 'fake-hwp', privs), 'delay_task', delay=0)
    assert ok, f"the holder's privs were refused by the restarted agent: {msg}"
    assert give_back(site, RESOURCE, token)['success']
    assert until(operator(site), 'delay_task', True, delay=0)[0], 'still refused after release'
