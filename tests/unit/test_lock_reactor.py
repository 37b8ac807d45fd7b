"""TimeoutLock on the Twisted reactor: refusal of blocking waits, and the
Deferred path (fake clock for exact timing, real reactor for threads)."""
import threading

import pytest
from twisted.internet import defer, task

from ocs_locking import LockClosed, ReactorBlockingError, TimeoutLock

from ..support import WAIT, EventRecorder, ThreadActor


@pytest.fixture
def clock_lock(fake_reactor):
    return TimeoutLock(name='hw', reactor=fake_reactor)


def _result(d):
    out = []
    d.addBoth(out.append)
    return out


@pytest.mark.parametrize('call', [
    lambda lock: lock.acquire(1),
    lambda lock: lock.acquire(-1),
    lambda lock: lock.acquire(),            # default_timeout 5
    lambda lock: lock.acquire_timeout(3).__enter__(),
    lambda lock: lock.hold(3).__enter__(),
], ids=['acquire-1s', 'acquire-forever', 'acquire-default', 'acquire_timeout', 'hold'])
def test_TimeoutLock_blocking_acquire_on_reactor_thread_raises_at_once(reactor_thread, call):
    """When reactor code asks for a blocking wait, ReactorBlockingError is
    raised at once (ocs freezes the whole agent instead), even if the lock is
    free, and the lock is unchanged."""
    lock = TimeoutLock(default_timeout=5, name='hw')
    with pytest.raises(ReactorBlockingError,
                       match=r"^acquire\(timeout=.*\) on TimeoutLock 'hw' would block the "
                             r"reactor thread; use acquire_deferred\(\) or timeout=0$"):
        reactor_thread.call(call, lock)
    assert lock.status().holder is None and lock.status().counters.acquired == 0


def test_TimeoutLock_release_and_acquire_on_reactor_thread_raises(reactor_thread):
    """When reactor code holding the lock calls release_and_acquire with a
    timeout, it is refused and the reactor keeps the lock."""
    lock = TimeoutLock(name='hw')
    assert reactor_thread.call(lock.acquire, 0, 'r')
    with pytest.raises(ReactorBlockingError, match=r"^release_and_acquire\(timeout=1\)"):
        reactor_thread.call(lock.release_and_acquire, 1)
    assert lock.job == 'r'
    reactor_thread.call(lock.release)


def test_TimeoutLock_try_once_on_reactor_thread_is_allowed(reactor_thread):
    """When reactor code uses timeout=0 it gets a plain answer, as in ocs."""
    lock = TimeoutLock(name='hw')
    assert reactor_thread.call(lock.acquire, 0, 'r') is True
    reactor_thread.call(lock.release)


def test_TimeoutLock_acquire_deferred_off_reactor_thread_raises(reactor_thread):
    """When a worker thread calls acquire_deferred on a lock using the running
    global reactor, it is told to use acquire() instead."""
    lock = TimeoutLock(name='hw')
    with pytest.raises(RuntimeError, match=r"must be called from the reactor thread; "
                                           r"worker threads use acquire\(\)$"):
        lock.acquire_deferred(1)


def test_TimeoutLock_acquire_deferred_when_free_fires_true_at_once(clock_lock):
    """When the lock is free, the Deferred has already fired True."""
    assert _result(clock_lock.acquire_deferred(1, job='r')) == [True]
    assert clock_lock.job == 'r'


def test_TimeoutLock_acquire_deferred_times_out_at_its_deadline(clock_lock, fake_reactor):
    """When the lock stays busy, the Deferred fires False exactly at the
    timeout, not before (one deadline, measured on the reactor's clock)."""
    assert clock_lock.acquire(0, job='holder')
    out = _result(clock_lock.acquire_deferred(1.0, job='r'))
    fake_reactor.advance(0.999)
    assert out == []
    fake_reactor.advance(0.001)
    assert out == [False]
    assert clock_lock.status().waiters == ()


def test_TimeoutLock_acquire_deferred_granted_on_release(clock_lock, fake_reactor):
    """When the holder releases, the first Deferred waiter fires True on the
    next reactor turn and its timeout is cancelled."""
    assert clock_lock.acquire(0, job='holder')
    out = _result(clock_lock.acquire_deferred(5, job='r'))
    clock_lock.release()
    assert clock_lock.job == 'r' and out == []   # granted, delivery pending
    fake_reactor.advance(0)
    assert out == [True]
    assert fake_reactor.getDelayedCalls() == []


def test_TimeoutLock_acquire_deferred_try_once_when_busy_fires_false(clock_lock):
    """When the lock is busy and timeout=0, the Deferred fires False at once."""
    assert clock_lock.acquire(0)
    assert _result(clock_lock.acquire_deferred(0)) == [False]


def test_TimeoutLock_acquire_deferred_cancel_withdraws_request(clock_lock, fake_reactor):
    """When a waiting Deferred is cancelled it leaves the queue, fails with
    CancelledError and its timeout is cancelled."""
    assert clock_lock.acquire(0)
    d = clock_lock.acquire_deferred(5, job='r')
    out = _result(d)
    d.cancel()
    assert out[0].check(defer.CancelledError)
    assert clock_lock.status().waiters == ()
    assert clock_lock.status().counters.cancelled == 1
    assert fake_reactor.getDelayedCalls() == []


def test_TimeoutLock_acquire_deferred_cancel_after_grant_passes_lock_on(clock_lock, fake_reactor):
    """When a Deferred is cancelled after it was granted but before delivery,
    the lock goes to the next waiter instead of leaking."""
    assert clock_lock.acquire(0, job='holder')
    d1 = clock_lock.acquire_deferred(5, job='r1')
    out1 = _result(d1)
    out2 = _result(clock_lock.acquire_deferred(5, job='r2'))
    clock_lock.release()            # r1 granted, not yet delivered
    d1.cancel()
    assert out1[0].check(defer.CancelledError)
    assert clock_lock.job == 'r2'
    fake_reactor.advance(0)
    assert out2 == [True]


def test_TimeoutLock_acquire_deferred_close_fails_waiters(clock_lock, fake_reactor):
    """When the lock is closed, Deferred waiters errback with LockClosed."""
    assert clock_lock.acquire(0)
    out = _result(clock_lock.acquire_deferred(-1))
    clock_lock.close()
    fake_reactor.advance(0)
    assert out[0].check(LockClosed)
    assert out[0].getErrorMessage() == "TimeoutLock 'hw' was closed while waiting"
    assert _result(clock_lock.acquire_deferred(1))[0].check(LockClosed)


def test_TimeoutLock_reactor_keeps_running_while_reactor_code_waits(reactor_thread):
    """When reactor code waits for a lock a thread holds, the reactor goes on
    serving other work (a heartbeat keeps beating), and the waiter gets the
    lock when the thread releases."""
    lock = TimeoutLock(name='hw')
    rec = EventRecorder(lock)
    holder = ThreadActor(lock, 'holder')
    assert holder.acquire(0).result(WAIT)
    beats = []
    five_beats = threading.Event()

    def beat():
        beats.append(1)
        if len(beats) >= 5:
            five_beats.set()
    hb = task.LoopingCall(beat)
    waited = []

    def start():
        hb.start(0.01)
        lock.acquire_deferred(WAIT, job='reactor-op').addCallback(waited.append)
    reactor_thread.call(start)
    rec.wait_for('waiting')
    assert five_beats.wait(WAIT)
    assert waited == []
    holder.release()
    rec.wait_for('acquired', 2)
    reactor_thread.call(lambda: None)   # let the delivery run
    reactor_thread.call(hb.stop)
    assert waited == [True]
    reactor_thread.call(lock.release)
    holder.close()
