"""LockRegistryAgent without a router: its bus handlers, ownership feed and
lock_stats records (checked with ocs's own feed validators)."""
from types import SimpleNamespace
from unittest import mock

import pytest
from autobahn.wamp.exception import ApplicationError
from ocs.ocs_feed import Feed
from twisted.internet import defer
from twisted.internet.task import Clock

from ocs_locking.agents.lock_registry.agent import (HOLD_BYTES, HOLD_MESSAGES, STATS_FIELDS,
                                                   LockRegistryAgent)
from ocs_locking.agents.lock_registry.buswatch import CHECK_TIMEOUT
from ocs_locking.wire import (HEARTBEAT_FEED, LOCKS_FEED, MESSAGE_BUDGET, OWNERSHIP_FEED,
                              PAYLOAD_LIMIT, STATS_FEED, TABLE_KEY, feed_topic, json_size)


class FakeAgent:
    def __init__(self):
        self.feeds, self.published, self.subs = {}, [], []
        self.log = mock.MagicMock()
        self.handlers = {}

    def on(self, event, handler):
        self.handlers.setdefault(event, []).append(handler)

    def register_feed(self, name, **kw):
        self.feeds[name] = kw

    def subscribe_on_start(self, handler, topic, options=None):
        self.subs.append((topic, options))

    def publish_to_feed(self, name, message):
        self.published.append((name, message))


class NowReactor:
    """Runs the end-of-turn flush at once."""

    def callLater(self, delay, fn, *args):
        fn(*args)

    def seconds(self):
        return 0.0


@pytest.fixture
def reg():
    return LockRegistryAgent(FakeAgent(), reactor=NowReactor())


def topic(instance, feed=LOCKS_FEED):
    return SimpleNamespace(topic=feed_topic('observatory', instance, feed))


def info(instance, feed=LOCKS_FEED):
    return {'agent_address': f'observatory.{instance}', 'feed_name': feed}


def lock_msg(seq, job='acq', event='acquired', token=1):
    return {'lock': 'hw', 'event': event, 'job': job, 'op': job, 'session_id': 2,
            'since': 1000.0, 'waiters': 0, 'token': token, 'seq': seq, 'boot': 1.0}


def test_LockRegistryAgent_subscribes_to_every_agents_locks_and_heartbeat(reg):
    """When built, it asks ocs to subscribe (wildcard, with topic details) to
    every agent's locks and heartbeat feeds, and registers its two feeds."""
    topics = {t: o for t, o in reg.agent.subs}
    assert set(topics) == {feed_topic('observatory', '', LOCKS_FEED),
                           feed_topic('observatory', '', HEARTBEAT_FEED)}
    assert all(o == {'match': 'wildcard', 'details_arg': 'details'} for o in topics.values())
    assert reg.agent.feeds[OWNERSHIP_FEED]['record'] is False
    assert reg.agent.feeds[STATS_FEED]['record'] is True


def test_LockRegistryAgent_publishes_changes_on_the_ownership_feed(reg):
    """When an agent's lock event arrives, the changed row goes out on the
    ownership feed with the table's sequence number."""
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1'))
    name, message = reg.agent.published[-1]
    assert name == OWNERSHIP_FEED and message['kind'] == 'change' and message['removed'] == []
    assert message['seq'] == reg.table.seq == 1
    [row] = message['rows']
    assert (row['lock'], row['job'], row['session_id']) == ('dev-1/hw', 'acq', 2)


def test_LockRegistryAgent_drops_events_from_the_wrong_feed_with_a_log_line(reg):
    """When feed info and topic disagree, or the payload is not a feed pair,
    the message is dropped, counted and logged, and nothing is published."""
    reg._on_locks([lock_msg(1), info('evil')], details=topic('dev-1'))
    reg._on_locks('garbage', details=topic('dev-1'))
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1', HEARTBEAT_FEED))
    assert reg.table.rows == {} and reg.table.dropped == 3
    assert reg.agent.published == []
    texts = [c.kwargs['err'] for c in reg.agent.log.warn.call_args_list]
    assert texts == [
        "feed info claims 'observatory.evil', but the message came on "
        "observatory.dev-1.feeds.locks",
        'a feed message must be [message, feed_info]',
        "unexpected topic 'observatory.dev-1.feeds.heartbeat'"]


def test_LockRegistryAgent_lock_stats_pass_ocs_feed_checks(reg):
    """When lock_stats are recorded, each block has the fixed fields (lock and
    agent as InfluxDB tags) and passes ocs's own recorded-feed validation."""
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1'))
    reg._on_locks([lock_msg(1), info('dev-2')], details=topic('dev-2'))
    reg.agent.published.clear()
    reg._publish_stats()
    blocks = [m for n, m in reg.agent.published if n == STATS_FEED]
    assert len(blocks) == 2
    for block in blocks:
        for field, value in block['data'].items():
            Feed.verify_data_field_string(field)
            Feed.verify_message_data_type(value)
        Feed.verify_influxdb_tags(block)
        assert sorted(t['_field'] for t in block['influxdb_tags'].values()) == \
            sorted(STATS_FIELDS)
    tags = blocks[0]['influxdb_tags']['dev_1_hw_waiters']
    assert tags == {'lock': 'dev-1/hw', 'agent': 'dev-1', 'kind': 'lock', '_field': 'waiters'}


def test_LockRegistryAgent_status_returns_the_sorted_table(reg):
    """When status runs, session.data holds every row sorted by lock."""
    for inst in ('b', 'a'):
        reg._on_locks([lock_msg(1), info(inst)], details=topic(inst))
    session = SimpleNamespace(data=None)
    ok, msg = reg.status(session, {})
    assert (ok, msg) == (True, '2 lock(s) from 2 agent(s). Bus not verified: the registry '
                               'is not joined to the router.')
    assert [r['lock'] for r in session.data['locks']] == ['a/hw', 'b/hw']


def monitoring(reg):
    """A monitor session as the monitor process sets it up."""
    session = SimpleNamespace(data={TABLE_KEY: reg.table.rows_by_key()})
    reg._session = session
    return session


def test_LockRegistryAgent_session_data_holds_copies_that_follow_each_change(reg):
    """When changes are published, the monitor's session.data has them, as
    copies: never the table's own rows."""
    session = monitoring(reg)
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1'))
    row = session.data[TABLE_KEY]['dev-1/hw']
    assert row['job'] == 'acq' and row is not reg.table.rows['dev-1/hw']
    reg._on_locks([lock_msg(2, event='released'), info('dev-1')], details=topic('dev-1'))
    assert session.data[TABLE_KEY]['dev-1/hw']['job'] is None
    assert row['job'] == 'acq'          # an earlier copy is left as it was
    assert session.data['seq'] == reg.table.seq


def test_LockRegistryAgent_publishes_the_rows_of_an_agent_that_went_away_as_removed(reg):
    """When an agent holding nothing went stale, the next change message
    lists its rows in removed, and session.data no longer has them."""
    session = monitoring(reg)
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1'))
    reg._on_locks([lock_msg(2, event='closed'), info('dev-1')], details=topic('dev-1'))
    later = reg.table.agents['dev-1'].last_seen + reg.table.expiry + 1
    reg._publish(reg.table.expire(later), reg.table.forget_silent(later))
    name, message = reg.agent.published[-1]
    assert (name, message['kind'], message['removed']) == (OWNERSHIP_FEED, 'change',
                                                           ['dev-1/hw'])
    assert TABLE_KEY in session.data and 'dev-1/hw' not in session.data[TABLE_KEY]


def test_LockRegistryAgent_counts_a_malformed_message_once(reg):
    """When a well-addressed message breaks the contract, it is dropped,
    logged and counted once."""
    reg._on_locks([dict(lock_msg(1), waiters=10 ** 30), info('dev-1')],
                  details=topic('dev-1'))
    assert reg.table.dropped == 1 and reg.table.rows == {}
    [call] = reg.agent.log.warn.call_args_list
    assert call.kwargs['err'].startswith('waiters must be an integer 0..1000000, not 1000')


# -- trust: attribution, liveness, caps, paging ------------------------------------

def verified(reg, agents=None):
    """The bus as verified, with ``agents`` {instance_id: session id} on it."""
    reg.bus.state, reg.bus.session = 'verified', 500
    for i, (instance, session) in enumerate((agents or {}).items()):
        reg.sessions.created(session, {'id': 1000 + i, 'uri': f'observatory.{instance}.ops'})
    return reg


def by(instance, publisher, feed=LOCKS_FEED):
    return SimpleNamespace(topic=feed_topic('observatory', instance, feed), publisher=publisher)


def test_LockRegistryAgent_verified_bus_takes_only_the_agents_own_session(reg):
    """When the bus is verified, a lock event is taken only from the session
    holding that agent's ops registration; one from another session, with no
    publisher, or for an agent not on the bus is dropped and counted by reason."""
    verified(reg, {'dev-1': 11})
    reg._on_locks([lock_msg(1), info('dev-1')], details=by('dev-1', 11))
    reg._on_locks([lock_msg(2, job='forged'), info('dev-1')], details=by('dev-1', 99))
    reg._on_locks([lock_msg(3, job='forged'), info('dev-1')], details=by('dev-1', None))
    reg._on_locks([lock_msg(1), info('ghost-agent')], details=by('ghost-agent', 99))
    assert list(reg.table.rows) == ['dev-1/hw'] and reg.table.rows['dev-1/hw']['job'] == 'acq'
    assert reg.bus_status()['dropped'] == {
        "locks: published by a session that is not the agent's": 1,
        'locks: publisher not disclosed': 1,
        "locks: no session holds the agent's ops registration": 1}
    assert reg.table.dropped == 3


def test_LockRegistryAgent_verified_bus_drops_forged_heartbeats(reg):
    """When the bus is verified, a heartbeat from another session does not
    keep an agent alive, nor make up a new one; it is counted."""
    verified(reg, {'dev-1': 11})
    reg._on_heartbeat([{}, info('dev-1', HEARTBEAT_FEED)], details=by('dev-1', 11, HEARTBEAT_FEED))
    reg._on_heartbeat([{}, info('made-up', HEARTBEAT_FEED)],
                      details=by('made-up', 99, HEARTBEAT_FEED))
    reg._on_heartbeat([{}, info('dev-1', HEARTBEAT_FEED)], details=by('dev-1', 99, HEARTBEAT_FEED))
    assert list(reg.table.agents) == ['dev-1']
    assert sum(reg.bus_status()['dropped'].values()) == 2


class ClockReactor(Clock):
    """Runs the end-of-turn flush at once; later calls when advanced."""

    def callLater(self, delay, fn, *args):
        if delay == 0:
            return fn(*args)
        return Clock.callLater(self, delay, fn, *args)


class Joining:
    """A registry session whose bus check answers when told to."""

    def __init__(self):
        self._session_id = 500
        self.answer = defer.Deferred()

    def call(self, uri, *args):
        if uri == 'ocs_locking.bus.info':
            return self.answer
        if uri == 'wamp.registration.list':
            return defer.succeed({'exact': [1000]})
        if uri == 'wamp.registration.get':
            return defer.succeed({'id': 1000, 'uri': 'observatory.dev-1.ops'})
        if uri == 'wamp.registration.list_callees':
            return defer.succeed([11])
        raise AssertionError(uri)

    def subscribe(self, handler, topic, options=None):
        return defer.succeed(None)


BUS_INFO_ANSWER = {'component': 'ocs_locking.bus', 'version': '1',
                   'address_root': 'observatory', 'registry': 'lock-registry',
                   'disclose': True}


def joining():
    clock = ClockReactor()
    reg = LockRegistryAgent(FakeAgent(), reactor=clock)
    s = Joining()
    reg.bus.joined(s)
    assert reg.bus.state == 'pending'
    return reg, s, clock


def test_LockRegistryAgent_holds_messages_while_the_bus_is_checked_then_judges_them():
    """When lock events and heartbeats come while the bus is checked, none
    is dropped: they are held, and once the bus is verified they are judged
    in arrival order (the agent's own taken, a forged one dropped)."""
    reg, s, _ = joining()
    reg._on_locks([lock_msg(1), info('dev-1')], details=by('dev-1', 11))
    reg._on_locks([lock_msg(2, job='forged'), info('dev-1')], details=by('dev-1', 99))
    reg._on_heartbeat([{}, info('dev-1', HEARTBEAT_FEED)], details=by('dev-1', 11, HEARTBEAT_FEED))
    reg._on_locks([lock_msg(3, job='later'), info('dev-1')], details=by('dev-1', 11))
    assert reg.table.rows == {} and reg.drops == {}
    s.answer.callback(BUS_INFO_ANSWER)
    assert reg.bus.state == 'verified'
    assert reg.table.rows['dev-1/hw']['job'] == 'later'
    assert 'dev-1' in reg.table.agents
    assert reg.drops == {"locks: published by a session that is not the agent's": 1}
    assert not reg._held


@pytest.mark.parametrize('end', ['fails', 'times out', 'leaves'])
def test_LockRegistryAgent_held_messages_are_judged_unverified_when_the_check_does_not_verify(end):
    """When the bus check fails, times out, or the session leaves while it
    runs, the held messages are judged under the not-verified rule (taken
    without attribution), nothing waits on."""
    reg, s, clock = joining()
    reg._on_locks([lock_msg(1), info('dev-1')], details=by('dev-1', None))
    if end == 'fails':
        s.answer.errback(ApplicationError('wamp.error.no_such_procedure'))
    elif end == 'times out':
        clock.advance(CHECK_TIMEOUT)
    else:
        reg.agent.handlers['leave'][0](s)
    assert reg.bus.state == 'unverified'
    assert 'dev-1/hw' in reg.table.rows and not reg._held
    assert clock.getDelayedCalls() == []
    if end == 'times out':
        assert 'no answer in 10 s' in reg.bus.reason
        s.answer.callback(BUS_INFO_ANSWER)      # a late answer verifies from then on
        assert reg.bus.state == 'verified'


def test_LockRegistryAgent_held_messages_are_bounded_the_rest_counted_as_pending_overflow():
    """When more than HOLD_MESSAGES messages (or HOLD_BYTES octets) come
    while the bus is checked, the rest are dropped and counted as
    'pending overflow'; the held ones are judged when the check ends."""
    reg, s, _ = joining()
    for seq in range(HOLD_MESSAGES + 5):
        reg._on_locks([lock_msg(seq + 1, token=seq + 1), info('dev-1')],
                      details=by('dev-1', 11))
    reg._on_heartbeat([{}, info('dev-1', HEARTBEAT_FEED)], details=by('dev-1', 11, HEARTBEAT_FEED))
    assert len(reg._held) == HOLD_MESSAGES
    assert reg.drops == {'locks: pending overflow': 5, 'heartbeat: pending overflow': 1}
    assert reg.table.dropped == 5
    s.answer.callback(BUS_INFO_ANSWER)
    assert reg.table.rows['dev-1/hw']['token'] == HOLD_MESSAGES and not reg._held
    reg2, _, _ = joining()
    huge = [dict(lock_msg(1), job='j' * 100000), info('dev-1')]
    n = HOLD_BYTES // json_size(huge)
    for _ in range(n + 3):
        reg2._on_locks(huge, details=by('dev-1', 11))
    assert len(reg2._held) == n < HOLD_MESSAGES and reg2._held_bytes <= HOLD_BYTES
    assert reg2.drops == {'locks: pending overflow': 3}


def test_LockRegistryAgent_unverified_bus_takes_messages_as_before(reg):
    """When the bus is not verified (stock config), messages are taken
    without attribution and the bus block says why."""
    reg.bus._unverified('ocs_locking.bus.info: not authorized')
    reg._on_locks([lock_msg(1), info('dev-1')], details=by('dev-1', None))
    assert 'dev-1/hw' in reg.table.rows
    bus = reg.bus_status()
    assert (bus['verified'], bus['reason']) == (False, 'ocs_locking.bus.info: not authorized')
    assert reg.agent.log.warn.call_args.kwargs['reason'] == 'ocs_locking.bus.info: not authorized'


def test_LockRegistryAgent_drop_log_lines_are_rate_limited(reg):
    """When many forged messages come for one reason, one log line says so
    (per DROP_LOG_EVERY s), with the count of the others."""
    verified(reg, {'dev-1': 11})
    for seq in range(50):
        reg._on_locks([lock_msg(seq), info('dev-1')], details=by('dev-1', 99))
    assert reg.agent.log.warn.call_count == 1
    assert reg.drops == {"locks: published by a session that is not the agent's": 50}


def test_LockRegistryAgent_agent_session_end_marks_its_locks_not_alive_at_once(reg):
    """When the agent's session leaves the bus (on_leave), its rows are not
    alive at once: on the ownership feed and in the monitor's session data."""
    verified(reg, {'dev-1': 11})
    session = monitoring(reg)
    reg._on_locks([lock_msg(1), info('dev-1')], details=by('dev-1', 11))
    reg.bus._on_leave(11)
    name, message = reg.agent.published[-1]
    [row] = message['rows']
    assert (row['lock'], row['alive']) == ('dev-1/hw', False)
    assert session.data[TABLE_KEY]['dev-1/hw']['alive'] is False
    assert reg.sessions.session_of('dev-1') is None


def test_LockRegistryAgent_ops_registration_deleted_marks_locks_not_alive(reg):
    """When the agent's ops registration is deleted (on_delete), its locks
    are not alive."""
    verified(reg, {'dev-1': 11})
    reg._on_locks([lock_msg(1), info('dev-1')], details=by('dev-1', 11))
    reg.bus._on_delete(11, 1000)
    assert reg.table.rows['dev-1/hw']['alive'] is False


def test_LockRegistryAgent_caps_refuse_counted_and_logged_once():
    """When an agent reports more locks than its cap, the extra ones are
    refused, counted in the bus block, and logged once for the cap."""
    reg = LockRegistryAgent(FakeAgent(), reactor=NowReactor(),
                            limits={'max_locks_per_agent': 2})
    for seq, lock in enumerate('abcdef'):
        reg._on_locks([dict(lock_msg(seq + 1), lock=lock), info('dev-1')],
                      details=topic('dev-1'))
    assert sorted(reg.table.rows) == ['dev-1/a', 'dev-1/b']
    bus = reg.bus_status()
    assert bus['dropped'] == {'refused: max_locks_per_agent': 4}
    assert bus['limits']['max_locks_per_agent'] == 2 and bus['limits']['max_rows'] == 10000
    assert reg.agent.log.warn.call_count == 1


def big(n=10000):
    """A registry with an n-row table (100 agents with n/100 locks each)."""
    reg = LockRegistryAgent(FakeAgent(), reactor=NowReactor(),
                            limits={'max_rows': n, 'max_locks_per_agent': n})
    per = n // 100
    for a in range(100):
        for i in range(per):
            reg.table.lock_message(f'agent-{a:03d}', dict(lock_msg(i + 1, job='a' * 200),
                                                           lock=f'lock-{i:04d}'), 1.0)
    assert len(reg.table.rows) == n
    return reg


def test_LockRegistryAgent_10000_rows_fit_the_payload_limit_everywhere():
    """When the table has 10,000 rows, the monitor's session data, each
    status page and each part of the ownership snapshot stay under the
    message budget (far under crossbar's payload limit), and the parts and
    pages hold every row."""
    reg = big()
    session = SimpleNamespace(data={})
    reg._session = session
    session.data = {TABLE_KEY: reg.session_table()}
    reg._update_session()
    assert json_size(session.data) < MESSAGE_BUDGET < PAYLOAD_LIMIT
    assert session.data['total'] == 10000 and 0 < len(session.data[TABLE_KEY]) <= reg.session_rows
    reg.agent.published.clear()
    reg._publish_snapshot()
    parts = [m for n, m in reg.agent.published if n == OWNERSHIP_FEED]
    assert len(parts) > 1 and all(json_size(m) < MESSAGE_BUDGET for m in parts)
    assert [m['part'] for m in parts] == list(range(len(parts)))
    assert {m['parts'] for m in parts} == {len(parts)} and parts[0]['total'] == 10000
    assert sum(len(m['rows']) for m in parts) == 10000
    seen, offset = [], 0
    while offset < 10000:
        page = SimpleNamespace(data=None)
        reg.status(page, {'offset': offset, 'limit': 10 ** 6})
        assert json_size(page.data) < MESSAGE_BUDGET and page.data['total'] == 10000
        assert page.data['offset'] == offset and page.data[TABLE_KEY]
        seen += [r['lock'] for r in page.data[TABLE_KEY]]
        offset += len(page.data[TABLE_KEY])
    assert seen == sorted(reg.table.rows)


def test_LockRegistryAgent_a_big_change_set_goes_out_in_parts():
    """When one reactor turn changes every row of a 10,000-row table (its
    agents all left), the change is published in parts under the budget."""
    reg = big()
    reg.agent.published.clear()
    for a in range(100):
        reg._publish(reg.table.gone(f'agent-{a:03d}', 2.0))
    reg._flush()
    parts = [m for n, m in reg.agent.published if n == OWNERSHIP_FEED]
    assert len(parts) > 1 and all(json_size(m) < MESSAGE_BUDGET for m in parts)
    assert sum(len(m['rows']) for m in parts) == 10000


def test_registry_publishes_the_leases_after_each_snapshot(reg, tmp_path):
    """When the registry serves leases, every ownership snapshot is followed
    on the same feed by a leases message (a watch has them within one
    snapshot period), with the grant and no lease id."""
    from .lease_ops_support import hold, make_ops
    ops = make_ops(tmp_path)
    feed = reg.serve_lease_feed(ops)
    lease_id = hold(ops, 'hwp', 'alice')
    reg.agent.published.clear()
    reg._publish_snapshot()
    kinds = [m['kind'] for n, m in reg.agent.published if n == OWNERSHIP_FEED]
    assert kinds == ['snapshot', 'leases']
    msg = reg.agent.published[-1][1]
    assert [g['owner'] for g in msg['grants']] == ['alice'] and msg['seq'] == feed.seq
    assert lease_id not in repr(msg)


def two_lock_msgs(seq, name, job, sid, waiter, waiter_sid):
    return {'lock': name, 'event': 'waiting', 'job': waiter, 'op': waiter,
            'session_id': waiter_sid, 'since': 1000.0, 'waiters': 1, 'token': 0, 'seq': seq,
            'boot': 1.0, 'queue': [{'job': waiter, 'op': waiter, 'session_id': waiter_sid,
                                    'since': 1000.0, 'age': 0.1}]}


def test_a_cycle_of_an_agents_own_locks_is_flagged_and_counted_on_alerts():
    """When two operations of an agent hold one lock each and wait for the
    other's, the registry finds the cycle SETTLE s after the message that
    closes it (not at the next tick): both rows are flagged 'deadlock' on
    the ownership feed, an alerts block counts it, and it is spelled out in
    the monitor's data; when one gives up, the flags go."""
    from ocs_locking.agents.lock_registry.deadlocks import SETTLE
    clock = Clock()
    reg = LockRegistryAgent(FakeAgent(), reactor=clock)
    reg.deadlocks.clock = clock.seconds     # (ages on the fake clock, not the host's)
    for seq, (name, job, sid) in enumerate((('l1', 'j1', 1), ('l2', 'j2', 2)), 1):
        held = dict(lock_msg(seq, job=job), lock=name, session_id=sid)
        reg._on_locks([held, info('dev-1')], details=topic('dev-1'))
    reg._on_locks([two_lock_msgs(3, 'l1', 'j1', 1, 'j2', 2), info('dev-1')],
                  details=topic('dev-1'))
    clock.advance(SETTLE)
    assert reg.deadlocks.current == {}      # one wait is no cycle
    reg._on_locks([two_lock_msgs(4, 'l2', 'j2', 2, 'j1', 1), info('dev-1')],
                  details=topic('dev-1'))
    clock.advance(SETTLE)
    [d] = reg.deadlocks.public()
    assert d['text'] == ('deadlock: dev-1 j1 (session 1) holds dev-1/l1, waits for dev-1/l2 '
                         'held by dev-1 j2 (session 2), which waits for dev-1/l1')
    flags = {r['lock']: r['flags'] for r in reg.table.snapshot()}
    assert flags == {'dev-1/l1': ['deadlock'], 'dev-1/l2': ['deadlock']}
    alerts = [m for name, m in reg.agent.published if name == 'alerts'
              and m['block_name'] == 'deadlock']
    assert alerts[-1]['data'] == {'deadlock_count': 2, 'deadlock_worst_s': 0.0}
    assert reg.agent.log.warn.call_count == 1
    # j1 gives up waiting for l2
    gave_up = dict(two_lock_msgs(5, 'l2', 'j2', 2, 'j1', 1), event='gave_up', waiters=0,
                   queue=[])
    reg._on_locks([gave_up, info('dev-1')], details=topic('dev-1'))
    clock.advance(SETTLE)
    assert reg.deadlocks.current == {}
    assert all(r['flags'] == [] for r in reg.table.snapshot())


def test_lease_changes_with_nobody_waiting_cost_the_deadlock_watch_no_snapshot(tmp_path):
    """When leases are granted and released with nobody waiting (the common
    case), the deadlock watch neither snapshots the lease state nor arms
    its look (a snapshot per change sorted every token counter: it made
    each lease call slower as resources accumulated); when a request queues,
    it looks SETTLE s later."""
    from ocs_locking.agents.lock_registry.deadlocks import SETTLE
    from .lease_ops_support import fired, hold, make_ops
    clock = Clock()
    reg = LockRegistryAgent(FakeAgent(), reactor=clock)
    ops = make_ops(tmp_path)
    reg.watch_deadlocks(ops)
    snapshots = []
    real = ops.state.snapshot
    reg.deadlocks.leases = lambda: snapshots.append(1) or real()
    for i in range(5):
        lease_id = hold(ops, resource=f'r/{i}')
        ok, msg, _ = ops.do_release(f'r/{i}', lease_id)
        assert ok, msg
    assert snapshots == [] and reg.deadlocks._call is None
    hold(ops, resource='busy', owner='a')
    fired(ops.do_acquire('busy', 'b', lease=60, timeout=30))
    assert reg.deadlocks._call is not None and reg.deadlocks._call.active()
    clock.advance(SETTLE)
    assert reg.deadlocks.checks == 1 and snapshots == [1]


class FeedAgent(FakeAgent):
    """A FakeAgent whose recorded feeds are ocs's own Feed objects."""
    agent_address = 'observatory.lock-registry'
    agent_session_id = 'test'
    class_name = 'LockRegistryAgent'

    def __init__(self):
        super().__init__()
        self.feeds, self.sent = {}, []

    def register_feed(self, name, **kw):
        self.feeds[name] = Feed(self, name, **kw)

    def publish_to_feed(self, name, message):
        self.published.append((name, message))
        self.feeds[name].publish_message(message)

    def publish(self, address, payload):
        self.sent.append((address, payload))


def test_lock_stats_records_leave_ocs_feed_no_block_behind(monkeypatch):
    """When the registry records lock_stats for many locks (ocs's own Feed,
    flushing each message), every record is sent and the feed keeps no
    emptied block: ocs clears every block it holds at each flush, so blocks
    kept for every name ever recorded made each record slower."""
    import ocs.ocs_feed
    monkeypatch.setattr(ocs.ocs_feed, 'in_reactor_context', lambda: True)
    reg = LockRegistryAgent(FeedAgent(), reactor=NowReactor())
    for i in range(50):
        reg._on_locks([lock_msg(1), info(f'dev-{i}')], details=topic(f'dev-{i}'))
    reg._publish_stats()
    feed = reg.agent.feeds[STATS_FEED]
    stats = [p for a, p in reg.agent.sent if a.endswith(f'.feeds.{STATS_FEED}')]
    assert len(stats) == 50 and feed.blocks == {}
    reg._publish_stats()
    assert len([a for a, _ in reg.agent.sent if a.endswith(f'.feeds.{STATS_FEED}')]) == 100


def test_lease_stats_records_are_spread_over_the_stats_period(tmp_path):
    """When many site leases had news in a period, their lock_stats records
    are spread over the monitor's parts of the period (like the locks'),
    each recorded once, all by the period's last part."""
    from .lease_ops_support import hold, make_ops
    reg = LockRegistryAgent(FakeAgent(), reactor=NowReactor())
    ops = reg.leases = make_ops(tmp_path)
    reg.watch_lease_stats(ops)
    for i in range(23):
        hold(ops, resource=f'r/{i:02d}')
    counts = []
    for part in range(5):
        reg.agent.published.clear()
        reg._publish_stats(part, 5, rows=[], now=1.0)
        counts.append(sorted(m['block_name'] for n, m in reg.agent.published
                             if n == STATS_FEED))
    assert [len(c) for c in counts] == [5, 5, 5, 4, 4]
    assert sorted(sum(counts, [])) == [f'lease_r_{i:02d}' for i in range(23)]
