"""The registry's view of the bus: is the router ours, and who is who on it.

A thin Twisted shell over :class:`.sessions.SessionMap`. After each join of
the registry's session, :class:`BusWatch`:

1. calls ``ocs_locking.bus.info`` (:data:`ocs_locking.wire.BUS_INFO`): an
   answer from the router component (for this address root and this
   registry) means the bus is *verified*: the router lets only an agent's own
   session publish on its feeds, and discloses publishers; an error
   (``not_authorized`` under ocs's stock config, ``no_such_procedure``)
   means it is not, and the registry says so in one log line and in its
   status;
2. when verified, subscribes to the meta events (``wamp.session.on_leave``,
   ``wamp.registration.on_create/on_register/on_unregister/on_delete``) and
   loads the registrations already there (``wamp.registration.list``,
   ``get``, ``list_callees``) into the map.

``state`` is ``'pending'`` (joined, not checked yet), ``'verified'`` or
``'unverified'``. The check ends within ``check_timeout`` seconds: when no
answer came by then, the bus is not verified (a late answer still verifies
it from then on). ``on_settled()`` is called once each check ends (verified,
not verified, timed out) and when the session leaves, so that the registry
judges the messages it held meanwhile. ``on_gone(instance_id)`` is called when an agent's session
ends (on_leave, or its ``.ops`` registration deleted or unregistered);
``on_lost(registration_id)`` when a registration of the registry's session
(or of a session crossbar does not name: ``None`` at a detach) is
unregistered or deleted; the registrar ignores one that is not its own. Reactor thread only.
"""
from autobahn.twisted.wamp import ApplicationSession
from twisted.internet.defer import inlineCallbacks

from ocs_locking.wire import BUS_INFO, error_reason, one_line

__all__ = ['BusWatch', 'META_TOPICS']

#: The meta events the registry follows (granted by exact URI to it only).
META_TOPICS = ('wamp.session.on_leave', 'wamp.registration.on_create',
               'wamp.registration.on_register', 'wamp.registration.on_unregister',
               'wamp.registration.on_delete')

NOT_JOINED = 'the registry is not joined to the router'
PENDING = 'being checked'
NO_COMPONENT = 'no such procedure (the router component is not running)'
#: Seconds the check after a join may take before the bus is taken as not
#: verified (the messages held meanwhile are then judged so).
CHECK_TIMEOUT = 10.0


class BusWatch:
    """Verifies the bus at every join and keeps ``sessions`` from meta events.

    Args:
        agent: the registry's OCSAgent (an ApplicationSession).
        sessions (SessionMap): the map to keep.
        root (str): the site's address root.
        registry_id (str): this registry's instance id.
        on_gone (callable): ``on_gone(instance_id)``.
        on_lost (callable): ``on_lost(registration_id)``.
        on_settled (callable): ``on_settled()``, when a check ends or the
            session leaves.
        reactor: the Twisted reactor (default: the global one).
        check_timeout (float): seconds a check may take.
    """

    def __init__(self, agent, sessions, root, registry_id, on_gone, on_lost=None,
                 on_settled=None, reactor=None, check_timeout=CHECK_TIMEOUT):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor, self.check_timeout = reactor, check_timeout
        self.on_settled = on_settled or (lambda: None)
        self._timer = None          # the check's timeout, while pending
        self.agent, self.sessions = agent, sessions
        self.root, self.registry_id = root, registry_id
        self.log = agent.log
        self.on_gone, self.on_lost = on_gone, on_lost or (lambda reg: None)
        self.state = 'unverified'
        self.reason = NOT_JOINED
        self.session = None         # the registry's own WAMP session id
        self.info = None            # what the component answered
        self._round = 0             # bumped at every join and leave
        self._logged = None         # the last reason logged
        agent.on('ready', lambda session: self.joined(session))
        agent.on('leave', lambda session, details=None: self.left())

    @property
    def verified(self):
        return self.state == 'verified'

    def summary(self):
        """``{'verified', 'reason', 'session'}`` (the start of ``bus`` in the
        registry's session data)."""
        return {'verified': self.verified, 'reason': None if self.verified else self.reason,
                'session': self.session}

    def left(self):
        self._round += 1
        self.state, self.reason, self.session = 'unverified', NOT_JOINED, None
        self.sessions.clear()
        self._settle()

    def _settle(self):
        """The check ended (or the session left): stop its timer, tell the
        registry."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.on_settled()

    def _timed_out(self, this):
        self._timer = None
        if this == self._round and self.state == 'pending':
            self._unverified(f'{BUS_INFO}: no answer in {self.check_timeout:g} s '
                             f'(the check goes on)')
            self._settle()

    @inlineCallbacks
    def joined(self, session):
        try:
            yield self._joined(session)
        finally:
            if self.state != 'pending':
                self._settle()

    @inlineCallbacks
    def _joined(self, session):
        self._round += 1
        this = self._round
        self.session = getattr(session, '_session_id', None)
        self.state, self.reason = 'pending', PENDING
        self.sessions.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(self.check_timeout, self._timed_out, this)
        try:
            info = yield session.call(BUS_INFO)
        except Exception as e:
            if this == self._round:
                self._unverified(f'{BUS_INFO}: {error_reason(e, not_running=NO_COMPONENT)}')
            return
        if this != self._round:
            return
        complaint = self._check(info)
        if complaint:
            self._unverified(complaint)
            return
        try:
            for topic in META_TOPICS:
                handler = getattr(self, '_' + topic.rsplit('.', 1)[-1])
                # autobahn's own subscribe: ocs's refuses a topic subscribed
                # before (a re-join) and wants options as a dict
                subscribe = ApplicationSession.subscribe \
                    if isinstance(session, ApplicationSession) else type(session).subscribe
                yield subscribe(session, handler, topic)
            loaded = yield self._load(session)
        except Exception as e:
            if this == self._round:
                self._unverified(f'the meta API: {error_reason(e)}')
            return
        if this != self._round:
            return
        self.sessions.load(loaded)
        self.info, self.state, self.reason = info, 'verified', None
        self._logged = None
        self.log.info('bus verified: {component} {version}, {n} agent(s) on the bus',
                      component=info.get('component'), version=info.get('version'),
                      n=len(self.sessions))

    # -- internals ----------------------------------------------------------------

    def _check(self, info):
        if not isinstance(info, dict) or info.get('component') != 'ocs_locking.bus':
            return f'{BUS_INFO} answered {one_line(repr(info), 80)}, not the ocs_locking.bus ' \
                   f'component'
        if info.get('address_root') != self.root:
            return f"the router component serves address root {info.get('address_root')!r}, " \
                   f"not {self.root!r}"
        if info.get('registry') != self.registry_id:
            return f"the router component serves registry {info.get('registry')!r}, " \
                   f"not {self.registry_id!r}"
        if info.get('disclose') is not True:
            return 'the router component does not disclose publishers'
        return None

    def _unverified(self, reason):
        self.state, self.reason = 'unverified', one_line(reason, 200)
        if self._logged != self.reason:
            self._logged = self.reason
            self.log.warn('bus not verified: {reason} (forged lock events cannot be told '
                          'apart; liveness from heartbeats only)', reason=self.reason)

    @inlineCallbacks
    def _load(self, session):
        regs = yield session.call('wamp.registration.list')
        ids = regs.get('exact', []) if isinstance(regs, dict) else []
        out = []
        for reg in ids if isinstance(ids, list) else []:
            try:
                details = yield session.call('wamp.registration.get', reg)
                if self.sessions.instance_of_uri((details or {}).get('uri')) is None:
                    continue
                callees = yield session.call('wamp.registration.list_callees', reg)
            except Exception:
                continue            # gone meanwhile: its on_delete says so
            out.append((details, callees))
        return out

    def _gone(self, instance_ids):
        for instance_id in instance_ids:
            self.on_gone(instance_id)

    def _on_leave(self, *args, **kw):
        self._gone(self.sessions.left(args[0] if len(args) == 1 else None))

    def _on_create(self, *args, **kw):
        self.sessions.created(*(args if len(args) == 2 else (None, None)))

    def _on_register(self, *args, **kw):
        self.sessions.registered(*(args if len(args) == 2 else (None, None)))

    def _on_unregister(self, *args, **kw):
        args = args if len(args) == 2 else ('malformed', None)
        self._gone(self.sessions.unregistered(*args))
        if args[1] is not None and args[0] in (None, self.session):
            self.on_lost(args[1])       # ignored unless it is one of ours

    def _on_delete(self, *args, **kw):
        args = args if len(args) == 2 else ('malformed', None)
        self._gone(self.sessions.deleted(*args))
        if args[1] is not None and args[0] in (None, self.session):
            self.on_lost(args[1])       # ignored unless it is one of ours
