"""The failure patterns of ocs 0.12.1's TimeoutLock, replayed against both locks.

Each scenario runs twice: against ``ocs.ocs_twisted.TimeoutLock`` it shows the
bug still exists in the baseline (so the scenario really provokes it), and
against ``ocs_locking.TimeoutLock`` it shows the bug is gone.
"""
import threading
import time

from ocs.ocs_twisted import TimeoutLock as OcsTimeoutLock

from ocs_locking import NotOwner, TimeoutLock

from ..support import WAIT


def _started(fn, *args):
    """Run fn in a thread; return (thread, result-list, started-event)."""
    out = []
    started = threading.Event()

    def run():
        started.set()
        out.append(fn(*args))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(WAIT)
    return t, out


def _until(pred, what):
    """Bounded wait for a state only observable by polling (ocs has no events)."""
    deadline = time.monotonic() + WAIT
    while not pred():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.001)


def _blocked_in_acquire(t):
    """True once thread t sits inside a lock acquire (seen in its frame)."""
    import sys
    frame = sys._current_frames().get(t.ident)
    while frame is not None:
        if frame.f_code.co_name in ('acquire', '_wait'):
            return True
        frame = frame.f_back
    return False


def _other_release_leak(lock_cls):
    """Process P holds via acquire_timeout; task T waits; P's re-take fails.

    Returns (number of holders at once observed, what the releases raised).
    """
    lock = lock_cls()
    t_has_it = threading.Event()
    p_done = threading.Event()
    t_release_error = []

    def task():
        assert lock.acquire(timeout=WAIT, job='task')
        t_has_it.set()
        assert p_done.wait(WAIT)
        try:
            lock.release()
        except RuntimeError as e:
            t_release_error.append(str(e))

    with lock.acquire_timeout(timeout=0, job='acq') as acquired:
        assert acquired
        t = threading.Thread(target=task, daemon=True)
        t.start()
        _until(lambda: _blocked_in_acquire(t), 'task to wait')
        lock.release_and_acquire(timeout=0)   # fails: the task now holds it
        assert t_has_it.wait(WAIT)
    # P left its with-block. Can a third operation now take the lock while
    # the task still believes it holds it?
    third = lock.acquire(timeout=0, job='third')
    p_done.set()
    t.join(WAIT)
    if third:   # the task's release freed the third's hold; now the third crashes
        try:
            lock.release()
        except RuntimeError as e:
            t_release_error.append(str(e))
    return (2 if third else 1), t_release_error


def test_ocs_baseline_acquire_timeout_releases_another_operations_hold():
    """When a process leaves acquire_timeout after a failed release_and_acquire,
    ocs releases the task's hold: a third operation gets in while the task
    still talks to the device, and a later release crashes with 'release
    unlocked lock'."""
    holders, errors = _other_release_leak(OcsTimeoutLock)
    assert holders == 2
    assert errors == ['release unlocked lock']


def test_TimeoutLock_acquire_timeout_never_releases_another_operations_hold():
    """When a process leaves acquire_timeout after a failed release_and_acquire,
    ours leaves the task's hold alone: nobody else gets in, its release works."""
    holders, errors = _other_release_leak(TimeoutLock)
    assert holders == 1
    assert errors == []


def _release_by_stranger(lock_cls):
    lock = lock_cls()
    assert lock.acquire(timeout=0, job='acq')
    t, out = _started(lambda: _try(lock.release))
    t.join(WAIT)
    return out[0]


def _try(fn):
    try:
        fn()
        return 'released'
    except RuntimeError as e:
        return type(e)


def test_ocs_baseline_anyone_can_release():
    """When a thread that never acquired releases the lock, ocs lets it."""
    assert _release_by_stranger(OcsTimeoutLock) == 'released'


def test_TimeoutLock_only_holder_can_release():
    """When a thread that never acquired releases the lock, ours raises NotOwner."""
    assert _release_by_stranger(TimeoutLock) is NotOwner


def _served_before_retake(lock_cls, n=3, trials=20):
    """Holder calls release_and_acquire with n threads waiting; count how many
    of them got the lock before the holder had it back, worst trial."""
    worst = n
    for _ in range(trials):
        lock = lock_cls()
        assert lock.acquire(timeout=0, job='acq')
        served = []
        threads = []
        for i in range(n):
            def waiter(i=i):
                if lock.acquire(timeout=WAIT, job=f'w{i}'):
                    served.append(i)
                    lock.release()
            t = threading.Thread(target=waiter, daemon=True)
            t.start()
            _until(lambda t=t: _blocked_in_acquire(t), 'waiter to block')
            threads.append(t)
        assert lock.release_and_acquire(timeout=WAIT)
        before = len(served)
        lock.release()
        for t in threads:
            t.join(WAIT)
        worst = min(worst, before)
    return worst


def test_TimeoutLock_release_and_acquire_lets_every_waiter_in():
    """When the holder calls release_and_acquire with 3 threads waiting, ours
    serves all 3 before the holder re-takes, every trial.

    ocs only promises one; on Linux its futex wake order often serves all
    three anyway, so there is no baseline test that would reliably fail."""
    assert _served_before_retake(TimeoutLock) == 3


def _double_timeout(lock_cls, timeout=1.0):
    """A waiter W1 gives up just before our call's deadline; how long do we wait?"""
    lock = lock_cls()
    release_holder = threading.Event()

    def holder():
        assert lock.acquire(timeout=0, job='holder')
        release_holder.wait(WAIT)
        lock.release()
    th, _ = _started(holder)
    _until(lambda: lock.job == 'holder', 'holder to hold')
    t1, _ = _started(lock.acquire, timeout * 0.95, 'w1')
    _until(lambda: _blocked_in_acquire(t1), 'w1 to block')
    t0 = time.monotonic()
    got = lock.acquire(timeout=timeout, job='me')
    elapsed = time.monotonic() - t0
    t1.join(WAIT)
    release_holder.set()
    th.join(WAIT)
    return got, elapsed


def test_ocs_baseline_applies_the_timeout_twice():
    """When a waiter ahead gives up just before our deadline, ocs's
    timeout=1.0 waits almost 2 s (one timeout per internal lock)."""
    got, elapsed = _double_timeout(OcsTimeoutLock)
    assert got is False
    assert elapsed >= 1.5


def test_TimeoutLock_applies_one_deadline():
    """When a waiter ahead gives up just before our deadline, ours gives up
    after 1 s for timeout=1.0, not after the ~2 s ocs takes (a deadline is a
    time: the bound sits between the two, far from both; the exact overshoot
    is measured in benchmarks/lock_bench.py, and the fake-clock tests of
    test_lock.py pin the deadline exactly)."""
    got, elapsed = _double_timeout(TimeoutLock)
    assert got is False
    assert 1.0 <= elapsed < 1.9


def _reactor_task_on_a_free_lock(lock, reactor_thread):
    """socs ibootbar's pattern: a ``blocking=False`` task (run on the reactor
    thread) doing ``with lock.acquire_timeout(timeout=3, job=...)``."""
    def set_outlet():
        with lock.acquire_timeout(timeout=3, job='set_outlet') as acquired:
            return acquired, lock.job
    return reactor_thread.call(set_outlet), lock.job


def test_ocs_baseline_serves_a_free_lock_on_the_reactor_thread(reactor_thread):
    """When a reactor task takes a free ocs lock with timeout=3, it gets it at once."""
    assert _reactor_task_on_a_free_lock(OcsTimeoutLock(), reactor_thread) == \
        ((True, 'set_outlet'), None)


def test_TimeoutLock_serves_a_free_lock_on_the_reactor_thread_like_ocs(reactor_thread):
    """When the same reactor task takes a free ocs_locking lock, it gets it at
    once too (the strict refusal of every reactor-thread wait made it fail
    with ReactorBlockingError)."""
    assert _reactor_task_on_a_free_lock(TimeoutLock(), reactor_thread) == \
        ((True, 'set_outlet'), None)
