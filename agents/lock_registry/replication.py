"""The primary's side of a standby registry: every store write, to the standbys.

A thin Twisted shell over :class:`ocs_locking.leases.replica.ReplicaLog`
(see that module for the protocol and docs/standby.rst for the failure
model):

* :class:`ReplicatedStore` is the lease store as LeaseState and the access
  director see it: each ``apply``, ``record`` and ``set_privs_hash`` is
  written locally first, then numbered in the log (no standby attached:
  nothing kept).
* :class:`ReplicaServer` serves ``<service>.replica.pull`` (registered at
  every join, like the lease procedures, once this registry serves): a
  snapshot to a standby that starts following, then the batches after the
  one it acknowledges, waiting up to ``wait`` seconds for one (a long poll,
  whose end also tells the standby at once that this primary is gone).
* :meth:`ReplicaServer.synced` holds a lease call's answer until every
  attached standby acknowledged what the call wrote; a standby that takes
  longer than ``ack_timeout`` is dropped (one log line; ``status`` shows
  it) and the answer goes out without it: the primary goes on alone.

The router lets only the sessions of the standbys the bus component names
(``standbys`` in its config) call ``replica.*``: lease-key and credential
hashes travel there. Reactor thread only.
"""
import secrets
import time

from twisted.internet import defer

from ocs_locking.agents.lock_registry.registrar import Registrar
from ocs_locking.leases.replica import (ACK_TIMEOUT, AUDIT_TAIL, PULL_WAIT, ReplicaError,
                                        ReplicaLog, Resync, check_name)
from ocs_locking.wire import PAYLOAD_LIMIT, json_size

__all__ = ['ReplicatedStore', 'ReplicaServer', 'pull_uri', 'after_sync']

#: The largest snapshot sent (JSON octets): its audit tail is halved until it fits.
SNAPSHOT_BUDGET = PAYLOAD_LIMIT // 4


def pull_uri(service_address):
    """``observatory.lock-registry.replica.pull``."""
    return f'{service_address}.replica.pull'


class ReplicatedStore:
    """A LeaseStore whose writes are also logged for standbys (every other
    attribute is the store's own). ``inner`` is the store itself."""

    def __init__(self, store, server):
        self.inner, self._server = store, server

    def apply(self, **changes):
        self.inner.apply(**changes)
        self._server.wrote('apply', changes)

    def record(self, at, action, resource=None, owner=None, token=None, client=None,
               detail=None, ok=True, caller=None):
        self.inner.record(at, action, resource, owner, token, client, detail, ok, caller)
        self._server.wrote('apply', {'audit': [{
            'at': at, 'action': action, 'resource': resource, 'owner': owner, 'token': token,
            'client': client, 'detail': detail, 'ok': ok, 'caller': caller}]})

    def set_privs_hash(self, request_id, hash, value):
        self.inner.set_privs_hash(request_id, hash, value)
        self._server.wrote('privs', [int(request_id), str(hash), str(value)])

    def rewrite(self, *args, **kwargs):
        # (after failed writes: what the standbys hold is not known any more)
        self.inner.rewrite(*args, **kwargs)
        self._server.detach_all('the primary rewrote its store after failed writes')

    def __getattr__(self, name):
        return getattr(self.inner, name)


class ReplicaServer:
    """Serves ``replica.pull`` to standbys and holds answers until they ack.

    Args:
        agent: the registry's OCSAgent (its ``agent_address`` is the service's).
        reactor: for ``callLater``.
        identify (callable): ``identify(wamp_session) -> instance id or None``
            (the registry's session map), to tell whether a standby is who it
            says (``verified``).
        clock: a monotonic clock (seconds).
        wall: the registry's wall clock, the one grants' ``expires`` are
            in (sent as ``now``: the standby measures from it, never
            comparing it with its own wall clock).
        ack_timeout (float): seconds a standby may take to acknowledge a batch.
        wait (float): the longest a pull waits for a batch.
    """

    def __init__(self, agent, reactor=None, identify=None, clock=time.monotonic,
                 ack_timeout=ACK_TIMEOUT, wait=PULL_WAIT, wall=time.time):
        if reactor is None:
            from twisted.internet import reactor
        self.agent, self.reactor, self.identify, self.clock = agent, reactor, identify, clock
        self.wall = wall            # the clock grants' times are in (sent as ``now``)
        self.log = agent.log
        self.wait = wait
        self.replica = ReplicaLog(secrets.token_hex(8), ack_timeout=ack_timeout)
        self.store = None           # the LeaseStore itself (wrap)
        self._waiting = []          # (seq, Deferred, result): answers held for acks
        self._parked = {}           # follower -> (Deferred, DelayedCall): its long poll
        self._check = None          # DelayedCall of the next overdue check
        self._registrar = None
        agent.on('ready', lambda session: self._joined())
        agent.on('leave', lambda session, details=None: self._left())

    def wrap(self, store):
        """The store LeaseOps should use (``LeaseOps(wrap_store=...)``)."""
        self.store = store
        return ReplicatedStore(store, self)

    # -- the router -----------------------------------------------------------------

    def _joined(self):
        if self._registrar is None:
            from ocs_locking.agents.lock_registry.leases import _DetailsRegistrar
            self._registrar = Registrar(_DetailsRegistrar(self.agent), self.reactor, self.log,
                                        {pull_uri(self.agent.agent_address): self.pull})
        self._registrar.joined()

    def _left(self):
        if self._registrar is not None:
            self._registrar.left()
        self.detach_all('the primary left the router')

    # -- writes and answers ------------------------------------------------------------

    def wrote(self, op, payload):
        """The store wrote one batch: number it, hand it to parked pulls."""
        self.replica.append(op, payload, self.clock())
        if self._parked:
            for name in list(self._parked):
                self._answer_parked(name)

    def synced(self, result):
        """``result`` once every attached standby acknowledged every batch
        written so far (at once when none is attached or all have)."""
        seq = self.replica.seq
        if self.replica.synced(seq):
            return result
        d = defer.Deferred()
        self._waiting.append((seq, d, result))
        self._arm()
        return d

    def _release_synced(self):
        still = []
        for seq, d, result in self._waiting:
            if self.replica.synced(seq):
                d.callback(result)
            else:
                still.append((seq, d, result))
        self._waiting = still

    def _arm(self):
        if self._check is None or not self._check.active():
            self._check = self.reactor.callLater(self.replica.ack_timeout / 5, self._overdue)

    def _overdue(self):
        self._check = None
        now = self.clock()
        for name in self.replica.overdue(now):
            self._drop(name, f'no acknowledgement within {self.replica.ack_timeout:g} s')
        self._release_synced()
        if self._waiting:
            self._arm()

    def _drop(self, name, why):
        self.replica.drop(name, why, self.clock())
        self.log.warn('standby {name} dropped: {why}; lease calls are answered without it '
                      'until it follows again (from a snapshot)', name=name, why=why)
        parked = self._parked.pop(name, None)
        if parked is not None:
            self._finish(parked, {'kind': 'resync', 'reason': why})

    def detach_all(self, why):
        for name in list(self.replica.followers):
            self._drop(name, why)
        self._release_synced()

    # -- the procedure ------------------------------------------------------------------

    def pull(self, follower, stream=None, after=None, wait=None, details=None):
        """replica.pull(follower, stream=None, after=None, wait=None)

        ``stream`` None: attach ``follower`` and answer a snapshot. Else:
        ``after`` acknowledges every batch up to it; the answer holds the
        batches after it, waiting up to ``wait`` seconds (at most the
        server's) for one. A follower that is not attached, or names
        another stream, is told to resync."""
        try:
            follower = check_name(follower)
            if stream is None:
                return self._snapshot(follower, details)
            batches = self.replica.ack(follower, stream, after, self.clock())
        except ReplicaError as e:
            return {'kind': 'resync', 'reason': str(e)}
        except Resync as e:
            return {'kind': 'resync', 'reason': str(e)}
        self._release_synced()
        f = self.replica.followers.get(follower)
        if f is not None and not f['verified']:
            # (the router's meta event naming its session may come after
            # its first pull: asked again at each one until it says)
            self.replica.identified(follower, *self._identify(follower, details))
        if batches:
            return self._batches(batches)
        wait = self.wait if not isinstance(wait, (int, float)) or isinstance(wait, bool) \
            else max(0.0, min(float(wait), self.wait))
        old = self._parked.pop(follower, None)
        if old is not None:
            self._finish(old, self._batches([]))
        d = defer.Deferred()
        timer = self.reactor.callLater(wait, self._answer_parked, follower)
        self._parked[follower] = (d, timer)
        return d

    def _answer_parked(self, name):
        parked = self._parked.pop(name, None)
        if parked is None:
            return
        f = self.replica.followers.get(name)
        if f is None:
            self._finish(parked, {'kind': 'resync', 'reason': 'not following'})
            return
        batches = [[s, op, p] for s, _at, op, p in self.replica._batches if s > f['acked']]
        self._finish(parked, self._batches(batches))

    @staticmethod
    def _finish(parked, reply):
        d, timer = parked
        if timer.active():
            timer.cancel()
        if not d.called:
            d.callback(reply)

    def _batches(self, batches):
        return {'kind': 'batches', 'stream': self.replica.stream, 'now': self._now(),
                'batches': batches}

    def _now(self):
        return self.wall()

    def _snapshot(self, follower, details):
        store = self.store
        if store is None or store.error is not None:
            return {'kind': 'resync', 'reason': f'the primary\'s store cannot be read: '
                                                f'{getattr(store, "error", "none")}'}
        loaded = store.load()
        privs = [[rid, h, v] for rid, (h, v) in sorted(store.privs_hashes().items())]
        identity, verified = self._identify(follower, details)
        seq = self.replica.attach(follower, self.clock(), identity, verified=verified)
        tail = AUDIT_TAIL
        while True:
            audit = list(reversed(store.history(limit=tail))) if tail else []
            state = dict(loaded, privs=privs, audit=audit)
            reply = {'kind': 'snapshot', 'stream': self.replica.stream, 'seq': seq,
                     'now': self._now(), 'epoch': store.epoch, 'db_id': store.db_id,
                     'state': state}
            if tail == 0 or json_size(reply) <= SNAPSHOT_BUDGET:
                break
            tail //= 2
        self.log.info('standby {name} follows (snapshot at batch {seq}: {g} grant(s), '
                      '{a} audit row(s); {who})', name=follower, seq=seq,
                      g=len(loaded['grants']), a=len(audit),
                      who='verified' if verified else f'declared; its session is {identity}')
        return reply

    def _identify(self, follower, details):
        """``(identity, verified)`` of the pull's caller: the instance whose
        ``.ops`` its session holds (the registry's session map), else its
        WAMP session; verified when that is ``follower``."""
        session = getattr(details, 'caller', None)
        identity = None
        if self.identify is not None and isinstance(session, int):
            try:
                identity = self.identify(session)
            except Exception:
                identity = None
        if identity is None:
            identity = f'wamp session {session}' if session is not None else None
        return identity, identity == follower

    def status(self):
        """``{'role': 'primary', 'stream', 'seq', 'followers': [...], 'dropped',
        'last_drop', 'waiting'}`` (followers: ``behind``, batches not acked)."""
        return dict(self.replica.status(self.clock()), role='primary',
                    waiting=len(self._waiting))


def after_sync(server, fn):
    """An OCS task function whose answer waits for ``server.synced``."""
    def task(session, params):
        return defer.maybeDeferred(fn, session, params).addCallback(server.synced)
    task.__doc__ = fn.__doc__
    task.__name__ = getattr(fn, '__name__', 'task')
    if hasattr(fn, '_ocs_prescreen'):       # ocs's @param checks
        task._ocs_prescreen = fn._ocs_prescreen
    return task
