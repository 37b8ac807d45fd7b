"""Site-wide leases: a pure state machine (no Twisted, no I/O, no threads).

Resources are ``/``-separated paths (``satp1/hwp``). A *request* names one or
several of them and gets all of them or none; each grant carries a fencing
token and a lease that ends unless renewed. Time is always passed in (``now``,
seconds); the LockRegistryAgent calls :meth:`LeaseState.expire` on a timer.
Persistence and the audit trail go through a store (see ``store.py``).
"""
import contextlib
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Tuple

from .keys import NotHolder, check_lease_id, key_matches, lease_key, new_lease_id
from .paths import (MAX_LEASE, ancestors, bad_value, check_lease, check_positive_int,
                    check_resource, check_resources, check_seconds, check_text, check_time,
                    conflicts, overlap, when)
from ..errors import LeaseError, LeaseStoreError
from .waitfor import closing_cycle, cycle_text
from .booking_state import BookedLeases

__all__ = ['LeaseState', 'LeaseError', 'Grant', 'Outcome', 'Request', 'Preemption',
           'conflicts', 'check_resource', 'ACTIONS', 'MAX_GRACE']

log = logging.getLogger(__name__)

MAX_OWNER, MAX_CLIENT, MAX_NOTE, MAX_PARTY = 128, 200, 500, 200
KEEP_DONE = 1000        # finished requests remembered for poll()
#: Default limits on waiting requests: per owner, per caller (the ``client``
#: identity; requests with no client are counted by owner only) and in all.
#: The first two keep one flooding owner or client from filling the queue
#: for everyone; the global one is the last resort.
MAX_WAITING_PER_OWNER, MAX_WAITING_PER_CLIENT, MAX_WAITING = 64, 64, 1000
#: Audit actions, also the names listeners are called with.
ACTIONS = ('grant', 'queue', 'renew', 'release', 'force_release', 'expire', 'timeout',
           'cancel', 'preempt', 'notice', 'book', 'unbook', 'missed')
#: Every action an audit row may carry: ACTIONS, ``regrant`` (folded
#: re-grants to one holder, see LeaseState) and ``refuse`` (a refused call,
#: ``ok`` false, written by the registry). ``preempt``: a holder was asked to
#: give way; ``notice``: the ask reached it (its lease watch was answered);
#: ``takeover``: a standby registry took the registry's place (docs/standby.rst).
AUDIT_ACTIONS = ACTIONS + ('regrant', 'refuse', 'takeover')
#: The longest grace a preemption may give its holder, seconds.
MAX_GRACE = 3600.0
#: A preempting requester's request waits this long past the grace's end
#: (it is served at the revocation, at the latest, being first in line).
PREEMPT_MARGIN = 10.0
#: A holder that takes a resource again within this many seconds of releasing
#: it, with nobody else in between, has its re-grants folded into one row.
FOLD_WINDOW = 10.0
#: At most one ``renew`` row per request per this many seconds.
RENEW_AUDIT_EVERY = 60.0
_ENDED_AS = {'release': 'released', 'force_release': 'revoked', 'expire': 'expired'}


def _ended_why(resource, action, at, by, reason):
    """Why a token of ``resource`` no longer holds it: its grant ended."""
    at = f'{when(at)} (registry time)'
    why = {'release': f'was released at {at}', 'expire': f'expired at {at}',
           'force_release': f'was revoked at {at} by {by!r:.100}: {reason!r:.80}'}
    return f'lease on {resource!r} {why[action]}'


@dataclass(frozen=True)
class Grant:
    """One resource held under a lease. ``expires`` and ``granted_at`` are
    times in the caller's clock; all grants of one request share ``request_id``
    and ``expires`` (they are renewed and released together)."""
    resource: str
    owner: str
    token: int
    expires: float
    tree: bool
    note: str
    client: str
    granted_at: float
    request_id: int

    def as_dict(self):
        return dict(self.__dict__)      # exactly the fields, in order (no slots)


_GRANT_FIELDS = tuple(Grant.__dataclass_fields__)


@dataclass(frozen=True)
class Request:
    """A request waiting for its resources (sorted); it gives up at ``deadline``."""
    request_id: int
    resources: Tuple[str, ...]
    owner: str
    lease: float
    tree: bool
    note: str
    client: str
    queued_at: float
    deadline: float
    #: who asked (see LeaseState's contract, *Who*), kept in its audit rows
    caller: Optional[dict] = None

    def as_dict(self):
        return dict(asdict(self), resources=list(self.resources))


@dataclass(frozen=True)
class Outcome:
    """What became of a request.

    ``status`` is ``granted`` (``grants`` holds one Grant per resource),
    ``queued`` (``queue_position``: 1 + the earlier waiters it conflicts with),
    ``busy`` (refused at once; ``queue_position`` is the place it would have
    taken), or, from :meth:`LeaseState.poll`, ``released``, ``expired``,
    ``revoked`` (``grants`` as they ended), ``timed_out``, ``cancelled``,
    ``unknown``. ``holders`` are the grants it conflicts with (queued, busy).
    """
    status: str
    request_id: Optional[int] = None
    grants: Tuple[Grant, ...] = ()
    holders: Tuple[Grant, ...] = ()
    queue_position: Optional[int] = None
    #: granted: seconds the request waited in the queue before its grant
    #: (a duration on the caller's clock; 0.0 when granted at once).
    queued_for: float = 0.0
    #: granted: the secret that renews and releases the grant, for its
    #: requester only (never in as_dict(), a repr, a table or the store).
    lease_id: Optional[str] = field(default=None, repr=False, compare=False)

    def as_dict(self):
        return {'status': self.status, 'request_id': self.request_id,
                'grants': [g.as_dict() for g in self.grants],
                'holders': [g.as_dict() for g in self.holders],
                'queue_position': self.queue_position, 'queued_for': self.queued_for}


@dataclass(frozen=True)
class Preemption:
    """A holder asked to give way: its request ``holder_rid`` (``holder``,
    ``token`` on ``resource``) is revoked at ``deadline`` (the caller's
    clock: ``asked_at + grace``) unless released first. ``requester_rid``:
    the request queued first to take it (None: nobody in particular).
    ``noticed``: the ask reached the holder."""
    holder_rid: int
    resource: str
    holder: str
    token: int
    by: str
    reason: str
    grace: float
    asked_at: float
    deadline: float
    client: str = ''
    requester_rid: Optional[int] = None
    noticed: bool = False

    def as_dict(self):
        return dict(asdict(self))


class _Claims:
    """The union of several claims: does a claim conflict with any of them?"""

    def __init__(self):
        self.paths, self.tree_paths, self.inner = set(), set(), set()

    def add(self, paths, tree):
        self.paths.update(paths)
        if tree:
            self.tree_paths.update(paths)
        for p in paths:
            self.inner.update(ancestors(p))     # every path strictly above a claim

    def hits(self, paths, tree):
        return any(p in self.paths or (tree and p in self.inner)
                   or any(a in self.tree_paths for a in ancestors(p)) for p in paths)


class _NoStore:
    """LeaseState(store=None): nothing persists, no audit trail."""

    def load(self):
        return {'grants': [], 'counters': {}, 'last_request_id': 0}

    def apply(self, **changes):
        pass


class _Batch:
    """What one operation changed: written to the store in one transaction."""

    def __init__(self):
        self.counters, self.grants, self.audit, self.notices = {}, {}, [], []
        self.folds = []         # updates of the newest ``regrant`` row of a resource
        self.bookings = {}      # booking id -> stored booking dict, or None (deleted)
        self.caller = None      # who made this call (its audit rows' ``caller``)
        self.undo = []          # (dict, key, old value or _MISSING), newest last


_MISSING = object()
#: Copied whole before each operation (small); the big dicts are journaled.
_STATE = ('_grants', '_waiting', '_last_rid', '_last_bid')
# _counters, _done, _ended, _runs and _renewed grow with use: changed through
# _set, which journals the old value in the batch's undo list.


class LeaseState(BookedLeases):
    """Leased, fenced, tree-scoped locks on site-wide resources.

    Contract:

    * **All or nothing.** A request for several resources holds all of them
      or none; they are taken in one canonical (sorted) order.
    * **Conflicts** follow :func:`conflicts`: a tree grant on ``satp1``
      excludes ``satp1`` and every ``satp1/...``; no two current grants ever
      conflict, whoever the owners are (leases are not re-entrant).
    * **Fair.** Waiting requests are served strictly first-come first-served
      among those that conflict: a request is granted only when no grant and
      no *earlier* waiting request conflicts with it, so a multi-resource
      request is never starved by later small ones. A request that cannot be
      granted now is refused (``timeout=0``: ``busy``) or waits until
      ``now + timeout`` (``queued``); :meth:`poll` tells how it ended.
    * **Room in the queue** is shared: at most ``max_waiting_per_owner``
      requests of one owner and ``max_waiting_per_client`` of one client
      wait at once (default 64 each), ``max_waiting`` in all (default 1000;
      its refusal names the owners filling it). A request over a limit is
      refused (LeaseError) and changes nothing; one that can be granted at
      once is never refused for a full queue.
    * **Withdrawn** requests (:meth:`cancel`: the caller is gone) and timed
      out ones are never granted afterwards.
    * **Leases** end at ``expires`` (``now >= expires``) unless renewed; a
      request's grants are renewed and released together, through any one of
      its resources and its token. Only the token's grant may be renewed or
      released; :meth:`force_release` is the privileged way round it.
    * **Capabilities.** Each granted request gets a secret ``lease_id``
      (:mod:`.keys`), returned once, in its Outcome (``lease_id``, left
      out of ``as_dict``), to the requester; only its SHA-256 is kept
      (memory, store). :meth:`renew` and :meth:`release` need it: a
      token alone, or another request's lease id, is refused. A grant
      loaded without a key (granted before lease ids) can be neither
      renewed nor released: it runs to its expiry (or a force_release).
    * **Who.** Calls take ``caller`` (a JSON-ready dict saying who made
      the call, e.g. ``{'identity': 'sim-device-1', 'verified': True,
      'via': 'wamp'}``); it goes into the ``caller`` of the audit rows the
      call writes (a grant's: its request's caller; the timer's: None).
    * **Tokens** strictly increase per resource, forever (counters persist),
      and along a path: a grant's token exceeds every token ever issued on a
      path it covers or that covers it, so a device sees growing tokens from
      whoever holds it, directly or through a tree grant.
    * **Time** is passed in. Every method taking ``now`` first applies what is
      due by then (:meth:`expire`), in time order: expiries, the waiters they
      let in, the waiters whose deadline passed. Grants start at ``now``.
    * **Misuse** raises :class:`LeaseError` and changes nothing at all: every
      argument is checked first, and a refused call rolls back even the
      expiries it applied. The same holds when the store fails to write.
    * **Observable.** Each change is one audit row per resource in the store
      (who, what, resource, token, when, why, client), and listeners added
      with :meth:`add_listener` are called after the write with
      ``(action, item)``: ``grant``/``queue``/``timeout``/``cancel`` with an
      Outcome; ``renew``/``release``/``force_release``/``expire`` with a Grant.
    * **Persistence.** With a store, grants, token counters and the last
      request id are loaded at start, so a restart loses no grant and reuses
      no token or id; waiting requests and finished outcomes are not kept
      (their callers' sessions ended with the registry: they ask again).
    * **Bookings.** Future windows booked on resources (:meth:`book`)
      become leases at their start and end at their end: see
      :mod:`.booking_state`. They persist like grants.
    * **Threads.** Not thread-safe: one thread (the reactor) calls it.
    """

    def __init__(self, store=None, max_lease=MAX_LEASE, max_timeout=600.0, max_resources=16,
                 max_waiting=MAX_WAITING, fold_window=FOLD_WINDOW,
                 renew_audit_every=RENEW_AUDIT_EVERY,
                 max_waiting_per_owner=MAX_WAITING_PER_OWNER,
                 max_waiting_per_client=MAX_WAITING_PER_CLIENT, bookings=None):
        self.max_lease = check_lease(max_lease, name='max_lease')
        self.fold_window = check_seconds('fold_window', fold_window, 3600, zero_ok=True)
        self.renew_audit_every = check_seconds('renew_audit_every', renew_audit_every, 86400,
                                               zero_ok=True)
        self.max_timeout = check_seconds('max_timeout', max_timeout, 1e9, zero_ok=True)
        self.max_resources = check_positive_int('max_resources', max_resources)
        self.max_waiting = check_positive_int('max_waiting', max_waiting)
        self.max_waiting_per_owner = check_positive_int('max_waiting_per_owner',
                                                        max_waiting_per_owner)
        self.max_waiting_per_client = check_positive_int('max_waiting_per_client',
                                                         max_waiting_per_client)
        self._store = _NoStore() if store is None else store
        self._listeners = []
        self._batch = None
        self._grants = {}     # resource -> Grant; no two conflict
        self._counters = {}   # resource -> last token issued; never decreases
        self._waiting = []    # Requests, oldest first; each blocked by a grant or an earlier one
        self._done = {}       # request id -> final Outcome, the newest KEEP_DONE
        self._ended = {}      # resource -> (token, action, at, by, reason) of the last
        #                       grant that ended (see _ended_why)
        self._runs = {}       # resource -> run: its holder's re-grants being folded
        self._runs_bound = 64   # prune idle runs when there are more than this
        self._renewed = {}    # request id -> time of its last renew audit row
        self._preempts = {}   # holder's request id -> Preemption, while it holds
        self._parties = {}    # request id -> the owner's operation asking (acquire's
        #                       ``party``), while it waits or holds; memory only
        self._keys = {}       # request id -> lease_key(lease_id) of each current grant;
        #                       absent for grants stored before lease ids (never renewable)
        self._booking_limits = dict(bookings or {})
        self._load()

    def _load(self):
        loaded = self._store.load()
        for row in loaded['grants']:
            row = dict(row)
            key = row.pop('lease_key', None)
            self._grants[row['resource']] = g = Grant(**row)
            if key is not None:
                self._keys[g.request_id] = key
        self._counters.update(loaded['counters'])
        self._last_rid = max([loaded['last_request_id']] +
                             [g.request_id for g in self._grants.values()])
        self._init_bookings(loaded, **self._booking_limits)

    def reload(self):
        """Forget everything in memory and load the store again (a standby
        taking over: its store was written behind this state's back).
        Waiting requests, preemptions and finished outcomes are dropped, as
        at a restart. Listeners stay."""
        self._grants, self._counters, self._waiting, self._done = {}, {}, [], {}
        self._ended, self._runs, self._renewed, self._preempts, self._keys = {}, {}, {}, {}, {}
        self._parties = {}
        self._load()

    def add_listener(self, callback):
        """Call ``callback(action, item)`` after each change is stored."""
        self._listeners.append(callback)

    # -- requests -----------------------------------------------------------------

    def acquire(self, resources, owner, lease, now, timeout=0.0, tree=False, note='',
                client='', caller=None, party=None):
        """Ask for ``resources`` (a path or a list) for ``lease`` seconds.

        ``party``: which of the owner's operations asks (``cal (session
        4)``; a SiteLock says so), or None for the owner as a whole. The
        deadlock check tells an owner's parties apart: one operation of an
        agent waiting for a lease does not make another operation of it,
        holding a lease, a waiter. Kept in memory only (after a restart a
        grant's holder is its owner as a whole).

        Returns an Outcome: ``granted`` (with the secret ``lease_id``),
        ``queued`` (poll its ``request_id``; the Outcome of its grant, given
        to listeners, carries the lease id) or ``busy``. Raises LeaseError
        for a bad argument or a full queue.
        """
        if not isinstance(tree, bool):
            raise bad_value('tree', 'True or False', tree)
        names = check_resources(resources, tree, self.max_resources)
        owner = check_text('owner', owner, MAX_OWNER, required=True)
        lease = check_lease(lease, self.max_lease)
        timeout = check_seconds('timeout', timeout, self.max_timeout, zero_ok=True)
        note, client = check_text('note', note, MAX_NOTE), check_text('client', client, MAX_CLIENT)
        party = None if party is None else (check_text('party', party, MAX_PARTY) or None)
        now = check_time(now)
        with self._op(now, caller):
            req = Request(self._last_rid + 1, names, owner, lease, tree, note, client, now,
                          now + timeout, caller)
            holders = self._conflicting(names, tree)
            ahead = sum(overlap(w.resources, w.tree, names, tree) for w in self._waiting)
            if party is not None:
                self._set(self._parties, req.request_id, party)
            if not holders and not ahead:
                self._last_rid += 1
                return self._grant(req, now)
            if timeout == 0:
                self._set(self._parties, req.request_id, _MISSING)
                return Outcome('busy', None, (), holders, ahead + 1)
            self._check_deadlock(req, holders)
            self._check_queue_room(owner, client)
            self._last_rid += 1
            self._waiting.append(req)
            out = Outcome('queued', req.request_id, (), holders, ahead + 1)
            # Not an audit row (the grant's row says how long it queued; a
            # timeout is a row): listeners still hear of it.
            self._batch.notices.append(('queue', out))
            return out

    def renew(self, resource, lease_id, lease, now, client='', caller=None):
        """Extend the lease of the request holding ``resource`` whose secret
        is ``lease_id`` to ``now + lease`` (all its resources); returns the
        new Grant."""
        check_resource(resource)
        check_lease_id(lease_id)
        lease = check_lease(lease, self.max_lease)
        client = check_text('client', client, MAX_CLIENT)
        now = check_time(now)
        with self._op(now, caller):
            held = self._holding(resource, lease_id)
            last = self._renewed.get(held.request_id)
            write = last is None or now - last >= self.renew_audit_every
            if write:
                self._set(self._renewed, held.request_id, now)
            booked = self._booked_renewal(held, lease, now)
            for g in self._request_grants(held.request_id):
                g = self._grants[g.resource] = replace(
                    g, expires=now + lease if booked is None else booked)
                self._batch.grants[g.resource] = g
                if write:       # sampled: one row per request per renew_audit_every
                    self._audit('renew', now, g, client=client, expires=g.expires)
                self._batch.notices.append(('renew', g))
            return self._grants[resource]

    def release(self, resource, lease_id, now, client='', caller=None):
        """Release the request holding ``resource`` whose secret is
        ``lease_id`` (all of its resources); returns the Outcomes granted to
        waiters as a result."""
        check_resource(resource)
        check_lease_id(lease_id)
        client = check_text('client', client, MAX_CLIENT)
        now = check_time(now)
        with self._op(now, caller):
            held = self._holding(resource, lease_id)
            self._end(held.request_id, 'release', now, client=client)
            return self._serve(now)

    def force_release(self, resource, reason, by, now, client='', caller=None):
        """Revoke the request holding ``resource`` (privileged: the caller checks
        who may), for ``reason``, done by ``by`` from ``client``. Returns
        (revoked grants, Outcomes granted as a result)."""
        check_resource(resource)
        reason = check_text('reason', reason, MAX_NOTE, required=True)
        by = check_text('by', by, MAX_OWNER, required=True)
        client = check_text('client', client, MAX_CLIENT)
        now = check_time(now)
        with self._op(now, caller):
            held = self._grants.get(resource)
            if held is None:
                cover = [g.resource for g in self._conflicting((resource,), False)]
                raise LeaseError(f'nothing is held on {resource!r}' + (
                    f' (it is covered by a tree lease on {cover[0]!r})' if cover else ''))
            revoked = self._end(held.request_id, 'force_release', now, client=client, by=by,
                                reason=reason)
            return revoked, self._serve(now)

    def preempt(self, resource, reason, grace, by, now, owner=None, lease=None, note='',
                client='', caller=None):
        """Ask the holder of ``resource`` to give way (privileged: the caller
        checks who may), for ``reason``, asked by ``by``: its request is
        revoked (token bumped for the next holder) at ``now + grace`` unless
        released first. With ``owner``, a request of ``owner`` for
        ``resource`` (``lease`` s) is queued *first*, ahead of every waiter,
        and granted when the holder gives way. Returns ``(Preemption,
        Outcome or None)`` (the requester's ``queued`` Outcome). One
        preemption per holder at a time; LeaseError (nothing changed) for a
        resource not held, one already being preempted, bad arguments."""
        check_resource(resource)
        reason = check_text('reason', reason, MAX_NOTE, required=True)
        grace = check_seconds('grace', grace, MAX_GRACE, zero_ok=True)
        by = check_text('by', by, MAX_OWNER, required=True)
        client = check_text('client', client, MAX_CLIENT)
        if owner is not None:
            owner = check_text('owner', owner, MAX_OWNER, required=True)
            lease = check_lease(lease, self.max_lease)
            note = check_text('note', note, MAX_NOTE)
        now = check_time(now)
        with self._op(now, caller):
            held = self._grants.get(resource)
            if held is None:
                cover = [g.resource for g in self._conflicting((resource,), False)]
                raise LeaseError(f'nothing is held on {resource!r}' + (
                    f' (it is covered by a tree lease on {cover[0]!r})' if cover else ''))
            p = self._preempts.get(held.request_id)
            if p is not None:
                raise LeaseError(f'the lease on {resource!r} ({held.owner!r:.40}, token '
                                 f'{held.token}) is already being preempted by {p.by!r:.60}: '
                                 f'it is revoked at {when(p.deadline)} unless released')
            out = None
            if owner is not None:
                self._check_queue_room(owner, client)
                self._last_rid += 1
                req = Request(self._last_rid, (resource,), owner, lease, False, note, client,
                              now, now + grace + PREEMPT_MARGIN, caller)
                self._waiting.insert(0, req)        # first in line
                out = Outcome('queued', req.request_id, (), (held,), 1)
                self._batch.notices.append(('queue', out))
            p = Preemption(held.request_id, resource, held.owner, held.token, by, reason,
                           grace, now, now + grace, client,
                           out.request_id if out is not None else None)
            self._set(self._preempts, held.request_id, p)
            self._audit('preempt', now, held, owner=by, client=client, holder=held.owner,
                        reason=reason, grace=grace, deadline=p.deadline,
                        requester=p.requester_rid)
            self._batch.notices.append(('preempt', p))
            return p, out

    def noticed(self, holder_rid, now):
        """The preemption of request ``holder_rid`` reached its holder (its
        lease watch was answered): one ``notice`` audit row, once. Returns
        the Preemption, or None (none pending, or noticed already)."""
        now = check_time(now)
        p = self._preempts.get(holder_rid)
        if p is None or p.noticed:
            return None
        with self._op(now):
            p = self._preempts.get(holder_rid)
            if p is None or p.noticed:
                return None
            p = replace(p, noticed=True)
            self._set(self._preempts, holder_rid, p)
            self._audit('notice', now, self._grants.get(p.resource), resource=p.resource,
                        owner=p.holder, client=p.client, by=p.by,
                        left=round(p.deadline - now, 3))
            self._batch.notices.append(('notice', p))
            return p

    def preemption(self, holder_rid):
        """The pending Preemption of request ``holder_rid``, or None."""
        return self._preempts.get(holder_rid)

    def cancel(self, request_id, now, reason=''):
        """Withdraw a waiting request (its caller is gone: ``reason`` says
        how; kept in its ``cancel`` audit rows); returns the Outcomes granted
        as a result. A withdrawn request is never granted."""
        check_positive_int('request_id', request_id)
        reason = check_text('reason', reason, MAX_NOTE)
        now = check_time(now)
        with self._op(now):
            req = next((w for w in self._waiting if w.request_id == request_id), None)
            if req is None:
                raise LeaseError(f'request {request_id} is not waiting '
                                 f'({self.poll(request_id).status})')
            self._withdraw(req, 'cancel', now, **({'reason': reason} if reason else {}))
            return self._serve(now)

    def expire(self, now):
        """Apply what is due by ``now``: ``{'expired': [Grant], 'timed_out':
        [request id], 'granted': [Outcome]}``."""
        with self._op(check_time(now)) as due:
            return due

    # -- status -------------------------------------------------------------------

    def poll(self, request_id):
        """The Outcome of a request as of the last call (see Outcome.status)."""
        check_positive_int('request_id', request_id)
        for i, w in enumerate(self._waiting):
            if w.request_id == request_id:
                ahead = sum(overlap(e.resources, e.tree, w.resources, w.tree)
                            for e in self._waiting[:i])
                return Outcome('queued', request_id, (),
                               self._conflicting(w.resources, w.tree), ahead + 1)
        grants = self._request_grants(request_id)
        if grants:
            return Outcome('granted', request_id, grants)
        return self._done.get(request_id, Outcome('unknown', request_id))

    def holding(self, resource, lease_id):
        """The current Grant on ``resource`` that ``lease_id`` holds; raises
        NotHolder (a LeaseError) saying why not: how its grant ended
        (released, expired, revoked by whom and why), or that it holds
        nothing there. Changes nothing (the lease watch asks it)."""
        check_resource(resource)
        check_lease_id(lease_id)
        return self._holding(resource, lease_id)

    def ended(self, resource, lease_id=None):
        """How the last grant on ``resource`` ended, or None: ``{'token',
        'action' ('release', 'expire', 'force_release'), 'at' (the caller's
        clock), 'by', 'reason'}`` (``by`` and ``reason``: a force_release's).
        With ``lease_id``: None unless that grant was this lease_id's.
        Never the lease's key."""
        e = self._ended.get(resource)
        if e is None or (lease_id is not None and not (
                e[5] is not None and key_matches(e[5], lease_id))):
            return None
        return {'token': e[0], 'action': e[1], 'at': e[2], 'by': e[3], 'reason': e[4]}

    def holders(self, resource=None):
        """Current grants sorted by resource; with ``resource``, those a tree
        lease on it would wait for (on it, below it, tree grants above it)."""
        if resource is None:
            return tuple(self._grants[r] for r in sorted(self._grants))
        return self._conflicting((check_resource(resource),), True)

    def waiting(self):
        """The waiting Requests, oldest first."""
        return tuple(self._waiting)

    def snapshot(self):
        """The whole state as plain data (JSON-ready)."""
        def party(rid):
            p = self._parties.get(rid)
            return {} if p is None else {'party': p}
        return {'grants': [dict(g.as_dict(), **party(g.request_id)) for g in self.holders()],
                'waiting': [dict(w.as_dict(), position=self.poll(w.request_id).queue_position,
                                 **party(w.request_id))
                            for w in self._waiting],
                'counters': dict(sorted(self._counters.items()))}

    # -- internals ----------------------------------------------------------------

    def _stored(self, g):
        """A grant as the store keeps it: its fields and its request's key."""
        return dict(g.as_dict(), lease_key=self._keys.get(g.request_id))

    @contextlib.contextmanager
    def _op(self, now, caller=None):
        # A store that refuses writes (a failed write, a read-only, deleted or
        # replaced file): no operation, until resync() has written the state.
        # Leases still end meanwhile: the registry calls expire_unstored().
        down = getattr(self._store, 'error', None)
        if down is not None:
            raise LeaseError(f'lease storage is failing, so nothing is granted, renewed or '
                             f'released: {down}')
        saved = {'_grants': dict(self._grants), '_waiting': list(self._waiting),
                 '_last_rid': self._last_rid, '_last_bid': self._last_bid}  # _STATE, copied
        batch = self._batch = _Batch()
        try:
            due = self._expire(now)         # (the timer's doing: no caller)
            batch.caller = caller
            yield due
            if batch.counters or batch.grants or batch.audit or batch.folds \
                    or batch.bookings or self._last_rid != saved['_last_rid']:
                changes = dict(     # (a queued request's id changes _last_rid alone)
                    counters=batch.counters, audit=batch.audit, last_request_id=self._last_rid,
                    grants={r: g and self._stored(g) for r, g in batch.grants.items()})
                if batch.folds:
                    changes['folds'] = batch.folds
                if batch.bookings:
                    changes['bookings'] = batch.bookings
                    changes['last_booking_id'] = self._last_bid
                self._store.apply(**changes)
        except BaseException as e:
            for k, v in saved.items():
                setattr(self, k, v)
            for d, key, old in reversed(batch.undo):
                if old is _MISSING:
                    d.pop(key, None)
                else:
                    d[key] = old
            if isinstance(e, LeaseStoreError):      # memory is as on disk again
                raise LeaseError(f'lease storage is failing, so nothing is granted, renewed '
                                 f'or released: {e}') from e
            raise
        finally:
            self._batch = None
        self._notify(batch)

    def _notify(self, batch):
        for action, item in batch.notices:
            for callback in list(self._listeners):
                try:
                    callback(action, item)
                except Exception:
                    log.exception('lease listener %r failed on %s', callback, action)

    # -- while the store refuses writes ------------------------------------------------

    def expire_unstored(self, now):
        """While the store refuses writes: end the leases due by ``now`` and
        withdraw the waiters whose deadline passed, in memory only (so a
        lease always ends on time), granting nobody. Their audit rows wait
        for :meth:`resync`. Returns as :meth:`expire` (``granted`` empty)."""
        now = check_time(now)
        batch = self._batch = _Batch()
        expired, timed_out = [], []
        try:
            for rid in sorted({g.request_id for g in self._grants.values() if g.expires <= now}):
                expired += self._end(rid, 'expire', now)
            for w in [w for w in self._waiting if w.deadline <= now]:
                self._withdraw(w, 'timeout', now)
                timed_out.append(w.request_id)
        finally:
            self._batch = None
        self._unwritten = getattr(self, '_unwritten', []) + batch.audit
        self._notify(batch)
        return {'expired': expired, 'timed_out': timed_out, 'granted': []}

    def resync(self, now):
        """Write the whole state to a store that refused writes (its
        ``rewrite``: grants replaced, counters max'd, the audit rows kept
        meanwhile), then serve the waiters; returns the Outcomes granted.
        Raises LeaseStoreError (nothing changed) if the store fails again."""
        now = check_time(now)
        self._store.rewrite([self._stored(g) for g in self.holders()], dict(self._counters),
                            getattr(self, '_unwritten', []), self._last_rid)
        self._unwritten = []
        with self._op(now) as due:
            return due['granted'] + self._serve(now)

    def _expire(self, now):
        expired, timed_out, granted = [], [], []
        while True:
            due = [g.expires for g in self._grants.values() if g.expires <= now]
            due += [w.deadline for w in self._waiting if w.deadline <= now]
            due += [p.deadline for p in self._preempts.values() if p.deadline <= now]
            due += self._bookings_due(now)
            if not due:
                self._warn_bookings(now)
                return {'expired': expired, 'timed_out': timed_out, 'granted': granted}
            t = min(due)
            for rid in sorted({g.request_id for g in self._grants.values() if g.expires <= t}):
                expired += self._end(rid, 'expire', now)
            for p in sorted((p for p in self._preempts.values() if p.deadline <= t),
                            key=lambda p: p.holder_rid):
                # The grace is over: revoked, as by a force_release.
                self._end(p.holder_rid, 'force_release', now, client=p.client, by=p.by,
                          reason=f'preempted: {p.reason} (not released within its '
                                 f'{p.grace:g} s grace)'[:MAX_NOTE])
            self._activate_bookings(t, now)
            granted += self._serve(now)
            late = [w for w in self._waiting if w.deadline <= t]
            for w in late:
                self._withdraw(w, 'timeout', now)
                timed_out.append(w.request_id)
            if late:
                granted += self._serve(now)

    def _serve(self, now):
        """Grant, oldest first, every waiter no grant and no earlier waiter blocks."""
        held, blocked, still, granted = _Claims(), _Claims(), [], []
        for g in self._grants.values():
            held.add((g.resource,), g.tree)
        for w in self._waiting:
            if held.hits(w.resources, w.tree) or blocked.hits(w.resources, w.tree):
                blocked.add(w.resources, w.tree)
                still.append(w)
            else:
                held.add(w.resources, w.tree)
                granted.append(self._grant(w, now))
        self._waiting = still
        return granted

    def _grant(self, req, now):
        booked = self._booked_grant(req, now)
        if booked is None:
            lease_id, expires, booking = new_lease_id(), now + req.lease, None
            self._set(self._keys, req.request_id, lease_key(lease_id))
        else:       # its key is the booking's claim key (None: nobody's)
            booking, key, expires = booked
            lease_id = None
            if key is not None:
                self._set(self._keys, req.request_id, key)
        grants = []
        for r in req.resources:
            covering = (r,) + ancestors(r)
            if req.tree:
                covering += tuple(x for x in self._counters if x.startswith(r + '/'))
            # Above every token of this epoch on the paths, and above every
            # token of earlier epochs (the store's token_base), even those a
            # lost or deleted database no longer counts.
            token = max(1 + max(self._counters.get(x, 0) for x in covering),
                        1 + getattr(self._store, 'token_base', 0))
            self._set(self._counters, r, token)
            self._batch.counters[r] = token
            g = Grant(r, req.owner, token, expires, req.tree, req.note, req.client,
                      now, req.request_id)
            self._grants[r] = self._batch.grants[r] = g
            self._audit_grant(g, now, now - req.queued_at, req.caller,
                              booking and booking.booking_id)
            grants.append(g)
        out = Outcome('granted', req.request_id, tuple(grants), queued_for=now - req.queued_at,
                      lease_id=lease_id)
        self._batch.notices.append(('grant', out))
        return out

    def _end(self, rid, action, now, client=None, by=None, reason=None):
        grants = self._request_grants(rid)
        booking = self._booked_end(rid, action, now)
        for g in grants:
            del self._grants[g.resource]
            self._batch.grants[g.resource] = None
            # (its message is written only if a stale call asks: _ended_why)
            self._set(self._ended, g.resource, (g.token, action, g.expires if
                                                action == 'expire' else now, by, reason,
                                                self._keys.get(rid)))
            detail = {'holder': g.owner, 'reason': reason} if by else \
                {'expires': g.expires} if action == 'expire' else {}
            if booking is not None:
                detail['booking'] = booking
            if not self._fold_release(g, action, now, client):
                self._audit(action, now, g, owner=by or g.owner,
                            client=g.client if client is None else client, **detail)
            self._batch.notices.append((action, g))
        if rid in self._preempts:
            self._set(self._preempts, rid, _MISSING)
        if self._renewed.get(rid) is not None:
            self._set(self._renewed, rid, _MISSING)
        if rid in self._keys:
            self._set(self._keys, rid, _MISSING)
        if rid in self._parties:
            self._set(self._parties, rid, _MISSING)
        self._remember(Outcome(_ENDED_AS[action], rid, grants))
        return list(grants)

    def _check_deadlock(self, req, holders):
        """Raise LeaseError (the cycle spelled out) if ``req`` waiting would
        close a cycle of owners each waiting for another's grant: nobody in
        it could go on before a timeout. Only looked for when a holder in
        the way is itself waiting (the common queue costs nothing more)."""
        who = self._who
        waiters = {who(w.request_id, w.owner) for w in self._waiting}
        me = who(req.request_id, req.owner)
        if not any(who(g.request_id, g.owner) in waiters and who(g.request_id, g.owner) != me
                   for g in holders):
            return
        grants = [{'resource': g.resource, 'owner': who(g.request_id, g.owner), 'tree': g.tree}
                  for g in self.holders()]
        waiting = [{'owner': who(w.request_id, w.owner), 'resources': w.resources,
                    'tree': w.tree} for w in self._waiting]
        found = closing_cycle(grants, waiting, {'owner': me,
                                                'resources': req.resources, 'tree': req.tree})
        if found is not None:
            raise LeaseError(cycle_text(*found, grants))

    def _who(self, request_id, owner):
        """A party of the wait-for graph: the owner, or its operation."""
        party = self._parties.get(request_id)
        return owner if party is None else f'{owner} {party}'

    def party(self, request_id):
        """The operation (acquire's ``party``) of a waiting or granted request, or None."""
        return self._parties.get(request_id)

    def _check_queue_room(self, owner, client):
        """Raise LeaseError unless a request of ``owner`` from ``client`` may
        wait: per-owner and per-client limits first, then the global one
        (its message names the owners filling the queue)."""
        by_owner, by_client = {}, 0
        for w in self._waiting:
            by_owner[w.owner] = by_owner.get(w.owner, 0) + 1
            by_client += bool(client) and w.client == client
        mine = by_owner.get(owner, 0)
        if mine >= self.max_waiting_per_owner:
            raise LeaseError(f'owner {owner!r:.60} already has {mine} requests waiting '
                             f'(max_waiting_per_owner={self.max_waiting_per_owner})')
        if by_client >= self.max_waiting_per_client:
            raise LeaseError(f'client {client!r:.60} already has {by_client} requests waiting '
                             f'(max_waiting_per_client={self.max_waiting_per_client})')
        if len(self._waiting) >= self.max_waiting:
            top = sorted(by_owner.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            who = ', '.join(f'{o!r:.40} {n}' for o, n in top)
            raise LeaseError(f'queue is full (max_waiting={self.max_waiting}; most waiting: '
                             f'{who})')

    def _withdraw(self, req, action, now, **detail):
        self._waiting.remove(req)
        self._booked_end(req.request_id, action, now)
        if req.request_id in self._parties:
            self._set(self._parties, req.request_id, _MISSING)
        out = Outcome('timed_out' if action == 'timeout' else 'cancelled', req.request_id)
        self._remember(out)
        self._record_request(action, req, now, out, **detail)

    def _record_request(self, action, req, now, out, **detail):
        for r in req.resources:
            self._audit(action, now, None, resource=r, owner=req.owner, client=req.client,
                        caller=req.caller, request=req.request_id, tree=req.tree,
                        note=req.note, **detail)
        self._batch.notices.append((action, out))

    def _audit(self, action, now, grant, resource=None, owner=None, client=None,
               caller=_MISSING, **detail):
        if grant is not None:
            detail.setdefault('request', grant.request_id)
        self._batch.audit.append({
            'at': now, 'action': action, 'resource': resource or grant.resource,
            'owner': owner or grant.owner, 'token': grant and grant.token,
            'client': grant.client if client is None else client, 'detail': detail, 'ok': True,
            'caller': self._batch.caller if caller is _MISSING else caller})

    def _remember(self, outcome):
        self._set(self._done, outcome.request_id, outcome)
        while len(self._done) > KEEP_DONE:
            self._set(self._done, next(iter(self._done)), _MISSING)

    def _set(self, d, key, value):
        """``d[key] = value`` (``_MISSING``: delete), undone if the operation fails."""
        self._batch.undo.append((d, key, d.get(key, _MISSING)))
        if value is _MISSING:
            d.pop(key, None)
        else:
            d[key] = value

    # -- audit folding: one row for quick hand-overs ---------------------------------
    #
    # When a resource is released by its holder and granted again within
    # fold_window (to the same holder, or to the next of a few agents taking
    # turns), no other path conflicting with it having been granted in
    # between, the cycles add no grant and release rows: from the second
    # cycle on they are folded into one ``regrant`` row per resource (token
    # and owner: the latest; detail: count, the owners with their counts,
    # first and last time, whether the latest is released yet), updated in
    # place in the same transaction. check_audit replays it as one grant (then
    # its release): the holds it folds are of this one path, one after the
    # other, and anything that could conflict with them ends the fold.

    def _audit_grant(self, g, now, queued_for=0.0, caller=None, booking=None):
        run = self._runs.get(g.resource)
        extra = {'queued_for': round(queued_for, 6)} if queued_for > 0 else {}
        if booking is not None:
            extra['booking'] = booking
        if run is not None and not run['open'] and run['tree'] == g.tree \
                and now - run['released_at'] <= self.fold_window:
            owners = dict(run['owners'])
            owners[g.owner] = owners.get(g.owner, 0) + 1
            run = dict(run, open=True, token=g.token, count=run['count'] + 1, last_at=now,
                       owners=owners)
            if run['count'] == 1:
                run['since'] = now
            detail = {'count': run['count'], 'owners': owners, 'since': run['since'],
                      'last_at': now, 'released': False, 'tree': g.tree, 'note': g.note,
                      'request': g.request_id, 'expires': g.expires}
            if run['count'] == 1:
                self._audit('regrant', now, g, caller=caller, **detail)
            else:
                self._batch.folds.append({'resource': g.resource, 'token': g.token,
                                          'owner': g.owner, 'at': now, 'detail': detail})
            self._set(self._runs, g.resource, run)
            return
        # A grant on the path or above it ends the runs there (and below it,
        # for a tree grant); runs idle past the fold window go.
        ended = [r for r in (g.resource,) + ancestors(g.resource) if r in self._runs]
        if g.tree or len(self._runs) > self._runs_bound:
            ended += [r for r, run in self._runs.items()
                      if (g.tree and r.startswith(g.resource + '/'))
                      or (not run['open'] and now - run['released_at'] > self.fold_window)]
            self._runs_bound = max(64, 2 * (len(self._runs) - len(ended)))
        for r in set(ended):
            self._set(self._runs, r, _MISSING)
        self._audit('grant', now, g, caller=caller, tree=g.tree, expires=g.expires, note=g.note,
                    **extra)

    def _fold_release(self, g, action, now, client):
        """Fold the release of a folded re-grant; start a run at a plain
        release; end the run at an expiry or revocation. True if folded."""
        run = self._runs.get(g.resource)
        if action != 'release' or (client is not None and client != g.client):
            if run is not None:
                self._set(self._runs, g.resource, _MISSING)
            return False
        if run is not None and run['open'] and run['token'] == g.token:
            run = dict(run, open=False, released_at=now)
            self._batch.folds.append({'resource': g.resource, 'token': g.token,
                                      'owner': g.owner, 'at': now,
                                      'detail': {'count': run['count'], 'owners': run['owners'],
                                                 'since': run['since'], 'last_at': now,
                                                 'released': True, 'tree': g.tree,
                                                 'note': g.note, 'request': g.request_id}})
            self._set(self._runs, g.resource, run)
            return True
        if self.fold_window > 0:
            self._set(self._runs, g.resource, {
                'tree': g.tree, 'open': False, 'released_at': now, 'count': 0,
                'token': g.token, 'since': now, 'owners': {}})
        return False

    def _holding(self, resource, lease_id):
        """The grant on ``resource`` that ``lease_id`` holds, else LeaseError
        (one line; never the lease id)."""
        g = self._grants.get(resource)
        if g is not None and key_matches(self._keys.get(g.request_id), lease_id):
            return g
        ended = self._ended.get(resource)
        if ended and ended[5] is not None and key_matches(ended[5], lease_id):
            raise NotHolder(_ended_why(resource, *ended[1:5]))
        if g is not None and g.request_id not in self._keys:
            raise NotHolder(f'the lease on {resource!r} (token {g.token}, {g.owner!r:.40}) '
                             f'was granted before lease ids: nobody can renew or release it; '
                             f'it ends at its expiry, {when(g.expires)}, or by force_release')
        if g is None:
            raise NotHolder(f'that lease_id holds nothing on {resource!r}: nothing is held '
                             f'there')
        raise NotHolder(f"that lease_id does not hold {resource!r} (held by {g.owner!r:.40}, "
                         f"token {g.token}): only its holder may renew or release it; "
                         f"force_release revokes someone else's lease")

    def _request_grants(self, rid):
        return tuple(sorted((g for g in self._grants.values() if g.request_id == rid),
                            key=lambda g: g.resource))

    def _conflicting(self, paths, tree):
        return tuple(self._grants[r] for r in sorted(self._grants)
                     if overlap(paths, tree, (r,), self._grants[r].tree))
