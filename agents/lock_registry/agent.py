"""LockRegistryAgent: one live lock-ownership table for the whole site.

It listens to every agent's ``locks`` feed and heartbeat over crossbar and
keeps :class:`ocs_locking.ownership.OwnershipTable`; it publishes the
table's changes on its ``ownership`` feed, per-lock figures on the recorded
``lock_stats`` feed, and keeps a copy of the whole table in the ``monitor``
process's session.data. Everything runs on the reactor thread.
"""
import argparse
import os
import re
import time
from collections import deque

import txaio
from autobahn.twisted.util import sleep as dsleep
from ocs import ocs_agent, site_config
from twisted.internet.defer import inlineCallbacks

from ocs_locking.agents.lock_registry import director as access_director
from ocs_locking.agents.lock_registry import history as history_db
from ocs_locking.agents.lock_registry.buswatch import BusWatch
from ocs_locking.agents.lock_registry.bookings import BookingOps
from ocs_locking.agents.lock_registry.deadlocks import DeadlockWatch
from ocs_locking.agents.lock_registry.leases import (RID_BLOCK, LeaseOps, add_arguments,
                                                     check_arguments,
                                                     load_access_file, resolve_db,
                                                     resource_tree, site_agents, site_dir)
from ocs_locking.agents.lock_registry.lease_feed import LeaseFeed
from ocs_locking.agents.lock_registry.lease_pages import with_expires_in
from ocs_locking.agents.lock_registry import standby as standby_mode
from ocs_locking.agents.lock_registry.replication import ReplicaServer, after_sync
from ocs_locking.agents.lock_registry.sessions import SessionMap
from ocs_locking.errors import LeaseStoreError
from ocs_locking.flags import STUCK_MIN, alert_blocks, count_flags, lease_lengths, lock_flags
from ocs_locking.ownership import LIMITS, BadLockMessage, OwnershipTable, Refused
from ocs_locking.stats import PERIOD_FIELDS, PeriodStats
from ocs_locking.wamp import JoinEdge
from ocs_locking.why import explain
from ocs_locking.wire import (ALERTS_FEED, BUS_KEY, HEALTH_KEY, HEARTBEAT_FEED, LOCKS_FEED, MESSAGE_BUDGET,
                              OWNERSHIP_FEED, PAYLOAD_LIMIT, STATS_FEED, TABLE_KEY, feed_topic,
                              json_size, split_rows)

#: Fields of every ``lock_stats`` block (InfluxDB fields; the lock or
#: lease, its agent and its kind are tags): the state now, counters that
#: only grow, and the holds and waits that ended since the block's last
#: record (:data:`ocs_locking.stats.PERIOD_FIELDS`).
STATS_FIELDS = ('held', 'waiters', 'held_for', 'acquired', 'timed_out', 'refused',
                'alive') + PERIOD_FIELDS
#: The ``agent`` tag of a site lease's ``lock_stats`` blocks.
LEASE_AGENT = 'site-lease'

#: Rows kept in the ``monitor`` session.data (the rest: ``status`` pages),
#: and the most rows one ``status`` page returns.
SESSION_ROWS = PAGE_ROWS = 1000
#: The most rows of the lease tables in the ``status`` task's ``leases``
#: block (the ``leases`` task pages through them all).
STATUS_LEASE_ROWS = 100
#: Removed keys per ownership message (a key is at most ~130 octets).
REMOVED_PER_MESSAGE = 2000
#: A dropped message's reason is logged at most once per this many seconds
#: (with how many were dropped for it meanwhile).
DROP_LOG_EVERY = 10.0
#: While the bus is being checked (the first milliseconds after a join),
#: lock events and heartbeats are held, in arrival order, and judged when the
#: check ends: at most HOLD_MESSAGES messages and HOLD_BYTES octets of JSON.
HOLD_MESSAGES = 1000
HOLD_BYTES = 4 * MESSAGE_BUDGET
#: The reason a message is dropped when the held messages are at a bound.
OVERFLOW = 'pending overflow'
#: Seconds a job's usual hold (from the lock history) is reused for flags.
USUAL_CACHE = 60.0


def _slug(key):
    return re.sub(r'[^A-Za-z0-9_]', '_', key)


class LockRegistryAgent:
    """Gathers every agent's lock state into one table.

    Args:
        agent (OCSAgent): from ``ocs_agent.init_site_agent``.
        address_root (str): the site's address root (``observatory``).
        expiry (float): seconds without a heartbeat before an agent's locks
            are marked stale.
        forget (float): seconds without a heartbeat before a stale agent's
            rows are removed (at once for an agent that holds none of its locks).
        snapshot_every (float): seconds between full snapshots on ``ownership``.
        stats_every (float): seconds between ``lock_stats`` records.
        reactor: the Twisted reactor (default: the global one).
        limits (dict): the table's caps (``max_agents``,
            ``max_locks_per_agent``, ``max_rows``; default
            :data:`ocs_locking.ownership.LIMITS`).
        session_rows (int): rows kept in the ``monitor`` session.data.
        page_rows (int): the most rows of one ``status`` page.
        budget (int): octets of JSON one message, page or session.data
            table may take (default :data:`ocs_locking.wire.MESSAGE_BUDGET`).
    """

    def __init__(self, agent, address_root='observatory', expiry=5.0,
                 snapshot_every=5.0, stats_every=10.0, reactor=None, forget=600.0,
                 limits=None, session_rows=SESSION_ROWS, page_rows=PAGE_ROWS,
                 budget=MESSAGE_BUDGET):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.agent = agent
        self.log = agent.log
        self.root = address_root
        self.table = OwnershipTable(expiry=expiry, forget=forget, **dict(LIMITS, **(limits or {})))
        self.session_rows, self.page_rows, self.budget = session_rows, page_rows, budget
        self.drops = {}             # reason -> messages dropped for it
        self._drop_log = {}         # reason -> [time logged, dropped since]
        self._refusal_logged = set()    # caps whose refusal was logged
        address = getattr(agent, 'agent_address', None) or f'{address_root}.lock-registry'
        self.instance_id = address.split('.', 1)[-1]
        self.sessions = SessionMap(address_root)
        self._held = deque()        # (handler, data, details) while the bus is checked
        self._held_bytes = 0
        self.bus = BusWatch(agent, self.sessions, address_root, self.instance_id,
                            on_gone=self._on_gone, on_lost=self._on_lost,
                            on_settled=self._judge_held, reactor=reactor)
        self.snapshot_every = snapshot_every
        self.stats_every = stats_every
        self._pending = []          # changed rows (copies) not yet published
        self._removed = []          # keys of rows removed, not yet published
        self._flush_call = None
        self._join = JoinEdge(agent)
        self.leases = None          # LeaseOps, when site-wide leases are served
        self.director = None        # LeaseDirector, with --access-director
        #: usual(lock_key, job) -> {'n', 'median', 'p90'} of that job's past
        #: holds, or None (the ``why`` task's hint; None: no statistics)
        self.usual_hold = None
        self.lease_feed = None      # LeaseFeed: the leases on ``ownership`` (serve_lease_feed)
        #: holds, waits, grants and timeouts of site leases (watch_lease_stats)
        self.lease_stats = PeriodStats()
        self._leases_touched = set()    # resources with news since the last lease records
        self._lease_records = []        # (lock_stats records of leases) left for later parts
        self._usual_cache = {}      # (lock, job) -> (when asked, usual or None)
        self._expiring = set()      # (resource, token) of the leases flagged expiring
        self._alerts = None         # the latest alerts counts published
        self._alerts_at = None      # when they were published
        #: {kind: (count, worst seconds)} of the flags now (monitor's ``alerts``)
        self.alert_counts = None
        #: LockHistory: spans of agent locks (None: --no-history)
        self.lock_history = None
        #: the ReplicaServer (a primary) or Standby (--standby-for): its
        #: ``status()`` is the ``replication`` block of ``status``
        self.replication = None
        self._session = None
        #: cycles of waits across agents' locks and site leases (watch_deadlocks)
        self.deadlocks = DeadlockWatch(self.table, None, time.time, self._deadlocks_changed,
                                       reactor, self.log)
        agent.register_feed(OWNERSHIP_FEED, record=False, max_messages=100)
        agent.register_feed(STATS_FEED, record=True,
                            agg_params={'frame_length': 60}, buffer_time=0)
        agent.register_feed(ALERTS_FEED, record=True,
                            agg_params={'frame_length': 60}, buffer_time=0)
        options = {'match': 'wildcard', 'details_arg': 'details'}
        agent.subscribe_on_start(self._on_locks, feed_topic(address_root, '', LOCKS_FEED), options)
        agent.subscribe_on_start(self._on_heartbeat, feed_topic(address_root, '', HEARTBEAT_FEED),
                                 options)

    # -- bus input (reactor thread) ---------------------------------------------

    def _instance(self, details, feed_info, feed):
        """The agent a feed message is from, checked against its topic."""
        topic = getattr(details, 'topic', None) or ''
        parts = topic.split('.')
        if len(parts) != 4 or parts[0] != self.root or parts[2:] != ['feeds', feed]:
            raise BadLockMessage(f'unexpected topic {topic!r}')
        instance_id = parts[1]
        address = f'{self.root}.{instance_id}'
        if not isinstance(feed_info, dict) or feed_info.get('agent_address') != address \
                or feed_info.get('feed_name') != feed:
            claimed = feed_info.get('agent_address') if isinstance(feed_info, dict) else None
            raise BadLockMessage(f'feed info claims {claimed!r}, but the message came '
                                 f'on {topic}')
        return instance_id

    @staticmethod
    def _unpack(data):
        if not isinstance(data, (list, tuple)) or len(data) != 2:
            raise BadLockMessage('a feed message must be [message, feed_info]')
        return data

    def _unattributed(self, instance_id, details):
        """Why a message on ``instance_id``'s feed cannot be taken as its
        own (None: it can). Only a verified bus can say who published."""
        if self.bus.state != 'verified':
            return None
        holder = self.sessions.session_of(instance_id)
        if holder is None:
            return 'no session holds the agent\'s ops registration'
        publisher = getattr(details, 'publisher', None)
        if publisher is None:
            return 'publisher not disclosed'
        if publisher != holder:
            return 'published by a session that is not the agent\'s'
        return None

    def _hold(self, handler, feed, data, details):
        """Keep a message that came while the bus is checked (True), or drop
        and count it when the held messages are at a bound."""
        size = json_size(data)
        if len(self._held) >= HOLD_MESSAGES or self._held_bytes + size > HOLD_BYTES:
            self._count_drop(f'{feed}: {OVERFLOW}', details)
            if feed == LOCKS_FEED:
                self.table.count_dropped()
            self._dropped(details, BadLockMessage(
                f'{feed}: {OVERFLOW} (more than {HOLD_MESSAGES} messages or '
                f'{HOLD_BYTES} octets came while the bus was checked)'))
            return
        self._held.append((handler, data, details))
        self._held_bytes += size

    def _judge_held(self):
        """The bus check ended (verified or not, or timed out) or the
        session left: judge the held messages, in arrival order, by the
        rule of the bus as it is now."""
        held, self._held, self._held_bytes = self._held, deque(), 0
        while held:
            handler, data, details = held.popleft()
            handler(data, details)

    def _on_locks(self, data, details=None):
        if self.bus.state == 'pending':
            self._hold(self._on_locks, LOCKS_FEED, data, details)
            return
        try:
            message, feed_info = self._unpack(data)
            instance_id = self._instance(details, feed_info, LOCKS_FEED)
            why = self._unattributed(instance_id, details)
            if why is not None:
                self._count_drop(f'{LOCKS_FEED}: {why}', details)
                raise BadLockMessage(why)
        except BadLockMessage as e:
            self.table.count_dropped()      # refused here, before the table saw it
            self._dropped(details, e)
            return
        out_of_sequence = self.table.out_of_sequence
        try:
            changes = self.table.lock_message(instance_id, message, time.time())
        except Refused as e:                # counted by the table
            self._refused(e)
            return
        except BadLockMessage as e:         # counted by the table
            self._count_drop(f'{LOCKS_FEED}: malformed', None)
            self._dropped(details, e)
            return
        if self.table.out_of_sequence != out_of_sequence:
            self._count_drop(f'{LOCKS_FEED}: out of sequence', details)
        self._publish(changes)
        self.deadlocks.rows_changed(changes)

    def _dropped(self, details, err):
        """One log line per dropped lock message, rate-limited per reason."""
        reason = str(err)
        now = self.reactor.seconds() if hasattr(self.reactor, 'seconds') else time.monotonic()
        entry = self._drop_log.get(reason)
        if entry is not None and now - entry[0] < DROP_LOG_EVERY:
            entry[1] += 1
            return
        since = entry[1] if entry is not None else 0
        self._drop_log[reason] = [now, 0]
        if len(self._drop_log) > 1000:          # reasons name topics: keep it bounded
            self._drop_log = {reason: self._drop_log[reason]}
        more = f' ({since} more dropped for it in the last {DROP_LOG_EVERY:g} s)' if since else ''
        self.log.warn('dropped lock message on {topic}: {err}{more}',
                      topic=getattr(details, 'topic', '?'), err=reason, more=more)

    def _count_drop(self, reason, details):
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _refused(self, err):
        if err.cause not in self._refusal_logged:
            self._refusal_logged.add(err.cause)
            self.log.warn('refused: {err} (logged once per cap; counts in the bus status)',
                          err=str(err))

    def _on_heartbeat(self, data, details=None):
        if self.bus.state == 'pending':
            self._hold(self._on_heartbeat, HEARTBEAT_FEED, data, details)
            return
        try:
            _, feed_info = self._unpack(data)
            instance_id = self._instance(details, feed_info, HEARTBEAT_FEED)
        except BadLockMessage:
            return          # not ours to judge: the ocs registry watches heartbeats
        why = self._unattributed(instance_id, details)
        if why is not None:
            self._count_drop(f'{HEARTBEAT_FEED}: {why}', details)
            self._dropped(details, BadLockMessage(f'heartbeat: {why}'))
            return
        try:
            self._publish(self.table.heartbeat(instance_id, time.time()))
        except Refused as e:
            self._refused(e)

    def _on_gone(self, instance_id):
        """The bus says the agent's session ended: its locks are not alive
        now, on the table, the ownership feed and the monitor's data."""
        changes = self.table.gone(instance_id, time.time())
        if changes:
            self.log.info('{agent} left the bus: its {n} lock(s) marked not alive',
                          agent=instance_id, n=len(changes))
            self._publish(changes)
            self.deadlocks.poke()

    def _on_lost(self, registration_id):
        """The router dropped one of the registry's registrations: the
        registrar registers it again."""
        registrar = getattr(self.leases, '_registrar', None) if self.leases else None
        if registrar is not None:
            registrar.lost(registration_id)

    def bus_status(self):
        """The ``bus`` block of the session data (:data:`ocs_locking.wire.BUS_KEY`)."""
        dropped = dict(self.drops)
        for cause, n in self.table.refused.items():
            dropped[f'refused: {cause}'] = n
        for reason, n in self.sessions.bad.items():
            dropped[f'meta: {reason}'] = n
        return dict(self.bus.summary(), dropped=dropped, limits=self.limits())

    def limits(self):
        return dict(self.table.limits, session_rows=self.session_rows,
                    page_rows=self.page_rows, message_budget=self.budget,
                    payload_limit=PAYLOAD_LIMIT)

    # -- output -------------------------------------------------------------------

    def _publish(self, changes, removed=()):
        """Queue changed rows (copies) and removed keys; publish them, in
        order, at the end of this reactor turn (every change is kept, so a
        short hold is seen too)."""
        if not changes and not removed:
            return
        if self.lock_history is not None:
            self.lock_history.observe(changes, removed, time.time())
        # changes come before the removals of the same call; a row seen
        # again after its removal is a row again
        seen = {r['lock'] for r in changes}
        self._removed = [k for k in self._removed if k not in seen]
        self._pending.extend(changes)
        if removed:
            gone = set(removed)
            self._pending = [r for r in self._pending if r['lock'] not in gone]
            self._removed.extend(k for k in removed if k not in self._removed)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self):
        self._flush_call = None
        rows, self._pending = self._pending, []
        removed, self._removed = sorted(self._removed), []
        # one change set may be cut in parts, each within the budget
        parts = split_rows(rows, self.budget)
        gone = [removed[i:i + REMOVED_PER_MESSAGE]
                for i in range(0, len(removed), REMOVED_PER_MESSAGE)] or [[]]
        n = max(len(parts), len(gone))
        now = time.time()
        for i in range(n):
            message = {'kind': 'change', 'seq': self.table.seq, 'timestamp': now,
                       'rows': parts[i] if i < len(parts) else [],
                       'removed': gone[i] if i < len(gone) else []}
            if n > 1:
                message.update(part=i, parts=n)
            self.agent.publish_to_feed(OWNERSHIP_FEED, message)
        session = self._session
        if session is not None:
            locks = session.data.setdefault(TABLE_KEY, {})
            for key in removed:
                locks.pop(key, None)
            for row in rows:
                if row['lock'] in locks or len(locks) < self.session_rows:
                    locks[row['lock']] = dict(row)
            session.data.update(seq=self.table.seq, dropped=self.table.dropped,
                                total=len(self.table.rows))

    def _publish_snapshot(self):
        """The whole table on ``ownership``, in parts within the budget:
        ``{'kind': 'snapshot', 'seq', 'part': i, 'parts': n, 'total',
        'rows'}`` (a watch replaces its table once it has every part of one
        ``seq``)."""
        now = time.time()
        rows = self.table.snapshot(now)
        parts = split_rows(rows, self.budget)
        for i, part in enumerate(parts):
            self.agent.publish_to_feed(OWNERSHIP_FEED, {
                'kind': 'snapshot', 'seq': self.table.seq, 'timestamp': now,
                'part': i, 'parts': len(parts), 'total': len(rows), 'rows': part})
        if self.lease_feed is not None:
            self.lease_feed.publish()       # a watch has the leases within one period

    def serve_lease_feed(self, leases):
        """Publish ``leases``' state on ``ownership`` too (kind ``leases``,
        see :mod:`.lease_feed`): at each change and after each snapshot."""
        self.lease_feed = LeaseFeed(self.agent, leases, self.reactor)
        return self.lease_feed

    def _deadlocks_changed(self):
        """A cycle appeared or went: flags, alerts and the monitor's data now."""
        self._flag(time.time())
        self._update_session()

    def watch_deadlocks(self, leases):
        """Follow waits into ``leases`` too (their grants and queue) when
        looking for deadlocks (:mod:`.deadlocks`)."""
        self.deadlocks.leases = leases.state.snapshot
        self.deadlocks.waiting = leases.state.waiting
        leases.state.add_listener(self.deadlocks.lease_changed)

    def watch_lease_stats(self, leases):
        """Count the site leases' grants, holds, waits, expiries (from the
        lease state's changes) and refusals for their ``lock_stats`` blocks."""
        def on_change(action, item):
            now = leases.clock()
            if action == 'grant':
                for g in item.grants:
                    self.lease_stats.count(g.resource, 'acquired')
                    self.lease_stats.wait(g.resource, item.queued_for or 0.0)
                    self._leases_touched.add(g.resource)
            elif action in ('release', 'expire', 'force_release'):
                self.lease_stats.hold(item.resource, now - item.granted_at)
                if action == 'expire':
                    self.lease_stats.count(item.resource, 'timed_out')
                self._leases_touched.add(item.resource)
        leases.state.add_listener(on_change)

    def _record(self, now, slug, values, lock, agent, kind):
        data = {f'{slug}_{k}': v for k, v in values.items()}
        tags = {f'{slug}_{k}': {'lock': lock, 'agent': agent, 'kind': kind, '_field': k}
                for k in values}
        self.agent.publish_to_feed(STATS_FEED, {'block_name': slug, 'timestamp': now,
                                                'data': data, 'influxdb_tags': tags})
        # ocs's Feed keeps a Block per block name for ever and clears every
        # one of them at each flush: with a block per lock and per lease
        # resource, each record cost O(every name ever recorded), and a
        # registry that had seen thousands of resources stalled its reactor
        # for a large part of each stats period. The feed flushes each
        # message as it comes (buffer_time 0), so the emptied block is dropped
        # (ocs makes it again, same keys, at the next record).
        feed = getattr(self.agent, 'feeds', {}).get(STATS_FEED)
        block = getattr(feed, 'blocks', {}).get(slug)
        if block is not None and getattr(feed, 'buffer_time', None) == 0 \
                and not block.timestamps:
            del feed.blocks[slug]

    def _publish_stats(self, part=0, parts=1, rows=None, now=None):
        """Record figures for one slice of the locks (all when parts == 1), so
        a big site's records are spread over the stats period; the site
        leases with the first slice. ``rows``: the table's snapshot as of
        ``now``, when the caller has one (the monitor's tick)."""
        if rows is None:
            now = time.time()
            rows = self.table.snapshot(now)
        for row in rows[part::parts]:
            values = {
                'held': int(row['job'] is not None or row['since'] is not None),
                'waiters': row['waiters'],
                'held_for': row['held_for'] or 0.0,
                'acquired': row['acquired'],
                'timed_out': row['timed_out'],
                'refused': row['timed_out'],    # an operation refused its lock gave up
                'alive': int(row['alive']),
                **self.table.period.take(row['lock']),
            }
            self._record(now, _slug(row['lock']), values, row['lock'], row['agent'], 'lock')
        if self.leases is not None:
            if part == 0:
                self._lease_records = self._lease_stats(now)
            # the site leases' records are spread over the parts too
            left = parts - part
            batch = self._lease_records[:-(-len(self._lease_records) // left)]
            del self._lease_records[:len(batch)]
            for record in batch:
                self._record(*record)

    def _lease_stats(self, now):
        """The lock_stats records of the site leases with news this period
        (held, waited for, or touched): ``[(now, slug, values, resource,
        agent, 'lease')]``, by resource."""
        clock = self.leases.clock()
        snapshot = self.leases.state.snapshot()
        held = {g['resource']: g for g in snapshot['grants']}
        waiting = {}
        for w in snapshot['waiting']:
            for r in w['resources']:
                waiting[r] = waiting.get(r, 0) + 1
        refusals = self.leases.refusal_counts
        touched, self._leases_touched = self._leases_touched, set()
        records = []
        for resource in sorted(set(held) | set(waiting) | touched | self.lease_stats.pending()):
            g = held.get(resource)
            values = {
                'held': int(g is not None),
                'waiters': waiting.get(resource, 0),
                'held_for': round(max(0.0, clock - g['granted_at']), 3) if g else 0.0,
                'acquired': self.lease_stats.counter(resource, 'acquired'),
                'timed_out': self.lease_stats.counter(resource, 'timed_out'),
                'refused': refusals.get(resource, 0),
                'alive': 1,
                **self.lease_stats.take(resource),
            }
            records.append((now, 'lease_' + _slug(resource), values, resource, LEASE_AGENT,
                            'lease'))
        return records

    def _usual(self, row, now):
        key = (row['lock'], row['job'])
        hit = self._usual_cache.get(key)
        if hit is None or now - hit[0] > USUAL_CACHE:
            hit = self._usual_cache[key] = (now, self.usual_hold(*key))
            if len(self._usual_cache) > 4 * self.table.limits['max_rows']:
                self._usual_cache = {key: hit}
        return hit[1]

    def _flag(self, now, rows=None):
        """Flag what is stuck or unusual (:mod:`ocs_locking.flags`): set
        the rows' ``flags`` (publishing the rows whose flags changed),
        publish the leases when one starts or stops expiring, and record the
        ``alerts`` blocks when a count changed or every ``stats_every``.
        Returns the counts (``{kind: (count, worst seconds)}``). ``rows``:
        the table's snapshot as of ``now``, when the caller has one."""
        flagged, changed = [], []
        dead_locks, dead_leases = self.deadlocks.flagged()
        for row in self.table.snapshot(now) if rows is None else rows:
            usual = None
            if self.usual_hold is not None and row['job'] is not None \
                    and (row['held_for'] or 0.0) > STUCK_MIN:
                usual = self._usual(row, now)
            silent = self.table.silent_for(row['lock'], now)
            flags = lock_flags(row, usual, silent)
            if row['lock'] in dead_locks:
                flags = tuple(flags) + ('deadlock',)
            changed += self.table.set_flags(row['lock'], flags, now)
            if flags:
                flagged.append(dict(row, flags=list(flags), silent_for=silent,
                                    deadlock_for=dead_locks.get(row['lock'])))
        self._publish(changed)
        grants = []
        if self.leases is not None:
            grants = self.leases.state.snapshot()['grants']
            clock = self.leases.clock()
            lengths = self.leases.lease_lengths = lease_lengths(
                with_expires_in(grants, clock), self.leases.lease_lengths)
            self.leases.flagged_leases = {r: ['deadlock'] for r in dead_leases}
            grants = with_expires_in(grants, clock, lengths, self.leases.flagged_leases)
            for g in grants:
                if g['resource'] in dead_leases:
                    g['deadlock_for'] = dead_leases[g['resource']]
            expiring = {(g['resource'], g['token'], tuple(g['flags']))
                        for g in grants if g.get('flags')}
            if expiring != self._expiring:
                self._expiring = expiring
                if self.lease_feed is not None:
                    self.lease_feed.publish()
        counts = self.alert_counts = count_flags(flagged + grants)
        numbers = {kind: n for kind, (n, _) in counts.items()}
        if numbers != self._alerts or self._alerts_at is None \
                or now - self._alerts_at >= self.stats_every:
            # at once when a count changed (the worst only grows meanwhile)
            self._alerts, self._alerts_at = numbers, now
            for kind, data in alert_blocks(counts).items():
                # InfluxDB: measurement LockRegistryAgent, tags feed=alerts and
                # alert=<kind>, fields count and worst_s
                tags = {k: {'alert': kind, '_field': k[len(kind) + 1:]} for k in data}
                self.agent.publish_to_feed(ALERTS_FEED, {'block_name': kind, 'timestamp': now,
                                                         'data': data, 'influxdb_tags': tags})
        return counts

    def _update_session(self):
        session = self._session
        if session is None:
            return
        now = time.time()
        # held_for counts on in the copy read over HTTP (ocs-locks status),
        # to within one tick
        held = self.table.held_for(now)
        locks = session.data.get(TABLE_KEY, {})
        total = len(self.table.rows)
        if len(locks) < min(total, self.session_rows):
            # rows left the table while it was bigger than the session's copy:
            # fill the copy again (the first rows by key)
            session.data[TABLE_KEY] = locks = self.session_table(now)
        for key, row in locks.items():
            if key in held:
                row['held_for'] = held[key]
        agents = self.table.agents_seen()
        if len(agents) > self.session_rows:
            agents = {k: agents[k] for k in sorted(agents)[:self.session_rows]}
        session.data.update({
            'seq': self.table.seq, 'dropped': self.table.dropped, 'timestamp': now,
            'agents': agents, 'total': total, 'agents_total': len(self.table.agents),
            BUS_KEY: self.bus_status()})
        if self.leases is not None:
            session.data[HEALTH_KEY] = self.leases.health()
        if self.replication is not None:
            session.data['replication'] = self.replication.status()
        if self.alert_counts is not None:
            session.data['alerts'] = {kind: {'count': n, 'worst_s': worst}
                                      for kind, (n, worst) in self.alert_counts.items()}
        session.data['deadlocks'] = self.deadlocks.public()

    def session_table(self, now=None):
        """The rows the monitor's session.data keeps: the first
        ``session_rows`` by key, within the budget (``total`` says how many
        there are; ``status`` pages through them all)."""
        rows = split_rows(self.table.snapshot(now)[:self.session_rows], self.budget)[0]
        return {r['lock']: r for r in rows}

    # -- operations -----------------------------------------------------------------

    @inlineCallbacks
    def monitor(self, session, params):
        """monitor()

        **Process** - Keep the site's lock table: mark the locks of agents
        whose session left the bus (at once) or whose heartbeats stopped
        as stale, remove the rows of agents that
        went away (at once when they hold none of their locks, else after
        ``--forget`` seconds of silence), publish snapshots on ``ownership``
        (each followed by the site leases, kind ``leases``) and figures on
        ``lock_stats``. Started at startup.

        Notes:
            A copy of the whole table is kept in session.data, keyed
            ``<instance-id>/<lock>`` (``held_since``: the first grant of a
            hold lent to others for a moment; ``since``: the latest; both on
            the agent's clock; ``held_for``: seconds the hold had lasted when
            the row was written, measured without comparing clocks)::

                >>> response.session['data']
                {'locks': {'sim-device-1/hw': {
                    'lock': 'sim-device-1/hw', 'agent': 'sim-device-1', 'name': 'hw',
                    'job': 'acq', 'op': 'acq', 'session_id': 0,
                    'since': 1700000090.0, 'held_since': 1700000000.0,
                    'held_for': 100.0, 'waiters': 0, 'token': 42, 'alive': True,
                    'closed': False, 'acquired': 42, 'timed_out': 0,
                    'longest_hold': 100.0, 'updated': 1700000100.0, 'queue': [],
                    'flags': []}},
                 'agents': {'sim-device-1': {'alive': True, 'last_seen': 1700000100.0}},
                 'seq': 1234, 'dropped': 0, 'timestamp': 1700000100.2,
                 'total': 1, 'agents_total': 1,
                 'bus': {'verified': True, 'reason': None, 'session': 7215,
                         'dropped': {"locks: published by a session that is not "
                                     "the agent's": 3},
                         'limits': {'max_agents': 1000, 'max_locks_per_agent': 64,
                                    'max_rows': 10000, 'session_rows': 1000,
                                    'page_rows': 1000, 'message_budget': 1048576,
                                    'payload_limit': 16777216}},
                 'lease_health': {'storage': {'ok': True, 'error': None},
                                  'procedures': {'registered': True, 'missing': []}},
                 'alerts': {'stuck': {'count': 0, 'worst_s': 0.0},
                            'silent': {'count': 0, 'worst_s': 0.0},
                            'expiring': {'count': 0, 'worst_s': 0.0},
                            'deadlock': {'count': 2, 'worst_s': 3.2}},
                 'deadlocks': [{'text': 'deadlock: sim-1 acq (session 3) holds '
                                        'sim-1/hw, waits for demo/hwp (site lease) '
                                        'held by ops-console, which waits for sim-1/hw',
                                'parties': ['sim-1 acq (session 3)', 'ops-console'],
                                'locks': ['sim-1/hw'], 'leases': ['demo/hwp'],
                                'local': True, 'for': 3.2}]}

            ``locks`` keeps at most ``--session-rows`` rows (the first by
            key; ``total`` is the table's size: ``status`` pages through
            every row). ``bus``: whether the router is verified to enforce
            who publishes on each agent's feeds (``reason`` when not: then
            forged events cannot be told apart and liveness comes from
            heartbeats only), the registry's own WAMP session (the only
            publisher of ``ownership``), messages dropped by reason, and the
            caps.

            ``lease_health`` (refreshed every tick, when the registry serves
            site-wide leases) is what ``ocs-locks status`` warns about: lease
            storage failing, lease procedures not registered.

            Every tick the monitor also flags what is stuck or unusual
            (:mod:`ocs_locking.flags`): a row's ``flags`` say ``stuck`` (held
            far beyond that job's usual, from the lock history) or
            ``silent`` (no lock message from a live agent for 20 s), a
            lease's ``expiring`` (under a quarter of its lease left); a row
            whose flags change goes out on ``ownership``. ``alerts`` counts
            them with the worst (longest held or silent, least left), and
            the recorded ``alerts`` feed gets one block per kind
            (``stuck``, ``silent``, ``expiring``, ``deadlock``; fields ``<kind>_count``
            and ``<kind>_worst_s``) when a count changes and every
            ``--stats-every`` seconds. ``longest_hold`` includes the hold in
            progress.

            ``deadlocks``: every cycle of waits across agents' locks and
            site leases (:mod:`ocs_locking.deadlock`), oldest first, each
            spelled out with the locks and leases it runs through and how
            long it has been seen (``for``). Found within ~50 ms of the
            message that closes it; its rows and leases are flagged
            ``deadlock``. A lease request that would close a cycle of site
            leases alone is refused instead.

        """
        session.set_status('running')
        session.data = {TABLE_KEY: self.session_table(time.time())}
        self._session = session
        self._update_session()
        last_snapshot = 0.0
        tick = min(1.0, self.table.expiry / 5)
        parts = max(1, round(self.stats_every / tick))
        n = 0
        while session.status == 'running':
            now = time.time()
            self._join.poll()       # turns Nagle off on a new connection
            self._publish(self.table.expire(now), self.table.forget_silent(now))
            if now - last_snapshot >= self.snapshot_every:
                last_snapshot = now
                self._publish_snapshot()
            rows = self.table.snapshot(now)     # one copy of the table per tick
            self._publish_stats(n % parts, parts, rows, now)
            self.deadlocks.check()
            self._flag(now, rows)
            n += 1
            if self.lock_history is not None:
                self.lock_history.flush(now)
            self._update_session()
            yield dsleep(tick)
        self._session = None
        return True, 'Monitor stopped.'

    @inlineCallbacks
    def _stop_monitor(self, session, params):
        yield
        if session.status == 'running':
            session.set_status('stopping')
            return True, 'Stopping the monitor.'
        return False, 'The monitor is not running.'

    @ocs_agent.param('offset', default=0, type=int, check=lambda n: 0 <= n <= 10 ** 9)
    @ocs_agent.param('limit', default=PAGE_ROWS, type=int, check=lambda n: 1 <= n <= 10 ** 6)
    def status(self, session, params):
        """status(offset=0, limit=1000)

        **Task** - Return one page of the lock table now (rows sorted by
        lock), with the total, so that a client can read every page.

        Parameters:
            offset (int): the first row (0-based) of the page.
            limit (int): the most rows of the page (at most the registry's
                ``--page-rows``; fewer when the rows would take more than
                its message budget).

        Notes:
            session.data holds the page::

                >>> response.session['data']
                {'locks': [{'lock': 'sim-device-1/hw', 'agent': 'sim-device-1',
                            'job': 'acq', 'session_id': 0, 'since': 1700000000.0,
                            'waiters': 0, 'alive': True, ...}],
                 'total': 1, 'offset': 0, 'seq': 1234, 'dropped': 0,
                 'bus': {'verified': True, 'reason': None, 'session': 7215,
                         'dropped': {}, 'limits': {'max_agents': 1000, ...}},
                 'leases': {'grants': [...], 'waiting': [...], 'counters': {...},
                            'offset': 0, 'total': 3, 'grants_total': 1,
                            'waiting_total': 0, 'counters_total': 2,
                            'storage': {'ok': True, 'error': None, 'path': ..., ...}},
                 'lease_procedures': {'registered': True, 'missing': [], 'errors': {}},
                 'resources': {'adhoc': False, 'source': '/site/resources.yaml',
                               'resources': [{'path': 'demo/hwp',
                                              'instances': ['fake-hwp'], ...}]}}

            ``total`` is the number of rows in the table: the page is
            ``locks[offset:offset + len(locks)]`` of it. ``bus`` says
            whether the bus is verified (see the monitor). ``leases`` holds
            the first rows (at most 100, within a quarter of the message
            budget) of the lease tables, as the ``leases`` task's first page
            does, with its totals: the ``leases`` task pages through the
            rest. ``lease_procedures``
            says whether the lease procedures are registered on the router
            now (``missing`` names the others, ``errors`` why each failed
            last; they are retried until held). ``resources`` is the
            declared resource tree (``--resources``; see docs/resources.rst;
            none declared and ``adhoc`` true without it).

        """
        rows = self.table.snapshot(time.time())
        params = params or {}
        offset = params.get('offset', 0)
        limit = min(params.get('limit', PAGE_ROWS), self.page_rows)
        bus = self.bus_status()
        data = {'total': len(rows), 'offset': offset,
                'seq': self.table.seq, 'dropped': self.table.dropped, BUS_KEY: bus}
        if self.replication is not None:
            data['replication'] = self.replication.status()
        if self.leases is not None:
            # the first rows of the lease tables, in a quarter of the budget
            # (the totals say how many; the leases task pages through them)
            storage = self.leases.storage()
            block = self.leases.lease_page(0, STATUS_LEASE_ROWS,
                                           self.budget // 4 - json_size(storage))
            data['leases'] = dict(block, storage=storage)
            data['lease_procedures'] = procs = self.leases.procedures()
            data[HEALTH_KEY] = self.leases.health()
            # the declared resources (public; at most an eighth of the budget)
            data['resources'] = self.leases.resources.as_dict()
        if self.director is not None:
            data['access_director'] = self.director.status()
        if self.lock_history is not None:
            data['lock_history'] = self.lock_history.status()
        data['deadlocks'] = self.deadlocks.public()[:20]
        # the lock rows in what is left of the budget
        page = split_rows(rows[offset:offset + limit], self.budget - json_size(data))[0]
        session.data = dict({TABLE_KEY: page}, **data)
        agents = {r['agent'] for r in rows}
        text = f'{len(rows)} lock(s) from {len(agents)} agent(s).'
        if len(page) < len(rows):
            text += f' Rows {offset}..{offset + len(page) - 1} of {len(rows)} here.' \
                if page else f' No rows from {offset} (of {len(rows)}).'
        if not bus['verified']:
            text += f" Bus not verified: {bus['reason']}."
        if data.get('replication', {}).get('role') == 'standby':
            f = data['replication']['follower']
            text += f" Standby for {data['replication']['service']}: {f['state']}" + (
                f" (batch {f['seq']})." if f['seq'] is not None else '.')
        if self.leases is not None and not procs['registered']:
            text += f" Lease procedures not registered: {', '.join(procs['missing'])}" \
                    f" (retrying until held)."
        return True, text

    @ocs_agent.param('target', type=str)
    def why(self, session, params):
        """why(target)

        **Task** - Say why a lock or a site resource is busy, in a few lines:
        who holds it and since when, what that holder is itself waiting for
        (the chain across agents' locks and site leases), who waits and in
        what order, and how long the holder's holds usually last.

        Parameters:
            target (str): a lock (``sim-device-1/hw``), an agent's
                instance-id (each of its locks), or a site resource
                (``demo/hwp``).

        Notes:
            session.data holds the answer (see :func:`ocs_locking.why.explain`)::

                >>> response.session['data']
                {'why': {'target': 'sim-device-1/hw', 'kind': 'lock',
                         'holder': 'acq (session 0)',
                         'lines': ['sim-device-1/hw is held by acq (session 0) for 40.1 s',
                                   '1 waiting: 1. set_heater (session 3) for 0.8 s'],
                         'chain': [], 'queue': [{'position': 1, 'job': 'set_heater',
                                                 'session_id': 3, 'waited_for': 0.8,
                                                 ...}]}}

            The message is the answer's lines joined. An unknown target is
            refused with one line.
        """
        rows = self.table.snapshot(time.time())
        leases, now = None, time.time()
        if self.leases is not None:
            leases, now = self.leases.state.snapshot(), self.leases.clock()
        try:
            answer = explain(params['target'], rows, leases, now, self.usual_hold)
        except ValueError as e:
            return False, str(e)
        session.data = {'why': answer}
        return True, '; '.join(answer['lines'])

    def history(self, session, params):
        """history(kind='lease', resource=None, owner=None, action=None, since=None, at=None, limit=20)

        **Task** - Who had what, newest first: the site leases' audit log,
        the spans of agent locks' holds, or both.

        Parameters:
            kind (str, optional): ``lease`` (the audit log of site leases;
                the default), ``lock`` (spans of agent locks) or ``all``.
            resource (str, optional): a lease path (that path and everything
                below it) or, for spans, a lock (``sim-device-1/hw``) or an
                agent's instance-id (each of its locks).
            owner (str, optional): only rows of this lease owner, or spans of
                this job (exactly).
            action (str or list, optional): only these lease audit actions
                (``grant``, ``renew``, ``release``, ``refuse``, ...); leaves
                out spans.
            since (float, optional): only rows newer than this many seconds
                ago (a span still open then counts), on the registry's clock.
            at (float, optional): as it was this many seconds ago: only the
                spans open then, and the audit rows up to then (newest
                first), on the registry's clock.
            limit (int, optional): at most this many rows, in [1, 1000].
                Default 20.

        Notes:
            Bad input is refused in one line and changes nothing.
            session.data holds the rows, each with ``kind`` and ``at`` (an
            audit row's time, a span's start). A span folds one holder's
            holds (see :mod:`ocs_locking.lock_history`); ``held`` and
            ``longest`` are seconds, ``end`` None while open::

                >>> response.session['data']
                {'history': [
                    {'kind': 'lock', 'at': 1700000000.0, 'id': '3-17',
                     'lock': 'sim-device-1/hw', 'agent': 'sim-device-1', 'name': 'hw',
                     'job': 'acq', 'op': 'acq', 'session_id': 0,
                     'start': 1700000000.0, 'end': 1700000157.0, 'holds': 1570,
                     'held': 151.2, 'longest': 0.2, 'lent': 14, 'gave_up': 2,
                     'token': 1570, 'outcome': 'released'},
                    {'kind': 'lease', 'at': 1699999990.0, 'action': 'grant',
                     'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7, ...}]}

            Lease audit rows are as in :meth:`LeaseOps.history
            <ocs_locking.agents.lock_registry.leases.LeaseOps.history>`.
            ``outcome``: ``open``, ``released``, ``stale`` (its agent went
            silent holding it), ``closed``, ``gone`` (its agent left the
            table holding it), ``unknown`` (the registry stopped while it
            was open).
        """
        try:
            rows = history_db.read_history(
                params, self.leases, self.lock_history,
                self.leases.clock() if self.leases is not None else time.time())
        except ValueError as e:
            session.data = {'error': str(e)}
            return False, f'Refused: {e}'
        session.data = {'history': rows}
        spans = sum(1 for r in rows if r['kind'] == 'lock')
        return True, f'{len(rows) - spans} audit record(s), {spans} lock span(s).'


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group('Agent Options')
    pgroup.add_argument('--expiry', type=float, default=5.0,
                        help='Seconds without a heartbeat before locks are stale.')
    pgroup.add_argument('--forget', type=float, default=600.0,
                        help='Seconds without a heartbeat before a stale agent leaves the '
                             'table (at once when it holds none of its locks; at least --expiry).')
    pgroup.add_argument('--snapshot-every', type=float, default=5.0,
                        help='Seconds between full snapshots on the ownership feed.')
    pgroup.add_argument('--stats-every', type=float, default=10.0,
                        help='Seconds between lock_stats records.')
    pgroup.add_argument('--max-agents', type=int, default=LIMITS['max_agents'],
                        help='Most agents tracked (heartbeats of more are refused, counted).')
    pgroup.add_argument('--max-locks-per-agent', type=int,
                        default=LIMITS['max_locks_per_agent'],
                        help="Most locks in the table per agent (more are refused, counted).")
    pgroup.add_argument('--max-rows', type=int, default=LIMITS['max_rows'],
                        help='Most rows in the table (more are refused, counted).')
    pgroup.add_argument('--session-rows', type=int, default=SESSION_ROWS,
                        help="Rows kept in the monitor's session data (status pages "
                             "through the rest).")
    pgroup.add_argument('--page-rows', type=int, default=PAGE_ROWS,
                        help='Most rows in one page of the status task.')
    add_arguments(pgroup)       # --db and the audit retention (leases.py)
    history_db.add_arguments(pgroup)    # --history-db and its retention
    access_director.add_arguments(pgroup)   # --access-director, --access-config
    standby_mode.add_arguments(pgroup)      # --standby-for
    return parser


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    parser = make_parser()
    args = site_config.parse_args(agent_class='LockRegistryAgent', parser=parser, args=args)
    for name in ('expiry', 'snapshot_every', 'stats_every'):
        value = getattr(args, name)
        if not 0 < value <= 3600:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 3600] seconds, not {value}")
    for name in ('max_agents', 'max_locks_per_agent', 'max_rows', 'session_rows', 'page_rows'):
        value = getattr(args, name)
        if not 1 <= value <= 10 ** 7:
            parser.error(f"--{name.replace('_', '-')} must be in 1..10000000, not {value}")
    complaint = standby_mode.check_arguments(args)
    if complaint:
        parser.error(complaint)
    standby_for = args.standby_for
    serves_itself = args.access_policy == f'director:{standby_for or args.instance_id}'
    if serves_itself:
        # the director's own controls messages never come back to it (WAMP
        # excludes the publisher): it takes its base rules directly
        args.access_policy, args.access_director = 'none', True
    complaint = check_arguments(args) or history_db.check_arguments(args)
    if complaint:
        parser.error(complaint)
    base = None
    if args.access_config is not None:
        if args.access_file is not None:
            parser.error('--access-config and --access-file both set the passwords: give one')
        if args.access_policy not in (None, '', 'none'):
            parser.error('--access-config and --access-policy both set the passwords: give one')
        try:
            base, _blocks = access_director.load_access_config(
                resolve_db(args.access_config, site_dir(args)))
        except ValueError as e:
            parser.error(str(e))
    elif args.access_file is not None:
        base = load_access_file(resolve_db(args.access_file, site_dir(args)))
    if not args.expiry <= args.forget <= 30 * 86400:
        parser.error(f'--forget must be in [--expiry, 30 days] seconds, not {args.forget}')
    # a standby is built as the registry it stands by for (its address,
    # feeds and procedures); standby.py holds its registration back
    agent, runner = ocs_agent.init_site_agent(
        args, address=f'{args.address_root}.{standby_for}' if standby_for else None)
    registry = LockRegistryAgent(agent, address_root=args.address_root, expiry=args.expiry,
                                 snapshot_every=args.snapshot_every,
                                 stats_every=args.stats_every, forget=args.forget,
                                 limits={'max_agents': args.max_agents,
                                         'max_locks_per_agent': args.max_locks_per_agent,
                                         'max_rows': args.max_rows},
                                 session_rows=args.session_rows, page_rows=args.page_rows)
    if not args.no_history:
        try:
            registry.lock_history = history_db.LockHistory(
                resolve_db(args.history_db, site_dir(args)), days=args.history_days,
                rows=args.history_rows, fold_gap=args.history_fold, log=agent.log)
        except ValueError as e:
            parser.exit(1, f'lock-registry: {e}\n')
        registry.usual_hold = registry.lock_history.usual
        from twisted.internet import reactor
        reactor.addSystemEventTrigger('before', 'shutdown', registry.lock_history.close)
    agent.register_process('monitor', registry.monitor, registry._stop_monitor,
                           blocking=False, startup=True)
    agent.register_task('status', registry.status, blocking=False)
    agent.register_task('why', registry.why, blocking=False)
    agent.register_task('history', registry.history, blocking=False)
    # every store write also goes to the standbys following this registry
    replicas = ReplicaServer(agent, identify=registry.sessions.agent_of)
    # the audit names the agent whose session made a lease call (identify)
    try:
        leases = registry.leases = LeaseOps(
            agent, args.db, audit_days=args.audit_days, audit_rows=args.audit_rows,
            new_database=args.new_database, base=site_dir(args),
            max_waiting_per_owner=args.max_waiting_per_owner,
            max_waiting_per_client=args.max_waiting_per_client,
            access_file=args.access_file, identify=registry.sessions.agent_of,
            resources=resource_tree(args), wrap_store=replicas.wrap)
    except LeaseStoreError as e:
        parser.exit(1, f'lock-registry: {e}\n')
    leases.answer_after, replicas.wall = replicas.synced, leases.clock
    registry.serve_lease_feed(leases)
    registry.watch_lease_stats(leases)
    registry.watch_deadlocks(leases)
    if args.access_config is not None:
        access_director.serve_rules_to(agent, base)
    if args.access_director:
        registry.director = access_director.LeaseDirector(
            agent, leases, base if base is not None else access_director.free_rules(),
            leases.resources,
            site_agents=site_agents(args.site_file) if args.site_file else None)
    # (a task that writes answers once the standbys have what it wrote)
    agent.register_task('acquire', after_sync(replicas, leases.acquire),
                        aborter=leases.abort_acquire, blocking=False)
    for name in ('renew', 'release'):
        agent.register_task(name, after_sync(replicas, getattr(leases, name)), blocking=False)
    agent.register_task('leases', leases.leases, blocking=False)
    # Revoking someone else's lease needs an advanced credential.
    agent.register_task('force_release', after_sync(replicas, leases.force_release),
                        blocking=False, min_privs=2)
    # So does asking its holder to give way.
    agent.register_task('preempt', after_sync(replicas, leases.preempt), blocking=False,
                        min_privs=2)
    # Booked reservations (agents/lock_registry/bookings.py); cancelling
    # someone else's booking is privileged. Writes answer once the standbys
    # have them.
    bookings = registry.bookings = BookingOps(leases)
    agent.register_task('book', after_sync(replicas, bookings.book), blocking=False)
    for name in ('calendar', 'next_free'):
        agent.register_task(name, getattr(bookings, name), blocking=False)
    agent.register_task('unbook', after_sync(replicas, bookings.unbook), blocking=False,
                        min_privs=2)
    if standby_for:
        registry.replication = standby_mode.Standby(
            agent, leases, args.instance_id, args.address_root, RID_BLOCK,
            director=registry.director, server=replicas)
    else:
        registry.replication = replicas
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
