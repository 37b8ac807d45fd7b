"""``ocs-locks status``: the registry's table over HTTP."""
import json
import sys

from ..wire import TABLE_KEY
from .formatters import format_table, json_rows
from .site import load_site, unreachable

__all__ = ['fetch_rows', 'cmd_status']


def fetch_rows(args, site=None):
    """The registry's table over HTTP (its monitor's session.data, or its
    ``status`` task when the monitor is not running), sorted by lock."""
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
    return sorted((r for r in rows if isinstance(r, dict)), key=lambda r: str(r.get('lock')))


def cmd_status(args):
    rows = fetch_rows(args)
    text = json.dumps(json_rows(rows), indent=1) if args.json else format_table(rows)
    sys.stdout.write(text + '\n')
    return 0
