"""The LockRegistryAgent's booked reservations: a thin Twisted shell over
the lease state's calendar (:mod:`ocs_locking.leases.booking_state`).

:class:`BookingOps` adds to a :class:`~.leases.LeaseOps`:

* the **timer**: one ``callLater`` armed at the next instant a booking needs
  the state called (a warning, a start, an end warning, an end: see
  ``LeaseState.next_booking_event``), re-armed after every booking change
  and every firing; so a booking becomes a lease at its start within the
  reactor's timer precision, not at the next 0.1 s expiry tick. A booking
  whose start passed while the registry was down activates at the first
  firing after the start-up;
* the **procedures** ``<registry>.lease.book`` (its reply, to the caller
  alone, carries the secret claim key), ``unbook`` (with the claim key),
  ``claim`` (a long poll answered at the booking's start with its grant),
  ``calendar`` and ``next_free``;
* the OCS **tasks** ``book`` (public: a booking without a claim key, whose
  lease nobody can renew or release), ``unbook`` (privileged),
  ``calendar`` and ``next_free``.

Times on the wire are the registry's clock, seconds since the epoch (UTC):
``start``/``end``, or ``start_in``/``end_in`` (seconds from the registry's
now: a client never needs to compare its clock with the registry's).
"""
from ocs import ocs_agent
from twisted.internet import defer

from ocs_locking.errors import LeaseError
from ocs_locking.leases.booking_state import utc_day
from ocs_locking.leases.bookings import window_text
from ocs_locking.agents.lock_registry.registrar import Registrar
from ocs_locking.wire import BOOKING_PROCEDURES, lease_uri

__all__ = ['BookingOps', 'MAX_CLAIM_WAIT', 'CALENDAR_ROWS']

#: The longest a ``claim`` call waits for the booking's start, seconds
#: (then it answers ``booked`` with ``starts_in``: call again).
MAX_CLAIM_WAIT = 60.0
#: The most bookings in a calendar answer, the feed and session data.
CALENDAR_ROWS = 200
#: Seconds between a standby's looks at whether it serves (then its
#: bookings due are applied at once).
PAUSED_EVERY = 0.1
#: Lease actions after which the booking timer is re-armed.
_REARM = ('book', 'unbook', 'booking', 'renew', 'preempt')


def _time(name, value, relative, now):
    """An instant of the registry's clock from ``value`` (absolute, UTC
    seconds) or ``relative`` (seconds from now); LeaseError naming it."""
    if (value is None) == (relative is None):
        raise LeaseError(f'give {name} (UTC seconds) or {name}_in (seconds from now), '
                         f'exactly one')
    v = value if relative is None else relative
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1e12 < v < 1e12:
        which = name if relative is None else f'{name}_in'
        raise LeaseError(f'{which} must be a number of seconds, not {v!r:.40}')
    return float(v) if relative is None else now + float(v)


class BookingOps:
    """Booked reservations for the registry (see the module docstring).

    Args:
        leases (LeaseOps): the registry's lease service (its ``state``,
            ``clock``, ``reactor``, ``agent``, ``resources``).
    """

    def __init__(self, leases):
        self.leases = leases
        self.state, self.clock, self.reactor = leases.state, leases.clock, leases.reactor
        self.agent, self.log = leases.agent, leases.log
        self._timer = None          # the armed IDelayedCall
        self._armed_at = None       # the instant it is armed for (registry clock)
        self._claims = {}           # booking id -> Deferreds of claim calls waiting
        self.fired = 0              # timer firings (tests)
        self.state.add_listener(self._on_change)
        self.reactor.callWhenRunning(self._fire)
        self.agent.on('ready', lambda session: self._register_rpcs())

    # -- the timer ----------------------------------------------------------------

    def _on_change(self, action, item):
        if action in _REARM:
            self.reactor.callLater(0, self._arm)
        if action == 'booking':
            for d in self._claims.pop(item.booking_id, ()):
                if not d.called:
                    d.callback(item)

    def _arm(self):
        now = self.clock()
        t = self.state.next_booking_event(now)
        if t == self._armed_at and self._timer is not None and self._timer.active():
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._armed_at = None, t
        if t is not None:
            self._timer = self.reactor.callLater(max(0.0, t - now), self._fire)

    def _fire(self):
        """Apply what is due (activations, warnings, ends) and re-arm. The
        reactor's timer may run a little ahead of the registry's clock: then
        it is armed again for the rest. A standby (its lease service
        ``paused``: its store follows the primary's) changes nothing: it
        looks again every PAUSED_EVERY s, so that the bookings due are
        applied as soon as it takes over."""
        self._timer = None
        paused = getattr(self.leases, 'paused', None)
        if paused is not None and paused():
            self._armed_at = None
            self._timer = self.reactor.callLater(PAUSED_EVERY, self._fire)
            return
        self.fired += 1
        t, now = self._armed_at, self.clock()
        if t is None or now >= t:
            try:
                self.state.expire(now)
            except Exception as e:      # a failed write: the 0.1 s tick retries
                self.log.error('booking timer: {e}', e=e)
        self._armed_at = None
        self._arm()

    def stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- procedures -----------------------------------------------------------------

    def _register_rpcs(self):
        registrar = self.__dict__.get('_registrar')
        if registrar is None:
            from ocs_locking.agents.lock_registry.leases import _DetailsRegistrar
            registrar = self._registrar = Registrar(
                _DetailsRegistrar(self.agent), self.reactor, self.log,
                {lease_uri(self.agent.agent_address, n): self._answered(n)
                 for n in BOOKING_PROCEDURES})
            self.agent.on('leave', lambda session, details=None: registrar.left())
        registrar.joined()

    #: The procedures that write (their answer waits for the standbys' ack).
    WRITES = ('book', 'unbook', 'claim')

    def _answered(self, name):
        fn = getattr(self, f'_rpc_{name}')
        return self.leases._answered(fn) if name in self.WRITES else fn

    def _caller(self, details, client):
        from ocs_locking.agents.lock_registry.leases import caller_of
        return caller_of(details, client, self.leases.identify)

    @staticmethod
    def _reply(result):
        ok, message, data = result
        return {'ok': ok, 'message': message, 'data': data}

    def _rpc_book(self, resource, owner, start=None, end=None, start_in=None, end_in=None,
                  tree=False, note='', client='', details=None):
        return self._reply(self.do_book(resource, owner, start, end, start_in, end_in, tree,
                                        note, client, self._caller(details, client),
                                        claimable=True))

    def _rpc_unbook(self, booking, claim=None, client='', details=None):
        return self._reply(self.do_unbook(booking, claim, client=client,
                                          caller=self._caller(details, client)))

    def _rpc_claim(self, booking, claim=None, wait=0.0, client='', details=None):
        return self.do_claim(booking, claim, wait).addCallback(self._reply)

    def _rpc_calendar(self, resource=None, done=False, details=None):
        return self._reply(self.do_calendar(resource, done))

    def _rpc_next_free(self, resource, length, after=None, after_in=None, tree=False,
                       details=None):
        return self._reply(self.do_next_free(resource, length, after, after_in, tree))

    # -- the calls ------------------------------------------------------------------

    def _refused(self, call, resource, owner, client, e, caller=None):
        self.leases._audit_refusal(call, resource, owner, client, e, caller)
        return False, f'Refused: {e}', {'error': str(e)}

    def do_book(self, resource, owner, start=None, end=None, start_in=None, end_in=None,
                tree=False, note='', client='', caller=None, claimable=True):
        """Book: ``(ok, message, data)``; data is the booking's public
        dict, plus its secret ``claim`` key when ``claimable`` (the
        procedure's reply only). Unknown resources are refused with a "did
        you mean"."""
        now = self.clock()
        try:
            paths = [resource] if isinstance(resource, str) else resource
            if isinstance(paths, (list, tuple)):
                for path in paths:
                    self.leases.resources.check(path)
            start = _time('start', start, start_in, now)
            end = _time('end', end, end_in, now)
            b, claim = self.state.book(resource, owner, start, end, now, tree=tree, note=note,
                                       client=client, caller=caller, claimable=claimable)
        except LeaseError as e:
            return self._refused('book', resource, owner, client, e, caller)
        data = dict(b.public(), starts_in=round(b.start - now, 3))
        msg = f'Booked {window_text(b, utc_day)}.'
        if claim is not None:
            data['claim'] = claim
            msg += ' Keep its claim key: it is shown once and is the lease_id of the lease.'
        else:
            msg += (' Booked without a claim key (task results are public): its lease ends '
                    'at its end or by force_release or a privileged unbook.')
        return True, msg, data

    def do_unbook(self, booking, claim=None, by=None, reason='', client='', caller=None):
        """Cancel a booking (with its claim key, or ``by`` a privileged
        caller): ``(ok, message, data)``."""
        try:
            b = self.state.unbook(booking, self.clock(), claim=claim, by=by, reason=reason)
        except LeaseError as e:
            return self._refused('unbook', str(booking), by or '', client, e, caller)
        return True, f'Cancelled booking {b.booking_id} ({window_text(b, utc_day)}).', \
            {'booking': b.public()}

    def do_claim(self, booking, claim, wait=0.0):
        """The booking's lease for its booker: a Deferred firing ``(ok,
        message, data)``. Held: the grant (``resource``, ``token``,
        ``tokens``, ``expires``, ``expires_in``: seconds left on the
        registry's clock, ``request_id``, ``booking``); not started yet:
        after at most ``wait`` seconds (bounded by MAX_CLAIM_WAIT),
        ``data['state']`` ``booked`` with ``starts_in``, or the grant if it
        started meanwhile; over: refused, saying how it ended."""
        try:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) \
                    or not 0 <= wait <= MAX_CLAIM_WAIT:
                raise LeaseError(f'wait must be a number of seconds in [0, '
                                 f'{MAX_CLAIM_WAIT:g}], not {wait!r:.40}')
            b = self.state.check_claim(booking, claim)
        except LeaseError as e:
            return defer.succeed(self._refused('claim', str(booking), '', '', e))
        if b.state != 'booked' or wait == 0:
            return defer.succeed(self._claim_answer(b))
        d = defer.Deferred(canceller=lambda d: self._forget(b.booking_id, d))
        self._claims.setdefault(b.booking_id, []).append(d)
        timer = self.reactor.callLater(wait, lambda: d.called or d.callback(None))

        def done(result):
            if timer.active():
                timer.cancel()
            self._forget(b.booking_id, d)       # (fired by its timer: not kept)
            return result
        d.addBoth(done)
        return d.addCallback(lambda _: self._claim_answer(self.state.booking(b.booking_id)))

    def _forget(self, bid, d):
        waiting = self._claims.get(bid, [])
        if d in waiting:
            waiting.remove(d)
        if not waiting:
            self._claims.pop(bid, None)

    def _claim_answer(self, b):
        now = self.clock()
        if b is None:
            e = LeaseError('that booking is over and forgotten')
            return False, f'Refused: {e}', {'error': str(e)}
        public = b.public()
        if b.state == 'booked':
            left = round(b.start - now, 3)
            return True, (f'Booking {b.booking_id} starts at {utc_day(b.start)}'
                          + (f' (in {left:g} s): claim again then.' if left > 0 else
                             ': its resources are being freed for it.')), \
                {'state': 'booked', 'starts_in': left, 'booking': public}
        if b.state == 'done':
            e = LeaseError(f'booking {b.booking_id} is over ({b.outcome} at '
                           f'{utc_day(b.ended_at)})')
            return False, f'Refused: {e}', {'error': str(e), 'booking': public}
        grants = [g for g in self.state.holders() if g.request_id == b.request_id]
        first = grants[0]
        data = {'state': 'held', 'resource': first.resource if len(grants) == 1 else
                [g.resource for g in grants], 'owner': first.owner, 'token': first.token,
                'tokens': {g.resource: g.token for g in grants}, 'expires': first.expires,
                'expires_in': round(max(0.0, first.expires - now), 3),
                'request_id': b.request_id, 'booking': public,
                'granted_at': first.granted_at,
                'late': round(first.granted_at - b.start, 6)}
        if len(grants) > 1:
            data['grants'] = [{'resource': g.resource, 'token': g.token} for g in grants]
        # The access director's credential of the grant, handed over once
        # (the claim's reply goes to the caller alone).
        privs = self.leases.grant_privs(b.request_id) if self.leases.grant_privs else None
        if privs is not None:
            data['privs'] = privs
        return True, (f"Booking {b.booking_id} holds {', '.join(g.resource for g in grants)} "
                      f"(token {first.token}) until {utc_day(first.expires)}."), data

    def calendar_rows(self, resource=None, done=False):
        """The bookings (public dicts, by start, at most CALENDAR_ROWS) with
        ``starts_in`` / ``ends_in`` on the registry's clock."""
        now = self.clock()
        return [dict(b.public(), starts_in=round(b.start - now, 3),
                     ends_in=round(b.end - now, 3))
                for b in self.state.bookings(resource, done)[:CALENDAR_ROWS]]

    def do_calendar(self, resource=None, done=False):
        try:
            if not isinstance(done, bool):
                raise LeaseError(f'done must be true or false, not {done!r:.40}')
            rows = self.calendar_rows(resource, done)
            total = len(self.state.bookings(resource, done))
        except LeaseError as e:
            return False, f'Refused: {e}', {'error': str(e)}
        return True, f'{total} booking(s)' + (f' on {resource}' if resource else '') + '.', \
            {'bookings': rows, 'total': total, 'now': self.clock()}

    def do_next_free(self, resource, length, after=None, after_in=None, tree=False):
        now = self.clock()
        try:
            if after is None and after_in is None:
                after_in = 0.0
            after = max(now, _time('after', after, after_in, now))
            for path in [resource] if isinstance(resource, str) else \
                    resource if isinstance(resource, (list, tuple)) else ():
                self.leases.resources.check(path)
            t = self.state.next_free(resource, length, after, tree)
        except LeaseError as e:
            return False, f'Refused: {e}', {'error': str(e)}
        names = resource if isinstance(resource, str) else ', '.join(resource)
        if t is None:
            return True, f'No free {length:g} s window on {names} within 30 days.', \
                {'start': None, 'end': None}
        return True, f'{names} is free for {length:g} s from {utc_day(t)}.', \
            {'start': t, 'end': t + length, 'starts_in': round(t - now, 3)}

    # -- tasks ----------------------------------------------------------------------

    @ocs_agent.param('resource')
    @ocs_agent.param('owner', type=str)
    @ocs_agent.param('start', default=None)
    @ocs_agent.param('end', default=None)
    @ocs_agent.param('start_in', default=None)
    @ocs_agent.param('end_in', default=None)
    @ocs_agent.param('tree', default=False, type=bool)
    @ocs_agent.param('note', default='', type=str)
    @ocs_agent.param('client', default='', type=str)
    def book(self, session, params):
        """book(resource, owner, start=None, end=None, start_in=None, end_in=None, tree=False, note='', client='')

        **Task** - Book resource(s) for a future window, without a claim key.

        Parameters:
            resource (str or list): path(s), all or nothing (declared ones,
                when the site declares resources).
            owner (str): who the booking is for.
            start (float): the window's start, UTC seconds (the registry's
                clock); or ``start_in``: seconds from the registry's now.
            end (float): its end (or ``end_in``).
            tree (bool): also everything below the path(s).
            note (str): why (shown on the calendar, audited).
            client (str): your identity (declared), audited.

        Notes:
            Refused in one line (nothing stored) when the window overlaps
            another booking on a covered path, ends before it starts,
            starts in the past or more than 30 days ahead, or lasts more
            than a day. Task results are public, so this booking has no
            claim key: at its start it becomes a lease nobody can renew or
            release, ending at its end (a maintenance block). Book through
            the procedure ``<registry>.lease.book`` (``ocs-locks book``,
            ``Reservation.book``) to get the claim key. session.data::

                >>> response.session['data']
                {'booking_id': 7, 'resources': ['satp1/hwp'], 'tree': False,
                 'owner': 'ops', 'start': 1700003600.0, 'end': 1700007200.0,
                 'note': 'HWP maintenance', 'state': 'booked', 'claimable': False,
                 'starts_in': 3600.0, ...}
        """
        from ocs_locking.agents.lock_registry.leases import task_caller
        ok, msg, session.data = self.do_book(
            **params, caller=task_caller(session, params['client'] or params['owner']),
            claimable=False)
        return ok, msg

    @ocs_agent.param('booking', type=int)
    @ocs_agent.param('reason', default='', type=str)
    @ocs_agent.param('client', default='', type=str)
    def unbook(self, session, params):
        """unbook(booking, reason='', client='')

        **Task** (privileged) - Cancel anyone's booking; needs credential
        level 2. A booking whose lease is held loses it (revoked, reason
        ``unbooked: ...``). The booker cancels its own with the procedure
        ``<registry>.lease.unbook`` and its claim key (``ocs-locks unbook``).

        Parameters:
            booking (int): the booking id.
            reason (str): why (audited).
            client (str): your identity (declared), audited.

        Notes:
            session.data holds the booking as it ended::

                >>> response.session['data']
                {'booking': {'booking_id': 7, 'state': 'done', 'outcome': 'cancelled', ...}}
        """
        from ocs_locking.agents.lock_registry.leases import task_caller
        caller = task_caller(session, params['client'])
        by = f"{caller['identity']} (declared, cred_level {caller['cred_level']})"[:128]
        ok, msg, session.data = self.do_unbook(params['booking'], by=by,
                                               reason=params['reason'],
                                               client=params['client'], caller=caller)
        return ok, msg

    @ocs_agent.param('resource', default=None)
    @ocs_agent.param('done', default=False, type=bool)
    def calendar(self, session, params):
        """calendar(resource=None, done=False)

        **Task** - The bookings, by start.

        Parameters:
            resource (str, optional): only bookings on this path, below it,
                or tree bookings above it.
            done (bool): also the finished ones still remembered.

        Notes:
            At most 200 rows (``total`` says how many). ``starts_in`` and
            ``ends_in`` are seconds from the registry's now. Never a claim
            key::

                >>> response.session['data']
                {'bookings': [{'booking_id': 7, 'resources': ['satp1/hwp'], 'owner': 'bob',
                               'start': 1700003600.0, 'end': 1700007200.0, 'state': 'booked',
                               'outcome': '', 'note': 'calibration', 'claimable': True,
                               'starts_in': 3600.0, 'ends_in': 7200.0, ...}],
                 'total': 1, 'now': 1700000000.0}
        """
        ok, msg, session.data = self.do_calendar(params['resource'], params['done'])
        return ok, msg

    @ocs_agent.param('resource')
    @ocs_agent.param('length', type=float)
    @ocs_agent.param('after', default=None)
    @ocs_agent.param('after_in', default=None)
    @ocs_agent.param('tree', default=False, type=bool)
    def next_free(self, session, params):
        """next_free(resource, length, after=None, after_in=None, tree=False)

        **Task** - The next window of ``length`` seconds that no booking
        on the resource(s) overlaps (for schedules).

        Parameters:
            resource (str or list): path(s).
            length (float): seconds, in [1, 86400].
            after (float, optional): not before this instant (UTC seconds);
                or ``after_in``: seconds from now. Default: now.
            tree (bool): as a tree booking of the path(s) would be.

        Notes:
            Current leases do not count (a booking preempts them with a
            warning). ``start`` None: none within 30 days::

                >>> response.session['data']
                {'start': 1700003600.0, 'end': 1700007200.0, 'starts_in': 3600.0}
        """
        ok, msg, session.data = self.do_next_free(params['resource'], params['length'],
                                                  params['after'], params['after_in'],
                                                  params['tree'])
        return ok, msg
