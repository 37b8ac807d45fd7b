"""Fault tests for the standby registry (issue 13 part 3): a real crossbar
router (the bus component naming the standbys), a primary LockRegistryAgent
``lock-registry`` (``--db leases.db``), a standby ``lock-registry-b``
(``--standby-for lock-registry``, ``--db leases-b.db``), and a
SimulatedDeviceAgent ``holder-1`` holding the site lock ``lab/bridge``
(SiteLock, 4 s lease). The tests run in order on one site: the primary is
killed (kill -9) under load and the standby takes over; then the old
primary's host comes back as a standby (``lock-registry-a``, on the old
primary's database) and takes over in turn when ``lock-registry-b`` is
killed. After each failover the audit log the serving registry holds is
replayed with the existing checker (no overlap, no token reused).

Every wait is bounded and polls what the site shows; nothing sleeps for a
margin. Load threads pause between cycles only to pace themselves.
"""
import os
import signal
import sqlite3
import threading
import time

import pytest

from tools.devsite import Site
from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.booked import Calendar
from ocs_locking.leases.reservation import Reservation
from .support import (UNISSUED, client, give_back, grant_of, history, lease_rpc, module_site,
                      retry, take, take_lease, wait_for)

pytestmark = pytest.mark.integration

SITE_LOCK = 'lab/bridge'
#: The failover bound the issue sets (primary killed -> a lease call answered).
FAILOVER = 2.0
#: Load clients (Reservation threads) and the resources they take turns on.
CLIENTS = 3
LOAD_RESOURCES = ('load/r1', 'load/r2')
#: Booking ids made before each kill (every later registry must hold them all).
BOOKED = []


def _registry(instance, db, standby_for=None):
    args = [['--db', db]]
    if standby_for:
        args.append(['--standby-for', standby_for])
    return {'agent-class': 'LockRegistryAgent', 'instance-id': instance, 'arguments': args}


def _site_config():
    return {
        'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws',
                'wamp_http': 'http://127.0.0.1:18001/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {'standby': {
            'crossbar_timeout': 0,
            'simulated-devices': [
                {'name': 'bridge', 'port': 18141, 'channels': 2, 'latency': 0.002}],
            'agent-instances': [
                _registry('lock-registry', 'leases.db'),
                _registry('lock-registry-b', 'leases-b.db', 'lock-registry'),
                # the old primary's host, come back as a standby on its database
                _registry('lock-registry-a', 'leases.db', 'lock-registry'),
                {'agent-class': 'SimulatedDeviceAgent', 'instance-id': 'holder-1',
                 'arguments': [['--device-port', 18141], ['--mode', 'idle'],
                               ['--site-lock', SITE_LOCK], ['--site-lease', 4.0]]}]}},
    }


class PairSite(Site):
    """The site, started without ``lock-registry-a`` (it comes later);
    the standby is waited for on its own address."""

    LATER = ('lock-registry-a',)

    def start(self):
        self.check_agents()
        self.start_router()
        for dev in self.devices:
            self.start_device(dev['name'])
        now = [i['instance-id'] for i in self.instances if i['instance-id'] not in self.LATER]
        for name in now:
            self.start_agent(name)
        for name in now:
            self.wait_agent(name)


@pytest.fixture(scope='module')
def site(tmp_path_factory, site_starter):
    yield from module_site(tmp_path_factory, site_starter, 'standby-site', _site_config(),
                           'standby', site_class=PairSite)


# -- helpers ----------------------------------------------------------------------------


def replication(site, instance):
    reply = retry(lambda: client(site, instance).status(), f'{instance} status')
    assert reply.session['success'] is True, reply
    return reply.session['data']['replication']


def wait_following(site, standby, primary_instance='lock-registry'):
    """Until ``standby`` is in sync and the serving registry lists it,
    verified (the router says whose session it is)."""
    wait_for(lambda: replication(site, standby)['follower']['state'] == 'in_sync',
             f'{standby} in sync')
    wait_for(lambda: any(f['name'] == standby and f['verified'] for f in
                         replication(site, primary_instance)['followers']),
             f'{primary_instance} lists {standby} as a verified follower')


def first_answer(site, since, bound=10.0):
    """Seconds from ``since`` (monotonic) until a lease call is answered
    (a renewal by an unissued lease id: refused, changes nothing)."""
    deadline = since + bound
    while time.monotonic() < deadline:
        reply = lease_rpc(site, 'renew', resource='probe/never', lease_id=UNISSUED, lease=1.0)
        if isinstance(reply, dict):
            return time.monotonic() - since
        time.sleep(0.01)
    raise AssertionError(f'no lease call answered within {bound} s of the kill')


def primary_tokens(path):
    """Every token the database at ``path`` granted (its audit log, read-only)."""
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True)
    try:
        return [t for (t,) in db.execute(
            "SELECT token FROM audit WHERE action IN ('grant', 'regrant') AND ok = 1")]
    finally:
        db.close()


class Load:
    """CLIENTS Reservation threads taking turns on LOAD_RESOURCES: acquire
    (queueing), renew twice, release; every LeaseLost and every error kept."""

    def __init__(self, site):
        self.site, self.stop = site, threading.Event()
        self.cycles, self.lost, self.errors = [0] * CLIENTS, [], []
        self.tokens = []        # (monotonic time asked, resource, token) of each grant
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), 'a load thread did not end'

    def _run(self, i):
        resource = LOAD_RESOURCES[i % len(LOAD_RESOURCES)]
        while not self.stop.is_set():
            asked = time.monotonic()
            r = Reservation(resource, owner=f'load-{i}', lease=3.0, timeout=5.0,
                            args=self.site.client_args, watch=False,
                            on_lost=lambda why: self.lost.append(why))
            try:
                r.acquire()
            except Exception as e:          # unanswered while the registries change
                self.errors.append(f'acquire: {e}')
                continue
            try:
                self.tokens.append((asked, resource, r.tokens[resource]))
                for _ in range(2):
                    if not r.renew_once():
                        self.errors.append(f'renew refused: {r.lost}')
            finally:
                r.release()
            self.cycles[i] += 1

    def wait_cycles(self, n, what):
        start = list(self.cycles)
        wait_for(lambda: all(c >= s + n for c, s in zip(self.cycles, start)), what)


def fail_over(site, primary, standby, primary_db):
    """Kill -9 ``primary`` while the load and a kept Reservation run; check
    the standby answers within FAILOVER s and loses nothing."""
    keeper = Reservation('keep/x', owner='keeper', lease=4.0, args=site.client_args)
    keeper.acquire()
    kept_token = keeper.tokens['keep/x']
    if grant_of(site, SITE_LOCK) is None:
        assert take(site, 'holder-1')['success'] is True
    bridge = wait_for(lambda: grant_of(site, SITE_LOCK), 'holder-1 holds the site lock')
    # a booking made just before the kill (its batch) beside those made
    # before earlier kills (the standby's snapshot)
    cal = Calendar(args=site.client_args, client_id='standby-faults')
    BOOKED.append(cal.book(f'booked/{standby}', 'planner', start_in=3600,
                           end_in=7200)['booking_id'])
    with Load(site) as load:
        load.wait_cycles(3, 'three load cycles per client before the kill')
        t0 = time.monotonic()
        site.kill_agent(primary)
        took = first_answer(site, t0)
        load.wait_cycles(3, 'three load cycles per client after the kill')
    assert took < FAILOVER, f'the standby answered {took:.3f} s after the kill'
    # every lease held at the kill is still held by its holder, same token
    assert keeper.renew_once() and keeper.lost is None, keeper.lost
    assert grant_of(site, 'keep/x')['token'] == kept_token
    after = wait_for(lambda: grant_of(site, SITE_LOCK), 'the site lock still held')
    assert (after['owner'], after['token']) == (bridge['owner'], bridge['token'])
    # ... and renewed by its holder since (its expiry moved on)
    wait_for(lambda: grant_of(site, SITE_LOCK)['expires'] > after['expires'],
             'holder-1 renewing on the standby')
    keeper.release()
    # every booking made before the kill is still on the calendar, booked
    assert {b['booking_id']: b['owner'] for b in cal.bookings()
            if b['booking_id'] in BOOKED} == {i: 'planner' for i in BOOKED}
    print(f'{primary} killed: {standby} answered after {took * 1000:.0f} ms')
    assert load.lost == [], load.lost
    # tokens: every grant after the takeover is above every token the
    # primary ever wrote (even a grant no standby heard of)
    new = [t for asked, _r, t in load.tokens if asked > t0 + took]
    assert new and min(new) > max(primary_tokens(primary_db))
    rows = history(site)
    assert check_audit(rows) == []
    takeovers = [r for r in rows if r['action'] == 'takeover']
    assert takeovers and takeovers[-1]['owner'] == standby
    return took


def test_standby_follows_verified_and_refuses_lease_calls_while_standing_by(site):
    """When the standby runs beside the primary, it is in sync, the primary
    lists it as a verified follower, and its own address refuses lease
    calls (it never grants from its copy) while status answers."""
    wait_following(site, 'lock-registry-b')
    b = client(site, 'lock-registry-b')
    reply = b.acquire(resource='x/y', owner='nobody', lease=5.0)
    assert reply.status != 0 or reply.session is None or not reply.session.get('success')
    assert 'standby for lock-registry' in str(reply.msg)
    assert replication(site, 'lock-registry-b')['role'] == 'standby'


def test_frozen_standby_is_dropped_the_primary_goes_on_alone_then_it_follows_again(site):
    """When the standby freezes (SIGSTOP), the primary's lease calls wait
    at most about its ack timeout once, then it drops the standby (status
    says so) and answers alone; thawed (SIGCONT), the standby follows
    again from a snapshot and is in sync."""
    wait_following(site, 'lock-registry-b')
    proc = site.agents['lock-registry-b']
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        got = take_lease(site, 'frozen/x', owner='alone', lease=5.0)
        assert got['success'] is True, got
        waited = time.monotonic() - t0
        drop = wait_for(lambda: replication(site, 'lock-registry')['last_drop'],
                        'the primary dropping the frozen standby')
        assert drop['name'] == 'lock-registry-b'
        assert not replication(site, 'lock-registry')['followers']
        t1 = time.monotonic()
        assert give_back(site, 'frozen/x', got['data']['token'])['success'] is True
        alone = time.monotonic() - t1
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    print(f'standby frozen: first call {waited * 1000:.0f} ms, then {alone * 1000:.0f} ms')
    assert replication(site, 'lock-registry')['waiting'] == 0
    wait_following(site, 'lock-registry-b')
    assert check_audit(history(site)) == []


def test_primary_kill9_under_load_standby_answers_within_2s_and_no_lease_is_lost(site):
    """When the primary is killed (kill -9) while Reservations take, renew
    and release leases and a SiteLock agent holds one, the standby answers
    lease calls within 2 s, every held lease is still its holder's (renewed
    with the same lease id, same token), nobody lost a lease, a booking
    made before the kill is still booked, tokens after the takeover exceed
    every token the primary wrote, and the audit log passes the checker."""
    wait_following(site, 'lock-registry-b')
    fail_over(site, 'lock-registry', 'lock-registry-b',
              os.path.join(site.workdir, 'leases.db'))
    assert replication(site, 'lock-registry-b')['role'] == 'primary'


def test_old_primary_back_as_standby_follows_and_takes_over_in_turn(site):
    """When the old primary's host comes back as a standby (on its old
    database) and the serving registry is killed in turn, it takes over
    the same way: within 2 s, nothing lost (the bookings made before
    either kill included), tokens still rising."""
    site.start_agent('lock-registry-a')
    wait_following(site, 'lock-registry-a')
    fail_over(site, 'lock-registry-b', 'lock-registry-a',
              os.path.join(site.workdir, 'leases-b.db'))
    assert replication(site, 'lock-registry-a')['role'] == 'primary'
