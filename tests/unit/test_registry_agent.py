"""LockRegistryAgent without a router: its bus handlers, ownership feed and
lock_stats records (checked with ocs's own feed validators)."""
from types import SimpleNamespace
from unittest import mock

import pytest
from ocs.ocs_feed import Feed

from ocs_locking.agents.lock_registry.agent import STATS_FIELDS, LockRegistryAgent


class FakeAgent:
    def __init__(self):
        self.feeds, self.published, self.subs = {}, [], []
        self.log = mock.MagicMock()

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


def topic(instance, feed='locks'):
    return SimpleNamespace(topic=f'observatory.{instance}.feeds.{feed}')


def info(instance, feed='locks'):
    return {'agent_address': f'observatory.{instance}', 'feed_name': feed}


def lock_msg(seq, job='acq', event='acquired', token=1):
    return {'lock': 'hw', 'event': event, 'job': job, 'op': job, 'session_id': 2,
            'since': 1000.0, 'waiters': 0, 'token': token, 'seq': seq, 'boot': 1.0}


def test_LockRegistryAgent_subscribes_to_every_agents_locks_and_heartbeat(reg):
    """When built, it asks ocs to subscribe (wildcard, with topic details) to
    every agent's locks and heartbeat feeds, and registers its two feeds."""
    topics = {t: o for t, o in reg.agent.subs}
    assert set(topics) == {'observatory..feeds.locks', 'observatory..feeds.heartbeat'}
    assert all(o == {'match': 'wildcard', 'details_arg': 'details'} for o in topics.values())
    assert reg.agent.feeds['ownership']['record'] is False
    assert reg.agent.feeds['lock_stats']['record'] is True


def test_LockRegistryAgent_publishes_changes_on_the_ownership_feed(reg):
    """When an agent's lock event arrives, the changed row goes out on the
    ownership feed with the table's sequence number."""
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1'))
    name, message = reg.agent.published[-1]
    assert name == 'ownership' and message['kind'] == 'change'
    assert message['seq'] == reg.table.seq == 1
    [row] = message['rows']
    assert (row['lock'], row['job'], row['session_id']) == ('dev-1/hw', 'acq', 2)


def test_LockRegistryAgent_drops_events_from_the_wrong_feed_with_a_log_line(reg):
    """When feed info and topic disagree, or the payload is not a feed pair,
    the message is dropped, counted and logged, and nothing is published."""
    reg._on_locks([lock_msg(1), info('evil')], details=topic('dev-1'))
    reg._on_locks('garbage', details=topic('dev-1'))
    reg._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1', 'heartbeat'))
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
    blocks = [m for n, m in reg.agent.published if n == 'lock_stats']
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
    assert (ok, msg) == (True, '2 lock(s) from 2 agent(s).')
    assert [r['lock'] for r in session.data['locks']] == ['a/hw', 'b/hw']
