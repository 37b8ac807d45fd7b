"""Site-wide lease round trip (acquire + release) from an agent and from a
script, beside ocs's AccessDirector exclusive-access grant on the same router.

One real site is started with :class:`tools.devsite.Site` on free
loopback ports, from a bench site config written into a temporary directory
(crossbar config copied beside it, as ``tests/integration/test_site_lock.py``
does): the crossbar router, the ``LockRegistryAgent`` ``lock-registry``
(``--db`` in the site's work directory) and ocs's ``AccessDirector``
``access-director``. The AccessDirector's config (``--config-file``) is the
minimal one that lets a client request exclusive access: no password rules
and one grant block, ``bench-grant`` (no grant password), whose single grant
gives credential level 3 on the instance ``bench-target`` and locks levels
1..3 out there; its ``passwords`` give everyone level 1 and the probe's
password (``bench-probe``) level 2. Two unmodified ocs ``FakeDataAgent``\ s
obey them: ``bench-target`` under ``director:access-director``, and
``bench-ours`` under ``director:lock-registry``, which runs with
``--access-director``, the *same* config file as ``--access-config``
(unchanged) and a resources file declaring ``bench/hwp`` (covering
``bench-ours``; ad-hoc paths allowed, so the round trips below use fresh
paths that cover no agent).

Timed, one call after another (``time.perf_counter``):

(a) **ours, from an agent (WAMP)** -- a raw autobahn session (``Component``
    run by the Twisted reactor in one background thread; TCP_NODELAY set with
    :func:`ocs_locking.wamp.set_nodelay` on join), as an agent's reactor
    code would call it: ``observatory.lock-registry.lease.acquire(resource,
    owner, lease=30, timeout=0)`` on a fresh resource path each time
    (``bench/wamp/rN``), then ``.lease.release(resource, lease_id)`` (the
    grant's secret, returned in the acquire's reply). One
    round trip = both calls (2 WAMP calls), timed on the reactor thread.
    The registry commits each grant, release and audit record to SQLite
    (WAL) before it replies, so every grant survives a registry kill -9;
    the WAL checkpoints (fsyncs) run in a thread, off the reply path. The
    director keeps its grants in memory only.
(b) **ours, from a script (HTTP)** -- a :class:`Reservation` entered and
    left on fresh paths (``bench/http/rN``): its acquire and its release are
    ONE HTTP POST each to crossbar's ``/call`` bridge, calling the registry's
    lease procedures directly, on one keep-alive connection
    (:class:`~ocs_locking.leases.bridge.BridgeClient`, built once per run as
    a script builds its client once). The POSTs are counted and reported.
    (Before: ``OCSClient`` tasks, ``start`` + ``wait`` each, a new TCP
    connection per POST: 4 HTTP requests per round trip.)
(c) **baseline: ocs AccessDirector** -- its only exclusive-access interface
    is the special WAMP procedure ``observatory.access-director.
    request_exclusive(grant_name, password, action, expire_at, grantee)``
    (registered by its ``manager`` process; it is not an OCS task). Timed:
    ``action='acquire'`` (``expire_at`` now + 100 s) then ``action='release'``
    of ``bench-grant``, both ``strict`` (the default). Two ways, as it is
    offered:

    * (c1) WAMP -- the same raw session as (a), same reactor thread.
    * (c2) HTTP -- ocs's own ``ocs.access.ExclusiveAccessClient`` over an
      ``OCSClient('access-director')``: ``acquire()`` then ``release()``,
      each one HTTP POST to ``/call`` (2 per round trip).

    There is only one grant name (grant names come from the config file), so
    every round trip acquires and releases the same grant; the director keeps
    grants in memory only and answers before any agent hears of the grant.
    Informational: how long until the grant is *distributed* -- from the
    WAMP acquire call to the first message on its ``controls`` feed whose
    ``step`` is at least the step the acquire returned and whose rules carry
    ``lockout_id: bench-grant``, each after a random (seeded) 0..1 s pause
    so the phase of the director's 1-s manager loop, which publishes it, is
    sampled evenly. Ours grants are in force when the reply arrives.
(d) **grant -> enforced at the agent**, ours vs the AccessDirector, the same
    method for both, observed at the agent process: the agent's own time of
    its rule update (ocs's ``get_api()['access_control']['update_timestamp']``,
    ``time.time()`` when its ``_access_handler`` took the new rules; the
    agent runs on this host, same clock) minus the wall time just before the
    acquire is sent (``bench/hwp`` through ``lease.acquire``; ``bench-grant``
    through ``request_exclusive``), read every 5 ms until the agent's
    ``update_count`` has moved on. Then one probe must be refused: the
    agent's ``ops`` procedure, ``abort`` of ``delay_task`` with the probe's
    level-2 password (ocs checks the credential first; otherwise it answers
    "No session active." and changes nothing). The same after the release
    (release -> restored; the probe must be accepted). Samples alternate
    ours, director, each after a random (seeded) 0..1 s pause so the phase
    of the director's 1-s loop is sampled evenly. (A probe that calls
    without pause until refused loads the 2-core machine it measures; it
    gave the same ranking.) Target: ours median <= 20 ms.

(e) **force-release -> holder told**, pushed vs at the next renewal: a
    holder takes a fresh path (``bench/revoke/...``, lease LEASE_E = 3 s,
    renewed every 1 s) -- a :class:`SiteLock` on the bench's WAMP session
    (as an agent holds one) or a :class:`Reservation` over the HTTP bridge
    (the shared BridgeClient, its watch on a connection of its own) --
    waits a random (seeded) 0.05 .. 1 s (so the phase of its renewals is
    sampled evenly), then the registry's ``force_release`` task is started
    with the probe's level-2 password (``OCSClient.force_release.start``,
    one HTTP POST). Timed: from just before that POST to the holder's
    ``on_lost`` (``time.perf_counter`` in the callback; it must name the
    reason given). Each holder both with its lease watch (ours, pushed) and
    with ``watch=False`` (baseline: the same holder told at its next
    renewal), interleaved sample by sample. Target: pushed median <= 100 ms
    for both. Beside them (p1, p2): the same holders *preempted*
    (``preempt.start(..., grace=30, wait=False)``) -> their ``on_preempt``
    (then they release); target median <= 100 ms.

Before each transport 5 round trips per path are run untimed (warm-up); then
ours and the baseline alternate in blocks of 10 round trips (a, c1, a, c1, ...;
then b, c2, ...), so drift in machine load hits both alike. Every reply is
checked (ours ``ok`` with a token; the director's reply without ``error``).
The ratio column is the row's median over its baseline's median (a over c1,
b over c2). Target: (a) median < 5 ms.

``--quick``: N = 30 (a, c1), 20 (b, c2), 3 distribution samples, 3
enforcement samples each, 5 revocation samples per row (< 70 s); full: 500,
200, 10, 20, 30. ``--json PATH`` writes the results. ``main()`` returns 0
when every target passes.
"""
import argparse
import concurrent.futures
import importlib.metadata
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import yaml  # noqa: E402

from ocs_locking.testing import ReactorThread  # noqa: E402
from tools.devsite import Site, SiteError  # noqa: E402
from ocs_locking.wamp import set_nodelay  # noqa: E402

OCS = f"ocs {importlib.metadata.version('ocs')} AccessDirector"
HOST = 'bench'
REGISTRY, DIRECTOR = 'lock-registry', 'access-director'
GRANT = 'bench-grant'
#: The agents the grants lock out (ocs FakeDataAgents), ours and the director's.
OURS_AGENT, DIRECTOR_AGENT = 'bench-ours', 'bench-target'
#: The declared resource that covers OURS_AGENT; the probe's level-2 password.
RESOURCE, PROBE = 'bench/hwp', 'bench-probe'
#: The AccessDirector config: level 1 free, level 2 for the probe, and one
#: exclusive-access block that lets a client lock out bench-target.
DIRECTOR_CONFIG = {
    'passwords_block_default_hashfunc': 'none',
    'passwords': [{'default': True, 'password_1': '', 'password_2': PROBE}],
    'exclusive_access_blocks': [
        {'name': GRANT,
         'grants': [{'instance_id': 'bench-target', 'cred_level': 3,
                     'lockout_levels': [1, 2, 3]}]}]}
BOUND = 30.0            # s: upper bound on any single wait
WARMUP = 5
CHUNK = 10          # round trips per interleaved block
LEASE = 30.0
#: (d): seconds between reads of an agent's access-control state (get_api)
POLL_API = 0.005
#: (e): the holders' lease, seconds (renewed every LEASE_E / 3)
LEASE_E = 3.0
#: (e): the rows, in the order they are sampled: (key, transport, watch)
REVOKE_ROWS = (('e1', 'wamp', True), ('e1b', 'wamp', False),
               ('e2', 'http', True), ('e2b', 'http', False),
               ('p1', 'wamp', 'preempt'), ('p2', 'http', 'preempt'))


def _p99(v):
    return sorted(v)[max(0, math.ceil(0.99 * len(v)) - 1)] if v else None


def _ms(v):
    return None if v is None else v * 1e3


def _stats(v):
    return {'median_ms': _ms(statistics.median(v)) if v else None, 'p99_ms': _ms(_p99(v)),
            'min_ms': _ms(min(v, default=None)), 'max_ms': _ms(max(v, default=None))}


# -- the site -------------------------------------------------------------------------

def write_site_config(workdir):
    """The bench site config, its crossbar config and the director's config."""
    cfgdir = os.path.join(workdir, 'site-config')
    os.makedirs(os.path.join(cfgdir, 'crossbar'))
    shutil.copy(os.path.join(REPO, 'site-config', 'crossbar', 'config.json'),
                os.path.join(cfgdir, 'crossbar', 'config.json'))
    director_cfg = os.path.join(cfgdir, 'access-director.yaml')
    with open(director_cfg, 'w') as f:
        yaml.safe_dump(DIRECTOR_CONFIG, f, sort_keys=False)
    resources = os.path.join(cfgdir, 'resources.yaml')
    with open(resources, 'w') as f:
        yaml.safe_dump({'adhoc': True, 'resources': {RESOURCE: {'instances': [OURS_AGENT]}}},
                       f, sort_keys=False)
    site = {
        'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws',
                'wamp_http': 'http://127.0.0.1:18001/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {HOST: {
            'crossbar_timeout': 0,
            'log-dir': None,
            'agent-instances': [
                {'agent-class': 'LockRegistryAgent', 'instance-id': REGISTRY,
                 'arguments': [['--db', 'bench-leases.db'], ['--access-director'],
                               ['--access-config', director_cfg],
                               ['--resources', resources]]},
                {'agent-class': 'AccessDirector', 'instance-id': DIRECTOR,
                 'arguments': [['--config-file', director_cfg]]},
                {'agent-class': 'FakeDataAgent', 'instance-id': OURS_AGENT,
                 'arguments': [['--access-policy', f'director:{REGISTRY}']]},
                {'agent-class': 'FakeDataAgent', 'instance-id': DIRECTOR_AGENT,
                 'arguments': [['--access-policy', f'director:{DIRECTOR}']]}]}}}
    path = os.path.join(cfgdir, 'bench.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(site, f, sort_keys=False)
    return path


# -- the reactor thread and the WAMP session ------------------------------------------

Reactor = ReactorThread   # the global reactor in a daemon thread (ocs_locking.testing)

class AgentSession:
    """One raw autobahn session on the site's router ("an agent"), with
    TCP_NODELAY, subscribed to the director's ``controls`` feed."""

    def __init__(self, rt, site):
        from autobahn.twisted.component import Component
        self.rt = rt
        self.root = site.address_root
        self.controls = []          # (receive time, message) from the director's feed
        self.nodelay = None
        self.session = None
        self.comp = None
        fut = concurrent.futures.Future()

        def start():
            self.comp = Component(
                transports=[{'url': f'ws://127.0.0.1:{site.port}/ws', 'max_retries': 0}],
                realm=site.realm)

            @self.comp.on_join
            def joined(session, details):
                self.nodelay = set_nodelay(session)
                d = session.subscribe(self._on_controls, f'{self.root}.{DIRECTOR}.feeds.controls')
                d.addCallbacks(lambda _: fut.done() or fut.set_result(session),
                               lambda f: fut.done() or fut.set_exception(f.value))
                return d

            def ended(result):
                if not fut.done():
                    fut.set_exception(RuntimeError(f'the bench WAMP session ended: {result}'))
            self.comp.start(rt.reactor).addBoth(ended)
        rt.reactor.callFromThread(start)
        self.session = fut.result(BOUND)

    def _on_controls(self, data):
        recv = time.perf_counter()
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], dict):
            self.controls.append((recv, data[0]))

    def close(self):
        from twisted.internet import defer
        if self.comp is not None:
            try:
                self.rt.call(lambda: defer.maybeDeferred(self.comp.stop), timeout=10)
            except Exception:
                pass
            self.comp = None


# -- the calls ------------------------------------------------------------------------

def _director_ok(resp):
    return isinstance(resp, dict) and 'error' not in resp


def wait_procedures(rt, agent, timeout=60):
    """Wait until the registry's lease procedures and the director's
    request_exclusive are registered (both register after joining)."""
    from autobahn.wamp.exception import ApplicationError
    root, s = agent.root, agent.session
    probes = [
        lambda: s.call(f'{root}.{REGISTRY}.lease.release', 'bench/probe', 'f' * 32),
        lambda: s.call(f'{root}.{DIRECTOR}.request_exclusive', grant_name='no-such-grant')]
    deadline = time.monotonic() + timeout
    for probe in probes:
        while True:
            try:
                rt.call(probe)
                break
            except ApplicationError as e:
                if e.error != ApplicationError.NO_SUCH_PROCEDURE:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError(f'the lease / request_exclusive procedures were not '
                                   f'registered within {timeout} s')
            time.sleep(0.1)


def run_wamp(rt, agent, kind, n, tag, first=0):
    """n sequential round trips on the reactor thread; kind 'ours' or 'director'."""
    from twisted.internet.defer import inlineCallbacks
    root, s = agent.root, agent.session
    acq_uri = f'{root}.{REGISTRY}.lease.acquire'
    rel_uri = f'{root}.{REGISTRY}.lease.release'
    ad_uri = f'{root}.{DIRECTOR}.request_exclusive'

    @inlineCallbacks
    def loop():
        out = {'total': [], 'acquire': [], 'release': [], 'failures': 0, 'first_failure': None}
        for i in range(first, first + n):
            t0 = time.perf_counter()
            if kind == 'ours':
                res = f'bench/{tag}/r{i}'
                r1 = yield s.call(acq_uri, res, 'bench-agent', lease=LEASE, timeout=0.0,
                                  client='site_lock_bench')
                t1 = time.perf_counter()
                ok1 = isinstance(r1, dict) and r1.get('ok') is True
                r2 = yield s.call(rel_uri, res, r1['data']['lease_id'] if ok1 else 'f' * 32,
                                  client='site_lock_bench')
                ok2 = isinstance(r2, dict) and r2.get('ok') is True
            else:
                r1 = yield s.call(ad_uri, grant_name=GRANT, password=None, action='acquire',
                                  expire_at=time.time() + 100, grantee='bench-agent')
                t1 = time.perf_counter()
                r2 = yield s.call(ad_uri, grant_name=GRANT, password=None, action='release',
                                  grantee='bench-agent')
                ok1, ok2 = _director_ok(r1), _director_ok(r2)
            t2 = time.perf_counter()
            out['total'].append(t2 - t0)
            out['acquire'].append(t1 - t0)
            out['release'].append(t2 - t1)
            if not (ok1 and ok2):
                out['failures'] += 1
                out['first_failure'] = out['first_failure'] or [r1, r2]
        return out
    return rt.call(loop, timeout=BOUND + n * 2.0)


_BRIDGE = {}


def run_http(site, kind, n, tag, first=0):
    """n sequential round trips from this (script) thread over HTTP."""
    from ocs.access import ExclusiveAccessClient
    from ocs.ocs_client import OCSClient

    from ocs_locking.leases.bridge import BridgeClient
    from ocs_locking.leases.reservation import Reservation, RetryPolicy
    if kind == 'ours':
        if 'client' not in _BRIDGE:
            _BRIDGE['client'] = BridgeClient.from_site(REGISTRY, args=site.client_args)
        client = _BRIDGE['client']
    else:
        client = ExclusiveAccessClient(OCSClient(DIRECTOR, args=site.client_args),
                                       grantee='bench-script', grant_name=GRANT)
    out = {'total': [], 'acquire': [], 'release': [], 'failures': 0, 'first_failure': None}
    for i in range(first, first + n):
        t0 = time.perf_counter()
        if kind == 'ours':
            res = Reservation(f'bench/{tag}/r{i}', 'bench-script', lease=LEASE, client=client,
                              client_id='site_lock_bench',
                              retry=RetryPolicy(attempts=1, deadline=None))
            why = None
            sent = client.requests
            try:
                res.acquire()
                ok1 = res.token is not None
            except Exception as e:
                ok1, why = False, repr(e)
            t1 = time.perf_counter()
            ok2 = ok1 and res.release() is not None
            out.setdefault('requests', []).append(client.requests - sent)
        else:
            ok1, r1 = client.acquire(expire_at=time.time() + 100)
            t1 = time.perf_counter()
            ok2, r2 = client.release()
            why = [r1, r2]
        t2 = time.perf_counter()
        out['total'].append(t2 - t0)
        out['acquire'].append(t1 - t0)
        out['release'].append(t2 - t1)
        if not (ok1 and ok2):
            out['failures'] += 1
            out['first_failure'] = out['first_failure'] or why or 'release refused'
    return out


def run_distribution(rt, agent, n):
    """Director acquire (WAMP) -> first controls message carrying the grant."""
    root, s = agent.root, agent.session
    uri = f'{root}.{DIRECTOR}.request_exclusive'
    lat, failures = [], 0
    rng = random.Random(1)
    for _ in range(n):
        time.sleep(rng.uniform(0.0, 1.0))     # a random phase of the director's 1-s loop
        t0 = time.perf_counter()
        r = rt.call(lambda: s.call(uri, grant_name=GRANT, action='acquire',
                                   expire_at=time.time() + 100, grantee='bench-agent'))
        seen = None
        if _director_ok(r):
            deadline = time.monotonic() + 5.0
            while seen is None and time.monotonic() < deadline:
                for recv, msg in list(agent.controls):
                    if recv >= t0 and msg.get('step', -1) >= r['step'] and any(
                            rule.get('lockout_id') == GRANT for rule in msg.get('rules', ())):
                        seen = recv
                        break
                time.sleep(0.002)
        rt.call(lambda: s.call(uri, grant_name=GRANT, action='release', grantee='bench-agent'))
        if seen is None:
            failures += 1
        else:
            lat.append(seen - t0)
    return {'samples': len(lat), 'failures': failures, **_stats(lat)}


def _refused(reply):
    """An agent's ``ops`` reply is ocs's credential rejection."""
    return isinstance(reply, (list, tuple)) and len(reply) >= 2 and reply[0] != 0 \
        and 'credential level' in str(reply[1])


def _accepted(reply):
    return isinstance(reply, (list, tuple)) and len(reply) >= 2 \
        and str(reply[1]).startswith('No session active')


def wait_agents_obey(rt, agent, timeout=60):
    """Wait until both FakeDataAgents accept the probe (they got their
    directors' rules); each round asks each director to send them (agent_poll)."""
    root, s = agent.root, agent.session
    deadline = time.monotonic() + timeout
    for target, director in ((OURS_AGENT, REGISTRY), (DIRECTOR_AGENT, DIRECTOR)):
        while True:
            try:
                reply = rt.call(lambda: s.call(f'{root}.{target}.ops', 'abort', 'delay_task',
                                               password=PROBE))
            except Exception:           # not registered yet
                reply = None
            if _accepted(reply):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f'{target} did not take its rules from {director} within '
                                   f'{timeout} s (last reply {reply!r:.200})')
            try:
                rt.call(lambda: s.call(f'{root}.{director}.agent_poll', instance_id=target,
                                       agent_class='FakeDataAgent'))
            except Exception:
                pass
            time.sleep(0.1)


def run_enforcement(rt, agent, n):
    """(d): grant -> the agent's own rule-update time; release -> again.
    After each, one probe must be refused (granted) / accepted (released)."""
    from twisted.internet.defer import inlineCallbacks
    from autobahn.twisted.util import sleep as dsleep
    root, s = agent.root, agent.session
    acq_uri, rel_uri = f'{root}.{REGISTRY}.lease.acquire', f'{root}.{REGISTRY}.lease.release'
    ad_uri = f'{root}.{DIRECTOR}.request_exclusive'

    @inlineCallbacks
    def updated(target, count, w0):
        """The agent's update_timestamp of its first rule update after
        ``count`` updates (wall clock, shared with this host), or None."""
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            api = yield s.call(f'{root}.{target}', 'get_api')
            ac = api['access_control']
            if ac['update_count'] > count and ac['update_timestamp'] >= w0:
                return ac['update_timestamp'] - w0
            yield dsleep(POLL_API)
        return None

    @inlineCallbacks
    def count_of(target):
        api = yield s.call(f'{root}.{target}', 'get_api')
        return api['access_control']['update_count']

    @inlineCallbacks
    def probe(target):
        return (yield s.call(f'{root}.{target}.ops', 'abort', 'delay_task', password=PROBE))

    @inlineCallbacks
    def sample(kind):
        target = OURS_AGENT if kind == 'ours' else DIRECTOR_AGENT
        count = yield count_of(target)
        w0 = time.time()
        if kind == 'ours':
            r1 = yield s.call(acq_uri, RESOURCE, 'bench-agent', lease=LEASE, timeout=0.0,
                              client='site_lock_bench')
            ok = isinstance(r1, dict) and r1.get('ok') is True
        else:
            r1 = yield s.call(ad_uri, grant_name=GRANT, password=None, action='acquire',
                              expire_at=time.time() + 100, grantee='bench-agent')
            ok = _director_ok(r1)
        enforced = yield updated(target, count, w0)
        ok = ok and _refused((yield probe(target)))
        count = yield count_of(target)
        w1 = time.time()
        if kind == 'ours':
            yield s.call(rel_uri, RESOURCE, r1['data']['lease_id'] if ok else 'f' * 32,
                         client='site_lock_bench')
        else:
            yield s.call(ad_uri, grant_name=GRANT, password=None, action='release',
                         grantee='bench-agent')
        restored = yield updated(target, count, w1)
        ok = ok and _accepted((yield probe(target)))
        return ok, enforced, restored

    rng = random.Random(2)
    out = {k: {'enforced': [], 'restored': [], 'failures': 0} for k in ('ours', 'director')}
    for _ in range(n):
        for kind in ('ours', 'director'):
            time.sleep(rng.uniform(0.0, 1.0))   # a random phase of the director's loop
            ok, enforced, restored = rt.call(lambda: sample(kind), timeout=3 * BOUND)
            if not ok or enforced is None or restored is None:
                out[kind]['failures'] += 1
                continue
            out[kind]['enforced'].append(enforced)
            out[kind]['restored'].append(restored)
    return {kind: {'n': n, 'samples': len(v['enforced']), 'failures': v['failures'],
                   **_stats(v['enforced']),
                   'restored_median_ms': _ms(statistics.median(v['restored']))
                   if v['restored'] else None}
            for kind, v in out.items()}


class _HolderAgent:
    """What a SiteLock needs of an OCSAgent, on the bench's raw session."""

    def __init__(self, agent):
        self.agent_address = f'{agent.root}.bench-holder'
        self._session = agent.session

    def call(self, uri, *args, **kwargs):
        return self._session.call(uri, *args, **kwargs)


def run_revocation(rt, agent, site, n):
    """(e): force_release start -> the holder's on_lost, n samples per row."""
    from ocs import OK
    from ocs.ocs_client import OCSClient

    from ocs_locking.leases.bridge import BridgeClient
    from ocs_locking.leases.reservation import Reservation, RetryPolicy
    from ocs_locking.leases.sitelock import SiteLock
    admin = OCSClient(REGISTRY, privs=PROBE, args=site.client_args)
    if 'client' not in _BRIDGE:
        _BRIDGE['client'] = BridgeClient.from_site(REGISTRY, args=site.client_args)
    shim = _HolderAgent(agent)
    rng = random.Random(5)
    out = {key: {'told': [], 'failures': 0, 'first_failure': None, 'n': n,
                 'transport': transport, 'watch': watch}
           for key, transport, watch in REVOKE_ROWS}
    for i in range(n):
        for key, transport, watch in REVOKE_ROWS:
            row = out[key]
            told, seen = threading.Event(), []
            reason = f'bench revocation {key} {i}'

            def on_lost(why, seen=seen, told=told):
                seen.append((time.perf_counter(), why))
                told.set()
            preempt = watch == 'preempt'
            told_by = dict(on_preempt=lambda why, deadline: on_lost(why)) if preempt else \
                dict(on_lost=on_lost)
            path = f'bench/revoke/{key}/r{i}'
            try:
                if transport == 'wamp':
                    holder = SiteLock(shim, path, lease=LEASE_E, watch=bool(watch),
                                      reactor=rt.reactor, **told_by)
                    rt.call(holder.acquire_deferred, timeout=BOUND)
                else:
                    holder = Reservation(path, 'bench-script', lease=LEASE_E,
                                         client=_BRIDGE['client'], client_id='site_lock_bench',
                                         retry=RetryPolicy(attempts=1, deadline=None),
                                         watch=bool(watch), **told_by)
                    holder.acquire()
                time.sleep(rng.uniform(0.05, LEASE_E / 3))
                t0 = time.perf_counter()
                op = admin.preempt if preempt else admin.force_release
                extra = dict(grace=30.0, wait=False) if preempt else {}
                reply = op.start(resource=path, reason=reason, client='site_lock_bench',
                                 **extra)
                if reply.status != OK:
                    raise RuntimeError(f'{"preempt" if preempt else "force_release"} not '
                                       f'started: {reply.msg}')
                if not told.wait(LEASE_E + 5):
                    raise RuntimeError('the holder was never told')
                at, why = seen[0]
                if reason not in why:
                    raise RuntimeError(f'told without the reason: {why}')
                row['told'].append(at - t0)
                op.wait(timeout=BOUND)
                if preempt:         # it gives way
                    if transport == 'wamp':
                        rt.call(holder.release_deferred, timeout=BOUND)
                    else:
                        holder.release()
            except Exception as e:
                row['failures'] += 1
                row['first_failure'] = row['first_failure'] or repr(e)[:300]
    return {key: dict({k: v for k, v in row.items() if k != 'told'}, samples=len(row['told']),
                      **_stats(row['told']))
            for key, row in out.items()}


def _merge(parts):
    out = {'total': [], 'acquire': [], 'release': [], 'failures': 0, 'first_failure': None,
           'requests': []}
    for p in parts:
        for k in ('total', 'acquire', 'release', 'requests'):
            out[k] += p.get(k, [])
        out['failures'] += p['failures']
        out['first_failure'] = out['first_failure'] or p['first_failure']
    return out


def _summary(raw, n, label, transport, timed):
    return {'label': label, 'transport': transport, 'timed': timed, 'n': n,
            'completed': len(raw['total']), 'failures': raw['failures'],
            'first_failure': raw['first_failure'], **_stats(raw['total']),
            'acquire_median_ms': _ms(statistics.median(raw['acquire'])),
            'release_median_ms': _ms(statistics.median(raw['release'])),
            'http_requests_per_round_trip': sorted(set(raw['requests'])) or None}


def run(quick, keep=False):
    n_wamp, n_http, n_dist, n_enf, n_rev = (30, 20, 3, 3, 5) if quick else \
        (500, 200, 10, 20, 30)
    workdir = tempfile.mkdtemp(prefix='site-lock-bench-')
    rt = site = agent = None
    try:
        site = Site(write_site_config(workdir), HOST, os.path.join(workdir, 'run'), port=0,
                    teardown='kill')
        site.start()
        rt = Reactor()
        agent = AgentSession(rt, site)
        wait_procedures(rt, agent)
        wait_agents_obey(rt, agent)
        rows = {}
        for fn, ours_row, base_row, n, tag, labels in (
                (lambda kind, k, tag, first: run_wamp(rt, agent, kind, k, tag, first),
                 'a', 'c1', n_wamp, 'wamp',
                 (('ours (a): agent, WAMP lease.acquire + lease.release', 'WAMP',
                   '2 WAMP calls'),
                  (f'{OCS} (c1, baseline): WAMP request_exclusive acquire + release',
                   'WAMP', '2 WAMP calls'))),
                (lambda kind, k, tag, first: run_http(site, kind, k, tag, first),
                 'b', 'c2', n_http, 'http',
                 (('ours (b): script, Reservation acquire + release', 'HTTP',
                   '2 HTTP POSTs (one per lease call, keep-alive)'),
                  (f'{OCS} (c2, baseline): HTTP ExclusiveAccessClient acquire + release',
                   'HTTP', '2 HTTP POSTs')))):
            fn('ours', WARMUP, f'warm-{tag}', 0)
            fn('director', WARMUP, None, 0)
            raw = {'ours': _merge([]), 'director': _merge([])}
            for first in range(0, n, CHUNK):        # interleaved blocks: drift hits both
                k = min(CHUNK, n - first)
                for kind in ('ours', 'director'):
                    raw[kind] = _merge([raw[kind], fn(kind, k, tag, first)])
            rows[ours_row] = _summary(raw['ours'], n, *labels[0])
            rows[base_row] = _summary(raw['director'], n, *labels[1])
        dist = run_distribution(rt, agent, n_dist)
        dist['enforcement'] = run_enforcement(rt, agent, n_enf)
        dist['revocation'] = run_revocation(rt, agent, site, n_rev)
        info = {'nodelay': agent.nodelay, 'db': os.path.join(site.workdir, 'bench-leases.db'),
                'director_config': DIRECTOR_CONFIG}
        return rows, dist, info, workdir
    finally:
        if agent is not None:
            agent.close()
        if site is not None:
            site.close()
        if rt is not None:
            rt.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# -- report -----------------------------------------------------------------------------

def _f(v, fmt='{:.2f}'):
    return 'n/a' if v is None else fmt.format(v)


def print_table(rows, dist):
    base = {'a': 'c1', 'b': 'c2'}
    print('Acquire + release round trip, one after another, on one site '
          '(crossbar on loopback).\n')
    print('| path | median (ms) | p99 (ms) | N | ratio (median / baseline median) |')
    print('|---|---:|---:|---:|---:|')
    for key in ('a', 'c1', 'b', 'c2'):
        r = rows[key]
        if key in base:
            b = rows[base[key]]
            ratio = (f"{r['median_ms'] / b['median_ms']:.2f}x of ({base[key]})"
                     if r['median_ms'] and b['median_ms'] else 'n/a')
        else:
            ratio = '1 (baseline)'
        print(f"| {r['label']} [{r['timed']}] | {_f(r['median_ms'])} | {_f(r['p99_ms'])} | "
              f"{r['n']} | {ratio} |")
    print()
    for key in ('a', 'c1', 'b', 'c2'):
        r = rows[key]
        print(f"({key}) split: acquire median {_f(r['acquire_median_ms'])} ms, release median "
              f"{_f(r['release_median_ms'])} ms; min {_f(r['min_ms'])} ms, max "
              f"{_f(r['max_ms'])} ms; failed round trips: {r['failures']} of {r['completed']}")
    print(f"\n(b) HTTP requests per round trip (counted by the client): "
          f"{rows['b'].get('http_requests_per_round_trip')}")
    for key, base_key in base.items():
        r, b = rows[key], rows[base_key]
        ratio = r['median_ms'] / b['median_ms'] if r['median_ms'] and b['median_ms'] else None
        print(f"({key}) / ({base_key}) median ratio {_f(ratio)} (goal <= 1.00: "
              f"{'met' if ratio is not None and ratio <= 1.0 else 'NOT met'})")
    print(f"\nInformational, {OCS}: WAMP acquire call -> the grant on its `controls` "
          f"feed (what agents act on): median {_f(dist['median_ms'], '{:.0f}')} ms, "
          f"max {_f(dist['max_ms'], '{:.0f}')} ms over {dist['samples']} grants "
          f"(not seen within 5 s: {dist['failures']}). Ours is in force when the reply "
          f"arrives.\n")
    enf = dist.get('enforcement')
    if enf:
        print('(d) Grant -> enforced at the agent (the agent\'s own rule-update time, then a '
              'locked-out credential refused), interleaved.\n')
        print('| path | median (ms) | p99 (ms) | N | ratio (median / baseline median) | '
              'release -> restored, median (ms) |')
        print('|---|---:|---:|---:|---:|---:|')
        o, d = enf['ours'], enf['director']
        ratio = (f"{o['median_ms'] / d['median_ms']:.3f}x" if o['median_ms'] and
                 d['median_ms'] else 'n/a')
        print(f"| ours (d): lease.acquire of {RESOURCE} -> {OURS_AGENT} refuses | "
              f"{_f(o['median_ms'])} | {_f(o['p99_ms'])} | {o['samples']} | {ratio} | "
              f"{_f(o['restored_median_ms'])} |")
        print(f"| {OCS} (d, baseline): request_exclusive -> {DIRECTOR_AGENT} refuses | "
              f"{_f(d['median_ms'])} | {_f(d['p99_ms'])} | {d['samples']} | 1 (baseline) | "
              f"{_f(d['restored_median_ms'])} |")
        print(f"\n(d) failed samples: ours {o['failures']}, director {d['failures']}\n")
    rev = dist.get('revocation')
    if rev:
        print('(e) Force-release -> holder told (force_release task started -> the '
              "holder's on_lost), interleaved.\n")
        print('| path | median (ms) | p99 (ms) | N | ratio (median / baseline median) |')
        print('|---|---:|---:|---:|---:|')
        names = {'e1': 'ours (e1): SiteLock (WAMP), lease watch, pushed',
                 'e1b': 'baseline (e1b): the same SiteLock, watch=False: told at its next '
                        'renewal',
                 'e2': 'ours (e2): Reservation (HTTP), lease watch, pushed',
                 'e2b': 'baseline (e2b): the same Reservation, watch=False: told at its next '
                        'renewal',
                 'p1': 'ours (p1): SiteLock (WAMP), preempt -> on_preempt',
                 'p2': 'ours (p2): Reservation (HTTP), preempt -> on_preempt'}
        for key, base_key in (('e1', 'e1b'), ('e1b', None), ('e2', 'e2b'), ('e2b', None),
                              ('p1', 'e1b'), ('p2', 'e2b')):
            r = rev[key]
            b = rev.get(base_key) if base_key else None
            ratio = '1 (baseline)' if b is None else (
                f"{r['median_ms'] / b['median_ms']:.3f}x of ({base_key})"
                if r['median_ms'] and b['median_ms'] else 'n/a')
            print(f"| {names[key]} | {_f(r['median_ms'])} | {_f(r['p99_ms'])} | "
                  f"{r['samples']} | {ratio} |")
        print('\n(e) failed samples: ' + ', '.join(f"{k} {v['failures']}"
                                                  for k, v in rev.items()) + '\n')


def targets(rows, dist=None):
    a = rows['a']
    enf = (dist or {}).get('enforcement')
    extra = []
    if enf:
        o = enf['ours']
        extra = [dict(name='(d) grant -> enforced at the agent, median <= 20 ms',
                      detail=f"{_f(o['median_ms'])} ms",
                      passed=o['median_ms'] is not None and o['median_ms'] <= 20),
                 dict(name='(d) every enforcement sample seen (ours and baseline)',
                      detail=', '.join(f"{k} {v['failures']}/{v['n']} failed"
                                       for k, v in enf.items()),
                      passed=all(v['failures'] == 0 for v in enf.values()))]
    rev = (dist or {}).get('revocation')
    if rev:
        extra += [dict(name=f'(e) force-release -> {who} told, median <= 100 ms',
                       detail=f"{_f(rev[key]['median_ms'])} ms",
                       passed=rev[key]['median_ms'] is not None
                       and rev[key]['median_ms'] <= 100)
                  for key, who in (('e1', 'SiteLock'), ('e2', 'Reservation'))]
        extra += [dict(name=f'(e) preempt -> {who} told (on_preempt), median <= 100 ms',
                       detail=f"{_f(rev[key]['median_ms'])} ms",
                       passed=rev[key]['median_ms'] is not None
                       and rev[key]['median_ms'] <= 100)
                  for key, who in (('p1', 'SiteLock'), ('p2', 'Reservation'))]
        extra.append(dict(name='(e) every revocation sample told (pushed and baseline)',
                          detail=', '.join(f"{k} {v['failures']}/{v['n']} failed"
                                           for k, v in rev.items()),
                          passed=all(v['failures'] == 0 for v in rev.values())))
    return extra + [
        dict(name='(a) median < 5 ms from an agent (WAMP)',
             detail=f"{_f(a['median_ms'])} ms", passed=a['median_ms'] is not None
             and a['median_ms'] < 5),
        dict(name='every round trip granted and released (ours and baseline)',
             detail=', '.join(f"{k} {r['failures']}/{r['completed']} failed"
                              for k, r in rows.items()),
             passed=all(r['failures'] == 0 and r['completed'] == r['n']
                        for r in rows.values())),
    ]


def main(args=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true',
                   help='N = 30 (WAMP), 20 (HTTP), 3 distribution and 3 enforcement '
                        'samples, 5 revocation samples per row (< 70 s)')
    p.add_argument('--json', metavar='PATH', help='write the results dict here')
    p.add_argument('--keep', action='store_true', help='keep the site work dir (logs)')
    opts = p.parse_args(args)
    start = time.perf_counter()
    try:
        rows, dist, info, workdir = run(opts.quick, opts.keep)
    except (SiteError, RuntimeError, concurrent.futures.TimeoutError) as e:
        print(f'site_lock_bench: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    print_table(rows, dist)
    tg = targets(rows, dist)
    for t in tg:
        print(f"{'PASS' if t['passed'] else 'FAIL'}: {t['name']} ({t['detail']})")
    elapsed = time.perf_counter() - start
    print(f"\n{'quick' if opts.quick else 'full'} run: {elapsed:.1f} s, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; bench session "
          f"TCP_NODELAY: {info['nodelay']}" + (f'; site logs in {workdir}' if opts.keep else ''))
    if opts.json:
        with open(opts.json, 'w') as fh:
            json.dump(dict(results=rows, distribution=dist, targets=tg, baseline=OCS,
                           info=info, quick=opts.quick, elapsed_s=elapsed), fh, indent=2,
                      default=str)
    return 0 if all(t['passed'] for t in tg) else 1


if __name__ == '__main__':
    sys.exit(main())
