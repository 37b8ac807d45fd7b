"""The waiting half of a process supervisor: signals and child exits.

* :class:`Shutdown` turns the first SIGINT, SIGTERM or SIGHUP into a
  :class:`Stop` exception (raised wherever the main thread is, e.g. while the
  site starts) and makes every later one a no-op, so a second signal can never
  interrupt the shutdown it asked for.
* :class:`ExitWatcher` blocks until one of a set of children exits, on pidfds
  (no polling); signals still interrupt the wait.
"""
import os
import selectors
import signal
import time

from tools.processes import pidfd

__all__ = ['Stop', 'Shutdown', 'ExitWatcher']

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stop(BaseException):
    """A stop signal arrived. A BaseException, so that ``except Exception``
    in code that was running (waiting for an agent, say) cannot swallow it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name


class Shutdown:
    """Signal handling for a supervisor's main thread.

    The first of SIGINT, SIGTERM or SIGHUP raises :class:`Stop`; once
    :meth:`begin` has been called (or that first signal arrived), signals only
    call ``on_repeat(signum)``. Call :meth:`begin` before any clean-up, whatever
    started it.
    """

    def __init__(self, on_repeat=None):
        self.stopping = False
        self.signum = None
        self.repeats = 0
        self._on_repeat = on_repeat
        self._previous = {}

    def install(self):
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def begin(self):
        self.stopping = True

    def _handle(self, signum, frame):
        if self.stopping:
            self.repeats += 1
            if self._on_repeat is not None:
                self._on_repeat(signum)
            return
        self.stopping = True
        self.signum = signum
        raise Stop(signum)


class ExitWatcher:
    """Wait for any of several child processes to exit.

    ``add(key, proc)`` watches a :class:`subprocess.Popen`; :meth:`wait`
    blocks until at least one watched child has exited (or ``timeout``
    seconds), reaps it, stops watching it and returns the keys of those that
    exited, in the order they were added.
    """

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self._procs = {}      # key -> (proc, fd or None)

    def add(self, key, proc):
        self.remove(key)
        fd = pidfd(proc)
        self._procs[key] = (proc, fd)
        if fd is not None:
            self._sel.register(fd, selectors.EVENT_READ, key)

    def remove(self, key):
        proc, fd = self._procs.pop(key, (None, None))
        if fd is not None:
            self._sel.unregister(fd)
            _close(fd)

    def keys(self):
        return list(self._procs)

    def _exited(self):
        return [k for k, (proc, _) in self._procs.items() if proc.poll() is not None]

    def wait(self, timeout=None):
        exited = self._exited()
        if not exited and self._procs:
            polling = any(fd is None for _, fd in self._procs.values())
            # Without a pidfd for some child, wake up now and then to poll it.
            wait = 0.2 if polling and (timeout is None or timeout > 0.2) else timeout
            if self._sel.get_map():
                self._sel.select(wait)
            elif wait is not None:
                time.sleep(wait)
            exited = self._exited()
        for key in exited:
            self.remove(key)
        return exited

    def close(self):
        for key in list(self._procs):
            self.remove(key)
        self._sel.close()


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass
