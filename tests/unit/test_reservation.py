"""Reservation (ocs_locking.leases.reservation) against a fake registry client:
the registry's acquire/renew/release/leases tasks answered by a real
LeaseState in memory on a fake clock. The renew thread waits on a
ManualEvent the tests tick, so nothing here sleeps to synchronise.
"""
import threading
from collections import namedtuple

import ocs
import pytest

from ocs_locking.leases.reservation import (LeaseLost, Reservation, ReservationBusy,
                                         ReservationError, RetryPolicy, call_task)
from ocs_locking.leases.state import LeaseError, LeaseState

SAFETY = 10.0       # seconds; only reached when a test is broken

Reply = namedtuple('Reply', 'status msg session')


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeRegistry:
    """The registry's lease tasks, as an OCSClient would show them, on a
    LeaseState driven by a fake clock. ``down`` makes every call fail like an
    unreachable router."""

    def __init__(self, clock):
        self.clock = clock
        self.state = LeaseState()
        self.calls = []
        self.down = False
        self.busy_starts = 0        # how many starts answer 'already in progress'
        self.session_id = 0
        for name in ('acquire', 'renew', 'release', 'leases'):
            setattr(self, name, _Op(self, name))

    def run(self, name, params):
        now = self.clock()
        try:
            if name == 'acquire':
                out = self.state.acquire(params['resource'], params['owner'], params['lease'],
                                         now, timeout=0, tree=params.get('tree', False),
                                         note=params.get('note', ''),
                                         client=params.get('client', ''))
                if out.status == 'granted':
                    grants = [g.as_dict() for g in out.grants]
                    return True, 'Granted.', dict(grants[0], grants=grants,
                                                  request_id=out.request_id)
                holders = [g.as_dict() for g in out.holders]
                return False, f'Busy ({out.status}): {holders}', {
                    'holders': holders, 'queue_position': out.queue_position,
                    'status': out.status}
            if name == 'renew':
                g = self.state.renew(params['resource'], params['token'], params['lease'], now)
                return True, 'Renewed.', g.as_dict()
            if name == 'release':
                self.state.release(params['resource'], params['token'], now)
                return True, f"Released {params['resource']}.", {}
            return True, 'leases', self.state.snapshot()
        except LeaseError as e:
            return False, f'Refused: {e}', {'error': str(e)}

    def count(self, name):
        return sum(1 for n, _ in self.calls if n == name)


class _Op:
    def __init__(self, reg, name):
        self.reg, self.name, self.last = reg, name, None

    def start(self, **params):
        reg = self.reg
        if reg.down:
            raise RuntimeError('Failed to connect to http://127.0.0.1:1/call')
        if reg.busy_starts:
            reg.busy_starts -= 1
            return Reply(ocs.ERROR, f'Operation "{self.name}" already in progress.', {})
        reg.calls.append((self.name, params))
        ok, msg, data = reg.run(self.name, params)
        reg.session_id += 1
        self.last = {'session_id': reg.session_id, 'op_name': self.name, 'status': 'done',
                     'success': ok, 'data': data,
                     'messages': [[0, 'Status is now "running".'], [0, msg],
                                  [0, 'Status is now "done".']]}
        return Reply(ocs.OK, 'Started.', dict(self.last, status='starting'))

    def wait(self, timeout=None):
        return Reply(ocs.OK, 'done', self.last)


class ManualEvent:
    """Stands in for the renew thread's threading.Event: wait() returns only
    when the test calls tick() (one renewal) or set() (stop)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._set = False
        self._ticks = 0
        self.waits = 0
        self.blocked = False
        self.intervals = []

    def is_set(self):
        return self._set

    def set(self):
        with self._cond:
            self._set = True
            self._cond.notify_all()

    def clear(self):
        with self._cond:
            self._set = False

    def wait(self, timeout=None):
        with self._cond:
            self.intervals.append(timeout)
            self.waits += 1
            self.blocked = True
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: self._set or self._ticks, SAFETY), \
                'ManualEvent: never ticked'
            self.blocked = False
            if not self._set:
                self._ticks -= 1
            return self._set

    def tick(self, res, ends=False):
        """Let the renew loop run once; return when it waits again (or, with
        ``ends``, when the thread has ended)."""
        thread = res._thread
        with self._cond:
            assert self._cond.wait_for(lambda: self.blocked, SAFETY)
            n = self.waits
            self._ticks += 1
            self._cond.notify_all()
            if not ends:
                assert self._cond.wait_for(lambda: self.waits > n, SAFETY)
        if ends:
            thread.join(SAFETY)
            assert not thread.is_alive()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def reg(clock):
    return FakeRegistry(clock)


def make(reg, clock, resources='satp1/hwp', **kw):
    kw.setdefault('owner', 'alice')
    kw.setdefault('lease', 30.0)
    kw.setdefault('retry', RetryPolicy(attempts=3, first=0.5, factor=2.0, deadline=None))
    delays = []

    def sleep(d):
        delays.append(d)
        clock.t += d
    res = Reservation(resources, client=reg, clock=clock, sleep=sleep,
                      stop_event=kw.pop('stop_event', ManualEvent()), **kw)
    res.delays = delays
    return res


def test_Reservation_grant(reg, clock):
    """When the resource is free, entering grants it at once: tokens,
    expiry and a running renew thread; leaving releases it and stops the thread."""
    res = make(reg, clock)
    with res as r:
        assert r is res
        assert r.tokens == {'satp1/hwp': 1} and r.token == 1
        assert r.expires == clock.t + 30.0 and r.lost is None and r.held
        r.check()
        assert r._thread.is_alive()
        thread = r._thread
        assert [g['owner'] for g in reg.state.snapshot()['grants']] == ['alice']
    assert not thread.is_alive()
    assert reg.state.snapshot()['grants'] == []
    assert reg.count('release') == 1 and res.lost is None and res.tokens == {}
    assert res.attempts == 1 and res.delays == []


def test_Reservation_busy_then_retry_then_grant(reg, clock):
    """When bob holds the resource for 1 s, the reservation retries after
    0.5 s and 1.0 s (the policy's backoff) and is granted on the third attempt
    with a larger token."""
    reg.state.acquire('satp1/hwp', 'bob', 1.0, clock.t)
    res = make(reg, clock)
    with res:
        assert res.attempts == 3 and res.delays == [0.5, 1.0]
        assert res.tokens == {'satp1/hwp': 2}
    assert [n for n, _ in reg.calls] == ['acquire'] * 3 + ['release']


def test_Reservation_gives_up_naming_the_holder(reg, clock):
    """When the resource stays busy for every attempt, entering raises
    ReservationBusy naming the holder and its token; nothing is left running
    and nothing is held."""
    reg.state.acquire('satp1/hwp', 'bob', 300.0, clock.t, note='manual work')
    res = make(reg, clock)
    with pytest.raises(ReservationBusy) as info:
        with res:
            pytest.fail('body ran without the lease')
    e = info.value
    assert "satp1/hwp held by 'bob' (token 1) (manual work)" in str(e)
    assert 'after 3 attempt(s)' in str(e) and e.attempts == 3
    assert [h['owner'] for h in e.holders] == ['bob']
    assert res.delays == [0.5, 1.0] and res._thread is None
    assert [g['owner'] for g in reg.state.snapshot()['grants']] == ['bob']


def test_Reservation_deadline_bounds_the_retries(reg, clock):
    """When the policy's deadline would pass before the next attempt, it gives
    up early (here after 2 of 10 attempts: 0.5 + 1.0 s > 1.2 s)."""
    reg.state.acquire('satp1/hwp', 'bob', 300.0, clock.t)
    res = make(reg, clock, retry=RetryPolicy(attempts=10, first=0.5, factor=2, deadline=1.2))
    with pytest.raises(ReservationBusy, match='after 2 attempt'):
        res.acquire()
    assert res.delays == [0.5]


def test_Reservation_retry_policy_is_bounded_and_seeded():
    """When jitter is set, delays stay within it and repeat for one seed; each
    delay is capped by max_delay; bad policies are refused."""
    p = RetryPolicy(attempts=6, first=1, factor=3, max_delay=5, jitter=0.2, seed=7)
    a, b = list(p.delays()), list(p.delays())
    assert a == b and len(a) == 5
    for d, base in zip(a, [1, 3, 5, 5, 5]):
        assert base * 0.8 <= d <= base * 1.2
    assert list(RetryPolicy(attempts=4, first=1, factor=3, max_delay=5).delays()) == [1, 3, 5]
    for bad in ({'attempts': 0}, {'first': -1}, {'factor': 0.5}, {'deadline': 0},
                {'jitter': 1.5}):
        with pytest.raises(ValueError, match='RetryPolicy'):
            RetryPolicy(**bad)


def test_Reservation_renewal_keeps_it(reg, clock):
    """When the renew thread ticks (every lease/3), the lease is renewed, so
    it outlives its first lease: past 30 s it still holds the same token."""
    ev = ManualEvent()
    res = make(reg, clock, stop_event=ev)
    with res:
        for _ in range(4):
            clock.t += 10.0
            ev.tick(res)
        assert ev.intervals == [10.0] * 5
        assert reg.count('renew') == 4 and res.lost is None and res.held
        assert res.expires == clock.t + 30.0
        assert reg.state.snapshot()['grants'][0]['token'] == res.token == 1
        res.check()
    assert reg.state.snapshot()['grants'] == []


def test_Reservation_revoked_renewal_is_lost(reg, clock):
    """When an operator force-releases the resource, the next renewal is
    refused: the reservation is lost, check() raises LeaseLost with the
    registry's reason, on_lost is called once and the renew thread ends."""
    ev, seen = ManualEvent(), []
    res = make(reg, clock, stop_event=ev, on_lost=seen.append)
    with res:
        reg.state.force_release('satp1/hwp', 'cryo maintenance', 'cred_level 2', clock.t)
        clock.t += 10.0
        ev.tick(res, ends=True)
        assert res.lost is not None and 'revoked' in res.lost
        assert 'cryo maintenance' in res.lost and seen == [res.lost]
        with pytest.raises(LeaseLost, match='renewal refused: Refused: .*revoked'):
            res.check()
        assert not res.held
    # leaving after a loss does not raise and does not try to release
    assert reg.count('release') == 0


def test_Reservation_expired_lease_is_lost(reg, clock):
    """When the lease ran out before a renewal (the process was frozen), the
    renewal is refused (expired) and check() raises LeaseLost."""
    ev = ManualEvent()
    res = make(reg, clock, stop_event=ev)
    with res:
        clock.t += 31.0
        with pytest.raises(LeaseLost, match='ran out without a renewal'):
            res.check()
        ev.tick(res, ends=True)
    reg.state.expire(clock.t)
    assert reg.state.snapshot()['grants'] == [] and reg.count('release') == 0


def test_Reservation_unreachable_registry_is_lost_only_past_the_lease(reg, clock):
    """When the registry cannot be reached, renewal failures within the
    lease are retried; once the lease has passed the reservation is lost."""
    ev = ManualEvent()
    res = make(reg, clock, stop_event=ev)
    with res:
        reg.down = True
        clock.t += 10.0
        ev.tick(res)
        clock.t += 10.0
        ev.tick(res)
        assert res.lost is None
        clock.t += 10.0
        ev.tick(res, ends=True)
        assert 'unreachable for longer than the lease' in res.lost
        assert 'Failed to connect' in res.lost
        with pytest.raises(LeaseLost):
            res.check()
    # the exit neither raised nor reached the (down) registry
    assert reg.count('release') == 0


def test_Reservation_exit_after_loss_does_not_raise(reg, clock):
    """When the lease was lost inside the body, leaving the block raises
    nothing of its own and a body's exception still propagates."""
    ev = ManualEvent()
    res = make(reg, clock, stop_event=ev)
    with pytest.raises(KeyError):
        with res:
            reg.state.force_release('satp1/hwp', 'stop', 'cred_level 2', clock.t)
            clock.t += 10
            ev.tick(res, ends=True)
            raise KeyError('body failed')
    assert res.lost and res._thread is None


def test_Reservation_release_of_an_expired_lease_is_quiet(reg, clock):
    """When the lease expired in the registry but the thread had not noticed,
    leaving tries to release, is refused, and does not raise."""
    res = make(reg, clock)
    res.acquire()
    clock.t += 40.0
    assert res.release() is None
    assert reg.count('release') == 1 and res.tokens == {}


def test_Reservation_all_or_nothing(reg, clock):
    """When one of two resources is busy, neither is taken; once it is free,
    both are granted in one request, each with its own token, and released
    together."""
    reg.state.acquire('satp1/mount', 'bob', 1.0, clock.t)
    res = make(reg, clock, resources=['satp1/mount', 'satp1/hwp'],
               retry=RetryPolicy(attempts=1))
    with pytest.raises(ReservationBusy, match="satp1/mount held by 'bob'"):
        res.acquire()
    assert [g['resource'] for g in reg.state.snapshot()['grants']] == ['satp1/mount']
    clock.t += 1.0
    with make(reg, clock, resources=['satp1/mount', 'satp1/hwp']) as res:
        assert res.tokens == {'satp1/hwp': 1, 'satp1/mount': 2}
        assert reg.calls[-1][1]['resource'] == ['satp1/hwp', 'satp1/mount']
        assert {g['request_id'] for g in reg.state.snapshot()['grants']} == {res.request_id}
    assert reg.state.snapshot()['grants'] == []


def test_Reservation_tree_excludes_below(reg, clock):
    """When a tree reservation holds satp1, a reservation of satp1/hwp is busy."""
    with make(reg, clock, resources='satp1', tree=True, owner='schedule'):
        with pytest.raises(ReservationBusy, match="satp1 held by 'schedule'"):
            make(reg, clock, retry=RetryPolicy(attempts=1)).acquire()


def test_Reservation_refusal_is_not_retried(reg, clock):
    """When the registry refuses the request (lease above its maximum), it
    raises ReservationError with the registry's reason and does not retry."""
    res = make(reg, clock, lease=1e6)
    with pytest.raises(ReservationError, match=r'refused satp1/hwp: Refused: lease must be'):
        res.acquire()
    assert not isinstance(ReservationError('x'), ReservationBusy)
    assert reg.count('acquire') == 1 and res.delays == []


def test_Reservation_unreachable_registry_on_acquire(reg, clock):
    """When the registry cannot be reached, it retries by the policy, then
    raises ReservationError saying why."""
    reg.down = True
    res = make(reg, clock)
    with pytest.raises(ReservationError, match='after 3 attempt.*Failed to connect') as info:
        res.acquire()
    assert not isinstance(info.value, ReservationBusy)


def test_Reservation_bad_arguments_are_refused_at_once(reg, clock):
    """When resources, owner, lease or timeout are malformed, the constructor
    raises ValueError naming the argument, before any call."""
    for kw, what in (({'resources': 'Bad Name'}, 'segment'), ({'resources': []}, 'at least'),
                     ({'owner': ''}, 'owner'), ({'lease': 0}, 'lease'),
                     ({'lease': -1}, 'lease'), ({'timeout': -1}, 'timeout'),
                     ({'resources': ['a', 'a']}, 'repeat')):
        args = dict({'resources': 'satp1/hwp', 'owner': 'alice'}, **kw)
        with pytest.raises(ValueError, match=what):
            Reservation(args.pop('resources'), client=reg, **args)
    assert reg.calls == []


def test_Reservation_stop_is_immediate_with_a_real_event(reg, clock):
    """When the renew thread waits on a real Event for a 20-minute interval,
    leaving still stops it at once (no renewal happened)."""
    res = Reservation('satp1/hwp', 'alice', lease=3600, client=reg, clock=clock)
    with res:
        thread = res._thread
        assert thread.is_alive()
    assert not thread.is_alive() and reg.count('renew') == 0


def test_Reservation_call_task_retries_a_busy_operation(reg, clock):
    """When the registry's task is running another caller's session, the
    call retries start (bounded) and then returns the registry's answer."""
    reg.busy_starts = 2
    waits = []
    ans = call_task(reg, 'leases', {}, wait=1.0, sleep=waits.append)
    assert ans.ok and ans.answered and len(waits) == 2
    reg.busy_starts = 10 ** 6
    ans = call_task(reg, 'leases', {}, wait=1.0, retry_busy=0.0, sleep=waits.append)
    assert not ans.ok and not ans.answered and 'stayed busy' in ans.message


def test_Reservation_reacquire_after_release(reg, clock):
    """When a reservation is released, it can be entered again and gets a
    larger token."""
    res = make(reg, clock)
    with res:
        first = res.token
    with res:
        assert res.token > first
