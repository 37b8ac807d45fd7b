"""The standby registry's Twisted shells on a fake reactor and a fake agent:
the primary's ReplicaServer (answers held for the standby's acknowledgement,
a slow standby dropped) and the Standby (its registration held back, the
election by registration, the takeover)."""
from unittest import mock

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer

from ocs_locking.agents.lock_registry import standby as standby_mode
from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.agents.lock_registry.replication import ReplicaServer, after_sync
from ocs_locking.agents.lock_registry.standby import Standby
from ocs_locking.leases.store import EPOCH_BITS

from .lease_ops_support import T0, Reactor, fired


class Agent:
    """Just enough of an OCSAgent: events, register, call."""

    def __init__(self, address='observatory.lock-registry'):
        self.agent_address = address
        self.log = mock.MagicMock(name='log')
        self.handlers = {}
        self.registered = {}
        self.calls = []         # (Deferred, args) of each call, answered by the test
        self.taken = set()      # URIs someone else holds (procedure_already_exists)

    def on(self, event, fn):
        self.handlers.setdefault(event, []).append(fn)

    def fire(self, event, *args):
        for fn in self.handlers.get(event, []):
            fn(self, *args)

    def register(self, fn, uri, *args, **kwargs):
        if uri in self.taken:
            return defer.fail(ApplicationError('wamp.error.procedure_already_exists'))
        self.registered[uri] = fn
        return defer.succeed(mock.Mock(id=len(self.registered)))

    def call(self, uri, *args):
        d = defer.Deferred()
        self.calls.append((d, uri, args))
        return d

    def _ops_handler(self, *args, **kwargs):
        return ('ran', args)

    _management_handler = _ops_handler

    def leave(self):
        self.left = True


def primary(tmp_path, ack_timeout=0.5):
    reactor = Reactor()
    agent = Agent()
    server = ReplicaServer(agent, reactor=reactor, clock=reactor.seconds, ack_timeout=ack_timeout)
    ops = LeaseOps(agent, str(tmp_path / 'p.db'), reactor=reactor,
                   clock=lambda: T0 + reactor.seconds(), wrap_store=server.wrap)
    ops.answer_after, server.wall = server.synced, ops.clock
    return reactor, agent, server, ops


def test_ReplicaServer_holds_a_lease_answer_until_the_standby_acks_it(tmp_path):
    """When a standby follows, a grant's answer waits until the standby's
    next pull acknowledges the batch it wrote; without a standby it goes
    out at once."""
    reactor, agent, server, ops = primary(tmp_path)
    task = after_sync(server, lambda session, params: (True, 'ok'))
    assert fired(task(None, {})) == [(True, 'ok')]
    snap = server.pull('lock-registry-b')
    assert snap['kind'] == 'snapshot'
    ops.do_acquire('a/b', 'alice', lease=30, secret=True)
    # (a lease procedure's answer, after the write)
    held = fired(ops._answered(lambda: (True, 'granted'))())
    assert held == []
    reply = server.pull('lock-registry-b', snap['stream'], snap['seq'])
    assert [b[0] for b in reply['batches']] == [snap['seq'] + 1]
    assert held == []
    server.pull('lock-registry-b', snap['stream'], snap['seq'] + 1)     # the ack
    assert held == [(True, 'granted')]


def test_ReplicaServer_drops_a_silent_standby_and_answers_without_it(tmp_path):
    """When the standby does not acknowledge within ack_timeout, it is
    dropped (the primary goes on alone), the held answer goes out, and the
    standby's next pull is told to resync."""
    reactor, agent, server, ops = primary(tmp_path, ack_timeout=0.5)
    snap = server.pull('lock-registry-b')
    ops.do_acquire('a/b', 'alice', lease=30, secret=True)
    held = fired(server.synced('answer'))
    reactor.advance(0.3)
    assert held == []
    reactor.advance(0.4)
    assert held == ['answer']
    assert server.status()['followers'] == []
    assert server.pull('lock-registry-b', snap['stream'], snap['seq'])['kind'] == 'resync'


def standby(tmp_path, taken=True):
    reactor = Reactor()
    agent = Agent()
    agent.taken = {'observatory.lock-registry.ops'} if taken else set()
    server = ReplicaServer(agent, reactor=reactor, clock=reactor.seconds,
                           wall=lambda: T0 + reactor.seconds())
    ops = LeaseOps(agent, str(tmp_path / 'b.db'), reactor=reactor,
                   clock=lambda: T0 + reactor.seconds(), wrap_store=server.wrap)
    sb = Standby(agent, ops, 'lock-registry-b', 'observatory', 1000, reactor=reactor,
                 mono=reactor.seconds, server=server)
    return reactor, agent, ops, sb


def join(agent):
    """ocs's onJoin: the first thing it does, register <address>.ops."""
    agent.fire('join', None)
    return fired(agent.register(agent._ops_handler, agent.agent_address + '.ops'))


def test_Standby_holds_ocs_registration_back_and_serves_only_status_meanwhile(tmp_path):
    """When the standby joins, ocs's registration of the service's .ops
    waits; the standby registers its own address, where status runs and a
    lease task is refused in one line."""
    reactor, agent, ops, sb = standby(tmp_path)
    ops_reg = join(agent)
    assert ops_reg == []
    assert 'observatory.lock-registry-b.ops' in agent.registered
    handler = agent.registered['observatory.lock-registry-b.ops']
    assert handler('start', 'status')[0] == 'ran'
    code, msg, _ = handler('start', 'acquire')
    assert msg.startswith('lock-registry-b is a standby for lock-registry: it serves acquire '
                          'only once it has taken over')
    assert ops.paused() is True


def test_Standby_never_takes_over_before_it_is_in_sync(tmp_path):
    """When the primary cannot be reached before any snapshot, the standby
    retries following and never registers the service (it would not know
    what the primary granted)."""
    reactor, agent, ops, sb = standby(tmp_path, taken=False)
    ops_reg = join(agent)
    d, uri, args = agent.calls.pop()
    assert uri == 'observatory.lock-registry.replica.pull' and args == ('lock-registry-b',)
    d.errback(ApplicationError('wamp.error.no_such_procedure'))
    assert ops_reg == [] and not sb.serving
    reactor.advance(standby_mode.RETRY)
    assert agent.calls, 'it asks again'


def test_Standby_in_sync_stays_standby_while_the_router_says_the_primary_is_there(tmp_path):
    """When a pull fails but registering the service is refused with
    procedure_already_exists, the primary is alive: the standby follows on."""
    reactor, agent, ops, sb = standby(tmp_path, taken=True)
    ops_reg = join(agent)
    d, _uri, _args = agent.calls.pop()
    d.callback(snapshot_of(agent))
    pull, _uri, args = agent.calls.pop()
    pull.errback(ApplicationError('wamp.error.canceled', 'callee disconnected'))
    assert not sb.serving and ops_reg == []
    reactor.advance(standby_mode.ELECT_RETRY)
    assert agent.calls and sb.follower.in_sync


def snapshot_of(agent, epoch=4):
    return {'kind': 'snapshot', 'stream': 's1', 'seq': 0, 'now': T0, 'epoch': epoch,
            'db_id': 1, 'state': {
                'grants': [{'resource': 'keep', 'owner': 'alice', 'token': 3 + (epoch << 32),
                            'expires': T0 + 20, 'tree': False, 'note': '', 'client': '',
                            'granted_at': T0, 'request_id': 1,
                            'lease_key': 'k' * 64}],
                'counters': {'keep': 3 + (epoch << 32)}, 'last_request_id': 1,
                'privs': [], 'audit': []}}


def test_Standby_takes_over_when_the_primary_is_gone_epoch_above_it(tmp_path):
    """When the standby is in sync and the primary's session goes (its
    pull fails, the service's .ops registers), it takes over before ocs's
    join goes on: the lease it copied is held, time left kept, the epoch
    is above the primary's, a takeover row is written."""
    reactor, agent, ops, sb = standby(tmp_path, taken=False)
    ops_reg = join(agent)
    d, _uri, _args = agent.calls.pop()
    d.callback(snapshot_of(agent, epoch=4))
    reactor.advance(5.0)
    pull, _uri, _args = agent.calls.pop()
    pull.errback(ApplicationError('wamp.error.canceled', 'callee disconnected'))
    assert sb.serving and len(ops_reg) == 1
    assert ops.paused() is False
    [g] = ops.state.holders()
    assert g.owner == 'alice' and g.expires == pytest.approx(T0 + 5.0 + 15.0)
    assert ops.store.epoch == 5
    new = fired(ops.do_acquire('other', 'bob', lease=30, secret=True))[0]
    assert new[2]['token'] > (5 << EPOCH_BITS)
    assert ops.store.history(actions=['takeover'])[0]['owner'] == 'lock-registry-b'
    assert sb.status()['role'] == 'primary'


@pytest.mark.parametrize('args, complaint', [
    (dict(standby_for='lock-registry', instance_id='lock-registry'),
     '--standby-for lock-registry: a registry cannot stand by for itself'),
    (dict(standby_for='a.b', instance_id='x'), '--standby-for must be an instance id'),
    (dict(standby_for=None, instance_id='x'), None),
])
def test_standby_arguments_are_checked_in_one_line(args, complaint):
    """When --standby-for names the registry itself or is no instance id,
    the registry refuses to start with one line."""
    got = standby_mode.check_arguments(mock.Mock(**args))
    assert got == complaint if complaint is None else got.startswith(complaint)


def test_ReplicaServer_verifies_a_standby_at_a_later_pull_when_the_router_names_it_late(
        tmp_path):
    """When the router's word on the standby's session comes after its first
    pull, the standby is listed as declared, then verified at the next pull."""
    reactor, agent, server, ops = primary(tmp_path)
    known = {}
    server.identify = known.get
    details = mock.Mock(caller=42)
    snap = server.pull('lock-registry-b', details=details)
    [f] = server.status()['followers']
    assert (f['identity'], f['verified']) == ('wamp session 42', False)
    known[42] = 'lock-registry-b'
    server.pull('lock-registry-b', snap['stream'], snap['seq'], details=details)
    [f] = server.status()['followers']
    assert (f['identity'], f['verified']) == ('lock-registry-b', True)
