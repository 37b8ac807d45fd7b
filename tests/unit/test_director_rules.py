"""The director's rule-building core (agents/lock_registry/director_rules.py),
judged by ocs's own credential check: each message is taken the way an ocs
agent's ``_access_handler`` takes it, and ``ocs.access.agent_get_creds``
says what a client's password reaches."""
import json
import re
from dataclasses import dataclass, field

import pytest
from ocs import access

from ocs_locking.agents.lock_registry.director_rules import (
    AC_VERSION, DirectorRules, base_rules, check_agent, hash_privs, holder_text, new_privs)
from ocs_locking.leases.state import LeaseState

OPERATOR, ADMIN = 'demo-operator', 'demo-admin'
CONFIG = {'passwords_block_default_hashfunc': 'none',
          'passwords': [{'default': True, 'password_1': ''},
                        {'default': True, 'password_2': OPERATOR, 'password_3': ADMIN}]}


@dataclass(frozen=True)
class Res:
    """A declared resource as the resource tree gives it."""
    path: str
    instances: tuple = ()
    classes: tuple = ()
    lockout_levels: tuple = (1, 2, 3)
    holder_level: int = 3


@dataclass
class Tree:
    """The resource tree's ``covered``: the resource and, for a tree lease,
    the declared ones below it."""
    resources: dict = field(default_factory=dict)

    def covered(self, path, tree=False):
        return [r for p, r in sorted(self.resources.items())
                if p == path or (tree and p.startswith(path + '/'))]


HWP = Res('demo/hwp', instances=('fake-hwp',))
SIM = Res('demo/sim', instances=('sim-device-1',), lockout_levels=(2, 3), holder_level=2)
FAKES = Res('demo/fakes', classes=('FakeDataAgent',))


def tree():
    return Tree({r.path: r for r in (HWP, SIM, FAKES)})


def make(tree_=None):
    return DirectorRules(base_rules(CONFIG)[0], tree() if tree_ is None else tree_,
                         when=lambda t: f'T{t:g}')


def agent_rules(message, instance_id, agent_class):
    """What an ocs agent holds after taking ``message`` off the controls feed
    (as OCSAgent._access_handler does), after a JSON round trip (the wire)."""
    message = json.loads(json.dumps(message))
    assert message['ac_version'] == access.AC_VERSION
    assert message.get('reset') or message.get('target') == instance_id
    agent = access.AgentSpec(instance_id=instance_id, agent_class=agent_class,
                             superuser_key=object())
    return access.AgentAccessRules(
        policy='director', director_id='lock-registry', agent=agent,
        rules=[access.AccessRule(**item) for item in message['rules']])


def creds(message, password, instance_id='fake-hwp', agent_class='FakeDataAgent'):
    rules = agent_rules(message, instance_id, agent_class)
    level, detail = access.agent_get_creds(password, rules, rules.agent)
    return int(level), detail


@pytest.fixture
def state():
    return LeaseState()


def lease(state, resource, owner='alice', note='calibration', lease=30.0, now=100.0,
          tree=False):
    out = state.acquire(resource, owner, lease, now, note=note, tree=tree)
    assert out.status == 'granted'
    return out


def test_DirectorRules_no_grant_base_rules_only():
    """When nothing is held, every agent gets the base rules: the operator's
    password reaches level 2, the admin's 3, anyone 1."""
    msg = DirectorRules.reset(make().build([], {}), 1)
    assert creds(msg, OPERATOR) == (2, '')
    assert creds(msg, ADMIN) == (3, '')
    assert creds(msg, '') == (1, '')


def test_DirectorRules_holder_reaches_holder_level_others_locked_out(state):
    """When alice holds demo/hwp, her grant's password reaches the resource's
    holder_level on fake-hwp, and the operator and the admin are locked out
    at levels 1-3: ocs's refusal detail names the resource, the holder, the
    note and until when."""
    out = lease(state, 'demo/hwp')
    privs = new_privs()
    rules = make().build(state.holders(), {out.request_id: hash_privs(privs)})
    msg = DirectorRules.reset(rules, 2)
    assert creds(msg, privs)[0] == 3
    for pw in (OPERATOR, ADMIN, '', 'guess'):
        level, detail = creds(msg, pw)
        assert level == 0
        assert re.search(r"lockouts active: \['demo/hwp\[alice; note: calibration; "
                         r"until T130\]'\]", detail), detail


def test_DirectorRules_uncovered_agents_untouched(state):
    """When demo/hwp is held, an agent it does not cover (sim-device-2, another
    class) keeps exactly the base rules' levels."""
    out = lease(state, 'demo/hwp')
    msg = DirectorRules.reset(make().build(state.holders(), {out.request_id: hash_privs('x')}),
                              2)
    for pw, level in ((OPERATOR, 2), (ADMIN, 3), ('', 1), ('x', 1)):
        assert creds(msg, pw, 'sim-device-2', 'SimulatedDeviceAgent') == (level, '')


def test_DirectorRules_lockout_levels_and_holder_level_per_resource(state):
    """When demo/sim (lockout 2-3, holder level 2) is held, others keep level 1
    on sim-device-1 and the holder gets level 2, not more."""
    out = lease(state, 'demo/sim', owner='bob')
    msg = DirectorRules.reset(make().build(state.holders(), {out.request_id: hash_privs('p')}),
                              2)
    assert creds(msg, 'p', 'sim-device-1', 'SimulatedDeviceAgent')[0] == 2
    assert creds(msg, ADMIN, 'sim-device-1', 'SimulatedDeviceAgent')[0] == 1
    assert creds(msg, '', 'sim-device-1', 'SimulatedDeviceAgent')[0] == 1


def test_DirectorRules_class_scope_covers_every_instance_of_the_class(state):
    """When demo/fakes (class FakeDataAgent) is held, every FakeDataAgent is
    locked for others and open to the holder; other classes are not."""
    out = lease(state, 'demo/fakes')
    msg = DirectorRules.reset(make().build(state.holders(), {out.request_id: hash_privs('p')}),
                              2)
    assert creds(msg, 'p', 'faker7', 'FakeDataAgent')[0] == 3
    assert creds(msg, ADMIN, 'faker7', 'FakeDataAgent')[0] == 0
    assert creds(msg, ADMIN, 'faker7', 'OtherAgent')[0] == 3


def test_DirectorRules_class_covers_site_instances_of_the_class_by_id(state):
    """When the class an agent reports differs from its site config
    agent-class (socs's LDMonitorAgent reports LDMonitor), a resource that
    covers the site config's class still locks it, by its instance id."""
    res = Res('demo/ld', classes=('LDMonitorAgent',))
    rules = DirectorRules(base_rules(CONFIG)[0], Tree({res.path: res}), lambda t: 'T',
                          site_agents={'ld-monitor': 'LDMonitorAgent', 'x': 'Other'})
    out = lease(state, 'demo/ld')
    msg = DirectorRules.reset(rules.build(state.holders(), {out.request_id: hash_privs('p')}),
                              2)
    assert creds(msg, ADMIN, 'ld-monitor', 'LDMonitor')[0] == 0
    assert creds(msg, 'p', 'ld-monitor', 'LDMonitor')[0] == 3
    assert creds(msg, ADMIN, 'x', 'Other')[0] == 3


def test_DirectorRules_two_grants_on_different_resources(state):
    """When alice holds demo/hwp and bob demo/sim, each one's password opens
    only their own resource's agent; the other's is locked out there."""
    a = lease(state, 'demo/hwp', owner='alice')
    b = lease(state, 'demo/sim', owner='bob')
    hashes = {a.request_id: hash_privs('pa'), b.request_id: hash_privs('pb')}
    msg = DirectorRules.reset(make().build(state.holders(), hashes), 3)
    assert creds(msg, 'pa')[0] == 3
    assert creds(msg, 'pb')[0] == 0
    assert creds(msg, 'pb', 'sim-device-1', 'SimulatedDeviceAgent')[0] == 2
    assert creds(msg, 'pa', 'sim-device-1', 'SimulatedDeviceAgent') == (1, '')
    level, detail = creds(msg, OPERATOR, 'sim-device-1', 'SimulatedDeviceAgent')
    assert level == 1 and "'demo/sim[bob; note: calibration; until T130]'" in detail


def test_DirectorRules_release_restores_the_base_rules(state):
    """When the lease is released, the rules are the base rules again, equal
    to those before the grant, and the operator reaches level 2 again."""
    before = make().build(state.holders(), {})
    out = lease(state, 'demo/hwp')
    held = make().build(state.holders(), {out.request_id: hash_privs('p')})
    state.release('demo/hwp', out.lease_id, 101.0)
    after = make().build(state.holders(), {})
    assert held != before and after == before
    assert creds(DirectorRules.reset(after, 4), OPERATOR) == (2, '')


def test_DirectorRules_tree_lease_covers_declared_descendants(state):
    """When a tree lease on demo is held, every declared resource below demo
    is locked out for others; a plain lease on demo covers none of them."""
    out = lease(state, 'demo', tree=True)
    msg = DirectorRules.reset(make().build(state.holders(), {out.request_id: hash_privs('p')}),
                              2)
    assert creds(msg, OPERATOR)[0] == 0
    assert creds(msg, 'p')[0] == 3
    state2 = LeaseState()
    out2 = lease(state2, 'demo')
    plain = DirectorRules.reset(make().build(state2.holders(),
                                             {out2.request_id: hash_privs('p')}), 2)
    assert creds(plain, OPERATOR) == (2, '')


def test_DirectorRules_unknown_credential_locks_everyone_out(state):
    """When the grant's credential is unknown (an OCS-task grant), others are
    locked out and no password gets in through it."""
    lease(state, 'demo/hwp')
    msg = DirectorRules.reset(make().build(state.holders(), {}), 2)
    for pw in (OPERATOR, ADMIN, '', 'anything'):
        assert creds(msg, pw)[0] == 0


def test_DirectorRules_renewal_changes_the_until_in_the_rules(state):
    """When the lease is renewed, its rules change (the until in the owner text)."""
    out = lease(state, 'demo/hwp')
    hashes = {out.request_id: hash_privs('p')}
    first = make().build(state.holders(), hashes)
    state.renew('demo/hwp', out.lease_id, 60.0, 110.0)
    second = make().build(state.holders(), hashes)
    assert first != second
    assert second[-1]['lockout_owner'].endswith('until T170')


def test_DirectorRules_target_message_only_the_agents_rules(state):
    """When one agent polls, its targeted message holds only the rules whose
    scope matches it; taken by that agent it gives the same levels as the reset."""
    out = lease(state, 'demo/hwp')
    rules = make().build(state.holders(), {out.request_id: hash_privs('p')})
    agent = check_agent('sim-device-1', 'SimulatedDeviceAgent')
    msg = DirectorRules.target(rules, 5, agent)
    assert msg['target'] == 'sim-device-1' and msg['ac_version'] == AC_VERSION
    assert all(r['lockout_id'] is None for r in msg['rules'])
    mine = DirectorRules.target(rules, 5, check_agent('fake-hwp', 'FakeDataAgent'))
    assert any(r['lockout_id'] == 'demo/hwp' for r in mine['rules'])
    assert creds(mine, 'p') == creds(DirectorRules.reset(rules, 5), 'p')


def test_DirectorRules_messages_hold_the_hash_never_the_password(state):
    """When a grant's rules are built, the clear-text password is nowhere in
    the message, only ocs's md5 HashedPass."""
    out = lease(state, 'demo/hwp')
    privs = new_privs()
    msg = DirectorRules.reset(make().build(state.holders(), {out.request_id: hash_privs(privs)}),
                              2)
    text = json.dumps(msg)
    assert privs not in text
    assert hash_privs(privs).value in text and '"md5"' in text


def test_new_privs_is_fresh_and_long():
    """Each grant's credential is new, 22 URL-safe characters (128 bits)."""
    values = {new_privs() for _ in range(100)}
    assert len(values) == 100
    assert all(re.fullmatch(r'[A-Za-z0-9_-]{22}', v) for v in values)


def test_holder_text_has_no_quotes_or_brackets():
    """When a note holds quotes and brackets, the owner text replaces them
    (ocs shows it inside a Python list, in brackets)."""
    assert holder_text("o'k", 'a "b" [c]', 'T1') == 'o`k; note: a `b` (c); until T1'
    assert holder_text('bob', '', 'T1') == 'bob; until T1'


@pytest.mark.parametrize('instance_id, agent_class', [
    ('', 'FakeDataAgent'), ('a,b', 'FakeDataAgent'), ('!a', 'X'), (None, 'X'), ('a', 3)])
def test_check_agent_refuses_bad_polls_in_one_line(instance_id, agent_class):
    """When an agent_poll names an id ocs's pattern matching cannot take, it
    is refused with one line naming the argument."""
    with pytest.raises(ValueError, match=r'^agent_poll: (instance_id|agent_class) must be') \
            as e:
        check_agent(instance_id, agent_class)
    assert '\n' not in str(e.value)


def test_base_rules_bad_config_one_line():
    """When the access config is not an ocs AccessDirector config, one line says so."""
    with pytest.raises(ValueError, match=r'^not an ocs access director config: ') as e:
        base_rules({'passwords': 'nope'})
    assert '\n' not in str(e.value)
