"""The site's declared resources: which lease paths exist and which agents each covers (pure).

A site declares its resources in a mapping (the registry's ``--resources``
YAML file, see docs/resources.rst)::

    adhoc: false            # true: undeclared (well-formed) paths may be leased too
    defaults: {lockout_levels: [1, 2, 3], default_lease: 60, max_lease: 3600}
    resources:
      demo/hwp: {instances: [fake-hwp], description: "the demo HWP"}
      demo/hwp/encoder: {classes: [EncoderAgent], lockout_levels: [1, 2, 3]}

:meth:`ResourceTree.from_config` checks all of it before anything is used and
raises :class:`ResourceConfigError`, one line naming the source and the key
at fault. The rules it enforces:

* **Keys.** Only the keys above, at every level (a near miss is named:
  ``did you mean 'instances'?``). Paths follow :func:`.paths.check_resource`.
* **Values.** ``instances``/``classes``: non-empty lists of distinct ids
  (omit the key for none: a resource may cover no agent, e.g. a group or a
  lock only our own agents take); ``lockout_levels``: a non-empty list of
  distinct credential levels 1..3; ``holder_level``: 1..3, at least the
  highest lockout level (default: that level); ``default_lease`` and
  ``max_lease``: seconds in [MIN_LEASE, MAX_LEASE], default <= max;
  ``description``: one line of text; ``adhoc``: true or false.
* **Inheritance.** ``lockout_levels``, ``default_lease`` and ``max_lease``
  a resource leaves out come from its nearest declared ancestor, else from
  ``defaults``, else (1, 2, 3) / the registry's 30 s / MAX_LEASE; an
  inherited ``default_lease`` longer than the resource's own ``max_lease``
  is cut to it (one it sets itself is refused).
* **Overlap.** A lease follows the lease state's tree semantics
  (:func:`.paths.conflicts`): a lease on ``P`` covers ``P`` itself; a *tree*
  lease on ``P`` also covers every declared resource below ``P``; two plain
  leases on ``P`` and ``P/c`` can be held at once, by two holders. So:

  - an agent (instance id, or agent class) belongs to **one** declared
    resource: two resources covering it, parent and child or unrelated,
    could be held by two holders at once, each told it has the agent to
    itself (refused, naming both);
  - a resource may not lock out *fewer* levels than a declared ancestor
    that sets ``lockout_levels`` itself: a tree lease on that ancestor
    promises its lockout levels on everything below it (refused, naming
    the missing levels). Levels an ancestor only inherited from
    ``defaults`` promise nothing.

* **Size.** At most MAX_RESOURCES resources, and the tree as JSON
  (:meth:`ResourceTree.as_dict`) at most MAX_TREE_JSON octets, so that it
  fits in the registry's status beside the lock and lease tables.

A path is *known* when it is declared. With ``adhoc: true`` any other
well-formed path may be leased as well (it covers the declared resources
below it when leased as a tree), except a *near miss* of a declared one
(``satp1/hwpp`` beside ``satp1/hwp``: :func:`suggest` finds a declared path
close to it), refused as a typo; with ``adhoc: false`` every undeclared path
is refused. Both refusals are :class:`UnknownResource`, naming the closest
declared paths when there are any. A registry given no
resources uses :meth:`ResourceTree.adhoc_only`: nothing declared, every
well-formed path allowed, exactly as before resources existed.
"""
import bisect
import difflib
from dataclasses import dataclass

from ..errors import LeaseError, ResourceConfigError, UnknownResource
from ..wire import MESSAGE_BUDGET, json_size
from .paths import MAX_LEASE, ancestors, check_lease, check_resource

__all__ = ['Resource', 'ResourceTree', 'ResourceConfigError', 'UnknownResource', 'LEVELS',
           'DEFAULT_LEASE', 'MAX_RESOURCES', 'MAX_TREE_JSON', 'TOP_KEYS', 'DEFAULT_KEYS',
           'RESOURCE_KEYS', 'suggest']

#: The credential levels a reservation may lock out (ocs's CredLevel 1..3;
#: 4 is the agent's own superuser, never locked out).
LEVELS = (1, 2, 3)
#: The lease, seconds, of a request that gives none when no declaration
#: sets a ``default_lease`` (the registry's default before resources).
DEFAULT_LEASE = 30.0
#: The most resources one tree declares.
MAX_RESOURCES = 1000
#: The most octets of JSON the whole tree may take (an eighth of the
#: registry's message budget: it rides in ``status`` and ``leases``).
MAX_TREE_JSON = MESSAGE_BUDGET // 8
#: The most ids in one ``instances`` or ``classes`` list, and their length.
MAX_IDS, MAX_ID = 64, 128
MAX_DESCRIPTION = 200

TOP_KEYS = ('adhoc', 'defaults', 'resources')
DEFAULT_KEYS = ('lockout_levels', 'holder_level', 'default_lease', 'max_lease')
RESOURCE_KEYS = ('instances', 'classes', 'description') + DEFAULT_KEYS
#: Keys a resource inherits from its nearest declared ancestor.
INHERITED = ('lockout_levels', 'default_lease', 'max_lease')


def suggest(word, candidates, cutoff=0.8, most=3):
    """``"did you mean 'a'?"`` / ``"did you mean 'a' or 'b'?"`` naming the
    candidates close to ``word`` (difflib), best first; ``''`` if none is."""
    if not isinstance(word, str):
        return ''
    scored = []
    for c in candidates:
        m = difflib.SequenceMatcher(None, word, c)
        if m.real_quick_ratio() >= cutoff and m.quick_ratio() >= cutoff \
                and m.ratio() >= cutoff:
            scored.append((-m.ratio(), c))
    close = [c for _, c in sorted(scored)[:most]]       # best first, ties by name
    if not close:
        return ''
    names = [repr(c) for c in close]
    text = names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' or ' + names[-1]
    return f'did you mean {text}?'


@dataclass(frozen=True)
class Resource:
    """One declared resource, its inherited values filled in.

    Attributes:
        path (str): the lease path, e.g. ``satp1/hwp``.
        instances (tuple): agent instance ids a lease on it covers.
        classes (tuple): agent classes a lease on it covers (every instance).
        lockout_levels (tuple): the credential levels the holder's grant
            locks out for everyone else on the covered agents, ascending.
        holder_level (int): the credential level the holder gets there
            (default: the highest lockout level).
        default_lease (float or None): seconds of a lease that asks for
            none (None: the registry's DEFAULT_LEASE, within max_lease).
        max_lease (float or None): the longest lease (None: MAX_LEASE).
        description (str): one line for people.
    """
    path: str
    instances: tuple = ()
    classes: tuple = ()
    lockout_levels: tuple = LEVELS
    holder_level: int = None
    default_lease: float = None
    max_lease: float = None
    description: str = ''

    def __post_init__(self):
        if self.holder_level is None:
            object.__setattr__(self, 'holder_level', max(self.lockout_levels))

    def as_dict(self):
        """Public, JSON-ready (no secret is ever part of a declaration)."""
        return {'path': self.path, 'instances': list(self.instances),
                'classes': list(self.classes), 'lockout_levels': list(self.lockout_levels),
                'holder_level': self.holder_level, 'default_lease': self.default_lease,
                'max_lease': self.max_lease, 'description': self.description}


class _Checker:
    """The checks of one config, each raising one ResourceConfigError line."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, text):
        prefix = f'{self.source}: ' if self.source else ''
        return ResourceConfigError(f'{prefix}{where}{text}')

    def mapping(self, where, value, what):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f' must be a mapping ({what}), not {_kind(value)}')
        return value

    def keys(self, where, value, known):
        for key in value:
            if key not in known:
                hint = suggest(key, known, cutoff=0.6)
                raise self.fail(where, f': unknown key {key!r:.60}'
                                       f'{"; " + hint if hint else ""} '
                                       f'(known: {", ".join(known)})')

    def levels(self, where, value):
        if not isinstance(value, (list, tuple)):
            raise self.fail(where, f' must be a list of credential levels 1..3 '
                                   f'(e.g. [1, 2, 3]), not {value!r:.60}')
        if not value:
            raise self.fail(where, ' must not be empty (a reservation locks out some level)')
        seen = []
        for n in value:
            if isinstance(n, bool) or not isinstance(n, int) or n not in LEVELS:
                raise self.fail(where, f' must hold credential levels 1..3, not {n!r:.40}')
            if n in seen:
                raise self.fail(where, f' lists level {n} twice')
            seen.append(n)
        return tuple(sorted(seen))

    def level(self, where, value):
        if isinstance(value, bool) or not isinstance(value, int) or value not in LEVELS:
            raise self.fail(where, f' must be a credential level 1..3, not {value!r:.40}')
        return value

    def lease(self, where, value):
        try:
            return check_lease(value, MAX_LEASE, name='')
        except LeaseError as e:
            raise self.fail(where, str(e)) from None

    def ids(self, where, value, what):
        if not isinstance(value, (list, tuple)):
            raise self.fail(where, f' must be a list of {what}, not {value!r:.60}')
        if not value:
            raise self.fail(where, ' must not be empty (leave the key out for none)')
        if len(value) > MAX_IDS:
            raise self.fail(where, f' must list at most {MAX_IDS} {what}, not {len(value)}')
        for v in value:
            if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID \
                    or not v.isprintable():
                raise self.fail(where, f' must hold {what} (non-empty strings of at most '
                                       f'{MAX_ID} printable characters), not {v!r:.60}')
        dup = sorted({v for v in value if list(value).count(v) > 1})
        if dup:
            raise self.fail(where, f' lists {dup[0]!r} twice')
        return tuple(value)

    def text(self, where, value):
        if not isinstance(value, str) or len(value) > MAX_DESCRIPTION \
                or not value.isprintable():
            raise self.fail(where, f' must be one line of text of at most {MAX_DESCRIPTION} '
                                   f'characters, not {value!r:.60}')
        return value

    def block(self, where, value, known):
        """The checked values of a ``defaults`` or resource mapping."""
        self.keys(where, value, known)
        out = {}
        for key, v in value.items():
            at = f'{where}.{key}'
            if key == 'lockout_levels':
                out[key] = self.levels(at, v)
            elif key == 'holder_level':
                out[key] = self.level(at, v)
            elif key in ('default_lease', 'max_lease'):
                out[key] = self.lease(at, v)
            elif key == 'instances':
                out[key] = self.ids(at, v, 'agent instance ids')
            elif key == 'classes':
                out[key] = self.ids(at, v, 'agent classes')
            else:
                out[key] = self.text(at, v)
        return out

    def consistent(self, where, values):
        """default_lease <= max_lease and holder_level >= every lockout level."""
        d, m = values.get('default_lease'), values.get('max_lease')
        if d is not None and m is not None and d > m:
            raise self.fail(where, f': default_lease {d:g} s is more than max_lease {m:g} s')
        levels, holder = values.get('lockout_levels'), values.get('holder_level')
        if levels and holder is not None and holder < max(levels):
            raise self.fail(where, f': holder_level {holder} is below lockout level '
                                   f'{max(levels)}: the holder would lock itself out')


def _kind(value):
    return {list: 'a list', str: 'a string', int: 'a number', float: 'a number',
            bool: 'a boolean'}.get(type(value), type(value).__name__)


def _where(path):
    return f'resources[{path}]'


class ResourceTree:
    """The declared resources of a site, and whether undeclared paths are allowed.

    Built by :meth:`from_config` (checked) or :meth:`adhoc_only` (nothing
    declared, everything allowed). Immutable once built; pure, any thread.

    Args:
        resources (iterable): :class:`Resource` values (not checked: use
            :meth:`from_config` for a config).
        adhoc (bool): whether undeclared, well-formed paths may be leased.
        source (str): where the declarations came from (messages, status).
    """

    def __init__(self, resources=(), adhoc=True, source=''):
        self._by_path = {r.path: r for r in resources}
        self._paths = sorted(self._by_path)
        self.adhoc = bool(adhoc)
        self.source = source
        self._hints = {}            # undeclared path -> its suggestion ('' for none)

    @classmethod
    def adhoc_only(cls):
        """No declarations, every well-formed path allowed (what a registry
        without ``--resources`` uses: behaviour as before resources)."""
        return cls((), adhoc=True, source='')

    @classmethod
    def from_config(cls, data, source):
        """The tree of the config mapping ``data`` (see the module docstring);
        raises ResourceConfigError in one line naming ``source`` and the key."""
        c = _Checker(source)
        if not isinstance(data, dict):
            what = 'empty' if data is None else f'{_kind(data)}, not a mapping'
            raise c.fail('', f"the resources config is {what}: it needs a mapping with "
                             f"'resources' (and optionally 'adhoc', 'defaults')")
        c.keys('the resources config', data, TOP_KEYS)
        adhoc = data.get('adhoc', False)
        if not isinstance(adhoc, bool):
            raise c.fail('adhoc', f' must be true or false, not {adhoc!r:.40}')
        defaults = c.block('defaults', c.mapping('defaults', data.get('defaults'),
                                                 ', '.join(DEFAULT_KEYS)), DEFAULT_KEYS)
        c.consistent('defaults', defaults)
        declared = c.mapping('resources', data.get('resources'),
                             'resource paths to their declarations')
        if not declared and not adhoc:
            raise c.fail('resources', ': none declared and adhoc is false: every lease '
                                      'would be refused (declare some, or set adhoc: true)')
        if len(declared) > MAX_RESOURCES:
            raise c.fail('resources', f' must declare at most {MAX_RESOURCES}, '
                                      f'not {len(declared)}')
        own = {}
        for path, body in declared.items():
            try:
                check_resource(path, name='path')
            except LeaseError as e:
                raise c.fail('resources', f': {e}') from None
            body = c.mapping(_where(path), body, ', '.join(RESOURCE_KEYS))
            own[path] = c.block(_where(path), body, RESOURCE_KEYS)
        resolved, promised = {}, {}
        for path in sorted(own):        # ancestors sort before their descendants
            parent = next((a for a in reversed(ancestors(path)) if a in resolved), None)
            values = dict(own[path])
            for key in INHERITED:
                if key not in values:
                    inherited = resolved[parent].get(key) if parent else defaults.get(key)
                    if inherited is not None:
                        values[key] = inherited
            values.setdefault('lockout_levels', LEVELS)
            if 'default_lease' not in own[path] and 'max_lease' in own[path] \
                    and values.get('default_lease', 0) > values['max_lease']:
                values['default_lease'] = values['max_lease']   # an inherited default, cut
            if 'holder_level' not in values and 'holder_level' in defaults:
                values['holder_level'] = defaults['holder_level']
            c.consistent(_where(path), values)
            promise = promised.get(parent)      # (levels, by) an ancestor set itself
            if promise is not None:
                missing = sorted(set(promise[0]) - set(values['lockout_levels']))
                if missing:
                    raise c.fail(f'{_where(path)}.lockout_levels',
                                 f" {list(values['lockout_levels'])} lacks level(s) "
                                 f"{', '.join(map(str, missing))} of its ancestor "
                                 f"{promise[1]!r} ({list(promise[0])}): a tree lease on "
                                 f"{promise[1]!r} locks them out everywhere below it")
            promised[path] = (values['lockout_levels'], path) \
                if 'lockout_levels' in own[path] else promise
            resolved[path] = values
        cls._one_owner(c, resolved)
        tree = cls([Resource(path, **v) for path, v in resolved.items()], adhoc, source)
        size = json_size(tree.as_dict())
        if size > MAX_TREE_JSON:
            raise c.fail('resources', f' take {size} octets as JSON, more than '
                                      f'{MAX_TREE_JSON}: declare fewer or shorter ones')
        return tree

    @staticmethod
    def _one_owner(c, resolved):
        """Refuse an instance id or agent class declared by two resources."""
        for key, what in (('instances', 'instance'), ('classes', 'agent class')):
            owner = {}
            for path in sorted(resolved):
                for name in resolved[path].get(key, ()):
                    if name in owner:
                        raise c.fail(f'{_where(path)}.{key}',
                                     f': {what} {name!r} is covered by {_where(owner[name])} '
                                     f'too; an agent belongs to one resource (hold both '
                                     f'with one tree lease on a common parent)')
                    owner[name] = path

    # -- lookups ----------------------------------------------------------------

    def __iter__(self):
        """The declared resources, in path order."""
        return (self._by_path[p] for p in self._paths)

    def __len__(self):
        return len(self._paths)

    def __contains__(self, path):
        return path in self._by_path

    def __repr__(self):
        return f'<ResourceTree {len(self)} declared, adhoc={self.adhoc}>'

    def get(self, path):
        """The declared Resource at ``path``, or None."""
        return self._by_path.get(path)

    def check(self, path):
        """The declared Resource at ``path``; None for an undeclared path the
        tree allows (ad hoc). Raises LeaseError for a malformed path and
        :class:`UnknownResource` for an undeclared one when ad-hoc paths are
        not allowed, or when it is a near miss of a declared one (it names
        the closest: ``did you mean 'satp1/hwp'?``), ad hoc or not: a typo
        must not lease a path nobody else uses."""
        found = self._by_path.get(path) if isinstance(path, str) else None
        if found is not None:
            return found
        check_resource(path)
        hint = self._hints.get(path)
        if hint is None:
            hint = suggest(path, self._paths) if self._paths else ''
            if len(self._hints) >= 4096:
                self._hints.clear()
            self._hints[path] = hint
        if hint:            # a near miss is refused even when ad-hoc paths are allowed
            raise UnknownResource(f'no resource {path!r}; {hint}')
        if self.adhoc:
            return None
        raise UnknownResource(f'no resource {path!r}: it is none of the {len(self)} the '
                              f'site declares (ocs-locks resources lists them)')

    def covered(self, path, tree=False):
        """The declared resources a lease on ``path`` covers, in path order:
        the one at ``path`` (if declared) and, for a tree lease, every
        declared one below it (as :func:`.paths.conflicts` says a tree lease
        excludes them). A plain lease covers nothing below its path."""
        own = self._by_path.get(path)
        out = [own] if own is not None else []
        if tree:
            prefix = path + '/'
            i = bisect.bisect_left(self._paths, prefix)
            while i < len(self._paths) and self._paths[i].startswith(prefix):
                out.append(self._by_path[self._paths[i]])
                i += 1
        return out

    def enforced(self, path, tree=False):
        """``[(resource, instances, classes)]`` of the covered resources that
        cover agents (see :meth:`covered`), for the access director."""
        return [(r, r.instances, r.classes) for r in self.covered(path, tree)
                if r.instances or r.classes]

    def lease(self, paths, tree=False, lease=None):
        """The lease, seconds, a request for ``paths`` (a path or a list)
        gets: ``lease`` if given (a number above the smallest ``max_lease``
        of the resources it covers raises LeaseError in one line); else the
        smallest ``default_lease`` of those (DEFAULT_LEASE if none sets one),
        within the smallest ``max_lease``. A ``lease`` that is not a number
        is returned as it is (the lease state refuses it)."""
        paths = [paths] if isinstance(paths, str) else paths
        covered = [r for p in paths if isinstance(p, str) for r in self.covered(p, tree)] \
            if self._paths and isinstance(paths, (list, tuple)) else []
        caps = [(r.max_lease, r.path) for r in covered if r.max_lease is not None]
        most, by = min(caps) if caps else (MAX_LEASE, None)
        if lease is None:
            defaults = [r.default_lease for r in covered if r.default_lease is not None]
            return min(min(defaults) if defaults else DEFAULT_LEASE, most)
        if by is not None and not isinstance(lease, bool) \
                and isinstance(lease, (int, float)) and lease > most:
            raise LeaseError(f'lease {lease:g} s is longer than the max_lease {most:g} s '
                             f'of resource {by!r}')
        return lease

    def as_dict(self):
        """Public and JSON-ready: ``{'adhoc', 'source', 'resources': [...]}``
        (each resource as :meth:`Resource.as_dict`, in path order)."""
        return {'adhoc': self.adhoc, 'source': self.source,
                'resources': [r.as_dict() for r in self]}

    def check_site(self, agents, site=''):
        """Check the declarations against the site's agents ``agents``
        (``{instance_id: agent_class}``): every declared instance and class
        must be one of them, and no agent may be covered by two resources
        (one by its instance id, one by its class). Raises
        ResourceConfigError in one line (``site`` names the site file)."""
        c = _Checker(self.source)
        in_site = f' in the site config {site}' if site else ' in the site config'
        classes = sorted(set(agents.values()))
        for r in self:
            for name in r.instances:
                if name not in agents:
                    hint = suggest(name, sorted(agents))
                    raise c.fail(f'{_where(r.path)}.instances',
                                 f': no agent instance {name!r}{in_site}'
                                 f'{"; " + hint if hint else ""}')
            for name in r.classes:
                if name not in classes:
                    hint = suggest(name, classes)
                    raise c.fail(f'{_where(r.path)}.classes',
                                 f': no agent of class {name!r}{in_site}'
                                 f'{"; " + hint if hint else ""}')
        for instance, agent_class in sorted(agents.items()):
            by = [r.path for r in self if instance in r.instances or agent_class in r.classes]
            if len(by) > 1:
                raise c.fail(_where(by[1]), f': agent {instance!r} ({agent_class}) is covered '
                                            f'by {_where(by[0])} too; an agent belongs to '
                                            f'one resource')
