"""The site-wide lock registry on a real site: how fast a lock change reaches
the ``ownership`` feed, and whether the registry keeps up with 1,000 events/s.

A site is started with :class:`tools.devsite.Site` on free loopback
ports (a bench site config written into a temporary directory, based on
``site-config/default.yaml``): the crossbar router, the ``LockRegistryAgent``
``lock-registry``, ocs's own ``RegistryAgent`` as ``registry``, and one
``SimulatedDeviceAgent`` ``sim-device-1`` (its ``acq`` process holds the
device lock at 10 Hz) with its simulated device ``bridge-1``. The benchmark
process talks to the site with raw autobahn WAMP sessions, run by the Twisted
reactor in one background thread, and with ocs's ``OCSClient`` (HTTP).

(a) **Propagation latency.** ``set_heater`` is called on ``sim-device-1`` N
    times, one after another, with a random gap of 50..150 ms before each
    (seeded). The task takes the device lock ``hw`` (``@locked``) for about
    3 ms. Two runs: *lock free* (``acq`` stopped, so each call takes a free
    lock) and *acq running* (``acq`` holds the lock at 10 Hz and lends it to
    each call, the demo site's default).

    * ours -- the ``ownership`` feed of ``lock-registry``: the first
      ``change`` row of ``sim-device-1/hw`` whose ``job`` is ``set_heater``,
      per grant (keyed by its ``token``); latency = receive time minus the
      row's ``since`` (the wall time the agent granted the lock). A grant
      counts for call i when its ``since`` lies inside call i. Also timed
      like the baseline: call started -> first row with a new token.
    * ocs ``RegistryAgent`` (baseline) -- the ``agent_operations`` feed of
      ``registry``: the op code of ``sim-device-1``'s ``set_heater``
      (field ``observatory_sim_device_1_set_heater``). The registry only
      learns op codes from the 1 Hz heartbeats and publishes only when they
      change. A call counts as seen when the first op-code change (to
      starting/running, or to succeeded/failed, whichever comes first)
      arrives after the call started and before the next call started;
      latency = receive time minus the time the ``OCSClient`` call started.

    Reported: how many of the N changes each saw, median and p99 latency,
    and how many set_heater grants the device agent itself published on its
    ``locks`` feed (to tell the agent's event folding from registry loss).
    The targets apply to the lock-free run.

(b) **Scale.** A load generator in this process: 50 WAMP sessions
    (``load-00`` .. ``load-49``, one per simulated agent), each publishing a
    heartbeat at 1 Hz on ``observatory.load-NN.feeds.heartbeat`` and lock
    events for 10 locks (``l0`` .. ``l9``) on ``observatory.load-NN.feeds.locks``
    -- ocs feed pairs ``[message, feed_info]`` with the feed_info ocs's
    ``Feed.encoded()`` gives -- at 1,000 events/s in total for 60 s. Events
    go round-robin over agents and locks, alternate acquired / released per
    lock, with per-agent ``seq``, per-process ``boot``, per-lock ``token``
    and ``since`` = ``time.time()`` at publish. A subscriber on the
    ``ownership`` feed matches every row to the event it reports (lock,
    token, held or free). Per 10-s window (by publish time): events
    published and received, publish -> ownership receipt latency (median,
    p99), CPU % and RSS of the ``lock-registry`` process (``/proc``), and
    CPU % of the crossbar process tree. At the end, the registry's
    ``monitor`` session.data gives its ``seq`` and ``dropped`` and its
    table. An event is *superseded* when the registry folded it into a
    later event of the same lock in one reactor turn (only the later row is
    published), *missing* when neither it nor a later event of its lock was
    seen.

    Sustained = the last window's p99 is < 3x the first's and < 250 ms, the
    registry dropped 0 messages, and all 500 load locks (50 agents x 10) are
    in its table; a further target: no event missing.

(c) **The bus component's publish cost.** Two routers only (no agents), one
    with ocs's stock crossbar config (``site-config/crossbar/stock.json``,
    the baseline) and one with the bus component (``config.json``). On each,
    a publisher session registers ``observatory.bench-pub.ops`` (so the
    component lets it publish on its feeds) and a subscriber subscribes to
    ``observatory.bench-pub.feeds.bench``. Rounds alternate between the two
    routers (stock first in even rounds, bus first in odd ones); in a round,
    publishes go one after another, each acknowledged: *ack latency* =
    publish -> acknowledgement, *event latency* = publish -> the subscriber's
    handler (one reactor thread, one clock). Target: the component adds
    less than 0.5 ms to both medians.

(d) **The lock history.** The registry keeps every lock's holds as spans in
    SQLite (``--history-db``). On the site of (a), after it: the demo's
    traffic (``acq`` at 10 Hz lending the lock to one ``set_heater`` a
    second) for 60 s: the spans and file octets the history grew by, and
    per hour. Then (b) runs with the history on (its target: flat memory,
    the last window's RSS < 1.1x the first's; every load lock's spans kept),
    and, in full runs, the same load again on a site whose registry has
    ``--no-history`` (the baseline, ``--no-compare-history`` skips it).

Parts (a) and (b) share one site and one reactor thread (the subscriber, the load
generator and its 50 sessions). The bench's own reactor lag (how late the
generator's 5 ms ticks ran) is reported so a slow bench is not mistaken for
a slow registry.

The site of (a) and (b) runs the bus component (the demo config);
``--stock`` runs them on ocs's stock config instead.

``--quick``: (a) 20 changes, (b) 5 agents x 2 locks at 100 events/s for 5 s
in 1-s windows, (c) 4 rounds of 50 publishes, (d) 10 s, no baseline (< 60 s). ``--json PATH``
writes the results. ``main()`` returns 0 when every target passes.
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
from tools.siteconfig import stock_crossbar_config  # noqa: E402

OCS = f"ocs {importlib.metadata.version('ocs')} RegistryAgent"
SITE_TEMPLATE = os.path.join(REPO, 'site-config', 'default.yaml')
HOST = 'demo'
DEVICE_AGENT = 'sim-device-1'
OPS_FIELD = 'observatory_sim_device_1_set_heater'
OP_NAMES = {1: 'none', 2: 'starting', 3: 'running', 4: 'stopping', 5: 'succeeded',
            6: 'failed', 7: 'expired', 8: 'degraded'}
BOUND = 30.0            # s: upper bound on any single wait
TICK = 0.005            # s between load-generator ticks
CLK_TCK = os.sysconf('SC_CLK_TCK')
MB = 1024 * 1024


def _p99(v):
    return sorted(v)[max(0, math.ceil(0.99 * len(v)) - 1)] if v else None


def _ms(v):
    return None if v is None else v * 1e3


# -- the site -------------------------------------------------------------------------

def write_site_config(workdir, stock=False, history=True):
    """The bench site config (crossbar config beside it, as Site expects);
    ``stock``: ocs's stock crossbar config instead of the bus component;
    ``history=False``: the registry keeps no lock history (``--no-history``)."""
    with open(SITE_TEMPLATE) as f:
        data = yaml.safe_load(f)
    host = data['hosts'][HOST]
    host['simulated-devices'] = [d for d in host['simulated-devices']
                                 if d['name'] == 'bridge-1']
    keep = {'lock-registry', DEVICE_AGENT}
    instances = [i for i in host['agent-instances'] if i['instance-id'] in keep]
    for inst in instances:      # no declared resources: they name agents this site drops
        inst['arguments'] = [a for a in inst.get('arguments') or [] if a[0] != '--resources']
        if inst['instance-id'] == 'lock-registry':
            inst['arguments'].append(['--history-db', HISTORY_DB] if history
                                     else ['--no-history'])
    instances.insert(1, {'agent-class': 'RegistryAgent', 'instance-id': 'registry',
                         'arguments': []})
    host['agent-instances'] = instances
    cfgdir = os.path.join(workdir, 'site-config')
    shutil.copytree(os.path.join(REPO, 'site-config', 'crossbar'),
                    os.path.join(cfgdir, 'crossbar'))
    if stock:
        shutil.copy(stock_crossbar_config(), os.path.join(cfgdir, 'crossbar', 'config.json'))
    # the registry's --access-file (its passwords), beside the site file
    shutil.copy(os.path.join(REPO, 'site-config', 'lock-registry-access.yaml'), cfgdir)
    path = os.path.join(cfgdir, 'bench.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


#: The registry's lock history file, beside the bench site file.
HISTORY_DB = 'lock-history.db'


def history_size(site):
    """``(spans, bytes)`` of the registry's lock history now: the spans in
    it and the octets of the pages in use (read through its WAL, as the
    registry last committed them); (0, 0) without a history file."""
    import sqlite3
    path = os.path.join(os.path.dirname(os.path.abspath(site.site_file)), HISTORY_DB)
    if not os.path.exists(path):
        return 0, 0
    db = sqlite3.connect(f'file:{path}?mode=ro', uri=True, timeout=BOUND)
    try:
        spans = db.execute('SELECT count(*) FROM spans').fetchone()[0]
        pages = db.execute('PRAGMA page_count').fetchone()[0] - \
            db.execute('PRAGMA freelist_count').fetchone()[0]
        return spans, pages * db.execute('PRAGMA page_size').fetchone()[0]
    finally:
        db.close()


# -- the reactor thread ---------------------------------------------------------------

Reactor = ReactorThread   # the global reactor in a daemon thread (ocs_locking.testing)

class Wamp:
    """Raw autobahn sessions on the site's router, started and stopped from
    the reactor thread."""

    def __init__(self, rt, site):
        self.rt = rt
        self.url = f'ws://127.0.0.1:{site.port}/ws'
        self.realm = site.realm
        self.comps = []

    def join(self, subscriptions=(), name='bench'):
        """A joined session; ``subscriptions``: (topic, handler, options) each.
        Returns the session once every subscription is in place."""
        from autobahn.twisted.component import Component
        from twisted.internet.defer import inlineCallbacks
        fut = concurrent.futures.Future()

        def start():
            comp = Component(transports=[{'url': self.url, 'max_retries': 0}],
                             realm=self.realm)
            self.comps.append(comp)

            @comp.on_join
            @inlineCallbacks
            def joined(session, details):
                try:
                    for topic, handler, options in subscriptions:
                        yield session.subscribe(handler, topic, options=options)
                except Exception as e:
                    fut.done() or fut.set_exception(e)
                    raise
                fut.done() or fut.set_result(session)

            def ended(result):
                if not fut.done():
                    fut.set_exception(RuntimeError(f'WAMP session {name} ended: {result}'))
            comp.start(self.rt.reactor).addBoth(ended)
        self.rt.reactor.callFromThread(start)
        return fut.result(BOUND)

    def close(self):
        """Stop every session (bounded)."""
        from twisted.internet import defer

        def stop_all():
            ds = []
            for comp in self.comps:
                try:
                    ds.append(defer.maybeDeferred(comp.stop))
                except Exception:
                    pass
            return defer.DeferredList(ds, consumeErrors=True)
        try:
            self.rt.call(stop_all, timeout=10)
        except Exception:
            pass
        self.comps = []


# -- /proc ------------------------------------------------------------------------------

def _cpu_ticks(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return int(fields[11]) + int(fields[12])     # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def _rss(pid):
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(pid):
    """pid and all its descendants (scan of /proc)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


class CpuMeter:
    """CPU % (of one core) of a process, or of a process tree, between samples."""

    def __init__(self, pid, tree=False):
        self.pid, self.tree = pid, tree
        self._last = (time.monotonic(), self._ticks())

    def _ticks(self):
        pids = _tree(self.pid) if self.tree else [self.pid]
        return sum(_cpu_ticks(p) for p in pids)

    def sample(self):
        now, ticks = time.monotonic(), self._ticks()
        t0, k0 = self._last
        self._last = (now, ticks)
        return 100.0 * (ticks - k0) / CLK_TCK / max(now - t0, 1e-9)


# -- (a) propagation latency ------------------------------------------------------------

class PropagationWatch:
    """Everything (a) listens to, with receive times: the registry's ownership
    rows of the device lock, the device agent's own locks feed, and the ocs
    registry's op codes of set_heater."""

    def __init__(self, site, wamp):
        self.rows = []          # (receive time, token, job, since) of sim-device-1/hw rows
        self.raw = []           # (receive time, event, job, token) on sim-device-1's locks feed
        self.ops = []           # (receive time, op code) at each change of set_heater's op code
        self._last_op = None
        self._lock = threading.Lock()
        root = site.address_root
        wamp.join([(f'{root}.lock-registry.feeds.ownership', self._on_ownership, None),
                   (f'{root}.registry.feeds.agent_operations', self._on_ops, None),
                   (f'{root}.{DEVICE_AGENT}.feeds.locks', self._on_raw, None)],
                  name='propagation')

    def _on_ownership(self, data):
        recv = time.time()
        msg = data[0]
        if not isinstance(msg, dict) or msg.get('kind') != 'change':
            return
        with self._lock:
            for row in msg.get('rows', ()):
                if row.get('lock') == f'{DEVICE_AGENT}/hw':
                    self.rows.append((recv, row['token'], row['job'], row['since']))

    def _on_raw(self, data):
        recv = time.time()
        msg = data[0]
        if isinstance(msg, dict):
            with self._lock:
                self.raw.append((recv, msg.get('event'), msg.get('job'), msg.get('token')))

    def _on_ops(self, data):
        recv = time.time()
        blocks = data[0]
        if not isinstance(blocks, dict):
            return
        for block in blocks.values():
            values = (block.get('data') or {}).get(OPS_FIELD)
            if values:
                with self._lock:
                    for v in values:
                        if v != self._last_op:
                            self._last_op = v
                            self.ops.append((recv, v))

    def copy(self):
        with self._lock:
            return list(self.rows), list(self.raw), list(self.ops)


def _set_acq(client, running):
    """Start or stop the device agent's acq process; wait (bounded) until it is so."""
    status = client.acq.status().session.get('status')
    if running and status not in ('starting', 'running'):
        client.acq.start()
    elif not running and status in ('starting', 'running'):
        client.acq.stop()
        client.acq.wait(timeout=BOUND)
    deadline = time.monotonic() + BOUND
    want = ('running',) if running else ('done', None)
    while client.acq.status().session.get('status') not in want:
        if time.monotonic() > deadline:
            raise RuntimeError(f'{DEVICE_AGENT} acq did not become '
                               f'{"running" if running else "stopped"}')
        time.sleep(0.1)


def _stats(lat):
    return {'median_ms': _ms(statistics.median(lat)) if lat else None,
            'p99_ms': _ms(_p99(lat)), 'max_ms': _ms(max(lat, default=None))}


def run_propagation(site, watch, n_changes, acq, seed=1):
    """N sequential set_heater calls with the device lock free (acq stopped) or
    held by acq at 10 Hz; returns ours vs the ocs registry."""
    client = site.wait_agent(DEVICE_AGENT)
    _set_acq(client, acq)
    time.sleep(2.5)     # > two heartbeats and one snapshot: both registries settle
    rng = random.Random(seed)
    calls, failures = [], 0
    for i in range(n_changes):
        time.sleep(rng.uniform(0.05, 0.15))
        t0 = time.time()
        reply = client.set_heater(value=float(i % 101))
        t1 = time.time()
        failures += reply.session.get('success') is not True
        calls.append((t0, t1))
    time.sleep(2.5)     # > two heartbeats: the baseline's last changes arrive
    rows, raw, ops = watch.copy()
    t_begin, t_end = calls[0][0], time.time()
    nxt = [c[0] for c in calls[1:]] + [t_end]

    # ours, by grant: first row per token with job set_heater; it belongs to the
    # call its since lies in
    grants = {}
    for recv, token, job, since in rows:
        if job == 'set_heater' and token not in grants and since is not None \
                and t_begin <= since <= t_end:
            grants[token] = (recv, since)
    by_since = sorted(grants.values(), key=lambda g: g[1])
    grant_lat, j = [], 0
    for t0, t1 in calls:
        while j < len(by_since) and by_since[j][1] < t0:
            j += 1
        if j < len(by_since) and by_since[j][1] <= t1:
            grant_lat.append(by_since[j][0] - by_since[j][1])
            j += 1
    # ours, any view of the change: first row after the call started with a new token
    token_lat = []
    before = [r for r in rows if r[0] < t_begin]
    last_token = before[-1][1] if before else None
    k = len(before)
    for (t0, t1), tn in zip(calls, nxt):
        while k < len(rows) and rows[k][0] < t0:
            last_token = rows[k][1]
            k += 1
        hit = next((r for r in rows[k:] if r[0] < tn and r[1] != last_token), None)
        if hit is not None:
            token_lat.append(hit[0] - t0)
    # baseline: first op-code change after the call started, before the next one
    base_lat, base_codes = [], {}
    for (t0, t1), tn in zip(calls, nxt):
        hit = next(((r, v) for r, v in ops if t0 <= r < tn), None)
        if hit is not None:
            base_lat.append(hit[0] - t0)
            name = OP_NAMES.get(hit[1], str(hit[1]))
            base_codes[name] = base_codes.get(name, 0) + 1
    raw_sh = sum(1 for r, ev, job, tok in raw if t_begin <= r <= t_end
                 and ev in ('acquired', 'snapshot') and job == 'set_heater')
    call_ms = [(t1 - t0) * 1e3 for t0, t1 in calls]
    return {
        'changes': n_changes, 'acq_running': acq, 'call_failures': failures,
        'call_median_ms': statistics.median(call_ms), 'call_p99_ms': _p99(call_ms),
        'ours': {'seen': len(grant_lat), **_stats(grant_lat),
                 'set_heater_on_agent_feed': raw_sh,
                 'agent_feed_messages': sum(1 for r in raw if t_begin <= r[0] <= t_end),
                 'token_seen': len(token_lat),
                 **{f'token_{k}': v for k, v in _stats(token_lat).items()}},
        'ocs': {'seen': len(base_lat), 'seen_as': base_codes,
                'op_code_changes_on_feed': sum(1 for r, v in ops if t_begin <= r <= t_end),
                **_stats(base_lat)},
    }


# -- (b) scale --------------------------------------------------------------------------

def _feed_info(instance_id, feed, session_id, root):
    """What ocs's Feed.encoded() puts beside every message of a plain feed."""
    address = f'{root}.{instance_id}'
    return {'agent_address': address, 'agg_params': {}, 'feed_name': feed,
            'address': f'{address}.feeds.{feed}', 'record': False,
            'session_id': session_id, 'agent_class': 'LoadAgent'}


class LoadGenerator:
    """n_agents sessions; lock events round-robin over agents and locks at
    ``rate`` events/s for ``duration`` s, heartbeats at 1 Hz; on the reactor."""

    def __init__(self, rt, wamp, root, n_agents, n_locks, rate, duration):
        self.rt, self.wamp, self.root = rt, wamp, root
        self.n_agents, self.n_locks = n_agents, n_locks
        self.rate, self.duration = rate, duration
        self.total = int(round(rate * duration))
        self.agents = []
        self.published = {}     # (lock key, token, held) -> publish time
        self.order = []         # lock key -> [(token, held)] in publish order
        self.count = 0
        self.max_lag = 0.0      # s a tick ran late
        self.heartbeats = 0
        self.t0 = None
        self.done = concurrent.futures.Future()
        self._tick_call = None

    def connect(self):
        for a in range(self.n_agents):
            iid = f'load-{a:02d}'
            session = self.wamp.join(name=iid)
            # an agent registers <root>.<id>.ops first: under the bus component only
            # that session may publish on the agent's feeds
            self.rt.call(session.register, lambda *a, **k: None, f'{self.root}.{iid}.ops',
                         timeout=BOUND)
            sid = str(time.time())
            self.agents.append({
                'id': iid, 'session': session, 'seq': 0, 'boot': time.time(),
                'locks_topic': f'{self.root}.{iid}.feeds.locks',
                'hb_topic': f'{self.root}.{iid}.feeds.heartbeat',
                'locks_info': _feed_info(iid, 'locks', sid, self.root),
                'hb_info': _feed_info(iid, 'heartbeat', sid, self.root),
                'locks': [{'token': 0, 'held': False} for _ in range(self.n_locks)]})

    def start(self):
        self.rt.reactor.callFromThread(self._start)

    def _start(self):
        from twisted.internet import task
        self.t0 = time.time()
        self._m0 = time.monotonic()
        self._next_hb = self._m0
        self._expected_tick = self._m0
        self._tick_call = task.LoopingCall(self._tick)
        self._tick_call.start(TICK, now=True).addErrback(
            lambda f: self.done.done() or self.done.set_exception(f.value))

    def _heartbeats(self):
        for ag in self.agents:
            ag['session'].publish(ag['hb_topic'], [{'monitor': 3}, ag['hb_info']])
        self.heartbeats += 1

    def _tick(self):
        now = time.monotonic()
        self.max_lag = max(self.max_lag, now - self._expected_tick)
        self._expected_tick = max(self._expected_tick + TICK, now)
        if now >= self._next_hb:
            self._next_hb += 1.0
            self._heartbeats()
        due = min(self.total, int(self.rate * (now - self._m0)) + 1)
        n_agents, n_locks = self.n_agents, self.n_locks
        while self.count < due:
            i = self.count
            ag = self.agents[i % n_agents]
            li = (i // n_agents) % n_locks
            lk = ag['locks'][li]
            ag['seq'] += 1
            if lk['held']:
                event, lk['held'] = 'released', False
                job = op = None
            else:
                lk['token'] += 1
                event, lk['held'] = 'acquired', True
                job = op = 'load'
            key = f"{ag['id']}/l{li}"
            t = time.time()
            msg = {'lock': f'l{li}', 'event': event, 'job': job, 'op': op,
                   'session_id': 1 if job else None, 'since': t, 'waiters': 0,
                   'token': lk['token'], 'seq': ag['seq'], 'boot': ag['boot']}
            self.published[(key, lk['token'], lk['held'])] = t
            self.order.append((key, lk['token'], lk['held']))
            ag['session'].publish(ag['locks_topic'], [msg, ag['locks_info']])
            self.count += 1
        if self.count >= self.total:
            self._tick_call.stop()
            self.done.done() or self.done.set_result(self.count)

    def stop(self):
        def halt():
            if self._tick_call is not None and self._tick_call.running:
                self._tick_call.stop()
        try:
            self.rt.call(halt, timeout=10)
        except Exception:
            pass


def run_scale(site, rt, wamp, quick):
    if quick:
        n_agents, n_locks, rate, duration, window = 5, 2, 100.0, 5.0, 1.0
    else:
        n_agents, n_locks, rate, duration, window = 50, 10, 1000.0, 60.0, 10.0
    root = site.address_root
    registry = site.wait_agent('lock-registry')
    gen = LoadGenerator(rt, wamp, root, n_agents, n_locks, rate, duration)
    received = {}       # (key, token, held) -> receive time (first receipt)
    other_rows = [0]    # change rows about non-load agents while loading
    counting = [False]
    lock = threading.Lock()

    def on_ownership(data):
        recv = time.time()
        msg = data[0]
        if not isinstance(msg, dict) or msg.get('kind') != 'change':
            return
        with lock:
            for row in msg.get('rows', ()):
                agent = row.get('agent') or ''
                if not agent.startswith('load-'):
                    other_rows[0] += counting[0]
                    continue
                k = (row['lock'], row['token'], row['job'] is not None)
                if k not in received:
                    received[k] = recv

    wamp.join([(f'{root}.lock-registry.feeds.ownership', on_ownership, None)],
              name='scale-subscriber')
    try:
        gen.connect()
        data0 = registry.monitor.status().session.get('data') or {}
        seq0, dropped0 = data0.get('seq', 0), data0.get('dropped', 0)
        reg_pid = site.agents['lock-registry'].pid
        reg_cpu = CpuMeter(reg_pid)
        cb_cpu = CpuMeter(site.router.pid, tree=True)
        bench_cpu = CpuMeter(os.getpid())
        n_windows = int(round(duration / window))
        with lock:
            counting[0] = True
        gen.start()
        m0 = time.monotonic()
        samples = []
        for w in range(n_windows):
            time.sleep(max(0.0, m0 + (w + 1) * window - time.monotonic()))
            samples.append({'registry_cpu_pct': reg_cpu.sample(),
                            'registry_rss_mb': _rss(reg_pid) / MB,
                            'crossbar_cpu_pct': cb_cpu.sample(),
                            'bench_cpu_pct': bench_cpu.sample()})
        published = gen.done.result(BOUND)
        # drain: wait (bounded) until every lock's last event was seen
        last = {}
        for k in gen.order:
            last[k[0]] = k
        deadline = time.monotonic() + max(10.0, window)
        while time.monotonic() < deadline:
            with lock:
                if all(k in received for k in last.values()):
                    break
            time.sleep(0.1)
        drain_s = time.monotonic() - m0 - duration
        time.sleep(0.5)
        with lock:
            counting[0] = False
            got = dict(received)
            others = other_rows[0]
        data1 = registry.monitor.status().session.get('data') or {}
        seq1, dropped1 = data1.get('seq', 0), data1.get('dropped', 0)
        registry.history(kind='lock', limit=1)     # the registry writes before a query
        spans, history_bytes = history_size(site)
        table = data1.get('locks') or {}
        load_rows = [k for k in table if k.startswith('load-')]
        load_agents = {k.split('/')[0] for k in load_rows}
    finally:
        gen.stop()

    # account for every event: received, superseded by a later event of its lock, missing
    later_seen = set()
    superseded = missing = 0
    windows = [{'published': 0, 'received': 0, 'lat': []} for _ in range(n_windows)]
    for k in reversed(gen.order):
        key = k[0]
        t_pub = gen.published[k]
        w = min(n_windows - 1, max(0, int((t_pub - gen.t0) / window)))
        windows[w]['published'] += 1
        if k in got:
            windows[w]['received'] += 1
            windows[w]['lat'].append(got[k] - t_pub)
            later_seen.add(key)
        elif key in later_seen:
            superseded += 1
        else:
            missing += 1
    by_second = {}
    for k, t_recv in got.items():
        t_pub = gen.published.get(k)
        if t_pub is not None:
            by_second.setdefault(int(t_pub - gen.t0), []).append(t_recv - t_pub)
    rows = []
    for w, (win, smp) in enumerate(zip(windows, samples)):
        lat = win['lat']
        rows.append({'window': w, 'start_s': w * window, 'end_s': (w + 1) * window,
                     'published': win['published'], 'received': win['received'],
                     'median_ms': _ms(statistics.median(lat)) if lat else None,
                     'p99_ms': _ms(_p99(lat)), 'max_ms': _ms(max(lat, default=None)),
                     **smp})
    received_n = sum(win['received'] for win in windows)
    return {
        'agents': n_agents, 'locks_per_agent': n_locks, 'rate_per_s': rate,
        'duration_s': duration, 'window_s': window, 'windows': rows,
        'summary': {
            'published': published, 'expected': gen.total, 'received': received_n,
            'superseded': superseded, 'missing': missing,
            'heartbeats_published': gen.heartbeats * n_agents,
            'registry_seq_delta': seq1 - seq0, 'other_rows': others,
            'registry_dropped': dropped1 - dropped0,
            'table_load_rows': len(load_rows), 'table_load_agents': len(load_agents),
            'expected_rows': n_agents * n_locks, 'drain_s': drain_s,
            'bench_max_tick_lag_ms': gen.max_lag * 1e3,
            'registry_pid': reg_pid, 'history_spans': spans,
            'history_bytes': history_bytes,
        },
        # for diagnosis (JSON only): p99 latency of the events published in each second
        'p99_by_second_ms': [_ms(_p99(by_second.get(i, []))) for i in range(int(duration))]}


# -- (d) the lock history ---------------------------------------------------------------

def run_history_growth(site, quick):
    """The demo's traffic (acq at 10 Hz lending its lock to one set_heater a
    second) for 10 s (quick) or 60 s: the spans and octets the registry's
    lock history grew by, and per hour."""
    duration = 10.0 if quick else 60.0
    client = site.wait_agent(DEVICE_AGENT)
    registry = site.wait_agent('lock-registry')
    _set_acq(client, True)
    registry.history(kind='lock', limit=1)
    spans0, bytes0 = history_size(site)
    m0 = time.monotonic()
    calls = 0
    while time.monotonic() - m0 < duration:
        if not client.set_heater(value=float(calls % 50)).session.get('success'):
            raise RuntimeError('set_heater failed while measuring the history growth')
        calls += 1
        time.sleep(max(0.0, m0 + calls - time.monotonic()))     # one call a second
    elapsed = time.monotonic() - m0
    registry.history(kind='lock', limit=1)
    spans1, bytes1 = history_size(site)
    per_hour = 3600.0 / elapsed
    # the file grows a 4 KiB page at a time: octets per span from the whole file
    per_span = bytes1 / spans1 if spans1 else 0.0
    return {'duration_s': elapsed, 'calls': calls, 'spans': spans1 - spans0,
            'bytes': bytes1 - bytes0, 'spans_per_hour': (spans1 - spans0) * per_hour,
            'bytes_per_span': per_span,
            'bytes_per_hour': (spans1 - spans0) * per_hour * per_span, 'total_spans': spans1,
            'total_bytes': bytes1}


def print_d(d, b, b_off=None):
    g = d['growth']
    print(f"(d) lock history: the demo's traffic on {DEVICE_AGENT} (acq at 10 Hz, one "
          f"set_heater a second) for {g['duration_s']:.0f} s\n")
    print('| history growth | in the run | per hour |')
    print('|---|---:|---:|')
    print(f"| spans | {g['spans']} | {g['spans_per_hour']:,.0f} |")
    print(f"| octets (file pages in use: {g['total_bytes']:,} for {g['total_spans']} spans, "
          f"{g['bytes_per_span']:.0f} per span) | {g['bytes']:,} | "
          f"{g['bytes_per_hour'] / 1024:,.0f} KiB |")
    print(f"| set_heater calls | {g['calls']} | |")
    print()
    runs = [('history on', b)] + ([('--no-history (baseline)', b_off)] if b_off else [])
    print('| (b) load | last window p99 (ms) | registry CPU % (mean) '
          '| registry RSS first -> last (MB) | dropped | missing | spans after |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for name, run in runs:
        w, sm = run['windows'], run['summary']
        cpu = statistics.mean(r['registry_cpu_pct'] for r in w)
        print(f"| {name} | {_f(w[-1]['p99_ms'], '{:.2f}')} | {cpu:.0f} | "
              f"{w[0]['registry_rss_mb']:.1f} -> {w[-1]['registry_rss_mb']:.1f} | "
              f"{sm['registry_dropped']} | {sm['missing']} | {sm['history_spans']} |")
    print()


# -- report -----------------------------------------------------------------------------

def _f(v, fmt='{:.1f}'):
    return 'n/a' if v is None else fmt.format(v)


def print_a(a):
    free, acq = a['free'], a['acq']
    n = free['changes']
    print(f"(a) propagation latency: {n} sequential set_heater calls on {DEVICE_AGENT} over "
          f"HTTP (OCSClient), gaps 50..150 ms; each call takes the device lock ('hw') and "
          f"gives it back. Run 1: the lock is free between calls (acq stopped). Run 2: acq "
          f"holds it at 10 Hz and lends it to each call (the demo site's default).\n")
    cols = [(free['ours'], 'ours: lock-registry `ownership`, lock free'),
            (free['ocs'], f'{OCS} `agent_operations`, lock free (baseline)'),
            (acq['ours'], 'ours, acq running'),
            (acq['ocs'], f'{OCS}, acq running (baseline)')]
    print('| metric | ' + ' | '.join(c[1] for c in cols) + ' |')
    print('|---|' + '---:|' * len(cols))

    def line(label, fn):
        print(f'| {label} | ' + ' | '.join(fn(i, c[0]) for i, c in enumerate(cols)) + ' |')
    ours = lambda f: lambda i, r: f(r) if i % 2 == 0 else '-'   # noqa: E731
    line(f'set_heater grants seen as holder (of {n})', ours(lambda r: str(r['seen'])))
    for k in ('median', 'p99', 'max'):
        line(f'grant -> row received, {k} (ms)', ours(lambda r: _f(r[f'{k}_ms'], '{:.2f}')))
    line(f'changes seen at all (of {n}): ours a new token, ocs a new op code',
         lambda i, r: str(r['token_seen'] if i % 2 == 0 else r['seen']))
    for k in ('median', 'p99', 'max'):
        line(f'call started -> change received, {k} (ms)',
             lambda i, r: _f(r[f'token_{k}_ms'] if i % 2 == 0 else r[f'{k}_ms'], '{:.1f}'))
    line("set_heater grants on the agent's own `locks` feed",
         ours(lambda r: f"{r['set_heater_on_agent_feed']} (of {r['agent_feed_messages']} "
                        f"messages)"))
    line('first op-code change per call was', lambda i, r: '-' if i % 2 == 0 else (
        ', '.join(f'{k} {v}' for k, v in sorted(r['seen_as'].items())) or 'none'))
    print()
    for name, r in (('lock free', free), ('acq running', acq)):
        o = r['ours']
        if o['seen'] < r['changes'] and o['set_heater_on_agent_feed'] < r['changes']:
            print(f"NOTE ({name}): only {o['set_heater_on_agent_feed']} of {r['changes']} "
                  f"set_heater grants were published on {DEVICE_AGENT}'s own `locks` feed: "
                  f"the agent's LockReporter folds changes less than min_interval (10 ms) "
                  f"after the lock's previous message (here the task's 'waiting') into one "
                  f"snapshot, and by then the ~3 ms hold was over. The registry saw "
                  f"{o['token_seen']} of {r['changes']} changes as a new token only.")
    for name, r in (('lock free', free), ('acq running', acq)):
        print(f"set_heater call ({name}; start + wait over HTTP): median "
              f"{r['call_median_ms']:.1f} ms, p99 {r['call_p99_ms']:.1f} ms; "
              f"failed calls: {r['call_failures']}")
    print()


def print_b(b):
    s = b['summary']
    print(f"(b) scale: {b['agents']} WAMP sessions x {b['locks_per_agent']} locks, "
          f"{b['rate_per_s']:,.0f} lock events/s for {b['duration_s']:g} s + 1 heartbeat/s "
          f"per session; windows of {b['window_s']:g} s by publish time\n")
    print('| window (s) | published | received | latency median (ms) | latency p99 (ms) '
          '| latency max (ms) | lock-registry CPU % | lock-registry RSS (MB) '
          '| crossbar CPU % | bench CPU % |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for r in b['windows']:
        print(f"| {r['start_s']:g}-{r['end_s']:g} | {r['published']} | {r['received']} | "
              f"{_f(r['median_ms'], '{:.2f}')} | {_f(r['p99_ms'], '{:.2f}')} | "
              f"{_f(r['max_ms'], '{:.1f}')} | {r['registry_cpu_pct']:.0f} | "
              f"{r['registry_rss_mb']:.1f} | {r['crossbar_cpu_pct']:.0f} | "
              f"{r['bench_cpu_pct']:.0f} |")
    print()
    print('| summary | value |')
    print('|---|---:|')
    print(f"| events published (expected) | {s['published']} ({s['expected']}) |")
    print(f"| received as their own ownership row | {s['received']} |")
    print(f"| superseded (folded into a later event of the same lock) | {s['superseded']} |")
    print(f"| missing | {s['missing']} |")
    print(f"| registry table seq advanced by | {s['registry_seq_delta']} "
          f"(other agents' rows seen meanwhile: {s['other_rows']}) |")
    print(f"| registry dropped messages | {s['registry_dropped']} |")
    print(f"| load locks in the registry table | {s['table_load_rows']} of "
          f"{s['expected_rows']}, from {s['table_load_agents']} agents |")
    print(f"| heartbeats published | {s['heartbeats_published']} |")
    print(f"| drain after the last publish (s) | {s['drain_s']:.2f} |")
    print(f"| bench reactor: max tick lag (ms) | {s['bench_max_tick_lag_ms']:.1f} |")
    print()


# -- (c) the bus component's publish cost ------------------------------------------------

BUS_CONFIGS = (('stock', 'stock ocs config (baseline)'), ('bus', 'bus component'))


def _router_site(workdir, name, crossbar_config):
    """A site of just a router (no agents) on a free port."""
    with open(SITE_TEMPLATE) as f:
        data = yaml.safe_load(f)
    data['hosts'] = {'router': {'agent-instances': []}}
    path = os.path.join(workdir, f'{name}.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    site = Site(path, 'router', os.path.join(workdir, name), port=0,
                crossbar_config=crossbar_config, teardown='kill')
    site.start_router()
    return site


class PublishProbe:
    """On one router: a publisher session holding ``<root>.bench-pub.ops`` (an
    agent, for the bus component) and a subscriber on its feed. Each trial
    is one acknowledged publish: ack latency (publish -> ack) and event
    latency (publish -> the subscriber's handler), both perf_counter on the
    reactor thread."""

    def __init__(self, rt, site):
        self.rt = rt
        self.wamp = Wamp(rt, site)
        self.topic = f'{site.address_root}.bench-pub.feeds.bench'
        self.waiting = {}
        self.sub = self.wamp.join([(self.topic, self._on_event, None)], name='bench-sub')
        self.pub = self.wamp.join(name='bench-pub')
        rt.call(self.pub.register, lambda *a, **k: None,
                f'{site.address_root}.bench-pub.ops', timeout=BOUND)

    def _on_event(self, i):
        d = self.waiting.pop(i, None)
        if d is not None:
            d.callback(time.perf_counter())

    def trials(self, n):
        """n publishes one after another; ([ack s], [event s])."""
        from autobahn.wamp.types import PublishOptions
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            acks, events = [], []
            for i in range(n):
                got = self.waiting[i] = defer.Deferred()
                t0 = time.perf_counter()
                yield self.pub.publish(self.topic, i, options=PublishOptions(acknowledge=True))
                acks.append(time.perf_counter() - t0)
                t1 = yield got
                events.append(t1 - t0)
            return acks, events
        return self.rt.call(run, timeout=BOUND + n * 0.1)

    def close(self):
        self.wamp.close()


def run_bus_cost(rt, workdir, quick):
    """Interleaved rounds on two routers, stock config and bus component."""
    rounds, per_round = (4, 50) if quick else (10, 300)
    sites, probes = {}, {}
    try:
        sites['stock'] = _router_site(workdir, 'router-stock', stock_crossbar_config())
        sites['bus'] = _router_site(workdir, 'router-bus',
                                    os.path.join(REPO, 'site-config', 'crossbar', 'config.json'))
        for name, site in sites.items():
            probes[name] = PublishProbe(rt, site)
            probes[name].trials(20)      # warm-up, not counted
        acks = {name: [] for name in sites}
        events = {name: [] for name in sites}
        for r in range(rounds):
            order = ('stock', 'bus') if r % 2 == 0 else ('bus', 'stock')
            for name in order:
                a, e = probes[name].trials(per_round)
                acks[name] += a
                events[name] += e
    finally:
        for probe in probes.values():
            probe.close()
        for site in sites.values():
            site.close()
    out = {}
    for name in sites:
        out[name] = dict(publishes=len(acks[name]),
                         ack_median_ms=_ms(statistics.median(acks[name])),
                         ack_p99_ms=_ms(_p99(acks[name])),
                         event_median_ms=_ms(statistics.median(events[name])),
                         event_p99_ms=_ms(_p99(events[name])))
    out['rounds'], out['per_round'] = rounds, per_round
    out['ack_added_ms'] = out['bus']['ack_median_ms'] - out['stock']['ack_median_ms']
    out['event_added_ms'] = out['bus']['event_median_ms'] - out['stock']['event_median_ms']
    return out


def print_c(c):
    print(f"\n(c) publish cost of the bus component: one publisher (holding its agent's ops) "
          f"and one subscriber on loopback, {c['rounds']} interleaved rounds of "
          f"{c['per_round']} acknowledged publishes on each router\n")
    print('| router config | publishes | ack median (ms) | ack p99 (ms) | '
          'event median (ms) | event p99 (ms) |')
    print('|---|---|---|---|---|---|')
    for name, label in BUS_CONFIGS:
        r = c[name]
        print(f"| {label} | {r['publishes']} | {_f(r['ack_median_ms'], '{:.3f}')} | "
              f"{_f(r['ack_p99_ms'], '{:.3f}')} | {_f(r['event_median_ms'], '{:.3f}')} | "
              f"{_f(r['event_p99_ms'], '{:.3f}')} |")
    print(f"| added by the component (median) | | {c['ack_added_ms']:+.3f} | | "
          f"{c['event_added_ms']:+.3f} | |")


def targets(a, b, c=None):
    o = a['free']['ours']
    s = b['summary']
    first, last = b['windows'][0]['p99_ms'], b['windows'][-1]['p99_ms']
    growth_ok = first is not None and last is not None and last < 3 * first and last < 250
    return [
        dict(name='(a) ours median < 10 ms (lock free)',
             detail=f"{_f(o['median_ms'], '{:.2f}')} ms",
             passed=o['median_ms'] is not None and o['median_ms'] < 10),
        dict(name='(a) ours p99 < 50 ms (lock free)',
             detail=f"{_f(o['p99_ms'], '{:.2f}')} ms",
             passed=o['p99_ms'] is not None and o['p99_ms'] < 50),
        dict(name='(b) sustained: last window p99 < 3x first and < 250 ms',
             detail=f"first {_f(first, '{:.2f}')} ms, last {_f(last, '{:.2f}')} ms",
             passed=growth_ok),
        dict(name='(b) registry dropped 0 messages', detail=str(s['registry_dropped']),
             passed=s['registry_dropped'] == 0),
        dict(name='(b) every load lock in the table',
             detail=f"{s['table_load_rows']}/{s['expected_rows']} rows from "
                    f"{s['table_load_agents']}/{b['agents']} agents",
             passed=s['table_load_rows'] == s['expected_rows']
             and s['table_load_agents'] == b['agents']),
        dict(name='(b) no event missing', detail=f"{s['missing']} of {s['published']}",
             passed=s['missing'] == 0 and s['published'] == s['expected']),
    ] + [
        dict(name='(b) flat memory with the lock history on: last window RSS < first x 1.1',
             detail=f"{b['windows'][0]['registry_rss_mb']:.1f} -> "
                    f"{b['windows'][-1]['registry_rss_mb']:.1f} MB",
             passed=b['windows'][-1]['registry_rss_mb']
             < 1.1 * b['windows'][0]['registry_rss_mb']),
        dict(name='(b) the lock history kept the load locks\' spans',
             detail=f"{s['history_spans']} spans", passed=s['history_spans'] >= s['expected_rows']),
    ] + ([] if c is None else [
        dict(name='(c) bus component adds < 0.5 ms to the median event latency',
             detail=f"{c['event_added_ms']:+.3f} ms", passed=c['event_added_ms'] < 0.5),
        dict(name='(c) bus component adds < 0.5 ms to the median acknowledged publish',
             detail=f"{c['ack_added_ms']:+.3f} ms", passed=c['ack_added_ms'] < 0.5),
    ])


def run(quick, keep=False, stock=False, compare_history=True):
    workdir = tempfile.mkdtemp(prefix='registry-bench-')
    rt = site = wamp = None
    try:
        site = Site(write_site_config(workdir, stock), HOST, os.path.join(workdir, 'run'),
                    port=0, teardown='kill')
        site.start()
        rt = Reactor()
        wamp = Wamp(rt, site)
        watch = PropagationWatch(site, wamp)
        n = 20 if quick else 200
        a = {'free': run_propagation(site, watch, n, acq=False),
             'acq': run_propagation(site, watch, n, acq=True)}
        d = {'growth': run_history_growth(site, quick)}
        b = run_scale(site, rt, wamp, quick)
        wamp.close()
        site.close()
        site = None
        if compare_history:
            # the same load on a registry that keeps no history (the baseline)
            other = os.path.join(workdir, 'no-history')
            os.makedirs(other)
            site = Site(write_site_config(other, stock, history=False), HOST,
                        os.path.join(other, 'run'), port=0, teardown='kill')
            site.start()
            wamp = Wamp(rt, site)
            d['b_no_history'] = run_scale(site, rt, wamp, quick)
            wamp.close()
            site.close()
            site = None
        c = run_bus_cost(rt, workdir, quick)
        return a, b, c, d, workdir
    finally:
        if wamp is not None:
            wamp.close()
        if site is not None:
            site.close()
        if rt is not None:
            rt.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(args=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true',
                   help='(a) 20 changes, (b) 5 agents x 2 locks, 100 events/s, 5 s (< 60 s)')
    p.add_argument('--json', metavar='PATH', help='write the results dict here')
    p.add_argument('--keep', action='store_true', help='keep the site work dir (logs)')
    p.add_argument('--no-compare-history', action='store_true',
                   help='skip the (b) load on a --no-history registry (the baseline of (d); '
                        'on by default in full runs)')
    p.add_argument('--stock', action='store_true',
                   help="run (a) and (b) on ocs's stock crossbar config (no bus component)")
    opts = p.parse_args(args)
    start = time.perf_counter()
    try:
        a, b, c, d, workdir = run(opts.quick, opts.keep, opts.stock,
                                  compare_history=not (opts.quick or opts.no_compare_history))
    except (SiteError, RuntimeError, concurrent.futures.TimeoutError) as e:
        print(f'registry_bench: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    print_a(a)
    print_b(b)
    print_c(c)
    print_d(d, b, d.get('b_no_history'))
    tg = targets(a, b, c)
    for t in tg:
        print(f"{'PASS' if t['passed'] else 'FAIL'}: {t['name']} ({t['detail']})")
    elapsed = time.perf_counter() - start
    print(f"\n{'quick' if opts.quick else 'full'} run: {elapsed:.1f} s, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
          + (f'; site logs in {workdir}' if opts.keep else ''))
    if opts.json:
        with open(opts.json, 'w') as fh:
            json.dump(dict(results={'a': a, 'b': b, 'c': c, 'd': d}, targets=tg, baseline=OCS,
                           quick=opts.quick, elapsed_s=elapsed), fh, indent=2)
    return 0 if all(t['passed'] for t in tg) else 1


if __name__ == '__main__':
    sys.exit(main())
