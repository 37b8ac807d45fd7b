"""The registry's site-wide lease tasks on a real site (crossbar on loopback,
the registry launched with ocs-agent-cli), over HTTP OCSClient, through
Reservation and through ``ocs-locks reserve/release/force-release/history``.

The registry restart runs last.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tools.devsite import Site
from ocs_locking.leases.reservation import LeaseLost, Reservation, RetryPolicy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('leases-site'), port=0,
              teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


def ocs_client(site, privs=None):
    from ocs.ocs_client import OCSClient
    return OCSClient('lock-registry', privs=privs, args=site.client_args)


def leases(registry):
    """The leases task's data, each grant without ``expires_in`` (seconds
    left as the registry answered: it changes between two reads of the same
    state; tests/integration/test_queue.py and the unit tests check it)."""
    data = registry.leases().session['data']
    for g in data.get('grants') or []:
        g.pop('expires_in', None)
    return data


def grants(registry):
    return {g['resource']: g for g in leases(registry)['grants']}


def take(client, **params):
    """Acquire through the lease procedure (over the client's HTTP bridge, as
    Reservation does): (ok, message, data), data with the secret lease_id."""
    from ocs_locking.leases.bridge import OCSClientTransport
    ans = OCSClientTransport(client).lease_call('acquire', params,
                                                wait=params.get('timeout', 0))
    assert ans.answered, ans.message
    return ans.ok, ans.message, ans.data


def answer(reply):
    """(success, the task's own message, data) of a finished task."""
    s = reply.session
    texts = [m[1] for m in s.get('messages', []) if not m[1].startswith('Status is now')]
    return s.get('success'), texts[-1] if texts else reply.msg, s.get('data')


def poll(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f'never saw {what}'
        time.sleep(0.1)


def ocs_locks(site, *args, timeout=60, env=None):
    return subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_lease_acquire_busy_renew_release(site, registry):
    """When alice acquires a resource, bob is refused with a message naming
    alice; alice renews and releases with her lease id; the next grant has
    a larger token."""
    ok, msg, data = take(registry, resource='it/acq', owner='alice', lease=30)
    assert ok, msg
    token, lease_id = data['token'], data['lease_id']
    assert data['owner'] == 'alice' and data['resource'] == 'it/acq'
    ok, msg, data = take(registry, resource='it/acq', owner='bob', lease=30)
    assert not ok and "held by 'alice'" in msg and msg.count('\n') == 0
    assert [h['owner'] for h in data['holders']] == ['alice']
    before = grants(registry)['it/acq']['expires']
    ok, msg, data = answer(registry.renew(resource='it/acq', lease_id=lease_id, lease=60))
    assert ok and data['expires'] > before
    ok, msg, _ = answer(registry.release(resource='it/acq', lease_id=lease_id))
    assert ok and 'it/acq' not in grants(registry)
    ok, msg, data = take(registry, resource='it/acq', owner='bob', lease=30)
    assert ok and data['token'] > token
    assert answer(registry.release(resource='it/acq', lease_id=data['lease_id']))[0]


#: A subscriber in its own process: prints every message on the registry's
#: feeds (prefix match) as one JSON line, after a first line "subscribed".
FEED_LISTENER = """
import json, os, sys
OUT = os.fdopen(os.dup(1), 'w', buffering=1)     # autobahn logs to stdout: to stderr
sys.stdout = sys.stderr
from autobahn.twisted.wamp import ApplicationRunner, ApplicationSession
from autobahn.wamp.types import SubscribeOptions
from twisted.internet.defer import inlineCallbacks

class Listener(ApplicationSession):
    @inlineCallbacks
    def onJoin(self, details):
        def on(*args, **kwargs):
            OUT.write(json.dumps([args, kwargs], default=str) + '\\n')
        yield self.subscribe(on, sys.argv[3], options=SubscribeOptions(match='prefix'))
        OUT.write('subscribed\\n')

ApplicationRunner(sys.argv[1], sys.argv[2]).run(Listener)
"""


def test_lease_id_appears_nowhere_public(site, registry, tmp_path):
    """When a lease is taken (through the procedure), renewed, refused to a
    third party and released, its lease_id is in no task result (status,
    leases, history, renew, release), no message on the registry's feeds,
    no line of the registry's log and no byte of its SQLite files."""
    errors = open(tmp_path / 'listener.log', 'w')
    listener = subprocess.Popen(
        [sys.executable, '-c', FEED_LISTENER, f'ws://127.0.0.1:{site.port}/ws', site.realm,
         'observatory.lock-registry.feeds'], stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        first = listener.stdout.readline()      # '' if it died
        assert first.strip() == 'subscribed', (tmp_path / 'listener.log').read_text()
        ok, msg, g = take(registry, resource='it/secret', owner='ivy', lease=30, note='s')
        assert ok, msg
        lid = g['lease_id']
        public = [answer(registry.renew(resource='it/secret', lease_id=lid, lease=30)),
                  answer(registry.renew(resource='it/secret', lease_id=lid[::-1])),
                  leases(registry), registry.status().session,
                  answer(registry.release(resource='it/secret', lease_id=lid)),
                  answer(registry.history(resource='it/secret', limit=50))]
        # The registry's feeds: wait for the heartbeat that follows all this.
        feed = []
        for _ in range(200):
            line = listener.stdout.readline()
            assert line, (tmp_path / 'listener.log').read_text()
            feed.append(line)
            if 'heartbeat' in line and len(feed) > 2:
                break
    finally:
        listener.kill()
        listener.wait(10)
        errors.close()
    history = public[-1][2]['history']
    assert {r['action'] for r in history} >= {'grant', 'renew', 'release', 'refuse'}
    with open(site.log_path('lock-registry')) as f:
        log = f.read()
    assert "it/secret" in log or 'lease' in log
    raw = b''
    for name in os.listdir(site.workdir):
        if name.startswith('lock-registry.db'):
            with open(os.path.join(site.workdir, name), 'rb') as f:
                raw += f.read()
    assert raw
    for secret in (lid, lid[::-1]):
        assert secret not in repr(public) and secret not in ''.join(feed)
        assert secret not in log and secret.encode() not in raw


def test_lease_acquire_task_grants_without_a_lease_id_and_says_why(site, registry):
    """When a script uses the OCS acquire task (whose session ocs shows to
    anyone), the grant has no lease id, its message says so and names the
    lease procedure, and neither renew nor release by its token works: the
    lease runs to its expiry."""
    ok, msg, data = answer(registry.acquire(resource='it/task', owner='jo', lease=1.5))
    assert ok and 'lease_id' not in data
    assert not __import__('re').search(r'[0-9a-f]{32}', repr(registry.acquire.status()))
    assert 'No lease_id (task results are public)' in msg
    assert 'observatory.lock-registry.lease.acquire' in msg
    ok, msg, _ = answer(registry.release(resource='it/task', lease_id=data['token']))
    assert not ok and msg == 'Refused: lease_id must be a string of 32 hex digits, not a int'
    poll(lambda: 'it/task' not in grants(registry), 'the lease expire', timeout=10)


def test_lease_third_party_cannot_renew_or_release_with_the_token(site, registry):
    """When another script calls the lease procedures with only the holder's
    public token, or a lease id of its own, it is refused in one line, the
    holder's lease keeps its expiry, and the refusals are in the history."""
    from ocs_locking.leases.bridge import OCSClientTransport
    ok, _, g = take(registry, resource='it/third', owner='kim', lease=60)
    assert ok
    before = grants(registry)['it/third']
    other = OCSClientTransport(ocs_client(site))
    _, _, mine = take(registry, resource='it/third-own', owner='mallory', lease=60)
    answers = [other.lease_call('renew', {'resource': 'it/third', 'token': g['token'],
                                          'lease': 3600}),
               other.lease_call('release', {'resource': 'it/third', 'token': g['token']}),
               other.lease_call('release', {'resource': 'it/third',
                                            'lease_id': mine['lease_id']})]
    assert [a.ok for a in answers] == [False, False, False]
    assert answers[0].message.startswith('Refused: lease_id is required: ')
    assert answers[2].message.startswith("Refused: that lease_id does not hold 'it/third' "
                                         "(held by 'kim'")
    assert grants(registry)['it/third'] == before
    rows = answer(registry.history(resource='it/third', action='refuse', limit=10))[2]
    assert {r['detail']['call'] for r in rows['history']} == {'renew', 'release'}
    for lease in (g, mine):
        assert answer(registry.release(resource=lease['resource'],
                                       lease_id=lease['lease_id']))[0]


def test_lease_queued_acquire_is_granted_when_the_holder_releases(site, registry):
    """When bob's acquire waits in the queue (timeout 20 s, another thread) and
    alice releases, bob is granted at once."""
    ok, _, data = take(registry, resource='it/queue', owner='alice', lease=30)
    assert ok
    result = {}
    bob = ocs_client(site)
    t = threading.Thread(target=lambda: result.update(
        r=take(bob, resource='it/queue', owner='bob', lease=30, timeout=20)))
    t.start()
    poll(lambda: leases(registry)['waiting'], 'bob waiting')
    assert answer(registry.release(resource='it/queue', lease_id=data['lease_id']))[0]
    t.join(20)
    assert not t.is_alive()
    ok, msg, got = result['r']
    assert ok, msg
    assert got['owner'] == 'bob' and got['token'] > data['token']
    assert answer(registry.release(resource='it/queue', lease_id=got['lease_id']))[0]


def test_lease_tree_exclusion_both_ways(site, registry):
    """When a tree lease holds it/tree, it/tree/hwp is busy; when it/tree/hwp
    is held, a tree lease on it/tree is busy; a plain lease on it/tree
    coexists with it/tree/hwp."""
    ok, _, top = take(registry, resource='it/tree', owner='sched', lease=30,
                                         tree=True)
    assert ok
    ok, msg, _ = take(registry, resource='it/tree/hwp', owner='op', lease=30)
    assert not ok and "it/tree held by 'sched'" in msg
    assert answer(registry.release(resource='it/tree', lease_id=top['lease_id']))[0]
    ok, _, low = take(registry, resource='it/tree/hwp', owner='op', lease=30)
    assert ok
    ok, msg, _ = take(registry, resource='it/tree', owner='sched', lease=30,
                                         tree=True)
    assert not ok and "it/tree/hwp held by 'op'" in msg
    ok, _, plain = take(registry, resource='it/tree', owner='sched', lease=30)
    assert ok
    for g in (low, plain):
        assert answer(registry.release(resource=g['resource'], lease_id=g['lease_id']))[0]


def test_lease_force_release_needs_privileges_and_is_audited(site, registry):
    """When force_release comes without privileges it is refused, saying the
    credential level needed, and the lease stays; with privs='demo-operator'
    it revokes the lease, the holder's Reservation is lost at its next
    renewal, and the history records who (declared, with the credential
    level) and why; the grant's caller, an HTTP script, is marked declared."""
    res = Reservation('it/force', 'alice', lease=1.5, note='bench work',
                      args=site.client_args, retry=RetryPolicy(attempts=1))
    with res:
        reply = registry.force_release(resource='it/force', reason='no privs')
        assert reply.status != 0 and 'requires credential level 2' in reply.msg
        assert grants(registry)['it/force']['owner'] == 'alice'
        admin = ocs_client(site, privs='demo-operator')
        ok, msg, data = answer(admin.force_release(resource='it/force',
                                                   reason='cryostat service', client='it'))
        assert ok and msg == 'Revoked it/force from alice: cryostat service'
        assert [g['owner'] for g in data['revoked']] == ['alice']
        poll(lambda: res.lost, 'the reservation lost')
        with pytest.raises(LeaseLost, match='revoked.*cryostat service'):
            res.check()
    ok, _, data = answer(registry.history(resource='it/force', limit=5))
    row = next(r for r in data['history'] if r['action'] == 'force_release')
    assert row['owner'] == 'it (declared, cred_level 2)' and row['client'] == 'it'
    assert row['detail']['holder'] == 'alice' and row['detail']['reason'] == 'cryostat service'
    assert row['caller'] == {'identity': 'it', 'verified': False, 'via': 'ocs-task',
                             'cred_level': 2}
    grant = next(r for r in data['history'] if r['action'] == 'grant')
    # (http-bridge once the router discloses callers: the bus component)
    assert grant['caller']['via'] in ('http-bridge', 'wamp') and \
        grant['caller']['verified'] is False and grant['caller']['identity'].startswith(
            'Reservation ')


def test_lease_reservation_retries_then_gives_up(site, registry):
    """When a Reservation meets a held resource it retries by its policy and
    raises ReservationBusy naming the holder; once free, it is granted."""
    from ocs_locking.leases.reservation import ReservationBusy
    ok, _, held = take(registry, resource='it/retry', owner='bob', lease=30)
    res = Reservation('it/retry', 'alice', lease=10, args=site.client_args,
                      retry=RetryPolicy(attempts=3, first=0.1, factor=2, deadline=10))
    with pytest.raises(ReservationBusy, match="it/retry held by 'bob'") as info:
        res.acquire()
    assert info.value.attempts == 3
    assert answer(registry.release(resource='it/retry', lease_id=held['lease_id']))[0]
    with res:
        assert res.tokens['it/retry'] > held['token']
        assert grants(registry)['it/retry']['owner'] == 'alice'
    assert 'it/retry' not in grants(registry)


def test_reservation_that_queued_longer_than_its_lease_holds_a_whole_lease(site, registry):
    """When a Reservation(timeout=20, lease=4) waits in the registry's queue
    behind bob's 7 s lease (longer than its own lease), it is granted at bob's
    expiry and holds: check() passes right after the grant and the lease is
    renewed from there on (regression: LeaseLost right after the grant, the
    resource then blocked for a whole lease)."""
    ok, _, bob = take(registry, resource='it/longq', owner='bob', lease=7)
    assert ok
    res = Reservation('it/longq', 'alice', lease=4, timeout=20, args=site.client_args,
                      retry=RetryPolicy(attempts=1, deadline=None))
    with res:
        assert res.check() == bob['token'] + 1 and res.lost is None
        first = grants(registry)['it/longq']['expires']
        poll(lambda: grants(registry)['it/longq']['expires'] > first, 'a renewal')
        assert res.held and res.check() == bob['token'] + 1
    rows = answer(registry.history(resource='it/longq', owner='alice', action='grant'))[2]
    assert len(rows['history']) == 1


def test_concurrent_reservations_queue_fairly_and_do_not_block_others(site, registry):
    """When one script waits in the queue for a held resource, another script
    reserving an unrelated resource at the same time is granted at once (the
    lease procedures serve many HTTP callers; an OCS task serves one), and the
    waiter is granted as soon as the holder releases."""
    import threading
    holder = Reservation('it/busy', 'holder', lease=30, args=site.client_args)
    holder.acquire()
    waiter = Reservation('it/busy', 'waiter', lease=30, timeout=20, args=site.client_args,
                         retry=RetryPolicy(attempts=1))
    got = threading.Event()

    def wait_for_it():
        waiter.acquire()
        got.set()
    t = threading.Thread(target=wait_for_it, daemon=True)
    t.start()
    deadline = time.monotonic() + 10       # until the waiter is in the registry's queue
    while not answer(registry.leases())[2]['waiting']:
        assert time.monotonic() < deadline, 'the waiter never queued'
        time.sleep(0.05)
    with Reservation('it/elsewhere', 'other', lease=30, args=site.client_args) as other:
        assert other.tokens['it/elsewhere'] >= 1
    assert not got.is_set()
    holder.release()
    assert got.wait(10)
    t.join(10)
    assert waiter.tokens['it/busy'] > holder_token(registry, 'it/busy') - 1
    waiter.release()


def holder_token(registry, resource):
    rows = answer(registry.history(resource=resource, limit=50))[2]['history']
    return max(r['token'] or 0 for r in rows)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=['SIGINT', 'SIGTERM', 'SIGHUP'])
def test_ocs_locks_reserve_holds_until_ctrl_c(site, registry, sig):
    """When `ocs-locks reserve` runs, it prints one granted line, the lease
    shows in the registry, and SIGINT (Ctrl-C), SIGTERM or SIGHUP (terminal
    closed) releases every resource and exits 0."""
    proc = subprocess.Popen([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                             'reserve', 'it/cli', 'it/cli2', '--lease', '3', '--note',
                             'manual work', '--owner', 'carol'],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Reserved it/cli, it/cli2 for 'carol': token(s) it/cli="), \
            line + proc.stderr.read() if proc.poll() is not None else line
        g = grants(registry)
        assert g['it/cli']['owner'] == g['it/cli2']['owner'] == 'carol'
        assert g['it/cli']['note'] == 'manual work'
        first = g['it/cli']['expires']
        poll(lambda: grants(registry)['it/cli']['expires'] > first, 'a renewal')
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0 and err == ''
    assert out.strip() == 'Released it/cli, it/cli2.'
    assert not {'it/cli', 'it/cli2'} & set(grants(registry))


def test_ocs_locks_release_force_release_and_history(site, registry):
    """When ocs-locks is asked to release dave's lease by its token it
    refuses (pointing to force-release), a wrong lease id is refused in one
    line, force-release works only with the password, dave's own lease id
    releases, and the history (table and JSON) says who did each."""
    ok, _, g = take(registry, resource='it/cmd', owner='dave', lease=30)
    p = ocs_locks(site, 'release', 'it/cmd', '--token', str(g['token']))
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert 'ocs-locks force-release it/cmd --reason TEXT' in p.stderr
    p = ocs_locks(site, 'release', 'it/cmd', '--lease-id', 'f' * 32)
    assert p.returncode == 1 and p.stderr.startswith(
        "ocs-locks: release it/cmd: Refused: that lease_id does not hold 'it/cmd' (held by "
        f"'dave', token {g['token']})") and len(p.stderr.splitlines()) == 1
    assert 'it/cmd' in grants(registry)
    p = ocs_locks(site, 'force-release', 'it/cmd', '--reason', 'test')
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1
    assert 'requires credential level 2' in p.stderr
    env = dict(os.environ, OCS_LOCKS_PASSWORD='demo-operator')
    p = ocs_locks(site, 'force-release', 'it/cmd', '--reason', 'test', env=env)
    assert (p.returncode, p.stdout.strip()) == (0, 'Revoked it/cmd from dave: test')
    ok, _, g = take(registry, resource='it/cmd', owner='dave', lease=30)
    p = ocs_locks(site, 'release', 'it/cmd', env=dict(os.environ,
                                                      OCS_LOCKS_LEASE_ID=g['lease_id']))
    assert (p.returncode, p.stdout.strip()) == (0, 'Released it/cmd.')
    p = ocs_locks(site, 'history', 'it/cmd', '--limit', '10')
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ['TIME', 'ACTION', 'RESOURCE', 'OWNER', 'TOKEN', 'CLIENT',
                                'BY', 'DETAIL']
    assert lines[1].split()[2:4] == ['release', 'it/cmd']
    p = ocs_locks(site, 'history', 'it/cmd', '--json')
    rows = json.loads(p.stdout)
    assert [r['action'] for r in rows[:5]] == ['release', 'grant', 'force_release', 'refuse',
                                               'grant']
    assert rows[2]['owner'].startswith('ocs-locks force-release (') and \
        rows[2]['owner'].endswith(') (declared, cred_level 2)')
    assert rows[2]['detail']['reason'] == 'test' and rows[2]['caller']['via'] == 'ocs-task'
    assert rows[3]['ok'] is False and rows[3]['detail']['call'] == 'release'
    assert rows[3]['detail']['reason'].startswith("that lease_id does not hold 'it/cmd'")
    assert all(set(r) == {'kind', 'at', 'action', 'resource', 'owner', 'token', 'client',
                          'detail', 'ok', 'caller'} and r['kind'] == 'lease' for r in rows)
    for bad, what in ((['reserve', 'it/x', '--lease', '0'], '--lease must be 0.5..3600 s'),
                      (['reserve', 'Bad'], 'segment'),
                      (['history', '--limit', '0'], '--limit must be 1..1000')):
        p = ocs_locks(site, *bad)
        assert p.returncode == 1 and what in p.stderr and len(p.stderr.splitlines()) == 1


def test_leases_pages_over_ocs_and_ocs_locks_leases_reads_them_all(site, registry):
    """When the registry holds several leases, its leases task pages them
    (offset/limit over OCS, with the totals), and ``ocs-locks leases --json`` prints every lease (no
    lease id), reading every page."""
    names = [f'it/page-{i:02d}' for i in range(12)]
    for k in range(0, 12, 4):
        ok, _, _ = take(registry, resource=names[k:k + 4], owner='paula', lease=60)
        assert ok
    first = registry.leases(offset=0, limit=5).session['data']
    assert len(first['grants']) + len(first['waiting']) + len(first['counters']) == 5
    assert first['total'] == first['grants_total'] + first['waiting_total'] + \
        first['counters_total'] and first['grants_total'] >= 12
    seen, offset = [], 0
    while offset < first['total']:
        data = registry.leases(offset=offset, limit=5).session['data']
        n = len(data['grants']) + len(data['waiting']) + len(data['counters'])
        assert n and data['offset'] == offset
        seen += [g['resource'] for g in data['grants']]
        offset += n
    assert set(names) <= set(seen)
    p = ocs_locks(site, 'leases', '--json')
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(names) <= {g['resource'] for g in out['grants']}
    assert 'lease_id' not in p.stdout
    p = ocs_locks(site, 'leases')
    assert p.returncode == 0 and any(line.startswith('it/page-00 ') for line in
                                     p.stdout.splitlines())


def test_lease_malformed_requests_are_refused_and_change_nothing(site, registry):
    """When malformed requests arrive over OCS (bad names, bad leases, unknown,
    foreign or malformed lease ids, the token instead of a lease id, renew
    after expiry), each gets success False and one 'Refused: ...' line
    without the lease id, and the registry's leases stay as they were."""
    ok, _, old = take(registry, resource='it/bad', owner='olga', lease=60)
    assert answer(registry.release(resource='it/bad', lease_id=old['lease_id']))[0]
    ok, _, mine = take(registry, resource='it/bad', owner='erin', lease=60)
    assert ok and mine['token'] > old['token']
    ok, _, short = take(registry, resource='it/short', owner='erin', lease=0.5)
    assert ok
    poll(lambda: 'it/short' not in grants(registry), 'the 0.5 s lease expire', timeout=10)
    before = leases(registry)
    t = mine['token']
    requests = [
        ('acquire', dict(resource='', owner='x', lease=5)),
        ('acquire', dict(resource='Upper/Case', owner='x', lease=5)),
        ('acquire', dict(resource='a//b', owner='x', lease=5)),
        ('acquire', dict(resource='a/' + 'b' * 40, owner='x', lease=5)),
        ('acquire', dict(resource='/'.join('a' * 9), owner='x', lease=5)),
        ('acquire', dict(resource=['it/p', 'it/p'], owner='x', lease=5)),
        ('acquire', dict(resource='it/new', owner='x', lease=-1)),
        ('acquire', dict(resource='it/new', owner='x', lease=1e9)),
        ('acquire', dict(resource='it/new', owner='', lease=5)),
        ('acquire', dict(resource='it/new', owner='x', lease=5, timeout=-3)),
        ('renew', dict(resource='it/bad', lease_id='f' * 32, lease=5)),
        ('renew', dict(resource='it/bad', lease_id=t, lease=5)),       # the public token
        ('renew', dict(resource='it/bad', lease_id=mine['lease_id'], lease=-5)),
        ('renew', dict(resource='it/short', lease_id=short['lease_id'], lease=5)),
        ('release', dict(resource='it/bad', lease_id=mine['lease_id'][:-1])),
        ('release', dict(resource='it/bad', lease_id=old['lease_id'])),   # olga's, not erin's
        ('renew', dict(resource='it/bad', lease_id=old['lease_id'], lease=5)),
        ('release', dict(resource='it/nothing', lease_id=mine['lease_id'])),
        ('release', dict(resource='bad name', lease_id=mine['lease_id'])),
        ('release', dict(resource='it/bad')),
        ('renew', dict(resource='it/bad', lease_id=[mine['lease_id']])),
    ]
    for name, params in requests:
        ok, msg, data = answer(getattr(registry, name)(**params))
        assert ok is False, (name, params, msg)
        assert msg.startswith('Refused: ') and '\n' not in msg, (name, params, msg)
        assert mine['lease_id'] not in msg and old['lease_id'] not in msg
        assert 'error' in data
    after = leases(registry)
    counted = [d.pop('refused_lease_ids') for d in (before, after)]
    assert after == before
    # renewals and releases refused for their lease id are counted
    assert [counted[1][c] - counted[0][c] for c in ('renew', 'release')] == [5, 4]
    assert answer(registry.release(resource="it/bad", lease_id=mine["lease_id"]))[0]


def test_lease_registry_restart_keeps_grants_and_tokens_grow(site, registry):
    """When the registry is stopped and started again, a grant made before is
    still there with its token, renewable and releasable with its lease id
    (only its hash was stored), and the next token is larger."""
    ok, _, g = take(registry, resource='it/restart', owner='frank', lease=120)
    assert ok
    site.stop_agent('lock-registry')
    site.start_agent('lock-registry')
    reg = site.wait_agent('lock-registry')
    kept = grants(reg)['it/restart']
    assert (kept['owner'], kept['token']) == ('frank', g['token'])
    assert answer(reg.renew(resource='it/restart', lease_id=g['lease_id'], lease=30))[0]
    assert answer(reg.release(resource='it/restart', lease_id=g['lease_id']))[0]
    ok, _, again = take(reg, resource='it/restart', owner='gina', lease=30)
    assert ok and again['token'] > g['token']
    assert answer(reg.release(resource='it/restart', lease_id=again['lease_id']))[0]


def test_the_reservation_example_in_the_docs_runs(site, registry):
    """When the docs' reservation example runs against the site, every step
    gets both fencing tokens and the leases are gone afterwards."""
    import importlib.util
    path = os.path.join(os.path.dirname(SITE_FILE), '..', 'docs', 'examples', 'reserve_hwp.py')
    spec = importlib.util.spec_from_file_location('reserve_hwp', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    seen = []
    assert example.calibrate(site.client_args, [1, 2, 3],
                             lambda step, tokens: seen.append((step, sorted(tokens)))) == 'done'
    assert seen == [(n, ['satp1/hwp', 'satp1/mount']) for n in (1, 2, 3)]
    assert not {'satp1/hwp', 'satp1/mount'} & set(grants(registry))


def test_ocs_locks_status_shows_site_leases_and_who_waits_below_the_locks(site, registry):
    """When alice holds it/status-view (note 'night run') and a request of
    bob's waits for it, `ocs-locks status` prints the lock table, then a
    site-lease row (owner, token, note, a queue of 1) and bob's waiting line;
    once bob's request is withdrawn and alice has released, neither is shown."""
    ok, msg, data = take(registry, resource='it/status-view', owner='alice', lease=60,
                         note='night run')
    assert ok, msg
    # bob's request waits in the queue as the acquire task (aborting it withdraws it)
    registry.acquire.start(resource='it/status-view', owner='bob', lease=30, timeout=60)
    try:
        poll(lambda: leases(registry)['waiting'], "bob's request waiting")
        proc = ocs_locks(site, 'status')
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split()[:2] == ['LOCK', 'HOLDER']
        header = next(i for i, line in enumerate(lines) if line.startswith('SITE LEASE'))
        row = next(line for line in lines[header:] if line.startswith('it/status-view '))
        fields = row.split()
        assert fields[1:3] == ['alice', str(data['token'])] and fields[-3:] == ['1', 'night',
                                                                                  'run'], row
        assert any(line.startswith('waiting: bob for it/status-view (position 1, gives up ')
                   for line in lines), lines
    finally:
        registry.acquire.abort()
        registry.acquire.wait(timeout=30)
        answer(registry.release(resource='it/status-view', lease_id=data['lease_id']))
    out = ocs_locks(site, 'status').stdout
    assert 'it/status-view' not in out and 'waiting: bob' not in out, out


def test_ocs_locks_why_follows_a_lease_holder_into_the_lease_it_waits_for(site, registry):
    """When alice holds it/why-a and waits for it/why-b, which bob holds,
    `ocs-locks why it/why-a` names alice, then the link to bob's lease and
    that bob waits for nothing; `why sim-device-1/hw` names the acquisition
    process holding the device lock; `--json` is the registry's whole answer;
    a bad target gets one line and exit 1."""
    ok, msg, a = take(registry, resource='it/why-a', owner='alice', lease=60)
    assert ok, msg
    ok, msg, b = take(registry, resource='it/why-b', owner='bob', lease=60, note='calib')
    assert ok, msg
    registry.acquire.start(resource='it/why-b', owner='alice', lease=30, timeout=60)
    try:
        poll(lambda: leases(registry)['waiting'], "alice's request waiting")
        proc = ocs_locks(site, 'why', 'it/why-a')
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"it/why-a (site lease) is held by alice (token "
                                   f"{a['token']}) for "), lines
        assert lines[1].startswith(f"  alice (token {a['token']}) waits for it/why-b (site "
                                   f"lease), held by bob (token {b['token']}) for another "), lines
        assert lines[2:] == [f"  bob (token {b['token']}) waits for nothing", 'nobody waits']
        proc = ocs_locks(site, 'why', 'it/why-b', '--json')
        assert proc.returncode == 0, proc.stderr
        answer_ = json.loads(proc.stdout)
        assert answer_['kind'] == 'lease' and answer_['holder'] == f"bob (token {b['token']})"
        assert [q['owner'] for q in answer_['queue']] == ['alice']
        assert 'lease_id' not in proc.stdout and a['lease_id'] not in proc.stdout
    finally:
        registry.acquire.abort()
        registry.acquire.wait(timeout=30)
        answer(registry.release(resource='it/why-a', lease_id=a['lease_id']))
        answer(registry.release(resource='it/why-b', lease_id=b['lease_id']))
    proc = poll(lambda: (lambda p: p if 'held by acq' in p.stdout else None)(
        ocs_locks(site, 'why', 'sim-device-1/hw')), "sim-device-1's acq in why")
    assert proc.stdout.startswith('sim-device-1/hw is held by acq (session '), proc.stdout
    bad = ocs_locks(site, 'why', 'sim-device-1/nope')
    assert bad.returncode == 1 and bad.stdout == ''
    assert bad.stderr == ("ocs-locks: why: no lock 'sim-device-1/nope' (agent 'sim-device-1' "
                          "reports sim-device-1/hw)\n"), bad.stderr


def test_lease_request_that_would_close_a_deadlock_is_refused_at_once(site, registry):
    """When alice holds it/dl-mount and bob, holding it/dl-hwp, waits for it,
    alice's request to wait for it/dl-hwp would close a cycle: the registry
    refuses it at once (long before its 20 s timeout) with the cycle spelled
    out, and bob is served as soon as alice releases."""
    ok, _, mount = take(registry, resource='it/dl-mount', owner='alice', lease=30)
    assert ok
    bob = ocs_client(site)
    ok, _, hwp = take(bob, resource='it/dl-hwp', owner='bob', lease=30)
    assert ok
    result = {}
    t = threading.Thread(target=lambda: result.update(
        r=take(bob, resource='it/dl-mount', owner='bob', lease=30, timeout=20)))
    t.start()
    poll(lambda: leases(registry)['waiting'], 'bob waiting')
    t0 = time.monotonic()
    ok, msg, _ = take(registry, resource='it/dl-hwp', owner='alice', lease=30, timeout=20)
    assert time.monotonic() - t0 < 20, 'the request waited for its timeout'
    assert not ok
    assert ('deadlock: alice holds it/dl-mount, waits for it/dl-hwp held by bob, which '
            'waits for it/dl-mount') in msg and msg.count('\n') == 0
    assert answer(registry.release(resource='it/dl-mount', lease_id=mount['lease_id']))[0]
    t.join(20)
    assert not t.is_alive()
    ok, msg, got = result['r']
    assert ok, msg
    for g in (got, hwp):
        assert answer(registry.release(resource=g['resource'], lease_id=g['lease_id']))[0]
