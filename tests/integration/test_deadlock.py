"""Deadlocks across agents on a real site: crossbar on loopback, the registry
and a test agent (tests/integration/deadlock_agent.py) launched with
ocs-agent-cli, a script's Reservations, a WAMP watcher of the ownership
feed.

* two operations of one agent taking its two locks in opposite orders;
* a cycle through a script's site leases, an agent's SiteLocks and its own
  lock, closed by the agent's local wait (which the registry cannot refuse):
  each reported within 1 s on ``ownership`` (rows flagged ``deadlock``), by
  ``why``, the monitor's ``deadlocks`` and the ``alerts`` feed;
* the same cycle closed by a SiteLock's request instead: refused at once,
  naming the agent's operations.
"""
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest
import yaml

from ocs_locking.leases.reservation import Reservation
from ocs_locking.wire import ALERTS_FEED, OWNERSHIP_FEED, feed_topic
from tools.devsite import Site

from ..support import WampPeer

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'deadlock_agent.py')
#: Bound on every wait, in seconds (each ends as soon as the thing happens).
WAIT = 60
#: The issue's bound: a cycle through an agent's lock is reported within it.
REPORTED_WITHIN = 1.0

SITE = {
    'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws', 'wamp_http': 'http://127.0.0.1:18001/call',
            'wamp_realm': 'test_realm', 'address_root': 'observatory'},
    'hosts': {'dl': {'crossbar_timeout': 0, 'agent-instances': [
        {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry'},
        # not a plugin agent: the site runs it with --agent/--entrypoint
        {'agent-class': 'DeadlockAgent', 'instance-id': 'dl-1', 'agent-file': AGENT,
         'entrypoint': 'main'}]}},
}


@pytest.fixture(scope='module')
def site(tmp_path_factory, site_starter):
    root = tmp_path_factory.mktemp('deadlock-site')
    (root / 'crossbar').mkdir()
    shutil.copy(os.path.join(REPO, 'site-config', 'crossbar', 'config.json'),
                root / 'crossbar' / 'config.json')
    site_file = root / 'site.yaml'
    site_file.write_text(yaml.safe_dump(SITE))
    s = site_starter(lambda attempt: Site(str(site_file), 'dl', root / f'work-{attempt}',
                                          port=0, teardown='kill'))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope='module')
def agent(site):
    return site.wait_agent('dl-1', timeout=WAIT)


@pytest.fixture
def watcher(site, reactor_thread):
    w = WampPeer(reactor_thread, f'ws://127.0.0.1:{site.port}/ws', site.realm)
    w.subscribe(feed_topic(site.address_root, 'lock-registry', OWNERSHIP_FEED))
    w.subscribe(feed_topic(site.address_root, 'lock-registry', ALERTS_FEED))
    yield w
    w.close()


class Rows:
    """The ownership feed's rows as they arrive (on the watcher's queue),
    each with the monotonic time the test received it; rows of one message
    are read one by one (none is skipped)."""

    def __init__(self, watcher):
        self.w = watcher
        self.alerts = []
        self._ready = []        # (row, arrival) read from a message, not yet looked at

    def _next(self, deadline, what):
        while not self._ready:
            left = deadline - time.monotonic()
            assert left > 0, f'the ownership feed never showed {what}'
            try:
                event = self.w.events.get(timeout=left)
            except queue.Empty:
                continue
            topic, args, _ = event
            at = event.arrived
            msg = args[0][0] if args and isinstance(args[0], list) else (args[0] if args else {})
            if topic.endswith('.' + ALERTS_FEED):     # a recorded feed: blocks by name
                self.alerts += list(msg.values()) if isinstance(msg, dict) else []
            elif isinstance(msg, dict):
                self._ready += [(row, at) for row in msg.get('rows') or []]
        return self._ready.pop(0)

    def until(self, pred, what):
        """Read rows until one satisfies pred: (row, arrival time)."""
        deadline = time.monotonic() + WAIT
        while True:
            row, at = self._next(deadline, what)
            if pred(row):
                return row, at

    def alert(self, pred, what):
        """Read on until an alerts block satisfies pred."""
        deadline = time.monotonic() + WAIT
        while not any(pred(a) for a in self.alerts):
            self._next(deadline, what)


def ok(reply):
    assert reply.session['success'] is True, reply.session['messages'][-3:]
    return reply


def started(op, **params):
    reply = op.start(**params)
    assert reply.session is not None and reply.session['status'] != 'done', reply
    return reply


def registry(site):
    return site.wait_agent('lock-registry', timeout=WAIT)


def test_two_operations_taking_two_locks_in_opposite_orders_are_reported_within_1s(
        site, agent, watcher):
    """When op1 holds dl-1/a and op2 holds dl-1/b, op1 waiting for b is no
    deadlock; op2 then waiting for a closes the cycle: within 1 s of the
    row that closes it, both rows arrive flagged 'deadlock'; why and the
    monitor spell it out; the alerts feed counts it; untangled (the waits
    cancelled), the flags go."""
    rows = Rows(watcher)
    started(agent.op1, first='a', then='b')
    rows.until(lambda r: r['lock'] == 'dl-1/a' and r['job'] == 'op1', 'op1 holding a')
    started(agent.op2, first='b', then='a')
    rows.until(lambda r: r['lock'] == 'dl-1/b' and r['job'] == 'op2', 'op2 holding b')
    ok(agent.go(op='op1'))
    rows.until(lambda r: r['lock'] == 'dl-1/b' and r['waiters'] == 1, 'op1 waiting for b')
    ok(agent.go(op='op2'))
    _, closed = rows.until(lambda r: r['lock'] == 'dl-1/a' and r['waiters'] == 1,
                           'op2 waiting for a (the cycle closed)')
    flagged = set()
    while flagged != {'dl-1/a', 'dl-1/b'}:
        row, at = rows.until(lambda r: 'deadlock' in r.get('flags', ()), 'a deadlock flag')
        flagged.add(row['lock'])
    assert at - closed < REPORTED_WITHIN, f'reported {at - closed:.3f} s after it closed'
    why = ok(registry(site).why(target='dl-1/a')).session['data']['why']
    assert why['deadlocks'] == [
        'deadlock: dl-1 op1 (session %d) holds dl-1/a, waits for dl-1/b held by dl-1 op2 '
        '(session %d), which waits for dl-1/a' % (agent.op1.status().session['session_id'],
                                                 agent.op2.status().session['session_id'])]
    data = registry(site).monitor.status().session['data']
    assert [d['locks'] for d in data['deadlocks']] == [['dl-1/a', 'dl-1/b']]
    status = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                             'status'], capture_output=True, text=True, timeout=WAIT)
    assert any(line.startswith('DEADLOCK (for ') and line.endswith(why['deadlocks'][0])
               for line in status.stdout.splitlines()), status.stdout
    assert any(line.startswith('dl-1/a ') and line.endswith('[deadlock]')
               for line in status.stdout.splitlines()), status.stdout
    rows.alert(lambda a: a.get('block_name') == 'deadlock' and
               2 in a['data']['deadlock_count'], 'the alerts block counting the deadlock')
    ok(agent.untangle())
    for op in (agent.op1, agent.op2):
        op.wait(timeout=WAIT)
    rows.until(lambda r: r['lock'] in ('dl-1/a', 'dl-1/b') and r['flags'] == [] and
               r['job'] is None, 'the flags gone')


def reserve_in_thread(site, resource, timeout):
    """A Reservation of ``resource`` by ops-console, asked for in a thread
    (it may wait in the queue): (thread, result holder)."""
    out = {}

    def run():
        r = Reservation(resource, owner='ops-console', lease=60, timeout=timeout,
                        args=site.client_args)
        try:
            r.acquire()
            out['reservation'] = r
        except Exception as e:      # busy, refused, timed out
            out['error'] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_a_cycle_through_site_leases_and_an_agents_lock_is_reported_within_1s(
        site, agent, watcher):
    """ops-console holds dl/x; op1 holds dl/y (SiteLock); op2 holds dl-1/a
    and waits for dl/x; ops-console waiting for dl/y is queued (op1, which
    holds it, waits for nothing); op1 then waiting for dl-1/a closes a cycle
    through the agent's own lock: reported within 1 s, on the rows, the
    leases and by why."""
    rows = Rows(watcher)
    x = Reservation('dl/x', owner='ops-console', lease=60, args=site.client_args)
    x.acquire()
    y_thread = None
    try:
        started(agent.op1, first='y', then='a')
        rows.until(lambda r: r['lock'] == 'dl-1/lease:dl:y' and r['job'] == 'op1', 'op1 on y')
        started(agent.op2, first='a', then='x', timeout=WAIT)
        rows.until(lambda r: r['lock'] == 'dl-1/a' and r['job'] == 'op2', 'op2 holding a')
        ok(agent.go(op='op2'))
        rows.until(lambda r: r['lock'] == 'dl-1/lease:dl:x' and r['waiters'] == 1,
                   'op2 waiting for dl/x')
        y_thread, y = reserve_in_thread(site, 'dl/y', timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while not any(w['owner'] == 'ops-console' for w in
                      ok(registry(site).leases()).session['data']['waiting']):
            assert 'error' not in y, f"ops-console's wait was refused: {y.get('error')}"
            assert time.monotonic() < deadline, 'ops-console never queued for dl/y'
            time.sleep(0.1)     # poll interval of an HTTP query, not a wait for time
        ok(agent.go(op='op1'))
        _, closed = rows.until(lambda r: r['lock'] == 'dl-1/a' and r['waiters'] == 1,
                               'op1 waiting for dl-1/a (the cycle closed)')
        row, at = rows.until(lambda r: r['lock'] == 'dl-1/a' and 'deadlock' in r['flags'],
                             'dl-1/a flagged deadlock')
        assert at - closed < REPORTED_WITHIN, f'reported {at - closed:.3f} s after it closed'
        why = ok(registry(site).why(target='dl/x')).session['data']['why']
        [text] = why['deadlocks']
        assert text.startswith('deadlock: dl-1 op1 (session ') and 'ops-console' in text
        assert 'dl-1/a held by dl-1 op2' in text and 'dl/x (site lease)' in text
        grants = ok(registry(site).leases()).session['data']['grants']
        assert {g['resource'] for g in grants if 'deadlock' in g.get('flags', ())} == \
            {'dl/x', 'dl/y'}
        ok(agent.untangle())          # op1 gives up a, lets go of dl/y: ops-console gets it
        y_thread.join(WAIT)
        assert 'reservation' in y, y
    finally:
        x.release()
        for op in (agent.op1, agent.op2):
            op.wait(timeout=WAIT)
        if y_thread is not None:
            y_thread.join(WAIT)
            if 'reservation' in y:
                y.pop('reservation').release()
    rows.until(lambda r: r['lock'] == 'dl-1/a' and r['flags'] == [] and r['job'] is None,
               'the flags gone')


def test_a_siteLock_request_that_would_close_a_cycle_is_refused_naming_the_operations(
        site, agent):
    """ops-console holds dl/x and waits for dl/y, which op1 holds: op1
    asking to wait for dl/x would close the cycle, and is refused at once
    for the deadlock (not timed out in the queue), the refusal naming op1."""
    x = Reservation('dl/x', owner='ops-console', lease=60, args=site.client_args)
    x.acquire()
    y_thread = None
    try:
        started(agent.op1, first='y', then='x', timeout=30)
        deadline = time.monotonic() + WAIT
        while not any(g['resource'] == 'dl/y' for g in
                      ok(registry(site).leases()).session['data']['grants']):
            assert time.monotonic() < deadline, 'op1 never held dl/y'
            time.sleep(0.1)     # poll interval of an HTTP query
        y_thread, y = reserve_in_thread(site, 'dl/y', timeout=WAIT)
        while not any(w['owner'] == 'ops-console' for w in
                      ok(registry(site).leases()).session['data']['waiting']):
            assert 'error' not in y, y
            assert time.monotonic() < deadline, 'ops-console never queued for dl/y'
            time.sleep(0.1)
        ok(agent.go(op='op1'))
        done = agent.op1.wait(timeout=WAIT)
        assert done.session['success'] is True
        assert any('gave up x' in m for _, m in done.session['messages']), done.session
        refusals = ok(registry(site).history(kind='lease', action='refuse',
                                             limit=50)).session['data']['history']
        assert any('deadlock: dl-1 op1 (session' in (r.get('detail') or {}).get('reason', '')
                   for r in refusals), refusals[-3:]
    finally:
        x.release()
        if y_thread is not None:
            y_thread.join(WAIT)
            if 'reservation' in y:
                y.pop('reservation').release()
    assert 'error' not in y, y
