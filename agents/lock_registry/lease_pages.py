"""Pages of the lease tables, each within the message budget (pure).

The registry's lease state is three tables: the grants, the waiting
requests and the token counters (one per resource ever granted; never
shrinks). :func:`lease_page` reads them as one sequence, grants first, then
waiting requests, then counters (sorted by resource), and returns the part
from ``offset``: at most ``limit`` rows and at most ``budget`` octets of JSON
(:func:`ocs_locking.wire.split_rows`), with the totals, so that a client
reads every page (``ocs-locks leases`` does).
"""
from ocs_locking.flags import lease_flags
from ocs_locking.wire import MESSAGE_BUDGET, split_rows

__all__ = ['lease_page', 'LEASE_PAGE_ROWS', 'TOTAL_KEYS', 'with_expires_in']

#: The most rows (grants, waiting requests, counters) of one page.
LEASE_PAGE_ROWS = 1000
#: The totals every page carries.
TOTAL_KEYS = ('total', 'grants_total', 'waiting_total', 'counters_total')


def lease_page(snapshot, offset=0, limit=LEASE_PAGE_ROWS, budget=MESSAGE_BUDGET):
    """One page of ``snapshot`` (:meth:`LeaseState.snapshot`:
    ``{'grants', 'waiting', 'counters'}``): ``{'grants': [...], 'waiting':
    [...], 'counters': {resource: token}, 'offset', 'total', 'grants_total',
    'waiting_total', 'counters_total'}``. The page is rows ``offset ..
    offset + n - 1`` of the sequence grants + waiting + counters; ``n`` is
    at most ``limit`` and fits ``budget`` (0 past the end)."""
    grants, waiting = snapshot['grants'], snapshot['waiting']
    counters = sorted(snapshot['counters'].items())
    g, w = len(grants), len(waiting)
    rows = (grants + waiting + [list(c) for c in counters])[offset:offset + limit]
    page = split_rows(rows, budget)[0] if rows else []
    n_g = max(0, min(len(page), g - offset))
    n_w = max(0, min(len(page) - n_g, g + w - max(offset, g)))
    return {'grants': page[:n_g], 'waiting': page[n_g:n_g + n_w],
            'counters': {r: t for r, t in page[n_g + n_w:]},
            'offset': offset, 'total': g + w + len(counters), 'grants_total': g,
            'waiting_total': w, 'counters_total': len(counters)}


def with_expires_in(grants, now, lengths=None, extra=None):
    """Copies of the grant rows with ``expires_in``: seconds left as of
    ``now`` (the clock that wrote ``expires``: the registry's), so that a
    client counts down on its own clock instead of comparing two hosts'.
    ``flags``: ``['expiring']`` when less than a quarter of the lease is
    left (:func:`ocs_locking.flags.lease_flags`; ``lengths``: the
    registry's :func:`~ocs_locking.flags.lease_lengths`), else []; and the
    flags ``extra`` gives its resource (``{resource: [flag]}``: ``deadlock``)."""
    out = []
    for g in grants:
        if isinstance(g.get('expires'), (int, float)):
            left = round(max(0.0, g['expires'] - now), 3)
            length = (lengths or {}).get((g.get('resource'), g.get('token')))
            flags = lease_flags(g, left, length[1]) if length else ()
            more = (extra or {}).get(g.get('resource'), ())
            out.append(dict(g, expires_in=left, flags=list(flags) + list(more)))
        else:
            out.append(dict(g))
    return out
