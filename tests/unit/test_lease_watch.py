"""Pushed revocation (issue 11 part 4): the registry's lease watches
(agents/lock_registry/watchers.py, ``LeaseOps.do_watch``), what the pure
holder core makes of their answers (``LeaseHolder.watched``) and both
shells keeping one watch outstanding (SiteLock on a fake reactor,
Reservation on a watch thread driven through a queue by the test thread).

Who wakes a watch, each pinned below: an event on its lease (revoked,
expired, released), its own timeout, the registry stopping, the registry
losing its router, the holder releasing (and cancelling its call)."""
import queue
import re
import threading

import pytest
from twisted.internet import defer

from ocs_locking.agents.lock_registry.watchers import Watchers, WatchRefused
from ocs_locking.errors import LeaseLost
from ocs_locking.leases.holder import (WATCH_RETRY, WATCH_RETRY_MAX, Answer, LeaseHolder,
                                       utc)
from ocs_locking.leases.renewer import Renewer
from ocs_locking.leases.reservation import Reservation, RetryPolicy

from .lease_ops_support import T0, Reactor, fired, hold, make_ops
from .test_lease_shells import Clock, SiteLockShell

#: Bound on every wait for another thread (never reached when it works).
WAIT = 10.0


@pytest.fixture
def ops(tmp_path):
    return make_ops(tmp_path)


# -- the registry's bookkeeping ---------------------------------------------------------

def test_Watchers_event_timeout_cancel_and_caps():
    """When a watch is added it waits; an event answers every watch of its
    lease once; a watch nobody wakes answers ``timeout`` at its wait; a
    cancelled one is dropped with its timer; over a cap it is refused in
    one line and nothing is added."""
    reactor = Reactor()
    w = Watchers(reactor, per_lease=2, total=3)
    a, b = fired(w.add(7, 20, "'hwp'")), fired(w.add(7, 20, "'hwp'"))
    with pytest.raises(WatchRefused, match=r"^the lease on 'hwp' already has 2 watches "
                                           r"\(at most 2 per lease\)$"):
        w.add(7, 20, "'hwp'")
    assert w.wake(7, {'event': 'revoked'}) == 2 and a == b == [{'event': 'revoked'}]
    assert len(w) == 0 and reactor.getDelayedCalls() == []
    c = fired(w.add(8, 5, "'x'"))
    reactor.advance(4.9)
    assert c == []
    reactor.advance(0.1)
    assert c == [{'event': 'timeout', 'waited': 5}] and len(w) == 0
    d = w.add(9, 5, "'y'")
    fired(w.add(10, 5, "'z'")), fired(w.add(11, 5, "'q'"))
    with pytest.raises(WatchRefused, match=r'^the registry already has 3 lease watches '
                                           r'\(at most 3\)$'):
        w.add(13, 5, "'s'")
    d.addErrback(lambda f: None)
    d.cancel()
    assert w.count(9) == 0 and len(w) == 2 and len(reactor.getDelayedCalls()) == 2
    assert w.wake_all({'event': 'stopping'}) == 2 and len(w) == 0


def test_LeaseOps_watch_is_answered_by_force_release_with_who_and_why(ops):
    """When the lease is force-released, its watch answers at once (no tick,
    no time passing) with who did it, why and when; the answer never holds
    the lease id."""
    lease_id = hold(ops)
    out = fired(ops.do_watch('hwp', lease_id, 20))
    assert out == []
    ops.state.force_release('hwp', 'hwp jammed', 'ops-console (declared, cred_level 2)',
                            ops.clock())
    [reply] = out
    assert reply['ok'] and reply['data'] == {
        'resource': 'hwp', 'token': 1, 'event': 'revoked',
        'by': 'ops-console (declared, cred_level 2)', 'reason': 'hwp jammed', 'at': T0}
    assert reply['message'] == ("Revoked: 'hwp' (token 1) by ops-console (declared, "
                                "cred_level 2): 'hwp jammed'")
    assert lease_id not in repr(reply)


def test_LeaseOps_watch_is_answered_by_expiry_release_and_its_timeout(ops):
    """When the lease expires at the registry, or its holder releases it,
    the watch answers (``expired`` with when, ``released``); a watch
    nothing happens to answers ``timeout`` at its wait."""
    lease_id = hold(ops, lease=5)
    out = fired(ops.do_watch('hwp', lease_id, 20))
    ops.reactor.advance(5.0)
    ops._expire()
    assert out[0]['data'] == {'resource': 'hwp', 'token': 1, 'event': 'expired', 'at': T0 + 5}
    lease_id = hold(ops)
    out = fired(ops.do_watch('hwp', lease_id, 20))
    ops.do_release('hwp', lease_id)
    assert out[0]['data']['event'] == 'released'
    lease_id = hold(ops)
    out = fired(ops.do_watch('hwp', lease_id, 2.5))
    ops.reactor.advance(2.49)
    assert out == []
    ops.reactor.advance(0.01)
    assert out[0]['data'] == {'event': 'timeout', 'waited': 2.5}
    assert len(ops.watchers) == 0


def test_LeaseOps_watch_of_a_lease_already_gone_answers_at_once_how_it_ended(ops):
    """When the lease was revoked before the watch arrived (the holder was
    re-polling), the watch answers at once as if it had been waiting
    (``revoked``, who and why); a lease_id that holds nothing is ``gone``
    (nothing to watch)."""
    lease_id = hold(ops)
    ops.state.force_release('hwp', 'stop', 'op', ops.clock())
    [reply] = fired(ops.do_watch('hwp', lease_id, 20))
    assert reply['ok'] and reply['data'] == {'resource': 'hwp', 'token': 1,
                                             'event': 'revoked', 'by': 'op',
                                             'reason': 'stop', 'at': T0}
    [reply] = fired(ops.do_watch('hwp', 'f' * 32, 20))      # not the one that ended
    assert reply['data']['event'] == 'gone' and re.search(
        r"^that lease_id holds nothing on 'hwp'", reply['data']['reason'])
    [reply] = fired(ops.do_watch('other', 'f' * 32, 20))
    assert reply['data']['event'] == 'gone' and len(ops.watchers) == 0


@pytest.mark.parametrize('wait, why', [
    (-1, r'^Refused: wait must be a number of seconds in \[0, 60\], not -1$'),
    (61, r'^Refused: wait must be a number of seconds in \[0, 60\], not 61$'),
    (True, r'^Refused: wait must be a number of seconds in \[0, 60\], not True$'),
    ('5', r"^Refused: wait must be a number of seconds in \[0, 60\], not '5'$")])
def test_LeaseOps_watch_with_a_bad_wait_is_refused_in_one_line(ops, wait, why):
    """When a watch asks for a bad wait it is refused (``ok`` false) in one
    line naming it; nothing is added and the lease is kept."""
    lease_id = hold(ops)
    [reply] = fired(ops.do_watch('hwp', lease_id, wait))
    assert reply['ok'] is False and re.match(why, reply['message'])
    assert len(ops.watchers) == 0 and ops.state.holders()[0].owner == 'a'


def test_LeaseOps_watches_over_the_per_lease_cap_are_refused(ops):
    """When a lease already has its 4 watches, a fifth is refused in one
    line; the four are still answered by the next event."""
    lease_id = hold(ops)
    outs = [fired(ops.do_watch('hwp', lease_id, 20)) for _ in range(4)]
    [reply] = fired(ops.do_watch('hwp', lease_id, 20))
    assert reply['ok'] is False and reply['message'] == (
        "Refused: the lease on 'hwp' already has 4 watches (at most 4 per lease)")
    ops.state.force_release('hwp', 'x', 'op', ops.clock())
    assert all(o[0]['data']['event'] == 'revoked' for o in outs)


def test_LeaseOps_watches_are_answered_when_the_registry_stops_or_leaves_the_router(ops):
    """When the registry's session leaves the router, and when the registry
    stops (close before the reactor shuts down), every watch is answered
    ``stopping`` with why, and no timer is left."""
    lease_id = hold(ops)
    out = fired(ops.do_watch('hwp', lease_id, 20))
    ops._left(ops.agent)
    assert out[0]['data'] == {'event': 'stopping',
                              'reason': 'the registry lost its router connection'}
    out = fired(ops.do_watch('hwp', lease_id, 20))
    ops.close()
    assert out[0]['data'] == {'event': 'stopping', 'reason': 'the registry is stopping'}
    assert len(ops.watchers) == 0


def test_LeaseOps_watch_cancelled_by_its_caller_is_dropped(ops):
    """When the caller cancels its watch call (a SiteLock releasing: the
    router interrupts the call), the watch is dropped with its timer."""
    lease_id = hold(ops)
    d = ops.do_watch('hwp', lease_id, 20)
    assert len(ops.watchers) == 1
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    assert len(ops.watchers) == 0


# -- the holder core ----------------------------------------------------------------------

def core():
    clock = Clock(100.0)
    h = LeaseHolder('satp1/hwp', 9, clock)
    h.granted({'resource': 'satp1/hwp', 'token': 7, 'lease_id': 'k' * 32}, clock())
    return h, clock


def answer(**data):
    return Answer(True, '', data)


def test_LeaseHolder_watched_revocation_is_a_loss_saying_who_why_and_when():
    """When a watch says the lease was force-released, the core loses it
    with a reason naming who, why and when (UTC), and check() refuses."""
    h, _ = core()
    n = h.watched(answer(event='revoked', by='ops-console (declared, cred_level 2)',
                         reason='hwp jammed', at=3723.4), 100.0)
    assert n.kind == 'lost' and n.reason == h.lost == (
        "the lease on satp1/hwp (token 7) was revoked: force-released by ops-console (declared, "
        "cred_level 2): 'hwp jammed' at 01:02:03 UTC")
    with pytest.raises(LeaseLost, match=r'force-released by ops-console'):
        h.check()
    assert h.watched(answer(event='timeout'), 100.0).kind == 'done'


def test_LeaseHolder_watched_expiry_and_gone_are_losses():
    """When a watch says the lease expired at the registry, or was already
    gone, the core loses it saying so."""
    h, _ = core()
    assert h.watched(answer(event='expired', at=0), 100.0).reason == (
        'the lease on satp1/hwp (token 7) expired at the registry at 00:00:00 UTC '
        '(no renewal reached it in time)')
    h, _ = core()
    n = h.watched(answer(event='gone', reason="lease on 'satp1/hwp' expired at 1"), 100.0)
    assert n.kind == 'lost' and n.reason.startswith('the lease on satp1/hwp (token 7) is '
                                                    'no longer held: ')


def test_LeaseHolder_watched_timeout_polls_again_and_failures_back_off():
    """When a watch answered ``timeout`` after its wait, the next is sent at
    once; one answered too soon, a refusal, no answer or an answer not
    understood waits, doubling up to WATCH_RETRY_MAX; the lease is kept."""
    h, clock = core()
    clock.t = 120.0
    assert h.watched(answer(event='timeout'), 100.0).kind == 'again'
    n = h.watched(answer(event='timeout'), 119.9)
    assert (n.kind, n.delay) == ('retry', WATCH_RETRY)
    delays = [h.watched(Answer(False, 'no router', answered=False), 120.0).delay
              for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0] and WATCH_RETRY_MAX == 5.0
    assert h.watched(Answer(False, 'Refused: x', {'error': 'x'}), 120.0).kind == 'retry'
    assert h.watched(answer(resource='satp1/hwp'), 120.0).reason == \
        "unexpected watch answer None"
    assert h.watched(answer(event='timeout'), 100.0).kind == 'again'
    assert h.watch_delay == WATCH_RETRY                                     # reset
    assert h.watched(answer(event='stopping'), 100.0).kind == 'retry'
    assert h.lost is None and h.held is False       # (the clock ran past the lease)
    assert h.watched(answer(event='timeout'), 100.0).kind == 'again'


def test_LeaseHolder_watched_preempt_gives_a_deadline_on_this_hosts_clock_once():
    """When a watch brings a preempt notice, the core tells it once per
    grant: who asks, why, and a deadline on this host's monotonic clock (now
    + the grace the registry says is left), never the registry's instant."""
    h, clock = core()
    n = h.watched(answer(event='preempt', by='calib (declared, cred_level 2)',
                         reason='calibration', grace_left=4.5, deadline=1.7e9), 99.0)
    assert n.kind == 'preempt' and n.deadline == clock() + 4.5
    assert n.reason == ("calib (declared, cred_level 2) asks for satp1/hwp: 'calibration'; "
                        "it is revoked in 4.5 s unless released")
    assert h.watched(answer(event='preempt', grace_left=4.0), 99.0).kind == 'again'
    assert h.lost is None


def test_utc_formats_an_instant_for_display():
    assert utc(0) == '00:00:00 UTC' and utc(None) == 'an unknown time'


# -- SiteLock, pushed -------------------------------------------------------------------

def test_SiteLock_force_release_reaches_the_holder_at_once_through_its_watch():
    """When an operator force-releases a SiteLock's lease, on_lost is called
    at once (no time passes, no renewal) with who and why; guard() refuses
    from then on and neither renewals nor watches go on."""
    shell = SiteLockShell(Clock())
    lost = []
    h = shell.make(on_lost=lost.append, watch=True)
    shell.acquire(h)
    assert len(shell.registry.ops.watchers) == 1
    shell.registry.state.force_release('bridge', 'hwp jammed',
                                       'ops-console (declared, cred_level 2)', shell.clock())
    shell.settle()
    assert lost == [h.lost] and re.match(
        r"^the lease on bridge \(token 1\) was revoked: force-released by ops-console \(declared, "
        r"cred_level 2\): 'hwp jammed' at \d\d:\d\d:\d\d UTC$", lost[0])
    with pytest.raises(LeaseLost):
        with h.guard():
            raise AssertionError('the device was touched')
    shell.run_for(30)
    assert shell.registry.count('renew') == 0 and shell.registry.count('watch') == 1
    assert len(lost) == 1


def test_SiteLock_watch_polls_again_after_its_timeout_and_release_cancels_it():
    """When nothing happens, the watch is answered at its wait and sent
    again (one outstanding at a time); releasing cancels it at the
    registry (none left)."""
    shell = SiteLockShell(Clock())
    h = shell.make(watch=True, lease=60)
    shell.acquire(h)
    shell.run_for(45)
    assert shell.registry.count('watch') == 3 and len(shell.registry.ops.watchers) == 1
    assert h.watch_events == {'timeout': 2}
    assert shell.release(h) and len(shell.registry.ops.watchers) == 0
    shell.run_for(30)
    assert shell.registry.count('watch') == 3


def test_SiteLock_failed_watch_falls_back_to_renewals_and_retries():
    """When the watch cannot reach the registry, the holder keeps its lease
    by renewals and retries the watch with a bounded backoff; once the
    registry is back a revocation is pushed again."""
    shell = SiteLockShell(Clock())
    lost = []
    h = shell.make(on_lost=lost.append, watch=True)
    shell.registry.down = False
    shell.acquire(h)
    shell.registry.ops._left(shell.registry.ops.agent)     # the watch is answered 'stopping'
    shell.registry.down = True
    shell.run_for(2)
    shell.registry.down = False
    shell.run_for(6)
    assert h.held and h.watch_events.get('failed', 0) >= 1
    assert len(shell.registry.ops.watchers) == 1
    shell.registry.state.force_release('bridge', 'x', 'op', shell.clock())
    shell.settle()
    assert len(lost) == 1 and 'force-released by op' in lost[0]


def test_SiteLock_expiry_at_the_registry_is_pushed():
    """When the registry expires the lease (renewals lost on the way, the
    registry's clock ahead), the watch tells the holder at once."""
    shell = SiteLockShell(Clock())
    lost = []
    h = shell.make(on_lost=lost.append, watch=True)
    shell.acquire(h)
    g = shell.registry.state.holders()[0]
    shell.clock.t = g.expires
    shell.registry.ops._expire()
    shell.settle()
    assert len(lost) == 1 and 'expired at the registry at' in lost[0]


# -- Reservation, pushed ----------------------------------------------------------------

class WatchedTransport:
    """Lease calls to the real LeaseOps on the test thread; watches from the
    Reservation's watch thread are handed to the test thread (``serve``),
    which calls the registry and hands the answer back when it fires."""

    def __init__(self, ops):
        self.ops = ops
        self.requests = queue.Queue()

    def lease_call(self, name, params, wait=0.0):
        reply = fired(defer.maybeDeferred(getattr(self.ops, f'_rpc_{name}'), **params))[0]
        return Answer(reply['ok'], reply['message'], reply['data'])

    def watch_call(self, params, wait):
        done, out = threading.Event(), []
        self.requests.put((params, done, out))
        if not done.wait(WAIT):
            return Answer(False, 'test: no answer', answered=False)
        return Answer(out[0]['ok'], out[0]['message'], out[0]['data'])

    def serve(self):
        """Take the next watch (waiting for the watch thread) to the registry."""
        params, done, out = self.requests.get(timeout=WAIT)

        def answered(reply):
            out.append(reply)
            done.set()
        self.ops._rpc_watch(**params).addCallback(answered)


def test_Reservation_force_release_reaches_the_holder_through_its_watch(ops):
    """When an operator force-releases a Reservation's lease, its watch
    (on a thread of its own) is answered at once and on_lost gets who and
    why; guard() refuses; the renewals stop."""
    told = threading.Event()
    lost = []
    transport = WatchedTransport(ops)
    res = Reservation('hwp', 'schedule', lease=30, client=transport,
                      renewer=Renewer(thread=False), retry=RetryPolicy(attempts=1),
                      on_lost=lambda r: (lost.append(r), told.set()))
    res.acquire()
    transport.serve()
    assert len(ops.watchers) == 1
    ops.state.force_release('hwp', 'hwp jammed', 'ops-console (declared, cred_level 2)',
                            ops.clock())
    assert told.wait(WAIT)
    assert re.match(r"^the lease on hwp \(token 1\) was revoked: force-released by ops-console "
                    r"\(declared, cred_level 2\): 'hwp jammed' at \d\d:\d\d:\d\d UTC$",
                    lost[0])
    with pytest.raises(LeaseLost):
        res.check()
    assert res.renewing is False and res.release() is None


def test_Reservation_release_ends_its_watch(ops):
    """When a Reservation is released, the registry answers its watch
    (``released``) and the watch thread ends (no watch is sent again)."""
    transport = WatchedTransport(ops)
    res = Reservation('hwp', 'schedule', lease=30, client=transport,
                      renewer=Renewer(thread=False), retry=RetryPolicy(attempts=1))
    res.acquire()
    transport.serve()
    assert res.release() == 'Released hwp.'
    assert len(ops.watchers) == 0
    with pytest.raises(queue.Empty):
        transport.requests.get(timeout=0.2)


def test_Reservation_without_a_watching_transport_renews_only():
    """When the transport offers no watch_call (or watch=False), the
    Reservation works by renewals alone, as before."""
    calls = []

    class Plain:
        def lease_call(self, name, params, wait=0.0):
            calls.append(name)
            return Answer(True, '', {'resource': 'hwp', 'token': 1, 'lease_id': 'k' * 32})
    res = Reservation('hwp', 'me', lease=30, client=Plain(), renewer=Renewer(thread=False),
                      retry=RetryPolicy(attempts=1))
    res.acquire()
    res.release()
    assert calls == ['acquire', 'release']
