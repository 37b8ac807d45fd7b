"""Replicating a lease store to a standby registry: the pure parts.

A standby registry keeps a copy of the primary's lease database so that it
can take the primary's place (see docs/standby.rst). What travels is the
store's own write, not the public feeds: every change of the lease state
is one :meth:`LeaseStore.apply <ocs_locking.leases.store.LeaseStore.apply>`
batch (grants with their ``lease_key`` hashes, token counters, audit rows,
the last request id), the access director's credential hashes are another
(``privs``), and neither is ever on a feed (a feed follower could renew
nobody's lease).

The standby *pulls*: it calls the primary's ``<service>.replica.pull`` with
the last sequence number it applied, which acknowledges everything up to it
and returns what came after (or waits for it, a long poll). The primary
answers a lease call only after every attached standby acknowledged the
batch it wrote (:meth:`ReplicaLog.synced`), or dropped a standby that took
longer than ``ack_timeout`` (it then follows again, from a snapshot).

Messages (every pull reply is one dict):

* ``{'kind': 'snapshot', 'stream', 'seq', 'now', 'epoch', 'db_id', 'state':
  {'grants', 'counters', 'last_request_id', 'privs', 'audit', 'bookings',
  'last_booking_id'}}``: the whole store (``audit``: its newest rows, oldest
  first; ``bookings`` and ``last_booking_id`` may be absent: none); ``seq``:
  the batch it includes;
* ``{'kind': 'batches', 'stream', 'now', 'batches': [[seq, op, payload],
  ...]}``: ``op`` is ``apply`` (the keyword arguments of one ``apply``) or
  ``privs`` (``[request_id, hash, value]``); an empty list is a heartbeat;
* ``{'kind': 'resync', 'reason'}``: follow again (another primary run, a
  standby dropped, a gap).

``stream`` names one run of one primary; ``now`` is the primary's clock
when it answered: the standby never compares it with its own wall clock, it
measures the time since on its own monotonic clock (:class:`Follower`).

Nothing here knows of Twisted, WAMP, SQLite or the network.
"""
from collections import deque

__all__ = ['ReplicaError', 'Resync', 'ReplicaLog', 'Follower', 'check_reply',
           'check_batch', 'takeover_epoch', 'ACK_TIMEOUT', 'MAX_BATCHES', 'PULL_WAIT',
           'AUDIT_TAIL', 'OPS']

#: Seconds a standby may take to acknowledge a batch before the primary
#: drops it (and answers its callers without it).
ACK_TIMEOUT = 0.5
#: Batches kept for a standby at most; more unacknowledged: it is dropped.
MAX_BATCHES = 10000
#: Seconds a pull waits for a batch before it answers with none (a heartbeat).
PULL_WAIT = 2.0
#: Audit rows a snapshot carries (the newest).
AUDIT_TAIL = 2000
#: What a batch may carry.
OPS = ('apply', 'privs')
_APPLY_KEYS = frozenset(('counters', 'grants', 'audit', 'last_request_id', 'folds',
                         'bookings', 'last_booking_id'))
_STATE_KEYS = ('grants', 'counters', 'last_request_id', 'privs', 'audit')
_MAX_NAME = 128


class ReplicaError(ValueError):
    """A replica message or call that breaks the protocol (one line)."""


class Resync(Exception):
    """The follower must follow again from a snapshot; the text says why."""


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_name(name):
    """A follower's name (its instance id): a short non-empty string."""
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or '.' in name:
        raise ReplicaError(f'follower must be an instance id (no dots, at most {_MAX_NAME} '
                           f'characters), not {name!r:.60}')
    return name


def check_batch(batch):
    """``[seq, op, payload]`` checked (ReplicaError): the ``apply`` payload
    has only ``apply``'s keywords, of the right kinds."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 3:
        raise ReplicaError(f'a batch is [seq, op, payload], not {batch!r:.80}')
    seq, op, payload = batch
    if not _is_int(seq) or seq < 1:
        raise ReplicaError(f'batch seq must be an integer >= 1, not {seq!r:.40}')
    if op not in OPS:
        raise ReplicaError(f'batch {seq}: op must be one of {", ".join(OPS)}, not {op!r:.40}')
    if op == 'privs':
        if not (isinstance(payload, (list, tuple)) and len(payload) == 3 and _is_int(payload[0])
                and all(isinstance(x, str) for x in payload[1:])):
            raise ReplicaError(f'batch {seq}: privs is [request_id, hash, value]')
        return seq, op, list(payload)
    if not isinstance(payload, dict) or not set(payload) <= _APPLY_KEYS:
        extra = sorted(set(payload) - _APPLY_KEYS) if isinstance(payload, dict) else payload
        raise ReplicaError(f'batch {seq}: apply takes {", ".join(sorted(_APPLY_KEYS))}, not '
                           f'{extra!r:.80}')
    kinds = {'counters': dict, 'grants': dict, 'audit': (list, tuple), 'folds': (list, tuple),
             'bookings': dict}
    for key, kind in kinds.items():
        if payload.get(key) is not None and not isinstance(payload[key], kind):
            raise ReplicaError(f'batch {seq}: {key} must be a {kind}, not '
                               f'{type(payload[key]).__name__}')
    for r, t in (payload.get('counters') or {}).items():
        if not isinstance(r, str) or not _is_int(t):
            raise ReplicaError(f'batch {seq}: counters map resources to tokens')
    for r, g in (payload.get('grants') or {}).items():
        if not isinstance(r, str) or not (g is None or (isinstance(g, dict)
                                                       and g.get('resource') == r)):
            raise ReplicaError(f'batch {seq}: grants map resources to grants or None')
    for row in payload.get('audit') or ():
        if not isinstance(row, dict) or not isinstance(row.get('action'), str) \
                or not _is_num(row.get('at')):
            raise ReplicaError(f'batch {seq}: an audit row needs action and at')
    for key in ('last_request_id', 'last_booking_id'):
        if payload.get(key) is not None and not _is_int(payload[key]):
            raise ReplicaError(f'batch {seq}: {key} must be an integer')
    for bid, b in (payload.get('bookings') or {}).items():
        if not _booking_id(bid) or not (b is None or (isinstance(b, dict)
                                                     and str(b.get('booking_id')) == str(bid))):
            raise ReplicaError(f'batch {seq}: bookings map booking ids to bookings or None')
    return seq, op, payload


def _booking_id(bid):
    # (a JSON object's keys are strings: 12 arrives as '12')
    return (_is_int(bid) and bid >= 1) or (isinstance(bid, str) and bid.isdigit()
                                          and len(bid) < 20 and int(bid) >= 1)


def check_reply(reply):
    """A pull reply checked (ReplicaError, one line); returns it."""
    if not isinstance(reply, dict) or reply.get('kind') not in ('snapshot', 'batches', 'resync'):
        raise ReplicaError(f'a pull reply is a dict of kind snapshot, batches or resync, not '
                           f'{reply!r:.80}')
    kind = reply['kind']
    if kind == 'resync':
        return reply
    if not isinstance(reply.get('stream'), str) or not _is_num(reply.get('now')):
        raise ReplicaError(f'{kind}: needs stream and now')
    if kind == 'batches':
        if not isinstance(reply.get('batches'), (list, tuple)):
            raise ReplicaError('batches: needs a list of batches')
        reply = dict(reply, batches=[check_batch(b) for b in reply['batches']])
        return reply
    if not (_is_int(reply.get('seq')) and reply['seq'] >= 0 and _is_int(reply.get('epoch'))
            and reply['epoch'] >= 0):
        raise ReplicaError('snapshot: needs seq and epoch (integers >= 0)')
    state = reply.get('state')
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise ReplicaError(f'snapshot: state needs {", ".join(_STATE_KEYS)}')
    bookings = state.get('bookings') or []
    if not isinstance(bookings, (list, tuple)):
        raise ReplicaError('snapshot: bookings must be a list')
    check_batch([1, 'apply', {'grants': {g.get('resource') if isinstance(g, dict) else None: g
                                         for g in state['grants']},
                              'counters': state['counters'], 'audit': state['audit'],
                              'last_request_id': state['last_request_id'],
                              'bookings': {b.get('booking_id') if isinstance(b, dict) else 0: b
                                           for b in bookings},
                              'last_booking_id': state.get('last_booking_id')}])
    for p in state['privs']:
        check_batch([1, 'privs', p])
    return reply


def takeover_epoch(own, primary):
    """The epoch a standby serves in when it takes over: above its own and
    above the primary's, so every token it issues exceeds every token the
    primary issued (even one whose batch never reached the standby)."""
    for name, v in (('own', own), ('primary', primary)):
        if not _is_int(v) or v < 0:
            raise ReplicaError(f'{name} epoch must be an integer >= 0, not {v!r:.40}')
    return max(own, primary) + 1


class ReplicaLog:
    """The primary's side: numbered batches, kept until every attached
    follower acknowledged them.

    Contract:

    * :meth:`append` numbers a batch (``seq`` rises by one per batch) and
      keeps it while a follower is attached (none: nothing kept).
    * :meth:`attach` (a follower took a snapshot including ``seq``) makes
      it acknowledged up to ``seq``; :meth:`ack` raises the mark and returns
      the batches after it, or raises :class:`Resync` (not attached, another
      stream, a mark that is not a batch it was sent).
    * :meth:`synced` ``(seq)``: every attached follower acknowledged it.
    * :meth:`overdue` ``(now)``: the followers whose oldest unacknowledged
      batch is older than ``ack_timeout`` (or more than ``max_batches``
      wait): the caller drops them (:meth:`drop`); a dropped follower's
      next pull is told to resync.
    * Times are passed in (``now``, monotonic seconds). Not thread-safe.
    """

    def __init__(self, stream, ack_timeout=ACK_TIMEOUT, max_batches=MAX_BATCHES):
        self.stream = stream
        self.ack_timeout, self.max_batches = ack_timeout, max_batches
        self.seq = 0
        self._batches = deque()     # (seq, appended at, op, payload), oldest first
        #: name -> {'acked', 'attached_at', 'seen', 'identity', 'verified'}
        self.followers = {}
        self.drops = {}             # name -> (at, why): the latest drop of each
        self.dropped = 0

    def append(self, op, payload, now):
        """Number one batch; returns its seq."""
        self.seq += 1
        if self.followers:
            self._batches.append((self.seq, now, op, payload))
        return self.seq

    def attach(self, name, now, identity=None, verified=False):
        """``name`` took a snapshot that includes every batch up to :attr:`seq`."""
        name = check_name(name)
        self.followers[name] = {'acked': self.seq, 'attached_at': now, 'seen': now,
                                'identity': identity, 'verified': bool(verified)}
        self.drops.pop(name, None)
        self._trim()
        return self.seq

    def ack(self, name, stream, after, now):
        """``name`` applied everything up to ``after`` (of ``stream``):
        returns the batches after it, ``[[seq, op, payload], ...]``."""
        f = self.followers.get(name)
        if stream != self.stream:
            raise Resync('another primary run (stream): follow again')
        if f is None:
            why = self.drops.get(name)
            raise Resync(f'not following: {why[1]}' if why else 'not following: attach first')
        if not _is_int(after) or after < f['acked'] or after > self.seq:
            self.drop(name, f'acknowledged {after!r:.20}, outside {f["acked"]}..{self.seq}', now)
            raise Resync(self.drops[name][1])
        f['acked'], f['seen'] = after, now
        self._trim()
        return [[s, op, p] for s, _at, op, p in self._batches if s > after]

    def identified(self, name, identity, verified):
        """Who ``name``'s session is, as the router says (asked again until
        verified: the router's word may come after the first pull)."""
        f = self.followers.get(name)
        if f is not None:
            f['identity'], f['verified'] = identity, bool(verified)

    def synced(self, seq):
        return all(f['acked'] >= seq for f in self.followers.values())

    def overdue(self, now):
        out = []
        for name, f in self.followers.items():
            late = [at for s, at, _op, _p in self._batches if s > f['acked']]
            if late and (now - late[0] > self.ack_timeout or len(late) > self.max_batches):
                out.append(name)
        return out

    def drop(self, name, why, now):
        if self.followers.pop(name, None) is not None:
            self.dropped += 1
        self.drops[name] = (now, why)
        self._trim()

    def detach_all(self, why, now):
        for name in list(self.followers):
            self.drop(name, why, now)

    def _trim(self):
        low = min((f['acked'] for f in self.followers.values()), default=self.seq)
        while self._batches and self._batches[0][0] <= low:
            self._batches.popleft()

    def status(self, now):
        """``{'stream', 'seq', 'followers': [{'name', 'behind', 'acked',
        'seen_ago', 'identity', 'verified'}], 'dropped', 'last_drop'}``."""
        followers = [{'name': n, 'acked': f['acked'], 'behind': self.seq - f['acked'],
                      'seen_ago': round(now - f['seen'], 3), 'identity': f['identity'],
                      'verified': f['verified']} for n, f in sorted(self.followers.items())]
        last = max(self.drops.items(), key=lambda kv: kv[1][0], default=None)
        return {'stream': self.stream, 'seq': self.seq, 'followers': followers,
                'dropped': self.dropped,
                'last_drop': None if last is None else {'name': last[0], 'why': last[1][1],
                                                        'ago': round(now - last[1][0], 3)}}


class Follower:
    """The standby's side: where it is in the primary's stream, and the
    primary's clock as last heard (never compared with this host's wall
    clock: only the monotonic time since is measured here).

    ``state`` is ``idle`` (not following), ``following`` (asked for a
    snapshot) or ``in_sync`` (a snapshot installed, batches applied in
    order). Only an ``in_sync`` follower may take over.
    """

    def __init__(self):
        self.reset('not joined')

    def reset(self, why):
        self.state, self.why = 'idle', why
        self.stream = self.seq = self.epoch = None
        self.primary_now = self.heard_at = None
        self.applied = 0

    @property
    def in_sync(self):
        return self.state == 'in_sync'

    def snapshot(self, reply, mono):
        """A snapshot reply (checked): now in sync at its seq."""
        if reply['kind'] != 'snapshot':
            raise Resync(f'expected a snapshot, got {reply["kind"]}')
        self.stream, self.seq, self.epoch = reply['stream'], reply['seq'], reply['epoch']
        self.state, self.why = 'in_sync', None
        self._heard(reply, mono)
        return reply['state']

    def batches(self, reply, mono):
        """A batches reply (checked): the batches to apply, in order; raises
        Resync for another stream or a gap (nothing applied)."""
        if reply['kind'] == 'resync':
            raise Resync(reply.get('reason') or 'the primary asked')
        if reply['kind'] != 'batches' or reply['stream'] != self.stream:
            raise Resync('another primary run: follow again')
        out, seq = [], self.seq
        for s, op, payload in reply['batches']:
            if s <= seq:
                continue        # (sent again: already applied)
            if s != seq + 1:
                raise Resync(f'batch {s} after {seq}: a gap')
            out.append((s, op, payload))
            seq = s
        self._heard(reply, mono)
        return out

    def applied_upto(self, seq):
        self.applied += max(0, seq - self.seq)
        self.seq = seq

    def _heard(self, reply, mono):
        self.primary_now, self.heard_at = reply['now'], mono

    def primary_clock(self, mono):
        """The primary's clock now, estimated: its last ``now`` plus the
        monotonic seconds since it was heard (None before any)."""
        if self.primary_now is None:
            return None
        return self.primary_now + (mono - self.heard_at)

    def rebase(self, grants, own_now, mono):
        """Grants (dicts, the primary's clock) on this host's clock: each
        keeps the time it had left when the primary was last heard, minus
        the monotonic time since. ``expires`` and ``granted_at`` move."""
        shift = own_now - self.primary_clock(mono)
        return [dict(g, expires=g['expires'] + shift, granted_at=g['granted_at'] + shift)
                for g in grants]

    def status(self, mono):
        return {'state': self.state, 'why': self.why, 'stream': self.stream, 'seq': self.seq,
                'primary_epoch': self.epoch, 'applied': self.applied,
                'heard_ago': None if self.heard_at is None else round(mono - self.heard_at, 3)}
