"""The lock registry as the site's access director (``--access-director``).

ocs agents started with ``access_policy: director:<registry>`` ask the
director for their rules at every join (``<root>.<registry>.agent_poll``)
and take whatever it publishes on its ``controls`` feed (a ``reset`` every
agent takes, or a message with a ``target``). This shell serves that
protocol over :class:`~.director_rules.DirectorRules`, with the registry's
leases as the exclusive grants:

* **Pushed, not polled.** A LeaseState listener publishes a reset at once
  on every grant, renewal (the "until" in the refusal changes), release,
  expiry and revocation that changes the rules; a poll is answered at once
  with a targeted message; a reset also goes out at every join and every
  ``reset_every`` seconds (60, as ocs's AccessDirector) for agents that
  missed one.
* **The credential.** A grant that covers declared resources gets a fresh
  random password (:func:`~.director_rules.new_privs`); its rules carry its
  md5 :class:`ocs.access.HashedPass`, the store keeps that hash (the rules
  survive a restart), and the clear text is handed over once, to the lease
  procedure's reply (:attr:`LeaseOps.grant_privs`): the caller alone. It is
  never logged, published, stored or put in session data; a grant made
  through the OCS ``acquire`` task (public results) has a credential no one
  knows.
* ``agent_poll`` is registered at every join and kept registered by
  :class:`~.registrar.Registrar` (a router restart takes registrations away).
* Reactor thread only.
"""
from twisted.internet import defer, task
from ocs import access

from ocs_locking.agents.lock_registry.director_rules import (DirectorRules, check_agent,
                                                             hash_privs, new_privs)
from ocs_locking.agents.lock_registry.registrar import Registrar
from ocs_locking.errors import LeaseStoreError
from ocs_locking.leases.paths import when

__all__ = ['LeaseDirector', 'CONTROLS_FEED', 'RESET_EVERY']

#: ocs's feed name for access rules.
CONTROLS_FEED = 'controls'
#: Seconds between full resets (ocs's AccessDirector sends one every 60 s).
RESET_EVERY = 60.0
#: Lease actions that can change the rules.
_CHANGES = ('grant', 'renew', 'release', 'force_release', 'expire')


class LeaseDirector:
    """Serves ocs's access-director protocol from the registry's leases.

    Args:
        agent (OCSAgent): the registry's agent.
        leases (LeaseOps): its lease operations (``state``, ``store``,
            ``grant_privs``).
        base (list of AccessRule): the site's base rules.
        resources: the declared resource tree (``covered``).
        reactor: the Twisted reactor (default: the global one).
        reset_every (float): seconds between periodic resets.
        site_agents (dict): ``{instance_id: agent-class}`` of the site
            config (see :class:`~.director_rules.DirectorRules`).
    """

    def __init__(self, agent, leases, base, resources, reactor=None, reset_every=RESET_EVERY,
                 site_agents=None):
        if reactor is None:
            from twisted.internet import reactor
        self.agent, self.leases, self.reactor = agent, leases, reactor
        self.log = agent.log
        self.core = DirectorRules(base, resources, when, site_agents)
        self.step = 0
        #: messages published (resets, targeted) and polls refused, for status
        self.counts = {'reset': 0, 'target': 0, 'bad_poll': 0}
        self.hashes = {}        # request id -> HashedPass of its credential
        self._privs = {}        # request id -> clear credential, until handed over
        self.reload_hashes()
        self._rules = self.rules()      # the rules last published (at the join)
        self._feed = agent.register_feed(CONTROLS_FEED, record=False)
        self._pending = None    # Deferred: the last publish, until the router acks it
        leases.state.add_listener(self._on_change)
        leases.grant_privs = self._hand_over
        leases.enforced = self.enforced
        self._registrar = Registrar(agent, reactor, self.log,
                                    {f'{agent.agent_address}.agent_poll': self.agent_poll})
        agent.on('ready', lambda session: self._joined())
        agent.on('leave', lambda session, details=None: self._registrar.left())
        self._loop = task.LoopingCall(self.publish_reset)
        self._loop.clock = reactor
        self.reset_every = reset_every
        if callable(getattr(reactor, 'callWhenRunning', None)):
            reactor.callWhenRunning(self._start_loop)

    def reload_hashes(self):
        """Read the credential hashes of the grants held from the store (at
        start, and when a standby takes over)."""
        try:
            stored = self.leases.store.privs_hashes()
        except (LeaseStoreError, AttributeError) as e:
            self.log.error('access director: credential hashes not read: {e}', e=e)
            stored = {}
        self.hashes = {rid: access.HashedPass(hash=h, value=v) for rid, (h, v) in stored.items()}

    def _start_loop(self):
        self._loop.start(self.reset_every, now=False)

    def _joined(self):
        self._registrar.joined()
        self.publish_reset()

    # -- the rules ------------------------------------------------------------------

    def rules(self):
        """Every rule now (JSON-ready)."""
        return self.core.build(self.leases.state.holders(), self.hashes)

    def publish_reset(self, rules=None):
        """Publish a reset with every rule now."""
        rules = self.rules() if rules is None else rules
        self._rules = rules
        self.step += 1
        self.counts['reset'] += 1
        self._send(DirectorRules.reset(rules, self.step))

    def _send(self, message):
        """Publish on ``controls`` as ocs's Feed does (``(message,
        feed_info)``), acknowledged: crossbar writes the ack and the events
        to the subscribers in one turn (up to its dispatch chunk of 100
        subscribers), so a reply held until the ack (:meth:`enforced`) lets
        its caller's next call reach an agent after the agent's rules."""
        from autobahn.wamp.types import PublishOptions
        attached = getattr(self.agent, 'is_attached', None)
        if callable(attached) and not attached():
            return                  # not on the router: the join publishes a reset
        try:
            d = self.agent.publish(self._feed.address, (message, self._feed.encoded()),
                                   options=PublishOptions(acknowledge=True))
        except Exception as e:      # TransportLost: not joined; the join resets
            self.log.error('access director: publish failed: {e}', e=e)
            return
        if not isinstance(d, defer.Deferred):
            return
        d.addErrback(lambda f: self.log.error('access director: publish failed: {e}',
                                              e=f.getErrorMessage()))
        self._pending = d
        d.addBoth(self._acked, d)

    def _acked(self, result, d):
        if self._pending is d:
            self._pending = None
        return result

    def enforced(self):
        """None, or a Deferred that fires once the router has passed the last
        published rules on (LeaseOps holds a grant's reply until then)."""
        if self._pending is None:
            return None
        waiter = defer.Deferred()
        self._pending.addBoth(lambda r: (waiter.callback(None), r)[1])
        return waiter

    def _on_change(self, action, item):
        """LeaseState listener: a grant gets its credential; any change that
        alters the rules is published at once."""
        if action not in _CHANGES:
            return
        grants = item.grants if action == 'grant' else (item,)
        if not any(self.core.covered(g) for g in grants):
            return                  # covers no agent: the rules stay as they are
        stored = None
        if action == 'grant':
            stored = self._credential(item)
        else:
            held = {g.request_id for g in self.leases.state.holders()}
            for rid in [r for r in self.hashes if r not in held]:
                del self.hashes[rid]
            for rid in [r for r in self._privs if r not in held]:
                del self._privs[rid]
        rules = self.rules()
        if rules != self._rules:
            self.publish_reset(rules)
        if stored is not None:
            self._store_hash(*stored)

    def _credential(self, outcome):
        """A fresh credential for a grant that covers declared resources:
        ``(request_id, HashedPass)`` to store once the rules are out, or None."""
        if not any(self.core.covered(g) for g in outcome.grants):
            return None
        rid = outcome.request_id
        privs = new_privs()
        hashed = hash_privs(privs)
        self.hashes[rid] = hashed
        self._privs[rid] = privs
        return rid, hashed

    def _store_hash(self, rid, hashed):
        """Keep the hash in the store (after the publish: the agents hear of
        the grant first; a crash in between leaves a grant whose rules let
        nobody in after the restart, never one that lets anyone in)."""
        try:
            self.leases.store.set_privs_hash(rid, hashed.hash, hashed.value)
        except LeaseStoreError as e:        # rules hold until a restart; then nobody's
            self.log.error('access director: credential hash of request {rid} not '
                           'stored: {e}', rid=rid, e=e)

    def _hand_over(self, request_id):
        """The grant's clear credential, once (LeaseOps.grant_privs)."""
        return self._privs.pop(request_id, None)

    # -- ocs's procedure ------------------------------------------------------------

    def agent_poll(self, instance_id=None, agent_class=None):
        """*Special access point* (ocs's protocol): an agent under
        ``director:<registry>`` asks for its rules; they go out at once on
        ``controls`` in a message targeted at it. Returns True, or False for
        arguments that name no agent (one log line)."""
        try:
            agent = check_agent(instance_id, agent_class)
        except ValueError as e:
            self.counts['bad_poll'] += 1
            self.log.warn('{e}', e=e)
            return False
        rules = self.rules()
        self.step += 1
        self.counts['target'] += 1
        self._send(DirectorRules.target(rules, self.step, agent))
        return True

    def status(self):
        """The director's public state: ``step``, message counts, grants
        enforced (resource paths), whether ``agent_poll`` is registered."""
        enforced = sorted({r.path for g in self.leases.state.holders()
                           for r in self.core.covered(g)})
        return {'step': self.step, 'counts': dict(self.counts), 'enforced': enforced,
                'agent_poll': self._registrar.status()['registered']}


# -- the registry's options ---------------------------------------------------------

def add_arguments(parser):
    """``--access-director`` and ``--access-config`` (``make_parser`` adds them)."""
    parser.add_argument('--access-director', action='store_true',
                        help='Serve ocs access control to the agents started with '
                             '--access-policy director:<this instance>: a lease on a '
                             'declared resource locks out everyone but its holder on the '
                             'agents the resource covers (see docs/access.rst).')
    parser.add_argument('--access-config', default=None,
                        help="An ocs AccessDirector config file (passwords, used unchanged) "
                             'for the base rules of every agent and of the registry itself; '
                             'instead of --access-file. A relative path is taken from the '
                             'directory of the site config file.')
    return parser


def load_access_config(path):
    """``(rules, grant_blocks)`` of the ocs AccessDirector config file
    ``path``; raises ValueError in one line (never showing a password)."""
    from ocs_locking.agents.lock_registry.director_rules import base_rules
    from ocs_locking.agents.lock_registry.leases import read_yaml
    config = read_yaml(path, 'the access config')
    if not isinstance(config, dict):
        raise ValueError(f'the access config {path!r} must be a mapping (an ocs '
                         f'AccessDirector config)')
    try:
        return base_rules(config)
    except ValueError as e:
        raise ValueError(f'the access config {path!r}: {e}') from None


def free_rules():
    """Level 1 for every client: the base rules when no password file is given."""
    return [access.AccessRule(hashed_pass=access.HashedPass.create_free(),
                              cred_level=access.CredLevel(1))]


def serve_rules_to(agent, rules):
    """Make ``rules`` the registry agent's own access rules (it serves
    itself: its own ``controls`` messages never come back to it)."""
    agent.access_config = access.AgentAccessRules(
        policy='override', rules=list(rules),
        agent=access.AgentSpec(instance_id=getattr(agent, 'instance_id', None),
                               agent_class=getattr(agent, 'class_name', None),
                               superuser_key=agent))
    data = getattr(agent, 'access_data', None)
    if isinstance(data, dict):
        data['policy'] = 'override'
