"""Fault tests for fencing, clocks and the registry's procedures (issue 9,
items 4-6): a real crossbar router, a real LockRegistryAgent (SQLite --db)
and three SimulatedDeviceAgents on one simulated device under the site lock
``lab/bridge``:

* ``a-1``: a 1 s lease and 3 s device commands (``--device-timeout 3``): its
  commands never fit in its lease;
* ``a-2``: a 10 s lease and 3 s device commands;
* ``a-3``: a 2 s lease, 0.5 s device commands, and a wall clock 30 s behind
  the host's (``--testing-wall-clock-offset -30``: ``time.time()`` only).

Faults: the registry's procedures squatted by another session, a router
restart, a holder frozen (SIGSTOP) with its command due on the wire, a
skewed holder cut off from a frozen registry. The helpers are copied from
test_faults.py (same behaviour: bounded polls, :func:`healed` before each
test, the audit log replayed after each).
"""
import concurrent.futures
import os
import signal
import socket
import time

import pytest

from ocs_locking.leases.audit import check_audit
from .support import (client, drop, grant_of, history, lease_rpc, leases, messages,
                      module_site, retry, take, wait_for, wait_lease_rpcs)
from .support import UNISSUED, end_lease

pytestmark = pytest.mark.integration


RESOURCE = 'lab/bridge'
#: instance -> (--site-lease, --device-timeout, extra arguments)
AGENTS = {
    'a-1': (1.0, 3.0, []),
    'a-2': (10.0, 3.0, []),
    'a-3': (2.0, 0.5, [['--testing-wall-clock-offset', -30]]),
}
#: Bound on waits for processes and the router to come back (not a margin:
#: each wait ends as soon as what it waits for is there).
BACK = 60
#: How long the device holds its bus for each command in the frozen-holder
#: test (FAULT HOLD): longer than a-1's lease and command timeout together,
#: so a command of a-1's on the wire would still hold the bus when a-2 comes.
HOLD = 8.0
PROCEDURES = ('acquire', 'renew', 'release', 'watch', 'preempt')


def _site_config():
    return {
        'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws',
                'wamp_http': 'http://127.0.0.1:18001/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {'fencing': {
            'crossbar_timeout': 0,
            'simulated-devices': [
                {'name': 'bridge', 'port': 18131, 'channels': 2, 'latency': 0.01}],
            'agent-instances': [
                {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry',
                 'arguments': [['--db', 'leases.db']]}] + [
                {'agent-class': 'SimulatedDeviceAgent', 'instance-id': name,
                 'arguments': [['--device-port', 18131], ['--mode', 'idle'],
                               ['--site-lock', RESOURCE], ['--site-lease', lease],
                               ['--device-timeout', timeout]] + extra}
                for name, (lease, timeout, extra) in AGENTS.items()]}},
    }


@pytest.fixture(scope='module')
def _site(tmp_path_factory, site_starter):
    yield from module_site(tmp_path_factory, site_starter, 'fencing-site', _site_config(),
                           'fencing')


@pytest.fixture
def site(_site):
    """The module's site, healed before the test; its audit log checked after."""
    healed(_site)
    yield _site
    assert check_audit(history(_site)) == []


# -- helpers (as in test_faults.py) ---------------------------------------------------


def procedures(site):
    """What the registry's status says about its lease procedures."""
    reply = retry(lambda: client(site, 'lock-registry').status(), 'registry status')
    return reply.session['data']['lease_procedures']


def device(site, line):
    """One line to the simulated device (its side door, or a raw command)."""
    with socket.create_connection(('127.0.0.1', site.device('bridge')['port']),
                                  timeout=5) as s:
        s.sendall(line.encode() + b'\n')
        return s.makefile().readline().strip()


def device_stats(site):
    return {k: int(v) for k, v in (kv.split('=') for kv in device(site, 'STATS?').split())}


def heater(site, instance_id, value):
    return retry(lambda: client(site, instance_id).set_heater(value=value),
                 f'{instance_id}.set_heater').session


def signal_agent(site, instance_id, sig):
    os.killpg(site.agents[instance_id].pid, sig)


def healed(site):
    """Router up, every agent running (woken, or restarted if dead) and
    answering, the lease procedures registered, the device's faults off, and
    no lease held."""
    if site.router is None or site.router.poll() is not None or not site.router_ready():
        site.stop_router()
        site.start_router()
    for inst in site.instances:
        name = inst['instance-id']
        proc = site.agents.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
        else:
            site.agents.pop(name, None)
            site.start_agent(name)
    for inst in site.instances:
        site.wait_agent(inst['instance-id'], timeout=BACK)
    wait_lease_rpcs(site)
    assert device(site, 'FAULT OFF') == 'OK'
    for name in AGENTS:
        drop(site, name)
    registry = client(site, 'lock-registry')
    for g in leases(site)['grants']:
        if g['owner'] == 'tester':
            end_lease(site, g)
    wait_for(lambda: not leases(site)['grants'], 'no grant left', BACK)


class Squatter:
    """A plain WAMP session that registers the registry's lease procedure
    URIs itself (what an old registration left in the router looks like to
    the registry), until :meth:`leave`. Under the bus component only the
    holder of the registry's ops may register them: it registers that first
    (the registry is down) and drops it again, keeping the lease procedures."""

    def __init__(self, reactor_thread, site):
        from autobahn.twisted.component import Component
        from twisted.internet.defer import inlineCallbacks
        self.rt = reactor_thread
        self.session = None
        joined = concurrent.futures.Future()
        self.left = concurrent.futures.Future()
        uris = [f'{site.address_root}.lock-registry.lease.{n}' for n in PROCEDURES]

        def start():
            comp = Component(transports=[{'url': f'ws://127.0.0.1:{site.port}/ws',
                                          'max_retries': 0}], realm=site.realm)

            @comp.on_join
            @inlineCallbacks
            def on_join(session, details):
                self.session = session
                try:
                    ops = yield session.register(
                        lambda *a, **kw: 'squatter', f'{site.address_root}.lock-registry.ops')
                    for uri in uris:
                        yield session.register(lambda *a, **kw: 'squatter', uri)
                    yield ops.unregister()
                except Exception as e:
                    joined.set_exception(e)
                else:
                    joined.set_result(True)

            comp.start(self.rt.reactor).addBoth(
                lambda r: self.left.done() or self.left.set_result(r))
        self.rt.reactor.callFromThread(start)
        joined.result(30)

    def leave(self):
        self.rt.reactor.callFromThread(self.session.leave)
        self.left.result(30)


# -- 4. procedures come back ------------------------------------------------------------

def test_squatted_lease_procedures_are_retried_until_the_registry_holds_them(
        site, reactor_thread):
    """When the registry (re)joins while its lease procedure URIs are still
    registered by another session (an old registration left in the router),
    its status says they are not registered and why; once that session is
    gone, the registry's retries register them within a few seconds and
    lease calls work (regression: a failed register was only logged, and
    the procedures stayed missing for good)."""
    proc = site.agents.pop('lock-registry')
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    squatter = retry(lambda: Squatter(reactor_thread, site), 'squatting the procedures')
    try:
        assert lease_rpc(site, 'renew', RESOURCE, UNISSUED, 1.0) == 'squatter'
        site.start_agent('lock-registry')
        st = wait_for(lambda: (lambda p: p if p['missing'] else None)(procedures(site)),
                      'the status naming the procedures it could not register', BACK)
        assert st['registered'] is False and set(st['missing']) == set(PROCEDURES), st
        assert all('already' in why for why in st['errors'].values()), st
        status = client(site, 'lock-registry').status().session
        assert any('Lease procedures not registered: ' in m for m in messages(status))
    finally:
        squatter.leave()
    # No restart, no rejoin: the registry's own retries (every 2 s at most).
    wait_lease_rpcs(site, timeout=30)
    assert procedures(site) == {'registered': True, 'missing': [], 'errors': {}}
    got = lease_rpc(site, 'acquire', RESOURCE, 'tester', 5.0, 0.0, False, '', 'fault-test')
    assert got['ok'] is True, got
    assert lease_rpc(site, 'release', RESOURCE, got['data']['lease_id'], 'fault-test')['ok']


def test_router_restart_lease_procedures_come_back_and_status_says_so(site):
    """When the router restarts, the registry registers its lease procedures
    again: lease calls work, the status says they are registered, and an
    agent's site lock can be taken and used."""
    site.stop_router()
    site.start_router()
    for instance_id in ('lock-registry', *AGENTS):
        site.wait_agent(instance_id, timeout=BACK)
    wait_lease_rpcs(site)
    assert procedures(site)['registered'] is True
    got = take(site, 'a-2')
    assert got['success'] is True, messages(got)
    ok = heater(site, 'a-2', 12)
    assert ok['success'] is True, messages(ok)
    assert drop(site, 'a-2')['success'] is True


# -- 5. fencing covers in-flight commands -------------------------------------------------

def test_frozen_holder_with_a_command_due_makes_no_collision_and_stale_tokens_are_refused(
        site):
    """When a-1 (1 s lease) starts a 3 s device command on a device that holds
    its bus 8 s per command, and is then frozen (SIGSTOP) past its lease while
    a-2 takes the lease and commands the device, the device counts 0
    collisions: a-1's guard never lets a command out that would outlast its
    lease (regression: it went out, and a-2's command collided with it on
    the bus). The device fences by itself too: after a-2's command it refuses
    a command carrying a-1's older token."""
    held = take(site, 'a-1')
    assert held['success'] is True, messages(held)
    t1 = held['data']['token']
    assert device(site, f'FAULT HOLD {HOLD:g}') == 'OK'
    before = device_stats(site)
    a1 = client(site, 'a-1')
    a1.set_heater.start(value=33)

    def on_the_wire_or_done():
        if device_stats(site)['busy']:
            return 'on the wire'
        st = a1.set_heater.status().session
        return 'done' if st['status'] == 'done' else None
    wait_for(on_the_wire_or_done, "a-1's command on the wire, or refused", BACK)
    signal_agent(site, 'a-1', signal.SIGSTOP)
    try:
        # A command of a-1's on the bus keeps its 8 s; a-2's own must not.
        assert device(site, 'FAULT OFF') == 'OK'
        wait_for(lambda: grant_of(site, RESOURCE) is None,
                 "the frozen a-1's lease expire", BACK)
        got = take(site, 'a-2')
        assert got['success'] is True, messages(got)
        t2 = got['data']['token']
        assert t2 > t1
        ok = heater(site, 'a-2', 44)
    finally:
        signal_agent(site, 'a-1', signal.SIGCONT)
    stats = device_stats(site)
    assert stats['collisions'] == 0, stats
    assert ok['success'] is True, messages(ok)
    assert stats['commands'] == before['commands'] + 1      # a-2's, and nothing of a-1's
    assert stats['fence'] == t2
    first = retry(lambda: a1.set_heater.wait(timeout=BACK), 'a-1.set_heater').session
    assert first['success'] is False
    assert any(m.startswith('Site lock: ') and 'too little for a 3 s device call' in m
               for m in messages(first)), messages(first)
    again = heater(site, 'a-1', 55)         # woken: its lease is lost
    assert again['success'] is False
    assert any(m.startswith('Site lock: ') for m in messages(again)), messages(again)
    # A command with a-1's older token reaching the device late is refused there.
    assert device(site, f'TOKEN {t1} HEATER 1') == \
        f'ERR stale fencing token {t1}: this device has seen token {t2}'
    after = device_stats(site)
    assert after['stale'] == stats['stale'] + 1 and after['collisions'] == 0
    assert device(site, 'HEATER?') == '44.000000'
    assert drop(site, 'a-2')['success'] is True
    drop(site, 'a-1')


# -- 6. no wall clock from another host ---------------------------------------------------

def test_holder_with_a_lagging_wall_clock_cut_off_from_the_registry_stops_on_time(site):
    """When a-3, whose wall clock is 30 s behind the registry's host, holds the
    lease and the registry freezes (SIGSTOP: no renewal answers), a-3's guard
    refuses once its own monotonic deadline has passed, and no guarded call
    of a-3's starts after the registry's expiry of the lease (a holder
    judging by the registry's wall-clock expiry would go on for 30 s)."""
    held = take(site, 'a-3')
    assert held['success'] is True, messages(held)
    ok = heater(site, 'a-3', 3)
    assert ok['success'] is True, messages(ok)
    lease = AGENTS['a-3'][0]
    registry = site.agents['lock-registry']
    a3 = client(site, 'a-3')
    os.killpg(registry.pid, signal.SIGSTOP)
    frozen = time.time()        # this host's clock: the registry's, not a-3's
    try:
        # The registry cannot have renewed past frozen + lease.
        expiry_bound = frozen + lease
        late_starts, refusal = [], None
        deadline = time.monotonic() + BACK
        while refusal is None or 'ran out' not in refusal:
            assert time.monotonic() < deadline, f'a-3 still guarding; last {refusal!r}'
            start = time.time()
            session = a3.set_heater(value=4).session
            if session['success']:
                if start > expiry_bound:
                    late_starts.append(start - frozen)
            else:
                refusal = next((m for m in messages(session) if m.startswith('Site lock: ')),
                               None)
                assert refusal is not None, messages(session)
        assert late_starts == [], (
            f'a-3 ran guarded calls {late_starts} s after the registry froze, past its '
            f'{lease:g} s lease')
        assert 'ran out' in refusal and 'without a renewal' in refusal, refusal
    finally:
        os.killpg(registry.pid, signal.SIGCONT)
    drop(site, 'a-3')
