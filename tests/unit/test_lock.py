"""ocs_locking.lock.TimeoutLock, clause by clause of its contract.

1. **The shared contract**: every clause that holds for thread callers
   (``acquire``) and reactor callers (``acquire_deferred``) alike, run against
   each kind and, where a queue is involved, against mixes sharing one queue.
2. Thread callers only: re-entrancy, ``release_and_acquire``, the context
   managers, ``Cancel`` tokens.
3. Thread calls made on the reactor thread (the drop-in rule: served when
   free, False at once with one warning when they would wait,
   ``strict_reactor=True`` refuses them).
4. ``acquire_deferred`` on a fake clock: exact deadlines, cancellation.
5. Arguments and the drop-in surface; status and listeners.

The Hypothesis model (test_lock_model.py), the stress run (test_lock_stress.py)
and the ocs-vs-ours pairs (test_ocs_regressions.py) are separate files.
Every wait is on a lock event or a Future with a bound; nothing sleeps.
"""
import inspect
import logging
import math
import re
import threading

import pytest
from ocs import ocs_agent
from ocs.ocs_twisted import TimeoutLock as OcsTimeoutLock
from twisted.internet import defer, task

from ocs_locking import (Cancel, LockClosed, LockTimeout, NotOwner, ReactorBlockingError,
                         TimeoutLock)
from ocs_locking.testing import FakeSession, LockProbe

from ..support import WAIT, ThreadActor

KINDS = ['thread', 'reactor']
MIXES = [('thread',) * 3, ('reactor',) * 3, ('thread', 'reactor', 'thread'),
         ('reactor', 'thread', 'reactor')]


def _mix_id(mix):
    return '-'.join(mix)


@pytest.fixture
def probe(lock):
    p = LockProbe(lock)
    yield p
    p.close()


@pytest.fixture
def other(lock):
    actor = ThreadActor(lock, 'other')
    yield actor
    actor.close()


def _queue_waiters(make_actor, lock, probe, kinds, timeout=WAIT):
    """Start one waiter per kind, each queued before the next starts."""
    waiters = []
    for i, kind in enumerate(kinds):
        actor = make_actor(kind, lock, f'w{i}')
        fut = actor.acquire(timeout)
        probe.wait_for('waiting', n=i + 1)
        waiters.append((actor, fut))
    return waiters


def _held_by(make_actor, lock, job='holder'):
    holder = make_actor('thread', lock, job)
    assert holder.acquire(0).result(WAIT) is True
    return holder


# == 1. the shared contract ====================================================

@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_free_lock_is_granted_at_once_and_job_names_the_holder(
        make_actor, lock, kind):
    """When a caller of either kind acquires a free lock, it gets it at once;
    ``.job`` names it while held and is None once released."""
    assert lock.job is None
    actor = make_actor(kind, lock, 'acq')
    assert actor.acquire(5).result(WAIT) is True
    assert lock.job == 'acq'
    st = lock.status()
    assert st.holder.thread == ('reactor' if kind == 'reactor' else 'acq_0')
    assert st.holder.token == 1 and st.waiters == ()
    actor.release()
    assert lock.job is None and lock.status().holder is None


@pytest.mark.parametrize('kinds', MIXES, ids=_mix_id)
def test_TimeoutLock_fifo_serves_waiters_in_arrival_order(make_actor, lock, probe, kinds):
    """When several waiters of any kind queue behind a holder, each release
    hands the lock to the oldest waiter."""
    holder = _held_by(make_actor, lock)
    waiters = _queue_waiters(make_actor, lock, probe, kinds)
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
        make_actor, lock, probe, kinds):
    """When the holder calls release_and_acquire, every waiter already queued
    gets the lock before the holder has it again, and the holder keeps its job."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0, job='acq').result(WAIT) is True
    waiters = _queue_waiters(make_actor, lock, probe, kinds)
    back = holder.call(lock.release_and_acquire, WAIT)
    served = []
    for actor, fut in waiters:
        assert fut.result(WAIT) is True
        served.append(lock.job)
        actor.release()
    assert back.result(WAIT) is True
    assert served == [f'w{i}' for i in range(len(kinds))]
    assert lock.job == 'acq'
    holder.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_timeout_returns_false_and_leaves_queue(make_actor, lock, probe, kind):
    """When the timeout passes before the lock is free, the waiter gets False,
    is no longer in the queue, and counts as timed out."""
    holder = _held_by(make_actor, lock)
    fut = make_actor(kind, lock, 'late').acquire(0.05)
    assert fut.result(WAIT) is False
    status = lock.status()
    assert status.waiters == ()
    assert status.counters.timed_out == 1
    assert probe.kinds()[-1] == 'gave_up'
    holder.release()
    assert lock.status().holder is None


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_default_timeout_applies_when_None(make_actor, kind):
    """When timeout is None, the lock's default_timeout is used (here 0.01 s:
    the busy lock gives up instead of waiting forever)."""
    lock = TimeoutLock(default_timeout=0.01, name='hw')
    holder = _held_by(make_actor, lock)
    assert make_actor(kind, lock, 'task').acquire(None).result(WAIT) is False
    assert lock.status().counters.timed_out == 1
    holder.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_try_once_returns_false_while_held(make_actor, lock, probe, kind):
    """When the lock is held, timeout=0 returns False at once without queueing."""
    holder = _held_by(make_actor, lock)
    assert make_actor(kind, lock, 'other').acquire(0).result(WAIT) is False
    assert lock.status().waiters == ()
    assert 'waiting' not in probe.kinds()
    holder.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_cancelled_wait_leaves_queue(make_actor, lock, probe, kind):
    """When a waiting request is cancelled (a Cancel token for a thread, the
    Deferred's cancel() for reactor code), it leaves the queue, counts as
    cancelled, and the next release finds nobody waiting."""
    holder = _held_by(make_actor, lock)
    actor = make_actor(kind, lock, 'task')
    fut = actor.acquire(WAIT)
    probe.wait_for('waiting')
    actor.cancel()
    if kind == 'thread':
        assert fut.result(WAIT) is False
    else:
        with pytest.raises(defer.CancelledError):
            fut.result(WAIT)
    st = lock.status()
    assert st.waiters == () and st.counters.cancelled == 1 and st.counters.timed_out == 0
    assert probe.kinds()[-1] == 'gave_up'
    holder.release()
    assert lock.status().holder is None and lock.status().counters.handoffs == 0


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_close_wakes_every_waiter_with_LockClosed(make_actor, lock, probe, kind):
    """When the lock is closed, every waiter — even one waiting forever — is
    woken with LockClosed, new acquires are refused, and the holder may still
    release."""
    holder = _held_by(make_actor, lock)
    waiters = _queue_waiters(make_actor, lock, probe, [kind, kind], timeout=-1)
    lock.close()
    for _, fut in waiters:
        with pytest.raises(LockClosed, match=r"^TimeoutLock 'hw' was closed while waiting$"):
            fut.result(WAIT)
    with pytest.raises(LockClosed, match=r"^TimeoutLock 'hw' is closed$"):
        make_actor(kind, lock, 'new').acquire(1).result(WAIT)
    holder.release()
    assert lock.status().holder is None and lock.status().closed


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_closed_free_lock_refuses_every_acquire(make_actor, lock, kind):
    """When a free lock is closed, an acquire of either kind raises LockClosed
    at once, even with timeout=0."""
    lock.close()
    with pytest.raises(LockClosed, match=r"^TimeoutLock 'hw' is closed$"):
        make_actor(kind, lock, 'new').acquire(0).result(WAIT)
    if kind == 'thread':
        with pytest.raises(LockClosed, match=r"^TimeoutLock 'hw' is closed$"):
            with lock.acquire_timeout(0):
                pass
    assert lock.status().counters.acquired == 0


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_waiter_appears_in_status(make_actor, lock, probe, kind):
    """When a caller waits, status() lists it with its job and kind, in queue order."""
    holder = make_actor('thread', lock, 'holder')
    assert holder.acquire(0, job='acq').result(WAIT) is True
    (actor, fut), = _queue_waiters(make_actor, lock, probe, [kind])
    status = lock.status()
    assert status.holder.job == 'acq'
    assert [w.job for w in status.waiters] == ['w0']
    assert status.waiters[0].reactor is (kind == 'reactor')
    holder.release()
    assert fut.result(WAIT) is True
    actor.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_release_by_non_holder_raises_NotOwner(make_actor, lock, kind):
    """When a thread that does not hold the lock releases it (the holder being
    a thread or reactor code), NotOwner is raised and the holder still holds."""
    holder = make_actor(kind, lock, 'acq')
    assert holder.acquire(0).result(WAIT) is True
    with pytest.raises(NotOwner, match=r"^cannot release TimeoutLock 'hw': it is held by "
                                       r"job 'acq' in another thread; only the holder"):
        lock.release()
    assert lock.job == 'acq'
    assert isinstance(NotOwner('x'), RuntimeError)
    holder.release()


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_release_when_free_raises_NotOwner(make_actor, lock, kind):
    """When nobody holds the lock, a release from either kind of caller raises
    NotOwner ('it is not held')."""
    actor = make_actor(kind, lock, 'x')
    with pytest.raises(NotOwner, match=r"^cannot release TimeoutLock 'hw': it is not held$"):
        actor.call(lock.release).result(WAIT)


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_status_counts_grants_handoffs_and_tokens(make_actor, lock, probe, kind):
    """When a waiter of either kind is handed the lock, its grant has the next
    token, and the counters show two grants, two releases, one hand-off and
    the longest hold and wait; ``released`` is always acquired minus held."""
    assert lock.acquire(0, job='acq', op='acq', session_id=3)
    (actor, fut), = _queue_waiters(make_actor, lock, probe, [kind])
    c = lock.status().counters
    assert (c.acquired, c.released) == (1, 0)
    lock.release()
    assert fut.result(WAIT) is True
    st = lock.status()
    assert st.holder.job == 'w0' and st.holder.token == 2
    assert (st.counters.acquired, st.counters.released, st.counters.handoffs) == (2, 1, 1)
    actor.release()
    c = lock.status().counters
    assert (c.acquired, c.released, c.handoffs, c.timed_out, c.cancelled) == (2, 2, 1, 0, 0)
    assert c.longest_hold > 0 and c.longest_wait > 0


@pytest.mark.parametrize('kind', KINDS)
def test_TimeoutLock_listeners_get_events_in_seq_order(make_actor, lock, probe, kind):
    """When the lock is handed to a waiter of either kind, listeners get
    acquired/waiting/released/acquired events with increasing seq and the
    fields of the feed contract."""
    assert lock.acquire(0, job='acq', op='acq', session_id=1)
    (actor, fut), = _queue_waiters(make_actor, lock, probe, [kind])
    lock.release()
    assert fut.result(WAIT)
    actor.release()
    probe.wait_for('released', n=2)
    events = [e for _, e in probe.events]
    assert probe.kinds() == ['acquired', 'waiting', 'released', 'acquired', 'released']
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    first = events[0].as_dict()
    assert set(first) == {'lock', 'event', 'job', 'op', 'session_id', 'since',
                          'waiters', 'token', 'seq', 'queue'}
    # the waiting event names its waiter in the queue; the hand-over empties it
    assert first['queue'] == () and len(events[1].queue) == 1 and events[3].queue == ()
    assert events[1].queue[0].job == events[1].job
    assert (first['lock'], first['job'], first['op'], first['session_id'], first['token']) == \
        ('hw', 'acq', 'acq', 1, 1)
    assert (events[1].job, events[1].waiters) == ('w0', 1)
    assert (events[3].job, events[3].token, events[3].waiters) == ('w0', 2, 0)


# == 2. thread callers ==========================================================

def test_TimeoutLock_reacquire_by_holder_raises_instead_of_deadlocking(lock):
    """When the holder waits for the lock it holds, it gets a RuntimeError at
    once instead of waiting for itself; a try-once just returns False."""
    assert lock.acquire(0, job='acq')
    with pytest.raises(RuntimeError, match=r"already held by this thread .*not re-entrant"):
        lock.acquire(-1)
    assert lock.acquire(0) is False
    lock.release()


def test_TimeoutLock_release_and_acquire_by_non_holder_raises_NotOwner(lock, other):
    """When a non-holder calls release_and_acquire, NotOwner is raised and
    nothing changes."""
    assert other.acquire(0, job='acq').result(WAIT)
    with pytest.raises(NotOwner, match=r"^cannot release_and_acquire TimeoutLock 'hw'"):
        lock.release_and_acquire(1)
    assert lock.job == 'acq'
    other.release()


def test_TimeoutLock_failed_release_and_acquire_leaves_caller_not_holding(lock, other, probe):
    """When release_and_acquire cannot take the lock back in time, the caller
    does not hold it: the waiter it let in does."""
    assert lock.acquire(0, job='acq')
    fut = other.acquire(WAIT, job='task')
    probe.wait_for('waiting')
    assert lock.release_and_acquire(0.01) is False
    assert fut.result(WAIT) is True
    assert lock.job == 'task'
    assert not lock.held_by_me()
    with pytest.raises(NotOwner):
        lock.release()
    other.release()


def test_TimeoutLock_release_and_acquire_with_nobody_waiting_keeps_the_hold(lock, probe):
    """When nobody waits, release_and_acquire returns True without letting go:
    same grant token, no events."""
    assert lock.acquire(0, job='acq')
    token = lock.status().holder.token
    n = len(probe.events)
    assert all(lock.release_and_acquire(5) for _ in range(100))
    assert lock.status().holder.token == token
    assert len(probe.events) == n
    lock.release()


def test_TimeoutLock_release_and_acquire_after_close_releases_and_raises(lock):
    """When the lock was closed under a holder's loop, release_and_acquire
    releases the hold and raises LockClosed so the loop ends."""
    with pytest.raises(LockClosed, match=r"is closed; the hold was released$"):
        with lock.acquire_timeout(0, job='acq'):
            lock.close()
            lock.release_and_acquire(1)
    assert lock.status().holder is None


def test_TimeoutLock_acquire_timeout_exit_releases_nothing_after_failed_retake(
        lock, other, probe):
    """When release_and_acquire fails inside ``with acquire_timeout``, leaving
    the block does not release the hold another operation now has."""
    with lock.acquire_timeout(0, job='acq') as acquired:
        assert acquired
        fut = other.acquire(WAIT, job='task')
        probe.wait_for('waiting')
        assert lock.release_and_acquire(0.01) is False
    assert fut.result(WAIT) is True
    assert lock.job == 'task'
    assert lock.acquire(0) is False   # still held by 'task'
    other.release()


def test_TimeoutLock_acquire_timeout_releases_on_exit_and_exception(lock):
    """When the body of acquire_timeout ends, normally or by an exception
    (which is not swallowed), the lock is released."""
    with lock.acquire_timeout(0, job='x') as acquired:
        assert acquired is True and lock.job == 'x'
    assert lock.status().holder is None
    with pytest.raises(ZeroDivisionError):
        with lock.acquire_timeout(0, job='x') as acquired:
            assert acquired
            1 / 0
    assert lock.status().holder is None


def test_TimeoutLock_acquire_timeout_yields_false_and_releases_nothing_when_busy(lock, other):
    """When acquire_timeout cannot acquire, it yields False and leaving the
    block leaves the holder's hold alone."""
    assert other.acquire(0, job='acq').result(WAIT)
    with lock.acquire_timeout(0, job='task') as acquired:
        assert acquired is False
    assert lock.job == 'acq'
    other.release()


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


def test_TimeoutLock_cancel_token_fired_before_the_wait_returns_false_at_once(lock, other):
    """When a Cancel token was already cancelled, a wait with it returns False
    without queueing; the token also ends a wait in release_and_acquire."""
    assert other.acquire(0, job='acq').result(WAIT)
    token = Cancel()
    token.cancel()
    assert token.cancelled
    assert lock.acquire(WAIT, job='task', cancel=token) is False
    assert lock.status().waiters == () and lock.status().counters.cancelled == 0
    other.release()


def test_TimeoutLock_cancel_ends_a_release_and_acquire_wait(lock, other, probe):
    """When a holder waits in release_and_acquire to re-take and its Cancel
    token fires, the call returns False and the holder does not hold."""
    assert lock.acquire(0, job='acq')
    fut = other.acquire(WAIT, job='task')
    probe.wait_for('waiting')
    token = Cancel()

    def cancel_once_requeued():
        probe.wait_for('waiting', job='acq')    # the holder queued behind 'task'
        token.cancel()
    t = threading.Thread(target=cancel_once_requeued, daemon=True)
    t.start()
    assert lock.release_and_acquire(WAIT, cancel=token) is False
    t.join(WAIT)
    assert fut.result(WAIT) is True and lock.job == 'task'
    assert lock.status().counters.cancelled == 1 and not lock.held_by_me()
    other.release()


def test_TimeoutLock_infinite_timeout_means_wait_forever(lock):
    """When timeout is +inf it is treated like -1 (no overflow error)."""
    assert lock.acquire(math.inf, job='x') is True
    lock.release()


# == 3. thread calls on the reactor thread ====================================

BLOCKING_CALLS = [
    ('acquire-1s', lambda lock: lock.acquire(1, job='r')),
    ('acquire-forever', lambda lock: lock.acquire(-1, job='r')),
    ('acquire-default', lambda lock: lock.acquire(job='r')),       # default_timeout 5
    ('acquire_timeout', lambda lock: lock.acquire_timeout(3, job='r').__enter__()),
    ('hold', lambda lock: lock.hold(3, job='r').__enter__() is lock),
]


@pytest.mark.parametrize('call', [c for _, c in BLOCKING_CALLS], ids=[i for i, _ in BLOCKING_CALLS])
def test_TimeoutLock_blocking_call_on_reactor_thread_is_served_when_free(reactor_thread, call):
    """When reactor code calls acquire/acquire_timeout/hold with a timeout and
    the lock is free, it gets the lock at once, exactly as with ocs's lock."""
    lock = TimeoutLock(default_timeout=5, name='hw')
    assert reactor_thread.call(call, lock) is True
    assert lock.job == 'r' and lock.status().holder.thread == 'test-reactor'
    reactor_thread.call(lock.release)
    assert lock.status().holder is None


REACTOR_WARNING = (r"^TimeoutLock 'hw': acquire\(timeout=(1|-1|5|3)\) for job 'r' on the "
                   r"reactor thread returned False at once: held by job 'acq', 0 waiting "
                   r"\(waiting here would freeze the reactor; reactor code waits with "
                   r"acquire_deferred\(\)\)$")


@pytest.mark.parametrize('call', [c for _, c in BLOCKING_CALLS[:4]],
                         ids=[i for i, _ in BLOCKING_CALLS[:4]])
def test_TimeoutLock_blocking_call_on_reactor_thread_returns_false_when_busy(
        reactor_thread, call, caplog):
    """When reactor code calls acquire/acquire_timeout with a timeout while
    another operation holds the lock, it gets False at once (ocs's answer,
    without ocs's freeze), nothing is queued, and one warning line names the
    lock, the call, the job and the holder."""
    lock = TimeoutLock(default_timeout=5, name='hw')
    probe = LockProbe(lock)
    holder = ThreadActor(lock, 'holder')
    assert holder.acquire(0, job='acq').result(WAIT)
    with caplog.at_level(logging.WARNING, logger='ocs_locking.lock'):
        assert reactor_thread.call(call, lock) is False
    [record] = [r for r in caplog.records if r.name == 'ocs_locking.lock']
    assert record.levelno == logging.WARNING
    assert '\n' not in record.getMessage()
    assert re.match(REACTOR_WARNING, record.getMessage()), record.getMessage()
    assert probe.kinds() == ['acquired']            # nothing queued, nothing timed out
    assert lock.job == 'acq' and lock.status().counters.timed_out == 0
    holder.release()
    holder.close()


def test_TimeoutLock_hold_on_reactor_thread_raises_LockTimeout_when_busy(reactor_thread, caplog):
    """When reactor code uses hold(timeout) while the lock is busy, it raises
    LockTimeout at once (the body never runs) and the warning is logged."""
    lock = TimeoutLock(name='hw')
    holder = ThreadActor(lock, 'holder')
    assert holder.acquire(0, job='acq').result(WAIT)
    def enter():
        # returned, not raised: ReactorThread.call reads a raised TimeoutError
        # (LockTimeout is one) as its own timeout
        try:
            lock.hold(3, job='r').__enter__()
        except LockTimeout as e:
            return e
    with caplog.at_level(logging.WARNING, logger='ocs_locking.lock'):
        error = reactor_thread.call(enter)
    assert isinstance(error, LockTimeout)
    assert re.match(r"^could not acquire 'hw' held by 'acq' for .*; 0 waiting$", str(error))
    assert len([r for r in caplog.records if r.name == 'ocs_locking.lock']) == 1
    holder.release()
    holder.close()


class _IBootBarLike:
    """The pattern of socs 0.6.4's ibootbar agent: a ``blocking=False`` task
    (it runs ON the reactor thread) that takes the lock with
    ``acquire_timeout(timeout=3)``."""

    def __init__(self, lock):
        self.lock = lock
        self.outlets = {}

    @ocs_agent.param('outlet', type=int)
    @ocs_agent.param('state', type=str, choices=['on', 'off'])
    def set_outlet(self, session, params):
        """set_outlet(outlet, state)

        **Task** - Set an outlet on or off (registered with blocking=False).
        """
        with self.lock.acquire_timeout(timeout=3, job='set_outlet') as acquired:
            if not acquired:
                return False, f'Could not acquire lock; held by {self.lock.job}'
            self.outlets[params['outlet']] = params['state']
        return True, f"Set outlet {params['outlet']} {params['state']}"


def test_TimeoutLock_ibootbar_reactor_task_gets_a_free_lock(reactor_thread):
    """When a socs ibootbar-style ``blocking=False`` task takes the free lock
    with acquire_timeout(timeout=3) on the reactor thread, it runs to success
    (with the strict refusal every call ended FAILED)."""
    agent = _IBootBarLike(TimeoutLock(name='hw'))
    ok, msg = reactor_thread.run_op(agent.set_outlet, {'outlet': 2, 'state': 'on'})
    assert (ok, msg) == (True, 'Set outlet 2 on')
    assert agent.outlets == {2: 'on'} and agent.lock.status().holder is None


def test_TimeoutLock_ibootbar_reactor_task_is_refused_at_once_when_busy(reactor_thread, caplog):
    """When that task runs while a thread holds the lock, it returns False at
    once instead of freezing the reactor for up to 3 s: the holder lets go as
    soon as anyone queues, so a task that waited would have got the lock; it
    gets the refusal while the holder still holds, and the warning names both."""
    lock = TimeoutLock(name='hw')
    agent = _IBootBarLike(lock)
    probe = LockProbe(lock)
    queued, go = threading.Event(), threading.Event()

    def on_event(ev):
        if ev.event == 'waiting':
            queued.set()
            go.set()
    lock.add_listener(on_event)
    holding = threading.Event()

    def holder():
        assert lock.acquire(0, job='acq')
        holding.set()
        go.wait(WAIT)       # as soon as the task queues, or once its result is in
        lock.release()
    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert holding.wait(WAIT)
    with caplog.at_level(logging.WARNING, logger='ocs_locking.lock'):
        ok, msg = reactor_thread.run_op(agent.set_outlet, {'outlet': 1, 'state': 'off'})
    held_at_return = lock.job
    go.set()
    t.join(WAIT)
    assert (ok, msg) == (False, 'Could not acquire lock; held by acq')
    assert held_at_return == 'acq' and not queued.is_set()
    assert probe.kinds() == ['acquired', 'released']
    assert caplog.messages == [
        "TimeoutLock 'hw': acquire(timeout=3) for job 'set_outlet' on the reactor thread "
        "returned False at once: held by job 'acq', 0 waiting (waiting here would freeze "
        "the reactor; reactor code waits with acquire_deferred())"]
    assert agent.outlets == {}


def test_TimeoutLock_blocking_op_called_from_the_reactor_thread_by_a_test_works(reactor_thread):
    """When a test calls a ``blocking=True`` operation body directly on the
    reactor thread (as pytest-twisted runs socs's LS372 unit tests), the op's
    ``acquire_timeout(timeout=3)`` on the free lock succeeds, as with ocs."""

    class LS372Like:
        def __init__(self):
            self.lock = TimeoutLock(name='hw')
            self.heater_range = None

        @ocs_agent.param('range', type=float)
        def set_heater_range(self, session, params):
            with self.lock.acquire_timeout(job='set_heater_range', timeout=3) as acquired:
                if not acquired:
                    return False, f'Could not start Task because {self.lock.job} is running'
                self.heater_range = params['range']
            return True, f"Set heater range to {params['range']}"

    agent = LS372Like()
    result = reactor_thread.call(agent.set_heater_range, FakeSession('set_heater_range'),
                                 {'range': 1e-3})
    assert result == (True, 'Set heater range to 0.001')
    assert agent.heater_range == 1e-3 and agent.lock.status().holder is None


def test_TimeoutLock_release_and_acquire_on_reactor_thread(reactor_thread, caplog):
    """When reactor code holding the lock calls release_and_acquire with a
    timeout, it keeps the lock at once if nobody waits; if someone waits it
    hands the lock on and returns False at once (no freeze), with one warning."""
    lock = TimeoutLock(name='hw')
    probe = LockProbe(lock)
    other = ThreadActor(lock, 'task')
    assert reactor_thread.call(lock.acquire, 0, 'acq')
    assert reactor_thread.call(lock.release_and_acquire, 1) is True
    assert lock.job == 'acq' and lock.status().holder.token == 1
    fut = other.acquire(WAIT, job='task')
    probe.wait_for('waiting')
    with caplog.at_level(logging.WARNING, logger='ocs_locking.lock'):
        assert reactor_thread.call(lock.release_and_acquire, 1) is False
    assert fut.result(WAIT) is True and lock.job == 'task'
    assert caplog.messages == [
        "TimeoutLock 'hw': release_and_acquire(timeout=1) for job 'acq' on the reactor "
        "thread returned False at once: it handed the lock to job 'task', 1 waiting "
        "(waiting here would freeze the reactor; reactor code waits with acquire_deferred())"]
    other.release()
    other.close()


@pytest.mark.parametrize('call', [c for _, c in BLOCKING_CALLS], ids=[i for i, _ in BLOCKING_CALLS])
def test_TimeoutLock_strict_reactor_refuses_blocking_calls_even_when_free(reactor_thread, call):
    """When the lock was made with strict_reactor=True, any reactor-thread
    call with a timeout raises ReactorBlockingError at once, even if the lock
    is free, and the lock is unchanged."""
    lock = TimeoutLock(default_timeout=5, name='hw', strict_reactor=True)
    with pytest.raises(ReactorBlockingError,
                       match=r"^acquire\(timeout=.*\) on TimeoutLock 'hw' would block the "
                             r"reactor thread; use acquire_deferred\(\) or timeout=0$"):
        reactor_thread.call(call, lock)
    assert lock.status().holder is None and lock.status().counters.acquired == 0


def test_TimeoutLock_strict_reactor_refuses_release_and_acquire(reactor_thread):
    """When a strict lock's reactor holder calls release_and_acquire with a
    timeout, it is refused and the reactor keeps the lock; timeout=0 and
    thread callers are unaffected."""
    lock = TimeoutLock(name='hw', strict_reactor=True)
    assert reactor_thread.call(lock.acquire, 0, 'r')
    with pytest.raises(ReactorBlockingError, match=r"^release_and_acquire\(timeout=1\)"):
        reactor_thread.call(lock.release_and_acquire, 1)
    assert lock.job == 'r'
    reactor_thread.call(lock.release)
    assert lock.acquire(1, job='thread') is True
    lock.release()
    with pytest.raises(TypeError, match=r"^strict_reactor must be True or False, not 1$"):
        TimeoutLock(strict_reactor=1)


def test_TimeoutLock_try_once_on_reactor_thread_is_allowed(reactor_thread):
    """When reactor code uses timeout=0 it gets a plain answer, as in ocs,
    even on a strict lock."""
    lock = TimeoutLock(name='hw', strict_reactor=True)
    assert reactor_thread.call(lock.acquire, 0, 'r') is True
    reactor_thread.call(lock.release)


def test_TimeoutLock_acquire_deferred_off_reactor_thread_raises(reactor_thread):
    """When a worker thread calls acquire_deferred on a lock using the running
    global reactor, it is told to use acquire() instead."""
    lock = TimeoutLock(name='hw')
    with pytest.raises(RuntimeError, match=r"must be called from the reactor thread; "
                                           r"worker threads use acquire\(\)$"):
        lock.acquire_deferred(1)


def test_TimeoutLock_reactor_keeps_running_while_reactor_code_waits(reactor_thread):
    """When reactor code waits for a lock a thread holds, the reactor goes on
    serving other work (a heartbeat keeps beating), and the waiter gets the
    lock when the thread releases."""
    lock = TimeoutLock(name='hw')
    probe = LockProbe(lock)
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
    probe.wait_for('waiting')
    assert five_beats.wait(WAIT)
    assert waited == []
    holder.release()
    probe.wait_for('acquired', n=2)
    reactor_thread.call(lambda: None)   # let the delivery run
    reactor_thread.call(hb.stop)
    assert waited == [True]
    reactor_thread.call(lock.release)
    holder.close()


# == 4. acquire_deferred on a fake clock ========================================

@pytest.fixture
def clock_lock(fake_reactor):
    return TimeoutLock(name='hw', reactor=fake_reactor)


def _result(d):
    out = []
    d.addBoth(out.append)
    return out


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


def test_TimeoutLock_acquire_deferred_one_deadline_even_when_queue_moves(
        clock_lock, fake_reactor):
    """When a waiter ahead gives up just before our deadline, we still give up
    at our own deadline (ocs restarts the timeout and waits twice as long)."""
    assert clock_lock.acquire(0, job='holder')
    ahead = _result(clock_lock.acquire_deferred(0.9, job='ahead'))
    mine = _result(clock_lock.acquire_deferred(1.0, job='me'))
    fake_reactor.advance(0.9)
    assert ahead == [False] and mine == []
    fake_reactor.advance(0.1)
    assert mine == [False]


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


def test_TimeoutLock_acquire_deferred_cancel_clears_its_timeout(clock_lock, fake_reactor):
    """When a waiting Deferred is cancelled, it fails with CancelledError and
    its timeout call is cancelled too."""
    assert clock_lock.acquire(0)
    d = clock_lock.acquire_deferred(5, job='r')
    out = _result(d)
    d.cancel()
    assert out[0].check(defer.CancelledError)
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
    c = clock_lock.status().counters
    assert (c.acquired, c.released, c.cancelled) == (3, 2, 1)


def test_TimeoutLock_acquire_deferred_close_fails_waiters_on_the_next_turn(
        clock_lock, fake_reactor):
    """When the lock is closed, Deferred waiters errback with LockClosed,
    delivered through the reactor."""
    assert clock_lock.acquire(0)
    out = _result(clock_lock.acquire_deferred(-1))
    clock_lock.close()
    assert out == []
    fake_reactor.advance(0)
    assert out[0].check(LockClosed)
    assert out[0].getErrorMessage() == "TimeoutLock 'hw' was closed while waiting"


# == 5. arguments, drop-in surface, status and listeners ========================

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


def test_TimeoutLock_bad_name_raises_TypeError():
    """When the lock name is not a non-empty string, TypeError says so."""
    with pytest.raises(TypeError, match=r"^name must be a non-empty string, not ''$"):
        TimeoutLock(name='')


def test_TimeoutLock_status_names_the_holder_and_describes_itself(lock, other, probe):
    """When held and waited on, status() names the holder (job, op, session,
    thread, token) and the waiters; describe(), as_dict() and repr() say the same."""
    assert lock.acquire(0, job='acq', op='acq', session_id=3)
    fut = other.acquire(WAIT, job='task')
    probe.wait_for('waiting')
    st = lock.status()
    assert (st.holder.job, st.holder.op, st.holder.session_id) == ('acq', 'acq', 3)
    assert st.holder.thread == threading.current_thread().name
    assert [w.job for w in st.waiters] == ['task']
    assert st.describe().startswith("'hw' held by 'acq' (session 3) for ")
    assert st.describe().endswith('; 1 waiting')
    assert repr(lock) == "<TimeoutLock 'hw' held by 'acq', 1 waiting>"
    lock.release()
    assert fut.result(WAIT)
    other.release()
    assert lock.status().as_dict()['counters']['acquired'] == 2
    assert repr(lock) == "<TimeoutLock 'hw' free, 0 waiting>"


def test_TimeoutLock_close_is_idempotent(lock, probe):
    """When close is called twice, the second call does nothing."""
    lock.close()
    lock.close()
    assert probe.kinds() == ['closed']
    assert repr(lock) == "<TimeoutLock 'hw' free, 0 waiting closed>"


def test_TimeoutLock_listener_may_read_status(lock):
    """When a listener calls status() it does not deadlock: listeners run
    outside the lock's mutex."""
    seen = []
    lock.add_listener(lambda ev: seen.append((ev.event, lock.status().held)))
    assert lock.acquire(0)
    lock.release()
    assert seen == [('acquired', True), ('released', False)]


def test_TimeoutLock_failing_listener_is_logged_and_lock_keeps_working(lock, caplog):
    """When a listener raises, one error with its traceback is logged per
    event, other listeners still run, and the lock works on."""
    lock.add_listener(lambda ev: 1 / 0)
    probe = LockProbe(lock)
    with caplog.at_level(logging.ERROR, logger='ocs_locking.listeners'):
        assert lock.acquire(0)
        lock.release()
    assert probe.kinds() == ['acquired', 'released']
    assert len(caplog.records) == 2
    for record, kind in zip(caplog.records, ['acquired', 'released']):
        assert record.name == 'ocs_locking.listeners'
        assert record.exc_info[0] is ZeroDivisionError
        assert record.getMessage().startswith('listener <function ')
        assert f"of TimeoutLock 'hw' failed on LockEvent(lock='hw', event='{kind}'" \
            in record.getMessage()
    with pytest.raises(TypeError, match=r'^listener must be callable'):
        lock.add_listener('nope')


def test_TimeoutLock_removed_listener_gets_nothing(lock):
    """When a listener is removed (here a bound method, as LockProbe.close
    passes) it receives no further events."""
    probe = LockProbe(lock)
    probe.close()
    assert lock.acquire(0)
    lock.release()
    assert probe.events == []
