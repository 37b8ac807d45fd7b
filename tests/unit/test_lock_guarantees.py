"""One test per guarantee of TimeoutLock beyond the shared contract suite."""
import inspect
import math
import threading

import pytest
from ocs.ocs_twisted import TimeoutLock as OcsTimeoutLock

from ocs_locking import LockClosed, LockTimeout, NotOwner, TimeoutLock

from ..support import WAIT, EventRecorder, ThreadActor


@pytest.fixture
def other(lock):
    actor = ThreadActor(lock, 'other')
    yield actor
    actor.close()


# -- drop-in -----------------------------------------------------------------

@pytest.mark.parametrize('method', ['__init__', 'acquire', 'release',
                                    'release_and_acquire', 'acquire_timeout'])
def test_TimeoutLock_dropin_keeps_ocs_arguments(method):
    """When code written for ocs's TimeoutLock calls ours, every positional and
    keyword argument it can pass has the same name, order and default."""
    ocs_params = list(inspect.signature(getattr(OcsTimeoutLock, method)).parameters.values())
    ours = inspect.signature(getattr(TimeoutLock, method)).parameters
    for i, p in enumerate(ocs_params):
        mine = list(ours.values())[i]
        assert (mine.name, mine.default) == (p.name, p.default)


def test_TimeoutLock_dropin_job_attribute_names_the_holder(lock):
    """When held, .job is the holder's job name; when free it is None."""
    assert lock.job is None
    with lock.acquire_timeout(0, job='acq') as acquired:
        assert acquired is True
        assert lock.job == 'acq'
    assert lock.job is None


def test_TimeoutLock_default_timeout_applies_when_None():
    """When timeout is None the lock's default_timeout is used."""
    lock = TimeoutLock(default_timeout=0.01)
    holder = ThreadActor(lock, 'h')
    assert holder.acquire(0).result(WAIT)
    assert lock.acquire() is False  # waited 0.01 s, not forever
    assert lock.status().counters.timed_out == 1
    holder.release()
    holder.close()


# -- owner-safe ----------------------------------------------------------------

def test_TimeoutLock_release_by_non_holder_raises_NotOwner(lock, other):
    """When a thread that does not hold the lock releases it, NotOwner is
    raised and the holder still holds."""
    assert other.acquire(0, job='acq').result(WAIT)
    with pytest.raises(NotOwner, match=r"^cannot release TimeoutLock 'hw': it is held by "
                                       r"job 'acq' in another thread; only the holder"):
        lock.release()
    assert lock.job == 'acq'
    assert isinstance(NotOwner('x'), RuntimeError)
    other.release()


def test_TimeoutLock_release_when_free_raises_NotOwner(lock):
    """When nobody holds the lock, release raises NotOwner ('it is not held')."""
    with pytest.raises(NotOwner, match=r"^cannot release TimeoutLock 'hw': it is not held$"):
        lock.release()


def test_TimeoutLock_release_and_acquire_by_non_holder_raises_NotOwner(lock, other):
    """When a non-holder calls release_and_acquire, NotOwner is raised and
    nothing changes."""
    assert other.acquire(0, job='acq').result(WAIT)
    with pytest.raises(NotOwner, match=r"^cannot release_and_acquire TimeoutLock 'hw'"):
        lock.release_and_acquire(1)
    assert lock.job == 'acq'
    other.release()


def test_TimeoutLock_reacquire_by_holder_raises_instead_of_deadlocking(lock):
    """When the holder waits for the lock it holds, it gets a RuntimeError at
    once instead of waiting for itself; a try-once just returns False."""
    assert lock.acquire(0, job='acq')
    with pytest.raises(RuntimeError, match=r"already held by this thread .*not re-entrant"):
        lock.acquire(-1)
    assert lock.acquire(0) is False
    lock.release()


def test_TimeoutLock_failed_release_and_acquire_leaves_caller_not_holding(lock, other):
    """When release_and_acquire cannot take the lock back in time, the caller
    does not hold it: the waiter it let in does."""
    rec = EventRecorder(lock)
    assert lock.acquire(0, job='acq')
    fut = other.acquire(WAIT, job='task')
    rec.wait_for('waiting')
    assert lock.release_and_acquire(0.01) is False
    assert fut.result(WAIT) is True
    assert lock.job == 'task'
    assert not lock.held_by_me()
    with pytest.raises(NotOwner):
        lock.release()
    other.release()


def test_TimeoutLock_acquire_timeout_exit_releases_nothing_after_failed_retake(lock, other):
    """When release_and_acquire fails inside ``with acquire_timeout``, leaving
    the block does not release the hold another operation now has."""
    rec = EventRecorder(lock)
    with lock.acquire_timeout(0, job='acq') as acquired:
        assert acquired
        fut = other.acquire(WAIT, job='task')
        rec.wait_for('waiting')
        assert lock.release_and_acquire(0.01) is False
    assert fut.result(WAIT) is True
    assert lock.job == 'task'
    assert lock.acquire(0) is False   # still held by 'task'
    other.release()


def test_TimeoutLock_acquire_timeout_releases_on_exception(lock):
    """When the body of acquire_timeout raises, the lock is released."""
    with pytest.raises(ZeroDivisionError):
        with lock.acquire_timeout(0, job='x') as acquired:
            assert acquired
            1 / 0
    assert lock.status().holder is None


# -- the misuse-proof form -----------------------------------------------------

def test_TimeoutLock_hold_raises_LockTimeout_when_busy(lock, other):
    """When hold() cannot acquire in time it raises LockTimeout naming the
    holder, so the body never runs unlocked."""
    assert other.acquire(0, job='acq').result(WAIT)
    ran = []
    with pytest.raises(LockTimeout, match=r"^could not acquire 'hw' held by 'acq' for "):
        with lock.hold(0, job='task'):
            ran.append(True)
    assert ran == []
    other.release()


def test_TimeoutLock_hold_releases_on_exit_and_exception(lock):
    """When the hold() body ends, normally or by exception, the lock is released."""
    with lock.hold(0, job='a') as held:
        assert held is lock and lock.job == 'a'
    assert lock.status().holder is None
    with pytest.raises(KeyError):
        with lock.hold(0, job='b'):
            raise KeyError('x')
    assert lock.status().holder is None


# -- cheap paths ---------------------------------------------------------------

def test_TimeoutLock_release_and_acquire_with_nobody_waiting_keeps_the_hold(lock):
    """When nobody waits, release_and_acquire returns True without letting go:
    same grant token, no events."""
    rec = EventRecorder(lock)
    assert lock.acquire(0, job='acq')
    token = lock.status().holder.token
    n = len(rec.events)
    assert all(lock.release_and_acquire(5) for _ in range(100))
    assert lock.status().holder.token == token
    assert len(rec.events) == n
    lock.release()


# -- one deadline ----------------------------------------------------------------

def test_TimeoutLock_one_deadline_even_when_queue_moves(lock):
    """When another waiter gives up just before our deadline, we still give
    up at our own deadline (ocs restarts the timeout and waits twice as long)."""
    import time
    holder = ThreadActor(lock, 'holder')
    early = ThreadActor(lock, 'early')
    rec = EventRecorder(lock)
    assert holder.acquire(0).result(WAIT)
    early_fut = early.acquire(0.9)
    rec.wait_for('waiting')
    t0 = time.monotonic()
    assert lock.acquire(1.0) is False
    elapsed = time.monotonic() - t0
    assert early_fut.result(WAIT) is False
    assert elapsed < 1.9, f'waited {elapsed:.2f} s for a 1.0 s timeout'
    holder.release()
    holder.close()
    early.close()


# -- bad arguments -------------------------------------------------------------

def _state(st):
    holder = st.holder and (st.holder.job, st.holder.token, st.holder.thread)
    return holder, [w.job for w in st.waiters], st.counters, st.closed


BAD_TIMEOUTS = [
    (-2, ValueError, r"^timeout must be >= 0 or -1 \(wait forever\), not -2$"),
    (-0.5, ValueError, r"^timeout must be >= 0 or -1"),
    (math.nan, ValueError, r"^timeout must be >= 0 or -1 \(wait forever\), not nan$"),
    ('3', TypeError, r"^timeout must be a number or None, not str '3'$"),
    (True, TypeError, r"^timeout must be a number or None, not bool True$"),
    ([1], TypeError, r"^timeout must be a number or None, not list"),
]


@pytest.mark.parametrize('value,exc,msg', BAD_TIMEOUTS, ids=[repr(b[0]) for b in BAD_TIMEOUTS])
@pytest.mark.parametrize('call', ['acquire', 'acquire_timeout', 'hold', 'acquire_deferred',
                                  'release_and_acquire', 'constructor'])
def test_TimeoutLock_bad_timeout_raises_and_leaves_lock_unchanged(lock, call, value, exc, msg):
    """When a timeout is not a number >= 0 or -1, a clear TypeError/ValueError
    is raised before any state changes."""
    if call == 'release_and_acquire':
        assert lock.acquire(0, job='acq')
    before = lock.status()
    with pytest.raises(exc, match=msg):
        if call == 'constructor':
            TimeoutLock(default_timeout=value)
        else:
            getattr(lock, call)(value)
    assert _state(lock.status()) == _state(before)


@pytest.mark.parametrize('kw,msg', [
    ({'job': 3}, r"^job must be a string or None, not int 3$"),
    ({'job': b'acq'}, r"^job must be a string or None, not bytes"),
    ({'op': 1.5}, r"^op must be a string or None, not float 1.5$"),
    ({'session_id': '7'}, r"^session_id must be an int or None, not str '7'$"),
])
@pytest.mark.parametrize('call', ['acquire', 'acquire_timeout', 'acquire_deferred', 'hold'])
def test_TimeoutLock_bad_job_raises_TypeError_and_leaves_lock_unchanged(lock, call, kw, msg):
    """When job/op/session_id have the wrong type, TypeError names the argument."""
    with pytest.raises(TypeError, match=msg):
        getattr(lock, call)(0, **kw)
    assert lock.status().holder is None and lock.status().counters.acquired == 0


def test_TimeoutLock_infinite_timeout_means_wait_forever(lock):
    """When timeout is +inf it is treated like -1 (no overflow error)."""
    assert lock.acquire(math.inf, job='x') is True
    lock.release()


# -- shutdown --------------------------------------------------------------------

def test_TimeoutLock_acquire_after_close_raises_LockClosed(lock):
    """When the lock is closed, a new acquire raises LockClosed at once."""
    lock.close()
    with pytest.raises(LockClosed, match=r"^TimeoutLock 'hw' is closed$"):
        lock.acquire(0)
    with pytest.raises(LockClosed):
        with lock.acquire_timeout(0):
            pass


def test_TimeoutLock_release_and_acquire_after_close_releases_and_raises(lock):
    """When the lock was closed under a holder's loop, release_and_acquire
    releases the hold and raises LockClosed so the loop ends."""
    with pytest.raises(LockClosed, match=r"is closed; the hold was released$"):
        with lock.acquire_timeout(0, job='acq'):
            lock.close()
            lock.release_and_acquire(1)
    assert lock.status().holder is None


def test_TimeoutLock_close_is_idempotent(lock):
    """When close is called twice, the second call does nothing."""
    rec = EventRecorder(lock)
    lock.close()
    lock.close()
    assert rec.kinds() == ['closed']


# -- observability -------------------------------------------------------------

def test_TimeoutLock_status_reports_holder_waiters_and_counters(lock, other):
    """When held and waited on, status() names holder (job, op, session, thread,
    token), the waiters, and counts grants, timeouts and longest hold/wait."""
    rec = EventRecorder(lock)
    assert lock.acquire(0, job='acq', op='acq', session_id=3)
    fut = other.acquire(WAIT, job='task')
    rec.wait_for('waiting')
    st = lock.status()
    assert (st.holder.job, st.holder.op, st.holder.session_id) == ('acq', 'acq', 3)
    assert st.holder.thread == threading.current_thread().name
    assert st.holder.token == 1
    assert [w.job for w in st.waiters] == ['task']
    assert st.describe().startswith("'hw' held by 'acq' (session 3) for ")
    assert st.describe().endswith('; 1 waiting')
    lock.release()
    assert fut.result(WAIT)
    other.release()
    c = lock.status().counters
    assert (c.acquired, c.released, c.handoffs, c.timed_out) == (2, 2, 1, 0)
    assert c.longest_hold > 0 and c.longest_wait > 0
    assert lock.status().as_dict()['counters']['acquired'] == 2
    assert "'hw' free, 0 waiting" in repr(lock)


def test_TimeoutLock_listeners_get_events_in_seq_order(lock, other):
    """When the lock changes, listeners get waiting/acquired/released/gave_up
    events with increasing seq and the fields of the feed contract."""
    rec = EventRecorder(lock)
    assert lock.acquire(0, job='acq', op='acq', session_id=1)
    fut = other.acquire(WAIT, job='task')
    rec.wait_for('waiting')
    lock.release()
    assert fut.result(WAIT)
    other.release()
    assert rec.kinds()[:4] == ['acquired', 'waiting', 'released', 'acquired']
    seqs = [e.seq for e in rec.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    first = rec.events[0].as_dict()
    assert set(first) == {'lock', 'event', 'job', 'op', 'session_id', 'since',
                          'waiters', 'token', 'seq'}
    assert (first['lock'], first['job'], first['op'], first['session_id'], first['token']) == \
        ('hw', 'acq', 'acq', 1, 1)
    assert rec.events[3].job == 'task' and rec.events[3].token == 2


def test_TimeoutLock_listener_may_read_status(lock):
    """When a listener calls status() it does not deadlock: listeners run
    outside the lock's mutex."""
    seen = []
    lock.add_listener(lambda ev: seen.append((ev.event, lock.status().held)))
    assert lock.acquire(0)
    lock.release()
    assert seen == [('acquired', True), ('released', False)]


def test_TimeoutLock_failing_listener_is_logged_and_lock_keeps_working(lock):
    """When a listener raises, the error is logged, other listeners still run,
    and the lock works on."""
    from twisted.python import log
    errors = []
    log.addObserver(errors.append)
    try:
        lock.add_listener(lambda ev: 1 / 0)
        rec = EventRecorder(lock)
        assert lock.acquire(0)
        lock.release()
    finally:
        log.removeObserver(errors.append)
    assert rec.kinds() == ['acquired', 'released']
    assert any(e.get('isError') and "TimeoutLock 'hw' failed" in str(e.get('why'))
               for e in errors)
    with pytest.raises(TypeError, match=r'^listener must be callable'):
        lock.add_listener('nope')


def test_TimeoutLock_removed_listener_gets_nothing(lock):
    """When a listener is removed it receives no further events."""
    rec = EventRecorder(lock)
    lock.remove_listener(rec)
    assert lock.acquire(0)
    lock.release()
    assert rec.events == []


def test_TimeoutLock_bad_name_raises_TypeError():
    """When the lock name is not a non-empty string, TypeError says so."""
    with pytest.raises(TypeError, match=r"^name must be a non-empty string, not ''$"):
        TimeoutLock(name='')
