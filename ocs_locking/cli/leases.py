"""``ocs-locks reserve | release | force-release | history | leases``: site-wide leases."""
import getpass
import json
import logging
import os
import socket
import sys
import threading
import time

from ..errors import CliError
from ..leases.paths import MAX_LEASE, MIN_LEASE
from .formatters import clock, format_history, history_rows
from .parser import parse_age, parse_at
from .signals import Interrupter
from .site import load_site, registry_client

__all__ = ['cmd_reserve', 'cmd_release', 'cmd_force_release', 'cmd_preempt', 'cmd_history',
           'cmd_leases',
           'read_lease_pages', 'format_leases', 'history_params', 'HISTORY_LIMIT']

#: Bounds of ``history --limit`` (the registry's too).
HISTORY_LIMIT = (1, 1000)


def _client_id(command):
    return f'ocs-locks {command} ({getpass.getuser()}@{socket.gethostname()})'


def _run_task(args, name, params, privs=None, wait=30.0, refusal=None):
    """Run a registry task; return (message, data) or raise CliError with the
    registry's (or ocs's) one-line refusal (``refusal(message)`` may reword it)."""
    from ..leases.reservation import call_task
    client = registry_client(args, privs)
    ans = call_task(client, name, params, wait=wait)
    if not ans.ok:
        message = refusal(ans.message) if refusal is not None else ans.message
        raise CliError(f'{name.replace("_", "-")} {params.get("resource") or ""}'.rstrip()
                       + f': {message}')
    return ans.message, ans.data


def _check_resource(value):
    from ..leases.paths import check_resource
    try:
        return check_resource(value)
    except ValueError as e:
        raise CliError(str(e)) from None


def _say(text, err=False):
    stream = sys.stderr if err else sys.stdout
    stream.write(text + '\n')
    stream.flush()


def cmd_reserve(args):
    """Hold a Reservation until Ctrl-C, SIGTERM or SIGHUP (release, exit 0),
    or until it is lost (exit 1)."""
    from ..leases.reservation import Reservation, ReservationError, RetryPolicy
    if getattr(args, 'booking', None) is not None:
        from .bookings import cmd_reserve_booking
        return cmd_reserve_booking(args)
    if not args.resources:
        raise CliError('give the RESOURCE(s) to reserve (or --booking ID --claim KEY)')
    if not MIN_LEASE <= args.lease <= MAX_LEASE:
        raise CliError(f'--lease must be {MIN_LEASE:g}..{MAX_LEASE:g} seconds, '
                       f'not {args.lease:g}')
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
    load_site(args)
    # The loss is reported below in one line; not also by the library's logger.
    quiet = logging.getLogger('ocs_locking.leases.reservation')
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    lost = threading.Event()
    try:
        res = Reservation(args.resources, owner, lease=args.lease, note=args.note,
                          tree=args.tree, registry=args.registry, args=args,
                          timeout=args.timeout, client_id=_client_id('reserve'),
                          retry=RetryPolicy(attempts=1, deadline=None),
                          on_lost=lambda reason: lost.set(),
                          on_preempt=lambda reason, deadline: _say(
                              f'preemption of {", ".join(args.resources)} asked: {reason}; '
                              f'revoked in {max(0.0, deadline - time.monotonic()):.1f} s '
                              'unless released (Ctrl-C releases)', err=True))
    except ValueError as e:         # LeaseError: an argument the registry's rules refuse
        raise CliError(str(e)) from None
    # Ctrl-C, SIGTERM (a supervisor) and SIGHUP (the terminal closed) end the
    # reservation: release, exit 0. Later signals do not cut the release short.
    Interrupter().install()
    names = ', '.join(args.resources)
    try:
        res.acquire()
    except ReservationError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        res.release()
        raise CliError('interrupted before the reservation was granted (a grant made '
                       'meanwhile ends with its lease)') from None
    try:
        tokens = ', '.join(f'{r}={t}' for r, t in sorted(res.tokens.items()))
        _say(f'Reserved {names} for {owner!r}: token(s) {tokens}; '
             f'expires {clock(res.expires)} unless renewed (every {args.lease / 3:.3g} s); '
             'Ctrl-C releases.')
        privs = getattr(res, 'grant_privs', None)
        if privs is not None:
            # The holder's credential on the agents the resources cover
            # (the registry as access director): shown to this terminal only.
            _say(f'privs: {privs}  (OCSClient(..., privs=...) reaches the covered '
                 f'agents while this reservation holds)')
        while not lost.wait(0.5):
            pass
        res.release()
        raise CliError(f'lost the reservation of {names}: {res.lost}')
    except KeyboardInterrupt:
        expires = res.expires
        if res.release() is None:
            raise CliError(f'could not release {names}: it ends with its lease '
                           f'(at {clock(expires)})') from None
        _say(f'Released {names}.')
        return 0
    finally:
        res.release()       # nothing left running (a no-op once released)


#: Where ``ocs-locks release`` finds the lease id when --lease-id is not given.
LEASE_ID_ENV = 'OCS_LOCKS_LEASE_ID'


def cmd_release(args):
    """Release a lease by its secret lease_id (given to its holder alone);
    without one, or with only a token, refused with a pointer to
    force-release (the token is public: anyone could end anyone's lease)."""
    from ..errors import LeaseError
    from ..leases.keys import check_lease_id
    _check_resource(args.resource)
    lease_id = args.lease_id if args.lease_id is not None else \
        os.environ.get(LEASE_ID_ENV) or None
    if lease_id is None:
        token = '' if getattr(args, 'token', None) is None else \
            ' (a token no longer releases a lease: tokens are public)'
        raise CliError(f'release {args.resource}: releasing needs the lease_id its holder '
                       f'was given{token}; pass --lease-id or set ${LEASE_ID_ENV}; to end '
                       f'someone else\'s lease: ocs-locks force-release {args.resource} '
                       f'--reason TEXT (credential level 2)')
    try:
        check_lease_id(lease_id.strip())
    except LeaseError as e:
        raise CliError(f'--lease-id: {e}') from None
    message, _ = _run_task(args, 'release', {'resource': args.resource,
                                             'lease_id': lease_id.strip(),
                                             'client': _client_id('release')})
    _say(message)
    return 0


def _password_file():
    path = os.environ.get('OCS_PASSWORDS_FILE') or os.path.expanduser('~/.ocs-passwords.yaml')
    return path if os.path.isfile(path) else None


def _level2(args, task):
    """``(password, refusal)`` for a level-2 registry task: the password
    from --password, $OCS_LOCKS_PASSWORD or the ocs password file, and a
    rewording of ocs's credential refusal saying which was wrong."""
    password = args.password if args.password is not None else \
        os.environ.get('OCS_LOCKS_PASSWORD') or None
    given = password is not None
    if password is None and _password_file():
        password = 2        # ocs finds the level-2 password in the password file

    def refusal(message):
        if 'requires credential level' not in message:
            return message
        if given:
            return (f"wrong password (the registry's {task} requires credential "
                    'level 2)')
        if password == 2:
            return (f'wrong password in {_password_file()} (the registry\'s {task} '
                    'requires credential level 2)')
        return (f"the registry's {task} requires credential level 2: pass "
                '--password or set $OCS_LOCKS_PASSWORD')
    return password, refusal


def cmd_preempt(args):
    """Ask the holder of a resource to give way within --grace seconds
    (revoked at the deadline otherwise); with --wait, until it has."""
    from ..leases.state import MAX_GRACE
    _check_resource(args.resource)
    if not args.reason.strip():
        raise CliError('--reason must not be empty')
    if not 0 <= args.grace <= MAX_GRACE:
        raise CliError(f'--grace must be 0..{MAX_GRACE:g} seconds, not {args.grace:g}')
    password, refusal = _level2(args, 'preempt')
    message, _ = _run_task(args, 'preempt',
                           {'resource': args.resource, 'reason': args.reason,
                            'grace': args.grace, 'wait': bool(args.wait),
                            'client': _client_id('preempt')}, privs=password,
                           refusal=refusal, wait=args.grace + 30.0)
    _say(message)
    return 0


def cmd_force_release(args):
    _check_resource(args.resource)
    if not args.reason.strip():
        raise CliError('--reason must not be empty')
    password, refusal = _level2(args, 'force_release')
    message, _ = _run_task(args, 'force_release',
                           {'resource': args.resource, 'reason': args.reason,
                            'client': _client_id('force-release')}, privs=password,
                           refusal=refusal)
    _say(message)
    return 0


def history_params(args):
    """The ``history`` task's params from the command line: only what the
    user gave (the registry's defaults stand for the rest). ``since`` is an
    age in seconds, never a time of this host's clock."""
    params = {}
    kind = getattr(args, 'kind', 'lease') or 'lease'
    if kind != 'lease':
        params['kind'] = kind           # an older registry knows leases only
    if args.action and kind == 'lock':
        raise CliError('--action filters the site leases\' audit only: give --kind lease '
                       'or all')
    if args.resource is not None:
        params['resource'] = _check_resource(args.resource)
    if args.owner is not None:
        if not args.owner.strip() or len(args.owner) > 128:
            raise CliError(f'--owner must be 1..128 characters, not {args.owner!r:.40}')
        params['owner'] = args.owner
    if args.action:
        from ..leases.state import ACTIONS
        for a in args.action:
            if a not in ACTIONS:
                raise CliError(f'--action must be one of {", ".join(ACTIONS)}, not {a!r:.40}')
        actions = list(dict.fromkeys(args.action))
        params['action'] = actions[0] if len(actions) == 1 else actions
    if args.since is not None:
        params['since'] = parse_age(args.since)
    if getattr(args, 'at', None) is not None:
        params['at'] = round(parse_at(args.at), 3)
    if args.limit is not None:
        low, high = HISTORY_LIMIT
        if not low <= args.limit <= high:
            raise CliError(f'--limit must be {low}..{high}, not {args.limit}')
        params['limit'] = args.limit
    return params


def _history_refusal(message):
    if 'params included unexpected values' in message:
        return (f'this registry cannot filter its history that way ({message}); '
                'it needs a newer lock registry (or give --kind lease)')
    return message


def cmd_history(args):
    params = history_params(args)
    _, data = _run_task(args, 'history', params, refusal=_history_refusal)
    rows = [r for r in data.get('history') or [] if isinstance(r, dict)]
    _say(json.dumps(history_rows(rows), indent=1) if args.json
         else format_history(rows, getattr(args, 'kind', 'lease') or 'lease'))
    return 0


#: The most ``leases`` pages one command reads (the tables can change while
#: they are read: pages are read until ``total`` rows came or a page is empty).
MAX_LEASE_PAGES = 10000


def read_lease_pages(call, most_pages=MAX_LEASE_PAGES):
    """Every grant, waiting request and token counter from the registry's
    ``leases`` pages: ``call(offset)`` returns one page's session.data
    (``grants``, ``waiting``, ``counters``, ``total``). Returns the first
    page's data with ``grants``, ``waiting`` and ``counters`` whole. A
    registry without pages (no ``total``) answers all in its first reply."""
    out, offset = None, 0
    for _ in range(most_pages):
        data = call(offset) or {}
        if out is None:
            out = dict(data, grants=[], waiting=[], counters={})
        grants = [r for r in data.get('grants') or [] if isinstance(r, dict)]
        waiting = [r for r in data.get('waiting') or [] if isinstance(r, dict)]
        counters = data.get('counters') if isinstance(data.get('counters'), dict) else {}
        out['grants'] += grants
        out['waiting'] += waiting
        out['counters'].update(counters)
        n = len(grants) + len(waiting) + len(counters)
        offset += n
        total = data.get('total')
        if n == 0 or not isinstance(total, int) or offset >= total:
            break
    return out


def format_leases(data):
    """The grants, one line each (resource, owner, token, granted, until,
    time left, queue, note), then the waiting requests in queue order: the
    same lines as below ``ocs-locks status`` (:func:`.formatters.format_site_leases`)."""
    from .formatters import format_site_leases
    lines = format_site_leases(data)
    return '\n'.join(lines) if lines else '(no leases)'


def cmd_leases(args):
    """Print every lease and waiting request, reading every page of the
    registry's ``leases`` task."""
    def page(offset):
        # the first page without params: a registry without pages answers it
        _, data = _run_task(args, 'leases', {'offset': offset} if offset else {})
        return data
    data = read_lease_pages(page)
    if args.json:
        _say(json.dumps({k: data[k] for k in ('grants', 'waiting', 'counters')}, indent=1))
    else:
        _say(format_leases(data))
    return 0
