"""ocs-locks run with a fake Reservation and real (tiny) commands: exit
statuses, the command's environment, signals passed on, a lost lease ending
the command, preemption notices, usage errors (the real registry's side:
tests/integration/test_cli_run.py)."""
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from ocs_locking import cli
from ocs_locking.cli import run as cli_run
from ocs_locking.errors import LeaseBusy, LeaseUnavailable

from ..support import WAIT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LEASE_ID = 'ab' * 16
PRIVS = 'grant-credential-7f3a'


class FakeReservation:
    """Stands in for Reservation: ``acquire`` does what the test's ``plan``
    says; every call is recorded in ``plan.events``."""

    def __init__(self, resources, owner, lease=30.0, note='', tree=False, registry=None,
                 args=None, timeout=0.0, client_id=None, retry=None, on_lost=None,
                 on_preempt=None):
        self.plan = PLAN
        self.resources, self.owner, self.on_lost = list(resources), owner, on_lost
        self.on_preempt = on_preempt
        self.params = dict(lease=lease, note=note, tree=tree, timeout=timeout,
                           client_id=client_id)
        self.tokens, self.lease_id, self.grant_privs = {}, None, None
        self.lost, self.expires = None, None
        self.plan.made.append(self)

    def acquire(self):
        plan = self.plan
        plan.events.append('acquire')
        if plan.acquiring is not None:
            plan.acquiring.set()
            assert plan.go.wait(WAIT)
        if plan.error is not None:
            raise plan.error
        self.tokens = {r: 7 + i for i, r in enumerate(self.resources)}
        self.lease_id, self.grant_privs, self.expires = LEASE_ID, plan.privs, 2e9
        return self

    def release(self):
        if not self.tokens or self.lost is not None:
            return None
        self.tokens = {}
        self.plan.events.append('release')
        self.plan.released.set()
        return None if self.plan.release_fails else 'Released.'


PLAN = None


@pytest.fixture
def plan(monkeypatch):
    """What the fake reservation does; the site config is not read."""
    global PLAN
    PLAN = SimpleNamespace(events=[], made=[], error=None, privs=PRIVS, acquiring=None,
                           go=threading.Event(), release_fails=False,
                           released=threading.Event())
    monkeypatch.setattr(cli_run, '_reservation_class', lambda: FakeReservation)
    monkeypatch.setattr('ocs_locking.cli.site.load_site', lambda args: None)
    yield PLAN
    PLAN.go.set()


@pytest.fixture
def ready():
    """A pipe the command writes 'ready' to: ``ready.fd`` (inherited by the
    command), ``ready.wait()`` returns what it wrote (bounded)."""
    r, w = os.pipe()
    os.set_inheritable(w, True)

    def wait():
        assert select.select([r], [], [], WAIT)[0], 'the command never got ready'
        return os.read(r, 1000).decode()
    yield SimpleNamespace(fd=w, wait=wait)
    os.close(r)
    os.close(w)


def py(code):
    return [sys.executable, '-c', code]


def run(*argv):
    return cli.main(['run', *argv])


def later(fn):
    """Run ``fn`` on a thread (the main thread is in ``run``'s loop)."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def to_main(sig):
    """Send ``sig`` to the main thread (where ``run`` takes its signals; a
    process-wide kill could land on another thread of the test runner)."""
    signal.pthread_kill(threading.main_thread().ident, sig)


# A command that writes 'ready' to fd READY once its handlers are in place,
# then waits; a signal in SIGS makes it write the signal's name to OUT and
# exit with CODE.
WAITER = """
import os, signal, sys
out, ready, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def on(signum, frame):
    with open(out, 'a') as f:
        f.write(signal.Signals(signum).name + '\\n')
    sys.exit(code)
for name in sys.argv[4:]:
    signal.signal(getattr(signal, name), on)
os.write(ready, b'ready')
while True:
    signal.pause()
"""


def waiter(out, ready, code, *sigs):
    return [sys.executable, '-c', WAITER, str(out), str(ready.fd), str(code), *sigs]


def test_run_passes_the_lease_to_the_command_and_releases_after_it_exits(
        plan, tmp_path, capsys, monkeypatch):
    """When the lease is granted, the command sees the resources, tokens,
    owner and the grant's credential in its environment (no lease id, not
    even an inherited one), run exits with the command's status and
    releases after it; nothing secret is printed."""
    monkeypatch.setenv('OCS_LOCKS_LEASE_ID', 'cd' * 16)
    monkeypatch.setenv('OCS_LOCKS_TOKEN', 'stale')
    out = tmp_path / 'env.json'
    code = ('import json, os, sys; json.dump({k: v for k, v in os.environ.items() '
            f'if k.startswith("OCS_LOCKS_")}}, open({str(out)!r}, "w")); sys.exit(3)')
    assert run('satp1/hwp', 'satp1/mount', '--owner', 'alice', '--note', 'cal', '--lease',
               '12', '--', *py(code)) == 3
    assert json.loads(out.read_text()) == {
        'OCS_LOCKS_RESOURCES': 'satp1/hwp satp1/mount',
        'OCS_LOCKS_TOKENS': 'satp1/hwp=7 satp1/mount=8', 'OCS_LOCKS_OWNER': 'alice',
        'OCS_LOCKS_PRIVS': PRIVS}
    assert plan.events == ['acquire', 'release']
    [res] = plan.made
    assert res.params['lease'] == 12 and res.params['note'] == 'cal'
    assert res.params['client_id'].startswith('ocs-locks run (')
    captured = capsys.readouterr()
    assert captured.out == captured.err == ''


def test_run_with_one_resource_passes_its_token_and_no_privs_when_the_grant_has_none(
        plan, tmp_path):
    """When one resource is held and the grant carries no credential, the
    command gets OCS_LOCKS_TOKEN and no OCS_LOCKS_PRIVS."""
    plan.privs = None
    out = tmp_path / 'env.json'
    code = ('import json, os; json.dump({k: v for k, v in os.environ.items() '
            f'if k.startswith("OCS_LOCKS_")}}, open({str(out)!r}, "w"))')
    assert run('it/one', '--owner', 'bob', '--', *py(code)) == 0
    env = json.loads(out.read_text())
    assert env['OCS_LOCKS_TOKEN'] == '7' and env['OCS_LOCKS_TOKENS'] == 'it/one=7'
    assert 'OCS_LOCKS_PRIVS' not in env and 'OCS_LOCKS_LEASE_ID' not in env


def test_run_exits_128_plus_n_when_the_command_is_killed_by_signal_n(plan):
    """When the command dies by SIGKILL, run exits 137 (and releases)."""
    assert run('it/x', '--', *py('import os; os.kill(os.getpid(), 9)')) == 137
    assert plan.events == ['acquire', 'release']


def test_run_busy_exits_75_without_starting_the_command(plan, tmp_path, capsys):
    """When the resources stay busy (LeaseBusy, also after --timeout), run
    exits 75 (EX_TEMPFAIL) with the holder in one line; the command never
    runs."""
    plan.error = LeaseBusy("it/x still busy: it/x held by 'alice' (token 3) until 12:00:01")
    out = tmp_path / 'ran'
    assert run('it/x', '--timeout', '2', '--', 'touch', str(out)) == 75
    assert capsys.readouterr().err == ("ocs-locks run: it/x still busy: it/x held by "
                                       "'alice' (token 3) until 12:00:01\n")
    assert not out.exists() and plan.made[0].params['timeout'] == 2


def test_run_with_the_registry_unreachable_exits_125(plan, tmp_path, capsys):
    """When the registry cannot be reached or refuses the request, run exits
    125 in one line and the command never runs."""
    plan.error = LeaseUnavailable('could not reserve it/x: cannot reach the router')
    out = tmp_path / 'ran'
    assert run('it/x', '--', 'touch', str(out)) == 125
    assert capsys.readouterr().err == ('ocs-locks run: could not reserve it/x: cannot '
                                       'reach the router\n')
    assert not out.exists()


def test_run_command_not_found_127_not_executable_126_before_anything_is_held(
        plan, tmp_path, capsys):
    """When the command is not found (127) or not executable (126), run
    says so in one line before asking for the lease."""
    assert run('it/x', '--', 'no-such-command-xyz') == 127
    assert capsys.readouterr().err == 'ocs-locks run: command not found: no-such-command-xyz\n'
    script = tmp_path / 'script.sh'
    script.write_text('#!/bin/sh\n')
    assert run('it/x', '--', str(script)) == 126
    assert capsys.readouterr().err == (f'ocs-locks run: cannot run {script}: not an '
                                       'executable file\n')
    assert run('it/x', '--', str(tmp_path / 'gone')) == 127
    capsys.readouterr()
    assert plan.made == []


@pytest.mark.parametrize('argv,error', [
    (['it/x', 'true'], 'put -- between the RESOURCE(s) and the COMMAND'),
    (['it/x', '--'], 'no COMMAND after --'),
    (['--', 'true'], 'the following arguments are required: RESOURCE'),
    (['it/x', '--lease', 'long', '--', 'true'], "argument --lease: invalid float value: "
                                               "'long'"),
    (['it/x', '--bogus', '--', 'true'], 'unrecognized arguments before --: --bogus')])
def test_run_usage_error_is_one_line_and_exit_2(plan, capsys, argv, error):
    """When the command line is malformed, one line names the problem and
    run exits 2; nothing is asked."""
    with pytest.raises(SystemExit) as e:
        run(*argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == f'ocs-locks run: {error} (see ocs-locks run --help)\n'
    assert plan.made == []


@pytest.mark.parametrize('argv,error', [
    (['--lease', '0'], '--lease must be 0.5..3600 seconds, not 0'),
    (['--timeout', '-1'], '--timeout must be 0..1e6 seconds, not -1'),
    (['--kill-after', '0'], '--kill-after must be more than 0 and at most 3600 seconds, '
                            'not 0'),
    (['--preempt-signal', 'SIGNOPE'], "--preempt-signal must be a signal name or number "
                                      "(TERM, SIGINT, 10), not 'SIGNOPE'"),
    (['it/x'], 'a RESOURCE is listed twice'),
    (['--owner', ' '], '--owner must not be empty')])
def test_run_bad_value_is_one_line_and_exit_125(plan, capsys, argv, error):
    """When a value is out of bounds, one line names it, run exits 125 and
    nothing is asked."""
    assert run('it/x', *argv, '--', 'true') == 125
    assert capsys.readouterr().err == f'ocs-locks run: {error}\n'
    assert plan.made == []


def test_run_bad_registry_name_is_exit_125(plan, capsys):
    """When --registry cannot be an instance id, one line and exit 125 (where
    other commands exit 1)."""
    assert run('it/x', '--registry', 'a b', '--', 'true') == 125
    assert capsys.readouterr().err.startswith("ocs-locks: no such registry name 'a b'")
    assert plan.made == []


def test_lease_lost_before_the_command_started_does_not_start_it(tmp_path):
    """When the lease is lost between the grant and the start, the command
    is not started and run exits 124 in one line."""
    said = []
    r = cli_run.Runner(['touch', str(tmp_path / 'ran')], 'it/x', say=said.append)
    r.on_lost('expired')
    assert r.supervise({}) == 124 and not (tmp_path / 'ran').exists()
    assert said == ['lost the lease on it/x before the command started: expired']


def test_run_bad_resource_path_is_refused_before_anything_is_asked(plan, capsys):
    """When a RESOURCE is not a valid path, one line and exit 125."""
    assert run('Bad/Path', '--', 'true') == 125
    err = capsys.readouterr().err
    assert err.startswith('ocs-locks run: ') and err.count('\n') == 1
    assert plan.made == []


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM', 'SIGHUP'])
def test_run_passes_a_signal_on_to_the_command_then_releases(plan, tmp_path, ready, sig):
    """When run receives SIGINT, SIGTERM or SIGHUP (kill), the command gets
    it, run exits with the command's status and the lease is released after
    the command exited."""
    out = tmp_path / 'got'
    later(lambda: (ready.wait(), to_main(getattr(signal, sig))))
    assert run('it/sig', '--', *waiter(out, ready, 5, sig)) == 5
    assert out.read_text() == f'{sig}\n'
    assert plan.events == ['acquire', 'release']


def test_signals_from_the_terminal_are_not_passed_on_twice():
    """When a signal comes from the kernel (si_code > 0: the terminal's
    Ctrl-C or hang-up, sent to the whole foreground process group, the
    command included) or from the command itself, run does not send it
    again; one sent with kill (SI_USER 0, SI_TKILL -6) it does."""
    def info(code, pid=1234):
        return SimpleNamespace(si_code=code, si_pid=pid)
    assert cli_run.forwarded(info(0), 99) and cli_run.forwarded(info(-6), 99)
    assert not cli_run.forwarded(info(0x80, 0), 99)
    assert not cli_run.forwarded(info(0, 99), 99)


def test_lost_lease_ends_the_command_and_exits_124(plan, tmp_path, ready, capsys):
    """When the lease is lost while the command runs, run says why in one
    line, sends SIGTERM to the command and exits 124 (not the command's
    status); nothing is released (it is gone)."""
    out = tmp_path / 'got'

    def lose():
        ready.wait()
        res = plan.made[0]
        res.lost = "lease on 'it/lost' was revoked by 'operator': 'cryostat service'"
        res.on_lost(res.lost)
    later(lose)
    assert run('it/lost', '--', *waiter(out, ready, 0, 'SIGTERM')) == 124
    assert out.read_text() == 'SIGTERM\n'
    assert capsys.readouterr().err == (
        "ocs-locks run: lost the lease on it/lost: lease on 'it/lost' was revoked by "
        "'operator': 'cryostat service'; ending the command (SIGTERM, SIGKILL after 10 s)\n")
    assert plan.events == ['acquire']


def test_lost_lease_kills_a_command_that_ignores_sigterm(plan, ready, capsys):
    """When the command ignores SIGTERM, run kills it after --kill-after and
    still exits 124."""
    code = ('import os, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
            'os.write(int(sys.argv[1]), b"ready"); [signal.pause() for _ in iter(int, 1)]')

    def lose():
        ready.wait()
        plan.made[0].lost = 'expired'
        plan.made[0].on_lost('expired')
    later(lose)
    assert run('it/stubborn', '--kill-after', '0.2', '--', *py(code), str(ready.fd)) == 124
    assert 'SIGKILL after 0.2 s' in capsys.readouterr().err


def test_preemption_notice_sends_the_chosen_signal_to_the_command(plan, tmp_path, ready,
                                                                  capsys):
    """When a preemption notice comes (the Reservation's on_preempt) and
    --preempt-signal names a signal, the command gets it (and may exit,
    releasing); one line says who asked and until when."""
    out = tmp_path / 'got'
    later(lambda: (ready.wait(), plan.made[0].on_preempt('calibration must run',
                                                         time.monotonic() + 30)))
    assert run('it/pre', '--preempt-signal', 'USR1', '--',
               *waiter(out, ready, 0, 'SIGUSR1')) == 0
    assert out.read_text() == 'SIGUSR1\n'
    err = capsys.readouterr().err
    assert err.startswith('ocs-locks run: preemption of it/pre asked: calibration must run; '
                          'revoked in ') and err.endswith('sent SIGUSR1 to the command\n')
    assert plan.events == ['acquire', 'release']


def test_preemption_handler_without_a_signal_only_says_so_and_before_start_waits():
    """When the handler gets a notice and no --preempt-signal was given, it
    says so and sends nothing; with one, a notice that comes before the
    command started is sent when it starts."""
    said = []
    r = cli_run.Runner(['true'], 'it/x', say=said.append)
    r.on_preempt('urgent', 2e9)
    assert said[0].endswith('the command is not told (no --preempt-signal)')
    assert r.preempted == ('urgent', 2e9) and r._preempt is None
    r = cli_run.Runner(['true'], 'it/x', preempt_signal=signal.SIGUSR2, say=said.append,
                       clock=lambda: 100.0)
    r.on_preempt('urgent', 112.5)       # the deadline on the monotonic clock
    assert r._preempt == signal.SIGUSR2 and 'revoked in 12.5 s unless' in said[1]
    sent = []
    r._send = lambda child, sig: sent.append(sig)
    child = SimpleNamespace(pid=0, wait=lambda: 0, poll=lambda: 0)
    r.start({}, popen=lambda argv, env, close_fds: child)
    assert sent == [signal.SIGUSR2] and r._preempt is None


def test_interrupted_while_waiting_for_the_grant_exits_128_plus_n_and_runs_nothing(
        plan, tmp_path, capsys):
    """When run is interrupted (SIGINT) while it waits in the queue, it
    exits 130 in one line and the command never starts; a grant that comes
    after is released."""
    plan.acquiring = threading.Event()
    out = tmp_path / 'ran'
    later(lambda: (plan.acquiring.wait(WAIT), to_main(signal.SIGINT)))
    assert run('it/wait', '--timeout', '60', '--', 'touch', str(out)) == 130
    err = capsys.readouterr().err
    assert err.startswith('ocs-locks run: interrupted by SIGINT before it/wait was granted')
    assert err.count('\n') == 1 and not out.exists()
    plan.go.set()           # the registry grants after all: released at once
    assert plan.released.wait(WAIT)
    assert plan.events == ['acquire', 'release'] and plan.made[0].tokens == {}


def test_run_says_when_the_release_failed_and_keeps_the_commands_status(plan, capsys):
    """When the release after the command does not get through, run says
    the lease ends by itself, and still exits with the command's status."""
    plan.release_fails = True
    assert run('it/x', '--', 'true') == 0
    assert capsys.readouterr().err.startswith('ocs-locks run: could not release it/x: it '
                                              'ends with its lease (at ')


def test_split_argv_finds_the_command_after_the_first_double_dash():
    """When run's command line is split, site options may come before run,
    and everything after the first -- is the command (even options and a
    later --); other commands are not split."""
    assert cli_run.split_argv(['--site-file', 'f', 'run', 'a', '--', 'sh', '-c', '--', 'x']) \
        == (['--site-file', 'f', 'run', 'a'], ['sh', '-c', '--', 'x'])
    assert cli_run.split_argv(['run', 'a']) == (['run', 'a'], None)
    assert cli_run.split_argv(['status', '--', 'run']) == (None, None)
    assert cli_run.split_argv(['--registry', 'run', 'status']) == (None, None)


def test_parse_signal_takes_names_and_numbers():
    """When --preempt-signal is given as TERM, sigint or 10, it is that signal."""
    assert cli_run.parse_signal('TERM') is signal.SIGTERM
    assert cli_run.parse_signal('sigint') is signal.SIGINT
    assert cli_run.parse_signal(str(int(signal.SIGUSR1))) is signal.SIGUSR1


# ``ocs-locks run`` with the fake reservation, in its own process: the
# command writes its pid to fd 1 (a pipe) and waits.
RUN_PROCESS = """
import sys
sys.path.insert(0, {repo!r})
from tests.unit import test_cli_run as t
from ocs_locking import cli
from ocs_locking.cli import run
from types import SimpleNamespace
import threading
t.PLAN = SimpleNamespace(events=[], made=[], error=None, privs=None, acquiring=None,
                         go=threading.Event(), release_fails=False,
                           released=threading.Event())
run._reservation_class = lambda: t.FakeReservation
import ocs_locking.cli.site
ocs_locking.cli.site.load_site = lambda args: None
sys.exit(cli.main(['run', 'it/x', '--', sys.executable, '-c',
                   'import os, time; print(os.getpid(), flush=True); time.sleep(600)']))
"""


def pid_gone(pid, timeout=WAIT):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_the_command_dies_when_run_is_killed_with_sigkill():
    """When ``ocs-locks run`` itself is killed with SIGKILL (no clean-up),
    the kernel kills the command too (PR_SET_PDEATHSIG)."""
    proc = subprocess.Popen([sys.executable, '-c', RUN_PROCESS.format(repo=REPO)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        child = int(proc.stdout.readline())
        assert not pid_gone(child, 0)
        proc.kill()
        proc.wait(WAIT)
        assert pid_gone(child)
    finally:
        proc.kill()
        proc.wait(WAIT)


# A command that counts the SIGINTs it gets until a SIGTERM, then prints
# the count and exits 0.
COUNTER = """
import os, signal, sys
n = 0
def on_int(signum, frame):
    global n
    n += 1
    os.write(1, b'INT\\n')
def on_term(signum, frame):
    os.write(1, f'count={n}\\n'.encode())
    sys.exit(0)
signal.signal(signal.SIGINT, on_int)
signal.signal(signal.SIGTERM, on_term)
os.write(1, b'ready\\n')
while True:
    signal.pause()
"""

# ``ocs-locks run`` (fake reservation) as the session leader of a terminal.
RUN_ON_A_TERMINAL = """
import fcntl, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
""" + RUN_PROCESS.replace(
    "sys.exit(cli.main(['run', 'it/x', '--', sys.executable, '-c',\n"
    "                   'import os, time; print(os.getpid(), flush=True); time.sleep(600)']))",
    "sys.exit(cli.main(['run', 'it/x', '--', sys.executable, '-c', {counter!r}]))")


def read_until(fd, text):
    """What the terminal showed until ``text`` (bounded)."""
    seen = b''
    while text.encode() not in seen:
        assert select.select([fd], [], [], WAIT)[0], f'never saw {text!r} in {seen!r}'
        seen += os.read(fd, 1000)
    return seen.decode(errors='replace')


def test_ctrl_c_at_the_terminal_reaches_the_command_once():
    """When Ctrl-C is typed at the terminal run is in, the command gets one
    SIGINT (from the terminal, as run's process group does), not a second
    one from run; a SIGTERM sent to run with kill is passed on."""
    master, slave = os.openpty()
    code = RUN_ON_A_TERMINAL.format(repo=REPO, counter=COUNTER)
    proc = subprocess.Popen([sys.executable, '-c', code], stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True, cwd=REPO)
    os.close(slave)
    try:
        read_until(master, 'ready')
        os.write(master, b'\x03')           # Ctrl-C: the terminal signals its foreground
        read_until(master, 'INT')
        proc.send_signal(signal.SIGTERM)
        assert 'count=1' in read_until(master, 'count=')
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        os.close(master)
