"""What the router lets an ``iocs_agent`` session do: pure rules, stdlib only.

:func:`decide` answers one (session, uri, action, options) question from a
:class:`RegistrationMap`, the router's registrations as the component has
seen them in the meta events. The rules (issue 10):

* ``publish`` on ``<root>.<id>.feeds.<name>``: only by the session that holds
  the registration of ``<root>.<id>.ops`` (an ocs agent registers it first,
  at join; WAMP lets only one session hold it);
* ``register``: ``<root>.<id>`` and ``<root>.<id>.ops`` by anyone (WAMP's
  single-registration rule decides); any other ``<root>.<id>.<more>`` (e.g.
  ``observatory.lock-registry.lease.acquire``) only by the holder of
  ``<root>.<id>.ops``; prefix registrations only inside one's own
  ``<root>.<id>.``, wildcard registrations never;
* the meta API only for the holder of ``<root>.<registry>.ops``, exact URIs
  only (:data:`META_SUBSCRIBE`, :data:`META_CALL`);
* ``call`` on ``ocs_locking.bus.info``: anyone; nothing else under
  ``ocs_locking.``;
* ``call`` on ``<root>.<registry>.replica.*`` (a standby following the
  registry's lease database: lease-key and credential hashes travel
  there): only by the holder of ``<root>.<s>.ops`` for a standby ``s`` the
  component's config names (``standbys``; none: nobody);
* everything else as ocs's default permissions allow: call, publish,
  subscribe anything under ``<root>.``; nothing outside it.

Every allowed answer discloses the caller / publisher, and nothing is cached
(``cache: False``): the answer depends on who holds a registration now.
"""
import collections

__all__ = ['ACTIONS', 'META_SUBSCRIBE', 'META_CALL', 'INFO_URI', 'AUTHORIZE_URI',
           'RegistrationMap', 'Decision', 'decide', 'answer', 'feed_owner_uri']

ACTIONS = ('publish', 'subscribe', 'call', 'register')
INFO_URI = 'ocs_locking.bus.info'
AUTHORIZE_URI = 'ocs_locking.bus.authorize'
OWN_PREFIX = 'ocs_locking.'

META_SUBSCRIBE = frozenset((
    'wamp.session.on_join', 'wamp.session.on_leave',
    'wamp.registration.on_create', 'wamp.registration.on_register',
    'wamp.registration.on_unregister', 'wamp.registration.on_delete'))
META_CALL = frozenset((
    'wamp.session.get', 'wamp.registration.list', 'wamp.registration.get',
    'wamp.registration.lookup', 'wamp.registration.list_callees'))


class Decision(collections.namedtuple('Decision', 'allow reason verify')):
    """``allow`` (bool), ``reason`` (str, for the log), ``verify``: the URI of
    the registration the answer depends on when it is a refusal that a newer
    view of the router could turn around (the component then looks it up
    before refusing), else None."""


def answer(decision):
    """The dynamic authorizer's reply for a :class:`Decision`."""
    return {'allow': bool(decision.allow), 'disclose': bool(decision.allow),
            'cache': False}


class RegistrationMap:
    """Exact registrations seen on the router: registration id -> (uri,
    holder session). The holder is the session that created the
    registration (the first callee); a registration without a known single
    holder holds nothing."""

    def __init__(self):
        self._regs = {}         # registration id -> (uri, session id or None)
        self._by_uri = {}       # uri -> registration id
        self._by_session = collections.defaultdict(set)

    def __len__(self):
        return len(self._regs)

    def created(self, session_id, reg_id, uri):
        """A registration ``reg_id`` of ``uri`` created by ``session_id``."""
        self.deleted(reg_id)
        old = self._by_uri.get(uri)
        if old is not None:
            self.deleted(old)
        self._regs[reg_id] = (uri, session_id)
        self._by_uri[uri] = reg_id
        if session_id is not None:
            self._by_session[session_id].add(reg_id)

    def deleted(self, reg_id):
        entry = self._regs.pop(reg_id, None)
        if entry is None:
            return False
        uri, session_id = entry
        if self._by_uri.get(uri) == reg_id:
            del self._by_uri[uri]
        regs = self._by_session.get(session_id)
        if regs is not None:
            regs.discard(reg_id)
            if not regs:
                del self._by_session[session_id]
        return True

    def forget(self, uri):
        """Nobody holds ``uri`` (the router said so)."""
        reg_id = self._by_uri.get(uri)
        if reg_id is not None:
            self.deleted(reg_id)

    def unregistered(self, session_id, reg_id):
        """``session_id`` left registration ``reg_id``; if it was the holder,
        the registration no longer has a known holder."""
        entry = self._regs.get(reg_id)
        if entry is not None and entry[1] == session_id:
            self.deleted(reg_id)

    def left(self, session_id):
        """Session ``session_id`` is gone: drop whatever it held."""
        for reg_id in list(self._by_session.get(session_id, ())):
            self.deleted(reg_id)

    def holder(self, uri):
        reg_id = self._by_uri.get(uri)
        return None if reg_id is None else self._regs[reg_id][1]

    def uris_of(self, session_id):
        return sorted(self._regs[r][0] for r in self._by_session.get(session_id, ()))


def _split(uri, root):
    """``<root>.<id>.<rest...>`` -> (id, [rest...]); None outside root."""
    prefix = root + '.'
    if not uri.startswith(prefix):
        return None
    parts = uri[len(prefix):].split('.')
    if not parts[0]:
        return None
    return parts[0], parts[1:]


def feed_owner_uri(uri, root):
    """The ``.ops`` URI whose holder may publish on feed topic ``uri``
    (``<root>.<id>.feeds.<name>``), else None."""
    split = _split(uri, root)
    if split and len(split[1]) >= 2 and split[1][0] == 'feeds':
        return f'{root}.{split[0]}.ops'
    return None


def _allow(reason):
    return Decision(True, reason, None)


def _deny(reason, verify=None):
    return Decision(False, reason, verify)


def _holds(regs, session_id, ops_uri, what):
    holder = regs.holder(ops_uri)
    if holder is not None and holder == session_id:
        return _allow(f'{what}: session holds {ops_uri}')
    return _deny(f'{what}: only the holder of {ops_uri}', verify=ops_uri)


def _replica_caller(regs, session_id, root, standbys):
    uris = [f'{root}.{s}.ops' for s in standbys]
    for ops_uri in uris:
        if regs.holder(ops_uri) == session_id:
            return _allow(f'replica call: session holds {ops_uri}')
    unknown = [u for u in uris if regs.holder(u) is None]
    return _deny(f'replica calls: only a standby registry ({", ".join(standbys) or "none"} '
                 f'configured)', verify=unknown[0] if unknown else None)


def decide(regs, session_id, uri, action, options=None, root='observatory',
           registry='lock-registry', standbys=()):
    """The :class:`Decision` for an ``iocs_agent`` session ``session_id``
    doing ``action`` on ``uri`` (``options``: the router's, e.g. ``match``).
    Bad input (a non-string URI, an unknown action, a session id that is not
    an int) is refused, never raised."""
    if isinstance(session_id, bool) or not isinstance(session_id, int):
        return _deny(f'bad session id {session_id!r}')
    if not isinstance(uri, str) or not uri:
        return _deny(f'bad uri {uri!r}')
    if action not in ACTIONS:
        return _deny(f'unknown action {action!r}')
    match = options.get('match', 'exact') if isinstance(options, dict) else 'exact'
    if match is None:
        match = 'exact'
    if match not in ('exact', 'prefix', 'wildcard'):
        return _deny(f'unknown match {match!r}')

    if uri.startswith('wamp.'):
        allowed = META_SUBSCRIBE if action == 'subscribe' else \
            META_CALL if action == 'call' else frozenset()
        if match != 'exact' or uri not in allowed:
            return _deny(f'meta API: {action} {uri} ({match}) is not granted')
        return _holds(regs, session_id, f'{root}.{registry}.ops', f'meta {action} {uri}')

    if uri.startswith(OWN_PREFIX):
        if action == 'call' and match == 'exact' and uri == INFO_URI:
            return _allow('bus info')
        return _deny(f'{uri} belongs to the bus component')

    if not uri.startswith(root + '.'):
        return _deny(f'{uri} is outside {root}.')
    if action == 'call' and uri.startswith(f'{root}.{registry}.replica.'):
        return _replica_caller(regs, session_id, root, tuple(standbys))
    if action in ('call', 'subscribe'):    # any match: ocs subscribes to <root>..feeds.x
        return _allow(f'{action} under root')
    split = _split(uri, root)
    if split is None:
        return _deny(f'{action} {uri}: no agent id after {root}.')
    agent, rest = split
    ops_uri = f'{root}.{agent}.ops'

    if action == 'publish':
        if rest and rest[0] == 'feeds' and len(rest) >= 2:
            return _holds(regs, session_id, ops_uri, f'publish on {agent} feeds')
        return _allow('publish under root')
    if action == 'register':
        if match == 'wildcard':
            return _deny('wildcard registrations are not allowed')
        if match == 'prefix':
            if len(rest) >= 1:   # '<root>.<id>.' or deeper: inside that agent's namespace
                return _holds(regs, session_id, ops_uri, f'prefix register in {agent}')
            return _deny(f'prefix register of {uri}: not inside one agent')
        if not rest or rest == ['ops']:
            return _allow('register an agent address')
    return _holds(regs, session_id, ops_uri, f'register {uri}')
