"""``ocs-locks book | unbook | calendar | next-free``: booked reservations.

Times (``--start``, ``--end``, ``--after``):

* ISO-8601, UTC unless it says otherwise: ``2025-03-01T02:00``,
  ``2025-03-01 02:00:00Z``, ``2025-03-01T03:00+01:00``;
* ``HH:MM`` or ``HH:MM:SS`` UTC: the next such time (today, else tomorrow);
* ``now``, or ``+30m`` / ``+90`` / ``+2h`` / ``+1d``: from now, counted on
  the **registry's** clock (sent as seconds-from-now: this host's clock is
  not compared with the registry's);
* ``--end +1h``: one hour after the start (a length).

Printed in UTC; ``--local`` prints this host's local time instead. Every
bad argument is one line naming it (exit 2) and nothing is booked.
"""
import datetime as dt
import getpass
import json
import os
import re
import socket
import sys
import time

from ..errors import CliError
from .parser import parse_age

__all__ = ['add_commands', 'cmd_reserve_booking', 'cmd_book', 'cmd_unbook', 'cmd_calendar', 'cmd_next_free',
           'parse_when', 'format_calendar', 'COMMANDS']

_CLOCK = re.compile(r'^(\d{1,2}):(\d{2})(?::(\d{2}))?$')


class BadArgument(CliError):
    """A bad command-line value: exit status 2."""
    status = 2


def parse_when(text, option, now=None):
    """``('at', t)`` (an instant, UTC seconds) or ``('in', s)`` (seconds from
    now, or after the start for ``--end +D``) from a time argument; raises
    BadArgument naming ``option``."""
    if not isinstance(text, str) or not text.strip():
        raise BadArgument(f'{option} must be a time, not {text!r:.40}')
    t = text.strip()
    if t == 'now':
        return ('in', 0.0)
    if t.startswith('+'):
        try:
            return ('in', parse_age(t[1:], option))
        except CliError:
            raise BadArgument(f'{option} must be a time (2025-03-01T02:00, 02:00 UTC, now) '
                              f'or +AGE (+90, +30m, +2h, +1d), not {t!r:.40}') from None
    m = _CLOCK.match(t)
    now = time.time() if now is None else now
    if m:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if h > 23 or mi > 59 or s > 59:
            raise BadArgument(f'{option} must be a time of day 00:00..23:59:59 (UTC), '
                              f'not {t!r}')
        day = dt.datetime.fromtimestamp(now, dt.timezone.utc).replace(
            hour=h, minute=mi, second=s, microsecond=0)
        if day.timestamp() <= now:
            day += dt.timedelta(days=1)
        return ('at', day.timestamp())
    try:
        when = dt.datetime.fromisoformat(t.replace('Z', '+00:00').replace('z', '+00:00'))
    except ValueError:
        raise BadArgument(f'{option} must be a time (2025-03-01T02:00 UTC, 02:00, now) or '
                          f'+AGE (+30m), not {t!r:.40}') from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return ('at', when.timestamp())


def show(t, local=False):
    """``2025-03-01 02:00:00 UTC`` (or local time with its zone)."""
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return '?'
    if local:
        return time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(t))
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t))


def add_commands(command):
    """The booking subcommands (``command(name, help)`` makes one)."""
    b = command('book', 'book resource(s) for a future window (refused if it overlaps '
                        'another booking); prints the booking id and its claim key, once')
    b.add_argument('resources', nargs='+', metavar='RESOURCE')
    b.add_argument('--start', required=True, metavar='T',
                   help='when it starts: 2025-03-01T02:00 (UTC), 02:00 (UTC, next), now, +30m')
    b.add_argument('--end', required=True, metavar='T',
                   help='when it ends: a time as --start, or +1h (after the start)')
    b.add_argument('--note', default='', help='why (shown on the calendar, audited)')
    b.add_argument('--tree', action='store_true', help='also everything below the path(s)')
    b.add_argument('--owner', default=None, help='owner name (default: user@host)')
    b.add_argument('--local', action='store_true', help='print times in local time')
    b.add_argument('--json', action='store_true', help='print the booking as JSON')
    u = command('unbook', 'cancel a booking, with its claim key (or the level-2 password)')
    u.add_argument('booking', type=int, metavar='ID')
    u.add_argument('--claim', default=None,
                   help='the claim key book printed (default: $OCS_LOCKS_CLAIM)')
    u.add_argument('--password', default=None,
                   help="cancel anyone's booking: the registry's level-2 password")
    u.add_argument('--reason', default='', help='why (audited)')
    c = command('calendar', 'print the bookings, by start')
    c.add_argument('resource', nargs='?', default=None, metavar='RESOURCE',
                   help='only bookings on it, below it, or tree bookings above it')
    c.add_argument('--done', action='store_true', help='also the finished ones remembered')
    c.add_argument('--local', action='store_true', help='print times in local time')
    c.add_argument('--json', action='store_true', help='print a JSON list of bookings')
    n = command('next-free', 'print the next window no booking on the resource(s) overlaps')
    n.add_argument('resources', nargs='+', metavar='RESOURCE')
    n.add_argument('--length', required=True, metavar='S',
                   help='how long: 3600, 90m, 2h')
    n.add_argument('--after', default=None, metavar='T', help='not before (default now)')
    n.add_argument('--tree', action='store_true', help='as a tree booking would be')
    n.add_argument('--local', action='store_true', help='print times in local time')
    n.add_argument('--json', action='store_true', help='print JSON: start, end, starts_in')


def _calendar(args):
    from ..leases.booked import Calendar
    from .site import registry_client
    return Calendar(args.registry, client=registry_client(args),
                    client_id=f'ocs-locks ({getpass.getuser()}@{socket.gethostname()})')


def _check_resources(values):
    from ..leases.paths import check_resource
    for v in values:
        try:
            check_resource(v)
        except ValueError as e:
            raise BadArgument(str(e)) from None
    if len(set(values)) != len(values):
        raise BadArgument('a RESOURCE is listed twice')


def _window(args, now=None):
    """The book params for --start/--end (start/start_in, end/end_in)."""
    kind, start = parse_when(args.start, '--start', now)
    end_raw = args.end.strip() if isinstance(args.end, str) else args.end
    if isinstance(end_raw, str) and end_raw.startswith('+'):
        length = parse_when(end_raw, '--end', now)[1]
        end = ('in', start + length) if kind == 'in' else ('at', start + length)
    else:
        end = parse_when(end_raw, '--end', now)
    params = {'start_in' if kind == 'in' else 'start': start,
              'end_in' if end[0] == 'in' else 'end': end[1]}
    if kind == end[0] and end[1] <= start:
        raise BadArgument(f'--end ({args.end}) must be after --start ({args.start})')
    return params


def _say(text):
    sys.stdout.write(text + '\n')
    sys.stdout.flush()


def cmd_book(args):
    """Book; print the id and the claim key (once)."""
    from ..errors import ReservationError
    _check_resources(args.resources)
    params = _window(args)
    owner = args.owner if args.owner is not None else \
        f'{getpass.getuser()}@{socket.gethostname()}'
    if not owner.strip():
        raise BadArgument('--owner must not be empty')
    resource = args.resources[0] if len(args.resources) == 1 else args.resources
    try:
        b = _calendar(args).book(resource, owner, tree=args.tree, note=args.note, **params)
    except ReservationError as e:
        raise CliError(str(e)) from None
    if args.json:
        _say(json.dumps(b, indent=1, sort_keys=True))
        return 0
    _say(f"Booked {', '.join(b['resources'])} for {b['owner']!r} from "
         f"{show(b['start'], args.local)} to {show(b['end'], args.local)}: booking "
         f"{b['booking_id']}.")
    _say(f"Claim key (shown once; it is the lease_id of the booked lease): {b['claim']}")
    _say(f"  ocs-locks reserve --booking {b['booking_id']} --claim KEY   # hold it then")
    return 0


def cmd_unbook(args):
    from ..errors import ReservationError
    from .leases import _level2, _run_task
    if args.booking < 1:
        raise BadArgument(f'ID must be a booking id >= 1, not {args.booking}')
    if args.password is not None:
        password, refusal = _level2(args, 'unbook')
        message, _ = _run_task(args, 'unbook', {'booking': args.booking,
                                                'reason': args.reason,
                                                'client': 'ocs-locks unbook'},
                               privs=password, refusal=refusal)
        _say(message)
        return 0
    claim = args.claim if args.claim is not None else os.environ.get('OCS_LOCKS_CLAIM')
    if not claim:
        raise BadArgument('give --claim KEY (the key book printed) or set $OCS_LOCKS_CLAIM; '
                          "someone else's booking: --password")
    try:
        data = _calendar(args).unbook(args.booking, claim)
    except ReservationError as e:
        raise CliError(str(e)) from None
    b = data['booking']
    _say(f"Cancelled booking {b['booking_id']} ({', '.join(b['resources'])} from "
         f"{show(b['start'])} to {show(b['end'])}).")
    return 0


def format_calendar(rows, local=False):
    """The bookings as a table: ID, RESOURCES, OWNER, START, END, STATE, NOTE."""
    if not rows:
        return '(no bookings)'
    head = ('ID', 'RESOURCES', 'OWNER', 'START', 'END', 'STATE', 'NOTE')
    table = [head] + [(str(b.get('booking_id')),
                       ', '.join(b.get('resources') or []) + (' (tree)' if b.get('tree') else ''),
                       str(b.get('owner'))[:40], show(b.get('start'), local),
                       show(b.get('end'), local),
                       b.get('state') if b.get('state') != 'done' else b.get('outcome'),
                       ' '.join(str(b.get('note') or '').split())[:60]) for b in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def cmd_calendar(args):
    from ..errors import ReservationError
    if args.resource is not None:
        _check_resources([args.resource])
    try:
        rows = _calendar(args).bookings(args.resource, args.done)
    except ReservationError as e:
        raise CliError(str(e)) from None
    _say(json.dumps(rows, indent=1, sort_keys=True) if args.json
         else format_calendar(rows, args.local))
    return 0


def cmd_next_free(args):
    from ..errors import ReservationError
    _check_resources(args.resources)
    try:
        length = parse_age(args.length, '--length')
    except CliError as e:
        raise BadArgument(str(e)) from None
    params = {}
    if args.after is not None:
        kind, value = parse_when(args.after, '--after')
        params = {'after_in' if kind == 'in' else 'after': value}
    resource = args.resources[0] if len(args.resources) == 1 else args.resources
    try:
        data = _calendar(args).next_free(resource, length, tree=args.tree, **params)
    except ReservationError as e:
        raise CliError(str(e)) from None
    if args.json:
        _say(json.dumps(data, sort_keys=True))
    elif data['start'] is None:
        _say(f"No free {length:g} s window on {', '.join(args.resources)} within 30 days.")
    else:
        _say(f"{', '.join(args.resources)}: free from {show(data['start'], args.local)} to "
             f"{show(data['end'], args.local)}.")
    return 0


COMMANDS = {'book': cmd_book, 'unbook': cmd_unbook, 'calendar': cmd_calendar,
            'next-free': cmd_next_free}


def cmd_reserve_booking(args):
    """``ocs-locks reserve --booking ID --claim KEY``: wait for the
    booking's start, hold its lease until its end (no renewals; the end's
    warning is printed), or Ctrl-C (released at once: the booking is over)."""
    import threading
    from ..errors import ReservationError
    from ..leases.reservation import Reservation
    from .signals import Interrupter
    from .site import load_site
    if args.resources:
        raise BadArgument('give RESOURCE(s) or --booking, not both (a booking names its own)')
    claim = args.claim if args.claim is not None else os.environ.get('OCS_LOCKS_CLAIM')
    if not claim:
        raise BadArgument('--booking needs --claim KEY (the key book printed) or '
                          '$OCS_LOCKS_CLAIM')
    load_site(args)
    from .site import registry_client
    lost = threading.Event()
    try:
        res = Reservation.booked(args.booking, claim.strip(), registry=args.registry,
                                 client=registry_client(args),
                                 client_id=f'ocs-locks reserve ({getpass.getuser()}@'
                                           f'{socket.gethostname()})',
                                 on_lost=lambda reason: lost.set(),
                                 on_preempt=lambda reason, deadline: sys.stderr.write(
                                     f'notice: {reason}\n'))
    except (ReservationError, ValueError) as e:
        raise CliError(str(e)) from None
    Interrupter().install()
    names = ', '.join(res.resources)
    try:
        _say(f'Waiting for booking {args.booking} ({names}) to start; Ctrl-C gives up.')
        res.acquire()
    except ReservationError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        raise CliError('interrupted before the booking started (it stays booked)') from None
    try:
        tokens = ', '.join(f'{r}={t}' for r, t in sorted(res.tokens.items()))
        _say(f'Holding {names} (booking {args.booking}): token(s) {tokens}; until '
             f'{show(res.expires)}; Ctrl-C releases.')
        while not lost.wait(0.5):
            pass
        _say(f'Booking {args.booking} is over: {res.lost}')
        return 0
    except KeyboardInterrupt:
        res.release()
        _say(f'Released {names} (booking {args.booking}).')
        return 0
    finally:
        res.release()
