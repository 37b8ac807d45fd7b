"""Values that describe a lock: its status snapshot and the events it emits.

Both are frozen dataclasses so they can be handed to other threads, logged or
published (``as_dict()`` gives the wire form) without copying.
"""
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional, Tuple

#: The kinds of :class:`LockEvent`, in the order a hold usually produces them.
from .wire import EVENTS  # noqa: E402  (re-exported)


@dataclass(frozen=True)
class HolderInfo:
    """Who holds the lock.

    ``since`` is wall-clock time (``time.time()``) of the grant; ``held_for``
    is how long it has been held when the status was taken, in seconds.
    ``token`` increases by one with every grant of this lock.
    """
    job: Optional[str]
    op: Optional[str]
    session_id: Optional[int]
    thread: Optional[str]
    since: float
    held_for: float
    token: int


@dataclass(frozen=True)
class WaiterInfo:
    """One queued acquire, in the order it will be served."""
    job: Optional[str]
    op: Optional[str]
    session_id: Optional[int]
    since: float
    waited_for: float
    reactor: bool


class QueuedWaiter(NamedTuple):
    """One waiter as a :class:`LockEvent` names it (built under the lock's
    mutex, so lighter than :class:`WaiterInfo`): ``since`` is the wall-clock
    time (``time.time()``) it began waiting."""
    job: Optional[str]
    op: Optional[str]
    session_id: Optional[int]
    since: float


@dataclass(frozen=True)
class LockCounters:
    """Totals since the lock was created; durations in seconds."""
    acquired: int = 0
    released: int = 0
    timed_out: int = 0
    cancelled: int = 0
    handoffs: int = 0
    longest_hold: float = 0.0
    longest_wait: float = 0.0


@dataclass(frozen=True)
class LockStatus:
    """A consistent snapshot of one lock, taken under its internal mutex."""
    name: str
    holder: Optional[HolderInfo]
    waiters: Tuple[WaiterInfo, ...]
    counters: LockCounters
    closed: bool

    @property
    def held(self):
        return self.holder is not None

    def as_dict(self):
        return asdict(self)

    def _held(self):
        """``held by 'acq' (session 12) for 3.4 s``: the one wording of a hold,
        shared by :meth:`describe` and :meth:`refusal`."""
        h = self.holder
        who = f"'{h.job}'" if h.job is not None else 'an unnamed job'
        if h.session_id is not None:
            who += f' (session {h.session_id})'
        return f'held by {who} for {h.held_for:.1f} s'

    def describe(self):
        """One line for people: ``'hw' held by 'acq' (session 12) for 3.4 s; 1 waiting``."""
        text = f"'{self.name}' is free" if self.holder is None else \
            f"'{self.name}' {self._held()}"
        text += f'; {len(self.waiters)} waiting'
        if self.closed:
            text += '; closed'
        return text

    def refusal(self, timeout=None):
        """The standard refusal of an operation that could not get this lock
        (``timeout``: how long it waited, if it says so)::

            Could not acquire lock 'hw': held by 'acq' (session 12) for 3.4 s; 1 waiting
        """
        if self.closed:
            return (f"Could not acquire lock '{self.name}': it is closed (the agent is "
                    'shutting down)')
        if self.holder is None:     # freed between the timeout and this message
            within = '' if timeout is None else f' within {timeout:g} s'
            return f"Could not acquire lock '{self.name}'{within}; it is free now, try again"
        return f"Could not acquire lock '{self.name}': {self._held()}; {len(self.waiters)} waiting"


@dataclass(frozen=True)
class LockEvent:
    """One change of a lock, delivered to listeners in ``seq`` order.

    ``job``/``op``/``session_id``/``since`` describe the hold or the waiter the
    event is about; ``waiters`` is the queue length after the change; ``token``
    is the grant's token (0 for a waiter that never got the lock); ``queue``
    the first :data:`ocs_locking.wire.QUEUE_SHOWN` waiters after the change,
    in the order they will be served (:class:`QueuedWaiter`).
    """
    lock: str
    event: str
    job: Optional[str]
    op: Optional[str]
    session_id: Optional[int]
    since: Optional[float]
    waiters: int
    token: int
    seq: int
    queue: Tuple[QueuedWaiter, ...] = ()

    def as_dict(self):
        return asdict(self)
