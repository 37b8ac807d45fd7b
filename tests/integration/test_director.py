"""The registry as the site's access director, on a real site: crossbar on
loopback, the registry with ``--access-director``, and two agents we did not
write, unmodified, under ``--access-policy director:lock-registry`` via
ocs-agent-cli: ocs's own FakeDataAgent as ``fake-hwp`` (its entry taken
from the demo site file, covered by ``demo/hwp``) and socs's LDMonitor (the
lightning-detector monitor: its ``init_ld_monitor`` task only opens a UDP
socket, no hardware), covered by the declared class resource ``demo/ld``.

Every wait is on an event (a refusal or an acceptance seen at the agent),
bounded; none on a wall-clock margin.
"""
import os
import re
import shutil
import time

import pytest
import yaml

from tools.devsite import Site
from tests.support import reserve_process
from ocs_locking.leases.paths import when
from ocs_locking.leases.reservation import Reservation, RetryPolicy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
OPERATOR = 'demo-operator'          # level 2 in the demo's access file
#: How long one wait for the rules to reach an agent may take at most (the
#: push takes milliseconds; the bound only stops a broken run).
WAIT = 20.0

pytestmark = pytest.mark.integration


def demo_instance(instance_id):
    with open(SITE_FILE) as f:
        data = yaml.safe_load(f)
    for inst in data['hosts']['demo']['agent-instances']:
        if inst['instance-id'] == instance_id:
            return data, inst
    raise AssertionError(f'{instance_id} is not in {SITE_FILE}')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """The demo's registry and fake-hwp entries as they are in default.yaml,
    plus a socs LDMonitor; resources demo/hwp and demo/ld (class LDMonitorAgent)."""
    data, registry = demo_instance('lock-registry')
    _, fake = demo_instance('fake-hwp')
    base = tmp_path_factory.mktemp('director-config')
    ld = {'agent-class': 'LDMonitorAgent', 'instance-id': 'ld-monitor',
          'arguments': [['--access-policy', 'director:lock-registry']]}
    data['hosts']['demo']['agent-instances'] = [registry, fake, ld]
    data['hosts']['demo'].pop('simulated-devices', None)
    shutil.copy(os.path.join(REPO, 'site-config', 'lock-registry-access.yaml'), base)
    resources = {'adhoc': True, 'resources': {
        'demo/hwp': {'instances': ['fake-hwp'], 'description': 'ocs FakeDataAgent'},
        'demo/ld': {'classes': ['LDMonitorAgent'], 'description': 'socs LDMonitor'}}}
    with open(base / 'lock-registry-resources.yaml', 'w') as f:
        yaml.safe_dump(resources, f)
    with open(base / 'site.yaml', 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    with Site(str(base / 'site.yaml'), 'demo', tmp_path_factory.mktemp('director-site'),
              port=0, teardown='kill') as s:
        yield s


def client(site, instance_id, privs=None):
    from ocs.ocs_client import OCSClient
    return OCSClient(instance_id, privs=privs, args=site.client_args)


def run(c, op, **params):
    """Start the task and wait for it: ``(ok, message)``; a refused start
    comes back at once with its message."""
    import ocs
    reply = getattr(c, op)(**params)
    return reply.status == ocs.OK and (reply.session or {}).get('success', True), reply.msg


def until(c, op, accepted, **params):
    """Run ``op`` until it is accepted (or refused, ``accepted`` False); the
    last (ok, message). Bounded by WAIT."""
    deadline = time.monotonic() + WAIT
    while True:
        ok, msg = run(c, op, **params)
        if bool(ok) == accepted or time.monotonic() > deadline:
            return ok, msg


def reserve(site, resource, owner, note, lease=60.0):
    res = Reservation([resource], owner, lease=lease, note=note, args=site.client_args,
                      retry=RetryPolicy(attempts=1, deadline=None), client_id='test_director')
    res.acquire()
    assert res.grant_privs is not None
    return res


def check_enforced(site, instance_id, op, other_privs, params):
    """The scenario of the issue on one agent: the other client can run
    ``op`` while nobody holds; while bob holds the resource it is refused
    naming bob, his note and until when, and bob's privs can; after the
    release the other can again; after an expiry too."""
    from ocs_locking.leases.bridge import OCSClientTransport
    resource = {'fake-hwp': 'demo/hwp', 'ld-monitor': 'demo/ld'}[instance_id]
    site.wait_agent(instance_id)
    other = client(site, instance_id, other_privs)
    assert until(other, op, True, **params)[0], 'refused while nobody holds it'

    res = reserve(site, resource, 'bob', 'calibration run 7')
    try:
        ok, msg = until(other, op, False, **params)
        assert not ok, f'still accepted while bob holds {resource}: {msg}'
        assert re.search(rf"lockouts active: \['{resource}\[bob; note: calibration run 7; "
                         rf"until \d\d:\d\d:\d\d\.\d\]'\]", msg), msg
        assert f'until {when(res.expires)}' in msg, (msg, when(res.expires))
        holder = client(site, instance_id, res.grant_privs)
        ok, msg = run(holder, op, **params)
        assert ok, f"the holder's privs were refused: {msg}"
    finally:
        res.release()
    ok, msg = until(other, op, True, **params)
    assert ok, f'still refused after the release: {msg}'

    # a lease nobody renews: refused while it lasts, accepted after its expiry
    transport = OCSClientTransport(client(site, 'lock-registry'))
    ans = transport.lease_call('acquire', {'resource': resource, 'owner': 'carol',
                                           'lease': 4.0, 'note': 'short'})
    assert ans.ok, ans.message
    ok, msg = until(other, op, False, **params)
    assert not ok and f'{resource}[carol; note: short' in msg, msg
    ok, msg = until(other, op, True, **params)
    assert ok, f'still refused after the expiry: {msg}'
    history = client(site, 'lock-registry').history(resource=resource, action='expire')
    assert history.session['data']['history'], 'the lease did not expire'


def test_director_fake_hwp_obeys_only_the_holder(site):
    """When someone else holds demo/hwp, ocs's unmodified FakeDataAgent
    (fake-hwp, director:lock-registry) refuses the demo operator's
    delay_task naming the holder, the note and until when, and accepts the
    holder's privs; after the release, and after an expiry, the operator
    can again."""
    check_enforced(site, 'fake-hwp', 'delay_task', OPERATOR, {'delay': 0})


def test_director_socs_ldmonitor_obeys_only_the_holder(site):
    """When someone else holds demo/ld (the agent class LDMonitorAgent), socs's
    unmodified LDMonitor refuses an anonymous client's init_ld_monitor
    (level 1, locked out too) naming the holder, and accepts the holder's
    privs; after the release and after an expiry it accepts again."""
    check_enforced(site, 'ld-monitor', 'init_ld_monitor', None, {})


def test_director_privs_not_in_public_places(site):
    """When a reservation of demo/hwp is held, its privs are in no registry
    table, task session, audit row or log file."""
    res = reserve(site, 'demo/hwp', 'dave', 'secret check')
    try:
        reg = client(site, 'lock-registry')
        texts = [repr(reg.leases().session), repr(reg.status().session),
                 repr(reg.history(limit=100).session)]
        logs = os.path.join(site.workdir, 'logs')
        for name in os.listdir(logs):
            with open(os.path.join(logs, name), errors='replace') as f:
                texts.append(f.read())
        assert all(res.grant_privs not in t for t in texts)
    finally:
        res.release()


def test_director_docs_example_runs_as_the_holder(site):
    """When the docs' example (docs/examples/hold_hwp.py) reserves demo/hwp
    and calls fake-hwp with its grant_privs, delay_task succeeds."""
    import importlib.util
    import ocs
    path = os.path.join(REPO, 'docs', 'examples', 'hold_hwp.py')
    spec = importlib.util.spec_from_file_location('hold_hwp', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    reply = example.calibrate(site.client_args)
    assert reply.status == ocs.OK, reply.msg


def test_director_ocs_locks_reserve_prints_privs_the_holder_can_use(site):
    """When `ocs-locks reserve demo/hwp` holds the reservation, it prints a
    `privs: <value>` line; that value runs fake-hwp's delay_task while the
    operator is refused; Ctrl-C releases and the operator can again."""
    with reserve_process(site, 'demo/hwp', '--lease', '30', '--note', 'by hand',
                         '--owner', 'erin') as r:
        proc = r.proc
        first = proc.stdout.readline()
        assert first.startswith("Reserved demo/hwp for 'erin': token(s) demo/hwp="), \
            first + (proc.stderr.read() if proc.poll() is not None else '')
        line = proc.stdout.readline()
        m = re.fullmatch(r'privs: (\S+)  \(OCSClient\(\.\.\., privs=\.\.\.\) reaches the '
                         r'covered agents while this reservation holds\)\n', line)
        assert m, line
        operator = client(site, 'fake-hwp', OPERATOR)
        ok, msg = until(operator, 'delay_task', False, delay=0)
        assert not ok and 'demo/hwp[erin; note: by hand' in msg, msg
        ok, msg = run(client(site, 'fake-hwp', m.group(1)), 'delay_task', delay=0)
        assert ok, msg
    assert (r.returncode, r.err, r.out.strip()) == (0, '', 'Released demo/hwp.')
    assert until(client(site, 'fake-hwp', OPERATOR), 'delay_task', True, delay=0)[0]
