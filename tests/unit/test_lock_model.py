"""Hypothesis stateful test: TimeoutLock against a simple model.

The model is a holder and a FIFO list of (job, deadline). Requests go
through ``acquire_deferred`` on a fake reactor clock so timeouts are exact;
try-once thread acquires, releases, cancels, clock advances and close are
interleaved at random. After every step the lock's status and every
Deferred's outcome must match the model.
"""
import itertools

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.internet import defer

from ocs_locking import LockClosed, TimeoutLock

from ..support import FakeReactor

PENDING = 'pending'


class LockModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = FakeReactor()
        self.lock = TimeoutLock(name='model', reactor=self.clock)
        self.names = (f'j{i}' for i in itertools.count())
        # model
        self.holder = None
        self.queue = []           # [(job, deadline or None)]
        self.closed = False
        self.expected = {}        # job -> PENDING | True | False | 'cancelled' | 'closed'
        # real
        self.deferreds = {}
        self.actual = {}

    def _track(self, job, d):
        self.deferreds[job] = d
        self.actual[job] = PENDING
        d.addCallbacks(lambda r: self.actual.__setitem__(job, r),
                       lambda f: self.actual.__setitem__(
                           job, 'cancelled' if f.check(defer.CancelledError)
                           else 'closed' if f.check(LockClosed) else f))

    def _flush(self):
        self.clock.advance(0)

    @rule(timeout=st.sampled_from([0, 0.5, 1.0, 2.0, -1]))
    def request(self, timeout):
        job = next(self.names)
        self._track(job, self.lock.acquire_deferred(timeout, job=job))
        if self.closed:
            self.expected[job] = 'closed'
        elif self.holder is None:
            self.holder = job
            self.expected[job] = True
        elif timeout == 0:
            self.expected[job] = False
        else:
            deadline = None if timeout == -1 else self.clock.seconds() + timeout
            self.queue.append((job, deadline))
            self.expected[job] = PENDING
        self._flush()

    @rule()
    def try_once_from_thread(self):
        if self.closed:
            try:
                self.lock.acquire(0, job='sync')
            except LockClosed:
                return
            raise AssertionError('acquire after close did not raise LockClosed')
        got = self.lock.acquire(0, job='sync')
        assert got == (self.holder is None)
        if got:
            self.holder = 'sync'

    @precondition(lambda self: self.holder is not None)
    @rule()
    def release(self):
        self.lock.release()
        if self.queue:
            job, _ = self.queue.pop(0)
            self.holder = job
            self.expected[job] = True
        else:
            self.holder = None
        self._flush()

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt):
        now = self.clock.seconds() + dt
        keep = []
        for job, deadline in self.queue:
            if deadline is not None and deadline <= now:
                self.expected[job] = False
            else:
                keep.append((job, deadline))
        self.queue = keep
        self.clock.advance(dt)

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data())
    def cancel_waiter(self, data):
        i = data.draw(st.integers(0, len(self.queue) - 1))
        job, _ = self.queue.pop(i)
        self.expected[job] = 'cancelled'
        self.deferreds[job].cancel()
        self._flush()

    @rule()
    def close(self):
        self.lock.close()
        for job, _ in self.queue:
            self.expected[job] = 'closed'
        self.queue = []
        self.closed = True
        self._flush()

    @invariant()
    def status_matches_model(self):
        status = self.lock.status()
        assert (status.holder.job if status.holder else None) == self.holder
        assert [w.job for w in status.waiters] == [job for job, _ in self.queue]
        assert status.closed == self.closed

    @invariant()
    def outcomes_match_model(self):
        assert self.actual == self.expected

    @invariant()
    def no_timer_outlives_its_waiter(self):
        waiting_with_deadline = sum(1 for _, d in self.queue if d is not None)
        assert len(self.clock.getDelayedCalls()) == waiting_with_deadline


TestTimeoutLockModel = LockModel.TestCase
TestTimeoutLockModel.__doc__ = (
    'When requests, try-once acquires, releases, cancels, clock advances and close '
    'are interleaved at random, the lock status and every outcome match the model.')
TestTimeoutLockModel.settings = settings(max_examples=150, stateful_step_count=40,
                                         deadline=None)
