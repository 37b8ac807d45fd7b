"""Reservation: site-wide leases for operators and observing schedules.

A plain-Python context manager over HTTP (``OCSClient``): it asks the
LockRegistryAgent for one or several resources (all or nothing), retries
busy resources with a bounded backoff, renews the lease from a daemon thread
while the body runs, and releases on exit::

    from ocs_locking.leases.reservation import Reservation, RetryPolicy

    with Reservation(['satp1/hwp', 'satp1/mount'], owner='schedule-42', lease=30,
                     note='calibration', args=['--site-file', 'site.yaml']) as r:
        for step in steps:
            r.check()                  # raises LeaseLost once the lease is gone
            run(step, token=r.tokens['satp1/hwp'])

A lease is *lost* when a renewal is refused (revoked by ``force_release``,
expired), or when the registry cannot be reached for longer than the lease:
then :attr:`Reservation.lost` holds the reason and :meth:`Reservation.check`
raises :class:`LeaseLost`. Nothing is left running after ``__exit__``.
"""
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

from ..errors import LeaseLost, ReservationBusy, ReservationError
from ..wire import error_reason, lease_uri, one_line
from .paths import check_resource

__all__ = ['Reservation', 'RetryPolicy', 'LeaseLost', 'ReservationBusy', 'ReservationError']

log = logging.getLogger(__name__)

#: Extra seconds an OCS call may take beyond the registry-side wait it asks for.
CALL_MARGIN = 10.0
#: How long a thread waits for the renew thread when the reservation ends.
JOIN_TIMEOUT = 5.0



@dataclass(frozen=True)
class RetryPolicy:
    """How a :class:`Reservation` retries busy resources.

    Attempt ``n`` (from 1) that finds them busy waits
    ``min(max_delay, first * factor ** (n - 1))`` seconds, scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` (from ``random.Random(seed)``, so a
    seed makes it repeatable), before the next attempt. It gives up after
    ``attempts`` attempts or when the next attempt would start later than
    ``deadline`` seconds after the first (``None``: no deadline).

    Args:
        attempts (int): at most this many acquire attempts (>= 1).
        first (float): the first delay, seconds (>= 0).
        factor (float): each delay is this many times the last (>= 1).
        max_delay (float): no delay is longer, seconds.
        deadline (float or None): seconds for the whole acquisition.
        jitter (float): in [0, 1); 0 for exact delays.
        seed: seed for the jitter.
    """
    attempts: int = 5
    first: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    deadline: Optional[float] = 60.0
    jitter: float = 0.0
    seed: Optional[int] = None

    def __post_init__(self):
        def number(name, value, low, high=float('inf'), low_ok=True):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (low <= value if low_ok else low < value) or not value <= high:
                raise ValueError(f'RetryPolicy {name} must be a number '
                                 f'{">=" if low_ok else ">"} {low:g}'
                                 + (f' and <= {high:g}' if high != float('inf') else '')
                                 + f', not {value!r}')
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            raise ValueError(f'RetryPolicy attempts must be an integer >= 1, '
                             f'not {self.attempts!r}')
        number('first', self.first, 0, 1e6)
        number('factor', self.factor, 1, 1e3)
        number('max_delay', self.max_delay, 0, 1e6)
        if self.deadline is not None:
            number('deadline', self.deadline, 0, 1e7, low_ok=False)
        number('jitter', self.jitter, 0, 0.999)

    def delays(self):
        """The delays between attempts (``attempts - 1`` of them)."""
        rng = random.Random(self.seed)
        for n in range(self.attempts - 1):
            d = min(self.max_delay, self.first * self.factor ** n)
            if self.jitter:
                d *= 1 + rng.uniform(-self.jitter, self.jitter)
            yield d


class _Answer:
    """What one registry call came to. ``answered`` is False when the
    registry's own (ok, message) never came back (unreachable, no such
    agent, the task busy with another caller...)."""
    __slots__ = ('ok', 'message', 'data', 'answered')

    def __init__(self, ok, message, data=None, answered=True):
        self.ok, self.message, self.data, self.answered = ok, message, data or {}, answered

    def __repr__(self):
        return f'_Answer({self.ok}, {self.message!r}, answered={self.answered})'


def _exc_reason(exc):
    """A short reason from an exception met on the way to the registry."""
    return error_reason(exc, not_running='the registry is not running (no such agent on the router)')


def call_task(client, name, params, wait=30.0, retry_busy=5.0, sleep=time.sleep):
    """Run the registry task ``name`` with ``params`` over ``client`` and
    return an :class:`_Answer` with the task's own ``(ok, message)`` and its
    session.data.

    Unlike ``client.<name>(**params)`` it checks that the session it waited
    for is the one it started (an OCS task runs one session at a time; a
    caller that started the next one must not be read as ours), retries
    ``start`` for up to ``retry_busy`` seconds while another caller's session
    runs, and waits at most ``wait`` seconds for the result.
    """
    from ocs import OK, TIMEOUT     # here, so that importing this module needs no ocs
    op = getattr(client, name)
    give_up = time.monotonic() + retry_busy
    pause = 0.02
    try:
        while True:
            reply = op.start(**params)
            if reply.status == OK:
                break
            msg = one_line(reply.msg)
            if 'already in progress' not in msg:
                return _Answer(False, msg, {}, answered=False)
            if time.monotonic() + pause > give_up:
                return _Answer(False, f'the registry task {name!r} stayed busy with another '
                               f'caller for {retry_busy:g} s', answered=False)
            sleep(pause)
            pause = min(0.2, pause * 2)
        started = (reply.session or {}).get('session_id')
        reply = op.wait(timeout=wait)
    except Exception as e:      # ControlClientError, requests errors...
        return _Answer(False, _exc_reason(e), answered=False)
    session = reply.session or {}
    if session.get('session_id') != started:
        return _Answer(False, f'lost track of the {name!r} session {started} (another '
                       f'caller started {session.get("session_id")})', answered=False)
    if reply.status == TIMEOUT or session.get('status') != 'done':
        return _Answer(False, f'the registry task {name!r} did not end within {wait:g} s',
                       answered=False)
    # The task's own message is the last one before ocs's 'Status is now "done".'
    texts = [m[1] for m in session.get('messages') or []
             if isinstance(m, (list, tuple)) and len(m) > 1 and isinstance(m[1], str)
             and not m[1].startswith('Status is now')]
    message = one_line(texts[-1]) if texts else one_line(reply.msg)
    return _Answer(bool(session.get('success')), message, session.get('data') or {})


def call_procedure(client, name, params):
    """Call the registry's WAMP procedure ``<registry>.lease.<name>`` through
    the router's HTTP bridge (the OCSClient's own connection). Unlike an OCS
    task, many callers may be in it at once, so scripts queue fairly."""
    http = client._client
    try:
        reply = http.call(lease_uri(http.agent_addr, name), **params)
    except Exception as e:      # ControlClientError, requests errors...
        return _Answer(False, _exc_reason(e), answered=False)
    if not isinstance(reply, dict) or 'ok' not in reply:
        return _Answer(False, f'unexpected reply from the registry: {reply!r:.100}',
                       answered=False)
    return _Answer(bool(reply['ok']), one_line(reply.get('message') or ''),
                   reply.get('data') or {})


def describe_holders(holders):
    """``"satp1/hwp held by 'bob' (token 3)"``, for each holder, joined."""
    parts = []
    for h in holders or ():
        if isinstance(h, dict):
            parts.append(f"{h.get('resource')} held by {h.get('owner')!r} "
                         f"(token {h.get('token')})" + (f" ({h['note']})" if h.get('note')
                                                        else ''))
    return '; '.join(parts)


class Reservation:
    """A site-wide lease on one or several resources, for scripts and people.

    Use it as a context manager (or call :meth:`acquire` and :meth:`release`).
    Entering acquires every resource or none (the registry's ``acquire`` with
    ``timeout`` seconds of queueing per attempt), retrying busy resources
    with ``retry``; it raises :class:`ReservationBusy` (naming the holders)
    when the policy gives up, and :class:`ReservationError` when the registry
    refuses the request or cannot be reached. While held, a daemon thread
    renews the lease every ``lease / 3`` seconds. Leaving stops that thread
    and releases the lease (an already lost lease is not an error).

    Args:
        resources (str or list): resource path(s), e.g. ``'satp1/hwp'``.
        owner (str): who holds it, shown to others (a person, a schedule).
        lease (float): seconds the lease lasts unless renewed.
        note (str): why, kept in the audit log.
        tree (bool): also exclude everything below the path(s).
        registry (str): instance-id of the LockRegistryAgent.
        args (list): site arguments for ``OCSClient``
            (``['--site-file', ..., '--site-host', ...]``).
        privs: passed to ``OCSClient`` (a password or a credential level).
        retry (RetryPolicy): how to retry busy resources.
        timeout (float): seconds each attempt may wait in the registry's queue.
        client: an object to use instead of ``OCSClient`` (tests).
        client_id (str): the identity recorded in the audit log.
        on_lost (callable): called once, from the renew thread, with the
            reason when the lease is lost.
        stop_event: the Event the renew thread waits on between renewals
            (tests pass one they drive).
        clock (callable): monotonic seconds (tests pass a fake clock).
        sleep (callable): how retry delays are waited (tests record them).

    Attributes:
        tokens (dict): ``{resource: fencing token}`` of the current grant.
        expires (float): when the lease ends unless renewed (registry time).
        lost (str or None): why the lease was lost, or None.
        attempts (int): acquire attempts made by the last :meth:`acquire`.
    """

    def __init__(self, resources, owner, lease=30.0, note='', tree=False,
                 registry='lock-registry', args=None, privs=None, retry=None, timeout=0.0,
                 client=None, client_id=None, on_lost=None, stop_event=None,
                 clock=time.monotonic, sleep=time.sleep):
        names = [resources] if isinstance(resources, str) else list(resources)
        if not names:
            raise ValueError('Reservation needs at least one resource')
        for r in names:
            try:
                check_resource(r)
            except ValueError as e:
                raise ValueError(str(e)) from None
        if len(set(names)) != len(names):
            raise ValueError(f'resources must not repeat a path: {names}')
        if not isinstance(owner, str) or not owner.strip():
            raise ValueError(f'owner must be a non-empty string, not {owner!r}')
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
            raise ValueError(f'lease must be a number of seconds > 0, not {lease!r}')
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout >= 0:
            raise ValueError(f'timeout must be a number of seconds >= 0, not {timeout!r}')
        self.resources = sorted(names)
        self.owner, self.lease, self.note, self.tree = owner, float(lease), note, bool(tree)
        self.timeout = float(timeout)
        self.registry, self.args, self.privs = registry, args, privs
        self.retry = RetryPolicy() if retry is None else retry
        self.client_id = client_id or \
            f'Reservation {os.getpid()}@{socket.gethostname()} #{id(self) & 0xffff:04x}'
        self.on_lost = on_lost
        self._client = client
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._thread = None
        self._deadline = None       # local (clock) time the lease surely ends by
        self.tokens = {}
        self.expires = None
        self.lost = None
        self.attempts = 0
        self.request_id = None

    # -- plumbing -------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            from ocs.ocs_client import OCSClient
            try:
                self._client = OCSClient(self.registry, privs=self.privs, args=self.args)
            except Exception as e:
                raise ReservationError(f'cannot reach the lock registry {self.registry!r}: '
                                       f'{_exc_reason(e)}') from None
        return self._client

    def _call(self, name, wait, **params):
        try:
            client = self.client
        except ReservationError as e:
            return _Answer(False, str(e), answered=False)
        if name in ('acquire', 'renew', 'release') and \
                callable(getattr(getattr(client, '_client', None), 'call', None)):
            return call_procedure(client, name, params)     # a real OCSClient
        return call_task(client, name, params, wait=wait, sleep=self._sleep)

    @property
    def held(self):
        """True while the lease is held, not lost and not past its local deadline."""
        return bool(self.tokens) and self.lost is None and self._clock() < self._deadline

    @property
    def token(self):
        """The fencing token of the first resource (the only one, often)."""
        return self.tokens[self.resources[0]] if self.tokens else None

    def check(self):
        """Raise :class:`LeaseLost` unless the lease is held now (also when it
        ran past its deadline without a renewal, e.g. the process was frozen)."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        if not self.tokens:
            raise LeaseLost(f'no lease held on {", ".join(self.resources)}')
        if self._clock() >= self._deadline:
            self._lose(f'the lease on {", ".join(self.resources)} ran out without a renewal')
            raise LeaseLost(self.lost)

    def _lose(self, reason):
        with self._lock:
            if self.lost is not None:
                return
            self.lost = reason
        log.warning('reservation of %s lost: %s', ', '.join(self.resources), reason)
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:
                log.exception('on_lost callback failed')

    # -- acquire --------------------------------------------------------------------

    def acquire(self):
        """Acquire every resource or none, retrying busy ones; returns self."""
        if self.tokens and self.lost is None:
            raise ReservationError(f'already holding {", ".join(self.resources)}')
        self.tokens, self.expires, self.lost, self.request_id = {}, None, None, None
        policy = self.retry
        start = self._clock()
        delays = policy.delays()
        self.attempts = 0
        what = ', '.join(self.resources)
        resource = self.resources[0] if len(self.resources) == 1 else list(self.resources)
        while True:
            self.attempts += 1
            per_try = self.timeout
            if policy.deadline is not None:
                per_try = max(0.0, min(per_try, start + policy.deadline - self._clock()))
            sent = self._clock()
            ans = self._call('acquire', per_try + CALL_MARGIN, resource=resource,
                             owner=self.owner, lease=self.lease, timeout=per_try, tree=self.tree,
                             note=self.note, client=self.client_id)
            if ans.ok:
                self._granted(ans.data, sent)
                return self
            if ans.answered and 'holders' not in ans.data:
                raise ReservationError(f'the registry refused {what}: {ans.message}')
            delay = next(delays, None)
            late = policy.deadline is not None and \
                self._clock() + (delay or 0) - start > policy.deadline
            if delay is None or late:
                spent = self._clock() - start
                if not ans.answered:
                    raise ReservationError(f'could not reserve {what} after '
                                           f'{self.attempts} attempt(s) in {spent:.1f} s: '
                                           f'{ans.message}')
                holders = ans.data.get('holders') or []
                who = describe_holders(holders) or ans.message
                raise ReservationBusy(f'{what} still busy after {self.attempts} attempt(s) '
                                      f'in {spent:.1f} s: {who}', holders, self.attempts)
            log.info('%s busy (attempt %d): %s; retrying in %.2f s', what, self.attempts,
                     ans.message, delay)
            self._sleep(delay)

    def _granted(self, data, sent):
        grants = data.get('grants') or [data]
        self.tokens = {g['resource']: g['token'] for g in grants}
        self.expires = data.get('expires')
        self.request_id = data.get('request_id')
        self._deadline = sent + self.lease
        self.lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f'renew {", ".join(self.resources)}')
        self._thread.start()

    # -- renewal --------------------------------------------------------------------

    def _renew_loop(self):
        interval = self.lease / 3
        first = self.resources[0]
        while not self._stop.wait(interval):
            if self._stop.is_set() or self.lost is not None:
                return
            sent = self._clock()
            ans = self._call('renew', interval + CALL_MARGIN, resource=first,
                             token=self.tokens[first], lease=self.lease, client=self.client_id)
            if self._stop.is_set() and not ans.ok:
                return          # released meanwhile: not a loss
            if ans.ok:
                self.expires = ans.data.get('expires', self.expires)
                self._deadline = sent + self.lease
                continue
            if ans.answered:
                self._lose(f'renewal refused: {ans.message}')
                return
            if self._clock() >= self._deadline:
                self._lose(f'the registry was unreachable for longer than the lease '
                           f'({self.lease:g} s): {ans.message}')
                return
            log.warning('renewal of %s failed (will retry): %s', first, ans.message)

    def _stop_thread(self):
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                log.warning('renew thread of %s did not stop within %g s',
                            ', '.join(self.resources), JOIN_TIMEOUT)
        self._thread = None

    # -- release --------------------------------------------------------------------

    def release(self):
        """Stop renewing and release the lease. Returns the registry's message,
        or None if there was nothing to release (never acquired, or lost)."""
        self._stop_thread()
        if not self.tokens:
            return None
        first = self.resources[0]
        token = self.tokens[first]
        if self.lost is not None:
            self.tokens = {}
            return None
        ans = self._call('release', CALL_MARGIN, resource=first, token=token,
                         client=self.client_id)
        self.tokens = {}
        if not ans.ok:
            if ans.answered:        # already expired or revoked: nothing left to do
                log.info('release of %s: %s', first, ans.message)
            else:
                log.warning('could not release %s (it ends with its lease): %s', first,
                            ans.message)
            return None
        return ans.message

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

    def __del__(self):
        stop = getattr(self, '_stop', None)
        if stop is not None:
            stop.set()
