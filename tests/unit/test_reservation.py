"""Reservation's own rules (the loss rules shared with SiteLock are in
test_lease_shells.py): the retry policy, all-or-nothing, refusals, one
lease call per operation, and ``call_task`` (the OCS-task path ocs-locks
uses). The registry is the real LeaseOps on a fake clock (test_lease_shells);
renewals run on a thread-less Renewer the tests drive, so nothing here sleeps.
"""
from collections import namedtuple

import ocs
import pytest

from ocs_locking.leases.reservation import (Reservation, ReservationBusy, ReservationError,
                                            RetryPolicy, call_task)
from ocs_locking.leases.state import LeaseError, LeaseState

from .test_lease_shells import Clock as ShellClock, ReservationShell

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


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def reg(clock):
    return FakeRegistry(clock)


@pytest.fixture
def shell():
    return ReservationShell(ShellClock())


def make(shell, resources='satp1/hwp', **kw):
    """A Reservation on the shell's registry, its retry delays recorded
    (each one advances the fake clock)."""
    kw.setdefault('owner', 'alice')
    kw.setdefault('lease', 30.0)
    kw.setdefault('retry', RetryPolicy(attempts=3, first=0.5, factor=2.0, deadline=None))
    res = shell.make(resources, lease=kw.pop('lease'), owner=kw.pop('owner'))
    res.retry = kw.pop('retry')
    for k, v in kw.items():
        setattr(res, k, v)
    res.delays = []

    def sleep(d):
        res.delays.append(d)
        shell.clock.t += d
        shell.registry.ops._expire()
    res._sleep = sleep
    return res


def grants(shell):
    return shell.registry.state.snapshot()['grants']


def test_Reservation_each_lease_call_is_one_call(shell):
    """When a reservation is entered, renewed once and left, the registry
    sees exactly one acquire, one renew and one release call."""
    res = make(shell, lease=3)
    with res:
        shell.run_for(1)
    assert shell.registry.calls == ['acquire', 'renew', 'release']
    assert grants(shell) == [] and res.tokens == {} and not res.renewing


def test_Reservation_busy_then_retry_then_grant(shell):
    """When bob holds the resource for 1 s, the reservation retries after
    0.5 s and 1.0 s (the policy's backoff) and is granted on the third attempt
    with a larger token."""
    shell.registry.state.acquire('satp1/hwp', 'bob', 1.0, shell.clock())
    res = make(shell)
    with res:
        assert res.attempts == 3 and res.delays == [0.5, 1.0]
        assert res.tokens == {'satp1/hwp': 2}
    assert shell.registry.calls == ['acquire'] * 3 + ['release']


def test_Reservation_gives_up_naming_the_holder(shell):
    """When the resource stays busy for every attempt, entering raises
    ReservationBusy naming the holder, its token and note; nothing is left
    running and nothing is held."""
    shell.registry.state.acquire('satp1/hwp', 'bob', 300.0, shell.clock(), note='manual work')
    res = make(shell)
    with pytest.raises(ReservationBusy) as info:
        with res:
            pytest.fail('body ran without the lease')
    e = info.value
    assert "satp1/hwp held by 'bob' (token 1) for another " in str(e) and ' UTC ' in str(e)
    assert str(e).endswith(' (manual work)')
    assert 'after 3 attempt(s)' in str(e) and e.attempts == 3
    assert [h['owner'] for h in e.holders] == ['bob']
    assert res.delays == [0.5, 1.0] and not res.renewing
    assert [g['owner'] for g in grants(shell)] == ['bob']


def test_Reservation_deadline_bounds_the_retries(shell):
    """When the policy's deadline would pass before the next attempt, it gives
    up early (here after 2 of 10 attempts: 0.5 + 1.0 s > 1.2 s)."""
    shell.registry.state.acquire('satp1/hwp', 'bob', 300.0, shell.clock())
    res = make(shell, retry=RetryPolicy(attempts=10, first=0.5, factor=2, deadline=1.2))
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


def test_Reservation_exit_after_loss_does_not_raise(shell):
    """When the lease was lost inside the body, leaving the block raises
    nothing of its own, a body's exception still propagates, and no release
    is sent."""
    res = make(shell)
    with pytest.raises(KeyError):
        with res:
            shell.registry.state.force_release('satp1/hwp', 'stop', 'op', shell.clock())
            shell.run_for(10)
            assert res.lost
            raise KeyError('body failed')
    assert res.lost and not res.renewing and shell.registry.count('release') == 0


def test_Reservation_release_of_an_expired_lease_is_quiet(shell):
    """When the lease expired in the registry but the thread had not noticed,
    leaving tries to release, is refused, and does not raise."""
    res = make(shell)
    res.acquire()
    shell.clock.t += 40.0
    assert res.release() is None
    assert shell.registry.count('release') == 1 and res.tokens == {}


def test_Reservation_all_or_nothing(shell):
    """When one of two resources is busy, neither is taken; once it is free,
    both are granted in one request, each with its own token, and released
    together."""
    shell.registry.state.acquire('satp1/mount', 'bob', 1.0, shell.clock())
    res = make(shell, resources=['satp1/mount', 'satp1/hwp'], retry=RetryPolicy(attempts=1))
    with pytest.raises(ReservationBusy, match="satp1/mount held by 'bob'"):
        res.acquire()
    assert [g['resource'] for g in grants(shell)] == ['satp1/mount']
    shell.clock.t += 1.0
    with make(shell, resources=['satp1/mount', 'satp1/hwp']) as res:
        assert res.tokens == {'satp1/hwp': 1, 'satp1/mount': 2}
        assert res.resources == ['satp1/hwp', 'satp1/mount']
        assert {g['request_id'] for g in grants(shell)} == {res.request_id}
    assert grants(shell) == []


def test_Reservation_tree_excludes_below(shell):
    """When a tree reservation holds satp1, a reservation of satp1/hwp is busy."""
    top = make(shell, resources='satp1', owner='schedule')
    top.tree = True
    with top:
        with pytest.raises(ReservationBusy, match="satp1 held by 'schedule'"):
            make(shell, retry=RetryPolicy(attempts=1)).acquire()


def test_Reservation_refusal_is_not_retried(shell):
    """When the registry refuses the request (a note longer than it takes),
    it raises ReservationError with the registry's reason (no 'Refused:')
    and does not retry."""
    res = make(shell, note='x' * 499)
    res.note = 'x' * 501
    with pytest.raises(ReservationError, match=r'^the registry refused satp1/hwp: note must '
                                               r'be at most 500 characters'):
        res.acquire()
    assert not isinstance(ReservationError('x'), ReservationBusy)
    assert shell.registry.count('acquire') == 1 and res.delays == []


def test_Reservation_unreachable_registry_on_acquire_is_retried(shell):
    """When the registry cannot be reached, it retries by the policy, then
    raises ReservationError (not ReservationBusy) saying why."""
    shell.registry.down = True
    res = make(shell)
    with pytest.raises(ReservationError, match='after 3 attempt.*router unreachable') as info:
        res.acquire()
    assert not isinstance(info.value, ReservationBusy) and res.delays == [0.5, 1.0]


@pytest.mark.parametrize('kw,what', [
    ({'resources': 'Bad Name'}, r"^resource segment 'Bad Name'"),
    ({'resources': []}, r'^resources must not be an empty list$'),
    ({'owner': ''}, r'^owner must not be empty$'),
    ({'lease': 0}, r'^lease must be in \[0\.5, 3600\] seconds, not 0$'),
    ({'lease': 1e-9}, r'^lease must be in \[0\.5, 3600\] seconds, not 1e-09$'),
    ({'timeout': -1}, r'^timeout must be in \[0, 1e\+06\] seconds, not -1$'),
    ({'resources': ['a', 'a']}, r"^resources must not list 'a' twice$"),
    ({'note': 'a\nb'}, r'^note must be printable text on one line'),
])
def test_Reservation_bad_arguments_are_refused_at_once(reg, kw, what):
    """When resources, owner, lease, timeout or note are malformed, the
    constructor raises ValueError naming the argument, before any call."""
    args = dict({'resources': 'satp1/hwp', 'owner': 'alice'}, **kw)
    with pytest.raises(ValueError, match=what):
        Reservation(args.pop('resources'), client=reg, **args)
    assert reg.calls == []


def test_Reservation_leaving_never_waits_for_the_renewal_thread(shell):
    """When reservations run on the process's real renewal thread (a 20-minute
    renewal interval), entering schedules the renewal and leaving unschedules
    it at once: no thread is started or joined per reservation, nothing is
    renewed after leaving."""
    import threading
    from ocs_locking.leases.renewer import shared_renewer
    transport = shell.make()._client
    renewer = shared_renewer()
    threads = set(threading.enumerate())
    for i in range(3):
        res = Reservation(f'satp1/r{i}', 'alice', lease=3600, client=transport)
        with res:
            assert res.renewing and renewer.scheduled(res)
        assert not res.renewing and not renewer.scheduled(res)
    assert len(set(threading.enumerate()) - threads) <= 1        # the one renewal thread
    assert shell.registry.count('renew') == 0 and shell.registry.count('release') == 3


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


def test_Reservation_reacquire_after_release(shell):
    """When a reservation is released, it can be entered again and gets a
    larger token."""
    res = make(shell)
    with res:
        first = res.token
    with res:
        assert res.token > first


def test_Reservation_call_task_that_gives_up_aborts_the_task(reg):
    """When the registry's task does not end within the wait (default: the
    queue timeout + ANSWER_MARGIN), call_task aborts the task's session, so
    a queued acquire is withdrawn instead of granted to nobody later."""
    from ocs_locking.wire import ANSWER_MARGIN
    op = reg.acquire
    waited, aborted = [], []

    def wait(timeout=None):
        waited.append(timeout)
        return Reply(ocs.TIMEOUT, 'timeout', dict(op.last, status='running'))
    op.wait, op.abort = wait, lambda: aborted.append(True)
    ans = call_task(reg, 'acquire', {'resource': 'a', 'owner': 'x', 'lease': 10,
                                     'timeout': 3.0})
    assert waited == [3.0 + ANSWER_MARGIN] and aborted == [True]
    assert not ans.answered
    assert ans.message == (f"the registry task 'acquire' did not end within "
                           f"{3.0 + ANSWER_MARGIN:g} s (aborted it)")


def test_Reservation_renews_and_releases_with_its_lease_id_never_the_token(caplog):
    """When a Reservation holds a lease, each renewal and its release send
    the lease id its grant returned (no token), and neither its repr nor
    its log lines show the lease id."""
    from ocs_locking.leases.holder import Answer
    from ocs_locking.leases.renewer import Renewer
    lease_id = '0123456789abcdef' * 2
    sent = []

    class Transport:
        def lease_call(self, name, params, wait=0.0):
            sent.append((name, dict(params)))
            return Answer(True, 'ok', {'resource': 'hwp', 'token': 3, 'expires': 1.7e9,
                                       'queued_for': 0.0, 'lease_id': lease_id})
    clock = Clock()
    renewer = Renewer(clock, thread=False)
    res = Reservation('hwp', 'alice', lease=3, client=Transport(), clock=clock,
                      renewer=renewer)
    res.acquire()
    assert res.lease_id == lease_id
    clock.t += 1.0
    assert renewer.run_due() == 1
    res.release()
    assert [(n, p.get('lease_id'), 'token' in p) for n, p in sent[1:]] == [
        ('renew', lease_id, False), ('release', lease_id, False)]
    assert lease_id not in repr(res) + caplog.text and res.lease_id is None
