"""Child processes of a supervisor that never outlive it.

* :func:`spawn` starts a command in its own session (so a terminal's Ctrl-C or
  hang-up reaches only the supervisor, which then stops its children in order)
  and, when called from the main thread, with ``PR_SET_PDEATHSIG`` set to
  SIGKILL: if the supervisor dies without cleaning up (``kill -9``), the kernel
  kills the child. The flag is set by the runtime package's prelude
  (:mod:`ocs_locking.children`, shared with ``ocs-locks run``), main thread only.
* crossbar's controller forks its router worker; that worker exits as soon
  as its controller dies (checked by ``tests/integration/test_devsite.py``).
* :func:`stop` signals a child's process group and kills the group if it does
  not exit in time; :func:`exit_text` describes how a child ended.
"""
import os
import signal
import subprocess

from ocs_locking.children import can_die_with_parent, command_line

__all__ = ['spawn', 'stop', 'exit_text', 'pidfd']


def spawn(cmd, log_path, env=None, cwd=None, stdout=None, stderr=None):
    """Start ``cmd`` in its own session; its output is appended to ``log_path``,
    or, with ``log_path=None``, goes to ``stdout`` and ``stderr`` (as for
    :class:`subprocess.Popen`; None: this process's). Returns the Popen."""
    cmd = list(cmd)
    if can_die_with_parent():
        cmd = command_line(cmd, 'devsite')
    if log_path is None:
        return subprocess.Popen(cmd, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=cwd)
    with open(log_path, 'ab') as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                cwd=cwd)


def signal_group(proc, sig):
    """Send ``sig`` to the child's process group (quietly if it is gone)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop(proc, sig, timeout):
    """Signal a child's process group, then kill the group if the child does
    not exit within ``timeout`` seconds. Returns the exit code."""
    signal_group(proc, sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.wait(timeout)


def exit_text(returncode):
    """How a child ended, in words: 'exited with code 1', 'killed by SIGKILL'."""
    if returncode is None:
        return 'still running'
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f'signal {-returncode}'
        return f'killed by {name}'
    return f'exited with code {returncode}'


def pidfd(proc):
    """A file descriptor that becomes readable when ``proc`` exits (Linux),
    or None where pidfds are not available."""
    if not hasattr(os, 'pidfd_open'):
        return None
    try:
        return os.pidfd_open(proc.pid)
    except OSError:
        return None
