"""The ``ocs-locks`` command line: subcommands, site options, ages.

Site options (``--site-file``, ``--site-host``, ``--registry``...) are
accepted before the subcommand and after it. Only the options a client
needs are offered; the agent-only options of ocs's ``site_config`` parser
(``--instance-id``, ``--log-dir``, ``--crossbar-timeout``, ``--access-policy``...)
are not listed, and get the defaults ocs expects.
"""
import argparse
import math
import re
import sys
import time

from ..errors import CliError

__all__ = ['make_parser', 'parse_age', 'DEFAULT_REGISTRY', 'MAX_AGE']

DEFAULT_REGISTRY = 'lock-registry'

#: The longest ``history --since`` age, in seconds (a year).
MAX_AGE = 366 * 86400.0

#: (option, attribute, help) of every site option; attributes as ocs's
#: ``site_config.get_config`` reads them.
SITE_OPTIONS = (
    ('--site', 'site', 'use $OCS_CONFIG_DIR/SITE.yaml (default: default.yaml there)'),
    ('--site-file', 'site_file', 'use this site config file'),
    ('--site-host', 'site_host', 'the host entry of the site config to use '
                                 '(default: this host\'s name, then localhost)'),
    ('--site-hub', 'site_hub', 'override the router\'s WebSocket URL (wamp_server)'),
    ('--site-http', 'site_http', 'override the router\'s HTTP URL (wamp_http)'),
    ('--site-realm', 'site_realm', 'override the WAMP realm (wamp_realm)'),
    ('--address-root', 'address_root', 'override the address root (observatory)'),
)

#: Attributes ocs's site_config reads that only agents set.
AGENT_ONLY = ('instance_id', 'registry_address', 'log_dir', 'working_dir',
              'crossbar_timeout', 'access_policy')

_AGE = re.compile(r'^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$')
_UNIT = {'': 1.0, 's': 1.0, 'm': 60.0, 'h': 3600.0, 'd': 86400.0}


def parse_age(text, option='--since'):
    """Seconds from an age such as ``90``, ``30s``, ``10m``, ``2h`` or ``1d``.

    Raises CliError naming ``option`` for anything else, and for an age of
    zero or more than :data:`MAX_AGE`.
    """
    m = _AGE.match(text) if isinstance(text, str) else None
    if m is None:
        raise CliError(f'{option} must be an age like 90, 30s, 10m, 2h or 1d, '
                       f'not {text!r:.40}')
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_AGE):
        raise CliError(f'{option} must be more than 0 and at most 366d, not {text.strip()!r}')
    return seconds


_CLOCK = re.compile(r'^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$')


def parse_at(text, now=None):
    """Seconds ago from ``--at``: a time of day on this host's clock
    (``03:12``, ``03:12:30``: the latest such time, today or yesterday) or
    an age (``90``, ``10m``, ``2h``: that long ago). The registry counts
    the age back on its own clock (the hosts' clocks differ by their skew
    at most). Raises CliError for anything else."""
    m = _CLOCK.match(text) if isinstance(text, str) else None
    if m is None:
        try:
            return parse_age(text, '--at')
        except CliError:
            raise CliError(f'--at must be a time of day like 03:12 or 03:12:30, or an age '
                           f'like 90, 10m or 2h, not {text!r:.40}') from None
    h, mi, sec = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h > 23 or mi > 59 or sec > 59:
        raise CliError(f'--at must be a time of day like 03:12 (00:00..23:59:59), '
                       f'not {text.strip()!r}')
    now = time.time() if now is None else now
    local = time.localtime(now)
    then = time.mktime((local.tm_year, local.tm_mon, local.tm_mday, h, mi, sec, 0, 0, -1))
    if then > now:                  # later today: yesterday's
        day = time.localtime(now - 86400)
        then = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, h, mi, sec, 0, 0, -1))
    return max(0.0, now - then)


def _add_site_options(parser, top):
    """The site options; on a subcommand they default to SUPPRESS so they
    do not overwrite what was given before the subcommand."""
    group = parser.add_argument_group('site options (before or after the command)')
    extra = {} if top else {'default': argparse.SUPPRESS}
    for option, dest, text in SITE_OPTIONS:
        group.add_argument(option, dest=dest, metavar=dest.split('_')[-1].upper(),
                           help=text, **extra)
    group.add_argument('--registry', dest='registry', metavar='INSTANCE_ID',
                       help=f'instance-id of the LockRegistryAgent (default {DEFAULT_REGISTRY})',
                       **({'default': DEFAULT_REGISTRY} if top else extra))


def one_line_errors(parser, prog):
    """Make ``parser`` report a usage error in one line on stderr (exit 2)."""
    def error(message):
        sys.stderr.write(f'{prog}: {message} (see {prog} --help)\n')
        sys.exit(2)
    parser.error = error
    return parser


def make_parser():
    """The ``ocs-locks`` parser (agent-only ocs options are neither listed
    nor accepted; their attributes are None, as ocs expects)."""
    parser = argparse.ArgumentParser(
        prog='ocs-locks', description='Who holds which lock, site-wide.',
        epilog='Every failure is one line on stderr and exit status 1 '
               '(2 for bad arguments).')
    _add_site_options(parser, top=True)
    parser.set_defaults(**{a: None for a in AGENT_ONLY})
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')

    def command(name, text):
        p = sub.add_parser(name, help=text, description=text)
        _add_site_options(p, top=False)
        return p

    st = command('status', 'print the lock table')
    st.add_argument('--json', action='store_true', help='print a JSON list of rows')
    st.add_argument('--waiters', action='store_true',
                    help='under each lock with waiters, list who waits, in order')
    w = command('watch', 'keep a live table on screen (Ctrl-C ends it)')
    w.add_argument('--count', type=int, default=None,
                   help='exit after this many updates (default: until Ctrl-C)')
    w.add_argument('--no-clear', action='store_true',
                   help='print each table below the last instead of redrawing')
    w.add_argument('--header', default=None,
                   help='a line to show above the table (e.g. how to stop a demo)')
    r = command('reserve', 'reserve resources site-wide until Ctrl-C (or SIGTERM, SIGHUP)')
    r.add_argument('resources', nargs='*', metavar='RESOURCE',
                   help="resource path(s), e.g. satp1/hwp (several: all or nothing)")
    r.add_argument('--booking', type=int, default=None, metavar='ID',
                   help="hold booking ID's lease from its start to its end, instead "
                        '(with --claim)')
    r.add_argument('--claim', default=None, metavar='KEY',
                   help='the claim key book printed (default: $OCS_LOCKS_CLAIM)')
    r.add_argument('--lease', type=float, default=30.0,
                   help='lease in seconds, renewed every lease/3 (default 30)')
    r.add_argument('--note', default='', help='why (shown to others, kept in the audit log)')
    r.add_argument('--tree', action='store_true',
                   help='also exclude everything below the path(s)')
    r.add_argument('--timeout', type=float, default=0.0,
                   help="seconds to wait in the registry's queue if busy (default 0)")
    r.add_argument('--owner', default=None, help='owner name (default: user@host)')
    run = command('run', 'hold a lease exactly while a command runs (exit status: the '
                         "command's; 75 busy, 124 lease lost, 125 run failed, 126/127 "
                         'command not executable / not found)')
    run.usage = ('ocs-locks run RESOURCE... [--lease S] [--note TEXT] [--timeout S] [--tree] '
                 '[--owner NAME] [--kill-after S] [--preempt-signal SIG] -- COMMAND [ARGS...]')
    run.add_argument('resources', nargs='+', metavar='RESOURCE',
                     help='resource path(s), e.g. satp1/hwp (several: all or nothing)')
    run.add_argument('--lease', type=float, default=30.0,
                     help='lease in seconds, renewed every lease/3 while the command runs '
                          '(default 30)')
    run.add_argument('--note', default='', help='why (shown to others, kept in the audit log)')
    run.add_argument('--tree', action='store_true',
                     help='also exclude everything below the path(s)')
    run.add_argument('--timeout', type=float, default=0.0,
                     help="seconds to wait in the registry's queue if busy (default 0; "
                          'still busy: exit 75)')
    run.add_argument('--owner', default=None, help='owner name (default: user@host)')
    run.add_argument('--kill-after', type=float, default=10.0, metavar='S',
                     help='after a lost lease: SIGTERM to the command, SIGKILL after S '
                          'seconds (default 10)')
    run.add_argument('--preempt-signal', default=None, metavar='SIG',
                     help='the signal to send the command when a preemption notice comes '
                          '(default: none)')
    run.set_defaults(argv=None)
    one_line_errors(run, 'ocs-locks run')
    rel = command('release', 'release a lease you hold, by its secret lease id')
    rel.add_argument('resource', metavar='RESOURCE')
    rel.add_argument('--lease-id', default=None,
                     help='the lease_id the registry gave the holder (default: '
                          '$OCS_LOCKS_LEASE_ID); someone else\'s lease: force-release')
    rel.add_argument('--token', type=int, default=None, help=argparse.SUPPRESS)
    fr = command('force-release', "revoke whoever holds a resource (needs the registry's "
                                  'level-2 password)')
    fr.add_argument('resource', metavar='RESOURCE')
    fr.add_argument('--reason', required=True, help='why (kept in the audit log)')
    fr.add_argument('--password', default=None,
                    help='the level-2 password (default: $OCS_LOCKS_PASSWORD, then the '
                         'ocs password file, ~/.ocs-passwords.yaml or $OCS_PASSWORDS_FILE)')
    pr = command('preempt', 'ask whoever holds a resource to give way within --grace '
                            "seconds, revoked then if not released (needs the registry's "
                            'level-2 password)')
    pr.add_argument('resource', metavar='RESOURCE')
    pr.add_argument('--reason', required=True, help='why (the holder is told; audited)')
    pr.add_argument('--grace', type=float, required=True, metavar='S',
                    help='seconds the holder has to release (0..3600)')
    pr.add_argument('--wait', action='store_true',
                    help='wait until the holder gave way (released, or revoked at the '
                         'deadline) and say which')
    pr.add_argument('--password', default=None,
                    help='the level-2 password (default: $OCS_LOCKS_PASSWORD, then the '
                         'ocs password file, ~/.ocs-passwords.yaml or $OCS_PASSWORDS_FILE)')
    h = command('history', "print who had what, newest first: agent locks' holds (spans) "
                           "and the site leases' audit log")
    h.add_argument('resource', nargs='?', default=None, metavar='LOCK|RESOURCE',
                   help='only this lock (sim-device-1/hw) or agent (each of its locks), '
                        'and this resource and what lies below it')
    h.add_argument('--kind', choices=('all', 'lock', 'lease'), default='all',
                   help='lock: spans of agent locks; lease: the site leases\' audit log; '
                        'all (default): both')
    h.add_argument('--owner', default=None,
                   help='only rows of this lease owner, and spans of this job')
    h.add_argument('--action', action='append', default=None, metavar='ACTION',
                   help='only this audit action (grant, queue, renew, release, '
                        'force_release, expire, timeout, cancel, preempt, notice); repeat '
                        'for several')
    h.add_argument('--since', default=None, metavar='AGE',
                   help='only rows younger than AGE: 90 (seconds), 30s, 10m, 2h, 1d')
    h.add_argument('--at', default=None, metavar='TIME',
                   help='as it was then: the spans open at TIME and the audit rows up to '
                        'it; TIME is a time of day (03:12, the latest) or an age (2h)')
    h.add_argument('--limit', type=int, default=None,
                   help='at most this many rows, 1..1000 (default 20)')
    h.add_argument('--json', action='store_true', help='print a JSON list of rows')
    wy = command('why', 'say why a lock or resource is busy: its holder, what the holder '
                        'waits for, who waits')
    wy.add_argument('target', metavar='LOCK|RESOURCE',
                    help='a lock (sim-device-1/hw), an agent (each of its locks) or a '
                         'site resource (demo/hwp)')
    wy.add_argument('--json', action='store_true', help='print the whole answer as JSON')
    ls = command('leases', 'print the site-wide leases and waiting requests (every page)')
    ls.add_argument('--json', action='store_true',
                    help='print JSON: grants, waiting and token counters')
    rs = command('resources', 'print the resources the site declares (from the registry, '
                              'or --file)')
    rs.add_argument('--json', action='store_true',
                    help='print JSON: adhoc, source and every resource')
    rs.add_argument('--file', default=None, metavar='FILE',
                    help='read and check this resources file instead of asking the registry '
                         '(against the agents of --site-file, when given)')
    from .bookings import add_commands
    add_commands(command)           # book, unbook, calendar, next-free
    cb = command('crossbar-config', 'rewrite a crossbar config to run the bus component '
                                    'and serve the live page (--address-root default '
                                    'observatory, --registry)')
    cb.add_argument('input', metavar='IN.json', help="crossbar config to read (e.g. ocs's)")
    cb.add_argument('output', metavar='OUT.json', help='where to write the result')
    cb.add_argument('--realm', default=None,
                    help='the realm to secure (default: the only one in the config)')
    cb.add_argument('--pythonpath', default=None, metavar='DIR',
                    help="add DIR (holding ocs_locking/) to the router worker's python "
                         "path, instead of installing ocs-locking in crossbar's environment")
    cb.add_argument('--standby', action='append', default=[], metavar='INSTANCE_ID',
                    help='a standby registry (--standby-for) the router lets follow the '
                         "registry's lease database; repeat for several "
                         '(docs/standby.rst)')
    page = cb.add_mutually_exclusive_group()
    page.add_argument('--page', default='locks', metavar='PATH',
                      help='serve the live page at /PATH/ on the websocket\'s web transport '
                           '(default locks)')
    page.add_argument('--no-page', dest='page', action='store_const', const=None,
                      help='do not serve the live page')
    return parser
