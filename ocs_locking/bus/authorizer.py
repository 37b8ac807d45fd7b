"""The router component (autobahn, twisted, txaio only: it runs in crossbar).

:class:`BusAuthorizer` joins the realm under its own role, keeps the
holders of the agents' ``<root>.<id>.ops`` registrations from the meta
events (``wamp.registration.on_create``, ``on_unregister``, ``on_delete``,
``wamp.session.on_leave``; a snapshot at join), and registers

* ``ocs_locking.bus.authorize``: the dynamic authorizer of the agents' role;
  the decision is :func:`ocs_locking.bus.rules.decide`. A refusal that
  depends on who holds a registration is checked against the router first
  (``wamp.registration.lookup`` + ``list_callees``): a publish that races
  ahead of the ``on_create`` meta event is not refused;
* ``ocs_locking.bus.info``: what is enforced, for the registry's check.

Config ``extra``: ``{"address_root": "observatory", "registry": "lock-registry",
"standbys": ["lock-registry-b"]}`` (``standbys``: the registries that may
follow the registry's lease database; optional, default none).
A malformed meta event is counted and logged in one line, never raised.
"""
import collections

from autobahn.twisted.wamp import ApplicationSession
from twisted.internet.defer import Deferred, inlineCallbacks

from . import rules

__all__ = ['BusAuthorizer', 'VERSION']

try:   # the package's version, when the whole package is importable
    from ocs_locking import __version__ as VERSION
except Exception:   # pragma: no cover - a copy of just this package
    VERSION = 'unknown'

COMPONENT = 'ocs_locking.bus'


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)


class BusAuthorizer(ApplicationSession):
    """The ``ocs_locking.bus`` router component (see the module docstring)."""

    def __init__(self, config=None):
        super().__init__(config)
        extra = (config.extra if config is not None else None) or {}
        self.address_root = str(extra.get('address_root', 'observatory'))
        self.registry = str(extra.get('registry', 'lock-registry'))
        standbys = extra.get('standbys') or []
        self.standbys = tuple(str(x) for x in standbys) if isinstance(standbys, list) else ()
        self.regs = rules.RegistrationMap()
        self.dropped = collections.Counter()    # malformed meta events, by kind
        self.refused = collections.Counter()    # refusals, by action
        self.lookups = 0
        self._verifying = {}    # uri -> Deferred of the lookup in flight

    # -- joining ---------------------------------------------------------------

    @inlineCallbacks
    def onJoin(self, details):
        for topic, handler in (('wamp.registration.on_create', self._on_create),
                               ('wamp.registration.on_unregister', self._on_unregister),
                               ('wamp.registration.on_delete', self._on_delete),
                               ('wamp.session.on_leave', self._on_leave)):
            yield self.subscribe(handler, topic)
        yield self.register(self.authorize, rules.AUTHORIZE_URI)
        yield self.register(self.info, rules.INFO_URI)
        yield self._snapshot()
        self.log.info('ocs_locking.bus: authorizing {root}.* (registry {registry}); '
                      '{n} agent registrations known', root=self.address_root,
                      registry=self.registry, n=len(self.regs))

    def _tracked(self, uri):
        return isinstance(uri, str) and uri.startswith(self.address_root + '.') \
            and uri.endswith('.ops')

    @inlineCallbacks
    def _snapshot(self):
        """The registrations that existed before we joined (the router
        restarts its components with it, so normally none)."""
        try:
            listing = yield self.call('wamp.registration.list')
            ids = listing.get('exact', []) if isinstance(listing, dict) else []
        except Exception as e:
            self._drop('snapshot', f'wamp.registration.list failed: {e}')
            return
        for reg_id in ids:
            try:
                reg = yield self.call('wamp.registration.get', reg_id)
                uri = reg.get('uri') if isinstance(reg, dict) else None
                if not self._tracked(uri) or self.regs.holder(uri) is not None:
                    continue
                yield self._verify(uri)
            except Exception as e:    # it went away meanwhile, or a bad reply
                self._drop('snapshot', f'registration {reg_id!r}: {e}')

    # -- meta events -------------------------------------------------------------

    def _drop(self, kind, what):
        self.dropped[kind] += 1
        self.log.warn('ocs_locking.bus: dropped {kind} ({n} so far): {what}',
                      kind=kind, n=self.dropped[kind], what=str(what)[:200])

    def _on_create(self, *args, **kwargs):
        if len(args) != 2 or not _is_id(args[0]) or not isinstance(args[1], dict) \
                or not _is_id(args[1].get('id')) or not isinstance(args[1].get('uri'), str):
            return self._drop('on_create', f'malformed event {args!r:.150}')
        session_id, reg = args
        if reg.get('match', 'exact') == 'exact' and self._tracked(reg['uri']):
            self.regs.created(session_id, reg['id'], reg['uri'])

    # crossbar sends (None, registration id) when a leaving session's
    # registrations are removed (its session id is already cleared)

    def _on_unregister(self, *args, **kwargs):
        if len(args) != 2 or not (args[0] is None or _is_id(args[0])) or not _is_id(args[1]):
            return self._drop('on_unregister', f'malformed event {args!r:.150}')
        if args[0] is None:     # a session detached: whoever it was, look it up next time
            self.regs.deleted(args[1])
        else:
            self.regs.unregistered(args[0], args[1])

    def _on_delete(self, *args, **kwargs):
        if len(args) != 2 or not (args[0] is None or _is_id(args[0])) or not _is_id(args[1]):
            return self._drop('on_delete', f'malformed event {args!r:.150}')
        self.regs.deleted(args[1])

    def _on_leave(self, *args, **kwargs):
        if len(args) != 1 or not _is_id(args[0]):
            return self._drop('on_leave', f'malformed event {args!r:.150}')
        self.regs.left(args[0])

    # -- looking up one registration --------------------------------------------

    def _verify(self, uri):
        """Ask the router who holds ``uri`` now; one lookup in flight per URI."""
        d = self._verifying.get(uri)
        if d is None:
            d = self._verifying[uri] = self._lookup(uri)

            def done(result):
                self._verifying.pop(uri, None)
                return result
            d.addBoth(done)
        mine = Deferred()     # every waiter gets its own Deferred on the shared one

        def fan(result):
            mine.callback(None)
            return result
        d.addBoth(fan)
        return mine

    @inlineCallbacks
    def _lookup(self, uri):
        self.lookups += 1
        try:
            reg_id = yield self.call('wamp.registration.lookup', uri)
            if reg_id is None:
                callees = []
            else:
                callees = yield self.call('wamp.registration.list_callees', reg_id)
        except Exception as e:     # the registration went away between the calls
            self.log.debug('ocs_locking.bus: lookup of {uri} failed: {e}', uri=uri, e=e)
            return
        if _is_id(reg_id) and isinstance(callees, list) and len(callees) == 1 \
                and _is_id(callees[0]):
            self.regs.created(callees[0], reg_id, uri)
        else:   # not registered, or not by one session: nobody holds it
            self.regs.forget(uri)

    # -- the procedures ------------------------------------------------------------

    @inlineCallbacks
    def authorize(self, session, uri, action, options=None):
        """The dynamic authorizer: ``{allow, disclose, cache: False}``."""
        try:
            session_id = session.get('session') if isinstance(session, dict) else None
            decision = self._decide(session_id, uri, action, options)
            if not decision.allow and decision.verify is not None:
                yield self._verify(decision.verify)
                decision = self._decide(session_id, uri, action, options)
            if not decision.allow:
                self.refused[action if action in rules.ACTIONS else 'other'] += 1
                self.log.debug('ocs_locking.bus: refused {action} {uri} for session '
                               '{session}: {why}', action=action, uri=uri,
                               session=session_id, why=decision.reason)
            return rules.answer(decision)
        except Exception as e:    # never let a bug open the bus: refuse
            self.log.warn('ocs_locking.bus: refused {action} {uri} on an error: {e}',
                          action=action, uri=uri, e=e)
            return {'allow': False, 'disclose': False, 'cache': False}

    def _decide(self, session_id, uri, action, options):
        return rules.decide(self.regs, session_id, uri, action, options,
                            root=self.address_root, registry=self.registry,
                            standbys=self.standbys)

    def info(self):
        """What the component enforces (any session may call it)."""
        return {'component': COMPONENT, 'version': str(VERSION),
                'address_root': self.address_root, 'registry': self.registry,
                'standbys': list(self.standbys),
                'disclose': True}
