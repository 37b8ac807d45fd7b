"""A SiteLock as a lock of its agent, for the agent's ``locks`` feed (pure).

``report_locks(agent, site_lock)`` publishes a SiteLock's state beside the
agent's own locks: a row whose holder is the operation that holds the
lease in this agent and whose queue is the operation waiting for it in the
registry's queue, with ``lease`` naming the resource. That is what lets the
registry follow a wait from an agent's own lock into a site lease and out
again (:mod:`ocs_locking.deadlock`): the lease's owner alone (the agent)
does not say which of its operations holds or waits.

:class:`LeaseReport` keeps that state and makes the same
:class:`~ocs_locking.status.LockStatus` and
:class:`~ocs_locking.status.LockEvent` values a TimeoutLock does. The
SiteLock calls it on the reactor thread; listeners are called there.

Pure: no OCS, no Twisted, no I/O.
"""
import re
import time

from ..status import HolderInfo, LockCounters, LockEvent, LockStatus, QueuedWaiter, WaiterInfo

__all__ = ['LeaseReport', 'report_name']

_NAME = re.compile(r'^[A-Za-z0-9_.:-]{1,64}$')


def report_name(resource, name=None):
    """The lock name a SiteLock of ``resource`` is reported under: ``name``,
    else ``lease:`` and the path with ``/`` as ``:`` (``lease:satp1:hwp``).
    Raises ValueError (one line) for a name the ``locks`` feed cannot carry."""
    out = name
    if name is None:
        out = 'lease:' + str(resource).replace('/', ':')
        if len(out) > 64:       # a long path: its end (the row's ``lease`` says it all)
            out = 'lease:' + out[-58:]
    if not isinstance(out, str) or not _NAME.match(out):
        raise ValueError(f'a SiteLock is reported as a lock named with 1-64 letters, digits '
                         f'or _.:- (pass name=...), not {out!r:.80}')
    return out


class LeaseReport:
    """Who holds and who waits for one SiteLock in its agent."""

    def __init__(self, name, resource, clock=time.time):
        self.name = name
        self.lease_resource = resource
        self._clock = clock
        self._holder = None     # (job, op, session_id, since, token)
        self._waiter = None     # (job, op, session_id, since)
        self._acquired = self._timed_out = 0
        self._seq = 0
        self._listeners = []

    def add_listener(self, callback):
        """Call ``callback(LockEvent)`` at each change."""
        self._listeners.append(callback)

    def status(self):
        now = self._clock()
        h = self._holder
        holder = None if h is None else HolderInfo(h[0], h[1], h[2], None, h[3],
                                                   max(0.0, now - h[3]), h[4])
        w = self._waiter
        waiters = () if w is None else (WaiterInfo(w[0], w[1], w[2], w[3],
                                                   max(0.0, now - w[3]), True),)
        return LockStatus(self.name, holder, waiters,
                          LockCounters(acquired=self._acquired, timed_out=self._timed_out),
                          False)

    # -- changes (the SiteLock's) ------------------------------------------------------

    def waiting(self, job, op, session_id):
        """An acquire that may wait in the registry's queue was sent."""
        self._waiter = (job, op, session_id, self._clock())
        self._emit('waiting', *self._waiter, token=0)

    def acquired(self, job, op, session_id):
        # ``token`` on the feed counts the grants, as a TimeoutLock's does
        # (the fencing token is in the registry's lease table)
        self._waiter = None
        self._acquired += 1
        self._holder = (job, op, session_id, self._clock(), self._acquired)
        self._emit('acquired', *self._holder[:4], token=self._holder[4])

    def gave_up(self):
        """The acquire did not get the lease (busy, timed out, refused)."""
        w, self._waiter = self._waiter, None
        if w is not None:
            self._timed_out += 1
            self._emit('gave_up', *w, token=0)

    def released(self):
        """Released, or lost: this agent holds the lease no more."""
        h, self._holder = self._holder, None
        if h is not None:
            self._emit('released', *h[:4], token=h[4])

    def _emit(self, event, job, op, session_id, since, token):
        self._seq += 1
        w = self._waiter
        queue = () if w is None else (QueuedWaiter(*w),)
        ev = LockEvent(self.name, event, job, op, session_id, since, len(queue),
                       token, self._seq, queue)
        for cb in list(self._listeners):
            cb(ev)
