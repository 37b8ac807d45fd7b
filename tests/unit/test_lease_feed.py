"""The site leases on the registry's ownership feed (lease_feed.py, contract B)."""
import json

from ocs_locking.agents.lock_registry.lease_feed import MIN_INTERVAL, LeaseFeed, leases_message
from ocs_locking.wire import LEASES_KIND, OWNERSHIP_FEED

from .lease_ops_support import T0, fired, hold, make_ops


class Agent:
    def __init__(self):
        self.published = []

    def publish_to_feed(self, feed, message):
        self.published.append((feed, json.loads(json.dumps(message))))


def setup(tmp_path):
    ops = make_ops(tmp_path)
    agent = Agent()
    return ops, agent, LeaseFeed(agent, ops, ops.reactor)


def test_LeaseFeed_publishes_each_change_at_the_end_of_the_turn_without_secrets(tmp_path):
    """When a lease is granted, one leases message goes out on the ownership
    feed at the end of the reactor turn, with the grant's public fields and
    expires_in on the registry's clock; never a lease id nor a credential."""
    ops, agent, feed = setup(tmp_path)
    lease_id = hold(ops, 'hwp', 'alice', lease=60)
    assert agent.published == []            # coalesced to the end of the turn
    ops.reactor.advance(0)
    [(name, msg)] = agent.published
    assert name == OWNERSHIP_FEED and msg['kind'] == LEASES_KIND == 'leases'
    assert set(msg) >= {'kind', 'seq', 'timestamp', 'grants', 'waiting'}
    [g] = msg['grants']
    assert (g['resource'], g['owner'], g['token'], g['expires_in']) == ('hwp', 'alice', 1, 60.0)
    assert {'granted_at', 'expires', 'note'} <= set(g)
    assert lease_id not in json.dumps(msg) and 'lease_id' not in json.dumps(msg)
    assert msg['waiting'] == [] and msg['grants_total'] == 1


def test_LeaseFeed_coalesces_a_burst_to_about_ten_messages_a_second(tmp_path):
    """When many changes come at once and then within MIN_INTERVAL, the feed
    sends one message per turn and at most one per MIN_INTERVAL, and the
    last message has the latest state."""
    ops, agent, feed = setup(tmp_path)
    for i in range(20):
        hold(ops, f'r{i}', 'o', lease=60)
    ops.reactor.advance(0)
    assert len(agent.published) == 1 and agent.published[0][1]['grants_total'] == 20
    for i in range(20, 40):
        hold(ops, f'r{i}', 'o', lease=60)
        ops.reactor.advance(MIN_INTERVAL / 10)
    # 20 changes over 2 intervals: at most 3 more messages
    ops.reactor.advance(MIN_INTERVAL)
    assert 2 <= len(agent.published) <= 4
    assert agent.published[-1][1]['grants_total'] == 40
    seqs = [m['seq'] for _, m in agent.published]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_LeaseFeed_publish_sends_now_and_covers_a_change_scheduled(tmp_path):
    """When the registry publishes after a snapshot, the leases go out at
    once, and a change scheduled before it sends nothing more."""
    ops, agent, feed = setup(tmp_path)
    hold(ops, 'hwp', 'alice', lease=60)
    feed.publish()
    ops.reactor.advance(1)
    assert len(agent.published) == 1


def test_leases_message_with_a_waiter_and_time_left():
    """When a request waits, it is in waiting (its position); each grant's
    expires_in is its expiry less now, never below 0."""
    snap = {'grants': [{'resource': 'a', 'owner': 'o', 'token': 3, 'expires': T0 + 5},
                       {'resource': 'b', 'owner': 'o', 'token': 4, 'expires': T0 - 5}],
            'waiting': [{'owner': 'p', 'resources': ['a'], 'position': 1}]}
    msg = leases_message(snap, 4, T0, 99.0, 2 ** 20)
    assert [g['expires_in'] for g in msg['grants']] == [5.0, 0.0]
    assert msg['waiting'][0]['position'] == 1 and msg['seq'] == 4 and msg['timestamp'] == 99.0


def test_LeaseFeed_a_queued_request_shows_in_waiting(tmp_path):
    """When a second owner queues for a held resource, the next message has
    it in waiting."""
    ops, agent, feed = setup(tmp_path)
    hold(ops, 'hwp', 'alice', lease=60)
    d = ops.do_acquire('hwp', 'bob', lease=30, timeout=20)
    ops.reactor.advance(0)
    msg = agent.published[-1][1]
    assert [w['owner'] for w in msg['waiting']] == ['bob']
    ops.reactor.advance(21)
    assert fired(d)
