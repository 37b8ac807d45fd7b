"""LockRegistryAgent without a router: its bus handlers, ownership feed and
lock_stats records (checked with ocs's own feed validators)."""
from types import SimpleNamespace
from unittest import mock

import pytest
from ocs.ocs_feed import Feed

from ocs_locking.agents.lock_registry.agent import STATS_FIELDS, LockRegistryAgent
from ocs_locking.wire import (HEARTBEAT_FEED, LOCKS_FEED, OWNERSHIP_FEED, STATS_FEED, TABLE_KEY,
                              feed_topic)


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
    assert tags == {'lock': 'dev-1/hw', 'agent': 'dev-1', '_field': 'waiters'}


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
