"""How bookings become leases: LeaseState's calendar part (pure, mixed in).

:class:`BookedLeases` is mixed into :class:`~.state.LeaseState`; it keeps
the bookings (:mod:`ocs_locking.leases.bookings`) beside the grants and
changes them inside the same operations (``_op``): one batch, one store transaction
(``apply(bookings=...)``), rolled back together, so a standby that
replicates what ``apply`` writes replicates the calendar too.

Contract (all times on the registry's clock, passed in):

* **Booking** (:meth:`book`) is refused at once, in one line, when the
  window is bad (:func:`~ocs_locking.leases.bookings.check_window`), overlaps a live booking
  on a conflicting path (whoever's), or the calendar is full; nothing
  changes then.
* **Warning ahead.** From ``start - warn_ahead`` (or at once, for a
  booking made or a lease granted later) every grant in a booking's way
  that would still hold at its start is *preempted* with its deadline at
  the start (its holder's ``on_preempt`` fires; audited ``preempt``).
* **Activation.** At ``start`` (the first operation or timer call at or
  after it: the registry arms a timer there) every grant still in the way
  is revoked (``force_release``, reason naming the booking) and the
  booking's request is queued *first*, ahead of every waiter, so it is
  granted at once. The grant ends at the booking's ``end`` (not a lease
  length), carries a fresh, larger token, and its ``lease_id`` is the
  booking's claim key (only the hash is kept). A booking whose whole
  window passed while nobody called (the registry was down) is ``missed``.
* **End.** ``warn_ahead`` before the end the holder gets a preempt notice
  (deadline: the end); at the end the grant expires (audited ``expire``
  with the booking id). A renewal (extension) of a booked grant never
  shortens it and is capped at the start of the next booking on a
  conflicting path; with one starting at the end, it is refused.
* **Cancel** (:meth:`unbook`): with the claim key, or privileged; a held
  booking's grant is released (by the booker) or revoked (privileged).
"""
import time

from .bookings import (KEEP_DONE, MAX_AHEAD, MAX_BOOKINGS, MAX_BOOKINGS_PER_OWNER,
                       MAX_LENGTH, WARN_AHEAD, Booking, check_window, clash, following,
                       next_free, window_text)
from .keys import check_lease_id, key_matches, lease_key, new_lease_id
from .paths import (bad_value, check_positive_int, check_resource, check_resources,
                    check_text, check_time, overlap)
from ..errors import LeaseError

__all__ = ['BookedLeases', 'utc_day', 'BOOKED_BY']

#: The ``by`` of a booking's preemptions and revocations: ``booking 7``.
BOOKED_BY = 'booking {}'


def utc_day(t):
    """``2025-03-01 02:00:00 UTC``: an instant of the registry's clock, for messages."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not -1e12 < t < 1e12:
        return 'an unknown time'
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t))


class BookedLeases:
    """The calendar part of LeaseState (see the module docstring). Uses
    LeaseState's internals: ``_op``, ``_set``, ``_batch``, ``_grants``,
    ``_waiting``, ``_preempts``, ``_end``, ``_conflicting``, ``_audit``."""

    def _init_bookings(self, loaded, max_ahead=MAX_AHEAD, max_length=MAX_LENGTH,
                       warn_ahead=WARN_AHEAD, max_bookings=MAX_BOOKINGS,
                       max_bookings_per_owner=MAX_BOOKINGS_PER_OWNER):
        self.max_ahead, self.max_length, self.warn_ahead = max_ahead, max_length, warn_ahead
        self.max_bookings, self.max_bookings_per_owner = max_bookings, max_bookings_per_owner
        self._bookings = {}         # booking id -> Booking (live, and the newest done)
        self._booked_rid = {}       # request id -> booking id, while queued or held
        self._soon = {}             # {'t': earliest booking event} (cache; journaled)
        held = {g.request_id for g in self._grants.values()}
        for row in loaded.get('bookings', ()):
            b = Booking.from_stored(row)
            if b.state == 'held' and b.request_id not in held:
                b = b.but(state='done', outcome='ended')    # ended while not written
            self._bookings[b.booking_id] = b
            if b.state == 'held':
                self._booked_rid[b.request_id] = b.booking_id
        self._last_bid = max([loaded.get('last_booking_id', 0)] + list(self._bookings))

    # -- calls --------------------------------------------------------------------

    def book(self, resources, owner, start, end, now, tree=False, note='', client='',
             caller=None, claimable=True):
        """Book ``resources`` for ``[start, end)``. Returns ``(Booking,
        claim_key)``: the key (32 hex digits, ``claimable`` only, else None)
        is the lease_id of the lease the booking becomes; it is returned
        here once and never kept (only its hash). Raises LeaseError (one
        line, nothing changed) for a bad argument, an overlap, a full
        calendar. A start already reached (within START_SLACK) starts now."""
        if not isinstance(tree, bool):
            raise bad_value('tree', 'True or False', tree)
        names = check_resources(resources, tree, self.max_resources)
        owner = check_text('owner', owner, 128, required=True)
        note, client = check_text('note', note, 500), check_text('client', client, 200)
        now = check_time(now)
        start, end = check_window(start, end, now, self.max_ahead, self.max_length, utc_day)
        live = [b for b in self._bookings.values() if b.live]
        hit = clash(live, names, tree, start, end)
        if hit is not None:
            raise LeaseError(f'overlaps {window_text(hit, utc_day)}'
                             + (f': {hit.note!r:.60}' if hit.note else ''))
        mine = sum(b.owner == owner for b in live)
        if mine >= self.max_bookings_per_owner:
            raise LeaseError(f'owner {owner!r:.60} already has {mine} bookings '
                             f'(max_bookings_per_owner={self.max_bookings_per_owner})')
        if len(live) >= self.max_bookings:
            raise LeaseError(f'the calendar is full ({len(live)} bookings, '
                             f'max_bookings={self.max_bookings})')
        claim = new_lease_id() if claimable else None
        with self._op(now, caller) as due:
            self._last_bid += 1
            b = Booking(self._last_bid, names, tree, owner, start, end, note, client, now,
                        caller=caller, key=lease_key(claim) if claim else None)
            self._put_booking(b)
            self._audit_booking('book', b, now, start=start, end=end)
            self._batch.notices.append(('book', b))
            due['granted'] += self._booking_pass(now)
        return self._bookings[b.booking_id], claim

    def unbook(self, booking_id, now, claim=None, by=None, reason=''):
        """Cancel a live booking: with its ``claim`` key (the booker), or
        with ``by`` (privileged: the caller checks who may). A held
        booking's lease ends (released by the booker, revoked by ``by``).
        Returns the Booking as it ended; LeaseError (nothing changed) for
        an unknown or finished booking or a wrong key."""
        check_positive_int('booking', booking_id)
        reason = check_text('reason', reason, 500)
        now = check_time(now)
        b = self._claimed(booking_id, claim, by)
        with self._op(now) as due:
            b = self._bookings[b.booking_id]
            if not b.live:
                raise LeaseError(f'booking {booking_id} is already over ({b.outcome})')
            rid = b.request_id
            if b.state == 'held':
                if by is None:
                    self._end(rid, 'release', now, client=b.client)
                else:
                    self._end(rid, 'force_release', now, by=by,
                              reason=f'unbooked: {reason or "no reason given"}')
            elif rid is not None and rid in self._booked_rid:
                req = next(w for w in self._waiting if w.request_id == rid)
                self._waiting.remove(req)
                self._set(self._booked_rid, rid, _MISSING())
            b = self._finish(self._bookings[booking_id], 'cancelled', now)
            self._audit_booking('unbook', b, now, by=by or b.owner,
                                **({'reason': reason} if reason else {}))
            due['granted'] += self._serve(now)
            return b

    def booking(self, booking_id):
        """The Booking ``booking_id`` (live or recently done), or None."""
        check_positive_int('booking', booking_id)
        return self._bookings.get(booking_id)

    def check_claim(self, booking_id, claim):
        """The Booking if ``claim`` is its key, else LeaseError (one line,
        never the key)."""
        return self._claimed(booking_id, claim, None)

    def bookings(self, resource=None, done=False):
        """Bookings by start: the live ones (and with ``done`` the finished
        ones remembered); with ``resource``, those on it, below it, or a
        tree booking above it."""
        if resource is not None:
            check_resource(resource)
        out = [b for b in self._bookings.values() if (done or b.live) and (
            resource is None or overlap((resource,), True, b.resources, b.tree))]
        return sorted(out, key=lambda b: (b.start, b.booking_id))

    def next_free(self, resources, length, after, tree=False):
        """The earliest start >= ``after`` of a free window of ``length``
        seconds on ``resources`` (see :func:`ocs_locking.leases.bookings.next_free`), or None."""
        if not isinstance(tree, bool):
            raise bad_value('tree', 'True or False', tree)
        names = check_resources(resources, tree, self.max_resources)
        return next_free([b for b in self._bookings.values() if b.live], names, tree,
                         length, after, self.max_ahead)

    def next_booking_event(self, now):
        """The earliest instant after ``now`` at which a booking needs the
        state called (a warning, a start, an end warning, an end), or None:
        the registry arms a timer there."""
        later = [t for t in self._booking_times() if t > now]
        return min(later) if later else None

    # -- inside operations (LeaseState's _expire, _grant, _end, renew) ----------------

    def _bookings_due(self, now):
        """Starts of bookings due by ``now`` and not queued yet."""
        soon = self._soonest()
        if soon is None or soon > now:
            return []
        return [b.start for b in self._bookings.values()
                if b.state == 'booked' and b.start <= now and b.request_id not in
                self._booked_rid]

    def _activate_bookings(self, t, now):
        """Queue, first in line, every booking started by ``t``; revoke
        what is still in their way; a window already over is missed."""
        due = sorted((b for b in self._bookings.values()
                      if b.state == 'booked' and b.start <= t
                      and b.request_id not in self._booked_rid),
                     key=lambda b: (b.start, b.booking_id), reverse=True)
        for b in due:
            if now >= b.end:
                b = self._finish(b, 'missed', now)
                self._audit_booking('missed', b, now)
                continue
            for g in self._conflicting(b.resources, b.tree):
                if g.request_id in self._grants_of():
                    self._end(g.request_id, 'force_release', now,
                              by=BOOKED_BY.format(b.booking_id),
                              reason=f'booked: {window_text(b, utc_day)}'[:500])
            self._last_rid += 1
            req = self._booking_request(b, now)
            self._waiting.insert(0, req)
            self._set(self._booked_rid, req.request_id, b.booking_id)
            self._put_booking(b.but(request_id=req.request_id))

    def _grants_of(self):
        return {g.request_id for g in self._grants.values()}

    def _warn_bookings(self, now):
        """Preempt (deadline: the start) what would hold into a booking
        within warn_ahead of its start; warn a booked lease's holder
        warn_ahead before its end."""
        soon = self._soonest()
        if soon is None or soon > now:
            return
        for b in sorted(self._bookings.values(), key=lambda b: b.start):
            if b.state == 'booked' and b.start - self.warn_ahead <= now < b.start:
                for g in self._conflicting(b.resources, b.tree):
                    p = self._preempts.get(g.request_id)
                    if g.expires <= b.start or (p is not None and p.deadline <= b.start):
                        continue
                    self._ask(g, b.start, now, BOOKED_BY.format(b.booking_id),
                              f'booked: {window_text(b, utc_day)}'
                              + (f': {b.note}' if b.note else ''))
            elif b.state == 'held':
                g = self._grants.get(b.resources[0])
                if g is None or g.request_id != b.request_id or g.expires != b.end \
                        or g.expires - self.warn_ahead > now or g.request_id in self._preempts:
                    continue
                nxt = following([x for x in self._bookings.values()], b.resources, b.tree,
                                b.end, exclude=b.booking_id)
                after = 'nothing is booked after: renew to extend' if nxt is None or \
                    nxt.start > b.end else f'{nxt.owner!r:.40} booked it from then'
                self._ask(g, b.end, now, BOOKED_BY.format(b.booking_id),
                          f'booking {b.booking_id} ends at {utc_day(b.end)} ({after})')

    def _ask(self, g, deadline, now, by, reason):
        from .state import Preemption
        p = Preemption(g.request_id, g.resource, g.owner, g.token, by, reason[:500],
                       max(0.0, deadline - now), now, deadline)
        self._set(self._preempts, g.request_id, p)
        self._audit('preempt', now, g, owner=by, client='', holder=g.owner, reason=p.reason,
                    grace=p.grace, deadline=deadline, requester=None)
        self._batch.notices.append(('preempt', p))

    def _booking_pass(self, now):
        """Right after a booking changed inside an operation: its start may
        be due now (activate and serve) and holders may need warning."""
        granted = []
        if self._bookings_due(now):
            self._activate_bookings(now, now)
            granted = self._serve(now)
        self._warn_bookings(now)
        return granted

    def _booked_grant(self, req, now):
        """For LeaseState._grant: ``(booking, key, expires)`` of a booking's
        request (its grant ends at the booking's end and its key is the
        booking's), else None."""
        bid = self._booked_rid.get(req.request_id)
        if bid is None:
            return None
        b = self._bookings[bid]
        self._put_booking(b.but(state='held'))
        for r in req.resources:             # a booked grant is never folded
            if r in self._runs:
                self._set(self._runs, r, _MISSING())
        return b, b.key, b.end

    def _booked_end(self, rid, action, now):
        """For LeaseState._end and _withdraw: the booking of request
        ``rid`` is over (``action``: how); returns its id, or None."""
        bid = self._booked_rid.get(rid)
        if bid is None:
            return None
        self._set(self._booked_rid, rid, _MISSING())
        b = self._bookings[bid]
        if b.live:
            outcome = 'missed' if action == 'timeout' else action
            self._finish(b, outcome, now)
            if outcome == 'missed':
                self._audit_booking('missed', b, now)
        return bid

    def _booked_renewal(self, g, lease, now):
        """For LeaseState.renew: the new expiry of booked grant ``g`` (never
        earlier than now; capped at the next booking's start), or None for
        a grant that is not a booking's. LeaseError when it cannot extend."""
        bid = self._booked_rid.get(g.request_id)
        if bid is None:
            return None
        b = self._bookings[bid]
        grants = [x for x in self._grants.values() if x.request_id == g.request_id]
        nxt = following(self._bookings.values(), tuple(x.resource for x in grants), g.tree,
                        g.expires, exclude=bid)
        want = now + lease
        if nxt is not None and nxt.start < want:
            if nxt.start <= g.expires:
                raise LeaseError(f'cannot extend {", ".join(b.resources)} past '
                                 f'{utc_day(g.expires)}: {window_text(nxt, utc_day)} '
                                 f'starts then')
            want = nxt.start
        self._set(self._soon, 't', _MISSING())      # its end may move
        p = self._preempts.get(g.request_id)
        if p is not None and p.by == BOOKED_BY.format(bid) and want > g.expires:
            self._set(self._preempts, g.request_id, _MISSING())     # the end warning
        return max(g.expires, want)

    # -- internals ----------------------------------------------------------------

    def _booking_request(self, b, now):
        from .state import Request
        return Request(self._last_rid, b.resources, b.owner, max(0.5, b.end - now), b.tree,
                       b.note, b.client, now, b.end, b.caller)

    def _claimed(self, booking_id, claim, by):
        check_positive_int('booking', booking_id)
        b = self._bookings.get(booking_id)
        if b is None:
            raise LeaseError(f'no booking {booking_id} (unknown, or over long ago)')
        if by is not None:
            check_text('by', by, 128, required=True)
            return b
        try:
            check_lease_id(claim)
        except LeaseError:
            raise LeaseError(f'booking {booking_id} needs its claim key (32 hex digits, '
                             f'given once by book)') from None
        if not key_matches(b.key, claim):
            raise LeaseError(f'that claim key is not the key of booking {booking_id}'
                             + ('' if b.key else ' (it was booked without one: only a '
                                                 'privileged unbook cancels it)'))
        return b

    def _finish(self, b, outcome, now):
        b = b.but(state='done', outcome=outcome, ended_at=now)
        self._put_booking(b)
        self._batch.notices.append(('booking', b))
        done = sorted((x for x in self._bookings.values() if not x.live),
                      key=lambda x: (x.ended_at or 0, x.booking_id))
        for old in done[:max(0, len(done) - KEEP_DONE)]:
            self._set(self._bookings, old.booking_id, _MISSING())
            self._batch.bookings[old.booking_id] = None
        return b

    def _put_booking(self, b):
        self._set(self._bookings, b.booking_id, b)
        self._batch.bookings[b.booking_id] = b.stored()
        self._set(self._soon, 't', _MISSING())
        if b.state == 'held':
            self._batch.notices.append(('booking', b))

    def _audit_booking(self, action, b, now, **detail):
        for r in b.resources:
            self._audit(action, now, None, resource=r, owner=b.owner, client=b.client,
                        booking=b.booking_id, tree=b.tree, note=b.note, **detail)

    def _booking_times(self):
        for b in self._bookings.values():
            if b.state == 'booked':
                yield from (b.start - self.warn_ahead, b.start, b.end)
            elif b.state == 'held':
                g = self._grants.get(b.resources[0])
                end = g.expires if g is not None and g.request_id == b.request_id else b.end
                if end == b.end:
                    yield b.end - self.warn_ahead
                yield end               # (extended: the grant's own expiry)

    def _soonest(self):
        """The earliest instant a live booking needs attention (cached; the
        cache is dropped, journaled, whenever a booking changes)."""
        if 't' not in self._soon:
            self._soon['t'] = min(self._booking_times(), default=None)
        return self._soon['t']


def _MISSING():
    from .state import _MISSING as missing
    return missing
