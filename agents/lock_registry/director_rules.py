"""The access rules the lock registry serves as the site's access director.

A pure core (no Twisted, no network; ocs's own :mod:`ocs.access` builds
every rule): it turns the site's *base rules* (the passwords of an ocs
AccessDirector config, parsed by ``ocs.access.director_parse_config``) and
the *current grants on declared resources* into the rules each agent under
``access_policy: director:<registry>`` obeys, in the message format of
ocs's ``controls`` feed (``ocs.access.AC_VERSION``).

Contract:

* **A grant is an exclusive grant.** For each declared resource a lease
  covers (``resources.covered(path, tree)``: the resource itself, and the
  declared ones below it for a tree lease), each agent instance and agent
  class the resource covers gets one :class:`ocs.access.AccessRule`:
  ``cred_level`` = the resource's ``holder_level`` for the holder's
  credential (``hashed_pass``: ocs's md5 :class:`~ocs.access.HashedPass` of
  the grant's password), ``lockout_levels`` = the resource's lockout levels
  for every other client, ``lockout_id`` = the resource's path,
  ``lockout_owner`` = who holds it, the note and until when (ocs's refusal
  names ``lockout_id[lockout_owner]``).
* **A grant whose credential is unknown** (made through the OCS ``acquire``
  task, whose results are public, or before the registry served access)
  locks everyone out at those levels and lets nobody in: its
  ``hashed_pass`` is ocs's *blocked* one.
* **Agents no declared resource covers** get the base rules only.
* **Deterministic.** The same grants give the same rules (grants sorted by
  resource path), so a change that leaves the rules as they were can be
  recognised (:meth:`DirectorRules.build` returns JSON-ready rules to
  compare) and no message need go out.
* The clear-text password never enters this module's output: only its hash.
"""
import secrets

from ocs import access

__all__ = ['DirectorRules', 'new_privs', 'hash_privs', 'holder_text', 'base_rules',
           'check_agent', 'PRIVS_HASH', 'AC_VERSION']

#: The protocol version of ocs's controls feed messages.
AC_VERSION = access.AC_VERSION
#: The hash of a grant's credential in its rule: ocs agents know only 'none'
#: and 'md5' (ocs's md5 is the first 16 hex digits, unsalted).
PRIVS_HASH = 'md5'
#: Random octets of a grant's credential (URL-safe text, 22 characters).
PRIVS_BYTES = 16
#: The most characters of a note in a rule's lockout_owner.
NOTE_CHARS = 80


def new_privs():
    """A fresh random credential for one grant (clear text)."""
    return secrets.token_urlsafe(PRIVS_BYTES)


def hash_privs(privs):
    """The :class:`ocs.access.HashedPass` of the credential ``privs``."""
    return access.HashedPass.create_from_value(PRIVS_HASH, privs)


def holder_text(owner, note, until):
    """``alice; note: calibration; until 08:30:00.0``: the ``lockout_owner``
    of a grant's rules, so that ocs's refusal names the holder, the note and
    until when (``until``: text, e.g. ``paths.when(expires)``). No quotes
    or brackets survive (the refusal shows it inside a Python list)."""
    text = str(owner)
    note = ' '.join(str(note or '').split())[:NOTE_CHARS]
    if note:
        text += f'; note: {note}'
    text += f'; until {until}'
    return text.translate(_PLAIN)


_PLAIN = str.maketrans({"'": '`', '"': '`', '[': '(', ']': ')'})


def base_rules(config):
    """The base rules of an ocs AccessDirector config dict (``passwords``,
    ``passwords_block_default_hashfunc``, ``distrib_hashfunc``,
    ``exclusive_access_blocks``), parsed by ocs's
    ``director_parse_config`` exactly as ocs's AccessDirector does:
    ``(rules, grant_blocks)``. Raises ValueError in one line."""
    try:
        parsed = access.director_parse_config(config)
    except Exception as e:          # pydantic's ValidationError, TypeError, KeyError...
        first = ' '.join(str(e).split())[:160]
        raise ValueError(f'not an ocs access director config: {type(e).__name__}: '
                         f'{first}') from None
    return list(parsed['_rules']), list(parsed['_grant_blocks'])


def check_agent(instance_id, agent_class):
    """The :class:`ocs.access.AgentSpec` of a polling agent; raises
    ValueError in one line for ids ocs's pattern matching cannot take."""
    for name, value in (('instance_id', instance_id), ('agent_class', agent_class)):
        if not isinstance(value, str) or not value or len(value) > 200 \
                or ',' in value or '!' in value:
            raise ValueError(f'agent_poll: {name} must be a non-empty name without "," or '
                             f'"!", not {value!r:.60}')
    return access.AgentSpec(instance_id=instance_id, agent_class=agent_class)


class DirectorRules:
    """Rules for every agent from the base rules and the current grants.

    Args:
        base (list of AccessRule): the site's base rules (passwords), sent
            to every agent first.
        resources: the declared resource tree (``covered(path, tree)`` ->
            Resources with ``path``, ``instances``, ``classes``,
            ``lockout_levels``, ``holder_level``).
        when (callable): expiry time -> text for ``lockout_owner``.
        site_agents (dict): ``{instance_id: agent-class}`` of the site
            config, if known: a resource that covers a class also gets a
            rule for each instance of that class there, by its instance id
            (the class an agent reports to access control is the one its
            ``main`` names, which may differ from the site config's
            ``agent-class``: socs's LDMonitorAgent reports ``LDMonitor``).
    """

    def __init__(self, base, resources, when, site_agents=None):
        self.base = list(base)
        self.resources = resources
        self.when = when
        self.site_agents = dict(site_agents or {})
        self._base_json = [access.asdict(r) for r in self.base]

    def covered(self, grant):
        """The declared resources ``grant`` (a Grant: ``resource``, ``tree``) covers."""
        if self.resources is None:
            return []
        return list(self.resources.covered(grant.resource, tree=bool(grant.tree)))

    def grant_rules(self, grant, hashed):
        """The AccessRules of one grant (``hashed``: the HashedPass of its
        credential, or None: unknown, nobody gets in with it)."""
        rules = []
        if hashed is None:
            hashed = access.HashedPass.create_blocked()
        owner = holder_text(grant.owner, grant.note, self.when(grant.expires))
        for res in self.covered(grant):
            levels = [access.CredLevel(n) for n in res.lockout_levels]
            instances = list(res.instances)
            instances += sorted(i for i, c in self.site_agents.items()
                                if c in res.classes and i not in instances)
            scopes = [access.ScopeSpec(instance_id=i) for i in instances] + \
                [access.ScopeSpec(agent_class=c) for c in res.classes]
            for scope in scopes:
                rules.append(access.AccessRule(
                    hashed_pass=hashed, cred_level=access.CredLevel(res.holder_level),
                    scope_spec=scope, lockout_id=res.path, lockout_owner=owner,
                    lockout_levels=levels))
        return rules

    def build(self, grants, hashes):
        """Every rule, JSON-ready (``ocs.access.asdict``): the base rules,
        then each grant's (``grants``: Grants; ``hashes``: {request_id:
        HashedPass}), grants in resource order."""
        out = list(self._base_json)
        for g in sorted(grants, key=lambda g: g.resource):
            out.extend(access.asdict(r) for r in self.grant_rules(g, hashes.get(g.request_id)))
        return out

    @staticmethod
    def reset(rules, step):
        """The ``controls`` message every agent takes (``reset``)."""
        return {'reset': True, 'ac_version': AC_VERSION, 'step': step, 'rules': list(rules)}

    @staticmethod
    def target(rules, step, agent):
        """The ``controls`` message for one agent (``agent``: an AgentSpec):
        only the rules whose scope matches it (ocs's ``agent_filter_rules``)."""
        objs = [access.AccessRule(**r) for r in rules]
        mine = access.agent_filter_rules(objs, agent)
        keep = {id(r) for r in mine}
        return {'target': agent.instance_id, 'ac_version': AC_VERSION, 'step': step,
                'rules': [r for r, o in zip(rules, objs) if id(o) in keep]}
