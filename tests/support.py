"""Test helpers: a real reactor in a background thread, a fake reactor, and
actors that take a lock from a thread or from the reactor. To wait on lock
events instead of sleeping, tests use :class:`ocs_locking.testing.LockProbe`."""
import concurrent.futures
import contextlib
import signal
import subprocess
import sys
import time
import types

from twisted.internet import task

from ocs_locking import Cancel
from ocs_locking.testing import ReactorThread  # noqa: F401  (re-exported for the tests)
from tools.siteconfig import stock_crossbar_config

WAIT = 10.0  # bound on every wait in the tests, in seconds

#: ``Site(..., crossbar_config=CROSSBAR_CONFIGS[name])``: ``'bus'`` the demo
#: config with the bus component (Site's default), ``'stock'`` ocs's stock
#: config (no component; tools.siteconfig.stock_crossbar_config). For
#: ``@pytest.mark.parametrize('router', sorted(CROSSBAR_CONFIGS))``.
CROSSBAR_CONFIGS = {'bus': None, 'stock': stock_crossbar_config()}


class FakeReactor(task.Clock):
    """A Clock that also queues callFromThread calls (run on advance(0))."""

    def callFromThread(self, f, *args, **kwargs):
        self.callLater(0, f, *args, **kwargs)


class ThreadActor:
    """Calls lock methods from its own thread, in submission order."""
    kind = 'thread'

    def __init__(self, lock, name):
        self.lock = lock
        self.name = name
        self._ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    def acquire(self, timeout, job=None):
        """Start acquiring; returns a Future of the result (True/False or error).
        :meth:`cancel` ends that wait (it then returns False)."""
        self._cancel = Cancel()
        return self._ex.submit(self.lock.acquire, timeout, job or self.name,
                               cancel=self._cancel)

    def cancel(self):
        """Cancel the last acquire (its Cancel token)."""
        self._cancel.cancel()

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
            try:
                d = self._deferred = self.lock.acquire_deferred(timeout, job or self.name)
            except Exception as e:
                fut.set_exception(e)
                return
            d.addCallbacks(fut.set_result, lambda f: fut.set_exception(f.value))
        self.rt.reactor.callFromThread(start)
        return fut

    def cancel(self):
        """Cancel the last acquire (its Deferred; the Future then fails with
        CancelledError)."""
        self.rt.call(self._deferred.cancel)

    def call(self, fn, *args):
        """Run fn on the reactor thread; returns a Future of its result."""
        fut = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(fn(*args))
            except Exception as e:
                fut.set_exception(e)
        self.rt.reactor.callFromThread(run)
        return fut

    def release(self):
        return self.rt.call(self.lock.release)

    def close(self):
        pass


class _Event(tuple):
    """``(topic, args, details)`` with ``arrived`` (monotonic seconds)."""

    def __new__(cls, items, arrived):
        ev = super().__new__(cls, items)
        ev.arrived = arrived
        return ev


class WampPeer:
    """A raw WAMP session on a test router (whatever role its websocket
    gives: ``iocs_agent`` on the demo config), driven from the test thread.
    Every method waits at most ``WAIT`` s.

    ``error(method, *args)`` runs ``session.<method>(*args)`` and returns
    the WAMP error URI it failed with, or None if it succeeded.
    """

    def __init__(self, rt, url, realm):
        import queue

        from autobahn.twisted.wamp import ApplicationRunner, ApplicationSession
        from twisted.internet import defer
        self.rt = rt
        self.events = queue.Queue()     # (topic, args, details) of subscribed events
        joined = defer.Deferred()

        class Session(ApplicationSession):
            def onJoin(self, details):
                joined.callback(self)

            def onDisconnect(self):
                if not joined.called:
                    joined.errback(ConnectionError(f'could not join {realm} at {url}'))

        def start():
            runner = ApplicationRunner(url, realm)
            d = runner.run(Session, start_reactor=False, auto_reconnect=False)
            d.addErrback(lambda f: joined.called or joined.errback(f))
            return joined
        self.session = rt.call(start, timeout=WAIT)
        self.id = self.session._session_id

    def run(self, method, *args, **kwargs):
        return self.rt.call(getattr(self.session, method), *args, timeout=WAIT, **kwargs)

    def error(self, method, *args, **kwargs):
        from autobahn.wamp.exception import ApplicationError
        try:
            self.run(method, *args, **kwargs)
        except ApplicationError as e:
            return e.error
        return None

    def publish(self, topic, *args):
        """An acknowledged publish; the error URI or None."""
        from autobahn.wamp.types import PublishOptions
        return self.error('publish', topic, *args, options=PublishOptions(acknowledge=True))

    def subscribe(self, topic, match='exact'):
        """Subscribe; events (with the router's details) go to ``self.events``;
        each is a ``(topic, args, details)`` tuple whose ``arrived`` is the
        monotonic time it arrived (taken in the reactor thread, not when the
        test reads it)."""
        from autobahn.wamp.types import SubscribeOptions

        def handler(*args, details=None):
            self.events.put(_Event((details.topic or topic, args, details), time.monotonic()))
        return self.run('subscribe', handler, topic,
                        options=SubscribeOptions(match=match, details_arg='details'))

    def register(self, uri):
        """Register a procedure that answers 'squatted'; the error URI or None."""
        return self.error('register', lambda *a, **k: 'squatted', uri)

    def close(self):
        if self.session.is_attached():
            try:
                self.rt.call(self.session.leave, timeout=WAIT)
            except Exception:       # already gone
                pass


@contextlib.contextmanager
def reserve_process(site, *args):
    """``ocs-locks reserve ARGS...`` on ``site`` in a child process. Yields
    a namespace with ``proc`` (text pipes); leaving the block normally ends
    it with Ctrl-C (SIGINT) and sets ``returncode``, ``out`` and ``err``.
    The child never outlives the block. Read every line the test expects
    before leaving the block: ``communicate()`` reads the pipe itself, so a
    line already in ``proc.stdout``'s buffer (read ahead by a ``readline``)
    is not in ``out``."""
    proc = subprocess.Popen([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                             'reserve', *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ended = types.SimpleNamespace(proc=proc, returncode=None, out=None, err=None)
    try:
        yield ended
        proc.send_signal(signal.SIGINT)
        ended.out, ended.err = proc.communicate(timeout=30)
        ended.returncode = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
