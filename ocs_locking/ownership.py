"""The site-wide ownership table: a pure state machine (no Twisted, no I/O).

The LockRegistryAgent feeds it what arrives on the bus — lock messages from
each agent's ``locks`` feed and heartbeats — and the clock; it answers with
the rows that changed. Rows are keyed ``<instance-id>/<lock>``; the instance
id always comes from the topic the message arrived on, never from the
message, so an agent can only ever speak about its own locks.
"""
import math
import re

from .errors import BadLockMessage
from .wire import EVENTS, ROW_KEYS

__all__ = ['OwnershipTable', 'BadLockMessage', 'EVENTS', 'ROW_KEYS']


_NAME = re.compile(r'^[A-Za-z0-9_.:-]{1,64}$')
_MAX_TEXT = 200



def _opt_text(msg, key):
    v = msg.get(key)
    if v is not None and (not isinstance(v, str) or len(v) > _MAX_TEXT):
        raise BadLockMessage(f'{key} must be a string of at most {_MAX_TEXT} '
                             f'characters or null, not {v!r:.60}')
    return v


def _int(msg, key, optional=False):
    v = msg.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BadLockMessage(f'{key} must be an integer >= 0, not {v!r:.60}')
    return v


def _time(msg, key):
    v = msg.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise BadLockMessage(f'{key} must be a time in seconds or null, not {v!r:.60}')
    return float(v)


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
    return {**folded, 'lock': name, 'event': event, 'job': _opt_text(msg, 'job'),
            'op': _opt_text(msg, 'op'), 'session_id': _int(msg, 'session_id', optional=True),
            'since': _time(msg, 'since'), 'waiters': _int(msg, 'waiters'),
            'token': _int(msg, 'token'), 'seq': _int(msg, 'seq'), 'boot': boot}


class _Agent:
    __slots__ = ('instance_id', 'last_seen', 'alive', 'seq', 'boot')

    def __init__(self, instance_id, now):
        self.instance_id = instance_id
        self.last_seen = now
        self.alive = True
        self.seq = -1
        self.boot = None


class OwnershipTable:
    """Lock ownership for a whole site.

    Args:
        expiry (float): seconds without a heartbeat (or lock message) after
            which an agent's locks are marked stale (``alive`` False).
    """

    def __init__(self, expiry=5.0):
        if not isinstance(expiry, (int, float)) or not 0 < expiry <= 3600:
            raise ValueError(f'expiry must be seconds in (0, 3600], not {expiry!r}')
        self.expiry = float(expiry)
        self.rows = {}       # key -> row dict (ROW_KEYS)
        self.agents = {}     # instance id -> _Agent
        self.seq = 0         # increases with every change set
        self.dropped = 0     # malformed or out-of-order messages

    # -- inputs -------------------------------------------------------------------

    def _agent(self, instance_id, now):
        a = self.agents.get(instance_id)
        if a is None:
            a = self.agents[instance_id] = _Agent(instance_id, now)
        return a

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
        changed = []
        self._seen(self._agent(instance_id, now), now, changed)
        return self._changes(changed)

    def lock_message(self, instance_id, msg, now):
        """A message from ``instance_id``'s own ``locks`` feed.

        Returns the rows that changed. Raises BadLockMessage for a message
        that breaks the contract (the table is left as it was).
        """
        m = parse_lock_message(msg)
        agent = self._agent(instance_id, now)
        changed = []
        self._seen(agent, now, changed)
        if m['boot'] is not None and m['boot'] != agent.boot:
            agent.boot, agent.seq = m['boot'], -1      # a new process: new seq space
        if m['seq'] <= agent.seq:
            self.dropped += 1
            return self._changes(changed)
        agent.seq = m['seq']
        key = f"{instance_id}/{m['lock']}"
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = {
                'lock': key, 'agent': instance_id, 'name': m['lock'], 'job': None,
                'op': None, 'session_id': None, 'since': None, 'waiters': 0, 'token': 0,
                'alive': agent.alive, 'closed': False, 'acquired': 0, 'timed_out': 0,
                'longest_hold': 0.0, 'updated': now}
        self._apply(row, m, now)
        changed.append(row)
        return self._changes(changed)

    @staticmethod
    def _apply(row, m, now):
        event = m['event']
        row['waiters'] = m['waiters']
        row['acquired'] += m['folded_acquired']
        row['timed_out'] += m['folded_gave_up']
        if event in ('acquired', 'snapshot'):
            if event == 'acquired':
                row['acquired'] += 1
            for k in ('job', 'op', 'session_id', 'since', 'token'):
                row[k] = m[k]
            row['closed'] = False
        elif event == 'released':
            if m['token'] >= row['token']:
                if row['since'] is not None:
                    row['longest_hold'] = max(row['longest_hold'], now - row['since'])
                row['job'] = row['op'] = row['session_id'] = row['since'] = None
                row['token'] = m['token']
        elif event == 'gave_up':
            row['timed_out'] += 1
        elif event == 'closed':
            row['closed'] = True
        row['updated'] = now

    def expire(self, now):
        """Mark stale the locks of agents silent for longer than ``expiry``."""
        changed = []
        for agent in self.agents.values():
            if agent.alive and now - agent.last_seen > self.expiry:
                agent.alive = False
                for row in self._rows_of(agent.instance_id):
                    row['alive'] = False
                    row['updated'] = now
                    changed.append(row)
        return self._changes(changed)

    # -- outputs ------------------------------------------------------------------

    def _rows_of(self, instance_id):
        return [r for r in self.rows.values() if r['agent'] == instance_id]

    def _changes(self, changed):
        if changed:
            self.seq += 1
        return [dict(r) for r in changed]

    def snapshot(self):
        """Every row, sorted by key (copies)."""
        return [dict(self.rows[k]) for k in sorted(self.rows)]
