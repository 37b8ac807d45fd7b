"""Listeners: ordered delivery of events to callbacks, outside the producer's lock.

Contract
--------
* **Order.** Items are delivered in the order they were :meth:`~Listeners.put`.
  A producer that puts while holding its own mutex therefore gets its
  listeners called in the order its changes happened.
* **Outside the producer's lock.** :meth:`~Listeners.put` only appends;
  :meth:`~Listeners.deliver` calls the listeners, and the producer calls it
  after letting go of its mutex, so a listener may call back into the
  producer (e.g. ``lock.status()``) without deadlocking.
* **One at a time, never stranded.** One thread delivers at a time. A thread
  that calls :meth:`~Listeners.deliver` while another delivers returns at once
  and leaves its items to that thread, which re-checks the queue before it
  returns: every item is delivered exactly once.
* **Where delivery runs.** In the thread that calls :meth:`~Listeners.deliver`,
  or, with ``schedule=`` (e.g. ``reactor.callFromThread``), wherever
  ``schedule`` runs it, with at most one scheduled run pending.
* **Failures stay local.** A listener that raises is logged (stdlib
  ``logging``, this module's logger) and skipped; the other listeners and
  later items are still delivered.

This module imports nothing from OCS, Twisted or the network.
"""
import logging
import threading
from collections import deque

__all__ = ['Listeners']

log = logging.getLogger(__name__)


class Listeners:
    """An ordered queue of items and the callbacks that receive them.

    Args:
        label (str): what the items come from, for log messages
            (e.g. ``"TimeoutLock 'hw'"``).
        schedule (callable): optional; ``schedule(fn)`` arranges for ``fn()``
            to run later (e.g. ``reactor.callFromThread``). Without it,
            :meth:`deliver` delivers in the calling thread.
    """
    __slots__ = ('label', 'fns', 'queue', '_delivering', '_schedule', '_scheduled')

    def __init__(self, label, *, schedule=None):
        self.label = label
        #: The callbacks, a tuple (replaced, never mutated: safe to iterate
        #: without a lock). Empty tuple when nobody listens.
        self.fns = ()
        #: Items put and not yet delivered (a deque; truthy when non-empty).
        self.queue = deque()
        self._delivering = threading.Lock()
        self._schedule = schedule
        self._scheduled = False

    def add(self, fn):
        """Call ``fn(item)`` for every item put from now on."""
        if not callable(fn):
            raise TypeError(f'listener must be callable, not {fn!r}')
        self.fns = self.fns + (fn,)

    def remove(self, fn):
        """Stop calling ``fn`` (no error if it was not a listener). Compared
        by equality, so ``remove(obj.method)`` undoes ``add(obj.method)``."""
        self.fns = tuple(f for f in self.fns if f != fn)

    def put(self, item):
        """Queue ``item`` (any thread; call it under the producer's mutex
        to fix the order)."""
        self.queue.append(item)

    def deliver(self):
        """Deliver every queued item now, or schedule that (see ``schedule``)."""
        if self._schedule is None:
            self.run()
        elif not self._scheduled:
            self._scheduled = True
            self._schedule(self._run_scheduled)

    def _run_scheduled(self):
        self._scheduled = False
        self.run()

    def run(self):
        """Deliver every queued item in the calling thread (see the contract)."""
        queue = self.queue
        while queue:
            if not self._delivering.acquire(blocking=False):
                return      # the thread delivering re-checks the queue
            try:
                while queue:
                    try:
                        item = queue.popleft()
                    except IndexError:
                        break
                    for fn in self.fns:
                        try:
                            fn(item)
                        except Exception:
                            log.exception('listener %r of %s failed on %r',
                                          fn, self.label, item)
            finally:
                self._delivering.release()
