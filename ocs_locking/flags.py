"""Stuck and unusual: the flags the registry puts on lock rows and leases (pure).

Four kinds, each a word in a row's ``flags`` list and a block of the
registry's recorded ``alerts`` feed:

``stuck``
    A lock held far beyond that job's usual hold: longer than
    ``STUCK_FACTOR`` times the 90th percentile of its past spans on that
    lock (released ones, at least ``USUAL_MIN`` of them; see
    :mod:`ocs_locking.lock_history`), and at least ``STUCK_MIN`` seconds.
    A job without that much history is never flagged: the flag says
    "unusual for this job", not "long".
``silent``
    An agent whose lock events stopped while its heartbeats go on: no
    message about the lock for ``SILENT_AFTER`` seconds (an agent's
    reporter sends a snapshot of every lock every 5 s) although the agent
    is alive (a wedged reporter, a lock left out of ``report_locks``
    after a restart).
``expiring``
    A site lease with less than ``EXPIRING_FRACTION`` of its lease left: its
    holder renews at a third at the latest, so it missed its renewal.
``deadlock``
    A lock or a site lease in a cycle of waits (:mod:`ocs_locking.deadlock`):
    each party in it waits for the next, so none goes on until one gives up.
    Its worst is how long the oldest cycle has been seen (``deadlock_for``).

Pure: no OCS, no Twisted, no I/O. Every time is on one clock (the
registry's), every duration measured on it.
"""

__all__ = ['FLAG_KINDS', 'ALERT_FIELDS', 'STUCK_FACTOR', 'STUCK_MIN', 'USUAL_MIN',
           'SILENT_AFTER', 'EXPIRING_FRACTION', 'lock_flags', 'lease_flags', 'alert_blocks',
           'count_flags', 'lease_lengths']

#: The flags, in display order.
FLAG_KINDS = ('stuck', 'silent', 'expiring', 'deadlock')
#: A hold is stuck beyond this many times the job's usual (p90) span ...
STUCK_FACTOR = 10.0
#: ... and beyond this many seconds.
STUCK_MIN = 60.0
#: Released spans of a job on a lock needed before its holds can be stuck.
USUAL_MIN = 3
#: Seconds without a lock message from a live agent before its lock is silent.
SILENT_AFTER = 20.0
#: A lease with less than this fraction of its lease left is expiring.
EXPIRING_FRACTION = 0.25

#: The fields of each kind's block on the ``alerts`` feed (fixed, as ocs and
#: InfluxDB need): how many rows have the flag now, and the worst of them
#: (seconds held, silent for, or left).
ALERT_FIELDS = {kind: (f'{kind}_count', f'{kind}_worst_s') for kind in FLAG_KINDS}


def lock_flags(row, usual=None, silent_for=None):
    """The flags of one lock row (a tuple in :data:`FLAG_KINDS` order).

    ``usual``: ``{'n', 'span_p90'}`` of the holding job's past spans on this
    lock, or None. ``silent_for``: seconds since the registry last heard a
    message about this lock (None: unknown).
    """
    flags = []
    held = row.get('held_for')
    if row.get('alive') and held is not None and usual and usual.get('n', 0) >= USUAL_MIN:
        p90 = usual.get('span_p90')
        if p90 is not None and held > max(STUCK_MIN, STUCK_FACTOR * p90):
            flags.append('stuck')
    if row.get('alive') and not row.get('closed') and silent_for is not None \
            and silent_for > SILENT_AFTER:
        flags.append('silent')
    return tuple(flags)


def lease_flags(grant, expires_in, lease=None):
    """The flags of one site lease: ``('expiring',)`` with less than
    :data:`EXPIRING_FRACTION` of its lease left, else (). ``lease``: its
    length in seconds (default: the grant's ``lease``, when it says)."""
    lease = grant.get('lease') if lease is None else lease
    if isinstance(lease, (int, float)) and not isinstance(lease, bool) and lease > 0 \
            and expires_in is not None and expires_in < EXPIRING_FRACTION * lease:
        return ('expiring',)
    return ()


def lease_lengths(grants, known):
    """How long each lease is, from what the registry saw: ``{(resource,
    token): (expires, seconds)}`` for ``grants`` (with ``expires_in``).
    A grant does not store its lease, but each time its ``expires`` moves
    (a grant, a renewal) the seconds then left are (at most one tick under)
    its lease; ``known`` is the previous answer."""
    out = {}
    for g in grants:
        left = g.get('expires_in')
        if not isinstance(left, (int, float)):
            continue
        key = (g.get('resource'), g.get('token'))
        prev = known.get(key)
        if prev is not None and prev[0] == g.get('expires'):
            out[key] = prev
        else:
            out[key] = (g.get('expires'), max(prev[1] if prev else 0.0, float(left)))
    return out


def _worst(kind, row):
    if kind == 'stuck':
        return row.get('held_for') or 0.0
    if kind == 'silent':
        return row.get('silent_for') or 0.0
    if kind == 'deadlock':
        return row.get('deadlock_for') or 0.0
    return row.get('expires_in') or 0.0


def count_flags(rows):
    """``{kind: (count, worst seconds)}`` over rows carrying ``flags``
    (lock rows, with ``silent_for`` where known; grants with
    ``expires_in``). The worst: the longest held or silent, the least left."""
    out = {}
    for kind in FLAG_KINDS:
        hits = [r for r in rows if kind in (r.get('flags') or ())]
        values = [_worst(kind, r) for r in hits]
        worst = (min(values) if kind == 'expiring' else max(values)) if values else 0.0
        out[kind] = (len(hits), round(float(worst), 3))
    return out


def alert_blocks(counts):
    """One ``alerts`` block per kind from :func:`count_flags`: ``{kind:
    {'<kind>_count': n, '<kind>_worst_s': s}}`` (the same keys every time)."""
    return {kind: dict(zip(ALERT_FIELDS[kind], (int(counts[kind][0]), float(counts[kind][1]))))
            for kind in FLAG_KINDS}
