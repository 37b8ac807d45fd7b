"""Fault tests for site-wide leases: a real crossbar router, a real
LockRegistryAgent (SQLite --db) and two SimulatedDeviceAgents ``a-1`` and
``a-2`` that share one simulated device under the site lock ``lab/bridge``.

Each test injects one fault into running processes (kill -9, SIGSTOP/SIGCONT,
registry kill -9 and restart, router restart), checks what the design
promises, and leaves the site whole again (killed processes are restarted).
After every test the registry's audit log is replayed by
:func:`ocs_locking.leases.audit.check_audit`: no two owners ever held
overlapping resources at once, and tokens only grew.

Two sites: ``site`` with 2 s leases (the holder faults, where the lease has to
run out), and ``slow_site`` with longer leases (the registry and router
restarts, which the holder's lease is meant to ride through).
"""
import json
import os
import shutil
import signal
import socket
import time
import urllib.request

import pytest
import yaml

from tools.devsite import Site
from ocs_locking.leases.audit import check_audit

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CROSSBAR_CONFIG = os.path.join(REPO, 'site-config', 'crossbar', 'config.json')

RESOURCE = 'lab/bridge'
#: --site-lease of a-1 and a-2 on the fast site, seconds.
LEASE = 2.0
#: --site-lease on the slow site. a-1 renews every lease/3 and only at those
#: ticks, so a lease survives an outage that ends before the second tick after
#: the last renewal: 2/3 of the lease when the outage starts just after a
#: renewal (the tests start it so). A router restart plus the agents'
#: reconnect backoff takes 5-8 s here, hence 15 s (6 s is too short).
SLOW_LEASE = 15.0
#: Slack on top of a lease for the registry's expiry tick and our polling.
MARGIN = 1.5
#: take_site_lock waits this long in the registry's queue (TASK_TIMEOUT).
TASK_TIMEOUT = 3.0
AGENTS = ('a-1', 'a-2')


def _site_config(lease):
    return {
        'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws',
                'wamp_http': 'http://127.0.0.1:18001/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {'faults': {
            'crossbar_timeout': 0,
            'simulated-devices': [
                {'name': 'bridge', 'port': 18121, 'channels': 2, 'latency': 0.01}],
            'agent-instances': [
                {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry',
                 'arguments': [['--db', 'leases.db']]}] + [
                {'agent-class': 'SimulatedDeviceAgent', 'instance-id': name,
                 'arguments': [['--device-port', 18121], ['--mode', 'idle'],
                               ['--site-lock', RESOURCE], ['--site-lease', lease]]}
                for name in AGENTS]}},
    }


def _make_site(root, lease):
    (root / 'crossbar').mkdir()
    shutil.copy(CROSSBAR_CONFIG, root / 'crossbar' / 'config.json')
    site_file = root / 'site.yaml'
    site_file.write_text(yaml.safe_dump(_site_config(lease)))
    return Site(str(site_file), 'faults', root / 'work', port=0)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with _make_site(tmp_path_factory.mktemp('faults-site'), LEASE) as s:
        wait_lease_rpcs(s)
        yield s


@pytest.fixture(scope='module')
def slow_site(tmp_path_factory):
    with _make_site(tmp_path_factory.mktemp('faults-slow-site'), SLOW_LEASE) as s:
        wait_lease_rpcs(s)
        yield s


# -- helpers --------------------------------------------------------------------------

def retry(fn, what, timeout=30):
    """fn() until it returns without raising (an agent or the router coming
    back); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as e:      # ControlClientError etc. while re-joining
            if time.monotonic() > deadline:
                raise AssertionError(f'{what}: still failing after {timeout} s: {e}')
            time.sleep(0.2)


def wait_for(pred, what, timeout):
    """Poll pred() (exceptions count as false) until true; bounded. Returns
    its last true value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:
            last = e
        assert time.monotonic() < deadline, f'never saw {what} within {timeout} s; last {last!r}'
        time.sleep(0.1)


def lease_rpc(site, name, *args):
    """Call the registry's plain WAMP procedure <registry>.lease.<name> through
    the router's HTTP caller; the reply dict, or the WAMP error as a string."""
    body = json.dumps({'procedure': f'{site.address_root}.lock-registry.lease.{name}',
                       'args': list(args)}).encode()
    req = urllib.request.Request(f'http://127.0.0.1:{site.port}/call', data=body,
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=5) as r:
        reply = json.load(r)
    return reply['args'][0] if 'args' in reply else reply.get('error', str(reply))


def wait_lease_rpcs(site, timeout=30):
    """Wait until the registry's lease procedures are registered on the router
    (the registry registers them on its first tick after joining, so they lag
    behind its OCS operations). Probes with a renewal of a token never issued:
    refused, changes nothing."""
    wait_for(lambda: isinstance(lease_rpc(site, 'renew', RESOURCE, 10 ** 9, 1.0), dict),
             'the lease procedures registered', timeout)


def leases(site):
    reply = retry(lambda: site.wait_agent('lock-registry', timeout=5).leases(),
                  'registry leases')
    assert reply.session['success'] is True, reply
    return reply.session['data']


def grant_of(site, resource):
    return next((g for g in leases(site)['grants'] if g['resource'] == resource), None)


def next_renewal(site, resource, timeout):
    """Wait for the holder's next renewal of ``resource``; its grant then."""
    g0 = grant_of(site, resource)
    return wait_for(lambda: (lambda g: g['expires'] > g0['expires'] and g)(
        grant_of(site, resource)), f'a renewal of {resource}', timeout)


def history(site):
    """The whole audit log, oldest first."""
    reply = retry(lambda: site.wait_agent('lock-registry', timeout=5).history(limit=1000),
                  'registry history')
    assert reply.session['success'] is True, reply
    rows = reply.session['data']['history']
    assert len(rows) < 1000, 'audit log longer than one history() page: the check would ' \
                             'replay a window, not the whole log'
    return list(reversed(rows))


def device_stats(site):
    """The simulated device's counters through its side door (not counted)."""
    with socket.create_connection(('127.0.0.1', site.device('bridge')['port']),
                                  timeout=5) as s:
        s.sendall(b'STATS?\n')
        return {k: int(v) for k, v in
                (kv.split('=') for kv in s.makefile().readline().split())}


def client(site, instance_id):
    return site.wait_agent(instance_id, timeout=60)


def take(site, instance_id):
    return retry(lambda: client(site, instance_id).take_site_lock(),
                 f'{instance_id}.take_site_lock').session


def drop(site, instance_id):
    return retry(lambda: client(site, instance_id).drop_site_lock(),
                 f'{instance_id}.drop_site_lock').session


def messages(session):
    return [m for _, m in session['messages']]


def restart_agent(site, instance_id):
    proc = site.agents.pop(instance_id, None)
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    site.start_agent(instance_id)
    site.wait_agent(instance_id, timeout=60)


@pytest.fixture(autouse=True)
def audit_checked(request):
    """After each test: the audit log of the site it used replays cleanly."""
    yield
    for name in ('site', 'slow_site'):
        s = request.node.funcargs.get(name)
        if s is not None:
            assert check_audit(history(s)) == []


# -- tests ----------------------------------------------------------------------------

def test_kill9_of_holder_lease_expires_and_next_token_is_larger(site):
    """When the agent holding the site lock is killed with SIGKILL, nobody
    else gets the lock while its lease runs; the registry expires it within
    the lease (plus a margin), and the other agent then gets it with a larger
    fencing token."""
    try:
        held = take(site, 'a-1')
        assert held['success'] is True, messages(held)
        t1 = held['data']['token']
        # Held and renewed: a-2 waits its whole queue timeout and is refused.
        refused = take(site, 'a-2')
        assert refused['success'] is False
        assert any("not granted" in m and "'a-1'" in m for m in messages(refused)), \
            messages(refused)

        proc = site.agents['a-1']
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_at = time.time()
        # The lease still runs: the grant is there and a try-once acquire is refused.
        g = grant_of(site, RESOURCE)
        assert g is not None and (g['owner'], g['token']) == ('a-1', t1), g
        busy = client(site, 'lock-registry').acquire(resource=RESOURCE, owner='tester',
                                                     lease=5, timeout=0)
        assert busy.session['success'] is False
        assert [h['owner'] for h in busy.session['data']['holders']] == ['a-1']

        wait_for(lambda: grant_of(site, RESOURCE) is None, 'the dead holder\'s lease expire',
                 timeout=LEASE + MARGIN)
        gone_at = time.time()
        assert gone_at - killed_at <= LEASE + MARGIN
        assert gone_at >= g['expires']          # not before its lease ran out
        expired = [r for r in history(site) if r['action'] == 'expire'
                   and r['resource'] == RESOURCE and r['token'] == t1]
        assert len(expired) == 1 and expired[0]['owner'] == 'a-1'

        got = take(site, 'a-2')
        assert got['success'] is True, messages(got)
        assert got['data']['token'] > t1
        assert drop(site, 'a-2')['success'] is True
    finally:
        restart_agent(site, 'a-1')
    assert grant_of(site, RESOURCE) is None


def test_sigstop_past_lease_then_sigcont_guarded_call_is_refused(site):
    """When the holder is frozen (SIGSTOP) for more than two leases, its lease
    expires and the other agent gets the lock with a larger token; when the
    frozen agent wakes (SIGCONT), its next guarded device call is refused with
    'Site lock: ...' and never reaches the device."""
    held = take(site, 'a-1')
    assert held['success'] is True, messages(held)
    t1 = held['data']['token']
    pgid = site.agents['a-1'].pid
    stopped_at = time.monotonic()
    os.killpg(pgid, signal.SIGSTOP)
    try:
        wait_for(lambda: grant_of(site, RESOURCE) is None, 'the frozen holder\'s lease expire',
                 timeout=LEASE + MARGIN)
        # Stay frozen past two leases in all.
        time.sleep(max(0.0, stopped_at + 2 * LEASE + 0.5 - time.monotonic()))
        got = take(site, 'a-2')
        assert got['success'] is True, messages(got)
        t2 = got['data']['token']
        assert t2 > t1
        before = device_stats(site)
    finally:
        os.killpg(pgid, signal.SIGCONT)
    try:
        refused = retry(lambda: client(site, 'a-1').set_heater(value=33),
                        'a-1.set_heater after SIGCONT').session
        after = device_stats(site)
        assert refused['success'] is False
        assert any(m.startswith('Site lock:') for m in messages(refused)), messages(refused)
        assert after['commands'] == before['commands']      # it never reached the device
        assert after['collisions'] == 0
        g = grant_of(site, RESOURCE)
        assert (g['owner'], g['token']) == ('a-2', t2)      # the new holder is untouched
    finally:
        drop(site, 'a-2')
        drop(site, 'a-1')       # forgets the lost lease
    # a-1 is usable again: its guarded calls run under a fresh lease.
    again = take(site, 'a-1')
    assert again['success'] is True and again['data']['token'] > t2
    before = device_stats(site)
    ok = client(site, 'a-1').set_heater(value=12).session
    assert ok['success'] is True, messages(ok)
    assert device_stats(site)['commands'] == before['commands'] + 1
    assert drop(site, 'a-1')['success'] is True


def test_registry_down_site_lock_calls_are_refused_with_a_reason(site):
    """When the registry is down (killed), an agent's take_site_lock and a
    set_heater that needs the site lock are refused with an (ok, message)
    answer about the site lock, not a CRASH, and the device is not touched;
    when the registry is back, the same call works."""
    proc = site.agents['lock-registry']
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    try:
        before = device_stats(site)
        took = take(site, 'a-2')
        heater = client(site, 'a-2').set_heater(value=5).session
        assert device_stats(site)['commands'] == before['commands']
        for session in (took, heater):
            assert session['success'] is False
            assert not any(m.startswith('CRASH') for m in messages(session)), \
                messages(session)
            assert any(m.startswith('Site lock') for m in messages(session)), \
                messages(session)
    finally:
        restart_agent(site, 'lock-registry')
        wait_lease_rpcs(site)
    ok = client(site, 'a-2').set_heater(value=5).session
    assert ok['success'] is True, messages(ok)


def test_router_restart_everyone_rejoins_and_no_double_grant(slow_site):
    """When the crossbar router restarts while a-1 holds the site lock, every
    agent re-joins, a-1's lease rides through (same token, renewed again),
    a-2's take_site_lock is refused meanwhile, and the lease procedures are
    registered again (a-1 can release and take the lock afterwards)."""
    site = slow_site
    held = take(site, 'a-1')
    assert held['success'] is True, messages(held)
    t1 = held['data']['token']
    # Restart just after a renewal: the lease then has 2/3 of itself to spare.
    g = next_renewal(site, RESOURCE, timeout=SLOW_LEASE / 3 + MARGIN)
    renewed_at = g['expires'] - SLOW_LEASE
    site.stop_router()
    site.start_router()
    for instance_id in ('lock-registry',) + AGENTS:
        site.wait_agent(instance_id, timeout=60)
    wait_lease_rpcs(site, timeout=15)       # registered again on the new router
    g1 = grant_of(site, RESOURCE)
    assert g1 is not None and (g1['owner'], g1['token']) == ('a-1', t1), g1
    # a-1 renews against the registry through the new router.
    deadline = renewed_at + 2 * SLOW_LEASE / 3 + MARGIN - time.time()
    assert deadline > MARGIN, f'the restart took {time.time() - renewed_at:.1f} s'
    g2 = next_renewal(site, RESOURCE, timeout=deadline)
    assert g2['token'] == t1
    refused = take(site, 'a-2')
    assert refused['success'] is False
    assert any("not granted" in m and "'a-1'" in m for m in messages(refused)), messages(refused)
    before = device_stats(site)
    ok = client(site, 'a-1').set_heater(value=21).session
    assert ok['success'] is True, messages(ok)
    assert device_stats(site)['commands'] == before['commands'] + 1
    released = drop(site, 'a-1')
    assert released['success'] is True
    assert 'Released.' in messages(released), messages(released)
    again = take(site, 'a-1')
    assert again['success'] is True and again['data']['token'] > t1
    assert drop(site, 'a-1')['success'] is True
    assert device_stats(site)['collisions'] == 0


def test_registry_kill9_restart_keeps_grants_and_token_counters(slow_site):
    """When the registry is killed with SIGKILL and restarted, the grants it
    had made are still there with the same tokens, the token counters are
    intact (later grants get larger tokens), the audit log is kept, and the
    agent holding a lease renews it against the restarted registry."""
    site = slow_site
    registry = client(site, 'lock-registry')
    held = take(site, 'a-1')
    assert held['success'] is True, messages(held)
    t1 = held['data']['token']
    other = registry.acquire(resource='lab/other', owner='tester', lease=60).session
    assert other['success'] is True, messages(other)
    t_other = other['data']['token']
    # Kill just after a renewal, and stay down over a-1's next renewal tick:
    # that renewal fails, the one after must reach the restarted registry.
    g = next_renewal(site, RESOURCE, timeout=SLOW_LEASE / 3 + MARGIN)
    renewed_at = g['expires'] - SLOW_LEASE
    before = leases(site)
    rows_before = len(history(site))

    proc = site.agents['lock-registry']
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    site.agents.pop('lock-registry')
    time.sleep(max(0.0, renewed_at + SLOW_LEASE / 3 + 1 - time.time()))
    site.start_agent('lock-registry')
    site.wait_agent('lock-registry', timeout=60)
    wait_lease_rpcs(site, timeout=15)

    after = leases(site)
    grants = {g['resource']: g for g in after['grants']}
    assert (grants['lab/other']['owner'], grants['lab/other']['token']) == ('tester', t_other)
    assert grants['lab/other']['expires'] == next(
        g['expires'] for g in before['grants'] if g['resource'] == 'lab/other')
    assert (grants[RESOURCE]['owner'], grants[RESOURCE]['token']) == ('a-1', t1)
    assert grants[RESOURCE]['expires'] == g['expires']    # nobody renewed while it was down
    assert after['counters'] == before['counters']
    assert len(history(site)) >= rows_before

    # a-1's SiteLock renews against the restarted registry within its lease.
    deadline = renewed_at + 2 * SLOW_LEASE / 3 + MARGIN - time.time()
    assert deadline > MARGIN, f'the restart took {time.time() - renewed_at:.1f} s'
    g2 = next_renewal(site, RESOURCE, timeout=deadline)
    assert g2['token'] == t1
    stats = device_stats(site)
    ok = client(site, 'a-1').set_heater(value=7).session
    assert ok['success'] is True, messages(ok)
    assert device_stats(site)['commands'] == stats['commands'] + 1

    registry = client(site, 'lock-registry')
    assert registry.release(resource='lab/other', token=t_other).session['success'] is True
    again = registry.acquire(resource='lab/other', owner='tester', lease=5).session
    assert again['success'] is True and again['data']['token'] > t_other
    assert registry.release(resource='lab/other',
                            token=again['data']['token']).session['success'] is True
    assert drop(site, 'a-1')['success'] is True
    # A tree lease on 'lab' covers both paths: its token exceeds every token so far.
    tree = registry.acquire(resource='lab', owner='tester', lease=5, tree=True).session
    assert tree['success'] is True, messages(tree)
    assert tree['data']['token'] > max(leases(site)['counters'][r]
                                       for r in (RESOURCE, 'lab/other'))
    assert tree['data']['token'] > max(before['counters'].values())
    assert registry.release(resource='lab', token=tree['data']['token']).session['success']
