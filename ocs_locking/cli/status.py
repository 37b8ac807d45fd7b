"""``ocs-locks status``: the registry's table over HTTP.

The monitor's session.data keeps at most ``--session-rows`` rows and says
the table's ``total``; when the table is bigger (or the monitor is not
running) the rows come from the registry's ``status`` task, page by page
(``offset``/``limit``), until every row is read (a bounded number of pages).
"""
import json
import sys

from ..wire import BUS_KEY, HEALTH_KEY, TABLE_KEY
from ..errors import CliError
from .formatters import (bus_lines, deadlock_lines, format_site_leases, format_table,
                         format_waiters, health_lines, json_rows, replication_lines)
from .site import load_site, unreachable

__all__ = ['fetch_rows', 'fetch_table', 'fetch_view', 'fetch_leases', 'read_pages',
           'cmd_status']

#: The most status pages one command reads (a table can change while it is
#: read: pages are read until ``total`` rows came or a page is empty).
MAX_PAGES = 1000


def fetch_rows(args, site=None):
    """The registry's table over HTTP (its monitor's session.data, or its
    ``status`` task's pages when the monitor keeps only part of the table
    or is not running), sorted by lock."""
    return fetch_view(args, site)['rows']


def fetch_table(args, site=None):
    """``(rows, health)``: the table as :func:`fetch_rows` and the registry's
    ``lease_health`` (None when it has none to say)."""
    view = fetch_view(args, site)
    return view['rows'], view['health']


def _rows(locks):
    rows = list(locks.values()) if isinstance(locks, dict) else \
        list(locks) if isinstance(locks, list) else []
    return [r for r in rows if isinstance(r, dict)]


def read_pages(call, first=None):
    """Every row of the registry's table from its ``status`` pages:
    ``call(offset)`` returns one page's session.data. ``first``: a page
    already read (offset 0). Returns ``(rows, last page's data)``."""
    rows, data = [], first
    for _ in range(MAX_PAGES):
        if data is None:
            data = call(len(rows)) or {}
        page = _rows(data.get(TABLE_KEY))
        rows.extend(page)
        total = data.get('total')
        if not page or not isinstance(total, int) or len(rows) >= total:
            break
        data = None
    return rows, data or {}


def fetch_view(args, site=None):
    """``{'rows', 'health', 'bus'}``: the whole table (sorted by lock), the
    registry's ``lease_health`` and its ``bus`` block (None when it has
    none to say)."""
    from ocs.ocs_client import OCSClient
    site = load_site(args) if site is None else site
    try:
        client = OCSClient(args.registry, args=args)
        data = client.monitor.status().session.get('data') or {}
        rows = _rows(data.get(TABLE_KEY))
        total = data.get('total')
        if TABLE_KEY not in data or (isinstance(total, int) and total > len(rows)):
            # monitor not running, or it keeps part of the table: read the pages
            def page(offset):
                return client.status(offset=offset).session.get('data') or {}
            rows, last = read_pages(page)
            data = dict(last, **{k: data[k] for k in (HEALTH_KEY, BUS_KEY, 'deadlocks',
                                                      'replication')
                                 if k in data})
    except Exception as e:
        raise unreachable(args, site, e) from None
    rows = sorted(rows, key=lambda r: str(r.get('lock')))
    return {'rows': rows, 'health': data.get(HEALTH_KEY), 'bus': data.get(BUS_KEY),
            'deadlocks': data.get('deadlocks'), 'replication': data.get('replication')}


def fetch_leases(args):
    """Every site lease and waiting request (the registry's ``leases``
    pages), or ``(None, reason)`` when the registry cannot say (an older
    registry without the task, or it refused): ``(data, None)``."""
    from .leases import _run_task, read_lease_pages

    def page(offset):
        return _run_task(args, 'leases', {'offset': offset} if offset else {})[1]
    try:
        return read_lease_pages(page), None
    except CliError as e:
        return None, str(e)


def cmd_status(args):
    """The lock table (``--waiters``: then who waits for each lock, in
    order), then the site leases and who waits for them (text); ``--json``:
    the lock rows only, with their ``queue`` (``ocs-locks leases --json``
    has the leases)."""
    view = fetch_view(args)
    rows, notes = view['rows'], (deadlock_lines(view.get('deadlocks')) + bus_lines(view['bus'])
                                 + health_lines(view['health'])
                                 + replication_lines(view.get('replication')))
    if not args.json:
        leases, why = fetch_leases(args)
        lease_lines = format_site_leases(leases) if leases is not None else \
            [f'site leases not shown: {why}']
        notes = ([''] + lease_lines if lease_lines else []) + notes
        if getattr(args, 'waiters', False):
            waiting = format_waiters(rows) or ['(nobody waits for a lock)']
            notes = [''] + waiting + notes
    if args.json:
        sys.stdout.write(json.dumps(json_rows(rows), indent=1) + '\n')
        for line in notes:          # stdout stays the rows only
            sys.stderr.write(line + '\n')
    else:
        sys.stdout.write('\n'.join([format_table(rows)] + notes) + '\n')
    return 0
