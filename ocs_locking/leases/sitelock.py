"""SiteLock: an agent's site-wide lease, fenced where the agent meets the hardware.

The agent asks the LockRegistryAgent for a lease on a resource path over
WAMP (``<registry>.lease.acquire``), renews it in the background, and wraps
every hardware call in :meth:`SiteLock.guard`::

    self.bridge = SiteLock(agent, 'satp1/bridge-1', lease=10)
    ...
    with self.bridge.guard(timeout=3.0) as token:   # raises LeaseLost instead of
        self.device.set_heater(value, token)        # talking without a valid lease

``guard(timeout=...)`` takes the device call's own timeout and refuses to
start the call unless that timeout plus GUARD_MARGIN (0.25 s) is left of the
lease on this host's monotonic clock (:class:`LeaseTooShort`, a LeaseLost):
a call that starts ends before the registry can give the lease away, even
if this process is frozen while the command is on the wire. The token is
the fencing token to send with the command, for devices that check it.

The lease itself is kept by the pure :class:`~.holder.LeaseHolder` shared
with :class:`~.reservation.Reservation`: the same loss rules, the same
messages, a local deadline on this host's *monotonic* clock (never compared
with the registry's wall clock). ``guard()`` refuses once the lease is lost:
revoked (a force_release: pushed at once through the lease watch, see
below), past its deadline (a holder frozen by SIGSTOP is refused when it
wakes, before its next renewal is even tried), or unrenewable because the
registry stayed unreachable until the deadline (a failed renewal is retried
every 0.5 s).

**Revocation is pushed.** While it holds, a SiteLock keeps one call of the
registry's ``lease.watch`` outstanding (a Deferred chain on the reactor):
the registry answers it at once when the lease is force-released, expires
or its holder is asked to give way (``on_preempt``), else after 20 s (then
it polls again). The pure core decides what an answer means. A watch that
fails (router lost, registry restarting) is retried with a bounded backoff
(0.5 .. 5 s); meanwhile the renewals find out, as before. Releasing
cancels the watch. ``watch=False`` turns it off (renewals only).

The grant's secret ``lease_id`` (returned by the registry to this agent's
session alone) renews and releases the lease; the public token only fences
the hardware. The lease_id is kept in memory, never logged.

Busy or refused acquires raise (:class:`LeaseBusy`, naming the holders, or
:class:`LeaseUnavailable`), exactly as entering a Reservation does: a lease
is never a bool to remember to check.

Reactor code uses :meth:`acquire_deferred` / :meth:`release_deferred`;
worker threads use :meth:`acquire` / :meth:`release`, which wait for the
reactor (never call those on the reactor thread).
"""
import contextlib
import logging
import threading
import time
import warnings

from twisted.internet import defer, task
from twisted.python import threadable

from ..errors import (LeaseBusy, LeaseLost, LeaseTooShort, LeaseUnavailable,
                      ReactorBlockingError)
from ..wire import ANSWER_MARGIN, WATCH_WAIT, error_reason, lease_uri
from .holder import (GUARD_MARGIN, RELEASE_RESEND_FOR, Answer, LeaseHolder,
                     release_resend_until)
from .lease_report import LeaseReport, report_name

__all__ = ['SiteLock', 'LeaseLost', 'LeaseTooShort', 'LeaseBusy', 'LeaseUnavailable',
           'GUARD_MARGIN']

log = logging.getLogger(__name__)

#: Seconds between renewal retries after a failed renewal.
RETRY = 0.5


def _give_up(timeout):
    """Seconds a lease acquire with queue ``timeout`` may take before its
    caller gives up: ``timeout + ANSWER_MARGIN`` (a bad ``timeout``, which
    the registry refuses, counts as 0)."""
    ok = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) \
        and 0 <= timeout <= 1e6
    return (timeout if ok else 0.0) + ANSWER_MARGIN


def _reason(exc):
    """A one-line reason from a WAMP or connection error."""
    return error_reason(exc, not_running='its lease procedures are not registered '
                                         '(is the registry running?)')


class SiteLock:
    """A lease on one site-wide resource for an OCS agent.

    Args:
        agent (OCSAgent): the agent (its WAMP session makes the calls).
        resource (str): the resource path, e.g. ``satp1/bridge-1``.
        owner (str): the owner recorded by the registry (default: the
            agent's instance id).
        lease (float): lease length in seconds, in ``[MIN_LEASE, MAX_LEASE]``
            (0.5 .. 3600); renewed every ``lease / 3``.
        tree (bool): exclude everything below ``resource`` too.
        note (str): why, shown to others and kept in the audit log.
        registry (str): the LockRegistryAgent's instance id.
        on_lost (callable): called once, on the reactor thread, with the
            reason when the lease is lost (who and why, for a revocation:
            ``"the lease on satp1/hwp (token 7) was revoked: force-released by
            ops-console (declared, cred_level 2): 'hwp jammed' at 12:01:03
            UTC"``).
        on_preempt (callable): called once per grant, on the reactor
            thread, as ``on_preempt(reason, deadline)`` when someone asks
            this holder to give way (``preempt``): ``deadline`` is a
            ``clock`` (monotonic) value on this host; release before it,
            or the lease is revoked then. None: it is revoked at the
            deadline.
        watch (bool): keep a lease watch outstanding (pushed revocation
            and preempt notices); False: learn of them at renewals only.
        on_revoked (callable): deprecated name of ``on_lost``.
        clock: monotonic time source (default ``time.monotonic``; tests
            inject one).
        reactor: the Twisted reactor (default: the global one).

    Attributes:
        token (int or None): the fencing token of the current grant.
        lost (str or None): why the lease was lost.
        last_refusal (str or None): why the last acquire was refused.
    """

    def __init__(self, agent, resource, owner=None, lease=10.0, tree=False, note='',
                 registry='lock-registry', on_lost=None, on_revoked=None,
                 clock=time.monotonic, reactor=None, on_preempt=None, watch=True, name=None):
        if isinstance(resource, (list, tuple)):
            raise ValueError(f'SiteLock holds one resource, not a list: {resource!r:.80}')
        if on_revoked is not None:
            warnings.warn('SiteLock(on_revoked=...) is deprecated; use on_lost=',
                          DeprecationWarning, stacklevel=2)
            on_lost = on_lost or on_revoked
        self._core = LeaseHolder(resource, lease, clock, tree=tree, owner=owner)
        #: what report_locks(agent, site_lock) publishes (see lease_report)
        self.report = LeaseReport(report_name(resource, name), resource)
        self.name = self.report.name
        if reactor is None:
            from twisted.internet import reactor
        self.agent = agent
        self.resource = resource
        self.owner = owner
        self.lease = self._core.lease
        self.tree = tree
        self.note = note
        self.registry = registry
        self.on_lost = on_lost
        self.clock = clock
        self.reactor = reactor
        self.last_refusal = None    # why the last acquire was refused
        self._renewer = None
        self._retry = None          # a quick renewal retry after a failed one
        self._told = None           # the loss on_lost was told of
        self.on_preempt = on_preempt
        self.watch = bool(watch)
        self._watch_gen = 0         # the grant the outstanding watch belongs to
        self._watching = None       # the outstanding watch call (a Deferred)
        self._watch_timer = None    # the next watch after a failed one
        #: answers of the lease watch, by event (for tests and benchmarks)
        self.watch_events = {}

    # -- state (kept by the core) -------------------------------------------------

    @property
    def token(self):
        return self._core.token

    @property
    def lost(self):
        return self._core.lost

    @property
    def expires(self):
        """The registry's expiry of the grant (its clock; for display only)."""
        return self._core.expires

    @property
    def grant_privs(self):
        """The grant's access credential (str) on the agents its declared
        resource covers, when the registry is the site's access director:
        pass it as ``OCSClient(..., privs=lock.grant_privs)``. Secret (never
        logged); None when not held or when the grant carries none."""
        return self._core.grant_privs

    @property
    def deadline(self):
        """When the lease surely ends, on ``clock`` (None when not held)."""
        return self._core.deadline

    @property
    def on_revoked(self):           # deprecated alias
        return self.on_lost

    @property
    def held(self):
        """True while the lease is valid (held, not lost, not past its deadline)."""
        return self._core.held

    def _uri(self, name):
        root = self.agent.agent_address.rsplit('.', 1)[0]
        return lease_uri(f'{root}.{self.registry}', name)

    @property
    def _owner(self):
        return self.owner or self.agent.agent_address.rsplit('.', 1)[-1]

    def check(self, timeout=None):
        """Return the fencing token, or raise :class:`LeaseLost` unless the
        lease is valid now, and with ``timeout`` (the device call's own
        bound, seconds) :class:`LeaseTooShort` unless ``timeout +
        GUARD_MARGIN`` s of it are left. Any thread."""
        try:
            return self._core.check(timeout)
        except LeaseLost:
            self._lost_now()
            raise

    @contextlib.contextmanager
    def guard(self, timeout=None):
        """Context manager around a hardware call: yields the fencing token,
        or raises :class:`LeaseLost` without running the body; with
        ``timeout`` (the call's own bound, seconds) also
        :class:`LeaseTooShort` when the call would not end, timeout and
        GUARD_MARGIN included, before the lease does."""
        yield self.check(timeout)

    def _lose(self, reason):
        if self._core.lose(reason) is not None:
            self._lost_now()

    def _lost_now(self):
        """Once per loss: stop renewing and tell ``on_lost`` (reactor thread)."""
        if self._told == self._core.lost or self._core.lost is None:
            return
        self._told = self._core.lost
        log.warning('site lock %s lost: %s', self.resource, self._core.lost)
        self.reactor.callFromThread(self._stop_renewing)
        self.reactor.callFromThread(self.report.released)
        if self.on_lost is not None:
            self.reactor.callFromThread(self.on_lost, self._core.lost)

    def _stop_renewing(self):
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._stop_watching()

    # -- the lease watch (reactor thread) ---------------------------------------------

    def _start_watching(self):
        self._stop_watching()
        if self.watch:
            self._poll(self._watch_gen)

    def _stop_watching(self):
        """No watch from now on: the outstanding call is cancelled (the
        router interrupts it at the registry, which drops it)."""
        self._watch_gen += 1
        if self._watch_timer is not None and self._watch_timer.active():
            self._watch_timer.cancel()
        self._watch_timer = None
        d, self._watching = self._watching, None
        if d is not None and not d.called:
            d.cancel()

    def _poll(self, gen):
        core = self._core
        self._watch_timer = None
        if gen != self._watch_gen or core.lost is not None or not core.tokens:
            return
        sent = self.clock()
        d = defer.maybeDeferred(self.agent.call, self._uri('watch'), self.resource,
                                core.lease_id, WATCH_WAIT, self.agent.agent_address)
        d.addTimeout(WATCH_WAIT + ANSWER_MARGIN, self.reactor)
        self._watching = d
        d.addCallbacks(Answer.from_reply,
                       lambda f: Answer(False, _reason(f.value), answered=False))
        d.addCallback(self._watched, gen, sent)
        d.addErrback(lambda f: log.error('site lock %s: lease watch failed: %s',
                                         self.resource, f.getErrorMessage()))

    def _watched(self, ans, gen, sent):
        if gen != self._watch_gen:
            return                  # released, lost or granted again meanwhile
        self._watching = None
        event = ans.data.get('event') if ans.ok else 'failed'
        self.watch_events[event] = self.watch_events.get(event, 0) + 1
        notice = self._core.watched(ans, sent)
        if notice.kind == 'lost':
            self._lost_now()
        elif notice.kind == 'preempt':
            log.warning('site lock %s: %s', self.resource, notice.reason)
            if self.on_preempt is not None:
                self.on_preempt(notice.reason, notice.deadline)
            self._poll(gen)
        elif notice.kind == 'again':
            self._watch_timer = self.reactor.callLater(0, self._poll, gen)
        elif notice.kind == 'retry':
            self._watch_timer = self.reactor.callLater(notice.delay, self._poll, gen)

    # -- reactor API ----------------------------------------------------------------

    @defer.inlineCallbacks
    def acquire_deferred(self, timeout=0.0, job=None, *, op=None, session_id=None):
        """Ask for the lease, waiting up to ``timeout`` s in the registry's
        queue. ``job``, ``op``, ``session_id``: the operation asking (as for
        :meth:`TimeoutLock.acquire <ocs_locking.TimeoutLock.acquire>`): a
        reported SiteLock (``report_locks(agent, site_lock)``) names it as
        the lease's waiter, then holder, so the registry can follow waits
        across the agent's own locks and site leases (deadlocks). Fires with this SiteLock when granted; fails with :class:`LeaseBusy` (naming
        the holders) when busy and :class:`LeaseUnavailable` when refused or
        the registry cannot be reached (:attr:`last_refusal` says why too),
        or when this SiteLock already holds its lease.

        One deadline: the registry itself answers a queued request at
        ``timeout``; only if it does not answer at all is the call given up
        ``ANSWER_MARGIN`` s later (cancelled: the registry withdraws the
        request if it still waits)."""
        if self._core.tokens and self._core.lost is None:
            raise LeaseUnavailable(f'already holding {self.resource} '
                                   f'(token {self._core.token})')
        sent = self.clock()
        if isinstance(timeout, (int, float)) and timeout > 0:
            self.report.waiting(job, op, session_id)
        # One deadline: the registry answers at ``timeout`` itself; the call
        # is given up (cancelled, which withdraws the request) only
        # ANSWER_MARGIN later, when the registry did not answer at all.
        give_up = _give_up(timeout)
        # which operation asks, for the registry's deadlock check (an older
        # registry takes no ``party``: sent only when the caller names one)
        party = {} if job is None and session_id is None else \
            {'party': job if session_id is None else f'{job or "operation"} (session {session_id})'}
        try:
            call = defer.maybeDeferred(
                self.agent.call, self._uri('acquire'), self.resource, self._owner, self.lease,
                timeout, self.tree, self.note, self.agent.agent_address, **party)
            call.addTimeout(give_up, self.reactor)
            reply = yield call
            ans = Answer.from_reply(reply)
        except defer.TimeoutError:
            ans = Answer(False, f'the lock registry did not answer within {give_up:g} s',
                         answered=False)
        except Exception as e:      # not joined, no registry, router gone...
            ans = Answer(False, f'the lock registry is unreachable: {_reason(e)}',
                         answered=False)
        if not ans.ok:
            self.last_refusal = ans.reason
            self.report.gave_up()
            raise self._core.refusal(ans)
        self._core.granted(ans.data, sent)
        self.report.acquired(job, op, session_id)
        self._told = None
        self._stop_renewing()
        self._renewer = task.LoopingCall(self._renew)
        self._renewer.clock = self.reactor
        self._renewer.start(self._core.renew_every, now=False)
        self._start_watching()
        return self

    @defer.inlineCallbacks
    def _renew(self):
        core = self._core
        if core.lost is not None or not core.tokens:
            return
        sent = self.clock()
        try:
            reply = yield self.agent.call(self._uri('renew'), self.resource, core.lease_id,
                                          self.lease, self.agent.agent_address)
            ans = Answer.from_reply(reply)
        except Exception as e:       # registry or router unreachable: keep trying
            ans = Answer(False, _reason(e), answered=False)
        if ans.ok:
            core.renewed(ans.data, sent)
        elif ans.answered:
            core.refused(ans.reason)
            self._lost_now()
        elif core.unreachable(ans.reason) is not None:
            self._lost_now()
        elif self._retry is None or not self._retry.active():
            # Try again soon rather than at the next lease/3 tick, so a
            # short outage does not cost the lease.
            self._retry = self.reactor.callLater(RETRY, self._renew)

    @defer.inlineCallbacks
    def release_deferred(self):
        """Give the lease back (a lost lease is simply forgotten). Fires True
        if the registry took it back; False if it was lost or unreachable
        (the lease then runs out by itself). A release that gets no answer
        (the registry failing over to its standby) is sent again every
        RETRY s, for up to RELEASE_RESEND_FOR s or the lease's end."""
        self._stop_renewing()
        token, lease_id = self._core.token, self._core.lease_id
        lost = self._core.lost
        until = release_resend_until(self._core.deadline, self.clock())
        self._core.released()
        self.report.released()
        if token is None or lost is not None:
            return False
        for _ in range(int(RELEASE_RESEND_FOR / RETRY) + 1):     # (also bounded by count)
            try:
                reply = yield self.agent.call(self._uri('release'), self.resource, lease_id,
                                              self.agent.agent_address)
            except Exception as e:
                # no answer (the registry failing over to its standby, the
                # router restarting): sent again while it can still matter
                if self.clock() + RETRY > until:
                    log.warning('could not release site lock %s (it ends with its lease): '
                                '%s', self.resource, error_reason(e))
                    return False
                yield task.deferLater(self.reactor, RETRY, lambda: None)
                continue
            return bool(isinstance(reply, dict) and reply.get('ok'))
        return False

    # -- thread API -----------------------------------------------------------------

    def _blocking(self, fn, *args, timeout, kwargs=None):
        if threadable.isInIOThread():
            raise ReactorBlockingError(
                f'SiteLock.{fn.__name__.replace("_deferred", "")}() would block the reactor '
                f'thread; use {fn.__name__}()')
        done = threading.Event()
        out = {}

        def run():
            d = fn(*args, **(kwargs or {}))
            d.addCallbacks(lambda r: out.setdefault('value', r),
                           lambda f: out.setdefault('error', f.value))
            d.addBoth(lambda _: done.set())
        self.reactor.callFromThread(run)
        if not done.wait(timeout):
            raise TimeoutError(f'the lock registry did not answer within {timeout:g} s')
        if 'error' in out:
            raise out['error']
        return out['value']

    def acquire(self, timeout=0.0, job=None, *, op=None, session_id=None):
        """Thread version of :meth:`acquire_deferred` (this SiteLock, or raises).
        It answers by ``timeout`` (the registry's answer) or at the latest
        ``timeout + ANSWER_MARGIN`` (the call given up)."""
        return self._blocking(self.acquire_deferred, timeout, job,
                              timeout=_give_up(timeout) + 5,
                              kwargs={'op': op, 'session_id': session_id})

    def release(self):
        """Thread version of :meth:`release_deferred`."""
        return self._blocking(self.release_deferred, timeout=30)
