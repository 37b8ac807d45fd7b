"""The lease-holder core shared by SiteLock (agents) and Reservation (scripts).

Pure: no Twisted, no OCS, no threads, no network; the clock is passed in and
must be *monotonic* (``time.monotonic``). A shell sends the registry's lease
calls and tells the core what came back; the core keeps the tokens, the
local deadline and the reason the lease was lost.

The local deadline never relies on another host's wall clock. It is counted
on this host's monotonic clock from when a request was *sent*:

* on a grant: send time + the time the registry says the request waited in
  its queue (``queued_for``, a duration on the registry's clock) + the lease;
* on a renewal: send time of that renewal + the lease.

The registry starts the lease no earlier than it received the request, so the
local deadline falls no later than the registry's expiry (both clocks tick at
the same rate); a holder frozen past it is refused before it talks to the
hardware, whatever the clocks of the two hosts say. No instant of the
registry's wall clock (``expires``) is ever compared with this host's: it
is kept for display only.

A device call is fenced *in flight* too: :meth:`LeaseHolder.check` with the
call's ``timeout`` refuses to start it unless ``timeout + GUARD_MARGIN``
seconds of the lease are left on the monotonic clock, so a call that was
allowed to start ends (or times out) before the registry can give the lease
to someone else.
"""
import math
import time
from dataclasses import dataclass, field

from ..errors import LeaseBusy, LeaseLost, LeaseTooShort, LeaseUnavailable
from ..wire import one_line
from .paths import bad_value, check_lease, check_resources, check_text, when

__all__ = ['LeaseHolder', 'Answer', 'Notice', 'describe_holders', 'utc', 'MAX_RESOURCES',
           'MAX_OWNER', 'GUARD_MARGIN', 'WATCH_RETRY', 'WATCH_RETRY_MAX', 'RELEASE_RESEND_FOR',
           'release_resend_until']

#: A request names at most this many resources (the registry's default).
MAX_RESOURCES = 16
MAX_OWNER = 128
#: Seconds of the lease a guarded call needs beyond its own timeout: the hop
#: from the guard to the wire (a device thread's queue, scheduling on a busy
#: host) and the reply's way back.
GUARD_MARGIN = 0.25
#: Longest device-call timeout a guard accepts, seconds (the longest lease).
MAX_CALL = 3600.0
#: After a watch that failed (no answer, refused), the next one is sent
#: this many seconds later, the delay doubling up to WATCH_RETRY_MAX; the
#: renewals keep the lease meanwhile.
WATCH_RETRY, WATCH_RETRY_MAX = 0.5, 5.0
#: Seconds a release that got no answer (the registry failing over to its
#: standby, a router restart) is sent again for, at most: about the time a
#: standby takes to serve (docs/standby.rst) with room to spare, and short
#: enough that a script's exit never waits long for a registry that stays
#: away (the lease then ends at its expiry, as before).
RELEASE_RESEND_FOR = 3.0
#: A watch answered ``timeout`` sooner than this after it was sent is not
#: polled again at once (a registry that answers too early cannot make the
#: holder spin): the next one waits WATCH_RETRY.
WATCH_MIN_POLL = 1.0


def utc(t):
    """``12:01:03 UTC``: the wall-clock instant ``t`` (seconds), for display."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return 'an unknown time'
    return time.strftime('%H:%M:%S UTC', time.gmtime(t))


@dataclass(frozen=True)
class Notice:
    """What a watch's answer means to the holder (see
    :meth:`LeaseHolder.watched`).

    ``kind``: ``lost`` (``reason``: the lease is lost now), ``preempt``
    (``reason``, and ``deadline``: when the lease will be revoked, on the
    holder's monotonic clock; watch again at once), ``again`` (watch again
    at once), ``retry`` (watch again after ``delay`` seconds; ``reason``
    says why), ``done`` (not held any more: stop watching)."""
    kind: str
    reason: str = ''
    deadline: float = None
    delay: float = 0.0


@dataclass
class Answer:
    """What one lease call came to. ``answered`` is False when the
    registry's own reply never came back (unreachable, no such procedure...);
    ``data`` is the reply's data (grant, holders, or ``error``)."""
    ok: bool
    message: str
    data: dict = field(default_factory=dict)
    answered: bool = True

    @classmethod
    def from_reply(cls, reply):
        """The Answer of a lease procedure's reply ``{'ok', 'message', 'data'}``
        (over WAMP or the HTTP bridge); anything else is an unanswered call."""
        if not isinstance(reply, dict) or 'ok' not in reply:
            return cls(False, f'unexpected reply from the registry: {reply!r:.100}',
                       answered=False)
        return cls(bool(reply['ok']), one_line(reply.get('message') or ''),
                   reply.get('data') or {})

    @property
    def kind(self):
        """``granted`` / ``busy`` (someone holds it) / ``refused`` (bad
        request, lease gone) / ``unreachable``."""
        if self.ok:
            return 'granted'
        if not self.answered:
            return 'unreachable'
        return 'busy' if 'holders' in self.data else 'refused'

    @property
    def reason(self):
        """The registry's reason without its ``Refused:`` prefix."""
        return self.data.get('error') or self.message


def describe_holders(holders):
    """``"satp1/hwp held by 'bob' (token 3) for another 23 s, until 12:03:40
    UTC (note)"`` for each holder dict, joined by ``; ``: the one wording of
    a lease refusal (acquire busy or timed out, ``Reservation``,
    ``SiteLock``, ``ocs-locks reserve`` and ``run``). ``expires_in`` (seconds
    left, on the registry's clock, when it answered) gives "for another";
    ``expires`` (the registry's clock) is shown as a UTC instant, for
    display only; a holder without them says neither."""
    parts = []
    for h in holders or ():
        if not isinstance(h, dict):
            continue
        left, until = h.get('expires_in'), h.get('expires')
        when_ = []
        if isinstance(left, (int, float)) and not isinstance(left, bool) \
                and math.isfinite(left):
            when_.append(f'for another {_left(left)}')
        if isinstance(until, (int, float)) and not isinstance(until, bool):
            when_.append(f'until {utc(until)}')
        parts.append(f"{h.get('resource')} held by {h.get('owner')!r} (token {h.get('token')})"
                     + (' ' + ', '.join(when_) if when_ else '')
                     + (f" ({h['note']})" if h.get('note') else ''))
    return '; '.join(parts)


def release_resend_until(deadline, now, resend_for=RELEASE_RESEND_FOR):
    """Until when (monotonic) an unanswered release is sent again: the
    lease's local deadline (past it the lease has ended by itself) or
    ``resend_for`` seconds from ``now``, whichever comes first; ``now``
    itself when there is no deadline (nothing held)."""
    if deadline is None:
        return now
    return min(deadline, now + resend_for)


def _left(seconds):
    """``23 s``, ``0.4 s``, ``12 min 5 s``: how long a lease still holds."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f'{seconds:.1f} s'
    if seconds < 600:
        return f'{seconds:.0f} s'
    return f'{int(seconds // 60)} min {int(seconds % 60)} s'


def _duration(value):
    """A reported duration in seconds, or 0.0 when absent or malformed."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        return 0.0
    return float(value)


class LeaseHolder:
    """One holder's view of its lease on one or several resources.

    Contract:

    * **States.** Not held (no tokens) -> held (tokens, a local deadline) ->
      lost (a reason) or released (no tokens). A lost lease stays lost until
      the next :meth:`granted`.
    * **Deadline.** See the module docstring; :meth:`check` compares it with
      the monotonic ``clock`` on every call, so a holder frozen past it is
      refused at once, before any renewal is even tried.
    * **Transitions** are told by the shell: :meth:`granted`,
      :meth:`renewed`, :meth:`refused` (the registry said no: revoked,
      expired, stale token), :meth:`unreachable` (no answer; the lease is
      lost only once the deadline has passed), :meth:`released`.
    * **Arguments** are checked at construction: resources by the registry's
      rules (sorted, no repeats, no overlaps), ``lease`` within
      ``[MIN_LEASE, MAX_LEASE]``; LeaseError names what was wrong.
    * **Threads.** Not thread-safe; each shell serialises its calls (the
      reactor, or the Reservation's lock).
    """

    def __init__(self, resources, lease, clock, tree=False, owner=None):
        if not isinstance(tree, bool):
            raise bad_value('tree', 'True or False', tree)
        self.resources = check_resources(resources, tree, MAX_RESOURCES)
        self.lease = check_lease(lease)
        if owner is not None:
            check_text('owner', owner, MAX_OWNER, required=True)
        self.tree = tree
        self.clock = clock
        self.tokens = {}
        # The grant's secret (renews and releases it); never logged, never
        # in a message or a repr. The tokens are public.
        self.lease_id = None
        # The grant's access credential on the agents its resources cover
        # (the registry as access director), for OCSClient(..., privs=...);
        # secret like lease_id. None when the grant carries none.
        self.grant_privs = None
        self.deadline = None        # local monotonic time the lease surely ends by
        self.expires = None         # the registry's expiry (its clock): for display
        self.request_id = None
        self.lost = None            # why the lease was lost, once it is
        self.watch_delay = WATCH_RETRY      # the next retry's delay after a failed watch
        self.preempt = None         # (reason, deadline) of a preempt notice, once told
        self.booking = None         # the booking id of a booked lease (see booked())

    @property
    def what(self):
        return ', '.join(self.resources)

    @property
    def first(self):
        return self.resources[0]

    @property
    def token(self):
        """The fencing token of the first resource (the only one, often)."""
        return self.tokens.get(self.first)

    @property
    def renew_every(self):
        return self.lease / 3

    @property
    def held(self):
        """True while held, not lost and not past the local deadline."""
        return bool(self.tokens) and self.lost is None and self.clock() < self.deadline

    # -- transitions -----------------------------------------------------------------

    def granted(self, data, sent):
        """The registry granted the request sent at ``sent`` (clock time)."""
        grants = data.get('grants') or [data]
        self.tokens = {g['resource']: g['token'] for g in grants}
        lease_id = data.get('lease_id')
        self.lease_id = lease_id if isinstance(lease_id, str) else None
        privs = data.get('privs')
        self.grant_privs = privs if isinstance(privs, str) else None
        self.expires = data.get('expires')
        self.request_id = data.get('request_id')
        # Never later than now + lease, whatever the registry reports.
        start = min(sent + _duration(data.get('queued_for')), self.clock())
        self.deadline = start + self.lease
        self.booking = None
        self.lost = None
        self.watch_delay = WATCH_RETRY
        self.preempt = None

    def booked(self, data, lease_id, sent):
        """The booking's lease, claimed by a request sent at ``sent``:
        ``data`` as the registry's ``claim`` answers it; it holds until
        ``sent + expires_in`` (seconds left on the registry's clock when it
        answered, so never later than the registry's end); ``lease_id``:
        the booking's claim key."""
        self.tokens = dict(data.get('tokens') or {data['resource']: data['token']})
        self.lease_id = lease_id
        privs = data.get('privs')
        self.grant_privs = privs if isinstance(privs, str) else None
        self.expires = data.get('expires')
        self.request_id = data.get('request_id')
        self.deadline = sent + _duration(data.get('expires_in'))
        self.booking = (data.get('booking') or {}).get('booking_id')
        self.lost = None
        self.watch_delay = WATCH_RETRY
        self.preempt = None

    def extended(self, data, sent):
        """A booked lease's renewal sent at ``sent`` was accepted: it holds
        ``expires_in`` more seconds (capped by the registry at the next
        booking), never less than before."""
        if self.lost is None and self.tokens:
            self.deadline = max(self.deadline, sent + _duration(data.get('expires_in')))
            self.expires = data.get('expires', self.expires)
            self.preempt = None

    def renewed(self, data, sent):
        """A renewal sent at ``sent`` was accepted."""
        if self.lost is None and self.tokens:
            self.deadline = max(self.deadline, sent + self.lease)
            self.expires = data.get('expires', self.expires)

    def refused(self, reason):
        """The registry refused a renewal: the lease is lost. Returns the
        loss reason if this lost it (None if it was already lost)."""
        return self.lose(f'renewal of the lease on {self.what} was refused: {reason}')

    def unreachable(self, reason):
        """A renewal got no answer. Returns the loss reason if the deadline
        has passed (the lease is lost), else None (retry)."""
        if self.lost is None and self.tokens and self.clock() >= self.deadline:
            return self.lose(f'the registry stayed unreachable until the lease on '
                             f'{self.what} ran out: {reason}')
        return None

    def released(self):
        """Forget the grant (given back, or abandoned after a loss)."""
        self.tokens = {}
        self.lease_id = None
        self.grant_privs = None
        self.deadline = None

    def watched(self, answer, sent):
        """What the answer to a watch sent at ``sent`` (clock time) means:
        a :class:`Notice`. A revocation or expiry the registry pushes is a
        loss now (the reason says who, why and when, in UTC); a preempt
        notice gives the deadline on this host's clock: its receipt (now)
        plus the grace the registry says is left (late by at most the
        notice's one-way trip; never another host's clock instant). No
        answer, a refusal or an answer not understood: retry later with a
        bounded backoff (the renewals keep the lease meanwhile)."""
        if not self.tokens or self.lost is not None:
            return Notice('done')
        data = answer.data if answer.ok else {}
        event = data.get('event') if isinstance(data, dict) else None
        what = f'the lease on {self.what} (token {self.token})'
        if event == 'revoked':
            return Notice('lost', self.lose(
                f"{what} was revoked: force-released by {data.get('by') or 'someone'}: "
                f"{data.get('reason') or ''!r:.200} at {utc(data.get('at'))}"))
        if event == 'expired' and self.booking is not None:
            return Notice('lost', self.lose(
                f"{what}: booking {self.booking} ended at {utc(data.get('at'))}"))
        if event == 'expired':
            return Notice('lost', self.lose(
                f"{what} expired at the registry at {utc(data.get('at'))} "
                f"(no renewal reached it in time)"))
        if event == 'gone':
            return Notice('lost', self.lose(f"{what} is no longer held: "
                                            f"{one_line(data.get('reason') or '')}"))
        if event == 'released':
            return Notice('done')
        if event == 'preempt':
            left = _duration(data.get('grace_left'))
            deadline = self.clock() + left
            reason = (f"{data.get('by') or 'someone'} asks for {self.what}: "
                      f"{data.get('reason') or ''!r:.200}; it is revoked in {left:.1f} s "
                      f"unless released")
            self.watch_delay = WATCH_RETRY
            if self.preempt is not None:
                return Notice('again')      # told already: keep watching
            self.preempt = (reason, deadline)
            return Notice('preempt', reason, deadline)
        if event == 'timeout' and self.clock() - sent >= WATCH_MIN_POLL:
            self.watch_delay = WATCH_RETRY
            return Notice('again')
        if event in ('timeout', 'stopping'):
            return Notice('retry', f'watch answered {event}', delay=WATCH_RETRY)
        why = answer.reason if not answer.ok else f'unexpected watch answer {event!r:.40}'
        delay, self.watch_delay = self.watch_delay, min(WATCH_RETRY_MAX, self.watch_delay * 2)
        return Notice('retry', why, delay=delay)

    def lose(self, reason):
        if self.lost is not None:
            return None
        self.lost = reason
        return reason

    # -- checks ----------------------------------------------------------------------

    def check(self, timeout=None):
        """Return the first token, or raise :class:`LeaseLost` (also when the
        local deadline has passed: then the lease is lost from now on).

        With ``timeout`` (seconds, the device call's own bound), also raise
        :class:`LeaseTooShort` (a LeaseLost; the lease is kept) unless
        ``timeout + GUARD_MARGIN`` seconds are left before the deadline."""
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not 0 <= timeout <= MAX_CALL):
            raise bad_value('timeout', f'a number of seconds in [0, {MAX_CALL:g}] or None',
                            timeout)
        if self.lost is not None:
            raise LeaseLost(self.lost)
        if not self.tokens:
            raise LeaseLost(f'no lease held on {self.what}')
        late = self.clock() - self.deadline
        left = -late
        if late >= 0:
            self.lose(f'the lease on {self.what} (token {self.token}) ran out {late:.1f} s '
                      f'ago without a renewal')
            raise LeaseLost(self.lost)
        if timeout is not None and timeout + GUARD_MARGIN > left:
            raise LeaseTooShort(
                f'{left:.2f} s left of the lease on {self.what} (token {self.token}): too '
                f'little for a {timeout:g} s device call (it needs its timeout + '
                f'{GUARD_MARGIN:g} s){self._hint(timeout)}')
        return self.token

    def _hint(self, timeout):
        if timeout + GUARD_MARGIN > self.lease * 2 / 3:
            return (f'; the {self.lease:g} s lease is too short for it: make the lease '
                    f'longer than 1.5 x (timeout + {GUARD_MARGIN:g} s)')
        return ''

    def refusal(self, answer, attempts=1, spent=None):
        """The exception for an acquire ``answer`` that was not a grant:
        :class:`LeaseBusy` naming the holders, or :class:`LeaseUnavailable`."""
        tail = '' if spent is None else f' after {attempts} attempt(s) in {spent:.1f} s'
        if answer.kind == 'busy':
            holders = answer.data.get('holders') or []
            who = describe_holders(holders) or answer.reason
            return LeaseBusy(f'{self.what} still busy{tail}: {who}', holders, attempts)
        if answer.kind == 'refused':
            return LeaseUnavailable(f'the registry refused {self.what}: {answer.reason}')
        return LeaseUnavailable(f'could not reserve {self.what}{tail}: {answer.reason}')
