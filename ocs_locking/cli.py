"""``ocs-locks``: the site's lock table for people::

    ocs-locks status            # the table, from the registry over HTTP
    ocs-locks status --json     # the same as a JSON list of rows
    ocs-locks watch             # a live table from the registry's ownership feed (WAMP)
    ocs-locks reserve satp1/hwp --lease 30 --note "manual work"   # hold until Ctrl-C
    ocs-locks release satp1/hwp --token 7
    ocs-locks force-release satp1/hwp --reason "stuck schedule" --password PW
    ocs-locks history [satp1/hwp] [--limit 20] [--json]

It reads the site config like other ocs tools (``--site-file``,
``--site-host``, ``$OCS_CONFIG_DIR``...). Every failure is one line on
stderr and exit status 1 (2 for bad arguments).
"""
import argparse
import getpass
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

from ocs import site_config

from .wamp import set_nodelay
from .wire import OWNERSHIP_FEED, error_reason, feed_topic

__all__ = ['main', 'make_parser', 'format_table', 'json_rows', 'format_history']

JSON_KEYS = ('lock', 'agent', 'job', 'session_id', 'since', 'waiters', 'alive')


class CliError(Exception):
    """A failure to report as one line."""


def make_parser():
    parser = argparse.ArgumentParser(
        prog='ocs-locks', description='Who holds which lock, site-wide.')
    site_config.add_arguments(parser)
    parser.add_argument('--registry', default='lock-registry',
                        help='instance-id of the LockRegistryAgent (default lock-registry)')
    sub = parser.add_subparsers(dest='command', required=True)
    st = sub.add_parser('status', help='print the lock table')
    st.add_argument('--json', action='store_true', help='print a JSON list of rows')
    w = sub.add_parser('watch', help='keep a live table on screen')
    w.add_argument('--count', type=int, default=None,
                   help='exit after this many updates (default: until Ctrl-C)')
    w.add_argument('--no-clear', action='store_true',
                   help='print each table below the last instead of redrawing')
    w.add_argument('--header', default=None,
                   help='a line to show above the table (e.g. how to stop a demo)')
    r = sub.add_parser('reserve', help='reserve resources site-wide until Ctrl-C')
    r.add_argument('resources', nargs='+', metavar='RESOURCE',
                   help="resource path(s), e.g. satp1/hwp (several: all or nothing)")
    r.add_argument('--lease', type=float, default=30.0,
                   help='lease in seconds, renewed every lease/3 (default 30)')
    r.add_argument('--note', default='', help='why (shown to others, kept in the audit log)')
    r.add_argument('--tree', action='store_true',
                   help='also exclude everything below the path(s)')
    r.add_argument('--timeout', type=float, default=0.0,
                   help="seconds to wait in the registry's queue if busy (default 0)")
    r.add_argument('--owner', default=None, help='owner name (default: user@host)')
    rel = sub.add_parser('release', help='release a lease by its token')
    rel.add_argument('resource', metavar='RESOURCE')
    rel.add_argument('--token', type=int, required=True, help='the fencing token of the grant')
    fr = sub.add_parser('force-release',
                        help="revoke whoever holds a resource (needs the registry's "
                             'level-2 password)')
    fr.add_argument('resource', metavar='RESOURCE')
    fr.add_argument('--reason', required=True, help='why (kept in the audit log)')
    fr.add_argument('--password', default=None,
                    help='the level-2 password (default: $OCS_LOCKS_PASSWORD, then the '
                         "ocs password configuration)")
    h = sub.add_parser('history', help="print the registry's audit log, newest first")
    h.add_argument('resource', nargs='?', default=None, metavar='RESOURCE',
                   help='only this resource and what lies below it')
    h.add_argument('--limit', type=int, default=20, help='at most this many rows (1..1000)')
    h.add_argument('--json', action='store_true', help='print a JSON list of rows')
    return parser


def _site(args):
    try:
        site, _, _ = site_config.get_config(args, '*control*')
    except AssertionError:
        raise CliError('no site config: pass --site-file or set OCS_CONFIG_DIR') from None
    except OSError as e:
        raise CliError(f'cannot read the site config: {e.strerror}: {e.filename}') from None
    except Exception as e:      # YAML errors, missing sections...
        text = ' '.join(str(e).split())[:200] or type(e).__name__
        raise CliError(f'the site config is not valid: {type(e).__name__}: {text}') from None
    if site is None:
        raise CliError('no site config (--site none)')
    missing = [k for k in ('wamp_server', 'wamp_http', 'wamp_realm', 'address_root')
               if not isinstance(site.hub.data.get(k), str)]
    if missing:
        raise CliError(f"the site config's hub lacks {', '.join(missing)}")
    return site


def fetch_rows(args):
    """The registry's table over HTTP (its monitor's session.data)."""
    from ocs.ocs_client import OCSClient
    site = _site(args)
    where = site.hub.data.get('wamp_http')
    try:
        client = OCSClient(args.registry, args=args)
        reply = client.monitor.status()
        data = reply.session.get('data') or {}
        if 'locks' not in data:                 # monitor not running: ask directly
            data = client.status().session.get('data') or {}
    except Exception as e:
        reason = _reason(e)
        raise CliError(f"cannot reach the lock registry '{args.registry}' at {where}: "
                       f"{reason[:200]}") from None
    locks = data.get('locks') or {}
    rows = list(locks.values()) if isinstance(locks, dict) else list(locks)
    return sorted(rows, key=lambda r: r.get('lock', ''))


def _reason(exc):
    """A short reason from an exception met on the way to an agent."""
    return error_reason(exc)


def json_rows(rows):
    return [{k: r.get(k) for k in JSON_KEYS} for r in rows]


def _held_for(row, now):
    since = row.get('since')
    if row.get('job') is None and since is None:
        return '-'
    return f'{max(0.0, now - since):.1f} s' if since is not None else '?'


def format_table(rows, now=None):
    """The table as text: lock, holder, held for, waiters, agent alive."""
    now = time.time() if now is None else now
    header = ('LOCK', 'HOLDER', 'HELD FOR', 'WAITERS', 'AGENT')
    lines = []
    for r in rows:
        if r.get('job') is None and r.get('since') is None:
            holder = '(free)'
        else:
            holder = r.get('job') or '(unnamed)'
            if r.get('session_id') is not None:
                holder += f" (session {r['session_id']})"
        lines.append((r.get('lock', '?'), holder, _held_for(r, now), str(r.get('waiters', 0)),
                      'alive' if r.get('alive') else 'STALE'))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [fmt.format(*header)] + [fmt.format(*line) for line in lines]
    if not lines:
        out.append('(no locks reported yet)')
    return '\n'.join(out)


def cmd_status(args):
    rows = fetch_rows(args)
    if args.json:
        print(json.dumps(json_rows(rows), indent=1))
    else:
        print(format_table(rows))
    return 0


def cmd_watch(args):
    """Live table: HTTP snapshot, then the ownership feed over WAMP."""
    if args.count is not None and args.count < 1:
        raise CliError(f'--count must be at least 1, not {args.count}')
    rows = {r['lock']: r for r in fetch_rows(args)}
    site = _site(args)
    topic = feed_topic(site.hub.data['address_root'], args.registry, OWNERSHIP_FEED)
    from autobahn.twisted.component import Component
    from twisted.internet import defer, task

    state = {'updates': 0, 'error': None, 'finished': False}

    def draw():
        text = format_table(sorted(rows.values(), key=lambda r: r['lock']))
        stamp = time.strftime('%H:%M:%S')
        if not args.no_clear:
            sys.stdout.write('\x1b[H\x1b[2J')
        header = f'{args.header}\n' if args.header else ''
        sys.stdout.write(f'{header}ocs-locks watch  {topic}  {stamp}\n{text}\n\n')
        sys.stdout.flush()

    def run(reactor):
        done = defer.Deferred()
        # Ctrl-C (or reaching --count) stops the reactor: not a lost connection.
        reactor.addSystemEventTrigger('before', 'shutdown', state.update, finished=True)
        comp = Component(transports=[{'url': site.hub.data['wamp_server'], 'max_retries': 0}],
                         realm=site.hub.data['wamp_realm'])

        def on_message(data):
            try:
                message = data[0]
                if message.get('kind') == 'snapshot':
                    rows.clear()
                for row in message.get('rows', []):
                    rows[row['lock']] = row
            except (TypeError, KeyError, IndexError, AttributeError):
                return      # not an ownership message; keep the table as it is
            state['updates'] += 1
            draw()
            if args.count is not None and state['updates'] >= args.count and not done.called:
                state['finished'] = True
                done.callback(None)

        @comp.on_join
        def joined(session, details):
            set_nodelay(session)
            draw()
            if not state.get('ticker'):
                # Keep "held for" current between messages.
                state['ticker'] = task.LoopingCall(draw)
                state['ticker'].start(1.0, now=False)
            return session.subscribe(on_message, topic)

        @comp.on_connectfailure
        def failed(comp_, err):
            state['error'] = f'cannot connect to {site.hub.data["wamp_server"]}: {_reason(err)}'

        @comp.on_disconnect
        def lost(session, was_clean):
            if not state['finished'] and not done.called:
                state['error'] = f'lost the connection to {site.hub.data["wamp_server"]}'
                done.callback(None)

        started = comp.start(reactor)

        def ended(result):
            if not done.called and not state['finished']:
                if isinstance(result, Exception) or hasattr(result, 'value'):
                    state['error'] = state['error'] or str(getattr(result, 'value', result))
                done.callback(None)
        started.addBoth(ended)
        return done

    try:
        task.react(lambda reactor: run(reactor))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    if state['error'] and not state['finished']:
        raise CliError(state['error'].splitlines()[0][:300])
    return 0


# -- site-wide leases -------------------------------------------------------------

HISTORY_KEYS = ('at', 'action', 'resource', 'owner', 'token', 'client', 'detail', 'ok')


def _client_id(command):
    return f'ocs-locks {command} ({getpass.getuser()}@{socket.gethostname()})'


def _registry_client(args, privs=None):
    from ocs.ocs_client import OCSClient
    site = _site(args)
    try:
        return OCSClient(args.registry, privs=privs, args=args)
    except Exception as e:
        raise CliError(f"cannot reach the lock registry '{args.registry}' at "
                       f"{site.hub.data.get('wamp_http')}: {_reason(e)[:200]}") from None


def _run_task(args, name, params, privs=None, wait=30.0):
    """Run a registry task; return (message, data) or raise CliError with the
    registry's (or ocs's) one-line refusal."""
    from .leases.reservation import call_task
    client = _registry_client(args, privs)
    ans = call_task(client, name, params, wait=wait)
    if not ans.ok:
        raise CliError(f'{name.replace("_", "-")} {params.get("resource") or ""}'.rstrip()
                       + f': {ans.message}')
    return ans.message, ans.data


def _check_resource(value):
    from .leases.paths import check_resource
    try:
        return check_resource(value)
    except ValueError as e:
        raise CliError(str(e)) from None


def _clock(t):
    return time.strftime('%H:%M:%S', time.localtime(t)) if isinstance(t, (int, float)) \
        else '?'


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_reserve(args):
    """Hold a Reservation until Ctrl-C (exit 0) or until it is lost (exit 1)."""
    from .leases.reservation import Reservation, ReservationError, RetryPolicy
    if not args.lease > 0:
        raise CliError(f'--lease must be > 0, not {args.lease:g}')
    if not args.timeout >= 0:
        raise CliError(f'--timeout must be >= 0, not {args.timeout:g}')
    for r in args.resources:
        _check_resource(r)
    if len(set(args.resources)) != len(args.resources):
        raise CliError('a RESOURCE is listed twice')
    owner = args.owner if args.owner is not None else \
        f'{getpass.getuser()}@{socket.gethostname()}'
    if not owner.strip():
        raise CliError('--owner must not be empty')
    _site(args)
    # The loss is reported below in one line; not also by the library's logger.
    quiet = logging.getLogger('ocs_locking.leases.reservation')
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    lost = threading.Event()
    res = Reservation(args.resources, owner, lease=args.lease, note=args.note,
                      tree=args.tree, registry=args.registry, args=args,
                      timeout=args.timeout, client_id=_client_id('reserve'),
                      retry=RetryPolicy(attempts=1, deadline=None),
                      on_lost=lambda reason: lost.set())
    # Ctrl-C and SIGTERM end the reservation (release, exit 0), also when
    # started in the background, where a shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        res.acquire()
    except ReservationError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        raise CliError('interrupted before the reservation was granted (a grant made '
                       'meanwhile ends with its lease)') from None
    try:
        tokens = ', '.join(f'{r}={t}' for r, t in sorted(res.tokens.items()))
        print(f'Reserved {", ".join(res.resources)} for {owner!r}: token(s) {tokens}; '
              f'expires {_clock(res.expires)} unless renewed (every {args.lease / 3:.3g} s); '
              'Ctrl-C releases.', flush=True)
        while not lost.wait(0.5):
            pass
        print(f'ocs-locks: lost the reservation of {", ".join(res.resources)}: {res.lost}',
              file=sys.stderr, flush=True)
        res.release()
        return 1
    except KeyboardInterrupt:
        message = res.release()
        print(message or f'Released {", ".join(res.resources)}.', flush=True)
        return 0
    finally:
        res.release()       # nothing left running (a no-op once released)


def cmd_release(args):
    _check_resource(args.resource)
    if args.token < 1:
        raise CliError(f'--token must be a positive integer, not {args.token}')
    message, _ = _run_task(args, 'release', {'resource': args.resource, 'token': args.token,
                                             'client': _client_id('release')})
    print(message)
    return 0


def cmd_force_release(args):
    _check_resource(args.resource)
    if not args.reason.strip():
        raise CliError('--reason must not be empty')
    password = args.password if args.password is not None else \
        os.environ.get('OCS_LOCKS_PASSWORD') or None
    message, data = _run_task(args, 'force_release',
                              {'resource': args.resource, 'reason': args.reason,
                               'client': _client_id('force-release')}, privs=password)
    print(message)
    return 0


def _detail_text(detail):
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for k, v in detail.items():
        if v in (None, '', {}, []) or k == 'request':
            continue
        if k == 'expires' and isinstance(v, (int, float)):
            v = _clock(v)
        parts.append(f'{k}={v}')
    return ' '.join(parts)


def format_history(rows):
    """The audit log as text: time, action, resource, owner, token, client, detail."""
    header = ('TIME', 'ACTION', 'RESOURCE', 'OWNER', 'TOKEN', 'CLIENT', 'DETAIL')
    lines = []
    for r in rows:
        at = r.get('at')
        # tenths are truncated, not rounded: 28.97 s is 28.9, never "28.0" (nor 29.0)
        when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at)) + \
            f'.{int(at % 1 * 10)}' if isinstance(at, (int, float)) else '?'
        lines.append((when, str(r.get('action', '?')), str(r.get('resource', '?')),
                      str(r.get('owner', '')), '-' if r.get('token') is None else
                      str(r['token']), str(r.get('client') or '-'),
                      _detail_text(r.get('detail'))))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths[:-1]) + '  {}'
    out = [fmt.format(*header).rstrip()] + [fmt.format(*line).rstrip() for line in lines]
    if not lines:
        out.append('(no audit records)')
    return '\n'.join(out)


def cmd_history(args):
    if not 1 <= args.limit <= 1000:
        raise CliError(f'--limit must be 1..1000, not {args.limit}')
    params = {'limit': args.limit}
    if args.resource is not None:
        params['resource'] = _check_resource(args.resource)
    _, data = _run_task(args, 'history', params)
    rows = data.get('history') or []
    if args.json:
        print(json.dumps([{k: r.get(k) for k in HISTORY_KEYS} for r in rows], indent=1))
    else:
        print(format_history(rows))
    return 0


COMMANDS = {'status': cmd_status, 'watch': cmd_watch, 'reserve': cmd_reserve,
            'release': cmd_release, 'force-release': cmd_force_release,
            'history': cmd_history}


def main(args=None):
    """Run ``ocs-locks`` with ``args`` (default: the command line); returns the
    exit status: 0 done, 1 failed (one line on stderr), 2 bad arguments."""
    parser = make_parser()
    opts = parser.parse_args(args)
    try:
        return COMMANDS[opts.command](opts)
    except CliError as e:
        print(f'ocs-locks: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == '__main__':
    sys.exit(main())
