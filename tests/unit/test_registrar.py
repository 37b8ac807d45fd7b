"""The registry's Registrar with a fake session: registrations that fail are
retried with a bounded backoff until all are held; a leave stops that."""
from unittest import mock

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer

from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.agents.lock_registry.registrar import (NOT_JOINED, REGISTER_RETRY,
                                                        REGISTER_RETRY_MAX, Registrar)

from ..support import FakeReactor

URIS = [f'obs.reg.lease.{n}' for n in ('acquire', 'renew', 'release')]
EXISTS = 'wamp.error.procedure_already_exists'


class Session:
    """A fake WAMP session whose register() fails while ``taken`` names the URI."""

    def __init__(self):
        self.taken = set()
        self.calls = []

    def register(self, fn, uri):
        self.calls.append(uri)
        if uri in self.taken:
            return defer.fail(ApplicationError(EXISTS, f'register for already registered '
                                                       f'procedure {uri!r}'))
        return defer.succeed(('registration', uri))


@pytest.fixture
def fake():
    session, reactor, log = Session(), FakeReactor(), mock.Mock()
    return session, reactor, log, Registrar(session, reactor, log,
                                            {u: (lambda: None) for u in URIS})


def test_Registrar_registers_every_procedure_at_join(fake):
    """When the session joins, every procedure is registered once and the
    status says registered, with nothing missing."""
    session, reactor, log, reg = fake
    assert reg.status()['registered'] is False
    assert set(reg.status()['errors'].values()) == {NOT_JOINED}
    reg.joined()
    assert session.calls == URIS
    assert reg.status() == {'registered': True, 'missing': [], 'errors': {}}
    assert not reg.retrying and reactor.getDelayedCalls() == []


def test_Registrar_retries_a_failed_registration_until_it_is_held(fake):
    """When one registration fails (an old registration still in the router),
    the status names it and why, only it is tried again after REGISTER_RETRY
    s, and once the old one is gone it is held; the failure is logged once."""
    session, reactor, log, reg = fake
    session.taken = {URIS[1]}
    reg.joined()
    st = reg.status()
    assert st['registered'] is False and st['missing'] == ['renew']
    assert 'already registered' in st['errors']['renew']
    assert reg.retrying
    reactor.advance(REGISTER_RETRY)
    assert session.calls == URIS + [URIS[1]]
    assert log.error.call_count == 1            # same reason: not logged again
    session.taken = set()
    reactor.advance(REGISTER_RETRY * 2)
    assert session.calls == URIS + [URIS[1]] * 2
    assert reg.status()['registered'] is True
    assert not reg.retrying
    log.info.assert_called_once()


def test_Registrar_backoff_doubles_up_to_its_bound(fake):
    """When registrations keep failing, the delay between rounds doubles from
    REGISTER_RETRY to REGISTER_RETRY_MAX and stays there."""
    session, reactor, log, reg = fake
    session.taken = set(URIS)
    reg.joined()
    delays = []
    for _ in range(6):
        [call] = reactor.getDelayedCalls()
        delays.append(round(call.getTime() - reactor.seconds(), 6))
        reactor.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert delays[-1] == REGISTER_RETRY_MAX


def test_Registrar_a_leave_stops_the_retries_and_a_join_starts_over(fake):
    """When the session leaves while retrying, nothing more is tried and the
    status says not joined; at the next join every procedure is registered
    again."""
    session, reactor, log, reg = fake
    session.taken = {URIS[0]}
    reg.joined()
    reg.left()
    assert reactor.getDelayedCalls() == [] and not reg.retrying
    assert reg.status()['missing'] == ['acquire', 'renew', 'release']
    assert set(reg.status()['errors'].values()) == {NOT_JOINED}
    session.taken = set()
    n = len(session.calls)
    reg.joined()
    assert session.calls[n:] == URIS and reg.status()['registered'] is True


def test_Registrar_ignores_a_round_that_answers_after_the_session_left(fake):
    """When a registration round is still in flight as the session leaves,
    its late answers count for nothing (no registration, no retry)."""
    session, reactor, log, reg = fake
    pending = []
    session.register = lambda fn, uri: pending.append(defer.Deferred()) or pending[-1]
    reg.joined()
    reg.left()
    for d in pending:
        d.callback('late')
    assert reg.status()['registered'] is False and not reg.retrying


def test_LeaseOps_procedures_says_when_they_are_not_registered(tmp_path):
    """When the registry's first registration of 'renew' fails, its status
    (procedures()) says renew is missing; the retry then registers it."""
    class Reactor(FakeReactor):
        def callWhenRunning(self, f, *a, **kw):
            f(*a, **kw)
    agent = mock.MagicMock(name='agent')
    agent.agent_address = 'obs.reg'
    fails = [1]

    def register(fn, uri, options=None):
        if uri.endswith('.renew') and fails:
            fails.pop()
            return defer.fail(ApplicationError(EXISTS, 'already registered'))
        return defer.succeed(uri)
    agent.register.side_effect = register
    ops = LeaseOps(agent, str(tmp_path / 'leases.db'), reactor=Reactor())
    assert ops.procedures()['registered'] is False
    ready = next(c.args[1] for c in agent.on.call_args_list if c.args[0] == 'ready')
    ready(agent)
    assert ops.procedures() == {'registered': False, 'missing': ['renew'],
                                'errors': {'renew': 'already registered'}}
    ops.reactor.advance(REGISTER_RETRY)
    assert ops.procedures()['registered'] is True
    for leave in [c.args[1] for c in agent.on.call_args_list if c.args[0] == 'leave']:
        leave(agent, None)          # (LeaseOps also withdraws its waiters on leave)
    assert ops.procedures()['missing'] == ['acquire', 'renew', 'release', 'watch', 'preempt']


class Registration:
    def __init__(self, uri, id):
        self.uri, self.id = uri, id


def test_Registrar_registers_a_lost_registration_again_until_held(fake):
    """When the router takes one of ours away (meta on_unregister/on_delete,
    by registration id), it is missing with the reason, retried (also past a
    squatter's procedure_already_exists) until held again."""
    session, reactor, log, reg = fake
    ids = iter(range(1, 100))
    session.register = lambda fn, uri: (session.calls.append(uri) or defer.succeed(
        Registration(uri, next(ids))) if uri not in session.taken else defer.fail(
        ApplicationError(EXISTS, 'taken')))
    reg.joined()
    assert reg.status()['registered'] is True
    lost = reg.registered[URIS[1]].id
    session.taken.add(URIS[1])              # a squatter got it meanwhile
    assert reg.lost(lost) == URIS[1]
    assert reg.status()['missing'] == ['renew'] and reg.lost(12345) is None
    for _ in range(10):
        reactor.advance(REGISTER_RETRY_MAX)
    assert reg.status()['missing'] == ['renew'] and reg.retrying
    session.taken.clear()                   # the squatter left
    reactor.advance(REGISTER_RETRY_MAX)
    assert reg.status() == {'registered': True, 'missing': [], 'errors': {}}
