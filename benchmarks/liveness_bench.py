"""How fast a killed agent is seen dead: the lock registry beside ocs's RegistryAgent.

A site is started with :class:`tools.devsite.Site` on free loopback ports
(the bench site config of ``registry_bench``: the crossbar router with the
demo site's crossbar config, the ``LockRegistryAgent`` ``lock-registry``,
ocs's own ``RegistryAgent`` as ``registry``, run with ``ocs-agent-cli``, and
one ``SimulatedDeviceAgent`` ``sim-device-1`` whose ``acq`` holds its device
lock). Each trial:

1. waits until both registries show ``sim-device-1`` alive (ours: the row
   ``sim-device-1/hw`` alive and held by ``acq``; ocs's: ``expired`` False in
   the ``main`` process's session.data, with a heartbeat after the restart);
2. kills the agent's process group with SIGKILL (``t_kill`` = ``time.time()``
   just before);
3. **ours**: waits (event) for the ``ownership`` row of ``sim-device-1/hw``
   with ``alive`` False; latency = the row's ``updated`` (when the registry
   marked it, same host clock) - ``t_kill``; also the receipt time at this
   process (``feed``);
   **baseline, ocs RegistryAgent**: polls its ``main`` session.data over HTTP
   (every 20 ms) until the agent is ``expired``; latency = its
   ``time_expired`` (when it marked it, same clock) - ``t_kill``;
4. starts the agent again.

Both registries see the same kill, so the trials are interleaved by
construction. The table prints the median, min and max of each, ocs's
RegistryAgent as the baseline. Target: ours < 100 ms median (needs the
router component: on ocs's stock config the registry says "bus not
verified" and falls back to heartbeat expiry, like ocs).

``--trials N`` (default 10), ``--quick`` (2 trials), ``--json PATH``,
``--keep``. ``main()`` returns 0 when the target passes.
"""
import argparse
import concurrent.futures
import json
import os
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import registry_bench  # noqa: E402  (its bench site and raw WAMP sessions)

from ocs_locking.wire import BUS_KEY, OWNERSHIP_FEED, TABLE_KEY, feed_topic  # noqa: E402
from tools.devsite import Site, SiteError  # noqa: E402

OCS = registry_bench.OCS
AGENT = registry_bench.DEVICE_AGENT
ROW = f'{AGENT}/hw'
BOUND = 30.0            # s: upper bound on any single wait
POLL = 0.02             # s between polls of ocs's RegistryAgent (HTTP)
TARGET = 0.100          # s: ours, median


def _wait(pred, what, timeout=BOUND, every=0.05):
    """Poll pred() (HTTP state cannot be pushed to us) until true; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = pred()
        except Exception:       # an agent restarting
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f'timed out after {timeout:g} s waiting for {what}')
        time.sleep(every)


class Bench:
    def __init__(self, site, wamp):
        from ocs.ocs_client import OCSClient
        self.site = site
        self.dead = queue.Queue()       # (receipt time, row) of ROW not alive
        self.ours = OCSClient('lock-registry', args=site.client_args)
        self.ocs = OCSClient('registry', args=site.client_args)
        topic = feed_topic(site.address_root, 'lock-registry', OWNERSHIP_FEED)
        wamp.join([(topic, self._on_ownership, None)], name='liveness')

    def _on_ownership(self, data):
        now = time.time()
        message = data[0] if isinstance(data, (list, tuple)) and data else None
        if not isinstance(message, dict):
            return
        for row in message.get('rows') or []:
            if isinstance(row, dict) and row.get('lock') == ROW and row.get('alive') is False:
                self.dead.put((now, row))

    def bus(self):
        return (self.ours.monitor.status().session.get('data') or {}).get(BUS_KEY) or {}

    def _ours_alive(self):
        row = (self.ours.monitor.status().session.get('data') or {}).get(TABLE_KEY, {}).get(ROW)
        return row is not None and row.get('alive') is True and row.get('job') == 'acq'

    def _ocs_entry(self):
        data = self.ocs.main.status().session.get('data') or {}
        return data.get(f'{self.site.address_root}.{AGENT}')

    def trial(self, started):
        _wait(self._ours_alive, f'{ROW} alive in the lock registry')
        _wait(lambda: (self._ocs_entry() or {}).get('expired') is False
              and self._ocs_entry()['last_updated'] > started,
              f'{AGENT} alive in ocs RegistryAgent')
        while not self.dead.empty():
            self.dead.get_nowait()
        proc = self.site.agents.pop(AGENT)
        t_kill = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(BOUND)
        try:
            received, row = self.dead.get(timeout=BOUND)
        except queue.Empty:
            raise RuntimeError(f'the lock registry did not mark {ROW} not alive '
                               f'within {BOUND:g} s') from None
        entry = _wait(lambda: (self._ocs_entry() or {}).get('expired') and self._ocs_entry(),
                      f'ocs RegistryAgent to expire {AGENT}', every=POLL)
        result = {'ours': row['updated'] - t_kill, 'ours_feed': received - t_kill,
                  'ocs': entry['time_expired'] - t_kill}
        restarted = time.time()
        self.site.start_agent(AGENT)
        self.site.wait_agent(AGENT)
        return result, restarted


def run(trials, keep=False):
    workdir = tempfile.mkdtemp(prefix='liveness-bench-')
    rt = site = wamp = None
    try:
        site = Site(registry_bench.write_site_config(workdir), registry_bench.HOST,
                    os.path.join(workdir, 'run'), port=0, teardown='kill')
        site.start()
        rt = registry_bench.Reactor()
        wamp = registry_bench.Wamp(rt, site)
        bench = Bench(site, wamp)
        _wait(lambda: bench.bus().get('verified') is True or bench.bus().get('reason') not in
              (None, 'being checked', 'the registry is not joined to the router'),
              'the lock registry to check the bus')
        bus = bench.bus()
        results, started = [], 0.0
        for _ in range(trials):
            result, started = bench.trial(started)
            results.append(result)
        return {'trials': results, 'bus': {k: bus.get(k) for k in ('verified', 'reason')}}, \
            workdir
    finally:
        if wamp is not None:
            wamp.close()
        if site is not None:
            site.close()
        if rt is not None:
            rt.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def summary(results):
    out = {}
    for key in ('ours', 'ours_feed', 'ocs'):
        values = [t[key] for t in results['trials']]
        out[key] = {'median_ms': statistics.median(values) * 1e3,
                    'min_ms': min(values) * 1e3, 'max_ms': max(values) * 1e3, 'n': len(values)}
    return out


def print_table(results, s):
    bus = results['bus']
    print(f"kill -9 of {AGENT} -> marked dead, {s['ours']['n']} trials (interleaved: "
          f"both registries see each kill); bus verified: {bus['verified']}"
          + ('' if bus['verified'] else f" ({bus['reason']})"))
    print(f"{'registry':<52}  {'median ms':>10}  {'min ms':>9}  {'max ms':>9}  {'vs baseline':>11}")
    base = s['ocs']['median_ms']
    rows = [(f'{OCS} (baseline): session.data', s['ocs']),
            ('lock-registry: table (row updated)', s['ours']),
            ('lock-registry: ownership feed received', s['ours_feed'])]
    for label, v in rows:
        ratio = f"{v['median_ms'] / base:.3f}x" if base else '-'
        print(f"{label:<52}  {v['median_ms']:>10.1f}  {v['min_ms']:>9.1f}  {v['max_ms']:>9.1f}"
              f"  {ratio:>11}")


def main(args=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--trials', type=int, default=10, help='kills (default 10)')
    p.add_argument('--quick', action='store_true', help='2 trials')
    p.add_argument('--json', metavar='PATH', help='write the results here')
    p.add_argument('--keep', action='store_true', help='keep the site work dir (logs)')
    opts = p.parse_args(args)
    trials = 2 if opts.quick else opts.trials
    if trials < 1:
        p.error(f'--trials must be at least 1, not {trials}')
    start = time.perf_counter()
    try:
        results, workdir = run(trials, opts.keep)
    except (SiteError, RuntimeError, concurrent.futures.TimeoutError) as e:
        print(f'liveness_bench: {type(e).__name__}: {e}', file=sys.stderr)
        return 1
    s = summary(results)
    print_table(results, s)
    passed = s['ours']['median_ms'] < TARGET * 1e3
    print(f"{'PASS' if passed else 'FAIL'}: ours median < {TARGET * 1e3:.0f} ms "
          f"({s['ours']['median_ms']:.1f} ms; {OCS}: {s['ocs']['median_ms']:.1f} ms)")
    elapsed = time.perf_counter() - start
    print(f"\n{'quick' if opts.quick else 'full'} run: {elapsed:.1f} s, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
          + (f'; site logs in {workdir}' if opts.keep else ''))
    if opts.json:
        with open(opts.json, 'w') as fh:
            json.dump(dict(results=results, summary=s, baseline=OCS, target_ms=TARGET * 1e3,
                           passed=passed, quick=opts.quick, elapsed_s=elapsed), fh, indent=2)
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
