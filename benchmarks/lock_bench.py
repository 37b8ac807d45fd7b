"""Side-by-side benchmark of three locks, in one process.

* ``ocs_locking``    -- :class:`ocs_locking.TimeoutLock` (ours).
* ``ocs <version>``  -- :class:`ocs.ocs_twisted.TimeoutLock`, the named baseline
  (two ``threading.Lock``: ``_next`` then ``_active``).
* ``threading.Lock`` -- the reference floor, wrapped so it offers the same
  ``acquire``/``release``/``release_and_acquire``/``acquire_timeout`` calls.

Scenarios (all thread waits are bounded, all helper threads are daemons):

1. **uncontended** -- ``with lock.acquire_timeout(timeout=3, job='bench') as ok:
   pass``, ns per section. Rounds are interleaved (every round runs every lock,
   in rotated order) and the median of the per-round figures is reported, so
   machine noise hits all locks alike.
2. **release_and_acquire, nobody waiting** -- the holder calls
   ``release_and_acquire(timeout=3)`` in a loop (``threading.Lock``: release then
   acquire); ns per call, interleaved like 1.
3. **hand-off latency** -- the main thread holds the lock; a waiter thread
   blocks in ``acquire(timeout=5)``. The waiter sets an Event just before
   calling acquire; the holder waits for it, then sleeps 2 ms so the waiter is
   parked in the kernel -- the same for every lock (polling ours' status()
   right before the timed release was seen to slow ours by several us, so for
   ours the hand-off is verified afterwards via ``status().counters``). The
   holder takes ``t0 = perf_counter()`` and calls ``release()``; the waiter
   takes ``t1`` as soon as acquire returns. Samples are interleaved across the
   locks like 1; median and p99 of ``t1 - t0`` in microseconds.
4. **FIFO, 4 waiters** -- the holder holds; waiters w0..w3 are started one at a
   time, each blocked before the next starts, each calling
   ``acquire(timeout=5, job='wI')`` and appending its name once granted. Then
   the holder calls ``release_and_acquire(timeout=5)`` and appends 'holder'.
   A trial is FIFO when the order is w0, w1, w2, w3, holder; reported as % of
   trials.
5. **deadline overshoot** -- another thread holds the lock throughout, and one
   more thread is already waiting in ``acquire(timeout=10)``; the measured call
   is ``acquire(timeout=T)``; reported is the median of (elapsed - T) / T in %.
   For ocs the measured call waits on ``_next`` (held by the earlier waiter).
   Variant **5b**: the earlier waiter uses ``acquire(timeout=T/2)`` instead, so
   ocs's measured call gets ``_next`` at T/2 and then waits a fresh T on
   ``_active`` -- ocs applies the timeout twice. Both rows are real measurements.

Targets (the brief of issue 8): uncontended <= 0.7x ocs; hand-off median <= ocs;
FIFO 100%; overshoot < 5%.

Why ours' hand-off is slower than ocs's (measured by timestamping inside
``release()`` on this 2-core machine): it is not the wake primitive (each thread
waiter already parks on its own plain ``threading.Lock``, as ocs's waiter parks
on ``_active``). The holder comes back from a sleep with a cold CPU, where every
operation costs about 1 us; before the wake ocs does one attribute store, ours
does the owner check (``get_ident``, ~1.1 us), takes its mutex (~2.9 us) and
pops and grants the first waiter (~2.7 us), then wakes it. Tried and measured
interleaved against ocs, none moved the median: inlining the grant (as earlier
versions did); waking the waiter before taking the mutex (a per-waiter claim,
which the owner check allows); handing the GIL to the woken thread with
``sleep(0)`` (the releasing thread then pays ~100 us); waking the waiter
last, after all bookkeeping (worse: 41.3 vs 39.3 us for ours as it is). A
stripped-down release with no mutex, no owner bookkeeping and no counters
(pop the first waiter, set the owner, wake it: not safe against a waiter
timing out at the same moment) still measured 18.8 us against ocs's 17.7 us
in the same interleaved run (1.06x): on this machine a FIFO of per-waiter
wake locks cannot match ocs's single raw-lock hand-off in CPython. The gap
stays open.

Measured again (issue 8, interleaved in one process, 300 samples x 4-5 runs,
median ratio to ocs): the release as it is 1.27-1.30; a release that wakes the
waiter and then does its bookkeeping with the GIL held 1.32 (the woken thread
waits for the GIL: work after the wake is on the hand-off's path); all
bookkeeping before a wake done last, outside the mutex, inlined 1.16, the same
through the one grant/release path (``_release_locked`` returning the waiter)
1.29 (two Python calls more); mutex + owner check, then only the wake 1.08-1.13;
no mutex, no bookkeeping at all (unsafe) 1.02-1.09.

``--quick`` runs far fewer iterations (< 10 s, for the smoke test); ``--json
PATH`` writes the results dict. ``main()`` returns 0 when every target passes.
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ocs.ocs_twisted  # noqa: E402
import ocs_locking  # noqa: E402

OURS, OCS, THR = 'ocs_locking', f"ocs {importlib.metadata.version('ocs')}", 'threading.Lock'
LOCKS = (OURS, OCS, THR)
SETTLE = 0.002      # s a waiter gets to park itself after announcing it
BOUND = 10.0        # s: upper bound on any wait for a helper thread


class _ThreadingLock:
    """``threading.Lock`` with the TimeoutLock call surface (the floor)."""
    __slots__ = ('_l',)

    def __init__(self):
        self._l = threading.Lock()

    def acquire(self, timeout=-1, job=None):
        return self._l.acquire(timeout=timeout)

    def release(self):
        self._l.release()

    def release_and_acquire(self, timeout=-1):
        self._l.release()
        return self._l.acquire(timeout=timeout)

    def acquire_timeout(self, timeout=-1, job=None):
        return _Held(self._l, timeout)


class _Held:
    __slots__ = ('_l', '_t', '_ok')

    def __init__(self, lock, timeout):
        self._l, self._t, self._ok = lock, timeout, False

    def __enter__(self):
        self._ok = self._l.acquire(timeout=self._t)
        return self._ok

    def __exit__(self, *exc):
        if self._ok:
            self._l.release()


FACTORIES = {OURS: ocs_locking.TimeoutLock, OCS: ocs.ocs_twisted.TimeoutLock,
             THR: _ThreadingLock}


def _spawn(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def _join(*threads):
    for t in threads:
        t.join(BOUND)
        if t.is_alive():
            raise RuntimeError(f'helper thread {t.name} did not finish in {BOUND} s')


def _wait_blocked(name, lock, announced, n_waiting):
    """Return once the waiter that set ``announced`` is blocked in acquire."""
    if not announced.wait(BOUND):
        raise RuntimeError('waiter thread never started')
    if name == OURS and n_waiting is not None:
        deadline = time.monotonic() + BOUND
        while len(lock.status().waiters) != n_waiting:
            if time.monotonic() > deadline:
                raise RuntimeError('waiter never queued')
            time.sleep(50e-6)
    time.sleep(SETTLE)


def _interleaved(body, rounds, n):
    """ns per iteration of ``body(lock, n)`` for each lock, median over rounds."""
    per = {name: [] for name in LOCKS}
    for name in LOCKS:                      # warm-up, not timed
        body(FACTORIES[name](), n // 10)
    for r in range(rounds):
        for name in LOCKS[r % 3:] + LOCKS[:r % 3]:
            lock = FACTORIES[name]()
            t = time.perf_counter_ns()
            body(lock, n)
            per[name].append((time.perf_counter_ns() - t) / n)
    return {name: statistics.median(v) for name, v in per.items()}


def _uncontended_body(lock, n):
    for _ in range(n):
        with lock.acquire_timeout(timeout=3, job='bench') as ok:
            pass
    assert ok


def _ra_body(lock, n):
    lock.acquire(timeout=3, job='bench')
    for _ in range(n):
        lock.release_and_acquire(timeout=3)
    lock.release()


def _handoff_once(name):
    lock, announced, out = FACTORIES[name](), threading.Event(), []

    def waiter():
        announced.set()
        if lock.acquire(timeout=5, job='waiter'):
            out.append(time.perf_counter())
            lock.release()

    assert lock.acquire(timeout=5, job='holder')
    t = _spawn(waiter)
    _wait_blocked(name, lock, announced, None)
    t0 = time.perf_counter()
    lock.release()
    _join(t)
    if not out:
        raise RuntimeError(f'{name}: waiter was not granted the lock')
    if name == OURS and lock.status().counters.handoffs != 1:
        raise RuntimeError('ocs_locking: the release was not a hand-off')
    return (out[0] - t0) * 1e6


def handoff(samples):
    """(median, p99) hand-off latency in us per lock; samples interleaved."""
    lat = {name: [] for name in LOCKS}
    for k in range(samples):
        for name in LOCKS[k % 3:] + LOCKS[:k % 3]:
            lat[name].append(_handoff_once(name))
    return {name: (statistics.median(v), sorted(v)[min(len(v) - 1, int(0.99 * len(v)))])
            for name, v in lat.items()}


def fifo(name, trials):
    good = 0
    for _ in range(trials):
        lock, order, threads = FACTORIES[name](), [], []
        assert lock.acquire(timeout=5, job='holder')
        for i in range(4):
            announced = threading.Event()

            def waiter(i=i, announced=announced):
                announced.set()
                if lock.acquire(timeout=5, job=f'w{i}'):
                    order.append(f'w{i}')
                    lock.release()

            threads.append(_spawn(waiter))
            _wait_blocked(name, lock, announced, i + 1)
        ok = lock.release_and_acquire(timeout=5)
        order.append('holder' if ok else 'holder-timed-out')
        if ok:
            lock.release()
        _join(*threads)
        good += order == ['w0', 'w1', 'w2', 'w3', 'holder']
    return 100.0 * good / trials


def overshoot(name, T, trials, ahead_timeout=None):
    """Median overshoot in % of T; see scenario 5 (and 5b with ahead_timeout)."""
    lock, held, stop = FACTORIES[name](), threading.Event(), threading.Event()

    def holder():
        if lock.acquire(timeout=5, job='holder'):
            held.set()
            stop.wait(60)
            lock.release()

    def ahead(timeout, announced):
        announced.set()
        if lock.acquire(timeout=timeout, job='ahead'):
            lock.release()

    h = _spawn(holder)
    if not held.wait(BOUND) or lock.acquire(timeout=0):
        raise RuntimeError('holder never got the lock')
    helpers, over = [], []
    try:
        for k in range(trials):
            if ahead_timeout is not None or k == 0:
                announced = threading.Event()
                helpers.append(_spawn(ahead, ahead_timeout or 10, announced))
                _wait_blocked(name, lock, announced, 1)
            t = time.perf_counter()
            got = lock.acquire(timeout=T, job='measured')
            elapsed = time.perf_counter() - t
            if got:
                raise RuntimeError(f'{name}: measured acquire succeeded')
            over.append((elapsed - T) / T * 100)
            if ahead_timeout is not None:
                _join(helpers[-1])
    finally:
        stop.set()
    _join(h, *helpers)
    return statistics.median(over)


def run(quick):
    rounds, n = (3, 20_000) if quick else (7, 200_000)
    samples, trials, T, ot = (30, 10, 0.05, 3) if quick else (300, 50, 0.2, 10)
    res = {'uncontended_ns': _interleaved(_uncontended_body, rounds, n),
           'release_and_acquire_idle_ns': _interleaved(_ra_body, rounds, n)}
    ho = handoff(samples)
    res['handoff_median_us'], res['handoff_p99_us'] = (
        {k: v[i] for k, v in ho.items()} for i in (0, 1))
    res['fifo_pct'] = {name: fifo(name, trials) for name in LOCKS}
    res['overshoot_pct'] = {name: overshoot(name, T, ot) for name in LOCKS}
    res['overshoot_ahead_gives_up_pct'] = {
        name: overshoot(name, T, ot, ahead_timeout=T / 2) for name in LOCKS}
    params = dict(quick=quick, rounds=rounds, iterations=n, handoff_samples=samples,
                  fifo_trials=trials, timeout_T=T, overshoot_trials=ot)
    return res, params


ROWS = [('uncontended_ns', '1. uncontended acquire_timeout (ns/section)', '{:.0f}'),
        ('release_and_acquire_idle_ns', '2. release_and_acquire, idle (ns/call)', '{:.0f}'),
        ('handoff_median_us', '3. hand-off latency median (us)', '{:.1f}'),
        ('handoff_p99_us', '3. hand-off latency p99 (us)', '{:.1f}'),
        ('fifo_pct', '4. FIFO order, 4 waiters (% of trials)', '{:.0f}%'),
        ('overshoot_pct', '5. deadline overshoot, waiter ahead (% of T)', '{:.1f}%'),
        ('overshoot_ahead_gives_up_pct', '5b. overshoot, waiter ahead gives up at T/2 '
         '(% of T)', '{:.1f}%')]


def _ratio(a, b):
    return f'{a / b:.2f}' if b else 'n/a'


def targets(res):
    r = res['uncontended_ns'][OURS] / res['uncontended_ns'][OCS]
    h = res['handoff_median_us'][OURS] / res['handoff_median_us'][OCS]
    f = res['fifo_pct'][OURS]
    o = max(res['overshoot_pct'][OURS], res['overshoot_ahead_gives_up_pct'][OURS])
    return [
        dict(name='uncontended ours <= 0.7x ocs', passed=r <= 0.7, detail=f'ratio {r:.2f}'),
        dict(name='hand-off median ours <= ocs', passed=h <= 1.0, detail=f'ratio {h:.2f}'),
        dict(name='FIFO ours 100%', passed=f == 100.0, detail=f'{f:.0f}%'),
        dict(name='overshoot ours < 5% of timeout (worst of 5, 5b)', passed=o < 5.0,
             detail=f'{o:.1f}%'),
    ]


def main(args=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='few iterations (< 10 s)')
    p.add_argument('--json', metavar='PATH', help='write the results dict here')
    opts = p.parse_args(args)
    start = time.perf_counter()
    res, params = run(opts.quick)
    tg = targets(res)
    print(f'| scenario | {OURS} | {OCS} (baseline) | {THR} | {OURS} / ocs |')
    print('|---|---:|---:|---:|---:|')
    for key, label, fmt in ROWS:
        v = res[key]
        print(f'| {label} | ' + ' | '.join(fmt.format(v[n]) for n in LOCKS)
              + f' | {_ratio(v[OURS], v[OCS])} |')
    print()
    for t in tg:
        print(f"{'PASS' if t['passed'] else 'FAIL'}: {t['name']} ({t['detail']})")
    elapsed = time.perf_counter() - start
    print(f'\n{"quick" if opts.quick else "full"} run: {elapsed:.1f} s, '
          f'Python {sys.version.split()[0]}')
    if opts.json:
        with open(opts.json, 'w') as fh:
            json.dump(dict(results=res, params=params, targets=tg, locks=list(LOCKS),
                           baseline=OCS, elapsed_s=elapsed), fh, indent=2)
    return 0 if all(t['passed'] for t in tg) else 1


if __name__ == '__main__':
    sys.exit(main())
