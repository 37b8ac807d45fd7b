"""Fault tests for waiting lease requests (issue 9, items 3 and 7): a real
crossbar router and a real LockRegistryAgent (ocs-agent-cli, SQLite --db).

* One deadline: a queued request with ``timeout=3`` is answered (refused,
  ``timed_out``) by the registry at about 3 s, over WAMP, over the HTTP
  bridge and as an OCS task, well before any transport gives up.
* Grants only to callers still there: a WAMP caller who leaves the router
  (closes its session, or is killed) or cancels its call while queued is
  withdrawn at once and never granted; an aborted acquire task likewise, and
  every waiting request when a router restart cuts the registry off. An
  HTTP caller who closes its socket cannot be seen by the registry (crossbar's
  HTTP caller goes on with the call): its request ends at its own deadline.
* Fair queues: one client's flood of 1,000 requests does not refuse another
  owner's request.

Callers that must be able to vanish run in their own process
(:mod:`tests.faults.wamp_caller`) and report what they saw, with times on
this host's monotonic clock. Every wait is for an event (a line from the
caller, a change in the registry's leases), polled with a bound. After
every test the audit log replays cleanly (:func:`check_audit`).
"""
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest

from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.bridge import BridgeClient
from ocs_locking.wire import ANSWER_MARGIN
from .support import (_as_session, end_lease, give_back, history, lease_rpc, leases, take_lease,
                      module_site, wait_for, wait_lease_rpcs)

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Bound on waits for processes and the router (not a margin: each wait ends
#: as soon as what it waits for is seen).
BACK = 60
#: The queue timeout of the deadline tests, seconds.
TIMEOUT = 3.0
#: An answer at TIMEOUT must come well before this (the transports wait
#: TIMEOUT + ANSWER_MARGIN); a loose bound, for a loaded machine.
LATE = TIMEOUT + 5.0


def _site_config():
    return {
        'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws',
                'wamp_http': 'http://127.0.0.1:18001/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {'waiters': {
            'crossbar_timeout': 0,
            'agent-instances': [
                {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry',
                 'arguments': [['--db', 'leases.db']]}]}},
    }


@pytest.fixture(scope='module')
def _site(tmp_path_factory, site_starter):
    yield from module_site(tmp_path_factory, site_starter, 'waiter-faults', _site_config(),
                           'waiters')


@pytest.fixture
def site(_site):
    """The module's site with nothing held or waiting; its audit log checked
    after the test."""
    clean(_site)
    yield _site
    clean(_site)
    assert check_audit(history(_site)) == []


# -- helpers (copied in part from test_faults.py) -------------------------------------


def registry(site):
    return site.wait_agent('lock-registry', timeout=BACK)


def hold(site, resource, owner='tester', lease=120):
    s = take_lease(site, resource, owner=owner, lease=lease)
    assert s['success'] is True, s['messages']
    return s['data']['token']


def release(site, resource, token):
    """Release a grant by its token (one hold() made) or by a lease id
    (one a WAMP caller was given)."""
    if isinstance(token, str):
        s = _as_session(lease_rpc(site, 'release', resource=resource, lease_id=token))
    else:
        s = give_back(site, resource, token)
    assert s['success'] is True, s['messages']


def waiting(site, owner=None):
    return [w for w in leases(site)['waiting'] if owner is None or w['owner'] == owner]


def holder(site, resource):
    g = next((g for g in leases(site)['grants'] if g['resource'] == resource), None)
    return None if g is None else g['owner']


def clean(site):
    """Nothing held, nothing waiting (an earlier test may have failed half-way)."""
    wait_lease_rpcs(site)
    for g in leases(site)['grants']:
        end_lease(site, g)
    wait_for(lambda: not leases(site)['grants'] and not leases(site)['waiting'],
             'nothing held or waiting', BACK)


def rows(site, action, owner):
    return [r for r in history(site) if r['action'] == action and r['owner'] == owner]


class WampCaller:
    """A :mod:`tests.faults.wamp_caller` process: ``count`` concurrent calls
    of the registry's lease ``acquire`` with ``kwargs`` (its log: log_path)."""
    made = 0

    def __init__(self, site, count=1, **kwargs):
        self.events = queue.Queue()
        self.seen = []
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
        WampCaller.made += 1
        self.log_path = os.path.join(site.workdir, 'logs', f'wamp-caller-{WampCaller.made}.log')
        log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'tests.faults.wamp_caller', f'ws://127.0.0.1:{site.port}/ws',
             site.realm, f'{site.address_root}.lock-registry.lease.acquire',
             json.dumps(kwargs), str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
            env=env)
        log.close()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass
        self.events.put({'event': 'exited'})

    def next(self, event, timeout=BACK):
        """The next event of that kind, or of one of those kinds (a tuple);
        the others before it are kept in seen."""
        kinds = event if isinstance(event, tuple) else (event,)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, (f'the caller never reported {event!r}; saw {self.seen[-5:]}; '
                              f'see {self.log_path}')
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(e)
            if e['event'] in kinds:
                return e
            assert e['event'] != 'exited', f'the caller exited before {event!r}: {self.seen}'

    def say(self, command):
        self.proc.stdin.write(command + '\n')
        self.proc.stdin.flush()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def callers(site):
    made = []

    def make(**kwargs):
        c = WampCaller(site, **kwargs)
        made.append(c)
        return c
    yield make
    for c in made:
        c.stop()


# -- one deadline -------------------------------------------------------------------

def test_queued_wamp_acquire_with_timeout_3_is_refused_at_3_s(site, callers):
    """When a WAMP caller's request queues with timeout=3, the registry
    answers it (refused, timed out) after at least 3 s and long before the
    caller's transport would give up (3 s + ANSWER_MARGIN)."""
    token = hold(site, 'w/one')
    c = callers(resource='w/one', owner='wamp-waiter', lease=5, timeout=TIMEOUT)
    sent = c.next('called')['t']
    answer = c.next('answer', timeout=BACK)
    took = answer['t'] - sent
    assert answer['reply']['ok'] is False and answer['reply']['data']['status'] == 'timed_out'
    assert TIMEOUT <= took < LATE < TIMEOUT + ANSWER_MARGIN, took
    release(site, 'w/one', token)
    assert holder(site, 'w/one') is None


def test_queued_http_acquire_with_timeout_3_is_refused_at_3_s(site):
    """When a script's request through the HTTP bridge queues with
    timeout=3, the registry's refusal comes back after at least 3 s and long
    before the bridge client's read timeout (3 s + ANSWER_MARGIN)."""
    token = hold(site, 'w/one')
    bridge = BridgeClient(f'http://127.0.0.1:{site.port}/call',
                          f'{site.address_root}.lock-registry')
    sent = time.monotonic()
    ans = bridge.lease_call('acquire', {'resource': 'w/one', 'owner': 'http-waiter',
                                        'lease': 5, 'timeout': TIMEOUT}, wait=TIMEOUT)
    took = time.monotonic() - sent
    bridge.close()
    assert ans.answered and not ans.ok and ans.data['status'] == 'timed_out', ans
    assert TIMEOUT <= took < LATE < TIMEOUT + ANSWER_MARGIN, took
    release(site, 'w/one', token)


def test_queued_ocs_task_acquire_with_timeout_3_is_refused_at_3_s(site):
    """When an OCS client's acquire task queues with timeout=3, the task ends
    refused (timed out) after at least 3 s and well before 3 s + the margin."""
    token = hold(site, 'w/one')
    client = registry(site)
    sent = time.monotonic()
    reply = client.acquire(resource='w/one', owner='task-waiter', lease=5, timeout=TIMEOUT)
    took = time.monotonic() - sent
    assert reply.session['success'] is False
    assert reply.session['data']['status'] == 'timed_out', reply.session
    assert TIMEOUT <= took < LATE, took
    release(site, 'w/one', token)


# -- grants only to callers still there ------------------------------------------------

@pytest.mark.parametrize('how', ['leave', 'kill', 'cancel'])
def test_wamp_caller_gone_while_queued_is_withdrawn_and_never_granted(site, callers, how):
    """When a queued WAMP caller closes its session (leave), is killed (its
    connection drops) or cancels its call, the registry withdraws its
    request at once (a cancel audit row with the reason); when the holder
    then releases, the next real waiter holds, and once it releases,
    nobody does."""
    token = hold(site, 'w/gone')
    gone = callers(resource='w/gone', owner=f'gone-{how}', lease=60, timeout=50)
    gone.next('called')
    wait_for(lambda: waiting(site, f'gone-{how}'), 'the caller waiting')
    stays = callers(resource='w/gone', owner=f'stays-{how}', lease=60, timeout=50)
    stays.next('called')
    wait_for(lambda: waiting(site, f'stays-{how}'), 'the second caller waiting')
    if how == 'leave':
        gone.say('leave')
        assert gone.proc.wait(BACK) == 0
    elif how == 'kill':
        gone.stop()
    else:
        gone.say('cancel')
        gone.next('error')
    wait_for(lambda: not waiting(site, f'gone-{how}'), 'the gone caller withdrawn', timeout=20)
    [row] = rows(site, 'cancel', f'gone-{how}')
    assert 'left' in row['detail']['reason'] or 'cancel' in row['detail']['reason'], row
    release(site, 'w/gone', token)
    got = stays.next('answer')
    assert got['reply']['ok'] is True, got
    assert holder(site, 'w/gone') == f'stays-{how}'
    release(site, 'w/gone', got['reply']['data']['lease_id'])
    assert holder(site, 'w/gone') is None and waiting(site) == []
    assert rows(site, 'grant', f'gone-{how}') == [] and rows(site, 'regrant', f'gone-{how}') == []


def test_aborted_acquire_task_is_withdrawn_and_never_granted(site):
    """When an OCS client aborts its queued acquire task, the request is
    withdrawn and the task ends refused; the holder's release grants
    nobody."""
    token = hold(site, 'w/task')
    client = registry(site)
    started = client.acquire.start(resource='w/task', owner='aborter', lease=60, timeout=50)
    assert started.status == 0, started
    wait_for(lambda: waiting(site, 'aborter'), 'the task waiting')
    client.acquire.abort()
    reply = client.acquire.wait(timeout=BACK)
    assert reply.session['success'] is False
    assert reply.session['data']['status'] == 'cancelled', reply.session
    assert waiting(site) == []
    release(site, 'w/task', token)
    assert holder(site, 'w/task') is None
    [row] = rows(site, 'cancel', 'aborter')
    assert row['detail']['reason'] == 'the acquire task was aborted'


def test_abandoned_http_request_ends_at_its_own_deadline_and_is_never_granted(site):
    """When an HTTP caller sends a queued acquire (timeout 4) and closes its
    socket, the registry cannot see it go (crossbar's HTTP caller goes on
    with the call), so the request ends at its own deadline: a timeout row,
    and the holder's release afterwards grants nobody."""
    token = hold(site, 'w/http')
    body = json.dumps({'procedure': f'{site.address_root}.lock-registry.lease.acquire',
                       'args': [], 'kwargs': {'resource': 'w/http', 'owner': 'abandoned',
                                              'lease': 60, 'timeout': 4.0}}).encode()
    with socket.create_connection(('127.0.0.1', site.port), timeout=10) as s:
        s.sendall(b'POST /call HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                  b'Content-Type: application/json\r\n'
                  + f'Content-Length: {len(body)}\r\n\r\n'.encode() + body)
        wait_for(lambda: waiting(site, 'abandoned'), 'the HTTP request waiting')
    sent = time.monotonic()
    wait_for(lambda: not waiting(site, 'abandoned'), 'the abandoned request ended',
             timeout=4.0 + BACK)
    assert time.monotonic() - sent < 4.0 + ANSWER_MARGIN
    [row] = rows(site, 'timeout', 'abandoned')
    release(site, 'w/http', token)
    assert holder(site, 'w/http') is None
    assert rows(site, 'grant', 'abandoned') == []


def test_router_restart_withdraws_waiting_requests_never_granted_after(site, callers):
    """When the router restarts while a WAMP caller's request waits (its call
    fails with the connection), the registry withdraws every waiting request
    as it loses the router; after everyone re-joined, the holder's release
    grants nobody."""
    token = hold(site, 'w/restart')
    c = callers(resource='w/restart', owner='before-restart', lease=60, timeout=50)
    c.next('called')
    wait_for(lambda: waiting(site, 'before-restart'), 'the caller waiting')
    site.stop_router()
    site.start_router()
    wait_lease_rpcs(site)
    assert waiting(site) == []
    [row] = rows(site, 'cancel', 'before-restart')
    assert row['detail']['reason'] == 'the registry lost its router connection'
    release(site, 'w/restart', token)
    assert holder(site, 'w/restart') is None
    assert rows(site, 'grant', 'before-restart') == []


# -- fair queues -------------------------------------------------------------------------

def test_one_clients_flood_does_not_refuse_another_owners_request(site, callers):
    """When one client floods the registry with 1,000 queued requests, only
    its own beyond the per-owner limit are refused (naming it); another
    owner's request for an unrelated busy resource still queues and is
    granted at the release, and one for a free resource is granted at once.
    When the flooding client leaves, its waiting requests are withdrawn."""
    token = hold(site, 'w/flooded')
    other = hold(site, 'w/other')
    # timeout 600 (the most): none of the 64 it may queue can time out during the test
    flood = callers(count=1000, resource='w/flooded', owner='flood', lease=5, timeout=600)
    refused = [flood.next(('answer', 'error')) for _ in range(1000 - 64)]
    assert [e for e in refused if e['event'] == 'error'] == [], flood.log_path
    assert all(a['reply']['ok'] is False for a in refused)
    assert refused[0]['reply']['message'] == (
        "Refused: owner 'flood' already has 64 requests waiting (max_waiting_per_owner=64)")
    queued = waiting(site, 'flood')
    assert len(queued) == 64, (
        f"{len(queued)} of the flood's requests waiting; how the others ended: "
        f"{[(r['action'], r['detail'].get('reason')) for r in history(site)[:5]]}; "
        f"the caller: {flood.seen[-3:]}, see {flood.log_path}")
    client = registry(site)
    started = client.acquire.start(resource='w/other', owner='alice', lease=5, timeout=50)
    assert started.status == 0, started
    wait_for(lambda: waiting(site, 'alice'), "alice's request waiting")
    release(site, 'w/other', other)
    reply = client.acquire.wait(timeout=BACK)
    assert reply.session['success'] is True, reply.session['messages']
    # (an OCS task's grant carries no lease id: it runs to its 5 s expiry)
    wait_for(lambda: holder(site, 'w/other') is None, "alice's task lease expire", BACK)
    free = take_lease(site, 'w/free', owner='alice', lease=5)
    assert free['success'] is True, free['messages']
    release(site, 'w/free', free['data']['token'])
    flood.say('leave')
    assert flood.proc.wait(BACK) == 0
    wait_for(lambda: not waiting(site, 'flood'), 'the flood withdrawn', timeout=20)
    release(site, 'w/flooded', token)
    assert holder(site, 'w/flooded') is None
