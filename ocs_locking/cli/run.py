"""``ocs-locks run RESOURCE... -- COMMAND [ARGS]``: hold a lease exactly
while a command runs (as ``etcdctl lock NAME cmd`` or ``consul lock``).

It acquires the resources (all or nothing, waiting up to ``--timeout`` in
the registry's FIFO queue), starts the command with the lease in its
environment, renews the lease in the background (a
:class:`~ocs_locking.leases.reservation.Reservation`) and releases it when
the command exits. Its exit status is the command's, or one of:

=====  ==============================================================
75     the resources are busy (not granted within ``--timeout``)
124    the lease was lost (revoked, expired, unrenewable): the command
       was ended (SIGTERM, SIGKILL after ``--kill-after``)
125    ``run`` failed before the command started (a bad value, no site
       config, the registry unreachable or refusing the request)
126    the command cannot be executed
127    the command was not found
128+n  the command was killed by signal n (also: ``run`` was
       interrupted by signal n before the lease was granted)
2      usage error (argparse: unknown option, no ``--`` or COMMAND)
=====  ==============================================================

The command's environment (:func:`command_env`): ``OCS_LOCKS_RESOURCES``,
``OCS_LOCKS_TOKENS``, ``OCS_LOCKS_TOKEN`` (one resource),
``OCS_LOCKS_OWNER`` and ``OCS_LOCKS_PRIVS`` (the grant's credential, when
the registry is the access director). The lease id is not passed: ``run``
renews and releases; a command that released the lease itself would look
like a lost lease. Nothing here prints a lease id or a credential.

Signals: SIGINT, SIGTERM and SIGHUP sent to ``run`` (``kill``) are passed
on to the command; the ones the terminal sends (Ctrl-C, hang-up) reach the
command directly (it runs in ``run``'s process group, so it can use the
terminal), and are not sent a second time. The lease is released after the
command exits. If ``run`` is killed (SIGKILL) the kernel kills the command
(:mod:`ocs_locking.children`). Linux only (``sigtimedwait``).

The main thread does all the work in one loop (:meth:`Runner.supervise`):
it blocks the signals it handles and takes them with ``sigtimedwait``; the
acquiring thread, the child's waiter thread and the lease's callbacks wake
it with :data:`WAKE`.
"""
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from ..children import NOT_EXECUTABLE, NOT_FOUND, command_line
from ..errors import CliError
from ..leases.paths import MAX_LEASE, MIN_LEASE
from .formatters import clock
from .signals import ENDING

__all__ = ['cmd_run', 'Runner', 'command_env', 'exit_status', 'forwarded', 'resolve',
           'parse_signal', 'split_argv', 'EX_TEMPFAIL', 'LEASE_LOST', 'RUN_FAILED',
           'NOT_EXECUTABLE', 'NOT_FOUND', 'ENV']

EX_TEMPFAIL = 75        # sysexits.h: busy, try again later
LEASE_LOST = 124        # as timeout(1) when the time ran out
RUN_FAILED = 125        # as timeout(1), env(1): the wrapper itself failed

#: The names of the command's lease variables.
ENV = ('OCS_LOCKS_RESOURCES', 'OCS_LOCKS_TOKENS', 'OCS_LOCKS_TOKEN', 'OCS_LOCKS_OWNER',
       'OCS_LOCKS_PRIVS', 'OCS_LOCKS_LEASE_ID')

#: The signal that wakes the main loop (from the other threads).
WAKE = getattr(signal, 'SIGRTMIN', signal.SIGUSR1) + (2 if hasattr(signal, 'SIGRTMIN') else 0)

#: Every signal the main loop takes (blocked, then taken by sigtimedwait).
WATCHED = (*ENDING, WAKE)

#: The longest the main loop waits without looking at the child and the
#: lease (a bound in case a wake-up is lost; every event wakes it at once).
TICK = 1.0

SAY = 'ocs-locks run'

log = logging.getLogger(__name__)


class RunFailed(Exception):
    """``run`` ends before the command started: one line, this exit status."""

    def __init__(self, message, status=RUN_FAILED):
        super().__init__(message)
        self.status = status


# -- pure helpers -------------------------------------------------------------------


def split_argv(argv):
    """``(head, tail)`` of an ``ocs-locks`` command line whose command is
    ``run``: ``tail`` is what follows the first ``--`` after it (None when
    there is none). ``(None, None)`` for every other command. Site options
    (``--site-file X``, ``--site-file=X``) may come before ``run``."""
    from .parser import SITE_OPTIONS
    takes_value = {o for o, _, _ in SITE_OPTIONS} | {'--registry'}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == '--':
            return None, None
        if a.startswith('-'):
            i += 2 if a in takes_value else 1
            continue
        if a != 'run':
            return None, None
        try:
            end = argv.index('--', i + 1)
        except ValueError:
            return list(argv), None
        return list(argv[:end]), list(argv[end + 1:])
    return None, None


def parse_signal(text):
    """A signal from ``TERM``, ``SIGTERM``, ``term`` or ``15``; ValueError
    naming it otherwise."""
    s = str(text).strip()
    try:
        return signal.Signals(int(s))
    except ValueError:
        pass
    name = s.upper() if s.upper().startswith('SIG') else 'SIG' + s.upper()
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f'--preempt-signal must be a signal name or number (TERM, SIGINT, '
                         f'10), not {text!r:.40}') from None


def exit_status(returncode):
    """The exit status of ``run`` for a command that ended with
    ``returncode`` (Popen's: negative when killed by a signal): 128+n."""
    return 128 - returncode if returncode < 0 else returncode


def forwarded(info, child_pid):
    """Whether a signal ``run`` received (a ``sigtimedwait`` siginfo) is
    passed on to the command: those sent with kill(2) and the like
    (``si_code`` <= 0), unless the command sent it. The kernel's own
    (``si_code`` > 0: Ctrl-C and hang-up from the terminal, which signal the
    whole foreground process group) reached the command already."""
    return info.si_code <= 0 and info.si_pid != child_pid


def command_env(base, resources, tokens, owner, grant_privs=None):
    """The command's environment: ``base`` without any inherited lease
    variable, with this lease's (see :data:`ENV`). Never the lease id."""
    env = {k: v for k, v in base.items() if k not in ENV}
    env['OCS_LOCKS_RESOURCES'] = ' '.join(resources)
    env['OCS_LOCKS_TOKENS'] = ' '.join(f'{r}={tokens[r]}' for r in resources)
    if len(resources) == 1:
        env['OCS_LOCKS_TOKEN'] = str(tokens[resources[0]])
    env['OCS_LOCKS_OWNER'] = owner
    if grant_privs is not None:
        env['OCS_LOCKS_PRIVS'] = grant_privs
    return env


def resolve(argv0, path):
    """The command's path on ``path`` (a PATH string), or RunFailed with
    127 (not found) or 126 (found, not executable), before anything is held."""
    if os.sep in argv0:
        if not os.path.exists(argv0):
            raise RunFailed(f'command not found: {argv0}', NOT_FOUND)
        if os.path.isdir(argv0) or not os.access(argv0, os.X_OK):
            raise RunFailed(f'cannot run {argv0}: not an executable file', NOT_EXECUTABLE)
        return argv0
    found = shutil.which(argv0, path=path)
    if found is None:
        anywhere = [d for d in (path or '').split(os.pathsep) if d and
                    os.path.isfile(os.path.join(d, argv0))]
        if anywhere:
            raise RunFailed(f'cannot run {argv0}: {os.path.join(anywhere[0], argv0)} is '
                            'not executable', NOT_EXECUTABLE)
        raise RunFailed(f'command not found: {argv0}', NOT_FOUND)
    return found


# -- the runner ---------------------------------------------------------------------


class Runner:
    """Runs one command under one held lease; the main thread's loop.

    ``res`` is the (acquired) Reservation, ``argv`` the command, ``say`` a
    one-line printer (stderr). ``on_lost`` and ``on_preempt`` are the
    lease's callbacks (any thread); :meth:`supervise` (main thread, the
    :data:`WATCHED` signals blocked) starts the command and returns
    ``run``'s exit status once it has ended.
    """

    def __init__(self, argv, names, kill_after=10.0, preempt_signal=None, say=None,
                 clock=time.monotonic):
        self.argv, self.names = list(argv), names
        self.kill_after, self.preempt_signal = kill_after, preempt_signal
        self.say = say or (lambda text: print(f'{SAY}: {text}', file=sys.stderr, flush=True))
        self._clock = clock
        self._main = threading.main_thread().ident
        self._mutex = threading.Lock()
        self.child = None
        self.lost = None            # why the lease was lost (None: held)
        self.ending = None          # the loss the command is being ended for
        self._kill_at = None
        self._preempt = None        # a signal to send once the command runs
        self.preempted = None       # (reason, deadline) of the notice, if any
        self.listening = False      # WATCHED blocked in the main thread: wake() may signal

    def wake(self):
        """Wake the main loop (from any thread); nothing once it is over
        (:data:`WAKE` is then no longer blocked, and would end the process)."""
        with self._mutex:
            if self.listening:
                try:
                    signal.pthread_kill(self._main, WAKE)
                except (ProcessLookupError, OSError):
                    pass

    def listen(self, on):
        """Say whether the main thread blocks :data:`WATCHED` (set before
        blocking, cleared before unblocking)."""
        with self._mutex:
            self.listening = on

    # -- the lease's callbacks (any thread) ------------------------------------------

    def on_lost(self, reason):
        """The lease is gone: the main loop ends the command (exit 124)."""
        with self._mutex:
            if self.lost is None:
                self.lost = str(reason)
        self.wake()

    def on_preempt(self, reason, deadline):
        """A preemption notice (``Reservation(on_preempt=...)``): say so in one
        line and send ``--preempt-signal`` (if given) to the command, so
        that it can bring its hardware to a safe state and exit before
        ``deadline``, when the lease is revoked (then: :meth:`on_lost`).
        Without ``--preempt-signal`` the command is told nothing."""
        # deadline: on this host's monotonic clock (the Reservation's notice)
        left = max(0.0, deadline - self._clock()) if isinstance(deadline, (int, float)) \
            else None
        when = f'in {left:.1f} s' if left is not None else 'at its deadline'
        sig = self.preempt_signal
        with self._mutex:
            self.preempted = (reason, deadline)
            child = self.child
            if sig is not None and child is None:
                self._preempt = sig         # sent when it starts
        told = 'the command is not told (no --preempt-signal)' if sig is None else \
            f'sent {sig.name} to the command'
        self.say(f'preemption of {self.names} asked: {reason}; revoked {when} unless '
                 f'released; {told}')
        if sig is not None and child is not None:
            self._send(child, sig)

    # -- the command -----------------------------------------------------------------

    def _send(self, child, sig):
        if child.poll() is None:
            try:
                os.kill(child.pid, sig)
            except ProcessLookupError:
                pass

    def start(self, env, popen=subprocess.Popen):
        """Start the command behind the prelude (dies with ``run``; the
        signals ``run`` blocks unblocked), inheriting stdin, stdout,
        stderr and every inheritable descriptor; a thread waits for its exit
        and wakes the loop."""
        argv = command_line(self.argv, SAY, unblock=WATCHED)
        child = popen(argv, env=env, close_fds=False)
        with self._mutex:
            self.child, pending, self._preempt = child, self._preempt, None
        threading.Thread(target=self._wait_child, args=(child,), daemon=True,
                         name='ocs-locks run: command').start()
        if pending is not None:
            self._send(child, pending)
        return child

    def _wait_child(self, child):
        child.wait()
        self.wake()

    def supervise(self, env, popen=subprocess.Popen):
        """Start the command and run the loop until it has exited; returns the
        exit status (the command's; 124 when it was ended for a lost lease).
        A lease lost before the command started: it is not started (124)."""
        with self._mutex:
            lost = self.lost
        if lost is not None:
            self.say(f'lost the lease on {self.names} before the command started: {lost}')
            return LEASE_LOST
        child = self.start(env, popen)
        while True:
            rc = child.poll()
            if rc is not None:
                return LEASE_LOST if self.ending is not None else exit_status(rc)
            self._step(child)
            timeout = TICK
            if self._kill_at is not None:
                timeout = max(0.0, min(TICK, self._kill_at - self._clock()))
            info = signal.sigtimedwait(WATCHED, timeout)
            if info is not None and info.si_signo != WAKE and forwarded(info, child.pid):
                self._send(child, info.si_signo)

    def _step(self, child):
        """Act on a lost lease: SIGTERM at once, SIGKILL after --kill-after."""
        with self._mutex:
            lost = self.lost
        if lost is None:
            return
        if self.ending is None:
            self.ending = lost
            self._kill_at = self._clock() + self.kill_after
            self.say(f'lost the lease on {self.names}: {lost}; ending the command '
                     f'(SIGTERM, SIGKILL after {self.kill_after:g} s)')
            self._send(child, signal.SIGTERM)
        elif self._kill_at is not None and self._clock() >= self._kill_at:
            self._kill_at = None
            self._send(child, signal.SIGKILL)


# -- the command line ---------------------------------------------------------------


def _check(args):
    """Every value ``run`` takes, checked before anything is asked or held."""
    from ..leases.paths import check_resource
    if not MIN_LEASE <= args.lease <= MAX_LEASE:
        raise RunFailed(f'--lease must be {MIN_LEASE:g}..{MAX_LEASE:g} seconds, '
                        f'not {args.lease:g}')
    if not 0 <= args.timeout <= 1e6:
        raise RunFailed(f'--timeout must be 0..1e6 seconds, not {args.timeout:g}')
    if not 0 < args.kill_after <= 3600:
        raise RunFailed(f'--kill-after must be more than 0 and at most 3600 seconds, '
                        f'not {args.kill_after:g}')
    for r in args.resources:
        try:
            check_resource(r)
        except ValueError as e:
            raise RunFailed(str(e)) from None
    if len(set(args.resources)) != len(args.resources):
        raise RunFailed('a RESOURCE is listed twice')
    if args.owner is not None and not args.owner.strip():
        raise RunFailed('--owner must not be empty')
    try:
        sig = None if args.preempt_signal is None else parse_signal(args.preempt_signal)
    except ValueError as e:
        raise RunFailed(str(e)) from None
    if not hasattr(signal, 'sigtimedwait'):
        raise RunFailed('ocs-locks run needs sigtimedwait (Linux)')
    return sig


def _reservation_class():
    from ..leases.reservation import Reservation
    return Reservation


def _acquire(res, runner):
    """Acquire on a thread while the main thread takes signals: returns None
    once granted, or the exit status when refused, busy or interrupted."""
    from ..errors import LeaseBusy, LeaseUnavailable
    outcome = {}

    def acquire():
        try:
            res.acquire()
            outcome['ok'] = True
        except LeaseBusy as e:
            outcome['error'] = RunFailed(str(e), EX_TEMPFAIL)
        except LeaseUnavailable as e:
            outcome['error'] = RunFailed(str(e))
        except Exception as e:      # a bug or an unexpected transport error
            outcome['error'] = RunFailed(f'{type(e).__name__}: {e}')
        finally:
            done.set()
            if outcome.get('ok') and outcome.get('abandoned'):
                res.release()       # interrupted meanwhile: not ours to keep
            runner.wake()

    done = threading.Event()
    threading.Thread(target=acquire, daemon=True, name='ocs-locks run: acquire').start()
    while not done.is_set():
        info = signal.sigtimedwait(WATCHED, TICK)
        if info is not None and info.si_signo != WAKE and not done.is_set():
            outcome['abandoned'] = True
            res.release()
            raise RunFailed(f'interrupted by {signal.Signals(info.si_signo).name} before '
                            f'{runner.names} was granted; the command was not started (a '
                            'grant made meanwhile is released, or ends with its lease)',
                            128 + info.si_signo)
    if 'error' in outcome:
        raise outcome['error']
    return None


def cmd_run(args):
    """``ocs-locks run``: returns the exit status (see the module)."""
    try:
        return _cmd_run(args)
    except (RunFailed, CliError) as e:
        print(f'{SAY}: {e}', file=sys.stderr, flush=True)
        return getattr(e, 'status', RUN_FAILED)


def _cmd_run(args):
    from .leases import _client_id
    from .site import load_site
    preempt_signal = _check(args)
    env = os.environ
    resolve(args.argv[0], env.get('PATH', os.defpath))
    owner = args.owner if args.owner is not None else \
        f'{getpass.getuser()}@{socket.gethostname()}'
    load_site(args)
    # The loss is said below in one line; not also by the library's logger.
    quiet = logging.getLogger('ocs_locking.leases.reservation')
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    names = ', '.join(args.resources)
    runner = Runner(args.argv, names, kill_after=args.kill_after,
                    preempt_signal=preempt_signal)
    # Blocked before any thread starts (the renewer, the HTTP client's):
    # they inherit the mask, so these signals reach the main loop only.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    runner.listen(True)
    res = None
    try:
        from ..leases.reservation import RetryPolicy
        Reservation = _reservation_class()
        extra = {}
        try:
            import inspect
            if 'on_preempt' in inspect.signature(Reservation).parameters:
                extra['on_preempt'] = runner.on_preempt
        except (TypeError, ValueError):
            pass
        try:
            res = Reservation(args.resources, owner, lease=args.lease, note=args.note,
                              tree=args.tree, registry=args.registry, args=args,
                              timeout=args.timeout, client_id=_client_id('run'),
                              retry=RetryPolicy(attempts=1, deadline=None),
                              on_lost=runner.on_lost, **extra)
        except ValueError as e:     # LeaseError: a value the registry's rules refuse
            raise RunFailed(str(e)) from None
        _acquire(res, runner)
        resources = list(res.resources)
        env = command_env(os.environ, resources, res.tokens, owner,
                          getattr(res, 'grant_privs', None))
        try:
            status = runner.supervise(env)
        except OSError as e:        # the prelude's python could not start
            raise RunFailed(f'cannot start {args.argv[0]}: {e.strerror or e}') from None
        expires = res.expires
        if runner.ending is None and res.release() is None and res.lost is None:
            runner.say(f'could not release {names}: it ends with its lease '
                       f'(at {clock(expires)})')
        return status
    finally:
        if res is not None:
            res.release()           # a no-op once released
        runner.listen(False)
        # Take what is left pending (wake-ups, a late signal) before
        # unblocking, so that it is not delivered to this process then.
        while signal.sigtimedwait(WATCHED, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
