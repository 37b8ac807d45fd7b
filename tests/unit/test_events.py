"""The lock-event reporter: what an agent publishes on its ``locks`` feed."""
import pytest

from ocs_locking import TimeoutLock
from ocs_locking.events import FEED_NAME, LockReporter
from ocs_locking.ownership import OwnershipTable, parse_lock_message

from ..support import FakeReactor


class Reactor(FakeReactor):
    def callWhenRunning(self, f, *a, **kw):
        f(*a, **kw)


class FakeAgent:
    def __init__(self):
        self.feeds = {}
        self.published = []
        self.realm_joined = True

    def register_feed(self, name, **kw):
        self.feeds[name] = kw

    def publish_to_feed(self, name, message):
        assert name in self.feeds
        self.published.append(dict(message))


@pytest.fixture
def setup():
    reactor = Reactor()
    agent = FakeAgent()
    reporter = LockReporter(agent, min_interval=0.0, snapshot_every=5.0, reactor=reactor)
    lock = TimeoutLock(name='hw')
    reporter.attach(lock)
    reactor.advance(0)
    agent.published.clear()
    return reactor, agent, reporter, lock


def test_LockReporter_publishes_each_event_in_order_with_the_contract_fields(setup):
    """When the lock changes, each event goes out on the agent's unrecorded
    'locks' feed with the contract's fields and an increasing seq."""
    reactor, agent, reporter, lock = setup
    assert agent.feeds[FEED_NAME]['record'] is False
    assert lock.acquire(0, job='acq', op='acq', session_id=3)
    lock.release()
    reactor.advance(0)
    events = [m['event'] for m in agent.published]
    assert events == ['acquired', 'released']
    first = agent.published[0]
    assert set(first) == {'lock', 'event', 'job', 'op', 'session_id', 'since', 'age',
                          'waiters', 'token', 'seq', 'boot', 'queue'}
    assert all(0 <= m['age'] < 60 for m in agent.published)
    assert (first['lock'], first['job'], first['session_id'], first['token']) == ('hw', 'acq', 3, 1)
    seqs = [m['seq'] for m in agent.published]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2
    for m in agent.published:
        parse_lock_message(m)       # the registry accepts every one


def test_LockReporter_folds_bursts_into_one_snapshot_of_the_latest_state():
    """When a lock changes faster than its token bucket allows, the extra
    changes are folded into one snapshot sent when the bucket allows, so the
    bus is not flooded and the latest state is never lost."""
    reactor, agent = Reactor(), FakeAgent()
    reporter = LockReporter(agent, min_interval=0.5, burst=1, reactor=reactor)
    lock = reporter.attach(TimeoutLock(name='hw'))
    reactor.advance(0)
    agent.published.clear()
    for i in range(1000):
        assert lock.acquire(0, job=f'task{i}')
        lock.release()
    assert lock.acquire(0, job='last')
    reactor.advance(0)
    assert len(agent.published) <= 2           # the first event (plus nothing else yet)
    reactor.advance(0.5)
    reactor.advance(0)
    last = agent.published[-1]
    assert (last['event'], last['job']) == ('snapshot', 'last')
    assert len(agent.published) <= 3
    assert last['folded_acquired'] == 1000      # task1..task999 and 'last'
    table = OwnershipTable()
    for m in agent.published:
        table.lock_message('dev', m, 1.0)
    assert table.rows['dev/hw']['job'] == 'last'
    assert table.rows['dev/hw']['acquired'] == 1001   # no grant lost from the count


def test_LockReporter_sends_a_task_handover_whole_within_one_burst():
    """When an acquisition loop lends its lock to a task for a moment, the
    whole handover (waiting, released, acquired, released, acquired) goes
    out event by event: it fits in one burst."""
    import threading
    reactor, agent = Reactor(), FakeAgent()
    reporter = LockReporter(agent, min_interval=0.01, burst=8, reactor=reactor)
    lock = reporter.attach(TimeoutLock(name='hw'))
    assert lock.acquire(0, job='acq')
    reactor.advance(0)
    agent.published.clear()
    got = threading.Event()

    def task():
        assert lock.acquire(10, job='set_heater')
        got.set()
        lock.release()
    t = threading.Thread(target=task)
    queued = threading.Event()
    lock.add_listener(lambda ev: ev.event == 'waiting' and queued.set())
    t.start()
    assert queued.wait(10)
    assert lock.release_and_acquire(10)
    t.join(10)
    reactor.advance(0)
    assert [(m['event'], m['job']) for m in agent.published] == [
        ('waiting', 'set_heater'), ('released', 'acq'), ('acquired', 'set_heater'),
        ('waiting', 'acq'), ('released', 'set_heater'), ('acquired', 'acq')]


def test_snapshot_of_a_free_lock_keeps_the_last_token(setup):
    """When a lock is free, its snapshot carries the last grant's token, so
    the registry's token never goes backwards."""
    from ocs_locking.events import snapshot_message
    reactor, agent, reporter, lock = setup
    for _ in range(3):
        assert lock.acquire(0)
        lock.release()
    assert snapshot_message(lock)['token'] == 3


def test_set_nodelay_switches_nagle_off_on_the_sessions_tcp_connection():
    """When a joined session's TCP transport is found, Nagle is disabled;
    anything else is left alone and reported False."""
    from types import SimpleNamespace

    from ocs_locking.wamp import set_nodelay
    state = {}
    tcp = SimpleNamespace(setTcpNoDelay=lambda on: state.update(on=on),
                          getTcpNoDelay=lambda: state['on'])
    assert set_nodelay(SimpleNamespace(_transport=SimpleNamespace(transport=tcp))) is True
    assert state == {'on': True}
    assert set_nodelay(SimpleNamespace()) is False


def test_LockReporter_sends_snapshots_on_join_and_periodically(setup):
    """When the agent (re)joins the router, and every snapshot_every seconds,
    a snapshot of every lock goes out; nothing is sent while not joined."""
    reactor, agent, reporter, lock = setup
    assert lock.acquire(0, job='acq')
    reactor.advance(0)
    agent.published.clear()
    agent.realm_joined = False
    reactor.advance(1.0)
    lock.release()
    reactor.advance(0)
    assert agent.published == []
    agent.realm_joined = True
    reactor.advance(1.0)
    assert [(m['event'], m['job']) for m in agent.published] == [('snapshot', None)]
    agent.published.clear()
    reactor.advance(5.0)
    assert [m['event'] for m in agent.published] == ['snapshot']


def test_LockReporter_refuses_two_locks_with_one_name(setup):
    """When a second lock with the same name is attached, ValueError says so."""
    reactor, agent, reporter, lock = setup
    with pytest.raises(ValueError, match=r"^this agent already reports a lock named 'hw'"):
        reporter.attach(TimeoutLock(name='hw'))
    with pytest.raises(TypeError, match=r'^can only report a TimeoutLock'):
        reporter.attach('hw')


def test_LockReporter_events_and_snapshots_name_the_waiters_in_order(setup):
    """When callers wait, each event and snapshot carries the first
    QUEUE_SHOWN of them in FIFO order, each with its own age; waiters stays
    the full count, and the registry accepts the messages."""
    import threading
    from ocs_locking.events import snapshot_message
    from ocs_locking.wire import QUEUE_SHOWN
    reactor, agent, reporter, lock = setup
    assert lock.acquire(0, job='acq', op='acq', session_id=1)
    n = QUEUE_SHOWN + 2
    changed = threading.Condition()

    def on_event(event):
        with changed:
            changed.notify_all()
    lock.add_listener(on_event)
    threads = []
    for i in range(n):
        def wait(i=i):
            if lock.acquire(timeout=30, job=f'w{i}', op=f'w{i}', session_id=10 + i):
                lock.release()
        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        with changed:       # woken by w{i}'s waiting event: it queues behind the others
            assert changed.wait_for(lambda: lock.waiting() == i + 1, timeout=30)
    reactor.advance(0)
    last = agent.published[-1]
    assert last['event'] == 'waiting' and last['waiters'] == n
    assert [w['job'] for w in last['queue']] == [f'w{i}' for i in range(QUEUE_SHOWN)]
    assert all(set(w) == {'job', 'op', 'session_id', 'since', 'age'} and w['age'] >= 0
               for w in last['queue'])
    parse_lock_message(last)
    snap = snapshot_message(lock)
    assert [w['session_id'] for w in snap['queue']] == [10 + i for i in range(QUEUE_SHOWN)]
    lock.release()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
