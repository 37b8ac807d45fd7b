"""``ocs-locks``: the site's lock table for people::

    ocs-locks status            # the table, from the registry over HTTP
    ocs-locks status --json     # the same as a JSON list of rows
    ocs-locks watch             # a live table from the registry's ownership feed (WAMP)
    ocs-locks reserve satp1/hwp --lease 30 --note "manual work"   # hold until Ctrl-C
    ocs-locks release satp1/hwp --token 7
    ocs-locks force-release satp1/hwp --reason "stuck schedule" --password PW
    ocs-locks history [sim-device-1/hw|satp1/hwp] [--kind all|lock|lease] [--owner NAME] [--action ACTION] [--since 10m]
                      [--limit 20] [--json]
    ocs-locks resources [--json] [--file FILE]   # the declared resources
    ocs-locks run satp1/hwp --lease 30 -- ./calibrate.sh   # hold it while a command runs
    ocs-locks book satp1/hwp --start 02:00 --end +1h --note "HWP calibration"
    ocs-locks calendar [satp1/hwp] [--local] [--json]    # the bookings
    ocs-locks next-free satp1/hwp satp1/mount --length 1h   # for schedules
    ocs-locks unbook 7 --claim KEY
    ocs-locks reserve --booking 7 --claim KEY    # hold a booking's lease from its start
    ocs-locks crossbar-config IN.json OUT.json   # the bus component, the page (no network)

It reads the site config like other ocs tools (``--site-file``,
``--site-host``, ``$OCS_CONFIG_DIR``...), before or after the command.
Every failure is one line on stderr and exit status 1 (2 for bad
arguments; ``run`` has its own exit statuses, see :mod:`.run`); a closed
stdout (``| head``) ends a command quietly.

The package: :mod:`.parser` (the command line), :mod:`.site` (site config
and registry name checks), :mod:`.formatters` (text and JSON), :mod:`.status`,
:mod:`.watch`, :mod:`.leases`, :mod:`.resources`, :mod:`.run`, :mod:`.crossbar` (the commands),
:mod:`.signals`.
"""
import errno
import os
import sys

from ..errors import CliError
from .bookings import COMMANDS as BOOKING_COMMANDS
from .crossbar import cmd_crossbar_config
from .formatters import HISTORY_KEYS, JSON_KEYS, format_history, format_table, json_rows
from .leases import (cmd_force_release, cmd_history, cmd_leases, cmd_preempt, cmd_release,
                     cmd_reserve)
from .parser import make_parser, parse_age
from .resources import cmd_resources
from . import run
from .run import cmd_run
from .site import check_registry_name
from .status import cmd_status, fetch_rows
from . import watch
from .watch import cmd_watch
from .why import cmd_why

__all__ = ['main', 'make_parser', 'format_table', 'json_rows', 'format_history',
           'CliError', 'JSON_KEYS', 'HISTORY_KEYS', 'COMMANDS', 'fetch_rows', 'parse_age']

COMMANDS = {'status': cmd_status, 'watch': cmd_watch, 'reserve': cmd_reserve,
            'release': cmd_release, 'force-release': cmd_force_release, 'preempt': cmd_preempt,
            'history': cmd_history, 'leases': cmd_leases, 'resources': cmd_resources,
            'crossbar-config': cmd_crossbar_config, 'run': cmd_run,
            'why': cmd_why}
COMMANDS.update(BOOKING_COMMANDS)

#: The exit status of a CliError, by command (default 1).
FAILED = {'run': run.RUN_FAILED}


def _stdout_gone():
    """After EPIPE on stdout: point it at /dev/null so that the interpreter's
    final flush does not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _run(opts):
    try:
        check_registry_name(opts.registry)      # before anything reaches the network
        return COMMANDS[opts.command](opts)
    except CliError as e:
        try:
            print(f'ocs-locks: {e}', file=sys.stderr, flush=True)
        except OSError:
            pass
        return getattr(e, 'status', None) or FAILED.get(opts.command, 1)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:     # | head: the reader has all it wanted
        _stdout_gone()
        return 0
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        _stdout_gone()          # the terminal went away (SIGHUP): nobody to tell
        return 0


def _exit_now(status):
    """End the process without the interpreter's teardown (see :mod:`.watch`)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def parse_args(argv):
    """The options of an ``ocs-locks`` command line. For ``run``, what
    follows the first ``--`` is the command (``opts.argv``), never options;
    its usage errors are one line (exit 2)."""
    head, tail = run.split_argv(argv)
    if head is None:
        return make_parser().parse_args(argv)
    from .parser import one_line_errors
    parser = one_line_errors(make_parser(), 'ocs-locks run')
    opts, extra = parser.parse_known_args(head)
    if extra:
        parser.error(f'unrecognized arguments before --: {" ".join(extra)}')
    if tail is None:
        parser.error('put -- between the RESOURCE(s) and the COMMAND')
    if not tail:
        parser.error('no COMMAND after --')
    opts.argv = tail
    return opts


def main(args=None):
    """Run ``ocs-locks`` with ``args`` (default: the command line); returns the
    exit status: 0 done, 1 failed (one line on stderr), 2 bad arguments.
    After ``watch`` has run the reactor, the process ends here with that
    status."""
    opts = parse_args(sys.argv[1:] if args is None else list(args))
    status = _run(opts)
    if watch.reactor_ran:
        _exit_now(status)
    return status
