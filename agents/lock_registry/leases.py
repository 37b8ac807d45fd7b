"""The LockRegistryAgent's site-wide lease tasks, on the pure LeaseState.

Every task runs on the reactor thread and answers ``(ok, message)`` with the
grant (or the holders) in session.data. A queued ``acquire`` waits, within
its timeout, for the state machine to grant it. Grants, token counters and
the audit log live in SQLite (``--db``), so a registry restart loses nothing.
"""
import time

from ocs import ocs_agent
from twisted.internet import defer, task

from ocs_locking.leases.state import LeaseError, LeaseState
from ocs_locking.leases.store import LeaseStore, LeaseStoreError
from ocs_locking.wire import LEASE_PROCEDURES, lease_uri

#: How often due leases and waiter timeouts are applied, seconds.
EXPIRE_EVERY = 0.1
#: Lease calls also offered as plain WAMP procedures, ``<registry>.lease.<name>``:
#: unlike OCS tasks, several callers may use them at once (agents' SiteLocks do).
RPCS = LEASE_PROCEDURES


def _when(t):
    """Local time with tenths, truncated (never a second early)."""
    return time.strftime('%H:%M:%S', time.localtime(t)) + f'.{int(t % 1 * 10)}'


def _describe_holders(holders):
    return '; '.join(f"{g['resource']} held by {g['owner']!r} (token {g['token']}) until "
                     f"{_when(g['expires'])}" + (f" ({g['note']})" if g.get('note') else '')
                     for g in holders)


class LeaseOps:
    """Lease tasks for the registry agent.

    Args:
        agent (OCSAgent): the registry's agent.
        db (str): SQLite file for grants, token counters and the audit log.
        reactor: the Twisted reactor (default: the global one).
    """

    def __init__(self, agent, db, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.agent = agent
        self.log = agent.log
        self._joined = False
        try:
            self.store = LeaseStore(db)
            self.state = LeaseState(store=self.store)
        except (LeaseStoreError, LeaseError) as e:
            raise SystemExit(f'lock-registry: cannot open the lease database {db!r}: {e}')
        self._waiters = {}          # request id -> Deferred fired with its final Outcome
        self.state.add_listener(self._on_change)
        self._ticker = task.LoopingCall(self._expire)
        self._ticker.clock = reactor
        reactor.callWhenRunning(self._ticker.start, EXPIRE_EVERY, now=False)

    # -- plumbing -----------------------------------------------------------------

    def _expire(self):
        self.state.expire(time.time())
        joined = bool(getattr(self.agent, 'realm_joined', False))
        if joined and not self._joined:
            self._register_rpcs()   # registrations do not survive a router restart
        self._joined = joined

    def _register_rpcs(self):
        for name in RPCS:
            uri = lease_uri(self.agent.agent_address, name)
            d = defer.maybeDeferred(self.agent.register, getattr(self, f'_rpc_{name}'), uri)
            d.addErrback(lambda f, uri=uri: self.log.error(
                'could not register {uri}: {err}', uri=uri, err=f.getErrorMessage()))

    @defer.inlineCallbacks
    def _rpc_acquire(self, resource, owner, lease=30.0, timeout=0.0, tree=False, note='',
                     client=''):
        ok, msg, data = yield self.do_acquire(resource, owner, lease, timeout, tree, note,
                                              client)
        return {'ok': ok, 'message': msg, 'data': data}

    def _rpc_renew(self, resource, token, lease=30.0, client=''):
        ok, msg, data = self.do_renew(resource, token, lease, client)
        return {'ok': ok, 'message': msg, 'data': data}

    def _rpc_release(self, resource, token, client=''):
        ok, msg, data = self.do_release(resource, token, client)
        return {'ok': ok, 'message': msg, 'data': data}

    def _on_change(self, action, item):
        # A queued request reached its end (granted, timed out, cancelled).
        rid = getattr(item, 'request_id', None)
        d = self._waiters.get(rid)
        if d is not None and action in ('grant', 'timeout', 'cancel'):
            del self._waiters[rid]
            self.reactor.callLater(0, d.callback, self.state.poll(rid))

    @staticmethod
    def _grant_data(outcome):
        grants = [g.as_dict() for g in outcome.grants]
        first = grants[0]
        return {'resource': first['resource'] if len(grants) == 1 else
                [g['resource'] for g in grants],
                'owner': first['owner'], 'token': first['token'],
                'expires': first['expires'], 'request_id': outcome.request_id,
                'grants': grants}

    def _refused(self, session, e):
        ok, msg, session.data = self._refusal(e)
        return ok, msg

    @staticmethod
    def _refusal(e):
        return False, f'Refused: {e}', {'error': str(e)}

    # -- tasks ----------------------------------------------------------------------

    @ocs_agent.param('resource')
    @ocs_agent.param('owner', type=str)
    @ocs_agent.param('lease', default=30.0, type=float)
    @ocs_agent.param('timeout', default=0.0, type=float)
    @ocs_agent.param('tree', default=False, type=bool)
    @ocs_agent.param('note', default='', type=str)
    @ocs_agent.param('client', default='', type=str)
    @defer.inlineCallbacks
    def acquire(self, session, params):
        """acquire(resource, owner, lease=30., timeout=0., tree=False, note='', client='')

        **Task** - Lease one resource, or several all-or-nothing, site-wide.

        Parameters:
            resource (str or list): ``/``-separated path(s), e.g. ``satp1/hwp``.
            owner (str): who will hold it (agent, operator or schedule).
            lease (float): seconds until the lease ends unless renewed.
            timeout (float): seconds to wait in the FIFO queue if busy.
            tree (bool): also exclude everything below the path(s).
            note (str): why, shown to others and kept in the audit log.
            client (str): the caller's identity, kept in the audit log.

        Notes:
            On success session.data holds the grant; each resource has its
            own fencing token, strictly increasing per resource::

                >>> response.session['data']
                {'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
                 'expires': 1700000030.0, 'request_id': 12, 'grants': [...]}

            When busy, it holds the current holders and the queue position::

                >>> response.session['data']
                {'holders': [{'resource': 'satp1/hwp', 'owner': 'bob', ...}],
                 'queue_position': 1}

        """
        def queued(out):
            session.data = {'queue_position': out.queue_position,
                            'request_id': out.request_id,
                            'holders': [g.as_dict() for g in out.holders]}
        ok, msg, data = yield self.do_acquire(**params, on_queued=queued)
        session.data = data
        return ok, msg

    @defer.inlineCallbacks
    def do_acquire(self, resource, owner, lease=30.0, timeout=0.0, tree=False, note='',
                   client='', on_queued=None):
        """The acquire itself: a Deferred firing ``(ok, message, data)``;
        ``on_queued(outcome)`` is called if the request has to wait."""
        try:
            out = self.state.acquire(resource, owner, lease, time.time(), timeout=timeout,
                                     tree=tree, note=note, client=client)
        except LeaseError as e:
            return self._refusal(e)
        if out.status == 'queued':
            d = self._waiters[out.request_id] = defer.Deferred()
            if on_queued is not None:
                on_queued(out)
            out = yield d
        if out.status == 'granted':
            names = ', '.join(g.resource for g in out.grants)
            tokens = ', '.join(str(g.token) for g in out.grants)
            return (True, f"Granted {names} to {owner!r} (token {tokens}) until "
                          f"{_when(out.grants[0].expires)}.", self._grant_data(out))
        wanted = resource if isinstance(resource, list) else [resource]
        holders = [g.as_dict() for g in out.holders] or \
            [g.as_dict() for g in self.state.holders() if g.resource in wanted]
        why = _describe_holders(holders) or 'earlier requests are waiting'
        return (False, f'Busy ({out.status}): {why}.',
                {'holders': holders, 'queue_position': out.queue_position,
                 'status': out.status})

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('token', type=int)
    @ocs_agent.param('lease', default=30.0, type=float)
    @ocs_agent.param('client', default='', type=str)
    def renew(self, session, params):
        """renew(resource, token, lease=30., client='')

        **Task** - Extend a lease you hold (all resources of its request).

        Notes:
            session.data holds the renewed grant (``resource``, ``owner``,
            ``token``, ``expires``).
        """
        ok, msg, session.data = self.do_renew(**params)
        return ok, msg

    def do_renew(self, resource, token, lease=30.0, client=''):
        """The renewal itself: ``(ok, message, data)``."""
        try:
            g = self.state.renew(resource, token, lease, time.time(), client=client)
        except LeaseError as e:
            return self._refusal(e)
        return (True, f'Renewed {g.resource} (token {g.token}) until {_when(g.expires)}.',
                g.as_dict())

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('token', type=int)
    @ocs_agent.param('client', default='', type=str)
    def release(self, session, params):
        """release(resource, token, client='')

        **Task** - Release a lease you hold (all resources of its request).

        Notes:
            session.data lists the requests granted as a result::

                >>> response.session['data']
                {'released': 'satp1/hwp', 'granted': [{'resource': ..., 'token': 8}]}
        """
        ok, msg, session.data = self.do_release(**params)
        return ok, msg

    def do_release(self, resource, token, client=''):
        """The release itself: ``(ok, message, data)``."""
        try:
            granted = self.state.release(resource, token, time.time(), client=client)
        except LeaseError as e:
            return self._refusal(e)
        return (True, f'Released {resource}.',
                {'released': resource,
                 'granted': [g.as_dict() for o in granted for g in o.grants]})

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('reason', type=str)
    @ocs_agent.param('client', default='', type=str)
    def force_release(self, session, params):
        """force_release(resource, reason, client='')

        **Task** (privileged) - Revoke whoever holds ``resource``; needs an
        advanced credential through ocs's access control. The holder's
        ``SiteLock`` learns of it on its next renewal.

        Notes:
            session.data holds the revoked grants and who was granted next.
        """
        by = f"cred_level {getattr(session, 'cred_level', '?')}"
        try:
            revoked, granted = self.state.force_release(
                params['resource'], params['reason'], by, time.time(),
                client=params['client'])
        except LeaseError as e:
            return self._refused(session, e)
        session.data = {'revoked': [g.as_dict() for g in revoked],
                        'granted': [g.as_dict() for o in granted for g in o.grants]}
        owners = ', '.join(sorted({g.owner for g in revoked}))
        return True, f"Revoked {params['resource']} from {owners}: {params['reason']}"

    @ocs_agent.param('resource', default=None)
    @ocs_agent.param('limit', default=20, type=int, check=lambda n: 1 <= n <= 1000)
    def history(self, session, params):
        """history(resource=None, limit=20)

        **Task** - The audit log, newest first (optionally one resource and
        what lies below it).

        Notes:
            session.data holds the rows::

                >>> response.session['data']
                {'history': [{'at': 1700000000.0, 'action': 'grant',
                              'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
                              'client': 'ocs-locks', 'detail': {...}, 'ok': True}]}
        """
        resource = params['resource']
        if resource is not None and not isinstance(resource, str):
            return self._refused(session, LeaseError(
                f'resource must be a path string, not {resource!r:.60}'))
        try:
            rows = self.store.history(resource, limit=params['limit'])
        except (LeaseError, ValueError) as e:
            return self._refused(session, e)
        session.data = {'history': rows}
        return True, f'{len(rows)} audit record(s).'

    def leases(self, session, params):
        """leases()

        **Task** - All current leases and waiting requests.

        Notes:
            session.data holds ``grants``, ``waiting`` and token ``counters``.
        """
        session.data = self.state.snapshot()
        n = len(session.data['grants'])
        return True, f"{n} lease(s), {len(session.data['waiting'])} waiting."
