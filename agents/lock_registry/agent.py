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

import txaio
from autobahn.twisted.util import sleep as dsleep
from ocs import ocs_agent, site_config
from twisted.internet.defer import inlineCallbacks

from ocs_locking.agents.lock_registry.leases import (LeaseOps, add_arguments, check_arguments,
                                                     site_dir)
from ocs_locking.errors import LeaseStoreError
from ocs_locking.ownership import BadLockMessage, OwnershipTable
from ocs_locking.wamp import JoinEdge
from ocs_locking.wire import (HEALTH_KEY, HEARTBEAT_FEED, LOCKS_FEED, OWNERSHIP_FEED, STATS_FEED,
                              TABLE_KEY, feed_topic)

#: Fields of every ``lock_stats`` block (InfluxDB fields; the lock is a tag).
STATS_FIELDS = ('held', 'waiters', 'held_for', 'acquired', 'timed_out', 'alive')


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
    """

    def __init__(self, agent, address_root='observatory', expiry=5.0,
                 snapshot_every=5.0, stats_every=10.0, reactor=None, forget=600.0):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.agent = agent
        self.log = agent.log
        self.root = address_root
        self.table = OwnershipTable(expiry=expiry, forget=forget)
        self.snapshot_every = snapshot_every
        self.stats_every = stats_every
        self._pending = []          # changed rows (copies) not yet published
        self._removed = []          # keys of rows removed, not yet published
        self._flush_call = None
        self._join = JoinEdge(agent)
        self.leases = None          # LeaseOps, when site-wide leases are served
        self._session = None
        agent.register_feed(OWNERSHIP_FEED, record=False, max_messages=100)
        agent.register_feed(STATS_FEED, record=True,
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

    def _on_locks(self, data, details=None):
        try:
            message, feed_info = self._unpack(data)
            instance_id = self._instance(details, feed_info, LOCKS_FEED)
        except BadLockMessage as e:
            self.table.count_dropped()      # refused here, before the table saw it
            self._dropped(details, e)
            return
        try:
            changes = self.table.lock_message(instance_id, message, time.time())
        except BadLockMessage as e:         # counted by the table
            self._dropped(details, e)
            return
        self._publish(changes)

    def _dropped(self, details, err):
        self.log.warn('dropped lock message on {topic}: {err}',
                      topic=getattr(details, 'topic', '?'), err=str(err))

    def _on_heartbeat(self, data, details=None):
        try:
            _, feed_info = self._unpack(data)
            instance_id = self._instance(details, feed_info, HEARTBEAT_FEED)
        except BadLockMessage:
            return          # not ours to judge: the ocs registry watches heartbeats
        self._publish(self.table.heartbeat(instance_id, time.time()))

    # -- output -------------------------------------------------------------------

    def _publish(self, changes, removed=()):
        """Queue changed rows (copies) and removed keys; publish them, in
        order, at the end of this reactor turn (every change is kept, so a
        short hold is seen too)."""
        if not changes and not removed:
            return
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
        self.agent.publish_to_feed(OWNERSHIP_FEED, {
            'kind': 'change', 'seq': self.table.seq, 'timestamp': time.time(),
            'rows': rows, 'removed': removed})
        session = self._session
        if session is not None:
            locks = session.data.setdefault(TABLE_KEY, {})
            for key in removed:
                locks.pop(key, None)
            for row in rows:
                locks[row['lock']] = dict(row)
            session.data.update(seq=self.table.seq, dropped=self.table.dropped)

    def _publish_snapshot(self):
        self.agent.publish_to_feed(OWNERSHIP_FEED, {
            'kind': 'snapshot', 'seq': self.table.seq, 'timestamp': time.time(),
            'rows': self.table.snapshot(time.time())})

    def _publish_stats(self, part=0, parts=1):
        """Record figures for one slice of the locks (all when parts == 1), so
        a big site's records are spread over the stats period."""
        now = time.time()
        rows = self.table.snapshot(now)
        for row in rows[part::parts]:
            slug = _slug(row['lock'])
            values = {
                'held': int(row['job'] is not None or row['since'] is not None),
                'waiters': row['waiters'],
                'held_for': row['held_for'] or 0.0,
                'acquired': row['acquired'],
                'timed_out': row['timed_out'],
                'alive': int(row['alive']),
            }
            data = {f'{slug}_{k}': v for k, v in values.items()}
            tags = {f'{slug}_{k}': {'lock': row['lock'], 'agent': row['agent'], '_field': k}
                    for k in values}
            self.agent.publish_to_feed(STATS_FEED, {
                'block_name': slug, 'timestamp': now, 'data': data,
                'influxdb_tags': tags})

    def _update_session(self):
        session = self._session
        if session is None:
            return
        now = time.time()
        # held_for counts on in the copy read over HTTP (ocs-locks status),
        # to within one tick
        held = self.table.held_for(now)
        for key, row in session.data.get(TABLE_KEY, {}).items():
            if key in held:
                row['held_for'] = held[key]
        session.data.update({
            'seq': self.table.seq, 'dropped': self.table.dropped, 'timestamp': now,
            'agents': self.table.agents_seen()})
        if self.leases is not None:
            session.data[HEALTH_KEY] = self.leases.health()

    # -- operations -----------------------------------------------------------------

    @inlineCallbacks
    def monitor(self, session, params):
        """monitor()

        **Process** - Keep the site's lock table: mark the locks of agents
        whose heartbeats stopped as stale, remove the rows of agents that
        went away (at once when they hold none of their locks, else after
        ``--forget`` seconds of silence), publish snapshots on ``ownership``
        and figures on ``lock_stats``. Started at startup.

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
                    'longest_hold': 0.12, 'updated': 1700000100.0}},
                 'agents': {'sim-device-1': {'alive': True, 'last_seen': 1700000100.0}},
                 'seq': 1234, 'dropped': 0, 'timestamp': 1700000100.2,
                 'lease_health': {'storage': {'ok': True, 'error': None},
                                  'procedures': {'registered': True, 'missing': []}}}

            ``lease_health`` (refreshed every tick, when the registry serves
            site-wide leases) is what ``ocs-locks status`` warns about: lease
            storage failing, lease procedures not registered.

        """
        session.set_status('running')
        session.data = {TABLE_KEY: self.table.rows_by_key(time.time())}
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
            self._publish_stats(n % parts, parts)
            n += 1
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

    def status(self, session, params):
        """status()

        **Task** - Return the whole lock table now.

        Notes:
            session.data holds the rows, sorted by lock::

                >>> response.session['data']
                {'locks': [{'lock': 'sim-device-1/hw', 'agent': 'sim-device-1',
                            'job': 'acq', 'session_id': 0, 'since': 1700000000.0,
                            'waiters': 0, 'alive': True, ...}],
                 'seq': 1234, 'dropped': 0,
                 'leases': {'grants': [...], 'waiting': [...], 'counters': {...},
                            'storage': {'ok': True, 'error': None, 'path': ..., ...}},
                 'lease_procedures': {'registered': True, 'missing': [], 'errors': {}}}

            ``lease_procedures`` says whether the lease procedures are
            registered on the router now (``missing`` names the others,
            ``errors`` why each failed last; they are retried until held).

        """
        rows = self.table.snapshot(time.time())
        session.data = {TABLE_KEY: rows, 'seq': self.table.seq, 'dropped': self.table.dropped}
        if self.leases is not None:
            session.data['leases'] = dict(self.leases.state.snapshot(),
                                          storage=self.leases.storage())
            session.data['lease_procedures'] = procs = self.leases.procedures()
            session.data[HEALTH_KEY] = self.leases.health()
        agents = {r['agent'] for r in rows}
        text = f'{len(rows)} lock(s) from {len(agents)} agent(s).'
        if self.leases is not None and not procs['registered']:
            text += f" Lease procedures not registered: {', '.join(procs['missing'])}."
        return True, text


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
    add_arguments(pgroup)       # --db and the audit retention (leases.py)
    return parser


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    parser = make_parser()
    args = site_config.parse_args(agent_class='LockRegistryAgent', parser=parser, args=args)
    for name in ('expiry', 'snapshot_every', 'stats_every'):
        value = getattr(args, name)
        if not 0 < value <= 3600:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 3600] seconds, not {value}")
    complaint = check_arguments(args)
    if complaint:
        parser.error(complaint)
    if not args.expiry <= args.forget <= 30 * 86400:
        parser.error(f'--forget must be in [--expiry, 30 days] seconds, not {args.forget}')
    agent, runner = ocs_agent.init_site_agent(args)
    registry = LockRegistryAgent(agent, address_root=args.address_root, expiry=args.expiry,
                                 snapshot_every=args.snapshot_every,
                                 stats_every=args.stats_every, forget=args.forget)
    agent.register_process('monitor', registry.monitor, registry._stop_monitor,
                           blocking=False, startup=True)
    agent.register_task('status', registry.status, blocking=False)
    try:
        leases = registry.leases = LeaseOps(
            agent, args.db, audit_days=args.audit_days, audit_rows=args.audit_rows,
            new_database=args.new_database, base=site_dir(args),
            max_waiting_per_owner=args.max_waiting_per_owner,
            max_waiting_per_client=args.max_waiting_per_client,
            access_file=args.access_file)
    except LeaseStoreError as e:
        parser.exit(1, f'lock-registry: {e}\n')
    agent.register_task('acquire', leases.acquire, aborter=leases.abort_acquire,
                        blocking=False)
    for name in ('renew', 'release', 'history', 'leases'):
        agent.register_task(name, getattr(leases, name), blocking=False)
    # Revoking someone else's lease needs an advanced credential.
    agent.register_task('force_release', leases.force_release, blocking=False, min_privs=2)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
