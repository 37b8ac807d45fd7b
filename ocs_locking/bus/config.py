"""Rewriting a crossbar config to run the bus component: pure, stdlib only.

:func:`rewrite` takes a crossbar config (a dict, e.g. the one ocs generates)
and returns a copy in which the router worker runs
:class:`ocs_locking.bus.authorizer.BusAuthorizer` in the realm under its own
role (:data:`COMPONENT_ROLE`, exact permissions), the agents' role(s) (the
roles of the websocket transports) are authorized by
``ocs_locking.bus.authorize``, and the HTTP bridge's role(s) (``caller`` /
``publisher`` paths) keep their static permissions with caller and
publisher disclosure on, plus a call permission for ``ocs_locking.bus.info``.
Each web transport that carries the agents' websocket also serves the live
page (:func:`add_page`: a ``static`` path ``locks`` from the package
``ocs_locking.web``). Running it on its own output changes nothing.

Every problem is a :class:`ConfigError` with one line naming it.
"""
import copy
import json

from . import rules

__all__ = ['ConfigError', 'COMPONENT_CLASS', 'COMPONENT_ROLE', 'PAGE_PATH', 'PAGE_PACKAGE',
           'parse', 'rewrite', 'add_page', 'page_paths', 'add_pythonpath', 'dumps',
           'uses_component', 'summary']

COMPONENT_CLASS = 'ocs_locking.bus.authorizer.BusAuthorizer'
COMPONENT_ROLE = 'ocs_locking_bus'
_ACTIONS = ('call', 'register', 'publish', 'subscribe')
#: The live page's path on the router's web transport (``/locks/``), and
#: the package whose files crossbar's static service serves there.
PAGE_PATH = 'locks'
PAGE_PACKAGE = 'ocs_locking.web'


class ConfigError(ValueError):
    """A crossbar config this module cannot rewrite; the message is one line."""


def parse(text, where='crossbar config'):
    """The config dict in JSON ``text``; ConfigError naming the line if it is not JSON."""
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ConfigError(f'{where} is not valid JSON: {e}') from None
    if not isinstance(cfg, dict):
        raise ConfigError(f'{where}: a crossbar config is a JSON object, '
                          f'not {type(cfg).__name__}')
    return cfg


def dumps(cfg):
    return json.dumps(cfg, indent=4) + '\n'


def _permission(uri, allow, disclose=False):
    return {'uri': uri, 'match': 'exact',
            'allow': {a: a in allow for a in _ACTIONS},
            'disclose': {'caller': disclose, 'publisher': disclose},
            'cache': True}


def component_role():
    """The component's own role: exactly what it needs."""
    perms = [_permission(rules.AUTHORIZE_URI, ('register',)),
             _permission(rules.INFO_URI, ('register',))]
    perms += [_permission(t, ('subscribe',)) for t in (
        'wamp.registration.on_create', 'wamp.registration.on_unregister',
        'wamp.registration.on_delete', 'wamp.session.on_leave')]
    perms += [_permission(p, ('call',)) for p in (
        'wamp.registration.list', 'wamp.registration.get', 'wamp.registration.lookup',
        'wamp.registration.list_callees')]
    return {'name': COMPONENT_ROLE, 'permissions': perms}


def _router(cfg, where):
    workers = cfg.get('workers')
    if not isinstance(workers, list):
        raise ConfigError(f'{where}: no "workers" list (is this a crossbar config?)')
    routers = [w for w in workers if isinstance(w, dict) and w.get('type') == 'router']
    if not routers:
        raise ConfigError(f'{where}: no router worker (a worker with "type": "router")')
    if len(routers) > 1:
        raise ConfigError(f'{where}: {len(routers)} router workers; this command '
                          f'rewrites a config with one')
    return routers[0]


def _realm(router, realm, where):
    realms = router.get('realms')
    if not isinstance(realms, list) or not realms:
        raise ConfigError(f'{where}: the router worker has no realms')
    named = [r for r in realms if isinstance(r, dict) and isinstance(r.get('name'), str)]
    if realm is None:
        if len(named) != 1:
            raise ConfigError(f'{where}: {len(named)} realms '
                              f'({", ".join(r["name"] for r in named)}); name one with --realm')
        return named[0]
    for r in named:
        if r['name'] == realm:
            return r
    raise ConfigError(f'{where}: no realm {realm!r} (realms: '
                      f'{", ".join(r["name"] for r in named) or "none"})')


def _paths(router):
    for transport in router.get('transports') or []:
        if not isinstance(transport, dict):
            continue
        if transport.get('type') == 'websocket':
            yield transport
        paths = transport.get('paths')
        if isinstance(paths, dict):
            yield from (p for p in paths.values() if isinstance(p, dict))


def _auth_roles(auth):
    """Roles a websocket's auth config assigns."""
    if not isinstance(auth, dict):
        return
    for method in auth.values():
        if not isinstance(method, dict):
            continue
        if isinstance(method.get('role'), str):
            yield method['role']
        principals = method.get('principals')
        if isinstance(principals, dict):
            for p in principals.values():
                if isinstance(p, dict) and isinstance(p.get('role'), str):
                    yield p['role']


def _roles_of(router, realm_name):
    agents, bridges = [], []
    for path in _paths(router):
        if path.get('type') == 'websocket':
            agents += [r for r in _auth_roles(path.get('auth')) if r not in agents]
        elif path.get('type') in ('caller', 'publisher') and isinstance(path.get('role'), str):
            if path.get('realm', realm_name) == realm_name and path['role'] not in bridges:
                bridges.append(path['role'])
    return agents, bridges


def rewrite(cfg, address_root='observatory', registry='lock-registry', realm=None,
            where='crossbar config', page=PAGE_PATH, standbys=()):
    """A copy of crossbar config ``cfg`` that runs the bus component (see
    the module docstring) and serves the live page at ``page`` (None: not);
    ConfigError for a config without a router or realm."""
    standbys = list(standbys or ())
    for name, value in [('address root', address_root), ('registry', registry)] + [
            ('standby', s) for s in standbys]:
        if not isinstance(value, str) or not value or '.' in value or ' ' in value:
            raise ConfigError(f'{name} must be one URI component (no dots), not {value!r}')
    if not isinstance(cfg, dict):
        raise ConfigError(f'{where}: a crossbar config is a JSON object')
    cfg = copy.deepcopy(cfg)
    router = _router(cfg, where)
    realm_cfg = _realm(router, realm, where)
    roles = realm_cfg.setdefault('roles', [])
    if not isinstance(roles, list):
        raise ConfigError(f'{where}: realm {realm_cfg["name"]!r}: "roles" is not a list')
    agents, bridges = _roles_of(router, realm_cfg['name'])
    by_name = {r.get('name'): r for r in roles if isinstance(r, dict)}
    if not agents:
        agents = ['iocs_agent'] if 'iocs_agent' in by_name else []
    if not agents:
        raise ConfigError(f'{where}: no agents\' role: no websocket transport assigns a role '
                          f'and the realm has no iocs_agent role')
    for name in agents:
        role = by_name.get(name)
        if role is None:
            raise ConfigError(f'{where}: the websocket transport assigns role {name!r}, '
                              f'which realm {realm_cfg["name"]!r} does not define')
        if role.get('authorizer') not in (None, rules.AUTHORIZE_URI):
            raise ConfigError(f'{where}: role {name!r} already has the authorizer '
                              f'{role["authorizer"]!r}')
        role.clear()
        role.update({'name': name, 'authorizer': rules.AUTHORIZE_URI})
    for name in bridges:
        role = by_name.get(name)
        if role is None or name in agents:
            continue
        perms = role.setdefault('permissions', [])
        if not isinstance(perms, list):
            raise ConfigError(f'{where}: role {name!r}: "permissions" is not a list')
        for perm in perms:
            if isinstance(perm, dict):
                perm['disclose'] = {'caller': True, 'publisher': True}
        if not any(isinstance(p, dict) and p.get('uri') == rules.INFO_URI for p in perms):
            perms.append(_permission(rules.INFO_URI, ('call',), disclose=True))
    own = component_role()
    for i, role in enumerate(roles):
        if isinstance(role, dict) and role.get('name') == COMPONENT_ROLE:
            roles[i] = own
            break
    else:
        roles.append(own)
    components = router.setdefault('components', [])
    if not isinstance(components, list):
        raise ConfigError(f'{where}: the router worker\'s "components" is not a list')
    component = {'type': 'class', 'classname': COMPONENT_CLASS, 'realm': realm_cfg['name'],
                 'role': COMPONENT_ROLE,
                 'extra': {'address_root': address_root, 'registry': registry}}
    if standbys:
        component['extra']['standbys'] = standbys
    for i, c in enumerate(components):
        if isinstance(c, dict) and c.get('classname') == COMPONENT_CLASS:
            components[i] = component
            break
    else:
        components.append(component)
    return cfg if page is None else add_page(cfg, page, where)


def _static_page():
    # cache_timeout 0: crossbar's default (12 h) would keep an old page in
    # browsers after an upgrade
    return {'type': 'static', 'package': PAGE_PACKAGE, 'resource': '.',
            'options': {'cache_timeout': 0}}


def add_page(cfg, path=PAGE_PATH, where='crossbar config'):
    """A copy of ``cfg`` whose router web transports that carry a
    websocket path also serve the live page at ``/<path>/``: crossbar's
    static service on the package :data:`PAGE_PACKAGE` (the router worker
    must import ``ocs_locking``: installed in crossbar's environment, or on
    its python path, see :func:`add_pythonpath`). A path of that name that
    is not the page is refused (ConfigError); running it twice is once."""
    if not isinstance(path, str) or not path or '/' in path or path != path.strip():
        raise ConfigError(f'the page path must be one URL component (no /), not {path!r}')
    cfg = copy.deepcopy(cfg)
    for worker in cfg.get('workers') or []:
        if not isinstance(worker, dict) or worker.get('type') != 'router':
            continue
        for transport in worker.get('transports') or []:
            paths = transport.get('paths') if isinstance(transport, dict) else None
            if transport.get('type') != 'web' or not isinstance(paths, dict) or not any(
                    isinstance(p, dict) and p.get('type') == 'websocket'
                    for p in paths.values()):
                continue
            old = paths.get(path)
            if old is not None and not (isinstance(old, dict) and old.get('type') == 'static'
                                        and old.get('package') == PAGE_PACKAGE):
                raise ConfigError(f'{where}: the web transport already has a path {path!r} '
                                  f'that is not the live page; choose another (--page)')
            paths[path] = _static_page()
    return cfg


def page_paths(cfg):
    """The paths at which ``cfg``'s router transports serve the live page."""
    found = []
    for worker in cfg.get('workers') or []:
        for transport in (worker.get('transports') or []) if isinstance(worker, dict) else []:
            paths = transport.get('paths') if isinstance(transport, dict) else None
            for name, p in (paths or {}).items() if isinstance(paths, dict) else ():
                if isinstance(p, dict) and p.get('type') == 'static' \
                        and p.get('package') == PAGE_PACKAGE and name not in found:
                    found.append(name)
    return found


def summary(cfg):
    """One line: which realm runs the component, which roles it authorizes."""
    for worker in cfg.get('workers') or []:
        if not uses_component(worker):
            continue
        for realm in worker.get('realms') or []:
            roles = [r.get('name') for r in realm.get('roles') or []
                     if isinstance(r, dict) and r.get('authorizer') == rules.AUTHORIZE_URI]
            if roles:
                pages = ''.join(f'; the live page at /{p}/' for p in page_paths(cfg))
                return (f'component ocs_locking.bus in realm {realm.get("name")!r}; '
                        f'role(s) {", ".join(roles)} authorized by {rules.AUTHORIZE_URI}'
                        f'{pages}')
    return 'no bus component'


def uses_component(worker):
    """Whether router worker config ``worker`` runs the bus component."""
    return isinstance(worker, dict) and any(
        isinstance(c, dict) and c.get('classname') == COMPONENT_CLASS
        for c in worker.get('components') or [])


def add_pythonpath(cfg, directory):
    """A copy of ``cfg`` whose workers running the component have
    ``directory`` (the one holding ``ocs_locking/``) on their python path."""
    cfg = copy.deepcopy(cfg)
    for worker in cfg.get('workers') or []:
        if uses_component(worker):
            options = worker.setdefault('options', {})
            path = options.setdefault('pythonpath', [])
            if directory not in path:
                path.insert(0, directory)
    return cfg
