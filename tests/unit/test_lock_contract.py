"""The TimeoutLock contract, run against thread waiters, reactor (Deferred)
waiters, and a mix of both sharing one queue.

Every wait is on a lock event or a Future with a bound; nothing sleeps.
"""
import pytest

from ocs_locking import LockClosed

from ..support import WAIT, EventRecorder

KINDS = ['thread', 'reactor']
MIXES = [('thread',) * 3, ('reactor',) * 3, ('thread', 'reactor', 'thread'),
         ('reactor', 'thread', 'reactor')]


def _mix_id(mix):
    return '-'.join(mix)


@pytest.fixture
def rec(lock):
    return EventRecorder(lock)


def _queue_waiters(make_actor, lock, rec, kinds, timeout=WAIT):
    """Start one waiter per kind, each queued before the next starts."""
    waiters = []
    for i, kind in enumerate(kinds):
        actor = make_actor(kind, lock, f'w{i}')
        fut = actor.acquire(timeout)
        rec.wait_for('waiting', i + 1)
        waiters.append((actor, fut))
    return waiters


@pytest.mark.parametrize('kinds', MIXES, ids=_mix_id)
def test_TimeoutLock_fifo_serves_waiters_in_arrival_order(make_actor, lock, rec, kinds):
    """When several waiters of any kind queue behind a holder, each release
    hands the lock to the oldest waiter."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0).result(WAIT) is True
    waiters = _queue_waiters(make_actor, lock, rec, kinds)
    holder.release()
    order = []
    for actor, fut in waiters:
        assert fut.result(WAIT) is True
        order.append(lock.job)
        actor.release()
    assert order == [f'w{i}' for i in range(len(kinds))]
    assert lock.status().holder is None


@pytest.mark.parametrize('kinds', MIXES, ids=_mix_id)
def test_TimeoutLock_release_and_acquire_serves_every_present_waiter_first(
        make_actor, lock, rec, kinds):
    """When the holder calls release_and_acquire, every waiter already queued
    gets the lock before the holder has it again."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0, job='acq').result(WAIT) is True
    waiters = _queue_waiters(make_actor, lock, rec, kinds)
    back = holder.call(lock.release_and_acquire, WAIT)
    served = []
    for actor, fut in waiters:
        assert fut.result(WAIT) is True
        served.append(lock.job)
        actor.release()
    assert back.result(WAIT) is True
    assert served == [f'w{i}' for i in range(len(kinds))]
    assert lock.job == 'acq'  # the holder kept its job name
    holder.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_timeout_returns_false_and_leaves_queue(make_actor, lock, rec, kind):
    """When the timeout passes before the lock is free, the waiter gets False
    and is no longer in the queue."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0).result(WAIT) is True
    fut = make_actor(kind, lock, 'late').acquire(0.05)
    assert fut.result(WAIT) is False
    status = lock.status()
    assert status.waiters == ()
    assert status.counters.timed_out == 1
    assert rec.kinds()[-1] == 'gave_up'
    holder.release()
    assert lock.status().holder is None


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_close_wakes_every_waiter_with_LockClosed(make_actor, lock, rec, kind):
    """When the lock is closed, every waiter — even one waiting forever — is
    woken with LockClosed, and new acquires are refused."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0).result(WAIT) is True
    waiters = _queue_waiters(make_actor, lock, rec, [kind, kind], timeout=-1)
    lock.close()
    for _, fut in waiters:
        with pytest.raises(LockClosed, match=r"^TimeoutLock 'hw' was closed while waiting$"):
            fut.result(WAIT)
    with pytest.raises(LockClosed):
        make_actor(kind, lock, 'new').acquire(1).result(WAIT)
    holder.release()  # the holder may still release after close
    assert lock.status().holder is None and lock.status().closed


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_try_once_returns_false_while_held(make_actor, lock, kind):
    """When the lock is held, timeout=0 returns False at once without queueing."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0).result(WAIT) is True
    assert make_actor(kind, lock, 'other').acquire(0).result(WAIT) is False
    assert lock.status().waiters == ()
    holder.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_waiter_appears_in_status(make_actor, lock, rec, kind):
    """When a caller waits, status() lists it with its job, in queue order."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0, job='acq').result(WAIT) is True
    (actor, fut), = _queue_waiters(make_actor, lock, rec, [kind])
    status = lock.status()
    assert status.holder.job == 'acq'
    assert [w.job for w in status.waiters] == ['w0']
    assert status.waiters[0].reactor is (kind == 'reactor')
    holder.release()
    assert fut.result(WAIT) is True
    actor.release()

