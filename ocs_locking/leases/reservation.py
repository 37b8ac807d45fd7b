"""Reservation: site-wide leases for operators and observing schedules.

A plain-Python context manager over HTTP (one request per lease call through
the router's bridge): it asks the LockRegistryAgent for one or several
resources (all or nothing), retries busy resources with a bounded backoff,
renews the lease from one background thread while the body runs, and releases on
exit::

    from ocs_locking.leases.reservation import Reservation, RetryPolicy

    with Reservation(['satp1/hwp', 'satp1/mount'], owner='schedule-42', lease=30,
                     note='calibration', args=['--site-file', 'site.yaml']) as r:
        for step in steps:
            with r.guard():            # raises LeaseLost once the lease is gone
                run(step, token=r.tokens['satp1/hwp'])

A lease is *lost* when the registry revokes it (``force_release``) or it
expires there, pushed at once through the lease watch (see below), when a
renewal is refused, or when the registry cannot be reached for longer than
the lease: then :attr:`Reservation.lost` holds the reason and
:meth:`Reservation.check` raises :class:`LeaseLost`. Nothing is left
running after ``__exit__`` (a watch in flight is answered by the release).

**Revocation is pushed.** While it holds, a Reservation keeps one call of
the registry's ``lease.watch`` outstanding, on a thread of a shared pool
and a connection of its own (a long poll: answered at once on a
revocation, an expiry, a release or a preempt notice, else after 20 s, then
sent again); the pure core decides what the answer means. A failed watch is
retried with a bounded backoff (0.5 .. 5 s) while the renewals keep the
lease, as before. ``watch=False`` turns it off (renewals only).
"""
import concurrent.futures
import contextlib
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

from ..errors import LeaseLost, ReservationBusy, ReservationError
from ..wire import ANSWER_MARGIN, WATCH_WAIT, error_reason, one_line
from .bridge import (CALL_MARGIN, NO_REGISTRY, BridgeClient,  # noqa: F401 (public)
                     OCSClientTransport, lease_transport)
from .holder import (RELEASE_RESEND_FOR, Answer, LeaseHolder, describe_holders,
                     release_resend_until)
from .paths import check_seconds, check_text
from .renewer import shared_renewer

__all__ = ['Reservation', 'RetryPolicy', 'LeaseLost', 'ReservationBusy', 'ReservationError',
           'call_task', 'describe_holders']

log = logging.getLogger(__name__)

#: Seconds between renewal retries after a failed renewal (as SiteLock).
RETRY = 0.5
#: A booked Reservation's claim long polls last at most this long (seconds);
#: one answered sooner than CLAIM_MIN_POLL is followed by a RETRY pause;
#: CLAIM_RETRIES unanswered polls in a row give up.
CLAIM_POLL, CLAIM_MIN_POLL, CLAIM_RETRIES = 20.0, 0.2, 10
#: The nominal lease of a booked Reservation (it is not renewed: it holds
#: until the booking's end).
MAX_BOOKED_LEASE = 3600.0
#: The most lease watches a process runs at once (one thread each, shared
#: by every Reservation of the process; more wait for a thread).
WATCH_THREADS = 32

_WATCH_POOL = None
_WATCH_POOL_LOCK = threading.Lock()


def _watch_pool():
    """The process's threads for lease watches (started as needed, reused)."""
    global _WATCH_POOL
    with _WATCH_POOL_LOCK:
        if _WATCH_POOL is None:
            _WATCH_POOL = concurrent.futures.ThreadPoolExecutor(
                WATCH_THREADS, thread_name_prefix='ocs_locking lease watch')
        return _WATCH_POOL



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


_Answer = Answer         # the name this module used first


def _exc_reason(exc):
    """A short reason from an exception met on the way to the registry."""
    return error_reason(exc, not_running=NO_REGISTRY)


def call_task(client, name, params, wait=None, retry_busy=5.0, sleep=time.sleep):
    """Run the registry task ``name`` with ``params`` over ``client`` and
    return an :class:`_Answer` with the task's own ``(ok, message)`` and its
    session.data.

    Unlike ``client.<name>(**params)`` it checks that the session it waited
    for is the one it started (an OCS task runs one session at a time; a
    caller that started the next one must not be read as ours), retries
    ``start`` for up to ``retry_busy`` seconds while another caller's session
    runs, and waits at most ``wait`` seconds for the result (default: the
    params' queue ``timeout`` + ANSWER_MARGIN, so the registry's own answer
    at that timeout comes first). A caller that gives up aborts the task's
    session, so a queued ``acquire`` is withdrawn rather than granted later.
    """
    from ocs import OK, TIMEOUT     # here, so that importing this module needs no ocs
    if wait is None:
        queue = params.get('timeout', 0.0)
        ok = isinstance(queue, (int, float)) and not isinstance(queue, bool) \
            and 0 <= queue <= 1e6
        wait = (queue if ok else 0.0) + ANSWER_MARGIN
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
        aborted = ''
        abort = getattr(op, 'abort', None)
        if callable(abort):
            try:            # we are gone: the registry must not grant us later
                abort()
                aborted = ' (aborted it)'
            except Exception as e:
                aborted = f' (could not abort it: {_exc_reason(e)})'
        return _Answer(False, f'the registry task {name!r} did not end within {wait:g} s'
                       + aborted, answered=False)
    # The task's own message is the last one before ocs's 'Status is now "done".'
    texts = [m[1] for m in session.get('messages') or []
             if isinstance(m, (list, tuple)) and len(m) > 1 and isinstance(m[1], str)
             and not m[1].startswith('Status is now')]
    message = one_line(texts[-1]) if texts else one_line(reply.msg)
    return _Answer(bool(session.get('success')), message, session.get('data') or {})


def call_procedure(client, name, params):
    """Call the registry's WAMP procedure ``<registry>.lease.<name>`` through
    an ``OCSClient``'s own HTTP bridge connection (one POST)."""
    return OCSClientTransport(client).lease_call(name, params)


class Reservation:
    """A site-wide lease on one or several resources, for scripts and people.

    Use it as a context manager (or call :meth:`acquire` and :meth:`release`).
    Acquiring takes every resource or none (the registry's ``acquire`` with
    ``timeout`` seconds of queueing per attempt), retrying busy resources
    with ``retry``; it raises :class:`ReservationBusy` (naming the holders
    and until when) when the policy gives up, and :class:`ReservationError`
    when the registry refuses the request or cannot be reached. While held,
    the process's renewal thread renews the lease every ``lease / 3`` seconds (a failed
    renewal is retried every 0.5 s). Leaving stops the renewals and releases
    the lease (an already lost lease is not an error). Renewals run on the
    process's one renewal thread (:mod:`~.renewer`), so entering and leaving
    never wait for a thread to start or end.

    The lease is kept by the pure :class:`~.holder.LeaseHolder` shared with
    :class:`~.sitelock.SiteLock`: the local deadline is counted on the
    monotonic ``clock`` from when the request was sent, plus the time the
    registry says it queued, plus the lease; so a reservation that waited in
    the queue longer than its lease still holds a whole lease after the grant.

    Each acquire, renew and release is one HTTP request to the router's
    bridge, on one keep-alive connection (:class:`~.bridge.BridgeClient`).

    Args:
        resources (str or list): resource path(s), e.g. ``'satp1/hwp'``.
        owner (str): who holds it, shown to others (a person, a schedule).
        lease (float): seconds the lease lasts unless renewed, in
            ``[MIN_LEASE, MAX_LEASE]`` (0.5 .. 3600).
        note (str): why, kept in the audit log.
        tree (bool): also exclude everything below the path(s).
        registry (str): instance-id of the LockRegistryAgent.
        args (list): site arguments, as for ``OCSClient``
            (``['--site-file', ..., '--site-host', ...]``).
        privs: accepted for compatibility (the lease procedures need none).
        retry (RetryPolicy): how to retry busy resources.
        timeout (float): seconds each attempt may wait in the registry's
            queue. The registry answers at that deadline itself; the HTTP
            read timeout is ``timeout + CALL_MARGIN``, so the reservation
            never gives up before the registry's answer.
        client: the transport: an object with ``lease_call(name, params,
            wait)`` (tests), or an ``OCSClient`` to call through; default a
            :class:`~.bridge.BridgeClient` for the site.
        client_id (str): the identity recorded in the audit log.
        on_lost (callable): called once with the reason when the lease is
            lost (from the watch or renewal thread, or from the thread that
            called :meth:`check`); for a revocation it says who, why and
            when (``"the lease on satp1/hwp (token 7) was revoked: force-released
            by ops-console (declared, cred_level 2): 'hwp jammed' at
            12:01:03 UTC"``).
        on_preempt (callable): called once per grant, from the watch
            thread, as ``on_preempt(reason, deadline)`` when someone asks
            this holder to give way (``preempt``): ``deadline`` is a
            ``clock`` (monotonic) value on this host; release before it, or
            the lease is revoked then. None: it is revoked at the deadline.
        watch (bool): keep a lease watch outstanding (pushed revocations and
            preempt notices), when the transport offers ``watch_call`` (the
            bridge does); False: learn of them at renewals only.
        renewer (Renewer): what renews the lease (default: the process's
            one renewal thread, :func:`~.renewer.shared_renewer`; tests pass
            one they drive).
        clock (callable): monotonic seconds (tests pass a fake clock).
        sleep (callable): how retry delays are waited (tests record them).

    Attributes:
        tokens (dict): ``{resource: fencing token}`` of the current grant
            (public: pass them on to devices that fence their calls).
        lease_id (str or None): the grant's secret, which renews and
            releases it (the registry gives it to this process alone; never
            logged, never shown in a repr).
        grant_privs (str or None): the grant's access credential on the
            agents its declared resources cover, when the registry is the
            site's access director (see docs/access.rst); as secret as
            ``lease_id``.
        expires (float): the registry's expiry (its clock; for display).
        lost (str or None): why the lease was lost, or None.
        attempts (int): acquire attempts made by the last :meth:`acquire`.
    """

    def __init__(self, resources, owner, lease=30.0, note='', tree=False,
                 registry='lock-registry', args=None, privs=None, retry=None, timeout=0.0,
                 client=None, client_id=None, on_lost=None, renewer=None,
                 clock=time.monotonic, sleep=time.sleep, on_preempt=None, watch=True):
        self._core = LeaseHolder(resources, lease, clock, tree=tree, owner=owner)
        self.timeout = check_seconds('timeout', timeout, 1e6, zero_ok=True)
        check_text('note', note, 500)
        self.resources = list(self._core.resources)
        self.owner, self.lease, self.note, self.tree = owner, self._core.lease, note, tree
        self.registry, self.args, self.privs = registry, args, privs
        self.retry = RetryPolicy() if retry is None else retry
        self.client_id = client_id or \
            f'Reservation {os.getpid()}@{socket.gethostname()} #{id(self) & 0xffff:04x}'
        self.on_lost = on_lost
        self._client = client
        self._renewer = renewer
        self._clock, self._sleep = clock, sleep
        self._lock = threading.RLock()      # the core: owner thread and renewer
        self.renewing = False               # handed to the renewer, not yet released
        self._told = None                   # the loss on_lost was told of
        self.attempts = 0
        self.on_preempt = on_preempt
        self.watch = bool(watch)
        self._watch_gen = 0                 # the grant the running watch belongs to
        self._watch_stop = threading.Event()    # wakes a watch's retry pause
        #: answers of the lease watch, by event (for tests and benchmarks)
        self.watch_events = {}
        self._booking = None                # (booking id, claim key): see booked()
        self._claim_wait = None
        #: a booked lease's claim answer (``late``: its grant after the start)
        self.claimed = None

    # -- state (kept by the core) ---------------------------------------------------

    tokens = property(lambda self: self._core.tokens)
    #: The grant's secret: renews and releases it (for this process only).
    lease_id = property(lambda self: self._core.lease_id)
    #: The grant's access credential on the agents its declared resources
    #: cover (the registry as access director), for ``OCSClient(...,
    #: privs=res.grant_privs)``; not :attr:`privs`, the credential this
    #: Reservation calls the registry with. Secret; None when not held or
    #: when the grant carries none.
    grant_privs = property(lambda self: self._core.grant_privs)
    expires = property(lambda self: self._core.expires)
    lost = property(lambda self: self._core.lost)
    request_id = property(lambda self: self._core.request_id)

    @property
    def deadline(self):
        """When the lease surely ends, on ``clock`` (None when not held)."""
        return self._core.deadline

    @property
    def client(self):
        """The transport the lease calls go through."""
        self._client = lease_transport(self.registry, self.args, self._client)
        return self._client

    def _call(self, name, wait=0.0, **params):
        try:
            client = self.client
        except ReservationError as e:
            return Answer(False, str(e), answered=False)
        return client.lease_call(name, params, wait)

    @property
    def held(self):
        """True while the lease is held, not lost and not past its local deadline."""
        with self._lock:
            return self._core.held

    @property
    def token(self):
        """The fencing token of the first resource (the only one, often)."""
        return self._core.token

    def check(self, timeout=None):
        """Return the first fencing token, or raise :class:`LeaseLost` unless
        the lease is held now (also when it ran past its deadline without a
        renewal, e.g. the process was frozen). With ``timeout`` (the device
        call's own bound, seconds), also raise :class:`LeaseTooShort` (a
        LeaseLost; the lease is kept) unless the call, its timeout and
        GUARD_MARGIN included, would end before the lease does."""
        with self._lock:
            try:
                return self._core.check(timeout)
            except LeaseLost:
                self._tell()
                raise

    @contextlib.contextmanager
    def guard(self, timeout=None):
        """Context manager around a hardware step: yields the fencing token,
        or raises :class:`LeaseLost` without running the body; with
        ``timeout`` (the step's own bound, seconds) also
        :class:`LeaseTooShort` when the step would not end, timeout and
        GUARD_MARGIN included, before the lease does (see :meth:`check`)."""
        yield self.check(timeout)

    def _tell(self):
        """Once per loss: log it and call ``on_lost``."""
        reason = self._core.lost
        if reason is None or reason == self._told:
            return
        self._told = reason
        log.warning('reservation of %s lost: %s', ', '.join(self.resources), reason)
        if self.on_lost is not None:
            try:
                self.on_lost(reason)
            except Exception:
                log.exception('on_lost callback failed')

    # -- booked reservations ----------------------------------------------------------

    @classmethod
    def booked(cls, booking, claim, registry='lock-registry', args=None, client=None,
               wait=None, **kw):
        """The Reservation of booking ``booking`` (its id), held with its
        ``claim`` key (see :mod:`.booked`): :meth:`acquire` (or ``with``)
        waits for the booking's start (at most ``wait`` seconds; None: as
        long as the booking lasts) and collects its lease; the lease holds
        until the booking's end without renewals (:meth:`extend` asks for
        more); ``on_preempt`` fires before the end. The booking's resources,
        owner and tree come from the registry. Other keywords as for
        Reservation (``on_lost``, ``on_preempt``, ``client_id``, ``watch``...).
        Raises ReservationError (one line) for a wrong key, an unknown or
        finished booking, or an unreachable registry."""
        from .booked import Calendar
        cal = Calendar(registry, args, client)
        data = cal.call('claim', booking=booking, claim=claim, wait=0.0)
        b = data['booking']
        res = cls(b['resources'], b['owner'], lease=MAX_BOOKED_LEASE, note=b['note'],
                  tree=b['tree'], registry=registry, args=args, client=cal.client, **kw)
        res._booking = (booking, claim)
        res._claim_wait = wait
        return res

    def _claim(self):
        """Wait for the booking's start (long polls of the registry's
        ``claim``, each at most CLAIM_POLL s) and take its lease."""
        bid, key = self._booking
        give_up = None if self._claim_wait is None else self._clock() + self._claim_wait
        failures = 0
        while True:
            wait = CLAIM_POLL if give_up is None else \
                max(0.0, min(CLAIM_POLL, give_up - self._clock()))
            sent = self._clock()
            params = {'booking': bid, 'claim': key, 'wait': wait, 'client': self.client_id}
            try:
                ans = self.client.lease_call('claim', params, wait)
            except ReservationError as e:
                ans = Answer(False, str(e), answered=False)
            if ans.ok and ans.data.get('state') == 'held':
                with self._lock:
                    self._core.booked(ans.data, key, sent)
                    self._told = None
                self.claimed = ans.data
                self._start_watching()
                return self
            if ans.answered and not ans.ok:
                raise ReservationError(f'cannot claim booking {bid}: {ans.reason}')
            if not ans.answered:
                failures += 1
                if failures > CLAIM_RETRIES:
                    raise ReservationError(f'cannot claim booking {bid}: {ans.reason}')
            if give_up is not None and self._clock() >= give_up:
                raise ReservationBusy(f'booking {bid} has not started within '
                                      f'{self._claim_wait:g} s: {ans.message}')
            if not ans.answered or self._clock() - sent < CLAIM_MIN_POLL:
                self._sleep(RETRY)          # answered early, or no answer: not a spin

    def extend(self, seconds):
        """Extend a booked lease to ``seconds`` from now (never shortened;
        capped by the registry at the next booking on its resources).
        Returns the seconds it now holds; ReservationError (one line, the
        lease kept) when the registry refuses (another booking starts at
        the end)."""
        core = self._core
        sent = self._clock()
        ans = self._call('renew', resource=core.first, lease_id=core.lease_id, lease=seconds,
                         client=self.client_id)
        if not ans.ok:
            raise ReservationError(f'cannot extend {", ".join(self.resources)}: {ans.reason}')
        with self._lock:
            core.extended(ans.data, sent)
            return core.deadline - self._clock()

    # -- acquire --------------------------------------------------------------------

    def acquire(self):
        """Acquire every resource or none, retrying busy ones; returns self,
        or raises ReservationBusy / ReservationError."""
        if self._core.tokens and self._core.lost is None:
            raise ReservationError(f'already holding {", ".join(self.resources)}')
        self._stop_renewing()
        self._core.released()
        if self._booking is not None:
            return self._claim()
        policy = self.retry
        start = self._clock()
        delays = policy.delays()
        self.attempts = 0
        resource = self.resources[0] if len(self.resources) == 1 else list(self.resources)
        while True:
            self.attempts += 1
            per_try = self.timeout
            if policy.deadline is not None:
                per_try = max(0.0, min(per_try, start + policy.deadline - self._clock()))
            sent = self._clock()
            ans = self._call('acquire', per_try, resource=resource, owner=self.owner,
                             lease=self.lease, timeout=per_try, tree=self.tree,
                             note=self.note, client=self.client_id)
            if ans.ok:
                self._granted(ans.data, sent)
                return self
            if ans.kind == 'refused':
                raise self._core.refusal(ans)
            delay = next(delays, None)
            late = policy.deadline is not None and \
                self._clock() + (delay or 0) - start > policy.deadline
            if delay is None or late:
                raise self._core.refusal(ans, self.attempts, self._clock() - start)
            log.info('%s busy (attempt %d): %s; retrying in %.2f s', ', '.join(self.resources),
                     self.attempts, ans.message, delay)
            self._sleep(delay)

    def _granted(self, data, sent):
        with self._lock:
            self._core.granted(data, sent)
            self._told = None
        if self._renewer is None:
            self._renewer = shared_renewer()
        self.renewing = True
        self._renewer.add(self, self._core.renew_every)
        self._start_watching()

    # -- the lease watch ------------------------------------------------------------

    def _start_watching(self):
        if not self.watch:
            return
        try:
            client = self.client
        except ReservationError:
            return
        watch_call = getattr(client, 'watch_call', None)
        if not callable(watch_call):
            return                  # a transport without watches: renewals only
        with self._lock:
            self._watch_gen += 1
            gen = self._watch_gen
            self._watch_stop = stop = threading.Event()
        _watch_pool().submit(self._watch_loop, gen, watch_call, stop)

    def _stop_watching(self):
        with self._lock:
            self._watch_gen += 1
            self._watch_stop.set()

    def _watch_loop(self, gen, watch_call, stop):
        """Keep one watch outstanding while grant ``gen`` is held (on a
        pool thread). Each turn is bounded: the registry answers a watch
        within WATCH_WAIT s (the read timeout is WATCH_WAIT + CALL_MARGIN);
        a retry pause ends early when the reservation is released."""
        core = self._core
        while True:
            with self._lock:
                if gen != self._watch_gen or core.lost is not None or not core.tokens:
                    return
                params = {'resource': core.first, 'lease_id': core.lease_id,
                          'wait': WATCH_WAIT, 'client': self.client_id}
            sent = self._clock()
            try:
                ans = watch_call(params, WATCH_WAIT)
            except Exception as e:      # a transport that raises: as no answer
                ans = Answer(False, _exc_reason(e), answered=False)
            with self._lock:
                if gen != self._watch_gen:
                    return              # released or granted again meanwhile
                event = ans.data.get('event') if ans.ok else 'failed'
                self.watch_events[event] = self.watch_events.get(event, 0) + 1
                notice = core.watched(ans, sent)
                if notice.kind == 'lost':
                    self.renewing = False
                    self._tell()
            if notice.kind == 'lost':
                if self._renewer is not None:
                    self._renewer.remove(self)
                return
            if notice.kind == 'done':
                return
            if notice.kind == 'preempt':
                log.warning('reservation of %s: %s', ', '.join(self.resources), notice.reason)
                if self.on_preempt is not None:
                    try:
                        self.on_preempt(notice.reason, notice.deadline)
                    except Exception:
                        log.exception('on_preempt callback failed')
            elif notice.kind == 'retry':
                log.info('lease watch of %s: %s; again in %.1f s', core.first,
                         one_line(notice.reason, 120), notice.delay)
                if stop.wait(notice.delay):
                    return

    # -- renewal --------------------------------------------------------------------

    def renew_once(self):
        """One renewal (called by the renewer when it is due). Returns the
        delay to the next one, or None when renewing is over (lost, released)."""
        core = self._core
        if not self.renewing or core.lost is not None or not core.tokens:
            return None
        sent = self._clock()
        ans = self._call('renew', resource=core.first, lease_id=core.lease_id,
                         lease=self.lease, client=self.client_id)
        with self._lock:
            if not self.renewing:
                return None         # released meanwhile: not a loss
            if ans.ok:
                core.renewed(ans.data, sent)
                return core.renew_every
            if ans.answered:
                core.refused(ans.reason)
            elif core.unreachable(ans.reason) is None:
                log.warning('renewal of %s failed (will retry): %s', core.first, ans.message)
                return min(RETRY, core.renew_every)
            self.renewing = False
            self._tell()
            return None

    def _stop_renewing(self):
        self.renewing = False
        self._stop_watching()
        if self._renewer is not None:
            self._renewer.remove(self)

    # -- release --------------------------------------------------------------------

    def release(self):
        """Stop renewing and release the lease. Returns the registry's message,
        or None if there was nothing to release (never acquired, or lost)."""
        self._stop_renewing()
        with self._lock:
            core = self._core
            token, lost, first, lease_id = core.token, core.lost, core.first, core.lease_id
            until = release_resend_until(core.deadline, self._clock())
            core.released()
        if token is None or lost is not None:
            return None
        for _ in range(int(RELEASE_RESEND_FOR / RETRY) + 1):     # (also bounded by count)
            ans = self._call('release', resource=first, lease_id=lease_id,
                             client=self.client_id)
            if ans.ok or ans.answered or self._clock() + RETRY > until:
                break
            # (no answer: the registry failing over, the router restarting;
            # a release that did arrive is refused when sent again: harmless)
            log.info('release of %s not answered (%s); sending it again in %.1f s', first,
                     one_line(ans.message, 120), RETRY)
            self._sleep(RETRY)
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

    def __repr__(self):
        state = 'lost' if self.lost else 'held' if self.tokens else 'not held'
        return f'<Reservation {", ".join(self.resources)} by {self.owner!r}: {state}>'
