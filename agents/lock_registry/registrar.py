"""Keeps the lock registry's lease procedures registered on the router.

Registrations live in the router and end with the session that made them: a
router restart or a reconnect takes them away, and a registration can fail
(an old registration of this same registry still in the router after a
reconnect: ``wamp.error.procedure_already_exists``; the router going away
meanwhile). :class:`Registrar` registers every procedure at each join and
retries the missing ones, with a bounded backoff, until it holds them all;
:meth:`Registrar.status` says which are missing and why.
"""
from twisted.internet import defer

from ocs_locking.wire import error_reason

__all__ = ['Registrar', 'REGISTER_RETRY', 'REGISTER_RETRY_MAX', 'NOT_JOINED']

#: A failed registration is tried again after this many seconds, the delay
#: doubling up to REGISTER_RETRY_MAX, until it is held.
REGISTER_RETRY, REGISTER_RETRY_MAX = 0.5, 2.0
#: The reason shown for every procedure while the session is not joined.
NOT_JOINED = 'not joined to the router'
_PENDING = 'being registered'


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

    @property
    def retrying(self):
        return self._retry is not None and self._retry.active()

    def status(self):
        """``{'registered': bool, 'missing': [name, ...], 'errors': {name: reason}}``
        (names are the last part of each URI)."""
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
