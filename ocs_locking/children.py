"""Child processes that never outlive the process that started them.

:func:`command_line` wraps a command in a tiny ``python -c`` prelude that,
in the child, before it ``exec``\\ s the command:

* sets ``PR_SET_PDEATHSIG`` to SIGKILL (Linux): if the parent dies without
  cleaning up (``kill -9``), the kernel kills the child; the flag survives
  ``exec``. It is set in the prelude, not in a ``preexec_fn``, so that no
  code runs in the forked child of a possibly multi-threaded parent. The
  kernel ties the flag to the *thread* that forked, hence main thread only
  (:func:`can_die_with_parent`); a parent that died before the flag was set
  is noticed (the parent pid changed) and the prelude exits 1;
* gives the command the signal state a program expects: SIGINT, SIGPIPE
  and SIGXFSZ back to their default actions (the prelude's own Python set
  them; an inherited SIG_IGN of SIGINT, as in a shell's background job, is
  kept), and the signals the parent blocked unblocked;
* execs the command; a command that is not found exits 127, one that cannot
  be executed 126, each with one line on stderr (as a shell does).

Used by ``ocs-locks run`` (:mod:`ocs_locking.cli.run`) and by the
developer tools' supervisor (``tools/processes.py``).
"""
import os
import signal
import sys
import threading

__all__ = ['command_line', 'can_die_with_parent', 'NOT_FOUND', 'NOT_EXECUTABLE']

#: Exit status of the prelude when the command is not found / not executable.
NOT_FOUND, NOT_EXECUTABLE = 127, 126

# argv: <parent pid, or 0: no death signal> <name for messages>
#       <signals to unblock, comma-separated> <command...>
PRELUDE = (
    'import os, signal, sys\n'
    'parent, name, unblock, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]\n'
    'if parent:\n'
    '    import ctypes\n'
    '    libc = ctypes.CDLL(None, use_errno=True)\n'
    '    if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:\n'   # 1 = PR_SET_PDEATHSIG
    '        sys.exit(name + ": prctl(PR_SET_PDEATHSIG) failed: "'
    ' + os.strerror(ctypes.get_errno()))\n'
    '    if os.getppid() != parent:\n'
    '        sys.exit(1)\n'                   # the parent died before the flag was set
    'if signal.getsignal(signal.SIGINT) is signal.default_int_handler:\n'
    '    signal.signal(signal.SIGINT, signal.SIG_DFL)\n'
    'for s in ("SIGPIPE", "SIGXFSZ"):\n'
    '    if hasattr(signal, s):\n'
    '        signal.signal(getattr(signal, s), signal.SIG_DFL)\n'
    'if unblock:\n'
    '    signal.pthread_sigmask(signal.SIG_UNBLOCK, [int(n) for n in unblock.split(",")])\n'
    'try:\n'
    '    os.execvp(cmd[0], cmd)\n'
    'except FileNotFoundError:\n'
    '    sys.stderr.write(f"{name}: command not found: {cmd[0]}\\n")\n'
    '    os._exit(127)\n'
    'except OSError as e:\n'
    '    sys.stderr.write(f"{name}: cannot run {cmd[0]}: {e.strerror}\\n")\n'
    '    os._exit(126)\n'
)


def can_die_with_parent():
    """True where the death signal can be set for a child started now: Linux,
    from the main thread."""
    return sys.platform.startswith('linux') \
        and threading.current_thread() is threading.main_thread()


def command_line(cmd, name, unblock=(), die_with_parent=None):
    """``cmd`` (a list) behind the prelude: the argv to start instead of it.

    Args:
        cmd (list): the command and its arguments (``cmd[0]`` is looked up
            on ``PATH`` unless it holds a ``/``).
        name (str): names the caller in the prelude's error lines.
        unblock: signals the caller has blocked, to unblock in the child.
        die_with_parent (bool or None): set the death signal (None: where
            :func:`can_die_with_parent`).
    """
    cmd = [str(c) for c in cmd]
    if not cmd:
        raise ValueError('command_line needs a command')
    if die_with_parent is None:
        die_with_parent = can_die_with_parent()
    parent = os.getpid() if die_with_parent else 0
    mask = ','.join(str(int(s)) for s in unblock)
    return [sys.executable, '-c', PRELUDE, str(parent), name, mask, *cmd]

