"""A standby registry: follow the primary's store, take its place when it goes.

A LockRegistryAgent started with ``--standby-for lock-registry`` (its own
instance id, e.g. ``lock-registry-b``, its own ``--db``) is built as *the*
``lock-registry``: its agent address, feeds and procedures are the
service's. What keeps it from serving is WAMP's single-registration rule,
which the router applies: ocs's ``onJoin`` first registers
``<service>.ops``, and :class:`Standby` holds that registration back
(ocs's join waits at it: no heartbeat, no feed, no lease procedure, no
``monitor``) while it

* registers its own identity, ``<root>.<instance-id>.ops`` and
  ``<root>.<instance-id>`` (``status`` and ``history`` answer there; every
  other operation is refused in one line while it stands by), which is also
  what the router checks before it lets it call ``replica.pull``;
* follows the primary (:mod:`.replication`): a snapshot into its own store,
  then each batch the primary writes, acknowledged by the next pull;
* the moment a pull fails (crossbar ends an in-flight call at once when its
  callee's session goes: kill -9 included) while it is in sync, registers
  ``<service>.ops`` itself. ``procedure_already_exists``: the primary is
  still there, it follows on. Registered: it *takes over*, before ocs's
  join goes on: its store's grants move onto this host's clock
  (:meth:`Follower.rebase <ocs_locking.leases.replica.Follower.rebase>`),
  the epoch rises above the primary's (every new token exceeds every token
  the primary issued, even one it never heard of), request ids skip a
  block, one ``takeover`` audit row, the lease state is loaded again; then
  ocs's join completes and everything registers and publishes under the
  service's address, as after a restart.

A standby that is not in sync (never followed, dropped, re-joined) never
takes over: it cannot know what the primary granted. Reactor thread only.
"""
import time

from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer, task
from twisted.internet.defer import inlineCallbacks

from ocs_locking.agents.lock_registry.replication import pull_uri
from ocs_locking.errors import LeaseStoreError
from ocs_locking.leases.replica import (PULL_WAIT, Follower, ReplicaError, Resync, check_reply,
                                        takeover_epoch)
from ocs_locking.wamp import set_nodelay
from ocs_locking.wire import error_reason, one_line

__all__ = ['Standby', 'STANDBY_OPS', 'RETRY', 'ELECT_RETRY']

#: Operations the standby's own address serves while it stands by.
STANDBY_OPS = ('status', 'history')
#: Seconds between attempts to follow a primary that does not answer.
RETRY = 0.5
#: Seconds between attempts to register the service while a failed pull
#: says the primary may be gone and the router still says it is there.
ELECT_RETRY = 0.05
#: The registration the router's single-registration rule decides.
ALREADY = 'wamp.error.procedure_already_exists'


class Standby:
    """Holds ``<service>.ops`` back until the primary is gone (see the module).

    Args:
        agent: the OCSAgent, made with the service's address.
        leases (LeaseOps): its lease tasks (store wrapped by replication).
        identity (str): this registry's own instance id.
        root (str): the site's address root.
        rid_block (int): request ids skipped at a takeover.
        reactor, mono: the Twisted reactor and a monotonic clock.
        director: the LeaseDirector, if any (its credential hashes reloaded).
        server: this registry's own ReplicaServer (its status once serving).
        wait (float): the long poll's wait, seconds.
    """

    def __init__(self, agent, leases, identity, root, rid_block, reactor=None,
                 mono=time.monotonic, director=None, server=None, wait=PULL_WAIT):
        if reactor is None:
            from twisted.internet import reactor
        self.agent, self.leases, self.reactor, self.mono = agent, leases, reactor, mono
        self.log = agent.log
        self.service_address = agent.agent_address
        self.service = self.service_address.split('.', 1)[-1]
        self.identity = identity
        self.identity_address = f'{root}.{identity}'
        self.rid_block, self.director, self.server, self.wait = rid_block, director, server, wait
        self.store = getattr(leases.store, 'inner', leases.store)
        self.follower = Follower()
        self.serving = False
        self.took_over = None       # what the takeover did (status)
        self.failed_at = None       # monotonic time the last pull failed, in sync
        self._parked = None         # ocs's <service>.ops registration, held back
        self._round = 0             # bumped at every join and leave
        self._logged = None
        self._real_register = agent.register
        agent.register = self._register
        agent.on('join', self._joined)
        agent.on('leave', self._left)
        leases.paused = lambda: not self.serving

    # -- the registration gate ------------------------------------------------------------

    def _register(self, endpoint, procedure=None, *args, **kwargs):
        if procedure == self.service_address + '.ops' and not self.serving:
            d = defer.Deferred()
            self._parked = (endpoint, procedure, args, kwargs, d)
            return d
        return self._real_register(endpoint, procedure, *args, **kwargs)

    def _identity_ops(self, action, op_name, params=None, timeout=None, password=None):
        if not self.serving and op_name not in STANDBY_OPS:
            import ocs
            return (ocs.ERROR, f'{self.identity} is a standby for {self.service}: it serves '
                               f'{op_name} only once it has taken over; call {self.service}',
                    {})
        return self.agent._ops_handler(action, op_name, params=params, timeout=timeout,
                                       password=password)

    # -- the session --------------------------------------------------------------------

    def _joined(self, session, details=None):
        self._round += 1
        set_nodelay(self.agent)
        if not self.serving:
            self.follower.reset('joined: following')
            self._start(self._round)

    def _left(self, session, details=None):
        self._round += 1
        self._parked = None         # (that join never completes; the next one asks again)
        if not self.serving:
            self.follower.reset('left the router')

    @inlineCallbacks
    def _start(self, rnd):
        try:
            yield self._real_register(self._identity_ops, self.identity_address + '.ops')
            yield self._real_register(self.agent._management_handler, self.identity_address)
        except ApplicationError as e:
            if e.error == ALREADY:
                self.log.error('{address} is registered already: is this standby running '
                               'twice?', address=self.identity_address)
            else:
                self.log.error('standby: cannot register {address}: {e}',
                               address=self.identity_address, e=error_reason(e))
            self.agent.leave()
            return
        except Exception:
            return                  # the session went meanwhile
        yield self._follow(rnd)

    @inlineCallbacks
    def _follow(self, rnd):
        uri = pull_uri(self.service_address)
        while rnd == self._round and not self.serving:
            try:
                if not self.follower.in_sync:
                    self.follower.state = 'following'
                    reply = yield self.agent.call(uri, self.identity)
                    if rnd == self._round:
                        self._install(check_reply(reply))
                else:
                    reply = yield self.agent.call(uri, self.identity, self.follower.stream,
                                                  self.follower.seq, self.wait)
                    if rnd == self._round:
                        self._apply(check_reply(reply))
                self.failed_at = None
            except (Resync, ReplicaError) as e:
                self._lost_sync(str(e))
            except LeaseStoreError as e:
                self._lost_sync(f'the standby\'s store failed: {e}')
                yield self._sleep(RETRY)
            except Exception as e:
                if rnd != self._round:
                    return
                if self.follower.in_sync:
                    if self.failed_at is None:
                        self.failed_at = self.mono()
                    won = yield self._elect(error_reason(e))
                    if won:
                        return
                    yield self._sleep(ELECT_RETRY)
                else:
                    self._say(f'cannot follow {self.service}: {error_reason(e)} (retrying '
                              f'every {RETRY:g} s)')
                    yield self._sleep(RETRY)

    def _sleep(self, seconds):
        return task.deferLater(self.reactor, seconds, lambda: None)

    def _lost_sync(self, why):
        why = one_line(why, 200)
        self.follower.reset(why)
        self._say(f'following {self.service} again from a snapshot: {why}')

    def _say(self, text):
        if text != self._logged:
            self._logged = text
            self.log.warn('standby: {text}', text=text)

    def _install(self, reply):
        state = self.follower.snapshot(reply, self.mono())
        try:
            self.store.install(state['grants'], state['counters'], state['last_request_id'],
                               state['audit'], state['privs'], state.get('bookings') or (),
                               state.get('last_booking_id') or 0)
        except BaseException:
            self.follower.reset('the snapshot could not be installed')
            raise
        self._logged = None
        self.log.info('standby: following {service} (epoch {epoch}, batch {seq}): {g} '
                      'grant(s), {b} booking(s), {a} audit row(s)', service=self.service,
                      epoch=self.follower.epoch, seq=self.follower.seq,
                      g=len(state['grants']), b=len(state.get('bookings') or ()),
                      a=len(state['audit']))

    def _apply(self, reply):
        for seq, op, payload in self.follower.batches(reply, self.mono()):
            if op == 'apply':
                self.store.apply(**payload)
            else:
                self.store.set_privs_hash(*payload)
            self.follower.applied_upto(seq)

    # -- the election ---------------------------------------------------------------------

    @inlineCallbacks
    def _elect(self, why):
        """Try to register ``<service>.ops``; True once this registry serves."""
        parked = self._parked
        if parked is None:
            return False            # ocs's join has not asked for it yet
        endpoint, procedure, args, kwargs, d = parked
        try:
            reg = yield self._real_register(endpoint, procedure, *args, **kwargs)
        except ApplicationError as e:
            if e.error != ALREADY:
                self._say(f'cannot register {procedure}: {error_reason(e)}')
            return False
        except Exception:
            return False
        if self._parked is not parked:
            return False            # left meanwhile
        self._take_over(why)
        self._parked = None
        d.callback(reg)
        return True

    def _take_over(self, why):
        """The router gave this registry the service: make its store the
        primary's successor, then let ocs's join go on."""
        mono, now = self.mono(), self.leases.clock()
        loaded = self.store.load()
        grants = self.follower.rebase(loaded['grants'], now, mono)
        epoch = takeover_epoch(self.store.epoch, self.follower.epoch)
        self.store.raise_epoch(epoch)
        gap = None if self.failed_at is None else round(mono - self.failed_at, 3)
        detail = {'from_epoch': self.follower.epoch, 'epoch': epoch, 'batch': self.follower.seq,
                  'grants': len(grants), 'why': one_line(why, 200), 'detected_for': gap}
        self.store.apply(grants={g['resource']: g for g in grants},
                         last_request_id=loaded['last_request_id'] + self.rid_block,
                         audit=[{'at': now, 'action': 'takeover', 'resource': None,
                                 'owner': self.identity, 'token': None, 'client': self.identity,
                                 'detail': detail, 'ok': True,
                                 'caller': {'identity': self.identity, 'verified': True,
                                            'via': 'standby'}}])
        self.leases.state.reload()
        if self.director is not None:
            self.director.reload_hashes()
        self.serving = True
        self.took_over = dict(detail, at=now)
        self.follower.state, self.follower.why = 'serving', None
        self.log.warn('standby {me} took over {service}: {why}; epoch {epoch} (the '
                      'primary\'s was {old}), {n} lease(s) kept', me=self.identity,
                      service=self.service, why=detail['why'], epoch=epoch,
                      old=self.follower.epoch, n=len(grants))

    # -- status -------------------------------------------------------------------------

    def status(self):
        """``{'role': 'standby' | 'primary', 'service', 'identity', 'follower':
        {...}, 'took_over': {...} or None}`` (+ the ReplicaServer's once it
        serves: its own standbys)."""
        out = {'role': 'primary' if self.serving else 'standby', 'service': self.service,
               'identity': self.identity, 'follower': self.follower.status(self.mono()),
               'took_over': self.took_over}
        if self.serving and self.server is not None:
            out.update({k: v for k, v in self.server.status().items() if k != 'role'})
        elif not self.serving:
            self.leases.state.reload()      # (its leases block shows the copy)
        return out


def add_arguments(parser):
    """``--standby-for`` (``make_parser`` adds it)."""
    parser.add_argument('--standby-for', default=None, metavar='INSTANCE_ID',
                        help='Stand by for the registry INSTANCE_ID (e.g. lock-registry): '
                             'follow its lease database into this one (--db) and take its '
                             'place, under its name, within a second of its death '
                             '(docs/standby.rst). The router must list this instance in '
                             'the bus component\'s standbys.')
    return parser


def check_arguments(args):
    """A one-line complaint about ``--standby-for``, or None."""
    target = getattr(args, 'standby_for', None)
    if target is None:
        return None
    if not isinstance(target, str) or not target or '.' in target or ' ' in target:
        return f'--standby-for must be an instance id (no dots or spaces), not {target!r:.60}'
    if target == getattr(args, 'instance_id', None):
        return (f'--standby-for {target}: a registry cannot stand by for itself (give the '
                f'standby its own --instance-id)')
    return None
