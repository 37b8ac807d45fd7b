"""SessionMap: which WAMP session speaks for which agent, from meta events."""
import pytest

from ocs_locking.agents.lock_registry.sessions import SessionMap


def ops(instance_id):
    return f'observatory.{instance_id}.ops'


@pytest.fixture
def smap():
    return SessionMap('observatory')


def test_SessionMap_maps_the_session_that_created_an_agents_ops_registration(smap):
    """When a session creates <root>.<id>.ops, agent_of(session) is the id and
    session_of(id) the session; other URIs are not agents."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    smap.created(12, {'id': 102, 'uri': 'observatory.dev-1.lease.acquire'})
    smap.created(13, {'id': 103, 'uri': 'elsewhere.dev-2.ops'})
    assert (smap.agent_of(11), smap.session_of('dev-1')) == ('dev-1', 11)
    assert smap.agent_of(12) is None and smap.agent_of(13) is None
    assert smap.agents() == {'dev-1': 11} and len(smap) == 1


@pytest.mark.parametrize('how', ['left', 'unregistered', 'deleted'])
def test_SessionMap_session_end_returns_the_agents_that_lost_their_session(smap, how):
    """When the agent's session leaves, or its ops registration is
    unregistered or deleted, the input returns the agent and the map
    forgets the pair."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    smap.created(12, {'id': 102, 'uri': ops('dev-2')})
    gone = smap.left(11) if how == 'left' else getattr(smap, how)(11, 101)
    assert gone == ['dev-1']
    assert smap.agent_of(11) is None and smap.session_of('dev-1') is None
    assert smap.session_of('dev-2') == 12
    assert smap.left(11) == []          # once only


def test_SessionMap_a_new_process_takes_over_the_agent_id(smap):
    """When a restarted agent registers its ops again from a new session, the
    new session speaks for it and the old one for nobody; the old session's
    late leave does not end the new one."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    smap.deleted(11, 101)
    smap.created(21, {'id': 201, 'uri': ops('dev-1')})
    assert smap.left(11) == []
    assert (smap.session_of('dev-1'), smap.agent_of(21), smap.agent_of(11)) == (21, 'dev-1', None)


def test_SessionMap_unregister_by_another_session_changes_nothing(smap):
    """When on_unregister names a session that does not hold the
    registration, the holder keeps it."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    assert smap.unregistered(99, 101) == []
    assert smap.session_of('dev-1') == 11


def test_SessionMap_load_fills_the_map_and_events_win(smap):
    """When the registrations already on the router are loaded, their first
    callee is the agent's session; a registration an event already told
    about keeps what the event said; bad entries are counted."""
    smap.created(31, {'id': 301, 'uri': ops('dev-3')})
    smap.load([({'id': 101, 'uri': ops('dev-1')}, [11]),
               ({'id': 301, 'uri': ops('dev-3')}, [99]),
               ({'id': 401, 'uri': ops('dev-4')}, []),
               ({'id': 'x', 'uri': ops('dev-5')}, [5]),
               'garbage'])
    assert smap.agents() == {'dev-1': 11, 'dev-3': 31}
    assert sum(smap.bad.values()) == 2


@pytest.mark.parametrize('call,args', [
    ('created', (None, {'id': 1, 'uri': 'observatory.a.ops'})),
    ('created', (1, 'not a dict')), ('created', (1, {'id': True, 'uri': 'x'})),
    ('registered', ('1', 2)), ('unregistered', (1, -2)), ('deleted', (1, 2 ** 60)),
    ('left', ('abc',)), ('left', (None,))])
def test_SessionMap_malformed_events_are_counted_and_change_nothing(smap, call, args):
    """When a meta event has the wrong shape, the map is unchanged and the
    event is counted in bad (by reason)."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    result = getattr(smap, call)(*args)
    assert result in (None, [])
    assert smap.agents() == {'dev-1': 11}
    assert sum(smap.bad.values()) == 1


def test_SessionMap_clear_forgets_everything(smap):
    """When the registry leaves the router, the map is emptied."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    smap.clear()
    assert smap.agents() == {} and smap.agent_of(11) is None


def test_SessionMap_crossbar_detach_events_without_a_session_end_the_holder(smap):
    """When crossbar sends on_unregister/on_delete with session None (the
    callee's session detached), the holder of that registration loses it;
    nothing is counted as malformed."""
    smap.created(11, {'id': 101, 'uri': ops('dev-1')})
    smap.created(12, {'id': 102, 'uri': ops('dev-2')})
    assert smap.unregistered(None, 101) == ['dev-1']
    assert smap.deleted(None, 101) == [] and smap.deleted(None, 102) == ['dev-2']
    assert smap.agents() == {} and smap.bad == {}
