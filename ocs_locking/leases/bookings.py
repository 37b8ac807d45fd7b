"""Booked reservations: a resource's calendar of future windows (pure).

A *booking* reserves one or several resources (all or nothing, tree-scoped
like a lease) for the window ``[start, end)`` of the registry's clock. This
module holds the value (:class:`Booking`) and the calendar's rules, as
functions over the bookings of a registry:

* :func:`check_window` checks a new window (end after start, not in the
  past, not too far ahead, not too long);
* :func:`clash` finds the live booking a new one would overlap: the windows
  overlap in time (``a.start < b.end and b.start < a.end``; back to back
  is not an overlap) *and* a path of one conflicts with a path of the other
  (:func:`~.paths.conflicts`: the same path, or a tree booking above it),
  whoever the owners;
* :func:`next_free` finds the earliest window of a given length, from a
  given time, that no live booking on a covered path overlaps;
* :func:`following` finds the live booking that would cap an extension.

How a booking becomes a lease at its start, ends at its end, and warns
holders in its way is :class:`~.state.LeaseState`'s (``booking_state.py``);
no OCS, Twisted or network here, and time is always passed in.

**The claim key.** A booking made through the registry's procedure gets a
secret *claim key*, returned once to the booker: at the start the lease is
granted with that key as its ``lease_id`` (only its SHA-256, ``key``, is
kept), so the booker renews (extends), releases and watches the lease with
it, without having been connected at the start. A booking without a key
(the public OCS task) becomes a lease nobody can renew or release: it ends
at its end, or by ``force_release`` / a privileged ``unbook``.
"""
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Tuple

from ..errors import LeaseError
from .paths import overlap

__all__ = ['Booking', 'check_window', 'clash', 'next_free', 'following', 'window_text',
           'STATES', 'LIVE', 'MAX_AHEAD', 'MAX_LENGTH', 'MIN_LENGTH', 'WARN_AHEAD',
           'START_SLACK', 'MAX_BOOKINGS', 'MAX_BOOKINGS_PER_OWNER', 'KEEP_DONE']

#: ``booked``: waiting for its start (or, after it, for its resources);
#: ``held``: its lease is granted; ``done``: over (``outcome`` says how:
#: ``expire`` at its end, ``release`` by the booker, ``force_release``,
#: ``missed``: its whole window passed ungranted, ``cancelled``: unbooked).
STATES = ('booked', 'held', 'done')
LIVE = ('booked', 'held')
#: A booking may start at most this far ahead of now, seconds (30 days).
MAX_AHEAD = 30 * 86400.0
#: The longest booking, seconds (one day), and the shortest.
MAX_LENGTH, MIN_LENGTH = 86400.0, 1.0
#: A start this many seconds in the past is still taken (as "now": the
#: booking starts at once); earlier is refused.
START_SLACK = 5.0
#: Holders in a booking's way are asked to give way (a preempt notice) this
#: long before its start (or at once, when booked or granted later); the
#: booker is warned this long before its end.
WARN_AHEAD = 60.0
#: Live bookings at most, in all and per owner.
MAX_BOOKINGS, MAX_BOOKINGS_PER_OWNER = 1000, 100
#: Finished bookings remembered (for ``calendar`` and ``claim``'s answers).
KEEP_DONE = 200


@dataclass(frozen=True)
class Booking:
    """One booked window. ``start`` and ``end`` are the registry's clock
    (seconds since the epoch, UTC); ``resources`` sorted. ``key`` is the
    SHA-256 of the claim key (never the key; None: unclaimable).
    ``request_id``: the lease request it became, once queued or held."""
    booking_id: int
    resources: Tuple[str, ...]
    tree: bool
    owner: str
    start: float
    end: float
    note: str = ''
    client: str = ''
    booked_at: float = 0.0
    state: str = 'booked'
    outcome: str = ''
    request_id: Optional[int] = None
    ended_at: Optional[float] = None
    caller: Optional[dict] = None
    key: Optional[str] = field(default=None, repr=False, compare=False)

    @property
    def live(self):
        return self.state in LIVE

    def public(self):
        """As tables, feeds and task results show it: no key, only whether
        the booking has one (``claimable``)."""
        out = asdict(self)
        del out['key'], out['caller']
        out['resources'] = list(self.resources)
        out['claimable'] = self.key is not None
        return out

    def stored(self):
        """As the store keeps it (the key's hash included)."""
        return dict(asdict(self), resources=list(self.resources))

    @classmethod
    def from_stored(cls, row):
        row = dict(row)
        row['resources'] = tuple(row['resources'])
        return cls(**{k: v for k, v in row.items() if k in cls.__dataclass_fields__})

    def but(self, **changes):
        return replace(self, **changes)


def window_text(b, utc):
    """``satp1/hwp from 02:00:00 UTC to 03:00:00 UTC (booking 7, 'alice')``."""
    return (f"{', '.join(b.resources)}{' (tree)' if b.tree else ''} from {utc(b.start)} to "
            f"{utc(b.end)} (booking {b.booking_id}, {b.owner!r:.40})")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not -1e12 <= value <= 1e12:
        raise LeaseError(f'{name} must be a time in seconds (UTC), not {value!r:.40}')
    return float(value)


def check_window(start, end, now, max_ahead=MAX_AHEAD, max_length=MAX_LENGTH,
                 utc=str):
    """``(start, end)`` as floats if ``[start, end)`` may be booked at
    ``now``, else LeaseError in one line naming the rule: end after start,
    start not in the past (``START_SLACK`` allowed: then it starts at
    ``now``), at most ``max_ahead`` ahead, length in [MIN_LENGTH,
    max_length]. ``utc`` formats an instant for the message."""
    start, end = _number('start', start), _number('end', end)
    if end <= start:
        raise LeaseError(f'end ({utc(end)}) must be after start ({utc(start)})')
    if start < now - START_SLACK:
        raise LeaseError(f'start ({utc(start)}) is in the past (now is {utc(now)})')
    if start > now + max_ahead:
        raise LeaseError(f'start ({utc(start)}) is too far ahead: at most '
                         f'{max_ahead / 86400:g} days from now')
    length = end - max(start, now)
    if length < MIN_LENGTH:
        raise LeaseError(f'the window must be at least {MIN_LENGTH:g} s long from now, '
                         f'not {length:g} s')
    if end - start > max_length:
        raise LeaseError(f'the window is too long: {(end - start) / 3600:g} h, at most '
                         f'{max_length / 3600:g} h')
    return max(start, now), end


def _overlaps(b, resources, tree, start, end):
    return b.live and b.start < end and start < b.end and \
        overlap(b.resources, b.tree, resources, tree)


def clash(bookings, resources, tree, start, end, exclude=None):
    """The first live booking (by start) other than ``exclude`` (an id)
    whose window overlaps ``[start, end)`` on a conflicting path, or None."""
    found = [b for b in bookings if b.booking_id != exclude
             and _overlaps(b, resources, tree, start, end)]
    return min(found, key=lambda b: (b.start, b.booking_id)) if found else None


def following(bookings, resources, tree, after, exclude=None):
    """The live booking other than ``exclude`` on a path conflicting with
    ``resources`` that starts first at or after ``after`` (None: none):
    an extension of a booked lease past ``after`` stops at its start."""
    found = [b for b in bookings if b.booking_id != exclude and b.live
             and b.end > after and overlap(b.resources, b.tree, resources, tree)]
    return min(found, key=lambda b: (b.start, b.booking_id)) if found else None


def next_free(bookings, resources, tree, length, after, horizon=MAX_AHEAD):
    """The earliest ``t >= after`` such that ``[t, t + length)`` overlaps
    no live booking on a path conflicting with ``resources`` (tree-scoped
    like a booking of them), within ``[after, after + horizon]`` (the
    window must end by then); None when there is none. Current leases do
    not count: a booking preempts them (see the module docstring)."""
    if isinstance(length, bool) or not isinstance(length, (int, float)) \
            or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise LeaseError(f'length must be in [{MIN_LENGTH:g}, {MAX_LENGTH:g}] seconds, '
                         f'not {length!r:.40}')
    after = _number('after', after)
    t = after
    busy = sorted((b for b in bookings if b.live and b.end > after
                   and overlap(b.resources, b.tree, resources, tree)),
                  key=lambda b: b.start)
    for b in busy:
        if b.start >= t + length:
            break
        t = max(t, b.end)
    return t if t + length <= after + horizon else None
