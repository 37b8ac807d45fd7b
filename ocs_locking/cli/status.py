"""``ocs-locks status``: the registry's table over HTTP."""
import json
import sys

from ..wire import HEALTH_KEY, TABLE_KEY
from .formatters import format_table, health_lines, json_rows
from .site import load_site, unreachable

__all__ = ['fetch_rows', 'fetch_table', 'cmd_status']


def fetch_rows(args, site=None):
    """The registry's table over HTTP (its monitor's session.data, or its
    ``status`` task when the monitor is not running), sorted by lock."""
    return fetch_table(args, site)[0]


def fetch_table(args, site=None):
    """``(rows, health)``: the table as :func:`fetch_rows` and the registry's
    ``lease_health`` (None when it has none to say)."""
    from ocs.ocs_client import OCSClient
    site = load_site(args) if site is None else site
    try:
        client = OCSClient(args.registry, args=args)
        data = client.monitor.status().session.get('data') or {}
        if TABLE_KEY not in data:                 # monitor not running: ask directly
            data = client.status().session.get('data') or {}
    except Exception as e:
        raise unreachable(args, site, e) from None
    locks = data.get(TABLE_KEY) or {}
    rows = list(locks.values()) if isinstance(locks, dict) else list(locks)
    rows = sorted((r for r in rows if isinstance(r, dict)), key=lambda r: str(r.get('lock')))
    return rows, data.get(HEALTH_KEY)


def cmd_status(args):
    rows, health = fetch_table(args)
    if args.json:
        sys.stdout.write(json.dumps(json_rows(rows), indent=1) + '\n')
        for line in health_lines(health):       # stdout stays the rows only
            sys.stderr.write(line + '\n')
    else:
        sys.stdout.write('\n'.join([format_table(rows)] + health_lines(health)) + '\n')
    return 0
