"""The process's renewal schedule (ocs_locking.leases.renewer): due order,
rescheduling, removal while a renewal is in flight, the thread's life."""
import threading

from ocs_locking.leases.renewer import Renewer

WAIT = 10.0     # bound on every wait; reached only when a test is broken


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Holder:
    def __init__(self, name, log, delays):
        self.name, self.log, self.delays = name, log, list(delays)
        self.renewing = True

    def renew_once(self):
        self.log.append(self.name)
        return self.delays.pop(0) if self.delays else None


def test_Renewer_runs_due_renewals_in_time_order_and_reschedules():
    """When several holders are due, run_due renews them earliest first and
    reschedules each by the delay it returns; None ends its renewals."""
    clock, log = Clock(), []
    r = Renewer(clock, thread=False)
    a, b = Holder('a', log, [3.0]), Holder('b', log, [])
    r.add(a, 2.0)
    r.add(b, 1.0)
    assert r.run_due() == 0 and r.next_due() == 1.0
    clock.t = 2.0
    assert r.run_due() == 2 and log == ['b', 'a']
    assert r.next_due() == 5.0 and not r.scheduled(b)
    clock.t = 5.0
    r.run_due()
    assert log == ['b', 'a', 'a'] and r.next_due() is None


def test_Renewer_remove_waits_for_the_renewal_in_flight():
    """When a holder is removed while its renewal runs on the renewal thread,
    remove() returns only after that renewal ended, and the holder is not
    renewed again."""
    r = Renewer()
    started, finish, order = threading.Event(), threading.Event(), []

    class Slow:
        renewing = True

        def renew_once(self):
            started.set()
            assert finish.wait(WAIT)
            order.append('renewed')
            return 0.0
    h = Slow()
    r.add(h, 0.0)
    assert started.wait(WAIT)

    def finish_once_remove_waits():
        # remove() waits on the renewer's condition: let the renewal end
        # only once it does (bounded look at the condition's waiters).
        for _ in range(int(WAIT / 0.001)):
            if r._cond._waiters:
                break
            threading.Event().wait(0.001)
        order.append('remove is waiting')
        finish.set()
    helper = threading.Thread(target=finish_once_remove_waits)
    helper.start()
    h.renewing = False
    r.remove(h)
    order.append('removed')
    helper.join(WAIT)
    assert order == ['remove is waiting', 'renewed', 'removed']
    assert not r.scheduled(h)


def test_Renewer_thread_renews_when_due():
    """When a holder is added to a threaded Renewer, its renewal runs on the
    renewal thread at once when due now, and again by the delay it returns."""
    r = Renewer()
    seen = []
    twice = threading.Event()

    class H:
        renewing = True

        def renew_once(self):
            seen.append(threading.current_thread().name)
            if len(seen) == 2:
                twice.set()
                return None
            return 0.0
    r.add(H(), 0.0)
    assert twice.wait(WAIT)
    assert seen == ['ocs_locking lease renewer'] * 2
