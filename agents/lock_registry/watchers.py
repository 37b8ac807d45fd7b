"""The registry's lease watches: long polls that answer when something
happens to one lease.

A holder (``SiteLock``, ``Reservation``) keeps one call of the procedure
``<registry>.lease.watch(resource, lease_id, wait)`` outstanding while it
holds; the registry answers it at once when the lease is revoked
(force_release), expires, is released, or its holder is asked to give way
(a preempt notice), and otherwise after ``wait`` seconds (``timeout``: the
holder polls again). The lease_id authenticates the watch (a secret, never
logged); the watch is kept under the grant's request id.

Who wakes a watch:

* **an event** on its lease: the state's listener (:meth:`Watchers.wake`);
* **its own timeout**: a reactor timer at ``wait`` (``timeout``);
* **the registry stopping**: ``LeaseOps.close`` before the reactor shuts
  down (``stopping``; the holder falls back to renewals and polls again);
* **the router lost**: the agent's ``leave`` (``stopping``; the answer
  cannot reach the caller, whose call the router has already failed: this
  frees the timer and the slot);
* **its holder releasing**: the release itself is an event (``released``);
  a WAMP caller also cancels its call (the router INTERRUPTs it: the
  Deferred's canceller drops the watch).

Caps: at most ``per_lease`` watches per lease and ``total`` in all; a watch
over a cap is refused in one line (the holder keeps renewing and tries
again later).
"""
from twisted.internet import defer

from ocs_locking.wire import WATCH_WAIT

__all__ = ['Watchers', 'WatchRefused', 'MAX_WATCHERS_PER_LEASE', 'MAX_WATCHERS',
           'WATCH_WAIT', 'MAX_WATCH_WAIT']

#: Watches one lease may have outstanding at once.
MAX_WATCHERS_PER_LEASE = 4
#: Watches outstanding at once on the whole registry.
MAX_WATCHERS = 1000
#: The longest wait a watch may ask for, seconds.
MAX_WATCH_WAIT = 60.0


class WatchRefused(Exception):
    """A watch over a cap (one line)."""


class Watchers:
    """Outstanding watches, by request id, each a Deferred fired once with
    an event dict (``{'event': ..., ...}``).

    Contract: a watch is in the table from :meth:`add` until it fires (an
    event, its timeout, :meth:`wake_all`) or its Deferred is cancelled;
    its timer is cancelled with it. Reactor thread only.
    """

    def __init__(self, reactor, per_lease=MAX_WATCHERS_PER_LEASE, total=MAX_WATCHERS):
        self.reactor = reactor
        self.per_lease, self.total = per_lease, total
        self._by_rid = {}           # request id -> {Deferred: timer}
        self.woken = {}             # event name -> how many watches it answered

    def __len__(self):
        return sum(len(w) for w in self._by_rid.values())

    def count(self, request_id):
        return len(self._by_rid.get(request_id, ()))

    def add(self, request_id, wait, what):
        """A Deferred that fires with the next event of ``request_id``'s
        lease, or ``{'event': 'timeout'}`` after ``wait`` seconds. Raises
        WatchRefused over a cap (``what`` names the lease in it)."""
        mine = self._by_rid.get(request_id, {})
        if len(mine) >= self.per_lease:
            raise WatchRefused(f'the lease on {what} already has {len(mine)} watches '
                               f'(at most {self.per_lease} per lease)')
        if len(self) >= self.total:
            raise WatchRefused(f'the registry already has {len(self)} lease watches '
                               f'(at most {self.total})')
        d = defer.Deferred(canceller=lambda d: self._drop(request_id, d))
        timer = self.reactor.callLater(wait, self._fire, request_id, d,
                                       {'event': 'timeout', 'waited': wait})
        self._by_rid.setdefault(request_id, {})[d] = timer
        return d

    def wake(self, request_id, event):
        """Answer every watch of ``request_id`` with ``event``; how many."""
        return sum(self._fire(request_id, d, event)
                   for d in list(self._by_rid.get(request_id, ())))

    def wake_all(self, event):
        """Answer every watch with ``event`` (registry stopping, router lost)."""
        return sum(self.wake(rid, event) for rid in list(self._by_rid))

    def _drop(self, request_id, d):
        mine = self._by_rid.get(request_id)
        timer = mine.pop(d, None) if mine is not None else None
        if mine is not None and not mine:
            del self._by_rid[request_id]
        if timer is not None and timer.active():
            timer.cancel()
        return timer is not None

    def _fire(self, request_id, d, event):
        if not self._drop(request_id, d) or d.called:
            return 0
        self.woken[event['event']] = self.woken.get(event['event'], 0) + 1
        d.callback(dict(event))
        return 1
