"""Deadlock detection among site leases: cycle closed -> refusal, on a real site.

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
for its timeout. ``--json PATH`` writes the results; ``main()`` returns 0
when every target passes.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='5 trials instead of 20')
    p.add_argument('--json', metavar='PATH', help='write the results here')
    p.add_argument('--keep', action='store_true', help='keep the site work dir (logs)')
    opts = p.parse_args(args)
    n = 5 if opts.quick else 20
    start = time.perf_counter()
    try:
        trials, workdir = run(n, opts.keep)
    except (SiteError, RuntimeError) as e:
        print(f'deadlock_bench: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    s = summarize(trials)
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
    targets = [
        dict(name='every deadlock refused at once (none waited for its timeout)',
             detail=f"{s['deadlock']['refused']}/{n}, max {s['deadlock']['max_ms']:.1f} ms",
             passed=s['deadlock']['refused'] == n
             and s['deadlock']['max_ms'] < TIMEOUT * 1e3 / 2),
        dict(name='deadlock refusal median <= 2x the busy refusal median',
             detail=f"{s['deadlock']['median_ms']:.2f} vs {s['busy']['median_ms']:.2f} ms",
             passed=s['deadlock']['median_ms'] <= 2 * s['busy']['median_ms']),
    ]
    for t in targets:
        print(f"{'PASS' if t['passed'] else 'FAIL'}: {t['name']} ({t['detail']})")
    elapsed = time.perf_counter() - start
    print(f"\n{'quick' if opts.quick else 'full'} run: {elapsed:.1f} s, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs"
          + (f'; site logs in {workdir}' if opts.keep else ''))
    if opts.json:
        with open(opts.json, 'w') as fh:
            json.dump({'results': s, 'trials': trials, 'targets': targets, 'quick': opts.quick,
                       'elapsed_s': elapsed}, fh, indent=2)
    return 0 if all(t['passed'] for t in targets) else 1


if __name__ == '__main__':
    sys.exit(main())
