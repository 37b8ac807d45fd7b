"""tools.processes with real (tiny) child processes: they die with their
parent even on SIGKILL, and exits are described in words."""
import os
import select
import signal
import subprocess
import sys

import pytest

from ocs_locking.children import PRELUDE
from tools.processes import exit_text, spawn, stop

from ..support import WAIT

# A parent that spawns one sleeping child with tools.processes.spawn, prints
# the child's pid, then waits to be killed.
PARENT = """
import sys, time
sys.path.insert(0, {repo!r})
from tools.processes import spawn
child = spawn([sys.executable, '-c', 'import time; time.sleep(600)'], None)
print(child.pid, flush=True)
sys.stdin.read()
"""
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_exit(pid, timeout=WAIT):
    """True once ``pid`` has exited (waits on a pidfd), False after timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_spawned_child_dies_when_its_parent_is_killed_with_sigkill():
    """When the process that spawned a child is killed with SIGKILL (no
    clean-up), the kernel kills the child too (PR_SET_PDEATHSIG)."""
    parent = subprocess.Popen([sys.executable, '-c', PARENT.format(repo=REPO)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not wait_exit(child, 0)
        parent.kill()
        parent.wait(WAIT)
        assert wait_exit(child)
    finally:
        parent.kill()
        parent.wait(WAIT)


def test_spawned_child_runs_in_its_own_session(tmp_path):
    """When a child is spawned, it leads its own session and process group,
    so a terminal's Ctrl-C or hang-up reaches only the supervisor."""
    proc = spawn([sys.executable, '-c', 'import time; time.sleep(600)'],
                 str(tmp_path / 'child.log'))
    try:
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
        assert os.getpgid(proc.pid) == proc.pid
    finally:
        assert stop(proc, signal.SIGTERM, WAIT) == -signal.SIGTERM


def test_spawned_child_output_goes_to_its_log(tmp_path):
    """When a child writes to stdout and stderr, both land in its log file."""
    log = tmp_path / 'child.log'
    proc = spawn([sys.executable, '-c', 'import sys; print("out"); sys.stderr.write("err\\n")'],
                 str(log))
    assert proc.wait(WAIT) == 0
    assert log.read_text().split() == ['out', 'err']


def test_stop_kills_a_child_that_ignores_the_signal():
    """When a child ignores the stop signal, stop() kills its group after the
    timeout and returns the SIGKILL exit."""
    ignoring = ('import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); '
                'print("ready", flush=True); time.sleep(600)')
    proc = spawn([sys.executable, '-c', ignoring], None, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b'ready\n'
    assert stop(proc, signal.SIGTERM, 0.5) == -signal.SIGKILL


@pytest.mark.parametrize('code, text', [(0, 'exited with code 0'), (3, 'exited with code 3'),
                                        (-9, 'killed by SIGKILL'), (-15, 'killed by SIGTERM'),
                                        (None, 'still running')])
def test_exit_text_says_how_a_child_ended(code, text):
    """When a return code is described, signals are named."""
    assert exit_text(code) == text


def test_child_spawned_off_the_main_thread_does_not_die_with_that_thread(tmp_path):
    """When a child is spawned from another thread, no death signal is set
    (the kernel would fire it when that thread ends, not the process)."""
    import threading
    got = {}
    t = threading.Thread(target=lambda: got.update(
        proc=spawn([sys.executable, '-c', 'import time; time.sleep(600)'],
                   str(tmp_path / 'child.log'))))
    t.start()
    t.join(WAIT)
    proc = got['proc']
    try:
        assert not wait_exit(proc.pid, 0)
        assert PRELUDE not in proc.args
    finally:
        stop(proc, signal.SIGTERM, WAIT)
