"""The live page: static files served by crossbar's static web service.

``index.html``, ``locks.js`` and ``locks.css`` are package data; so is
``autobahn.min.js``, the npm package ``autobahn-browser`` that ``make web``
installs (``npm ci`` at the version ``package-lock.json`` pins) and copies
here. crossbar serves this directory with a path of type ``static``
(``"package": "ocs_locking.web", "resource": "."``, see
:func:`ocs_locking.bus.config.add_page`). The one Python helper,
:func:`page_url`, is pure (stdlib only: crossbar imports this package).
"""
from urllib.parse import urlencode

__all__ = ['DEFAULTS', 'page_url']

#: What the page assumes when its address names none of them (its query
#: string: ``?realm=...&root=...&registry=...``); locks.js has the same.
DEFAULTS = (('realm', 'test_realm'), ('root', 'observatory'), ('registry', 'lock-registry'))


def page_url(host, port, realm='test_realm', address_root='observatory',
             registry='lock-registry', path='locks'):
    """The live page's address on the router at ``host:port``
    (``http://127.0.0.1:18001/locks/``), with a query string naming the
    realm, address root and registry instance-id where they differ from
    :data:`DEFAULTS`. The page opens its WebSocket at ``/ws`` of the same
    origin."""
    given = {'realm': realm, 'root': address_root, 'registry': registry}
    query = urlencode([(k, given[k]) for k, default in DEFAULTS if given[k] != default])
    return f'http://{host}:{port}/{path}/' + (f'?{query}' if query else '')
