"""Keeps the lock registry's lease procedures registered on the router.

Registrations live in the router and end with the session that made them: a
router restart or a reconnect takes them away, and a registration can fail
(an old registration of this same registry still in the router after a
reconnect: ``wamp.error.procedure_already_exists``; the router going away
meanwhile). :class:`Registrar` registers every procedure at each join and
retries the missing ones, with a bounded backoff, until it holds them all
(it never gives up: a squatter that holds a URI, ``procedure_already_exists``,
is outlasted); a registration the router takes away while the session
stays (``wamp.registration.on_unregister/on_delete`` of one of ours:
:meth:`Registrar.lost`) is registered again the same way.
:meth:`Registrar.status` says which are missing, why, and that it retries.
"""
from twisted.internet import defer

from ocs_locking.wire import error_reason

__all__ = ['Registrar', 'REGISTER_RETRY', 'REGISTER_RETRY_MAX', 'NOT_JOINED', 'LOST']

#: A failed registration is tried again after this many seconds, the delay
#: doubling up to REGISTER_RETRY_MAX, until it is held.
REGISTER_RETRY, REGISTER_RETRY_MAX = 0.5, 2.0
#: The reason shown for every procedure while the session is not joined.
NOT_JOINED = 'not joined to the router'
_PENDING = 'being registered'
#: The reason shown for a registration the router took away.
LOST = 'lost: unregistered by the router; registering it again'


class Registrar:
    """Keeps a set of WAMP procedures registered for one agent session.

    Contract:

    * :meth:`joined` (at every join) forgets the previous session's
      registrations and registers every procedure; each that fails is tried
      again after REGISTER_RETRY s, the delay doubling up to
      REGISTER_RETRY_MAX s, until all are held.
    * :meth:`left` (the session left the router) stops the retries until
      the next join; a round still in flight for an old session is ignored
      when it comes back.
    * :meth:`lost` (the router dropped one of ours, by registration id)
      makes it missing again and retries it as above.
    * A failure is logged once per procedure and reason; once all are held
      after a failure, one info line says so.
    * Reactor thread only.

    Args:
        agent: the session; ``agent.register(fn, uri)`` returns a Deferred
            (or a value, or raises).
        reactor: for ``callLater``.
        log: a txaio/ocs logger (``error``, ``info``).
        procedures (dict): ``{uri: fn}``.
    """

    def __init__(self, agent, reactor, log, procedures):
        self.agent, self.reactor, self.log = agent, reactor, log
        self.procedures = dict(procedures)
        self.registered = {}        # uri -> its Registration, this session
        self.errors = dict.fromkeys(self.procedures, NOT_JOINED)   # uri -> why missing
        self.rounds = 0             # registration rounds of this session
        self._session = 0           # bumped at every join and leave
        self._failed = False        # a registration failed in this session
        self._retry = None          # the DelayedCall of the next round

    def joined(self):
        """The session (re-)joined: register every procedure."""
        self._restart(_PENDING)
        self._round(self._session, REGISTER_RETRY)

    def left(self):
        """The session left: nothing is registered until the next join."""
        self._restart(NOT_JOINED)

    def lost(self, registration_id):
        """The router dropped the registration ``registration_id`` (meta
        ``on_unregister``/``on_delete`` of ours): register it again. Returns
        the URI, or None when it is not one of ours."""
        for uri, reg in list(self.registered.items()):
            if getattr(reg, 'id', None) == registration_id:
                del self.registered[uri]
                self.errors[uri] = LOST
                self._failed = True
                self.log.error('{uri}: registration lost (unregistered by the router); '
                               'registering it again', uri=uri)
                if not self.retrying:
                    self._retry = self.reactor.callLater(0, self._round, self._session,
                                                         REGISTER_RETRY)
                return uri
        return None

    @property
    def retrying(self):
        return self._retry is not None and self._retry.active()

    def status(self):
        """``{'registered': bool, 'missing': [name, ...], 'errors': {name: reason}}``
        (names are the last part of each URI; the missing ones are always
        being retried: :attr:`retrying`)."""
        missing = [u for u in self.procedures if u not in self.registered]
        return {'registered': not missing, 'missing': [_name(u) for u in missing],
                'errors': {_name(u): self.errors.get(u, _PENDING) for u in missing}}

    # -- internals ----------------------------------------------------------------

    def _restart(self, why):
        self._session += 1
        self.registered = {}
        self.errors = dict.fromkeys(self.procedures, why)
        self.rounds = 0
        self._failed = False
        if self.retrying:
            self._retry.cancel()
        self._retry = None

    def _round(self, session, delay):
        self._retry = None
        missing = [u for u in self.procedures if u not in self.registered]
        self.rounds += 1
        calls = [defer.maybeDeferred(self.agent.register, self.procedures[u], u)
                 for u in missing]
        d = defer.DeferredList(calls, consumeErrors=True)
        d.addCallback(self._done, session, missing, delay)
        d.addErrback(lambda f: self.log.error('lease procedures: {e}', e=f.getErrorMessage()))

    def _done(self, results, session, tried, delay):
        if session != self._session:
            return                  # that session left (or joined again) meanwhile
        for uri, (ok, value) in zip(tried, results):
            if ok:
                self.registered[uri] = value
                self.errors.pop(uri, None)
                continue
            reason = error_reason(value.value, not_running='the router went away')
            if self.errors.get(uri) != reason:
                self.log.error('could not register {uri}: {err} (retrying every '
                               '{d:g} s at most)', uri=uri, err=reason, d=REGISTER_RETRY_MAX)
            self.errors[uri] = reason
            self._failed = True
        if len(self.registered) < len(self.procedures):
            self._retry = self.reactor.callLater(delay, self._round, session,
                                                 min(delay * 2, REGISTER_RETRY_MAX))
        elif self._failed:
            self.log.info('lease procedures registered after {n} round(s)', n=self.rounds)


def _name(uri):
    return uri.rsplit('.', 1)[-1]
