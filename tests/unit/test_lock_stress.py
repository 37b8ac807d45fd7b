"""Stress: worker threads and reactor callers hammer one lock while an
invariant checker runs inside every critical section.

Invariants: never two holders at once; inside a section ``lock.job`` is the
section's own job and the lock says the caller holds it. Bounded by counts.
"""
import random
import threading
import time

from twisted.internet import defer, task

from ocs_locking import TimeoutLock

from ..support import WAIT

THREADS = 4
SECTIONS_PER_THREAD = 1000
REACTOR_CALLERS = 2
SECTIONS_PER_REACTOR_CALLER = 500


class Checker:
    def __init__(self, lock):
        self.lock = lock
        self.inside = 0
        self.guard = threading.Lock()   # protects the checker's own counters
        self.violations = []
        self.sections = 0

    def enter(self, job):
        with self.guard:
            self.inside += 1
            if self.inside != 1:
                self.violations.append(f'{job}: {self.inside} holders')
        time.sleep(0)   # give other threads a chance to break in
        if self.lock.job != job:
            self.violations.append(f'{job}: lock.job is {self.lock.job!r}')
        if not self.lock.held_by_me():
            self.violations.append(f'{job}: lock does not know its holder')

    def leave(self):
        with self.guard:
            self.inside -= 1
            self.sections += 1


def test_TimeoutLock_stress_threads_and_reactor_never_two_holders(reactor_thread):
    """When 4 threads and 2 reactor callers run 5,000 sections with mixed
    acquire styles, no section ever overlaps another and job always names
    the holder; every request is accounted for."""
    lock = TimeoutLock(name='stress')
    chk = Checker(lock)
    outcomes = {'ok': 0, 'busy': 0}
    outcomes_guard = threading.Lock()

    def count(key):
        with outcomes_guard:
            outcomes[key] += 1

    errors = []

    def worker(i):
        try:
            run_worker(i)
        except Exception as e:   # a worker must never die silently
            errors.append(repr(e))

    def run_worker(i):
        rng = random.Random(i)
        job = f't{i}'
        done = 0
        while done < SECTIONS_PER_THREAD:
            style = rng.random()
            if style < 0.5:
                with lock.acquire_timeout(WAIT, job=job) as got:
                    if not got:
                        count('busy')
                        done += 1
                        continue
                    chk.enter(job)
                    chk.leave()
            elif style < 0.8:
                if not lock.acquire(0, job=job):
                    count('busy')
                    done += 1
                    continue
                chk.enter(job)
                chk.leave()
                lock.release()
            else:   # an acquisition loop that hands over to waiters
                if not lock.acquire(WAIT, job=job):
                    count('busy')
                    done += 1
                    continue
                for _ in range(3):
                    chk.enter(job)
                    chk.leave()
                    if not lock.release_and_acquire(WAIT):
                        break
                    count('ok')
                else:
                    lock.release()
                    done += 1
                    count('ok')
                    continue
                count('busy')
                done += 1
                continue
            count('ok')
            done += 1

    @defer.inlineCallbacks
    def reactor_caller(i):
        from twisted.internet import reactor
        job = f'r{i}'
        for n in range(SECTIONS_PER_REACTOR_CALLER):
            got = yield lock.acquire_deferred(WAIT, job=job)
            if not got:
                count('busy')
                continue
            chk.enter(job)
            if n % 10 == 0:   # hold across a reactor turn now and then
                yield task.deferLater(reactor, 0, lambda: None)
            chk.leave()
            lock.release()
            count('ok')

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    # Wrapped in a list so the call returns at once instead of waiting for it.
    [reactor_done] = reactor_thread.call(lambda: [defer.DeferredList(
        [reactor_caller(i) for i in range(REACTOR_CALLERS)], consumeErrors=False)])
    for t in threads:
        t.join(120)
        assert not t.is_alive(), 'a worker thread did not finish'
    results = reactor_thread.call(lambda: reactor_done)
    assert all(ok for ok, _ in results), results

    assert errors == []
    assert chk.violations == []
    assert chk.sections >= THREADS * SECTIONS_PER_THREAD // 2
    st = lock.status()
    assert st.holder is None and st.waiters == ()
    assert st.counters.acquired == st.counters.released
    assert outcomes['ok'] > 0
