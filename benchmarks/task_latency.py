"""How long a short task waits for the device while an acquisition loop runs.

Every scenario uses the demo device: a real
:class:`~ocs_locking.agents.simulated_device.server.DeviceServer` on a free
loopback port (2 ms per command), driven through ``ThermometryClient``, the
driver owned by a :class:`~ocs_locking.worker.DeviceWorker`. Only the locking
differs between the two patterns:

* **socs pattern (baseline)** -- :class:`ocs.ocs_twisted.TimeoutLock` with the
  loop socs agents hand-write: ``acquire_timeout(timeout=0, job='acq')``, then
  every sample ``if time.time() - last_release > YIELD: release_and_acquire(
  timeout=10)``, read one sample, ``time.sleep(0.1)`` -- it sleeps while
  holding and lends the lock only once per ``YIELD`` seconds.
* **kit** -- :class:`ocs_locking.TimeoutLock` and ``YieldingHold(lock,
  timeout=3, retake_timeout=10)``: ``for n in hold.run(session, period=P):
  worker.call(driver.read)``; it lends the lock whenever someone waits.

The short task (the same for both): ``with lock.acquire_timeout(timeout=3,
job='task') as ok:`` and, if ok, ``worker.call(driver.set_heater, x)``. Tasks
run one after another with a random gap before each (seeded, so every pattern
sees the same gaps). The wait is measured from before ``acquire_timeout`` to
inside it; a failed task counts with the 3 s it waited.

(a) loop at 10 Hz, socs yields every 1 s; 200 tasks, gaps 20..120 ms: median
    and p99 wait, failures. Sequential tasks arrive just after the previous
    one was served, i.e. just after a yield, so under the socs pattern most
    wait nearly a whole yield period.
(b) socs PR #614: the socs loop yields only every 5 s, longer than the 3 s
    task timeout; 40 tasks, gaps 0.2..1.2 s. Kit with period 0.1 s, and kit
    with period 5 s (one sample every 5 s: the kit has no yield period).

The five scenarios run at the same time, each with its own device, lock,
worker and threads (``--serial`` runs them one after another; the socs
scenarios take minutes because their tasks wait for yields). Each reports the
device's collision count (``driver.stats()``), which must be 0.

``--quick``: (a) 30 tasks, (b) 6 tasks (< 40 s). ``--json PATH`` writes the
results. ``main()`` returns 0 when every target passes.
"""
import argparse
import importlib.metadata
import json
import math
import os
import random
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ocs.ocs_twisted  # noqa: E402
from ocs_locking import TimeoutLock  # noqa: E402
from ocs_locking.agents.simulated_device.driver import ThermometryClient  # noqa: E402
from ocs_locking.agents.simulated_device.server import DeviceServer  # noqa: E402
from ocs_locking.ops import YieldingHold  # noqa: E402
from ocs_locking.testing import FakeSession  # noqa: E402
from ocs_locking.worker import DeviceWorker  # noqa: E402

OCS = f"ocs {importlib.metadata.version('ocs')} TimeoutLock"
LATENCY = 0.002     # s per device command
TASK_TIMEOUT = 3.0
BOUND = 15.0        # s: upper bound on any single wait for a helper
KIT, SOCS = 'kit', 'socs'
# name: (part, pattern, sample period, socs yield period, tasks key, gap range, seed)
SCENARIOS = {
    'a_kit': ('a', KIT, 0.1, None, 'a', (0.02, 0.12), 1),
    'a_socs': ('a', SOCS, 0.1, 1.0, 'a', (0.02, 0.12), 1),
    'b_kit': ('b', KIT, 0.1, None, 'b', (0.2, 1.2), 2),
    'b_kit5': ('b', KIT, 5.0, None, 'b', (0.2, 1.2), 2),
    'b_socs': ('b', SOCS, 0.1, 5.0, 'b', (0.2, 1.2), 2),
}


def _socs_loop(lock, worker, driver, period, yield_every, running, holding, out):
    """The acquisition loop socs agents hand-write (sleeps while holding)."""
    with lock.acquire_timeout(timeout=0, job='acq') as acquired:
        if not acquired:
            out['loop_error'] = 'acq could not take the lock'
            return
        holding.set()
        last_release = time.time()
        while running.is_set():
            if time.time() - last_release > yield_every:
                last_release = time.time()
                if not lock.release_and_acquire(timeout=10):
                    out['loop_error'] = 'acq could not take the lock back'
                    break
            worker.call(driver.read, timeout=BOUND)
            out['samples'] += 1
            time.sleep(period)


def _kit_loop(hold, worker, driver, period, holding, out):
    for _ in hold.run(FakeSession('acq', 1), period=period):
        worker.call(driver.read, timeout=BOUND)
        out['samples'] += 1
        holding.set()
    ok, msg = hold.result
    if not ok:
        out['loop_error'] = msg


def _guarded(fn, out, key):
    def run(*args):
        try:
            fn(*args)
        except BaseException as e:      # reported by the thread that joins us
            out[key] = f'{type(e).__name__}: {e}'
    return run


def _tasks(lock, worker, driver, n, gap, seed):
    rng, waits, failures = random.Random(seed), [], 0
    for i in range(n):
        time.sleep(rng.uniform(*gap))
        t0 = time.perf_counter()
        with lock.acquire_timeout(timeout=TASK_TIMEOUT, job='task') as ok:
            wait = time.perf_counter() - t0
            if ok:
                worker.call(driver.set_heater, float(i % 101), timeout=BOUND)
        waits.append(wait)
        failures += not ok
    return waits, failures


def _p99(v):
    return sorted(v)[max(0, math.ceil(0.99 * len(v)) - 1)]


def run_scenario(name, n_tasks):
    """One scenario on its own device; returns its results dict."""
    _, pattern, period, yield_every, _, gap, seed = SCENARIOS[name]
    out = {'samples': 0, 'loop_error': None}
    server = DeviceServer(latency=LATENCY).start()      # on a free loopback port
    driver = ThermometryClient(server.host, server.port, timeout=2.0)
    worker = DeviceWorker(name, on_stop=driver.close)
    running, holding = threading.Event(), threading.Event()
    hold = loop = None

    def stop_loop():
        running.clear()
        if hold is not None:
            hold.stop()
        if loop is not None:
            loop.join(BOUND)
    try:
        worker.start()
        if pattern == KIT:
            lock = TimeoutLock(name='hw')
            hold = YieldingHold(lock, timeout=3, retake_timeout=10)
            args = (hold, worker, driver, period, holding, out)
            target = _kit_loop
        else:
            lock = ocs.ocs_twisted.TimeoutLock()
            running.set()
            args = (lock, worker, driver, period, yield_every, running, holding, out)
            target = _socs_loop
        loop = threading.Thread(target=_guarded(target, out, 'loop_error'), args=args,
                                daemon=True, name=f'acq-{name}')
        loop.start()
        if not holding.wait(BOUND):
            raise RuntimeError(f'{name}: the acq loop never held the lock ({out["loop_error"]})')
        t_start, samples = time.monotonic(), out['samples']
        waits, failures = _tasks(lock, worker, driver, n_tasks, gap, seed)
        duration = time.monotonic() - t_start
        samples = out['samples'] - samples
        stop_loop()
        if loop.is_alive():
            raise RuntimeError(f'{name}: the acq loop did not stop within {BOUND} s')
        if out['loop_error']:
            raise RuntimeError(f'{name}: acq loop: {out["loop_error"]}')
        collisions = worker.call(driver.stats, timeout=BOUND)['collisions']
    finally:
        stop_loop()
        worker.stop()
        server.stop()
    return {'wait_median_ms': statistics.median(waits) * 1e3, 'wait_p99_ms': _p99(waits) * 1e3,
            'failures': failures, 'tasks': n_tasks, 'failure_pct': 100.0 * failures / n_tasks,
            'sample_rate_hz': samples / duration, 'collisions': collisions,
            'handovers': hold.handovers if hold else None, 'duration_s': duration}


def run(quick, serial=False):
    counts = {'a': 30, 'b': 6} if quick else {'a': 200, 'b': 40}
    if serial:
        return {n: run_scenario(n, counts[s[4]]) for n, s in SCENARIOS.items()}, counts
    res, errors, threads = {}, {}, []
    for name, spec in SCENARIOS.items():
        def one(name=name, n=counts[spec[4]]):
            res[name] = run_scenario(name, n)
        threads.append((name, threading.Thread(target=_guarded(one, errors, name),
                                               daemon=True, name=f'scenario-{name}')))
    for _, t in threads:
        t.start()
    for name, t in threads:      # every task waits at most gap + 3 s (+ its 2 ms command)
        t.join(counts[SCENARIOS[name][4]] * (SCENARIOS[name][5][1] + TASK_TIMEOUT + 1) + 60)
        if t.is_alive():
            errors[name] = 'did not finish in time'
    if errors:
        raise RuntimeError('; '.join(f'{k}: {v}' for k, v in errors.items()))
    return res, counts


def _ratio(a, b):
    """kit / socs; small ratios as 1/N so they stay readable."""
    if not b:
        return 'n/a'
    r = a / b
    return f'{r:.2f}' if r == 0 or r >= 0.01 else f'1/{1 / r:,.0f}'


ROWS_A = [('wait_median_ms', 'task wait, median (ms)', '{:.1f}'),
          ('wait_p99_ms', 'task wait, p99 (ms)', '{:.1f}'),
          ('failures', 'task failures (timeout 3 s)', '{}'),
          ('sample_rate_hz', 'acq samples per s while tasks ran', '{:.2f}'),
          ('collisions', 'device collisions (driver.stats())', '{}')]
ROWS_B = [('failure_pct', 'task failures (timeout 3 s), %', '{:.0f}%'),
          ('wait_median_ms', 'task wait, median (ms)', '{:.1f}'),
          ('wait_p99_ms', 'task wait, p99 (ms)', '{:.1f}'),
          ('sample_rate_hz', 'acq samples per s while tasks ran', '{:.2f}'),
          ('collisions', 'device collisions (driver.stats())', '{}')]


def print_tables(res, counts):
    a, s = res['a_kit'], res['a_socs']
    print(f"(a) acq at 10 Hz, socs loop yields every 1 s; {counts['a']} sequential tasks, "
          f"gaps 20..120 ms; ratio = kit / socs\n")
    print(f'| metric | kit (ocs_locking) | socs pattern ({OCS}, baseline) | ratio |')
    print('|---|---:|---:|---:|')
    for key, label, fmt in ROWS_A:
        label += f" (of {counts['a']})" if key == 'failures' else ''
        print(f'| {label} | {fmt.format(a[key])} | {fmt.format(s[key])} | '
              f'{_ratio(a[key], s[key])} |')
    k1, k5, s = res['b_kit'], res['b_kit5'], res['b_socs']
    print(f"\n(b) socs PR #614: socs loop yields every 5 s > task timeout 3 s; "
          f"{counts['b']} sequential tasks, gaps 0.2..1.2 s; ratio = kit / socs\n")
    print(f'| metric | kit (ocs_locking), period 0.1 s | kit (ocs_locking), period 5 s | '
          f'socs pattern ({OCS}, yields every 5 s, baseline) | ratio (kit 0.1 s) | '
          f'ratio (kit 5 s) |')
    print('|---|---:|---:|---:|---:|---:|')
    for key, label, fmt in ROWS_B:
        print(f'| {label} | {fmt.format(k1[key])} | {fmt.format(k5[key])} | '
              f'{fmt.format(s[key])} | {_ratio(k1[key], s[key])} | {_ratio(k5[key], s[key])} |')
    print()


def targets(res):
    a, kb = res['a_kit'], (res['b_kit'], res['b_kit5'])
    col = {n: r['collisions'] for n, r in res.items()}
    return [
        dict(name='(a) kit median wait <= 100 ms (one sample period)',
             passed=a['wait_median_ms'] <= 100, detail=f"{a['wait_median_ms']:.1f} ms"),
        dict(name='(a) kit p99 wait < 250 ms', passed=a['wait_p99_ms'] < 250,
             detail=f"{a['wait_p99_ms']:.1f} ms"),
        dict(name='(b) zero kit failures (period 0.1 s and 5 s)',
             passed=all(r['failures'] == 0 for r in kb),
             detail=' and '.join(f"{r['failures']}/{r['tasks']}" for r in kb)),
        dict(name='zero device collisions in every scenario',
             passed=not any(col.values()), detail=json.dumps(col)),
    ]


def main(args=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer tasks (< 40 s)')
    p.add_argument('--serial', action='store_true',
                   help='run the scenarios one after another, not at the same time')
    p.add_argument('--json', metavar='PATH', help='write the results dict here')
    opts = p.parse_args(args)
    start = time.perf_counter()
    res, counts = run(opts.quick, opts.serial)
    print_tables(res, counts)
    tg = targets(res)
    for t in tg:
        print(f"{'PASS' if t['passed'] else 'FAIL'}: {t['name']} ({t['detail']})")
    elapsed = time.perf_counter() - start
    print(f"\n{'quick' if opts.quick else 'full'} run "
          f"({'serial' if opts.serial else 'scenarios at the same time'}): {elapsed:.1f} s, "
          f"Python {sys.version.split()[0]}")
    if opts.json:
        params = dict(quick=opts.quick, serial=opts.serial, tasks=counts, latency_s=LATENCY,
                      task_timeout_s=TASK_TIMEOUT,
                      scenarios={n: dict(part=s[0], pattern=s[1], period_s=s[2],
                                         socs_yield_s=s[3], gap_s=s[5], seed=s[6])
                                 for n, s in SCENARIOS.items()})
        with open(opts.json, 'w') as fh:
            json.dump(dict(results=res, params=params, targets=tg, baseline=OCS,
                           elapsed_s=elapsed), fh, indent=2)
    return 0 if all(t['passed'] for t in tg) else 1


if __name__ == '__main__':
    sys.exit(main())
