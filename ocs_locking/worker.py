"""DeviceWorker: one thread owns a driver that must not be used from several threads (the
Beremiz main-worker pattern). No OCS here; Twisted only for Deferreds, the reactor lazily."""
import concurrent.futures
import logging
import threading
from collections import deque

from twisted.internet import defer

from .errors import WorkerStopped

__all__ = ['DeviceWorker', 'WorkerStopped']

log = logging.getLogger(__name__)

_NEW, _RUNNING, _STOPPED = 'new', 'running', 'stopped'



def _fn_name(fn):
    return getattr(fn, '__qualname__', None) or getattr(fn, '__name__', None) or repr(fn)


def _check_fn(fn):
    if not callable(fn):
        raise TypeError(f'fn must be callable, not {type(fn).__name__} {fn!r}')


class DeviceWorker:
    """One daemon thread, ``DeviceWorker-<name>``, runs the calls one at a time, in order.

    * **Threads.** ``start``/``stop``/``status``/``call``: any thread; ``call`` from the
      worker thread itself (a driver method, a hook) runs ``fn`` inline. ``call_deferred``:
      the reactor thread; its Deferred fires there (``reactor.callFromThread``).
    * **Errors** from ``fn`` reach the caller as the same object, its traceback showing
      the frames in the worker. A ``BaseException`` not an ``Exception`` also ends the worker.
    * **Timeout.** ``call(timeout=t)`` raises ``TimeoutError`` after ``t`` s; the call
      stays queued and may still run, its result dropped (as when a Deferred is cancelled).
    * **Hooks.** ``on_start()``/``on_stop()`` run in the worker thread, first and last. If
      ``on_start`` raises, ``start`` re-raises it and the worker stops (no ``on_stop``).
      Calls before ``start`` raise ``RuntimeError``.
    * **Shutdown.** ``stop`` refuses new calls at once (``WorkerStopped``; a failed Deferred
      for ``call_deferred``), fails the queued ones with ``WorkerStopped``, lets the call in
      progress finish for its caller, runs ``on_stop`` (errors logged), joins the thread
      (bounded; not from the worker itself). Idempotent; no restart. However the worker
      ends (stop, an error in a hook or in its loop), every caller still waiting is answered.
    """

    def __init__(self, name='device', *, on_start=None, on_stop=None, reactor=None):
        self.name = name
        self._on_start, self._on_stop, self._reactor = on_start, on_stop, reactor
        # _cond guards the fields below; notify_all on any change of _queue or _state.
        self._cond = threading.Condition(threading.Lock())
        self._state = _NEW          # _NEW -> _RUNNING -> _STOPPED, never back
        self._queue = deque()       # of (fn, args, kwargs, Future); empty once _STOPPED
        self._busy = None           # queue item in progress; set only by the worker thread
        self._calls = 0             # queued calls finished (inline calls not counted)
        self._thread = None         # set once, in start(), before the thread runs
        self._started = threading.Event()   # set once on_start has returned or raised
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
        self._thread.start()
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
            if not timeout > 0:     # also refuses NaN
                raise ValueError(f'timeout must be None or a number > 0, not {timeout!r}')
            timeout = min(timeout, threading.TIMEOUT_MAX)
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)     # inline: this thread already owns the driver
        future = self._submit(fn, args, kwargs)
        try:        # waits; raises TimeoutError only if not done (fn may raise one too)
            future.exception(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f'DeviceWorker {self.name!r}: {_fn_name(fn)} not done within '
                               f'{timeout} s (it stays queued and may still run)') from None
        return future.result()             # or re-raises fn's own exception object

    def call_deferred(self, fn, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)``; return a Deferred firing with its outcome."""
        _check_fn(fn)
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        reactor, d = self._reactor, defer.Deferred()

        def fire(f):    # on the reactor thread; Failure(error) keeps its traceback
            if f.exception() is None:
                d.callback(f.result())
            else:
                d.errback(f.exception())
        try:
            future = self._submit(fn, args, kwargs)
        except WorkerStopped as e:
            return defer.fail(e)
        future.add_done_callback(lambda f: reactor.callFromThread(fire, f))
        return d

    def stop(self, timeout=10):
        """Refuse new calls, fail queued ones, run ``on_stop``, join the thread."""
        self._close()
        if self._thread not in (None, threading.current_thread()):
            self._thread.join(timeout)

    def status(self):
        """A snapshot: name, running, queued, calls, busy_with, thread."""
        with self._cond:
            return dict(name=self.name, running=self._state is _RUNNING, queued=len(self._queue),
                        calls=self._calls, busy_with=self._busy and _fn_name(self._busy[0]),
                        thread=f'DeviceWorker-{self.name}')

    def __repr__(self):
        return f'<DeviceWorker {self.name!r} {self._state}, {len(self._queue)} queued>'

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _submit(self, fn, args, kwargs):
        future = concurrent.futures.Future()
        with self._cond:
            if self._state is _NEW:
                raise RuntimeError(f'DeviceWorker {self.name!r} is not started')
            if self._state is _STOPPED:
                raise WorkerStopped(f'DeviceWorker {self.name!r} is stopped')
            self._queue.append((fn, args, kwargs, future))
            self._cond.notify_all()
        return future

    def _close(self):
        """Refuse new calls, fail the queued ones; from any thread, any number of times."""
        with self._cond:
            self._state = _STOPPED
            pending, self._queue = self._queue, deque()
            self._cond.notify_all()
        for fn, _, _, future in pending:
            future.set_exception(WorkerStopped(
                f'DeviceWorker {self.name!r} stopped before running {_fn_name(fn)}'))

    def _run(self):
        try:
            if self._on_start is not None:
                self._on_start()
            self._started.set()
            while True:
                with self._cond:
                    while not self._queue and self._state is _RUNNING:
                        self._cond.wait()
                    if self._state is not _RUNNING:
                        break
                    fn, args, kwargs, future = self._busy = self._queue.popleft()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as e:
                    future.set_exception(e)
                    if not isinstance(e, Exception):
                        raise       # SystemExit & co: the caller is told, the worker ends
                else:
                    future.set_result(result)
                with self._cond:
                    self._busy = None
                    self._calls += 1
        except BaseException as e:
            if self._started.is_set():
                log.exception('DeviceWorker %r failed and is stopped', self.name)
            else:
                self._start_error = e
        finally:
            self._close()
            with self._cond:
                busy, self._busy = self._busy, None
            if busy is not None and not busy[3].done():    # never leave its caller waiting
                busy[3].set_exception(WorkerStopped(
                    f'DeviceWorker {self.name!r} stopped while running {_fn_name(busy[0])}'))
            if self._started.is_set() and self._on_stop is not None:
                try:
                    self._on_stop()
                except Exception:
                    log.exception('on_stop of DeviceWorker %r failed', self.name)
            self._started.set()     # after a failed on_start: start() may now raise
