"""The site-wide ownership table: a pure state machine (no Twisted, no I/O).

The LockRegistryAgent feeds it what arrives on the bus — lock messages from
each agent's ``locks`` feed and heartbeats — and the clock; it answers with
the rows that changed. Rows are keyed ``<instance-id>/<lock>``; the instance
id always comes from the topic the message arrived on, never from the
message, so an agent can only ever speak about its own locks.

Two things the messages alone do not say:

* ``held_since``: a holder that lends the lock for a moment (an acquisition
  loop handing it to a waiting task at a sample boundary, then re-taking it)
  is still holding since its *first* grant. A hold continues through a
  hand-over (a ``released`` with waiters, or a new holder without a release
  in between) until the lock is released with nobody waiting.
* ``held_for``: how long the current hold has lasted (from ``held_since``),
  in seconds, as of when the row was read. It is measured on one clock at a
  time, never by comparing the agent's clock with the registry's: a message
  says how old its hold was when the agent sent it (``age``, on the agent's
  clock), the table anchors that on the clock it is given (``now``) at
  arrival, and counts on from there. ``since`` and ``held_since`` stay the
  agent's own times, for display only.
* Forgetting: an agent that holds nothing when it goes stale (a clean stop
  ends its operations, so every lock is free or closed) leaves the table at
  once; the rows of a stale agent that still holds a lock (a crash, a cut
  link) stay, marked stale, for ``forget`` seconds of silence
  (:meth:`OwnershipTable.forget_silent`).
* ``seq`` orders one agent process's messages (``boot`` names the process),
  but no single message may make the table drop later genuine ones: a new
  ``boot`` starts a new sequence space; within one, the table keeps the
  last ``seq`` of the few most recent streams it saw (:data:`SEQ_HEADS`)
  and accepts a message that moves one of them forward by at most
  :data:`SEQ_JUMP`; a seq seen lately is dropped only as an exact
  duplicate. A forged message with a huge ``seq`` is dropped (it
  starts a stream of its own, which a second consecutive message would
  continue); a forged message just ahead of the agent adds a stream beside
  the agent's and never moves the agent's own.
* Caps: at most ``max_agents`` agents (heartbeats of made-up ids too),
  ``max_locks_per_agent`` locks per agent and ``max_rows`` rows in all; a
  message or heartbeat beyond a cap is refused (:class:`Refused`) and
  counted in :attr:`OwnershipTable.refused` by cap.
* ``queue``: who waits, in the order they will be served (the first
  :data:`~ocs_locking.wire.QUEUE_SHOWN`; ``waiters`` is the full count),
  each ``{'job', 'op', 'session_id', 'since', 'waited_for'}``; ``waited_for``
  is measured like ``held_for`` (from the entry's ``age`` when sent,
  anchored at arrival). A message without ``queue`` (an agent older than
  the key) gives ``[]``.
* :meth:`OwnershipTable.gone`: the bus says an agent's session ended
  (kill -9, crash): its locks are not alive at once, without waiting for
  heartbeats to stop.
"""
import math
import re

from .errors import BadLockMessage
from .leases.paths import check_resource
from .stats import PeriodStats
from .wire import EVENTS, QUEUE_SHOWN, ROW_KEYS

__all__ = ['OwnershipTable', 'BadLockMessage', 'Refused', 'EVENTS', 'ROW_KEYS', 'SEQ_JUMP',
           'SEQ_HEADS', 'LIMITS']


_NAME = re.compile(r'^[A-Za-z0-9_.:-]{1,64}$')
_MAX_TEXT = 200

#: Bounds of lock message fields (see the Events page): counters and tokens
#: stay exact in JSON (2**53 - 1), a queue of more than a million waiters is
#: no real lock's, and times are Unix times between 1970 and 2286.
MAX_COUNT = 2 ** 53 - 1
MAX_WAITERS = 10 ** 6
MAX_TIME = 1e10

#: A message may move a stream's ``seq`` forward by at most this much (the
#: messages the registry missed in between); more starts a stream of its own.
SEQ_JUMP = 10000
#: How many recent streams per agent process the table follows.
SEQ_HEADS = 4
#: How many recent seq numbers per agent it remembers (to tell a duplicate
#: from a different message with the same seq).
SEQ_RECENT = 64

#: The default caps (registry arguments ``--max-agents``,
#: ``--max-locks-per-agent``, ``--max-rows``).
LIMITS = {'max_agents': 1000, 'max_locks_per_agent': 64, 'max_rows': 10000}


class Refused(BadLockMessage):
    """A message or heartbeat beyond one of the table's caps (``cause``:
    ``max_agents``, ``max_locks_per_agent`` or ``max_rows``)."""

    def __init__(self, cause, text):
        super().__init__(text)
        self.cause = cause


def _opt_text(msg, key):
    v = msg.get(key)
    if v is not None and (not isinstance(v, str) or len(v) > _MAX_TEXT):
        raise BadLockMessage(f'{key} must be a string of at most {_MAX_TEXT} '
                             f'characters or null, not {v!r:.60}')
    return v


def _int(msg, key, optional=False, most=MAX_COUNT):
    v = msg.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= most:
        raise BadLockMessage(f'{key} must be an integer 0..{most}, not {v!r:.60}')
    return v


def _seconds(msg, key):
    v = msg.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
            or not 0 <= v <= MAX_TIME:
        raise BadLockMessage(f'{key} must be a duration in seconds (0..{MAX_TIME:g}) or '
                             f'null, not {v!r:.60}')
    return float(v)


def _time(msg, key):
    v = msg.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
            or not 0 <= v <= MAX_TIME:
        raise BadLockMessage(f'{key} must be a Unix time in seconds (0..{MAX_TIME:g}) or '
                             f'null, not {v!r:.60}')
    return float(v)


_QUEUE_KEYS = ('job', 'op', 'session_id', 'since', 'age')


def _queue(msg, waiters):
    """The ``queue`` of a message as a tuple of (job, op, session_id, since,
    age) tuples: absent or null -> (); else a list of at most QUEUE_SHOWN
    (and at most ``waiters``) dicts with checked fields."""
    q = msg.get('queue')
    if q is None:
        return ()
    if not isinstance(q, list) or len(q) > min(QUEUE_SHOWN, waiters):
        raise BadLockMessage(f'queue must be a list of at most {QUEUE_SHOWN} waiters (and no '
                             f'more than waiters, {waiters}), not {q!r:.60}')
    out = []
    for i, w in enumerate(q):
        if not isinstance(w, dict):
            raise BadLockMessage(f'queue[{i}] must be a dict, not {w!r:.60}')
        try:
            out.append((_opt_text(w, 'job'), _opt_text(w, 'op'),
                        _int(w, 'session_id', optional=True), _time(w, 'since'),
                        _seconds(w, 'age')))
        except BadLockMessage as e:
            raise BadLockMessage(f'queue[{i}].{e}') from None
    return tuple(out)


def parse_lock_message(msg):
    """Check one lock message against the contract; return its fields."""
    if not isinstance(msg, dict):
        raise BadLockMessage(f'a lock message must be a dict, not {type(msg).__name__}')
    name = msg.get('lock')
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadLockMessage(f'lock must be a name of 1-64 letters, digits or _.:- '
                             f'(no "/"), not {name!r:.60}')
    event = msg.get('event')
    if event not in EVENTS:
        raise BadLockMessage(f'event must be one of {", ".join(EVENTS)}, not {event!r:.60}')
    boot = _time(msg, 'boot')
    folded = {k: _int(msg, k, optional=True) or 0 for k in ('folded_acquired', 'folded_gave_up')}
    waiters = _int(msg, 'waiters', most=MAX_WAITERS)
    lease = msg.get('lease')
    if lease is not None:
        try:
            lease = check_resource(lease)
        except ValueError as e:
            raise BadLockMessage(f'lease must be a resource path or null: {e}') from None
    return {**folded, 'lease': lease, 'lock': name, 'event': event, 'job': _opt_text(msg, 'job'),
            'op': _opt_text(msg, 'op'), 'session_id': _int(msg, 'session_id', optional=True),
            'since': _time(msg, 'since'), 'waiters': waiters,
            'token': _int(msg, 'token'), 'seq': _int(msg, 'seq'), 'boot': boot,
            'age': _seconds(msg, 'age'), 'queue': _queue(msg, waiters)}


class _Agent:
    __slots__ = ('instance_id', 'last_seen', 'alive', 'heads', 'recent', 'boot', 'locks')

    def __init__(self, instance_id, now):
        self.instance_id = instance_id
        self.last_seen = now
        self.alive = True
        self.heads = []         # last seq of each recent stream, most recent last
        self.recent = {}        # seq -> digests of the messages taken with it (the latest)
        self.boot = None
        self.locks = 0          # rows of this agent

    def accept_seq(self, seq, digest):
        """True if the message (``seq``, and ``digest`` of its fields) is
        taken. A seq seen lately is dropped only as an exact duplicate (a
        forged message that took a genuine seq first never hides the
        genuine one); otherwise a message must move one of the recent
        streams forward by at most SEQ_JUMP (that stream moves on; a jump
        of more than one also keeps the old head, so a message ahead of the
        agent's own stream never hides it). One too far ahead of every
        stream is dropped but starts a stream of its own (a real gap
        resyncs on the next message); one behind every stream is dropped."""
        seen = self.recent.get(seq)
        if seen is not None:
            if digest in seen:
                return False
            seen.add(digest)
            return True
        heads = self.heads
        below = [h for h in heads if h < seq <= h + SEQ_JUMP]
        if below or not heads:
            if below and seq == max(below) + 1:
                heads.remove(max(below))
            self._push(seq)
            self.recent[seq] = {digest}
            if len(self.recent) > SEQ_RECENT:
                del self.recent[next(iter(self.recent))]
            return True
        if seq > max(heads) + SEQ_JUMP:
            self._push(seq)
        return False

    def _push(self, seq):
        if seq in self.heads:
            self.heads.remove(seq)
        self.heads.append(seq)
        del self.heads[:-SEQ_HEADS]


def _holder(row_or_msg):
    """Who holds: (job, op, session_id), or None when nobody does."""
    if row_or_msg['job'] is None and row_or_msg['since'] is None:
        return None
    return (row_or_msg['job'], row_or_msg['op'], row_or_msg['session_id'])


class OwnershipTable:
    """Lock ownership for a whole site.

    Args:
        expiry (float): seconds without a heartbeat (or lock message) after
            which an agent's locks are marked stale (``alive`` False).
        forget (float): seconds without a heartbeat after which a stale
            agent's rows are removed (an agent that holds none of its
            locks is removed as soon as it is stale).

    The table owns its state: read it with :meth:`snapshot`, :meth:`rows_by_key`
    and :attr:`dropped`; count a message refused before it reached the table
    with :meth:`count_dropped`.
    """

    def __init__(self, expiry=5.0, forget=600.0, max_agents=LIMITS['max_agents'],
                 max_locks_per_agent=LIMITS['max_locks_per_agent'], max_rows=LIMITS['max_rows']):
        for name, v in (('max_agents', max_agents), ('max_rows', max_rows),
                        ('max_locks_per_agent', max_locks_per_agent)):
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 10 ** 7:
                raise ValueError(f'{name} must be an integer 1..10000000, not {v!r}')
        self.limits = {'max_agents': max_agents, 'max_locks_per_agent': max_locks_per_agent,
                       'max_rows': max_rows}
        self.refused = {}       # cap -> messages refused by it
        if not isinstance(expiry, (int, float)) or not 0 < expiry <= 3600:
            raise ValueError(f'expiry must be seconds in (0, 3600], not {expiry!r}')
        if not isinstance(forget, (int, float)) or not expiry <= forget <= 30 * 86400:
            raise ValueError(f'forget must be seconds in [expiry, 30 days], not {forget!r}')
        self.expiry = float(expiry)
        self.forget = float(forget)
        self.rows = {}       # key -> row dict (ROW_KEYS); read with snapshot()/rows_by_key()
        self.agents = {}     # instance id -> _Agent
        self.seq = 0         # increases with every change set
        self._dropped = 0    # malformed or out-of-order messages
        # key -> (holder, held_since, held_since on our clock) of a hold lent
        # to others; cleared when the lock is released with nobody waiting.
        self._lender = {}
        # key -> [since, held_since] of the current hold on the clock this
        # table is given (``now``), from each message's ``age``.
        self._local = {}
        self._now = None        # the latest ``now`` given
        # key -> [(job, op, session_id, since, began waiting on our clock)]
        # of the lock's latest queue (FIFO, at most QUEUE_SHOWN)
        self._queues = {}
        self.out_of_sequence = 0    # messages dropped for their seq
        self._heard = {}        # key -> when the latest message about it arrived (``now``)
        #: holds and waits that ended, per key, between two lock_stats records
        self.period = PeriodStats()

    @property
    def dropped(self):
        """How many messages were dropped (malformed, forged or out of order)."""
        return self._dropped

    def count_dropped(self, n=1):
        """Count ``n`` messages dropped before they reached the table (e.g. a
        forged topic the agent refused)."""
        self._dropped += n

    # -- inputs -------------------------------------------------------------------

    def _refuse(self, cause, text):
        self.refused[cause] = self.refused.get(cause, 0) + 1
        raise Refused(cause, text)

    def _agent(self, instance_id, now):
        a = self.agents.get(instance_id)
        if a is None:
            if len(self.agents) >= self.limits['max_agents']:
                self._refuse('max_agents', f"{len(self.agents)} agents tracked already "
                             f"(--max-agents {self.limits['max_agents']}): "
                             f"{instance_id!r:.60} refused")
            a = self.agents[instance_id] = _Agent(instance_id, now)
        return a

    def gone(self, instance_id, now):
        """The bus says ``instance_id``'s session ended: its locks are not
        alive at once (they come alive again with its next heartbeat or
        message, from a new session). Returns the rows that changed."""
        self._now = now
        agent = self.agents.get(instance_id)
        if agent is None or not agent.alive:
            return []
        agent.alive = False
        changed = []
        for row in self._rows_of(instance_id):
            row['alive'] = False
            row['updated'] = now
            changed.append(row)
        return self._changes(changed)

    def _seen(self, agent, now, changed):
        agent.last_seen = now
        if not agent.alive:
            agent.alive = True
            for row in self._rows_of(agent.instance_id):
                row['alive'] = True
                row['updated'] = now
                changed.append(row)

    def heartbeat(self, instance_id, now):
        """An agent's heartbeat arrived. Returns the rows that changed."""
        self._now = now
        changed = []
        self._seen(self._agent(instance_id, now), now, changed)
        return self._changes(changed)

    def lock_message(self, instance_id, msg, now):
        """A message from ``instance_id``'s own ``locks`` feed.

        Returns the rows that changed. Raises BadLockMessage for a message
        that breaks the contract (the table is left as it was, but the
        message is counted in :attr:`dropped`), :class:`Refused` (a
        BadLockMessage) for one beyond a cap (counted in :attr:`refused`).
        A message out of sequence is dropped (counted in :attr:`dropped`,
        and in :attr:`out_of_sequence`).
        """
        try:
            m = parse_lock_message(msg)
        except BadLockMessage:
            self._dropped += 1
            raise
        self._now = now
        key = f"{instance_id}/{m['lock']}"
        row = self.rows.get(key)
        agent = self.agents.get(instance_id)
        if row is None:
            if agent is not None and agent.locks >= self.limits['max_locks_per_agent']:
                self._refuse('max_locks_per_agent', f"{instance_id!r:.60} has "
                             f"{agent.locks} locks already (--max-locks-per-agent "
                             f"{self.limits['max_locks_per_agent']}): {m['lock']!r} refused")
            if len(self.rows) >= self.limits['max_rows']:
                self._refuse('max_rows', f"the table has {len(self.rows)} rows already "
                             f"(--max-rows {self.limits['max_rows']}): {key!r:.80} refused")
        agent = self._agent(instance_id, now)
        changed = []
        self._seen(agent, now, changed)
        if m['boot'] is not None and m['boot'] != agent.boot:
            agent.boot, agent.heads = m['boot'], []     # a new process: new seq space
            agent.recent = {}
        if not agent.accept_seq(m['seq'], hash(tuple(m.values()))):
            self._dropped += 1
            self.out_of_sequence += 1
            return self._changes(changed)
        if row is None:
            agent.locks += 1
            row = self.rows[key] = {
                'lock': key, 'agent': instance_id, 'name': m['lock'], 'job': None,
                'op': None, 'session_id': None, 'since': None, 'held_since': None,
                'waiters': 0, 'token': 0, 'alive': agent.alive, 'closed': False,
                'acquired': 0, 'timed_out': 0, 'longest_hold': 0.0, 'updated': now,
                'flags': [], 'lease': None}
        self._apply(key, row, m, now)
        self._heard[key] = now
        changed.append(row)
        return self._changes(changed)

    def _take(self, key, row, m, now):
        """A grant (or snapshot) to m's holder: set the row, carrying
        held_since over a hand-over back to the same holder."""
        old, new = _holder(row), _holder(m)
        local = self._local.get(key)
        # when m's hold began, on our clock: its age when sent, counted back
        # from its arrival (a message without ``age``: from its arrival)
        since_local = None if new is None else now - (m['age'] or 0.0)
        if new is None:
            self._lender.pop(key, None)
            held_since = held_local = None
        elif old == new:
            held_since = row['held_since'] if row['held_since'] is not None else m['since']
            held_local = local[1] if local is not None and local[1] is not None \
                else since_local
        else:
            lender = self._lender.get(key)
            if old is not None and lender is None:
                # a new holder without a release in between (folded events):
                # the old one handed the lock over
                lender = self._lender[key] = (old, row['held_since'],
                                              local[1] if local else None)
            if lender is not None and lender[0] == new:
                held_since, held_local = lender[1], lender[2]
                del self._lender[key]
            else:
                held_since, held_local = m['since'], since_local
        for k in ('job', 'op', 'session_id', 'since', 'token'):
            row[k] = m[k]
        row['held_since'] = held_since
        if new is None:
            self._local.pop(key, None)
        else:
            self._local[key] = [since_local,
                                held_local if held_local is not None else since_local]

    def _apply(self, key, row, m, now):
        event = m['event']
        if event == 'acquired':
            self._count_wait(key, row, m, now)      # before the row takes m's queue
        row['waiters'] = m['waiters']
        row['lease'] = m['lease']
        if m['queue']:
            self._queues[key] = [(j, o, sid, since, now - (age or 0.0))
                                 for j, o, sid, since, age in m['queue']]
        else:
            self._queues.pop(key, None)
        row['acquired'] += m['folded_acquired']
        row['timed_out'] += m['folded_gave_up']
        if event in ('acquired', 'snapshot'):
            if event == 'acquired':
                row['acquired'] += 1
            self._take(key, row, m, now)
            row['closed'] = False
        elif event == 'released':
            if m['token'] >= row['token']:
                local = self._local.pop(key, None)
                if local is not None:
                    row['longest_hold'] = max(row['longest_hold'], now - local[0])
                    self.period.hold(key, now - local[0])
                holder = _holder(row)
                if m['waiters'] == 0:
                    self._lender.pop(key, None)     # a real end of the hold
                elif holder is not None and key not in self._lender:
                    self._lender[key] = (holder, row['held_since'],         # handed over
                                         local[1] if local else None)
                row['job'] = row['op'] = row['session_id'] = row['since'] = None
                row['held_since'] = None
                row['token'] = m['token']
        elif event == 'gave_up':
            row['timed_out'] += 1
        elif event == 'closed':
            row['closed'] = True
            self._lender.pop(key, None)
        row['updated'] = now

    def _count_wait(self, key, row, m, now):
        """How long the grant in ``m`` waited: from its entry in the lock's
        queue (our clock); 0 when the lock was free with nobody queued;
        unknown (not counted) otherwise (an agent that sends no queue)."""
        who = (m['job'], m['op'], m['session_id'])
        for job, op, sid, _since, began in self._queues.get(key, ()):
            if (job, op, sid) == who:
                self.period.wait(key, max(0.0, now - began))
                return
        if _holder(row) is None and not self._queues.get(key) and row['waiters'] == 0:
            self.period.wait(key, 0.0)

    def expire(self, now):
        """Mark stale the locks of agents silent for longer than ``expiry``."""
        self._now = now
        changed = []
        for agent in self.agents.values():
            if agent.alive and now - agent.last_seen > self.expiry:
                agent.alive = False
                for row in self._rows_of(agent.instance_id):
                    row['alive'] = False
                    row['updated'] = now
                    changed.append(row)
        return self._changes(changed)

    def forget_silent(self, now):
        """Remove the agents that went away: a stale agent that holds none of
        its locks (it stopped cleanly, or holds nothing anyone waits for),
        and any agent silent for longer than ``forget``. Returns the keys of
        the rows removed (sorted)."""
        removed = []
        for instance_id, agent in list(self.agents.items()):
            if agent.alive:
                continue
            rows = self._rows_of(instance_id)
            if now - agent.last_seen > self.forget or \
                    all(r['closed'] or _holder(r) is None for r in rows):
                del self.agents[instance_id]
                for r in rows:
                    del self.rows[r['lock']]
                    self._lender.pop(r['lock'], None)
                    self._local.pop(r['lock'], None)
                    self._queues.pop(r['lock'], None)
                    self._heard.pop(r['lock'], None)
                    self.period.forget(r['lock'])
                    removed.append(r['lock'])
        if removed:
            self.seq += 1
        return sorted(removed)

    # -- outputs ------------------------------------------------------------------

    def _rows_of(self, instance_id):
        return [r for r in self.rows.values() if r['agent'] == instance_id]

    def _out(self, row, now):
        """A copy of ``row`` with ``held_for`` as of ``now`` (None: free)."""
        out = dict(row)
        local = self._local.get(row['lock'])
        if now is None:
            now = self._now
        out['held_for'] = None if local is None or now is None else \
            round(max(0.0, now - local[1]), 3)
        if local is not None and now is not None:      # the hold in progress counts
            out['longest_hold'] = round(max(row['longest_hold'], now - local[0]), 3)
        out['flags'] = list(row.get('flags', ()))
        out['queue'] = [{'job': j, 'op': o, 'session_id': sid, 'since': since,
                         'waited_for': None if now is None else round(max(0.0, now - t), 3)}
                        for j, o, sid, since, t in self._queues.get(row['lock'], ())]
        return out

    def _changes(self, changed):
        if changed:
            self.seq += 1
        return [self._out(r, None) for r in changed]

    def snapshot(self, now=None):
        """Every row, sorted by key (copies; ``held_for`` as of ``now``, by
        default the latest time the table was given)."""
        return [self._out(self.rows[k], now) for k in sorted(self.rows)]

    def rows_by_key(self, now=None):
        """Every row keyed ``<instance-id>/<lock>`` (copies), for session.data."""
        return {k: self._out(r, now) for k, r in self.rows.items()}

    def waits(self):
        """What the wait-for graph needs (:mod:`ocs_locking.deadlock`),
        cheaply: the rows (``lock``, ``agent``, ``job``, ``session_id``,
        ``lease``, ``queue``) of the live agents that have a waiter or a
        reported SiteLock; rows of other agents cannot be in a cycle."""
        agents = {self.rows[k]['agent'] for k in self._queues if k in self.rows}
        agents |= {r['agent'] for r in self.rows.values() if r.get('lease')}
        out = []
        for key, r in self.rows.items():
            if r['agent'] in agents and r['alive'] and not r['closed']:
                out.append({'lock': key, 'agent': r['agent'], 'job': r['job'],
                            'session_id': r['session_id'], 'lease': r.get('lease'),
                            'queue': [{'job': j, 'session_id': sid}
                                      for j, _o, sid, _s, _t in self._queues.get(key, ())]})
        return out

    def silent_for(self, key, now):
        """Seconds since the latest message about lock ``key`` arrived (on
        the clock this table is given), or None for an unknown key."""
        heard = self._heard.get(key)
        return None if heard is None else max(0.0, now - heard)

    def set_flags(self, key, flags, now):
        """Set row ``key``'s ``flags`` (see :mod:`ocs_locking.flags`);
        returns the changed row (a copy) in a list, [] when unchanged."""
        row = self.rows.get(key)
        flags = list(flags)
        if row is None or row.get('flags', []) == flags:
            return []
        self._now = now
        row['flags'] = flags
        return self._changes([row])

    def held_for(self, now):
        """``{key: seconds}`` of every held lock: how long its hold has lasted
        as of ``now`` (see ``held_for`` in the module docstring)."""
        return {k: round(max(0.0, now - local[1]), 3) for k, local in self._local.items()}

    def agents_seen(self):
        """``{instance_id: {'alive', 'last_seen'}}`` of every agent in the table."""
        return {a.instance_id: {'alive': a.alive, 'last_seen': a.last_seen}
                for a in self.agents.values()}
