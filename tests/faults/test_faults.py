"""Fault tests for site-wide leases: a real crossbar router, a real
LockRegistryAgent (SQLite --db) and two SimulatedDeviceAgents ``a-1`` and
``a-2`` that share one simulated device under the site lock ``lab/bridge``.

Each test injects one fault into running processes (kill -9, SIGSTOP/SIGCONT,
registry kill -9 and restart, router restart), checks what the design
promises, and leaves the site whole again (killed processes are restarted).
After every test the registry's audit log is replayed by
:func:`ocs_locking.leases.audit.check_audit`: no two owners ever held
overlapping resources at once, and tokens only grew.

Two sites, one per module each: ``site`` with 2 s leases, for the holder
faults, where the lease has to run out, and ``slow_site`` with 45 s leases,
for the registry and router restarts, which the holder's lease is meant to
ride through. Before each test :func:`healed` puts its site back together
(router up, dead agents restarted, frozen ones woken, leftover leases
dropped), so one failed test does not fail the next.

Every wait is for something the site shows (a grant appearing or going, an
agent answering, the lease procedures registered), polled with a bound; the
bounds are generous, because a router restart on a loaded machine takes as
long as it takes. Each test checks its own premise (the outage ended within
the lease) and says so if it did not, instead of failing somewhere later.
"""
import contextlib
import os
import shutil
import signal
import time

import pytest
import yaml

from tools.devsite import Site
from ocs_locking.leases.audit import check_audit
from .support import (client, device_stats, drop, grant_of, history, leases,
                      messages, retry, take, wait_for, wait_lease_rpcs)
from .support import end_lease, give_back, take_lease

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CROSSBAR_CONFIG = os.path.join(REPO, 'site-config', 'crossbar', 'config.json')

RESOURCE = 'lab/bridge'
#: --site-lease of a-1 and a-2 on the fast site, seconds.
LEASE = 2.0
#: --site-lease on the slow site. The holder renews every lease/3 and, after
#: a failed renewal, every 0.5 s, so its lease survives any outage that ends
#: before the lease runs out. The tests start the outage right after a grant,
#: so the outage may last up to the whole lease. A router restart costs the
#: router's start-up plus the agents' reconnect backoff (autobahn's
#: ClientService: 1, 1.5, 2.25, 3.4, 5.1 s ... plus up to 1 s of jitter each):
#: 5-8 s on an idle machine; with both cores busy (load average 8) up to
#: 25 s. 15 s was too short under load (the lease ran out: "grant_of(...) is
#: None"); 45 s leaves room, at the cost of waiting for the renewal tick
#: (15 s) in the two tests.
SLOW_LEASE = 45.0
#: Bound on waits for processes and the router to come back (not a margin:
#: the wait ends as soon as they are back).
BACK = 60
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
                               ['--site-lock', RESOURCE], ['--site-lease', lease],
                               # guard(timeout=...) needs timeout + 0.25 s of the lease
                               ['--device-timeout', 0.5]]}
                for name in AGENTS]}},
    }


def _make_site(root, lease):
    (root / 'crossbar').mkdir()
    shutil.copy(CROSSBAR_CONFIG, root / 'crossbar' / 'config.json')
    site_file = root / 'site.yaml'
    site_file.write_text(yaml.safe_dump(_site_config(lease)))
    return Site(str(site_file), 'faults', root / 'work', port=0, teardown='kill')


@contextlib.contextmanager
def _running(start_site, root, lease):
    def make(attempt):
        attempt_root = root / f'attempt-{attempt}'
        attempt_root.mkdir()
        return _make_site(attempt_root, lease)
    s = start_site(make)
    try:
        wait_lease_rpcs(s)
        yield s
    finally:
        s.close()


@pytest.fixture(scope='module')
def _fast_site(tmp_path_factory, site_starter):
    with _running(site_starter, tmp_path_factory.mktemp('faults-site'), LEASE) as s:
        yield s


def audit_replays_cleanly(site):
    """After each test: the registry's audit log replays cleanly (no
    overlapping owners, tokens only grew)."""
    assert check_audit(history(site)) == []


@pytest.fixture
def site(_fast_site):
    """The module's 2 s-lease site, healed before the test; its audit log
    checked after."""
    healed(_fast_site)
    yield _fast_site
    audit_replays_cleanly(_fast_site)


@pytest.fixture(scope='module')
def _slow_site(tmp_path_factory, site_starter):
    with _running(site_starter, tmp_path_factory.mktemp('faults-slow-site'), SLOW_LEASE) as s:
        yield s


@pytest.fixture
def slow_site(_slow_site):
    """The module's SLOW_LEASE site, healed before the test; its audit log
    checked after."""
    healed(_slow_site)
    yield _slow_site
    audit_replays_cleanly(_slow_site)


# -- helpers --------------------------------------------------------------------------


def renewed_since(site, grant, timeout):
    """Wait until ``grant`` has been renewed (same resource, a later expiry);
    the grant then."""
    def renewed():
        g = grant_of(site, grant['resource'])
        return g if g is not None and g['expires'] > grant['expires'] else None
    return wait_for(renewed, f"a renewal of {grant['resource']}", timeout)


def healed(site):
    """Put a site whose last test may have failed half-way back together:
    the router up, every agent running (woken if frozen, restarted if dead)
    and answering, the lease procedures registered, and no lease held by
    the agents or by the tests."""
    if site.router is None or site.router.poll() is not None or not site.router_ready():
        site.stop_router()
        site.start_router()
    for inst in site.instances:
        name = inst['instance-id']
        proc = site.agents.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)     # harmless unless it was frozen
        else:
            site.agents.pop(name, None)
            site.start_agent(name)
    for inst in site.instances:
        site.wait_agent(inst['instance-id'], timeout=BACK)
    wait_lease_rpcs(site)
    for name in AGENTS:
        drop(site, name)        # 'Not holding the site lock.' when there is nothing to drop
    for g in leases(site)['grants']:
        if g['owner'] == 'tester':
            end_lease(site, g)
    wait_for(lambda: not leases(site)['grants'], 'no grant left', BACK)


def restart_agent(site, instance_id):
    proc = site.agents.pop(instance_id, None)
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    site.start_agent(instance_id)
    site.wait_agent(instance_id, timeout=BACK)


# -- tests ----------------------------------------------------------------------------

def test_kill9_of_holder_lease_expires_and_next_token_is_larger(site):
    """When the agent holding the site lock is killed with SIGKILL, nobody
    else gets the lock while its lease runs; the registry expires it, not
    before its expiry, and the other agent then gets it with a larger
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
        # The lease still runs: the grant is there and a try-once acquire is refused.
        g = grant_of(site, RESOURCE)
        assert g is not None and (g['owner'], g['token']) == ('a-1', t1), g
        busy = take_lease(site, RESOURCE, lease=5)
        assert busy['success'] is False
        assert [h['owner'] for h in busy['data']['holders']] == ['a-1']

        wait_for(lambda: grant_of(site, RESOURCE) is None, 'the dead holder\'s lease expire',
                 timeout=LEASE + BACK)
        expired = [r for r in history(site) if r['action'] == 'expire'
                   and r['resource'] == RESOURCE and r['token'] == t1]
        assert len(expired) == 1 and expired[0]['owner'] == 'a-1'
        # Not before its lease ran out (both times are the registry's clock).
        assert expired[0]['at'] >= g['expires'], (expired[0], g)

        got = take(site, 'a-2')
        assert got['success'] is True, messages(got)
        assert got['data']['token'] > t1
        assert drop(site, 'a-2')['success'] is True
    finally:
        restart_agent(site, 'a-1')
    assert grant_of(site, RESOURCE) is None


def test_sigstop_past_lease_then_sigcont_guarded_call_is_refused(site):
    """When the holder is frozen (SIGSTOP) past its lease, its lease expires
    and the other agent gets the lock with a larger token; when the frozen
    agent wakes (SIGCONT), its next guarded device call is refused with
    'Site lock: ...' and never reaches the device."""
    held = take(site, 'a-1')
    assert held['success'] is True, messages(held)
    t1 = held['data']['token']
    pgid = site.agents['a-1'].pid
    os.killpg(pgid, signal.SIGSTOP)
    try:
        # Frozen until the registry expired the lease: a-1's own deadline (the
        # same expiry, on the same host's clock) has passed too.
        wait_for(lambda: grant_of(site, RESOURCE) is None, 'the frozen holder\'s lease expire',
                 timeout=LEASE + BACK)
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
    g0 = grant_of(site, RESOURCE)
    assert (g0['owner'], g0['token']) == ('a-1', t1), g0
    site.stop_router()
    site.start_router()
    for instance_id in ('lock-registry',) + AGENTS:
        site.wait_agent(instance_id, timeout=BACK)
    wait_lease_rpcs(site)                   # registered again on the new router
    assert time.time() < g0['expires'], (
        f'premise: the router restart and re-joins took longer than the '
        f'{SLOW_LEASE:g} s lease ({time.time() - g0["granted_at"]:.1f} s since the grant)')
    g1 = grant_of(site, RESOURCE)
    assert g1 is not None and (g1['owner'], g1['token']) == ('a-1', t1), g1
    # a-1 renews against the registry through the new router, within its lease.
    g2 = renewed_since(site, g0, timeout=g0['expires'] - time.time())
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
    other = take_lease(site, 'lab/other', lease=60)
    assert other['success'] is True, messages(other)
    t_other = other['data']['token']
    before = leases(site)
    g = next(g for g in before['grants'] if g['resource'] == RESOURCE)
    rows_before = len(history(site))

    proc = site.agents['lock-registry']
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    site.agents.pop('lock-registry')
    # The fault: the registry stays down while a-1's first renewal is due
    # (lease/3 after the grant; registry clock, this host). That renewal
    # fails and a-1 retries every 0.5 s until the registry is back. This is
    # the fault's length, not a wait for something: if load delays a-1's
    # tick past it, the renewal reaches the restarted registry on the tick,
    # and every check below still holds.
    time.sleep(max(0.0, g['granted_at'] + SLOW_LEASE / 3 + 0.5 - time.time()))
    site.start_agent('lock-registry')
    site.wait_agent('lock-registry', timeout=BACK)
    wait_lease_rpcs(site)

    after = leases(site)
    grants = {g['resource']: g for g in after['grants']}
    assert (grants['lab/other']['owner'], grants['lab/other']['token']) == ('tester', t_other)
    assert grants['lab/other']['expires'] == next(
        g['expires'] for g in before['grants'] if g['resource'] == 'lab/other')
    assert (grants[RESOURCE]['owner'], grants[RESOURCE]['token']) == ('a-1', t1)
    # Kept, never shortened. (a-1's 0.5 s retry may already have renewed it
    # through the restarted registry, so "unchanged" would be a race.)
    assert grants[RESOURCE]['expires'] >= g['expires']
    assert after['counters'] == before['counters']
    assert len(history(site)) >= rows_before

    # a-1's SiteLock renews against the restarted registry within its lease.
    assert time.time() < g['expires'], (
        f'premise: the registry restart took longer than the {SLOW_LEASE:g} s lease '
        f'({time.time() - g["granted_at"]:.1f} s since the grant)')
    g2 = renewed_since(site, g, timeout=g['expires'] - time.time())
    assert g2['token'] == t1
    stats = device_stats(site)
    ok = client(site, 'a-1').set_heater(value=7).session
    assert ok['success'] is True, messages(ok)
    assert device_stats(site)['commands'] == stats['commands'] + 1

    assert give_back(site, 'lab/other', t_other)['success'] is True
    again = take_lease(site, 'lab/other', lease=5)
    assert again['success'] is True and again['data']['token'] > t_other
    assert give_back(site, 'lab/other', again['data']['token'])['success'] is True
    assert drop(site, 'a-1')['success'] is True
    # A tree lease on 'lab' covers both paths: its token exceeds every token so far.
    tree = take_lease(site, 'lab', lease=5, tree=True)
    assert tree['success'] is True, messages(tree)
    assert tree['data']['token'] > max(leases(site)['counters'][r]
                                       for r in (RESOURCE, 'lab/other'))
    assert tree['data']['token'] > max(before['counters'].values())
    assert give_back(site, 'lab', tree['data']['token'])['success']
