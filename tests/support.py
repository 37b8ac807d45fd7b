"""Test helpers: a real reactor in a background thread, a fake reactor, actors
that hold a lock from a thread or from the reactor, and an event recorder to
wait on lock events instead of sleeping."""
import concurrent.futures
import threading

from twisted.internet import task

from ocs_locking.testing import ReactorThread  # noqa: F401  (re-exported for the tests)

WAIT = 10.0  # bound on every wait in the tests, in seconds


class FakeReactor(task.Clock):
    """A Clock that also queues callFromThread calls (run on advance(0))."""

    def callFromThread(self, f, *args, **kwargs):
        self.callLater(0, f, *args, **kwargs)


class EventRecorder:
    """A lock listener that records events and lets tests wait for them."""

    def __init__(self, lock=None):
        self.events = []
        self._cond = threading.Condition()
        if lock is not None:
            lock.add_listener(self)

    def __call__(self, event):
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def count(self, kind):
        with self._cond:
            return sum(1 for e in self.events if e.event == kind)

    def wait_for(self, kind, n=1, timeout=WAIT):
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for e in self.events if e.event == kind) >= n, timeout)
        assert ok, f'timed out waiting for {n} {kind!r} events; got {self.events}'

    def kinds(self):
        with self._cond:
            return [e.event for e in self.events]


class ThreadActor:
    """Calls lock methods from its own thread, in submission order."""
    kind = 'thread'

    def __init__(self, lock, name):
        self.lock = lock
        self.name = name
        self._ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    def acquire(self, timeout, job=None):
        """Start acquiring; returns a Future of the result (True/False or error)."""
        return self._ex.submit(self.lock.acquire, timeout, job or self.name)

    def call(self, fn, *args):
        return self._ex.submit(fn, *args)

    def release(self):
        return self._ex.submit(self.lock.release).result(WAIT)

    def close(self):
        self._ex.shutdown(wait=False)


class ReactorActor:
    """Calls lock methods on the reactor thread through acquire_deferred."""
    kind = 'reactor'

    def __init__(self, lock, name, rt):
        self.lock = lock
        self.name = name
        self.rt = rt

    def acquire(self, timeout, job=None):
        fut = concurrent.futures.Future()

        def start():
            d = self.lock.acquire_deferred(timeout, job or self.name)
            d.addCallbacks(fut.set_result, lambda f: fut.set_exception(f.value))
        self.rt.reactor.callFromThread(start)
        return fut

    def release(self):
        return self.rt.call(self.lock.release)

    def close(self):
        pass
