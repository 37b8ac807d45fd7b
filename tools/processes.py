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
  not exit in time; :func:`kill` SIGKILLs children, their process groups and
  every process below them at once and waits until all are gone (test and
  benchmark teardown, where a clean shutdown proves nothing and costs
  seconds per agent); :func:`exit_text` describes how a child ended.
"""
import os
import select
import signal
import subprocess
import time

from ocs_locking.children import can_die_with_parent, command_line

__all__ = ['spawn', 'stop', 'kill', 'descendants', 'exit_text', 'pidfd']


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


def _stat(pid):
    """(state, ppid, pgrp) of a process from /proc, or None if it is gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return fields[0], int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def _all_stats():
    out = {}
    try:
        entries = os.listdir('/proc')
    except OSError:
        return out
    for entry in entries:
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                out[int(entry)] = st
    return out


def descendants(roots):
    """Every live process below ``roots`` (pids) or in their process groups
    right now (a set of pids, the roots not included). Linux /proc; empty
    elsewhere."""
    roots = set(roots)
    stats = _all_stats()
    children = {}
    for pid, (_, ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (state, _, pgrp) in stats.items()
             if pgrp in roots and state != 'Z'}
    todo = list(roots | found)
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found.add(pid)
                todo.append(pid)
    return found - roots


def _gone(pid):
    st = _stat(pid)
    return st is None or st[0] in ('Z', 'X')


def _wait_pids_gone(pids, timeout):
    """Wait until every pid has exited (a zombie counts as exited: its parent
    reaps it); returns those still alive after ``timeout`` seconds. Waits on
    pidfds where the kernel has them, else polls /proc (bounded)."""
    deadline = time.monotonic() + timeout
    fds = {}
    left = set()
    for pid in pids:
        fd = None
        if hasattr(os, 'pidfd_open'):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:
                fd = None
        if fd is None:
            left.add(pid)
        else:
            fds[fd] = pid
    try:
        while fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], remaining)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        while left and time.monotonic() < deadline:
            left = {pid for pid in left if not _gone(pid)}
            if left:
                time.sleep(0.01)
        return sorted(set(fds.values()) | {pid for pid in left if not _gone(pid)})
    finally:
        for fd in fds:
            os.close(fd)


def kill(procs, timeout=15):
    """SIGKILL the children ``procs`` (Popen objects), their process groups
    and every process below them, then wait (at most ``timeout`` seconds)
    until each has exited and been reaped. Returns the pids still alive
    (none, unless a process is stuck in the kernel)."""
    procs = [p for p in procs if p is not None]
    live = [p for p in procs if p.poll() is None]
    others = descendants(p.pid for p in live)
    for proc in live:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.kill()         # not in its own group (spawned elsewhere)
        except OSError:
            pass
    for pid in others:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + timeout
    stuck = []
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stuck.append(proc.pid)
    return sorted(set(stuck) | set(_wait_pids_gone(others, max(0.0, deadline - time.monotonic()))))


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
