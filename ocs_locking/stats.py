"""Hold and wait times per lock or lease, between two records (pure).

The registry records one ``lock_stats`` block per lock and per site lease
every ``--stats-every`` seconds. :class:`PeriodStats` gathers what happened
in between: each hold and each wait that ended (seconds, measured on one
clock), and counters that only grow (grants, refusals). :meth:`take` gives
a key's percentiles for its period and starts the next one.

At most :data:`MAX_SAMPLES` durations per key and period are kept (a
uniform sample of them beyond that, with a fixed seed), so a flood cannot
grow it; the counts stay exact.

Pure: no OCS, no Twisted, no I/O.
"""
import math
import random

__all__ = ['PeriodStats', 'PERIOD_FIELDS', 'MAX_SAMPLES', 'percentile']

#: The fields :meth:`PeriodStats.take` gives, always all of them.
PERIOD_FIELDS = ('holds', 'hold_p50_s', 'hold_p99_s', 'waits', 'wait_p50_s', 'wait_p99_s')
#: Durations kept per key, kind and period.
MAX_SAMPLES = 4096


def percentile(values, q):
    """The ``q`` quantile (0..1) of sorted ``values`` (nearest rank); 0.0
    when there are none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


class _Samples:
    __slots__ = ('n', 'kept')

    def __init__(self):
        self.n = 0
        self.kept = []


class PeriodStats:
    """Holds and waits per key since its last :meth:`take`, and counters."""

    def __init__(self, max_samples=MAX_SAMPLES, seed=0):
        self.max_samples = max_samples
        self._rng = random.Random(seed)
        self._periods = {}      # (key, 'hold'|'wait') -> _Samples
        self.counters = {}      # key -> {name: n}

    def _add(self, key, kind, seconds):
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            return
        s = self._periods.get((key, kind))
        if s is None:
            s = self._periods[(key, kind)] = _Samples()
        s.n += 1
        if len(s.kept) < self.max_samples:
            s.kept.append(float(seconds))
        else:                       # reservoir: every duration equally likely kept
            i = self._rng.randrange(s.n)
            if i < self.max_samples:
                s.kept[i] = float(seconds)

    def hold(self, key, seconds):
        """A hold of ``key`` ended after ``seconds``."""
        self._add(key, 'hold', seconds)

    def wait(self, key, seconds):
        """A wait for ``key`` ended (granted) after ``seconds``."""
        self._add(key, 'wait', seconds)

    def count(self, key, name, n=1):
        """Add ``n`` to ``key``'s counter ``name`` (counters never reset)."""
        c = self.counters.setdefault(key, {})
        c[name] = c.get(name, 0) + n

    def counter(self, key, name):
        return self.counters.get(key, {}).get(name, 0)

    def pending(self):
        """The keys with holds or waits not yet taken."""
        return {key for key, _ in self._periods}

    def take(self, key):
        """``key``'s period so far (:data:`PERIOD_FIELDS`: counts, and the
        median and 99th percentile in seconds, 0.0 without any), and the
        start of its next period."""
        out = {}
        for kind in ('hold', 'wait'):
            s = self._periods.pop((key, kind), None)
            kept = sorted(s.kept) if s else []
            out[f'{kind}s'] = s.n if s else 0
            out[f'{kind}_p50_s'] = round(percentile(kept, 0.5), 6)
            out[f'{kind}_p99_s'] = round(percentile(kept, 0.99), 6)
        return {k: out[k] for k in PERIOD_FIELDS}

    def forget(self, key):
        """Drop everything about ``key`` (its lock left the table)."""
        self._periods.pop((key, 'hold'), None)
        self._periods.pop((key, 'wait'), None)
        self.counters.pop(key, None)
