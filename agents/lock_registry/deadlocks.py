"""The registry's deadlock watch: cycles through agents' own locks, reported.

A site-lease request that would close a cycle of lease owners is refused
by the lease state itself. A cycle that runs through an agent's own lock
(two operations taking two locks in opposite orders; an operation holding
its agent's lock while it waits for a site lease whose holder waits for
that lock) is no request the registry could refuse: it reports it.

:class:`DeadlockWatch` looks again :data:`SETTLE` seconds after any change
that can close or open a cycle (a lock message with a queue or from a
reported SiteLock, an agent leaving, any lease change while a request
waits), and at every monitor tick, with :func:`ocs_locking.deadlock.site_deadlocks`
over the table's live rows and the lease state. A cycle found is logged
once, flagged ``deadlock`` on its rows and leases (on ``ownership``, the
page, ``ocs-locks status``), counted on the ``alerts`` feed and spelled out
by ``why`` and in the monitor's ``deadlocks``; each keeps the registry time
it was first seen. Reactor thread only.
"""
from ocs_locking.deadlock import site_deadlocks

__all__ = ['DeadlockWatch', 'SETTLE']

#: Seconds between a change and the look at the graph: messages of one
#: step (an acquire and the waiter it queued behind) arrive together.
SETTLE = 0.05


class DeadlockWatch:
    """Finds the site's deadlocks after each change that may close one.

    Args:
        table: the registry's OwnershipTable.
        leases: a callable returning the lease state's snapshot, or None.
        clock: the registry's clock (time.time).
        waiting: a callable, true while a lease request waits (cheap: it
            is asked at every lease change), or None.
        on_change: called with no argument when the set of cycles changes.
        reactor: for the settle delay.
        log: the agent's logger.
    """

    def __init__(self, table, leases, clock, on_change, reactor, log, waiting=None):
        self.table, self.leases, self.clock = table, leases, clock
        self.waiting = waiting
        self.on_change, self.reactor, self.log = on_change, reactor, log
        #: key (the cycle's parties) -> the cycle (site_deadlocks' dict and
        #: ``since``: registry time first seen)
        self.current = {}
        self._call = None
        self.checks = 0

    def poke(self):
        """Something changed: look again in SETTLE seconds (once)."""
        if self._call is None or not self._call.active():
            self._call = self.reactor.callLater(SETTLE, self.check)

    def rows_changed(self, rows):
        """Poke for changed table rows that can make or break a cycle."""
        if self.current or any(r.get('queue') or r.get('lease') for r in rows):
            self.poke()

    def lease_changed(self, action, item):
        """A lease state listener: any change matters while a request waits
        (asked without a snapshot: this runs at every grant and release)."""
        if self.current or action == 'queue' or (self.waiting is not None
                                                 and self.waiting()):
            self.poke()

    def check(self):
        """Find the cycles now; call on_change if they changed. Returns them."""
        self._call = None
        self.checks += 1
        leases = self.leases() if self.leases is not None else None
        found = site_deadlocks(self.table.waits(), leases)
        now = self.clock()
        new = {}
        for d in found:
            key = tuple(d['nodes'])
            old = self.current.get(key)
            new[key] = dict(d, since=old['since'] if old else now)
            if old is None:
                self.log.warn('{text}', text=d['text'])
        changed = set(new) != set(self.current) or any(
            new[k]['text'] != self.current[k]['text'] for k in new)
        self.current = new
        if changed:
            self.on_change()
        return found

    def flagged(self):
        """``(lock keys, lease resources)`` caught in a cycle now, each
        ``{key: seconds since the cycle was first seen}`` (the worst)."""
        now = self.clock()
        locks, leases = {}, {}
        for d in self.current.values():
            age = round(max(0.0, now - d['since']), 3)
            for k in d['locks']:
                locks[k] = max(locks.get(k, 0.0), age)
            for r in d['leases']:
                leases[r] = max(leases.get(r, 0.0), age)
        return locks, leases

    def public(self):
        """The cycles for session.data and ``why``: ``[{'text', 'parties',
        'locks', 'leases', 'local', 'for'}]`` (``for``: seconds since first
        seen), oldest first."""
        now = self.clock()
        return [{'text': d['text'], 'parties': d['parties'], 'locks': d['locks'],
                 'leases': d['leases'], 'local': d['local'],
                 'for': round(max(0.0, now - d['since']), 3)}
                for d in sorted(self.current.values(), key=lambda d: (d['since'], d['text']))]
