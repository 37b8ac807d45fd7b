"""Lock events on an agent's ``locks`` feed, for the LockRegistryAgent.

One line attaches a lock to its agent::

    report_locks(agent, self.lock)

Every message is a dict (the wire contract)::

    {"lock": "hw", "event": "acquired", "job": "acq", "op": "acq",
     "session_id": 3, "since": 1700000000.0, "age": 0.004, "waiters": 0,
     "token": 12, "seq": 345, "boot": 1700000000.0,
     "queue": [{"job": "set_heater", "op": "set_heater", "session_id": 4,
                "since": 1700000001.5, "age": 0.2}]}

``event`` is one of acquired, released, waiting, gave_up, closed, snapshot.
A reported :class:`~ocs_locking.leases.sitelock.SiteLock`
(``report_locks(agent, self.site_lock)``) sends the same messages under its
own lock name (``lease:satp1:hwp`` by default) with one more key,
``"lease": "satp1/hwp"``: its holder is the operation that acquired the
lease (``site_lock.acquire(timeout, job=..., session_id=...)``), its queue
the operation whose acquire waits in the registry's queue. The registry
follows waits through them across agents' locks and site leases and reports
a deadlock (:mod:`ocs_locking.deadlock`).
A snapshot that stands for folded events also says how many grants and
give-ups it folded (``folded_acquired``, ``folded_gave_up``) so counters stay
exact.
For acquired/released/snapshot the job/op/session_id/since/token fields
describe the holder (None when free); for waiting/gave_up they describe the
waiter; ``age`` is how many seconds had passed since ``since`` when the
message was sent (both on this agent's clock), so that the registry can tell
how long a hold has lasted without comparing this host's clock with its own
(None when ``since`` is). ``queue`` names the first
:data:`~ocs_locking.wire.QUEUE_SHOWN` waiters in the order they will be
served (``waiters`` stays the full count), each with its own ``age`` (how
long it had waited when the message was sent). ``seq`` increases per
agent; ``boot`` identifies the agent process, so
a restarted agent's lower ``seq`` is not mistaken for stale messages.

Events come from any thread; they are published from the reactor thread, in
order. Short holds cannot flood the bus: each lock may send a burst of
``burst`` messages, then one per ``min_interval`` (a token bucket); changes
beyond that are folded into one ``snapshot`` of the lock's latest state sent
as soon as the bucket allows, so the latest state is never lost. A task
taking the lock from an acquisition loop (waiting, released, acquired,
released, acquired) fits in one burst and is seen whole. A snapshot of every lock also goes out when the
agent (re)joins the router and every ``snapshot_every`` seconds.
"""
import threading
import time

from .listeners import Listeners
from .leases.lease_report import LeaseReport
from .lock import TimeoutLock
from .wamp import JoinEdge
from .wire import LOCKS_FEED, QUEUE_SHOWN

__all__ = ['LockReporter', 'report_locks', 'FEED_NAME', 'snapshot_message', 'queue_entries']

#: The feed every agent publishes its lock events on.
FEED_NAME = LOCKS_FEED


def snapshot_message(lock):
    """The ``snapshot`` message body (without seq/boot) for a lock's state now.

    For a free lock ``token`` is the last grant's token (every grant gets
    the next token, so it equals the number of grants so far).
    """
    st = lock.status()
    h = st.holder
    lease = {'lease': lock.lease_resource} if isinstance(lock, LeaseReport) else {}
    return {**lease, 'lock': st.name, 'event': 'closed' if st.closed and h is None else 'snapshot',
            'job': h.job if h else None, 'op': h.op if h else None,
            'session_id': h.session_id if h else None, 'since': h.since if h else None,
            'waiters': len(st.waiters), 'token': h.token if h else st.counters.acquired,
            'queue': queue_entries(st.waiters)}


def queue_entries(waiters):
    """The ``queue`` of a message: the first QUEUE_SHOWN of ``waiters``
    (:class:`~ocs_locking.status.WaiterInfo` or ``QueuedWaiter``, FIFO) as ``{'job', 'op',
    'session_id', 'since'}`` (``age`` is added when the message is sent)."""
    return [{'job': w.job, 'op': w.op, 'session_id': w.session_id, 'since': w.since}
            for w in waiters[:QUEUE_SHOWN]]


class LockReporter:
    """Publishes the events of an agent's locks on its ``locks`` feed.

    Args:
        agent (OCSAgent): the agent whose feed carries the events.
        min_interval (float): after a burst, at most one message per lock per
            this many seconds; changes in between are folded into one snapshot.
        burst (int): messages a lock may send at once before folding starts.
        snapshot_every (float): seconds between full snapshots.
        reactor: the Twisted reactor (default: the global one).
    """

    def __init__(self, agent, *, min_interval=0.01, burst=8, snapshot_every=5.0,
                 reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.agent = agent
        self.reactor = reactor
        self.min_interval = min_interval
        self.burst = burst
        self.snapshot_every = snapshot_every
        self.boot = time.time()
        self.seq = 0
        self.locks = {}
        self._guard = threading.Lock()
        # Messages waiting for the reactor, in order; delivered to _send on
        # the reactor thread (one scheduled delivery at a time).
        self._out = Listeners(f'the {FEED_NAME} feed', schedule=reactor.callFromThread)
        self._out.add(self._send)
        self._bucket = {}           # lock name -> [tokens, reactor time of last refill]
        self._folded = {}           # lock name -> {'acquired': n, 'gave_up': n} folded
        self._join = JoinEdge(agent)
        agent.register_feed(FEED_NAME, record=False, max_messages=100)
        self._ticker = None
        reactor.callWhenRunning(self._start)

    def attach(self, lock):
        """Publish this lock's events from now on (and include it in
        snapshots). A :class:`~ocs_locking.leases.sitelock.SiteLock` is
        reported as a lock of its own (its ``report``): its holder and
        waiter are the agent's operations holding and waiting for the
        lease, and its messages carry ``lease`` (the resource)."""
        if isinstance(getattr(lock, 'report', None), LeaseReport):
            lock = lock.report
        if not isinstance(lock, (TimeoutLock, LeaseReport)):
            raise TypeError(f'can only report a TimeoutLock or a SiteLock, not {lock!r}')
        if lock.name in self.locks and self.locks[lock.name] is not lock:
            raise ValueError(f"this agent already reports a lock named '{lock.name}'; "
                             f"give each lock its own name")
        self.locks[lock.name] = lock
        lock.add_listener(self._on_event)
        self.reactor.callFromThread(self._publish_snapshot, lock)
        return lock

    # -- any thread ---------------------------------------------------------------

    def _on_event(self, ev):
        now = self.reactor.seconds()
        with self._guard:
            name = ev.lock
            folded = self._folded.get(name)
            if folded is not None:      # a snapshot of this lock is already due
                if ev.event in folded:
                    folded[ev.event] += 1
                return
            if not self._take_token(name, now):
                self._folded[name] = {'acquired': int(ev.event == 'acquired'),
                                      'gave_up': int(ev.event == 'gave_up')}
                delay = (1 - self._bucket[name][0]) * self.min_interval
                self.reactor.callFromThread(self.reactor.callLater, delay,
                                            self._publish_folded, name)
                return
            lease = getattr(self.locks.get(name), 'lease_resource', None)
            self._out.put({**({'lease': lease} if lease else {}),
                           'lock': name, 'event': ev.event, 'job': ev.job,
                           'op': ev.op, 'session_id': ev.session_id,
                           'since': ev.since, 'waiters': ev.waiters,
                           'token': ev.token, 'queue': queue_entries(ev.queue)})
        self._out.deliver()

    def _take_token(self, name, now):
        """Token bucket per lock (guard held): True if a message may go now."""
        bucket = self._bucket.get(name)
        if bucket is None:
            bucket = self._bucket[name] = [float(self.burst), now]
        elif self.min_interval > 0:
            bucket[0] = min(float(self.burst),
                            bucket[0] + (now - bucket[1]) / self.min_interval)
        else:
            bucket[0] = float(self.burst)
        bucket[1] = now
        if bucket[0] >= 1:
            bucket[0] -= 1
            return True
        return False

    # -- reactor thread ---------------------------------------------------------

    def _start(self):
        from twisted.internet import task
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._last_snapshot = -1e9
        self._ticker.start(1.0, now=True)

    def _tick(self):
        rejoined = self._join.poll()
        now = self.reactor.seconds()
        if self._join.joined and (rejoined or now - self._last_snapshot >= self.snapshot_every):
            self._last_snapshot = now
            for lock in list(self.locks.values()):
                self._publish_snapshot(lock)

    def _publish_folded(self, name):
        with self._guard:
            folded = self._folded.pop(name, {})
            self._take_token(name, self.reactor.seconds())
        lock = self.locks.get(name)
        if lock is not None:
            msg = snapshot_message(lock)
            msg.update(folded_acquired=folded.get('acquired', 0),
                       folded_gave_up=folded.get('gave_up', 0))
            self._out.put(msg)      # behind the earlier events: order kept
            self._out.run()

    def _publish_snapshot(self, lock):
        self._out.put(snapshot_message(lock))
        self._out.run()

    def _send(self, msg):
        if not getattr(self.agent, 'realm_joined', True):
            return      # not on the bus: the snapshot at (re)join covers it
        self.seq += 1
        msg['seq'] = self.seq
        msg['boot'] = self.boot
        since = msg.get('since')
        now = time.time()
        msg['age'] = None if since is None else round(max(0.0, now - since), 6)
        for w in msg.get('queue') or ():
            w['age'] = round(max(0.0, now - w['since']), 6)
        self.agent.publish_to_feed(FEED_NAME, msg)


_reporters = {}


def report_locks(agent, *locks, **options):
    """Publish these locks' events on ``agent``'s ``locks`` feed (one reporter
    per agent; call again to add locks). Returns the :class:`LockReporter`."""
    reporter = _reporters.get(id(agent))
    if reporter is None or reporter.agent is not agent:
        reporter = _reporters[id(agent)] = LockReporter(agent, **options)
    for lock in locks:
        reporter.attach(lock)
    return reporter
