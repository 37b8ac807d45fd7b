"""The registry as access director (agents/lock_registry/director.py) without
a router: a fake agent records what goes out on ``controls``, the real
LeaseOps on an SQLite file; the messages are judged by ocs's own
``agent_get_creds``."""
import json
import logging
from unittest import mock

import pytest
from ocs import access
from twisted.internet import defer

from ocs_locking.agents.lock_registry import director as director_mod
from ocs_locking.agents.lock_registry.director import LeaseDirector, free_rules
from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.testing import FakeSession, _params

from .test_director_rules import CONFIG, HWP, OPERATOR, Tree, creds
from .test_director_rules import base_rules as parse_base
from .test_lease_ops import Reactor


class Agent:
    """What the director and LeaseOps use of an OCSAgent; records publishes."""

    def __init__(self):
        self.agent_address = 'observatory.lock-registry'
        self.log = mock.MagicMock(name='log')
        self.published = []
        self.handlers = {}
        self.registered = {}
        self.acks = []          # the router's acknowledgements of each publish
        self.hold = False       # True: acks wait until the test fires them

    def register_feed(self, name, **kw):
        assert name == 'controls' and kw == {'record': False}
        return mock.MagicMock(address=f'{self.agent_address}.feeds.controls',
                              encoded=lambda: {'feed_name': 'controls'})

    def publish(self, topic, payload, options=None):
        assert topic == 'observatory.lock-registry.feeds.controls' and options.acknowledge
        message, info = json.loads(json.dumps(payload))
        assert info == {'feed_name': 'controls'}
        self.published.append(message)
        self.acks.append(defer.Deferred())
        if not self.hold:
            self.acks[-1].callback(None)
        return self.acks[-1]

    def on(self, event, fn):
        self.handlers.setdefault(event, []).append(fn)

    def register(self, fn, uri, options=None):
        self.registered[uri] = fn
        return mock.MagicMock(id=len(self.registered))

    def join(self):
        for fn in self.handlers.get('ready', []):
            fn(self)


def make(tmp_path, db='leases.db'):
    agent = Agent()
    ops = LeaseOps(agent, str(tmp_path / db), reactor=Reactor())
    director = LeaseDirector(agent, ops, parse_base(CONFIG)[0], Tree({HWP.path: HWP}),
                             reactor=Reactor())
    return agent, ops, director


def hold(ops, resource='demo/hwp', owner='alice', **params):
    out = []
    ops._rpc_acquire(resource, owner, note='calibration', **params).addBoth(out.append)
    assert out and out[0]['ok'], out
    return out[0]['data']


def last_reset(agent):
    return [m for m in agent.published if m.get('reset')][-1]


def test_LeaseDirector_grant_pushes_rules_at_once_holder_privs_in_the_reply(tmp_path):
    """When a lease on demo/hwp is granted through the lease procedure, a
    reset goes out before the reply; in it the reply's privs reach level 3
    on fake-hwp and the operator is locked out."""
    agent, ops, _ = make(tmp_path)
    n = len(agent.published)
    data = hold(ops)
    assert len(agent.published) == n + 1
    msg = last_reset(agent)
    assert creds(msg, data['privs'])[0] == 3
    assert creds(msg, OPERATOR)[0] == 0


def test_LeaseDirector_grant_reply_waits_for_the_router_ack(tmp_path):
    """When the router has not yet acknowledged the rules of a grant, the
    grant's reply is held; it goes out once the ack comes."""
    agent, ops, _ = make(tmp_path)
    agent.hold = True
    out = []
    ops._rpc_acquire('demo/hwp', 'alice').addBoth(out.append)
    assert out == [] and len(agent.acks) == 1
    agent.acks[-1].callback(None)
    assert out and out[0]['ok'] and out[0]['data']['privs']


def test_LeaseDirector_release_and_expiry_restore_the_operator(tmp_path):
    """When the lease is released, and when a second one expires, a reset
    goes out at once in which the operator reaches level 2 again."""
    agent, ops, _ = make(tmp_path)
    data = hold(ops)
    ops.do_release('demo/hwp', data['lease_id'])
    assert creds(last_reset(agent), OPERATOR) == (2, '')
    hold(ops, lease=1.0)
    assert creds(last_reset(agent), OPERATOR)[0] == 0
    ops.state.expire(ops.clock() + 2.0)
    assert creds(last_reset(agent), OPERATOR) == (2, '')


def test_LeaseDirector_renewal_and_revocation_push(tmp_path):
    """When the lease is renewed a reset goes out with the new until; when it
    is force-released another restores the operator."""
    agent, ops, _ = make(tmp_path)
    data = hold(ops)
    n = len(agent.published)
    ops.do_renew('demo/hwp', data['lease_id'], 100.0)
    assert len(agent.published) == n + 1
    ops.state.force_release('demo/hwp', 'emergency', 'op', ops.clock())
    assert creds(last_reset(agent), OPERATOR) == (2, '')


def test_LeaseDirector_uncovered_grant_publishes_nothing_and_has_no_privs(tmp_path):
    """When an ad-hoc path no declared resource covers is granted, nothing is
    published and the reply carries no privs."""
    agent, ops, _ = make(tmp_path)
    n = len(agent.published)
    data = hold(ops, 'lab/bench')
    assert len(agent.published) == n and 'privs' not in data


def test_LeaseDirector_task_acquire_has_no_privs_and_nobody_gets_in(tmp_path):
    """When demo/hwp is acquired through the OCS task (public session data),
    no privs are in its data or message, and the rules let nobody in."""
    agent, ops, director = make(tmp_path)
    session = FakeSession('acquire')
    d = ops.acquire(session, _params(ops.acquire, {'resource': 'demo/hwp', 'owner': 'bob'}))
    out = []
    d.addBoth(out.append)
    assert out[0][0] is True
    assert 'privs' not in session.data and director._privs == {}
    for pw in (OPERATOR, ''):
        assert creds(last_reset(agent), pw)[0] == 0


def test_LeaseDirector_poll_answers_the_agent_at_once(tmp_path):
    """When an agent polls, a message targeted at it goes out at once; a bad
    poll is refused (False) and counted."""
    agent, ops, director = make(tmp_path)
    agent.join()
    uri = 'observatory.lock-registry.agent_poll'
    assert uri in agent.registered
    hold(ops)
    assert agent.registered[uri](instance_id='fake-hwp', agent_class='FakeDataAgent') is True
    msg = agent.published[-1]
    assert msg['target'] == 'fake-hwp' and creds(msg, OPERATOR)[0] == 0
    assert director.agent_poll(instance_id='a,b', agent_class='X') is False
    assert director.status()['counts']['bad_poll'] == 1
    assert director.status()['enforced'] == ['demo/hwp']


def test_LeaseDirector_join_publishes_a_reset(tmp_path):
    """When the registry (re)joins the router, a reset goes out."""
    agent, ops, _ = make(tmp_path)
    agent.join()
    assert agent.published[-1]['reset'] is True


def test_LeaseDirector_rules_survive_a_restart(tmp_path):
    """When the registry restarts, the held grant's rules still let its
    holder's privs in (the hash came back from the store), not the operator."""
    agent, ops, _ = make(tmp_path)
    data = hold(ops)
    ops.close()
    agent2, ops2, director2 = make(tmp_path)
    msg = director2.core.reset(director2.rules(), 1)
    assert creds(msg, data['privs'])[0] == 3
    assert creds(msg, OPERATOR)[0] == 0


def test_LeaseDirector_privs_nowhere_public(tmp_path, caplog):
    """When a grant is made, renewed and released, its privs appear in no
    published message, session data, audit row, lease table, log line or
    the database file; only in the procedure's reply."""
    caplog.set_level(logging.DEBUG)
    agent, ops, _ = make(tmp_path)
    data = hold(ops)
    privs = data['privs']
    ops.do_renew('demo/hwp', data['lease_id'], 50.0)
    session = FakeSession('leases')
    ops.leases(session, _params(ops.leases, {}))
    hist = FakeSession('history')
    ops.history(hist, _params(ops.history, {'limit': 100}))
    ops.do_release('demo/hwp', data['lease_id'])
    public = json.dumps([agent.published, session.data, hist.data]) + caplog.text + \
        repr(agent.log.mock_calls)
    assert privs not in public
    ops.close()
    raw = b''.join(open(p, 'rb').read() for p in tmp_path.iterdir() if p.is_file())
    assert privs.encode() not in raw


def test_free_rules_give_level_1():
    """When no password file is given, every client gets level 1, no more."""
    rules = access.AgentAccessRules(policy='director', rules=free_rules(),
                                    agent=access.AgentSpec(instance_id='a', agent_class='B'))
    assert int(access.agent_get_creds('x', rules, rules.agent)[0]) == 1


@pytest.mark.parametrize('text, pattern', [
    ('passwords: 3\n', r"^the access config '.*': not an ocs access director config: "),
    ('[1, 2\n', r"^the access config '.*' is not YAML \(line \d+\)$"),
    ('- a\n', r"^the access config '.*' must be a mapping"),
])
def test_load_access_config_bad_files_one_line(tmp_path, text, pattern):
    """When the --access-config file is not an ocs AccessDirector config,
    one line says why."""
    path = tmp_path / 'ac.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=pattern) as e:
        director_mod.load_access_config(str(path))
    assert '\n' not in str(e.value)


def test_load_access_config_missing_file(tmp_path):
    """When the --access-config file is missing, one line names it."""
    with pytest.raises(ValueError, match=r"^cannot read the access config '.*nope.yaml': "):
        director_mod.load_access_config(str(tmp_path / 'nope.yaml'))


def test_LeaseDirector_ignores_preempt_and_notice_then_pushes_the_forced_revocation(tmp_path):
    """When a holder of demo/hwp is preempted, the ``preempt`` and ``notice``
    changes publish nothing (the rules stay: it still holds); its forced
    revocation at the deadline pushes a reset that restores the operator."""
    agent, ops, _ = make(tmp_path)
    hold(ops)
    n = len(agent.published)
    p, _ = ops.state.preempt('demo/hwp', 'calibration', 5, 'op', ops.clock())
    ops.state.noticed(p.holder_rid, ops.clock())
    assert len(agent.published) == n
    ops.state.expire(ops.clock() + 5.0)
    assert creds(last_reset(agent), OPERATOR) == (2, '')
