"""A LeaseOps on a fake reactor and a fake agent, for the unit tests of the
registry's lease operations (waiters, watches, preemption)."""
from unittest import mock

from ocs_locking.agents.lock_registry.leases import LeaseOps

from ..support import FakeReactor

T0 = 1.7e9


class Reactor(FakeReactor):
    def callWhenRunning(self, f, *a, **kw):
        f(*a, **kw)


def make_ops(tmp_path):
    """A LeaseOps with its database in ``tmp_path``; its clock is T0 plus the
    fake reactor's time."""
    reactor = Reactor()
    return LeaseOps(mock.MagicMock(name='agent'), str(tmp_path / 'leases.db'),
                    reactor=reactor, clock=lambda: T0 + reactor.seconds())


def fired(d):
    """What a Deferred has fired with, so far (a list: empty if not yet)."""
    out = []
    d.addBoth(out.append)
    return out


def hold(ops, resource='hwp', owner='a', lease=600):
    """A held lease: its lease_id (what renews and releases it)."""
    ok, msg, data = fired(ops.do_acquire(resource, owner, lease=lease, secret=True))[0]
    assert ok, msg
    return data['lease_id']
