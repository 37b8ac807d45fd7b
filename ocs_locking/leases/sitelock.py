"""SiteLock: an agent's site-wide lease, fenced where the agent meets the hardware.

The agent asks the LockRegistryAgent for a lease on a resource path over
WAMP (``<registry>.lease.acquire``), renews it in the background, and wraps
every hardware call in :meth:`SiteLock.guard`::

    self.bridge = SiteLock(agent, 'satp1/bridge-1', lease=10)
    ...
    with self.bridge.guard():          # raises LeaseLost instead of talking
        self.device.set_heater(value)  # to the device without a valid lease

``guard()`` refuses once the lease is lost: revoked (a force_release, seen
at the next renewal), expired, or unrenewable because the registry stayed
unreachable until the lease ran out (a failed renewal is retried every
0.5 s). The local deadline is the lease's
expiry on this host's clock, so a holder frozen past its lease (SIGSTOP) is
refused when it wakes, before its next renewal is even tried. The fencing
token of the current grant is in :attr:`SiteLock.token`.

Reactor code uses :meth:`acquire_deferred` / :meth:`release_deferred`;
worker threads use :meth:`acquire` / :meth:`release`, which wait for the
reactor (never call those on the reactor thread).
"""
import contextlib
import threading
import time

from twisted.internet import defer, task
from twisted.python import threadable

from ..errors import LeaseLost, ReactorBlockingError
from ..wire import error_reason, lease_uri
from .paths import check_resource

__all__ = ['SiteLock', 'LeaseLost']

#: Seconds between renewal retries after a failed renewal.
RETRY = 0.5


def _reason(exc):
    """A one-line reason from a WAMP or connection error."""
    return error_reason(exc, not_running='its lease procedures are not registered '
                                         '(is the registry running?)')



class SiteLock:
    """A lease on one site-wide resource for an OCS agent.

    Args:
        agent (OCSAgent): the agent (its WAMP session makes the calls).
        resource (str): the resource path, e.g. ``satp1/bridge-1``.
        owner (str): the owner recorded by the registry (default: the
            agent's instance id).
        lease (float): lease length in seconds; renewed every ``lease / 3``.
        tree (bool): exclude everything below ``resource`` too.
        registry (str): the LockRegistryAgent's instance id.
        on_revoked (callable): called on the reactor thread with the reason
            when the lease is lost.
        clock: time source (default ``time.time``; tests inject one).
        reactor: the Twisted reactor (default: the global one).
    """

    def __init__(self, agent, resource, owner=None, lease=10.0, tree=False, note='',
                 registry='lock-registry', on_revoked=None, clock=time.time, reactor=None):
        check_resource(resource)
        if not isinstance(lease, (int, float)) or isinstance(lease, bool) or not 0 < lease <= 3600:
            raise ValueError(f'lease must be seconds in (0, 3600], not {lease!r}')
        if reactor is None:
            from twisted.internet import reactor
        self.agent = agent
        self.resource = resource
        self.owner = owner
        self.lease = float(lease)
        self.tree = tree
        self.note = note
        self.registry = registry
        self.on_revoked = on_revoked
        self.clock = clock
        self.reactor = reactor
        self.token = None
        self.expires = None
        self.lost = None            # reason, once the lease is lost
        self.last_refusal = None    # why the last acquire was refused
        self._renewer = None
        self._retry = None          # a quick renewal retry after a failed one

    # -- helpers ------------------------------------------------------------------

    def _uri(self, name):
        root = self.agent.agent_address.rsplit('.', 1)[0]
        return lease_uri(f'{root}.{self.registry}', name)

    @property
    def _owner(self):
        return self.owner or self.agent.agent_address.rsplit('.', 1)[-1]

    @property
    def held(self):
        """True while the lease is valid (held, not lost, not past its expiry)."""
        return self.token is not None and self.lost is None and self.clock() < self.expires

    def check(self):
        """Raise :class:`LeaseLost` unless the lease is valid now."""
        if self.token is None:
            raise LeaseLost(self.lost or f'no lease on {self.resource!r}')
        if self.lost is not None:
            raise LeaseLost(self.lost)
        if self.clock() >= self.expires:
            self._lose(f'lease on {self.resource!r} (token {self.token}) expired '
                       f'{self.clock() - self.expires:.1f} s ago')
            raise LeaseLost(self.lost)
        return self.token

    @contextlib.contextmanager
    def guard(self):
        """Context manager around a hardware call: yields the fencing token,
        or raises :class:`LeaseLost` without running the body."""
        yield self.check()

    def _lose(self, reason):
        if self.lost is not None:
            return
        self.lost = reason
        if self._renewer is not None and self._renewer.running:
            self.reactor.callFromThread(self._stop_renewing)
        if self.on_revoked is not None:
            self.reactor.callFromThread(self.on_revoked, reason)

    def _stop_renewing(self):
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    # -- reactor API ----------------------------------------------------------------

    @defer.inlineCallbacks
    def acquire_deferred(self, timeout=0.0):
        """Ask for the lease (waiting up to ``timeout`` s in the registry's
        queue). Fires True when granted, False when busy or when the registry
        cannot be reached (:attr:`last_refusal` says which)."""
        try:
            reply = yield self.agent.call(
                self._uri('acquire'), self.resource, self._owner, self.lease, timeout,
                self.tree, self.note, self.agent.agent_address)
        except Exception as e:      # not joined, no registry, router gone...
            self.last_refusal = f'the lock registry is unreachable: {_reason(e)}'
            return False
        if not reply.get('ok'):
            self.last_refusal = reply.get('message')
            return False
        data = reply['data']
        self.token = data['token']
        self.expires = data['expires']
        self.lost = None
        self._renewer = task.LoopingCall(self._renew)
        self._renewer.clock = self.reactor
        self._renewer.start(self.lease / 3, now=False)
        return True

    @defer.inlineCallbacks
    def _renew(self):
        if self.lost is not None or self.token is None:
            return
        try:
            reply = yield self.agent.call(self._uri('renew'), self.resource, self.token,
                                          self.lease, self.agent.agent_address)
        except Exception as e:       # registry or router unreachable: keep trying
            if self.clock() >= self.expires:
                self._lose(f'could not renew the lease on {self.resource!r} before it '
                           f'expired: {_reason(e)}')
            elif self._retry is None or not self._retry.active():
                # Try again soon rather than at the next lease/3 tick, so a
                # short outage does not cost the lease.
                self._retry = self.reactor.callLater(RETRY, self._renew)
            return
        if reply.get('ok'):
            self.expires = reply['data']['expires']
        else:
            self._lose(f'lease on {self.resource!r} was lost: {reply.get("message")}')

    @defer.inlineCallbacks
    def release_deferred(self):
        """Give the lease back (a lost lease is simply forgotten). Fires True
        if the registry took it back; False if it was lost or unreachable
        (the lease then runs out by itself)."""
        self._stop_renewing()
        token, self.token = self.token, None
        if token is None or self.lost is not None:
            return False
        try:
            reply = yield self.agent.call(self._uri('release'), self.resource, token,
                                          self.agent.agent_address)
        except Exception:
            return False
        return bool(reply.get('ok'))

    # -- thread API -----------------------------------------------------------------

    def _blocking(self, fn, *args, timeout):
        if threadable.isInIOThread():
            raise ReactorBlockingError(
                f'SiteLock.{fn.__name__.replace("_deferred", "")}() would block the reactor '
                f'thread; use {fn.__name__}()')
        done = threading.Event()
        out = {}

        def run():
            d = fn(*args)
            d.addCallbacks(lambda r: out.setdefault('value', r),
                           lambda f: out.setdefault('error', f.value))
            d.addBoth(lambda _: done.set())
        self.reactor.callFromThread(run)
        if not done.wait(timeout):
            raise TimeoutError(f'the lock registry did not answer within {timeout:g} s')
        if 'error' in out:
            raise out['error']
        return out['value']

    def acquire(self, timeout=0.0):
        """Thread version of :meth:`acquire_deferred`."""
        return self._blocking(self.acquire_deferred, timeout, timeout=timeout + 30)

    def release(self):
        """Thread version of :meth:`release_deferred`."""
        return self._blocking(self.release_deferred, timeout=30)
