"""Deadlock detection: cycle closed -> refusal (site leases) or report (agent locks).

**(a) Among site leases**, refused.

The demo site (:class:`tools.devsite.Site` on free loopback ports: crossbar,
the LockRegistryAgent and its agents). Each trial, over the router's HTTP
bridge with one request per lease call (as ``Reservation`` does):

1. ``alice`` takes ``bench/dl-<i>/mount``, ``bob`` takes ``bench/dl-<i>/hwp``;
2. ``bob`` asks for ``.../mount`` with ``timeout=30`` (it waits in the queue,
   in a thread);
3. measured, **deadlock**: ``alice`` asks for ``.../hwp`` with ``timeout=30``,
   which would close the cycle: the time from sending it to the refusal;
4. measured, **busy (baseline)**: ``carol`` asks for ``.../hwp`` with
   ``timeout=0``: the same registry's plain refusal of a held resource, the
   cheapest answer it gives (without detection, step 3 would have waited
   its whole 30 s timeout);
5. everything is released (bob is served first).

Steps 3 and 4 alternate which runs first, trial by trial. Reported: median
and p99 of each over N trials (20 in full, 5 with ``--quick``). Target: the
deadlock refusal median within 2x the busy refusal's (the detection adds
no more than one refusal costs), and every deadlock refused, none waiting
for its timeout.

**(b) Through an agent's own locks**, reported. A site of its own: the
registry and the test agent ``tests/integration/deadlock_agent.py`` (two
reported locks), launched with ocs-agent-cli; a WAMP subscriber of the
registry's ``ownership`` feed. Each trial: op1 takes ``a``, op2 takes ``b``,
op1 waits for ``b``; then op2 is told to wait for ``a``, which closes the
cycle. Measured on the subscriber's monotonic clock:

* **propagation (baseline)**: ``go`` sent -> the row saying op2 waits for
  ``a`` arrives (one lock event through the agent, the router and the
  registry: what any change costs to be seen, cycle or not);
* **detection**: that row -> both rows flagged ``deadlock`` arrive (the
  registry's look at the wait-for graph, ``SETTLE`` = 50 ms after the
  change, and the flags' publication);
* **total**: ``go`` sent -> flagged.

Then the waits are cancelled (``untangle``). Target: every cycle reported,
total p99 within 1 s (the issue's bound). Without detection (ocs, or this
registry before) the two operations wait for their whole lock timeout.

``--json PATH`` writes the results; ``main()`` returns 0 when every target
passes.
"""
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import trials as trials_cli  # noqa: E402
from tools.devsite import Site, SiteError  # noqa: E402

SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
TIMEOUT = 30.0


def _p99(values):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(0.99 * len(v) + 0.5) - 1))]


def lease_call(transport, call, **params):
    ans = transport.lease_call(call, params, wait=params.get('timeout', 0))
    if not ans.answered:
        raise RuntimeError(f'{call}: no answer: {ans.message}')
    return ans


def trial(transport, client, bob, i, deadlock_first):
    """One trial; ``bob``: a transport of its own (another HTTP client) for
    the request that waits in a thread."""
    base = f'bench/dl-{i}'
    mount = lease_call(transport, 'acquire', resource=f'{base}/mount', owner='alice', lease=60)
    hwp = lease_call(transport, 'acquire', resource=f'{base}/hwp', owner='bob', lease=60)
    assert mount.ok and hwp.ok, (mount.message, hwp.message)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r=lease_call(
        bob, 'acquire', resource=f'{base}/mount', owner='bob', lease=60,
        timeout=TIMEOUT)))
    waiter.start()
    deadline = time.monotonic() + TIMEOUT
    while not _waiting(client, f'{base}/mount'):        # bob is queued (bounded)
        if time.monotonic() > deadline:
            raise RuntimeError('bob never queued')
        time.sleep(0.01)
    out = {}
    for kind in (('deadlock', 'busy') if deadlock_first else ('busy', 'deadlock')):
        t0 = time.perf_counter()
        if kind == 'deadlock':
            ans = lease_call(transport, 'acquire', resource=f'{base}/hwp', owner='alice',
                             lease=60, timeout=TIMEOUT)
        else:
            ans = lease_call(transport, 'acquire', resource=f'{base}/hwp', owner='carol',
                             lease=60)
        out[kind] = time.perf_counter() - t0
        out[f'{kind}_refused'] = not ans.ok
        out[f'{kind}_message'] = ans.message
    lease_call(transport, 'release', resource=f'{base}/mount', lease_id=mount.data['lease_id'])
    waiter.join(TIMEOUT + 15)
    bob = got['r']
    for ans in (bob, hwp):
        if ans.ok:
            lease_call(transport, 'release', resource=ans.data['resource'],
                       lease_id=ans.data['lease_id'])
    return out


def _waiting(client, resource):
    reply = client.leases()
    waiting = (reply.session.get('data') or {}).get('waiting') or []
    return any(resource in (w.get('resources') or []) for w in waiting)


def run(n, keep=False):
    from ocs_locking.leases.bridge import OCSClientTransport
    workdir = tempfile.mkdtemp(prefix='deadlock-bench-')
    try:
        with Site(SITE_FILE, 'demo', os.path.join(workdir, 'run'), port=0,
                  teardown='kill') as site:
            client = site.wait_agent('lock-registry')
            transport = OCSClientTransport(client)
            bob = OCSClientTransport(site.wait_agent('lock-registry'))
            trials = [trial(transport, client, bob, i, deadlock_first=i % 2 == 0)
                      for i in range(n)]
        return trials, workdir
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


AGENT = os.path.join(REPO, 'tests', 'integration', 'deadlock_agent.py')
AGENT_SITE = {
    'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws', 'wamp_http': 'http://127.0.0.1:18001/call',
            'wamp_realm': 'test_realm', 'address_root': 'observatory'},
    'hosts': {'dl': {'crossbar_timeout': 0, 'agent-instances': [
        {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry'},
        {'agent-class': 'DeadlockAgent', 'instance-id': 'dl-1', 'agent-file': AGENT,
         'entrypoint': 'main'}]}},
}
WAIT = 60.0


class _Feed:
    """The ownership feed's rows, one by one, with their arrival time."""

    def __init__(self, peer):
        self.peer, self.ready = peer, []

    def until(self, pred, what):
        import queue
        deadline = time.monotonic() + WAIT
        while True:
            while not self.ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f'the ownership feed never showed {what}')
                try:
                    event = self.peer.events.get(timeout=left)
                except queue.Empty:
                    continue
                _, args, _ = event
                at = event.arrived
                msg = args[0][0] if args and isinstance(args[0], list) else {}
                self.ready += [(r, at) for r in (msg.get('rows') or [])
                               if isinstance(msg, dict)]
            row, at = self.ready.pop(0)
            if pred(row):
                return row, at


def _done(reply, what):
    if reply.session is None or reply.session.get('success') is False:
        raise RuntimeError(f'{what}: {reply}')
    return reply


def agent_trial(dl, feed):
    """One cycle of dl-1's two locks; the three times, in seconds."""
    _done(dl.op1.start(first='a', then='b', timeout=WAIT), 'op1')
    feed.until(lambda r: r['lock'] == 'dl-1/a' and r['job'] == 'op1', 'op1 holding a')
    _done(dl.op2.start(first='b', then='a', timeout=WAIT), 'op2')
    feed.until(lambda r: r['lock'] == 'dl-1/b' and r['job'] == 'op2', 'op2 holding b')
    _done(dl.go(op='op1'), 'go op1')
    feed.until(lambda r: r['lock'] == 'dl-1/b' and r['waiters'] == 1, 'op1 waiting for b')
    sent = time.monotonic()
    _done(dl.go(op='op2'), 'go op2')
    _, closed = feed.until(lambda r: r['lock'] == 'dl-1/a' and r['waiters'] == 1,
                           'op2 waiting for a')
    flagged, at = set(), None
    while flagged != {'dl-1/a', 'dl-1/b'}:
        row, at = feed.until(lambda r: 'deadlock' in (r.get('flags') or ()), 'the flags')
        flagged.add(row['lock'])
    _done(dl.untangle(), 'untangle')
    for op in (dl.op1, dl.op2):
        op.wait(timeout=WAIT)
    feed.until(lambda r: r['lock'] == 'dl-1/a' and not r.get('flags') and r['job'] is None,
               'the flags gone')
    return {'propagation': closed - sent, 'detection': at - closed, 'total': at - sent}


def run_agent(n, keep=False):
    import yaml
    from ocs.ocs_client import OCSClient
    from ocs_locking.wire import OWNERSHIP_FEED, feed_topic
    from tests.support import ReactorThread, WampPeer
    workdir = tempfile.mkdtemp(prefix='deadlock-bench-agent-')
    rt = ReactorThread()
    try:
        os.makedirs(os.path.join(workdir, 'crossbar'))
        shutil.copy(os.path.join(REPO, 'site-config', 'crossbar', 'config.json'),
                    os.path.join(workdir, 'crossbar', 'config.json'))
        site_file = os.path.join(workdir, 'site.yaml')
        with open(site_file, 'w') as fh:
            yaml.safe_dump(AGENT_SITE, fh)
        with Site(site_file, 'dl', os.path.join(workdir, 'run'), port=0,
                  teardown='kill') as site:
            site.wait_agent('dl-1')
            site.wait_agent('lock-registry')
            dl = OCSClient('dl-1', args=site.client_args)
            peer = WampPeer(rt, f'ws://127.0.0.1:{site.port}/ws', site.realm)
            try:
                peer.subscribe(feed_topic(site.address_root, 'lock-registry', OWNERSHIP_FEED))
                feed = _Feed(peer)
                trials = [agent_trial(dl, feed) for _ in range(n)]
            finally:
                peer.close()
        return trials
    finally:
        rt.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def summarize_agent(trials):
    out = {}
    for kind in ('propagation', 'detection', 'total'):
        v = [t[kind] for t in trials]
        out[kind] = {'median_ms': statistics.median(v) * 1e3, 'p99_ms': _p99(v) * 1e3,
                     'max_ms': max(v) * 1e3}
    out['reported'] = len(trials)
    return out


def summarize(trials):
    out = {}
    for kind in ('deadlock', 'busy'):
        v = [t[kind] for t in trials]
        out[kind] = {'median_ms': statistics.median(v) * 1e3, 'p99_ms': _p99(v) * 1e3,
                     'max_ms': max(v) * 1e3,
                     'refused': sum(t[f'{kind}_refused'] for t in trials)}
    out['messages'] = sorted({t['deadlock_message'] for t in trials})[:1]
    return out


def main(args=None):
    opts = trials_cli.parse(trials_cli.trial_parser(__doc__.splitlines()[0]), args)
    n = opts.trials
    start = time.perf_counter()
    try:
        trials, workdir = run(n, opts.keep)
        agent_trials = run_agent(n, opts.keep)
    except (SiteError, RuntimeError) as e:
        print(f'deadlock_bench: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    s = summarize(trials)
    a = summarize_agent(agent_trials)
    print(f'Deadlock among site leases: {n} trials, interleaved; lease calls over the '
          f'router\'s HTTP bridge, one request each\n')
    print('| refusal | trials refused | median (ms) | p99 (ms) | max (ms) |')
    print('|---|---:|---:|---:|---:|')
    print(f"| deadlock: the request that closes the cycle (timeout {TIMEOUT:g} s) | "
          f"{s['deadlock']['refused']} of {n} | {s['deadlock']['median_ms']:.2f} | "
          f"{s['deadlock']['p99_ms']:.2f} | {s['deadlock']['max_ms']:.2f} |")
    print(f"| busy, timeout 0 (baseline: the same registry's plain refusal) | "
          f"{s['busy']['refused']} of {n} | {s['busy']['median_ms']:.2f} | "
          f"{s['busy']['p99_ms']:.2f} | {s['busy']['max_ms']:.2f} |")
    print(f"\nthe refusal: {s['messages'][0] if s['messages'] else '-'}\n")
    print(f'(b) A cycle through an agent\'s own locks, reported: {n} trials; times on the '
          f'ownership feed subscriber\'s clock\n')
    print('| step | median (ms) | p99 (ms) | max (ms) |')
    print('|---|---:|---:|---:|')
    for kind, label in (('propagation', 'propagation (baseline): go sent -> the closing '
                                        'waiter\'s row'),
                        ('detection', 'detection: the closing row -> both rows flagged '
                                      'deadlock'),
                        ('total', 'total: go sent -> flagged')):
        print(f"| {label} | {a[kind]['median_ms']:.2f} | {a[kind]['p99_ms']:.2f} | "
              f"{a[kind]['max_ms']:.2f} |")
    print()
    targets = [
        dict(name='every deadlock refused at once (none waited for its timeout)',
             detail=f"{s['deadlock']['refused']}/{n}, max {s['deadlock']['max_ms']:.1f} ms",
             passed=s['deadlock']['refused'] == n
             and s['deadlock']['max_ms'] < TIMEOUT * 1e3 / 2),
        dict(name='deadlock refusal median <= 2x the busy refusal median',
             detail=f"{s['deadlock']['median_ms']:.2f} vs {s['busy']['median_ms']:.2f} ms",
             passed=s['deadlock']['median_ms'] <= 2 * s['busy']['median_ms']),
        dict(name='every agent-lock cycle reported, total p99 <= 1 s',
             detail=f"{a['reported']}/{n}, p99 {a['total']['p99_ms']:.1f} ms",
             passed=a['reported'] == n and a['total']['p99_ms'] <= 1000.0),
    ]
    return trials_cli.finish(opts, start, targets, workdir, results=s, trials=trials, agent=a,
                             agent_trials=agent_trials)


if __name__ == '__main__':
    sys.exit(main())
