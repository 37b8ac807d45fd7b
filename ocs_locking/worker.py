"""DeviceWorker: one thread owns a driver that must not be used from several threads.

The Beremiz main-worker pattern: every call to the driver is queued to a single
worker thread, and every wait on that thread also watches for shutdown. This
module knows nothing of OCS; Twisted is used only for Deferreds and, lazily,
the reactor to fire them.
"""
import math
import threading
from collections import deque

from twisted.internet import defer
from twisted.python import failure as _failure
from twisted.python import log as _twlog

__all__ = ['DeviceWorker', 'WorkerStopped']

_NEW, _RUNNING, _STOPPED = 'new', 'running', 'stopped'


class WorkerStopped(RuntimeError):
    """Raised to every queued and every new call once a DeviceWorker is stopped."""


def _fn_name(fn):
    return getattr(fn, '__qualname__', None) or getattr(fn, '__name__', None) or repr(fn)


def _check_fn(fn):
    if not callable(fn):
        raise TypeError(f'fn must be callable, not {type(fn).__name__} {fn!r}')


class _Call:
    __slots__ = ('fn', 'args', 'kwargs', 'done', 'result', 'error', 'notify')

    def __init__(self, fn, args, kwargs, notify):
        self.fn, self.args, self.kwargs, self.notify = fn, args, kwargs, notify
        self.done = threading.Event()   # set exactly once, by settle()
        self.result = self.error = None

    def run(self):
        try:
            result = self.fn(*self.args, **self.kwargs)
        except Exception as e:
            self.settle(error=e)
        except BaseException as e:      # SystemExit & co: tell the caller, then end the worker
            self.settle(error=e)
            raise
        else:
            self.settle(result)

    def settle(self, result=None, error=None):
        self.result, self.error = result, error
        self.done.set()
        if self.notify is not None:
            try:
                self.notify(self)
            except Exception:
                _twlog.err(None, f'could not report the result of {_fn_name(self.fn)}')


class DeviceWorker:
    """One daemon thread, named ``DeviceWorker-<name>``, runs every call in turn.

    Contract
    --------
    * **Who calls what.** :meth:`start`, :meth:`stop`, :meth:`status` and
      :meth:`call` may be used from any thread. :meth:`call_deferred` is for the
      reactor thread: its Deferred fires there, through ``reactor.callFromThread``.
    * **One thread.** ``fn`` always runs in the worker thread, one call at a
      time, in submission order. :meth:`call` from the worker thread itself (a
      driver method calling another, or the hooks) runs ``fn`` inline at once.
      :meth:`call_deferred` always queues, even from the worker thread.
    * **Errors.** An exception raised by ``fn`` reaches the caller as the same
      object, its traceback still showing the frames inside the worker. A
      ``BaseException`` that is not an ``Exception`` (``SystemExit``) also ends
      the worker, as any unexpected error in the worker's own loop does.
    * **Timeout.** ``call(timeout=t)`` gives up waiting after ``t`` seconds with
      ``TimeoutError``; the call stays queued and may still run later, its
      result discarded. Cancelling a :meth:`call_deferred` Deferred likewise
      only drops the result.
    * **Hooks.** ``on_start()`` runs in the worker thread before any call; if it
      raises, :meth:`start` re-raises that error and the worker is stopped
      (``on_stop`` is then not run). ``on_stop()`` runs in the worker thread
      after the last call; its errors are logged.
    * **Shutdown.** :meth:`stop` refuses new calls at once (:meth:`call` raises
      :class:`WorkerStopped`, :meth:`call_deferred` returns a failed Deferred),
      fails every queued call with :class:`WorkerStopped`, lets the call in
      progress finish (its caller gets its result), runs ``on_stop`` and joins
      the thread for at most ``timeout`` seconds (not when called from the
      worker thread itself). Idempotent; a stopped worker cannot be restarted.
      However the worker ends, no caller is left waiting.
    """

    def __init__(self, name='device', *, on_start=None, on_stop=None, reactor=None):
        for hook in (on_start, on_stop):
            if hook is not None:
                _check_fn(hook)
        self.name = name
        self._on_start, self._on_stop, self._reactor = on_start, on_stop, reactor
        # _cond guards every field below; it is notified (all) on every change
        # of _queue or _state, so that waiters never miss a wake-up.
        self._cond = threading.Condition(threading.Lock())
        self._state = _NEW          # _NEW -> _RUNNING -> _STOPPED, never back
        self._queue = deque()       # of _Call; empty whenever _state is _STOPPED
        self._busy = None           # the _Call in progress, only set by the worker
        self._calls = 0             # queued calls finished (inline calls not counted)
        self._thread = None
        self._started = threading.Event()   # set once on_start has returned or failed
        self._start_error = None

    def start(self):
        """Start the worker thread; return once ``on_start`` has run."""
        with self._cond:
            if self._state is not _NEW:
                raise RuntimeError(f'DeviceWorker {self.name!r} is already {self._state}; '
                                   f'start() may be called once')
            self._state = _RUNNING
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f'DeviceWorker-{self.name}')
        try:
            self._thread.start()
        except BaseException:
            self._end(run_on_stop=False)
            raise
        self._started.wait()
        if self._start_error is not None:
            self._thread.join(10)
            raise self._start_error
        return self

    def call(self, fn, *args, timeout=None, **kwargs):
        """Run ``fn(*args, **kwargs)`` in the worker thread and return its result."""
        _check_fn(fn)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f'timeout must be None or a number > 0, not {timeout!r}')
            if not timeout > 0 or math.isnan(timeout):
                raise ValueError(f'timeout must be None or a number > 0, not {timeout!r}')
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)     # the worker already owns the driver
        c = self._submit(fn, args, kwargs, None)
        if not c.done.wait(None if timeout is None else min(timeout, threading.TIMEOUT_MAX)):
            raise TimeoutError(f'DeviceWorker {self.name!r}: {_fn_name(fn)} not done within '
                               f'{timeout} s (it stays queued and may still run)')
        if c.error is not None:
            try:
                raise c.error
            finally:
                c = None                   # no reference cycle through the traceback
        return c.result

    def call_deferred(self, fn, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)``; return a Deferred firing with its outcome."""
        _check_fn(fn)
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        reactor, d = self._reactor, defer.Deferred()

        def fire(c):
            if c.error is None:
                d.callback(c.result)
            else:
                d.errback(_failure.Failure(c.error, type(c.error), c.error.__traceback__))
        try:
            self._submit(fn, args, kwargs, lambda c: reactor.callFromThread(fire, c))
        except WorkerStopped as e:
            return defer.fail(e)
        return d

    def stop(self, timeout=10):
        """Refuse new calls, fail queued ones, run ``on_stop``, join the thread."""
        with self._cond:
            pending = self._drain() if self._state is _RUNNING else ()
            self._state = _STOPPED
            self._cond.notify_all()
        self._fail(pending)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def status(self):
        """A snapshot: name, running, queued, calls, busy_with, thread."""
        with self._cond:
            busy = self._busy
            return {'name': self.name, 'running': self._state is _RUNNING,
                    'queued': len(self._queue), 'calls': self._calls,
                    'busy_with': None if busy is None else _fn_name(busy.fn),
                    'thread': f'DeviceWorker-{self.name}'}

    def __repr__(self):
        s = self.status()
        return (f"<DeviceWorker {self.name!r} {self._state}, {s['queued']} queued, "
                f"busy with {s['busy_with']}>")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- internals ---------------------------------------------------------
    def _submit(self, fn, args, kwargs, notify):
        c = _Call(fn, args, kwargs, notify)
        with self._cond:
            if self._state is _NEW:
                raise RuntimeError(f'DeviceWorker {self.name!r} is not started')
            if self._state is _STOPPED:
                raise WorkerStopped(f'DeviceWorker {self.name!r} is stopped')
            self._queue.append(c)
            self._cond.notify_all()
        return c

    def _drain(self):               # with _cond held
        pending = list(self._queue)
        self._queue.clear()
        return pending

    def _fail(self, pending):
        for c in pending:
            c.settle(error=WorkerStopped(
                f'DeviceWorker {self.name!r} stopped before running {_fn_name(c.fn)}'))

    def _run(self):
        started = False
        try:
            if self._on_start is not None:
                self._on_start()
            started = True
            self._started.set()
            while True:
                with self._cond:
                    while not self._queue and self._state is _RUNNING:
                        self._cond.wait()
                    if self._state is not _RUNNING:
                        break
                    c = self._busy = self._queue.popleft()
                c.run()
                with self._cond:
                    self._busy = None
                    self._calls += 1
        except BaseException as e:
            if started:
                _twlog.err(None, f'DeviceWorker {self.name!r} failed and is stopped')
            else:
                self._start_error = e
        finally:
            self._end(run_on_stop=started)
            self._started.set()

    def _end(self, run_on_stop):
        with self._cond:
            self._state = _STOPPED
            pending = self._drain()
            busy, self._busy = self._busy, None
            self._cond.notify_all()
        self._fail(pending)
        if busy is not None and not busy.done.is_set():
            busy.settle(error=WorkerStopped(f'DeviceWorker {self.name!r} stopped while running '
                                            f'{_fn_name(busy.fn)}'))
        if run_on_stop and self._on_stop is not None:
            try:
                self._on_stop()
            except Exception:
                _twlog.err(None, f'on_stop of DeviceWorker {self.name!r} failed')
