"""The registry's lease procedures over crossbar's HTTP bridge, one request each.

A script's acquire, renew and release are each ONE HTTP POST to the router's
``/call`` bridge (``{"procedure": "<registry>.lease.acquire", "args": [],
"kwargs": {...}}``), on one keep-alive connection (a ``requests.Session``):
no OCS task start + wait, no ``get_api`` call to build an ``OCSClient``, no
new TCP connection per call. The reply is the procedure's own
``{'ok', 'message', 'data'}``.
"""
import json
import logging
import threading

from ..errors import ReservationError
from ..wire import ANSWER_MARGIN, error_reason, lease_uri, one_line
from .holder import Answer

__all__ = ['BridgeClient', 'OCSClientTransport', 'lease_transport']

log = logging.getLogger(__name__)

#: Seconds to connect to the router.
CONNECT_TIMEOUT = 5.0
#: Extra seconds a call may take beyond the registry-side wait it asks for
#: (the registry answers at that wait itself: see wire.ANSWER_MARGIN).
CALL_MARGIN = ANSWER_MARGIN


NOT_RUNNING = ('the registry is not running (its lease procedures are not registered '
               'on the router)')


#: Why a client found no registry on the router (its agent is not there).
NO_REGISTRY = 'the registry is not running (no such agent on the router)'


def _reason(exc):
    return error_reason(exc, not_running=NOT_RUNNING)


class BridgeClient:
    """Calls ``<registry_address>.lease.<name>`` through the HTTP bridge at ``url``.

    Args:
        url (str): the site's ``wamp_http`` (``http://host:port/call``).
        registry_address (str): ``observatory.lock-registry``.
        session: a ``requests.Session`` to use (default: a new one).

    One connection is kept alive and reused; calls from several threads are
    serialised on it (a Reservation's renew thread and its owner). The proxy
    settings of the environment are read once, here, not at every call (for
    requests that costs about 0.6 ms a call), and each request leaves in one
    TCP segment (headers and body together, so Nagle's algorithm and delayed
    ACKs cannot hold the body back).
    """

    def __init__(self, url, registry_address, session=None):
        import requests
        self.url = url
        self.registry_address = registry_address
        if session is None:
            session = requests.Session()
            session.proxies.update(requests.utils.get_environ_proxies(url))
            session.trust_env = False
        self._http = session
        self._lock = threading.Lock()
        self.requests = 0           # HTTP requests sent (the benchmark counts them)

    @classmethod
    def from_site(cls, registry, args=None):
        """The bridge of the site named by ``args`` (as for ``OCSClient``)."""
        from ocs import site_config
        cc = site_config.get_control_client(registry, args=args)
        return cls(cc.call_url, cc.agent_addr)

    def _new_session(self):
        import requests
        session = requests.Session()
        session.proxies.update(requests.utils.get_environ_proxies(self.url))
        session.trust_env = False
        return session

    def watch_call(self, params, wait):
        """One lease watch (``lease.watch``, a long poll of up to ``wait``
        seconds) on a connection of its own: the watches never hold up the
        lease calls on the main connection. Connections are kept in a small
        pool (one per watch in flight) and reused."""
        with self._lock:
            pool = self.__dict__.setdefault('_watch_pool', [])
            session = pool.pop() if pool else None
        if session is None:
            session = self._new_session()
        try:
            return self._post(session, 'watch', params, wait, lock=False)
        finally:
            with self._lock:
                if len(self._watch_pool) < 8:
                    self._watch_pool.append(session)
                else:
                    session.close()

    def lease_call(self, name, params, wait=0.0):
        """Call the lease procedure ``name`` with keyword ``params``; an
        :class:`Answer` (``answered`` False when the registry's own reply
        never came back). ``wait``: seconds the registry may queue it (the
        request's ``timeout``): the read timeout is ``wait + CALL_MARGIN``,
        so the registry's own answer at ``wait`` always comes first.

        Crossbar's HTTP caller does not notice a client that goes away (it
        keeps the call running in the bridge's one session), so a request
        abandoned mid-wait cannot be withdrawn: it ends at its own
        ``timeout`` in the registry."""
        return self._post(self._http, name, params, wait)

    def _post(self, http, name, params, wait, lock=True):
        import requests
        body = json.dumps({'procedure': lease_uri(self.registry_address, name),
                           'args': [], 'kwargs': params}).encode()
        try:
            if lock:
                with self._lock:
                    self.requests += 1
                    r = http.post(self.url, data=body,
                                  headers={'Content-Type': 'application/json'},
                                  timeout=(CONNECT_TIMEOUT, wait + CALL_MARGIN))
            else:
                r = http.post(self.url, data=body, headers={'Content-Type': 'application/json'},
                              timeout=(CONNECT_TIMEOUT, wait + CALL_MARGIN))
        except requests.exceptions.RequestException as e:
            return Answer(False, f'cannot reach the router at {self.url}: '
                                 f'{type(e).__name__}', answered=False)
        if r.status_code != 200:
            return Answer(False, f'the router at {self.url} answered HTTP {r.status_code}',
                          answered=False)
        try:
            decoded = r.json()
        except ValueError:
            return Answer(False, f'the router at {self.url} sent no JSON', answered=False)
        if 'error' in decoded:
            if decoded['error'] == 'wamp.error.no_such_procedure':
                return Answer(False, NOT_RUNNING, answered=False)
            text = (decoded.get('args') or [decoded['error']])[0]
            return Answer(False, one_line(text), answered=False)
        args = decoded.get('args') or [None]
        return Answer.from_reply(args[0])

    def close(self):
        self._http.close()
        with self._lock:
            pool, self.__dict__['_watch_pool'] = self.__dict__.get('_watch_pool', []), []
        for session in pool:
            session.close()


class OCSClientTransport:
    """The same calls through an ``OCSClient`` (or ocs ``ControlClient``)
    someone already has: one POST each to its bridge URL, with the same
    read timeout as :class:`BridgeClient` (ocs's own ``call`` has none)."""

    def __init__(self, client):
        self._client = getattr(client, '_client', client)
        url, address = getattr(self._client, 'call_url', None), \
            getattr(self._client, 'agent_addr', None)
        self._bridge = BridgeClient(url, address) \
            if isinstance(url, str) and isinstance(address, str) else None

    def watch_call(self, params, wait):
        if self._bridge is not None:
            return self._bridge.watch_call(params, wait)
        return self.lease_call('watch', params, wait)

    def lease_call(self, name, params, wait=0.0):
        if self._bridge is not None:
            return self._bridge.lease_call(name, params, wait)
        http = self._client
        try:
            reply = http.call(lease_uri(http.agent_addr, name), **params)
        except Exception as e:      # ControlClientError, requests errors...
            return Answer(False, _reason(e), answered=False)
        return Answer.from_reply(reply)


def lease_transport(registry, args=None, client=None):
    """What a client's lease calls go through: ``client`` if it has
    ``lease_call``, an ``OCSClient`` (or ocs ``ControlClient``) wrapped in
    :class:`OCSClientTransport`, or with no ``client`` a
    :class:`BridgeClient` for ``registry`` on the site ``args`` name.
    Raises ReservationError (one line) when the registry cannot be found."""
    if client is None:
        try:
            return BridgeClient.from_site(registry, args=args)
        except Exception as e:
            raise ReservationError(f'cannot reach the lock registry {registry!r}: '
                                   f'{error_reason(e, not_running=NO_REGISTRY)}') from None
    if not callable(getattr(client, 'lease_call', None)):
        return OCSClientTransport(client)
    return client
