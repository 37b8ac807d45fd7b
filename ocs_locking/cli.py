"""``ocs-locks``: the site's lock table for people::

    ocs-locks status            # the table, from the registry over HTTP
    ocs-locks status --json     # the same as a JSON list of rows
    ocs-locks watch             # a live table from the registry's ownership feed (WAMP)

It reads the site config like other ocs tools (``--site-file``,
``--site-host``, ``$OCS_CONFIG_DIR``...). Every failure is one line on
stderr and exit status 1 (2 for bad arguments).
"""
import argparse
import json
import sys
import time

from ocs import site_config

from .wamp import set_nodelay

__all__ = ['main', 'make_parser', 'format_table', 'json_rows']

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
    """A short reason from an exception (ocs's ControlClientError packs a
    WAMP error list: [..., error_uri, [text, ...], {}])."""
    arg = exc.args[0] if exc.args else None
    if isinstance(arg, list) and len(arg) >= 6 and isinstance(arg[5], list) and arg[5]:
        uri = arg[4]
        if uri == 'wamp.error.no_such_procedure':
            return 'it is not running (no such agent on the router)'
        return str(arg[5][0])
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


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
    topic = f"{site.hub.data['address_root']}.{args.registry}.feeds.ownership"
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


def main(args=None):
    """Run ``ocs-locks`` with ``args`` (default: the command line); returns the
    exit status: 0 done, 1 failed (one line on stderr), 2 bad arguments."""
    parser = make_parser()
    opts = parser.parse_args(args)
    try:
        if opts.command == 'status':
            return cmd_status(opts)
        return cmd_watch(opts)
    except CliError as e:
        print(f'ocs-locks: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == '__main__':
    sys.exit(main())
