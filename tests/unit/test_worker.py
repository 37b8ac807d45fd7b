"""DeviceWorker: one thread owns a driver; calls from any thread or the reactor run there,
errors come back with their traceback, and shutdown answers every caller.

No sleeps: the tests wait on Events, Barriers, futures and the worker's own condition,
each wait bounded by WAIT."""
import concurrent.futures
import logging
import math
import re
import threading
import traceback

import pytest

from ocs_locking.worker import DeviceWorker, WorkerStopped

from ..support import WAIT, FakeReactor


class SignallingReactor(FakeReactor):
    """A FakeReactor that also sets an Event when the worker hands it a result."""

    def __init__(self):
        super().__init__()
        self.handed = threading.Event()

    def callFromThread(self, f, *args, **kwargs):
        super().callFromThread(f, *args, **kwargs)
        self.handed.set()


class DriverAbort(BaseException):
    """A BaseException that is not an Exception, as SystemExit is."""


@pytest.fixture
def reactor():
    return SignallingReactor()


@pytest.fixture
def worker(reactor):
    w = DeviceWorker('dev', reactor=reactor)
    w.start()
    yield w
    w.stop(WAIT)


@pytest.fixture
def gate(worker):
    """An Event that blocked calls wait on; set at teardown, before the worker stops."""
    ev = threading.Event()
    yield ev
    ev.set()


@pytest.fixture
def pool():
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix='caller')
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def logged_errors(caplog):
    """The error lines ocs_locking.worker logs (stdlib logging)."""
    caplog.set_level(logging.ERROR, logger='ocs_locking.worker')
    return caplog


def wait_queued(worker, n):
    """Wait until n calls are queued, on the condition the worker notifies at each enqueue."""
    with worker._cond:
        assert worker._cond.wait_for(lambda: len(worker._queue) == n, WAIT), worker.status()


def block_worker(worker, pool, gate):
    """Occupy the worker with a call that waits for gate; return that call's future."""
    entered = threading.Event()

    def slow():
        entered.set()
        assert gate.wait(WAIT)
        return 'slow done'
    first = pool.submit(worker.call, slow)
    assert entered.wait(WAIT)
    return first


def test_DeviceWorker_calls_from_many_threads_run_on_the_one_worker_thread(worker):
    """When several threads call at once, every fn runs on the single worker
    thread, named after the worker, and each caller gets its own result."""
    barrier = threading.Barrier(4)
    seen, results = [], {}

    def where(i):
        seen.append((threading.get_ident(), threading.current_thread().name))
        return i * 10

    def caller(i):
        barrier.wait(WAIT)
        results[i] = worker.call(where, i, timeout=WAIT)
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert results == {0: 0, 1: 10, 2: 20, 3: 30}
    assert len(set(seen)) == 1
    [(ident, name)] = set(seen)
    assert name == 'DeviceWorker-dev'
    assert ident not in {t.ident for t in threads} | {threading.get_ident()}


def test_DeviceWorker_call_from_the_worker_thread_runs_inline(worker):
    """When a call running on the worker calls the worker again (a driver
    method calling another), the inner call runs inline at once, no deadlock."""
    idents = []

    def inner(x):
        idents.append(threading.get_ident())
        return x + 1

    def outer():
        idents.append(threading.get_ident())
        return worker.call(inner, 1, timeout=WAIT) * 2
    assert worker.call(outer, timeout=WAIT) == 4
    assert len(idents) == 2 and idents[0] == idents[1] != threading.get_ident()
    assert worker.status()['calls'] == 1    # inline calls are not queued calls


def test_DeviceWorker_exception_comes_back_with_its_traceback(worker):
    """When fn raises, the caller gets the very same exception object, and its
    traceback shows the caller's frame and then the frames inside the worker."""
    raised = []

    def explode_in_driver():
        err = ValueError('no reply from device')
        raised.append(err)
        raise err
    with pytest.raises(ValueError, match=r'^no reply from device$') as info:
        worker.call(explode_in_driver)
    assert info.value is raised[0]
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert names[-1] == 'explode_in_driver'
    assert names.index('call') < names.index('_run') < names.index('explode_in_driver')
    assert worker.call(lambda: 'still works') == 'still works'


def test_DeviceWorker_timeout_error_raised_by_fn_is_not_taken_for_a_call_timeout(worker):
    """When fn itself raises TimeoutError (a socket timeout in the driver), the
    caller gets that very error, not the worker's own call-timeout message."""
    raised = []

    def read_socket():
        raised.append(TimeoutError('timed out'))
        raise raised[-1]
    for timeout in (None, WAIT):
        with pytest.raises(TimeoutError, match=r'^timed out$') as info:
            worker.call(read_socket, timeout=timeout)
        assert info.value is raised[-1]


def test_DeviceWorker_call_deferred_fires_on_the_reactor_with_the_result(worker, reactor):
    """When reactor code uses call_deferred, fn runs on the worker thread and
    the Deferred fires only through reactor.callFromThread, with the result."""
    out, ran_on = [], []

    def read(x, scale):
        ran_on.append(threading.current_thread().name)
        return x * scale
    d = worker.call_deferred(read, 2, scale=3)
    d.addBoth(lambda r: out.append((r, threading.get_ident())))
    assert reactor.handed.wait(WAIT)
    assert out == []                        # not fired from the worker thread
    reactor.advance(0)
    assert out == [(6, threading.get_ident())]
    assert ran_on == ['DeviceWorker-dev']


def test_DeviceWorker_call_deferred_errbacks_with_the_failure(worker, reactor):
    """When fn raises under call_deferred, the Deferred errbacks with a Failure
    wrapping the same exception, with the frames inside the worker."""
    raised, out = [], []

    def fail_in_driver():
        raised.append(KeyError('channel 7'))
        raise raised[0]
    worker.call_deferred(fail_in_driver).addErrback(out.append)
    assert reactor.handed.wait(WAIT)
    reactor.advance(0)
    [failure] = out
    assert failure.check(KeyError) and failure.value is raised[0]
    assert failure.frames[-1][0] == 'fail_in_driver'


def test_DeviceWorker_stop_fails_queued_calls_and_lets_the_running_one_finish(
        worker, gate, pool, reactor):
    """When stop is called while a call runs and two more wait, the two queued
    calls fail with WorkerStopped (they never run), new calls fail at once, and
    the running call finishes and returns its result to its caller."""
    ran = []
    first = block_worker(worker, pool, gate)

    def queued_a():
        ran.append('a')

    def queued_b():
        ran.append('b')
    a, b = pool.submit(worker.call, queued_a), pool.submit(worker.call, queued_b)
    wait_queued(worker, 2)
    stopper = pool.submit(worker.stop, WAIT)
    for fut, name in ((a, 'queued_a'), (b, 'queued_b')):
        err = fut.exception(WAIT)
        assert isinstance(err, WorkerStopped)
        assert re.match(rf"^DeviceWorker 'dev' stopped before running \S+\.{name}$", str(err))
    assert not first.done()
    with pytest.raises(WorkerStopped, match=r"^DeviceWorker 'dev' is stopped$"):
        worker.call(queued_a)
    out = []
    worker.call_deferred(queued_a).addErrback(out.append)
    assert out[0].check(WorkerStopped) and str(out[0].value) == "DeviceWorker 'dev' is stopped"
    status = worker.status()
    assert status['running'] is False and status['queued'] == 0
    assert status['busy_with'].endswith('slow')
    gate.set()
    assert first.result(WAIT) == 'slow done'
    assert stopper.result(WAIT) is None
    assert ran == [] and worker.status()['busy_with'] is None


def test_DeviceWorker_stop_from_inside_the_worker_does_not_deadlock(reactor):
    """When a call on the worker thread stops its own worker, stop returns at
    once (no self-join), the call returns its result, on_stop runs after it
    and the thread ends; stop again is a no-op."""
    stopped = threading.Event()
    w = DeviceWorker('dev', on_stop=stopped.set, reactor=reactor).start()
    me = []

    def shut_down():
        me.append(threading.current_thread())
        w.stop()
        return w.status()['running']
    assert w.call(shut_down, timeout=WAIT) is False
    assert stopped.wait(WAIT)
    me[0].join(WAIT)
    assert not me[0].is_alive()
    w.stop(WAIT)
    with pytest.raises(WorkerStopped):
        w.call(shut_down)


def test_DeviceWorker_hooks_run_in_the_worker_thread_first_and_last(reactor):
    """When the worker is used as a context manager, on_start runs in the
    worker thread before any call (and may call the worker inline), on_stop
    runs there after the last call, and the thread is gone on exit."""
    events = []

    def record(what):
        events.append((what, threading.current_thread().name))

    def on_start():
        w.call(record, 'on_start')

    w = DeviceWorker('dev', on_start=on_start, on_stop=lambda: record('on_stop'),
                     reactor=reactor)
    with w as entered:
        assert entered is w
        w.call(record, 'call')
    assert events == [('on_start', 'DeviceWorker-dev'), ('call', 'DeviceWorker-dev'),
                      ('on_stop', 'DeviceWorker-dev')]
    assert 'DeviceWorker-dev' not in [t.name for t in threading.enumerate()]
    assert w.status()['running'] is False


def test_DeviceWorker_on_start_failure_fails_start_and_stops_the_worker(reactor):
    """When on_start raises, start re-raises the same error with its traceback
    from the worker thread, on_stop is not run, and the worker is stopped."""
    raised, stops = [], []

    def open_device():
        raised.append(OSError('no device at /dev/ttyUSB0'))
        raise raised[0]
    w = DeviceWorker('dev', on_start=open_device, on_stop=lambda: stops.append(1),
                     reactor=reactor)
    with pytest.raises(OSError, match=r'^no device at /dev/ttyUSB0$') as info:
        w.start()
    assert info.value is raised[0]
    assert traceback.extract_tb(info.value.__traceback__)[-1].name == 'open_device'
    assert stops == [] and w.status()['running'] is False
    assert 'DeviceWorker-dev' not in [t.name for t in threading.enumerate()]
    with pytest.raises(WorkerStopped, match=r"^DeviceWorker 'dev' is stopped$"):
        w.call(print)
    with pytest.raises(RuntimeError, match=r"^DeviceWorker 'dev' is already stopped; "
                                           r"start\(\) may be called once$"):
        w.start()


def test_DeviceWorker_call_timeout_raises_but_the_call_may_run_later(worker, gate, pool):
    """When a call is not done within its timeout, TimeoutError names the
    worker and fn; the call stays queued and runs once the worker is free."""
    block_worker(worker, pool, gate)
    ran = threading.Event()

    def late():
        ran.set()
    with pytest.raises(TimeoutError, match=r"^DeviceWorker 'dev': .*late not done within "
                                           r"0\.05 s \(it stays queued and may still run\)$"):
        worker.call(late, timeout=0.05)
    assert worker.status()['queued'] == 1
    gate.set()
    assert ran.wait(WAIT)


@pytest.mark.parametrize('kwargs, error, message', [
    ({'fn': 'nope'}, TypeError, r"^fn must be callable, not str 'nope'$"),
    ({'timeout': 0}, ValueError, r'^timeout must be None or a number > 0, not 0$'),
    ({'timeout': -1.5}, ValueError, r'^timeout must be None or a number > 0, not -1\.5$'),
    ({'timeout': math.nan}, ValueError, r'^timeout must be None or a number > 0, not nan$'),
    ({'timeout': '1'}, TypeError, r"^timeout must be None or a number > 0, not '1'$"),
    ({'timeout': True}, TypeError, r'^timeout must be None or a number > 0, not True$'),
])
def test_DeviceWorker_bad_arguments_raise_before_queueing(worker, kwargs, error, message):
    """When call gets a non-callable fn or a bad timeout, it raises at once
    with a one-line message and nothing is queued or run."""
    kwargs = {'fn': lambda: 1, **kwargs}
    with pytest.raises(error, match=message):
        worker.call(kwargs.pop('fn'), **kwargs)
    with pytest.raises(TypeError, match=r'^fn must be callable, not int 42$'):
        worker.call_deferred(42)
    assert worker.status()['queued'] == 0 and worker.status()['calls'] == 0


def test_DeviceWorker_misuse_of_start_and_calls_before_start_raise(reactor):
    """When a worker is called before start, or started twice, RuntimeError
    says so; stopping a worker never started is allowed and final."""
    w = DeviceWorker('dev', reactor=reactor)
    with pytest.raises(RuntimeError, match=r"^DeviceWorker 'dev' is not started$"):
        w.call(print)
    with pytest.raises(RuntimeError, match=r"^DeviceWorker 'dev' is not started$"):
        w.call_deferred(print)
    w.start()
    with pytest.raises(RuntimeError, match=r"^DeviceWorker 'dev' is already running; "):
        w.start()
    w.stop(WAIT)
    w.stop(WAIT)
    never = DeviceWorker('never')
    never.stop()
    with pytest.raises(RuntimeError, match=r"^DeviceWorker 'never' is already stopped; "):
        never.start()


def test_DeviceWorker_status_reports_name_state_queue_and_progress(reactor, pool):
    """When status is asked before, during and after work, it reports the
    name, running, queued and finished calls, the fn in progress and the thread."""
    w = DeviceWorker('dev', reactor=reactor)
    assert w.status() == {'name': 'dev', 'running': False, 'queued': 0, 'calls': 0,
                          'busy_with': None, 'thread': 'DeviceWorker-dev'}
    w.start()
    gate = threading.Event()
    try:
        first = block_worker(w, pool, gate)
        later = pool.submit(w.call, abs, -3)
        wait_queued(w, 1)
        status = w.status()
        assert status['busy_with'].endswith('block_worker.<locals>.slow')
        assert (status['running'], status['queued'], status['calls']) == (True, 1, 0)
        assert repr(w) == "<DeviceWorker 'dev' running, 1 queued>"
    finally:
        gate.set()
    assert first.result(WAIT) == 'slow done' and later.result(WAIT) == 3
    w.stop(WAIT)
    assert w.status() == {'name': 'dev', 'running': False, 'queued': 0, 'calls': 2,
                          'busy_with': None, 'thread': 'DeviceWorker-dev'}


def test_DeviceWorker_base_exception_in_fn_ends_the_worker_and_answers_everyone(
        worker, gate, pool, logged_errors):
    """When fn raises a BaseException that is not an Exception, its caller gets
    it, the worker ends and logs why, and the calls queued behind it fail with
    WorkerStopped instead of waiting for ever."""
    entered = threading.Event()

    def abort():
        entered.set()
        assert gate.wait(WAIT)
        raise DriverAbort('driver gave up')
    first = pool.submit(worker.call, abort)
    assert entered.wait(WAIT)
    queued = [pool.submit(worker.call, abs, -i) for i in (1, 2)]
    wait_queued(worker, 2)
    gate.set()
    assert isinstance(first.exception(WAIT), DriverAbort)
    for fut in queued:
        assert isinstance(fut.exception(WAIT), WorkerStopped)
    with pytest.raises(WorkerStopped, match=r"^DeviceWorker 'dev' is stopped$"):
        worker.call(abs, 1)
    assert any(r.levelno == logging.ERROR and r.exc_info
               and r.getMessage() == "DeviceWorker 'dev' failed and is stopped"
               for r in logged_errors.records)


def test_DeviceWorker_failing_on_stop_is_logged_and_the_worker_ends(reactor, logged_errors):
    """When on_stop raises, the error is logged, stop returns, and the worker
    thread is gone."""
    def close_device():
        raise OSError('already closed')
    w = DeviceWorker('dev', on_stop=close_device, reactor=reactor).start()
    assert w.call(abs, -1) == 1
    w.stop(WAIT)
    assert 'DeviceWorker-dev' not in [t.name for t in threading.enumerate()]
    assert any(r.levelno == logging.ERROR and r.exc_info
               and r.getMessage() == "on_stop of DeviceWorker 'dev' failed"
               for r in logged_errors.records)


def test_DeviceWorker_stress_many_threads_one_worker_exact_counter(worker):
    """When 4 threads make 500 calls each, every call runs on the worker thread
    and a counter that is not thread-safe ends exactly at 2000."""
    counter = {'n': 0}
    idents = set()
    barrier = threading.Barrier(4)
    errors = []

    def bump():
        n = counter['n']
        idents.add(threading.get_ident())
        counter['n'] = n + 1

    def hammer():
        try:
            barrier.wait(WAIT)
            for _ in range(500):
                worker.call(bump, timeout=WAIT)
        except BaseException as e:  # reported below, not lost in the thread
            errors.append(e)
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert counter['n'] == 2000 and worker.status()['calls'] == 2000
    assert len(idents) == 1 and idents.isdisjoint(t.ident for t in threads)
