"""The site leases on the registry's ``ownership`` feed (issue 12, contract B).

A :class:`LeaseFeed` listens to the lease state and publishes one message

    {'kind': 'leases', 'seq': n, 'timestamp': t, 'grants': [...], 'waiting': [...],
     'grants_total': g, 'waiting_total': w}

whenever it changes: changes are coalesced, at most one message per reactor
turn and at most one per ``min_interval`` seconds (a change within it is
published when it ends, so the latest state is never lost), and one right
after every ownership snapshot (:meth:`publish`), so a watch that started
between changes has the leases within one snapshot period. Rows are the
public shape of the ``leases`` task (never a lease id, its hash or a
credential); each grant also says ``expires_in``: seconds left on the
registry's own clock when the message was built, so a watcher counts down
on its own clock and never compares two hosts' clocks. The rows fit the
registry's message budget (the first page of :func:`.lease_pages.lease_page`;
the totals say how many there are).
"""
import time

from ocs_locking.wire import LEASES_KIND, OWNERSHIP_FEED, json_size

from ocs_locking.agents.lock_registry.lease_pages import (LEASE_PAGE_ROWS, lease_page,
                                                       with_expires_in)

__all__ = ['LeaseFeed', 'MIN_INTERVAL', 'leases_message']

#: At most one leases message per this many seconds (about 10 per second).
MIN_INTERVAL = 0.1


def leases_message(snapshot, seq, now, timestamp, budget, lengths=None, extra=None):
    """The leases message for ``snapshot`` (:meth:`LeaseState.snapshot`) as
    of ``now`` (the lease state's clock), within ``budget`` octets
    (``lengths``, ``extra``: see :func:`.lease_pages.with_expires_in`)."""
    page = lease_page({'grants': with_expires_in(snapshot['grants'], now, lengths, extra),
                       'waiting': snapshot['waiting'], 'counters': {}},
                      0, LEASE_PAGE_ROWS, budget)
    return {'kind': LEASES_KIND, 'seq': seq, 'timestamp': timestamp, 'grants': page['grants'],
            'waiting': page['waiting'], 'grants_total': page['grants_total'],
            'waiting_total': page['waiting_total']}


class LeaseFeed:
    """Publishes the lease state of ``leases`` (a LeaseOps) on ``agent``'s
    ``ownership`` feed (registered by the LockRegistryAgent).

    Args:
        agent (OCSAgent): the registry's agent.
        leases (LeaseOps): its lease service (``state``, ``clock``, ``budget``).
        reactor: the Twisted reactor (``callLater``, ``seconds``).
        min_interval (float): at most one message per this many seconds.
    """

    def __init__(self, agent, leases, reactor, min_interval=MIN_INTERVAL):
        self.agent, self.leases, self.reactor = agent, leases, reactor
        self.min_interval = min_interval
        self.seq = 0
        self._call = None           # the publication scheduled, if any
        self._last = None           # reactor time of the last publication
        leases.state.add_listener(self._on_change)

    def _on_change(self, action, item):
        """A lease state change (the lease state's listener): publish at the
        end of this turn, or when min_interval since the last one has passed."""
        if self._call is not None and self._call.active():
            return
        now = self.reactor.seconds()
        delay = 0.0 if self._last is None else max(0.0, self._last + self.min_interval - now)
        self._call = self.reactor.callLater(delay, self.publish)

    def publish(self):
        """Publish the lease state now (a change scheduled meanwhile is covered)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._last = self.reactor.seconds()
        self.seq += 1
        budget = self.leases.budget - json_size({'kind': LEASES_KIND, 'seq': self.seq})
        message = leases_message(self.leases.state.snapshot(), self.seq,
                                 self.leases.clock(), time.time(), budget,
                                 getattr(self.leases, 'lease_lengths', None),
                                 getattr(self.leases, 'flagged_leases', None))
        self.agent.publish_to_feed(OWNERSHIP_FEED, message)
        return message
