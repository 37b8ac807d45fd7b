"""The LockRegistryAgent's site-wide lease tasks, on the pure LeaseState.

Every task runs on the reactor thread and answers ``(ok, message)`` with the
grant (or the holders) in session.data. A queued ``acquire`` waits, within
its timeout, for the state machine to grant it. Grants, token counters and
the audit log live in SQLite (``--db``), so a registry restart loses nothing.
"""
import time

from ocs import ocs_agent
from twisted.internet import defer, task

from ocs_locking.registry.state import LeaseError, LeaseState
from ocs_locking.registry.store import LeaseStore, LeaseStoreError

#: How often due leases and waiter timeouts are applied, seconds.
EXPIRE_EVERY = 0.1


def _when(t):
    return time.strftime('%H:%M:%S', time.localtime(t)) + f'{t % 1:.1f}'[1:]


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
        self.log = agent.log
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
        session.data = {'error': str(e)}
        return False, f'Refused: {e}'

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
        yield None
        try:
            out = self.state.acquire(params['resource'], params['owner'], params['lease'],
                                     time.time(), timeout=params['timeout'],
                                     tree=params['tree'], note=params['note'],
                                     client=params['client'])
        except LeaseError as e:
            return self._refused(session, e)
        if out.status == 'queued':
            d = self._waiters[out.request_id] = defer.Deferred()
            session.data = {'queue_position': out.queue_position,
                            'request_id': out.request_id,
                            'holders': [g.as_dict() for g in out.holders]}
            out = yield d
        if out.status == 'granted':
            session.data = self._grant_data(out)
            names = ', '.join(g.resource for g in out.grants)
            tokens = ', '.join(str(g.token) for g in out.grants)
            return True, (f"Granted {names} to {params['owner']!r} (token {tokens}) until "
                          f"{_when(out.grants[0].expires)}.")
        holders = [g.as_dict() for g in out.holders] or \
            [g.as_dict() for g in self.state.holders()
             if g.resource in (params['resource'] if isinstance(params['resource'], list)
                               else [params['resource']])]
        session.data = {'holders': holders, 'queue_position': out.queue_position,
                        'status': out.status}
        why = _describe_holders(holders) or 'earlier requests are waiting'
        return False, f'Busy ({out.status}): {why}.'

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
        try:
            g = self.state.renew(params['resource'], params['token'], params['lease'],
                                 time.time(), client=params['client'])
        except LeaseError as e:
            return self._refused(session, e)
        session.data = g.as_dict()
        return True, f'Renewed {g.resource} (token {g.token}) until {_when(g.expires)}.'

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
        try:
            granted = self.state.release(params['resource'], params['token'], time.time(),
                                         client=params['client'])
        except LeaseError as e:
            return self._refused(session, e)
        session.data = {'released': params['resource'],
                        'granted': [g.as_dict() for o in granted for g in o.grants]}
        return True, f"Released {params['resource']}."

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
