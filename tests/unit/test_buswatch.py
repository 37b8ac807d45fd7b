"""BusWatch with a fake session: the bus verified or not at each join, the
meta subscriptions and the registrations loaded into the SessionMap."""
from unittest import mock

import pytest
from autobahn.wamp.exception import ApplicationError
from twisted.internet import defer

from ocs_locking.agents.lock_registry.buswatch import META_TOPICS, BusWatch
from ocs_locking.agents.lock_registry.sessions import SessionMap

INFO = {'component': 'ocs_locking.bus', 'version': '1', 'address_root': 'observatory',
        'registry': 'lock-registry', 'disclose': True}


class Session:
    def __init__(self, info=INFO, error=None):
        self._session_id = 77
        self.info, self.error = info, error
        self.subscribed = []
        self.handlers = {}
        self.regs = {101: {'id': 101, 'uri': 'observatory.dev-1.ops'},
                     102: {'id': 102, 'uri': 'observatory.dev-1.acq'}}

    def on(self, event, handler):
        self.handlers[event] = handler

    def call(self, uri, *args):
        if uri == 'ocs_locking.bus.info':
            return defer.fail(self.error) if self.error else defer.succeed(self.info)
        if uri == 'wamp.registration.list':
            return defer.succeed({'exact': list(self.regs), 'prefix': [], 'wildcard': []})
        if uri == 'wamp.registration.get':
            return defer.succeed(self.regs[args[0]])
        if uri == 'wamp.registration.list_callees':
            return defer.succeed([11])
        raise AssertionError(uri)

    def subscribe(self, handler, topic, options=None):
        self.subscribed.append(topic)
        return defer.succeed(None)


def watch(session):
    session.log = mock.Mock()
    gone, lost = [], []
    w = BusWatch(session, SessionMap('observatory'), 'observatory', 'lock-registry',
                 on_gone=gone.append, on_lost=lost.append)
    return w, gone, lost


def test_BusWatch_verifies_subscribes_to_the_meta_events_and_loads_the_map():
    """When ocs_locking.bus.info answers for this root and registry, the bus
    is verified, the five meta events are subscribed, and the agents already
    on the bus are in the map (their ops registrations only)."""
    s = Session()
    w, gone, lost = watch(s)
    w.joined(s)
    assert w.summary() == {'verified': True, 'reason': None, 'session': 77}
    assert s.subscribed == list(META_TOPICS)
    assert w.sessions.agents() == {'dev-1': 11}
    w._on_leave(11)
    assert gone == ['dev-1']
    w._on_unregister(77, 555)
    assert lost == [555]


@pytest.mark.parametrize('error,reason', [
    (ApplicationError('wamp.error.not_authorized', 'session is not authorized to call '
                      "procedure 'ocs_locking.bus.info'"),
     "ocs_locking.bus.info: session is not authorized to call procedure 'ocs_locking.bus.info'"),
    (ApplicationError('wamp.error.no_such_procedure'),
     'ocs_locking.bus.info: no such procedure (the router component is not running)')])
def test_BusWatch_stock_config_is_not_verified_with_a_one_line_reason(error, reason):
    """When the call fails (ocs's stock config: not_authorized; no component:
    no_such_procedure), the bus is not verified, one log line says why, and
    nothing is subscribed."""
    s = Session(error=error)
    w, _, _ = watch(s)
    w.joined(s)
    assert w.summary() == {'verified': False, 'reason': reason, 'session': 77}
    assert s.subscribed == []
    [call] = s.log.warn.call_args_list
    assert call.kwargs['reason'] == reason
    w.joined(s)
    assert s.log.warn.call_count == 1       # the same reason is not logged again


@pytest.mark.parametrize('info,words', [
    ({'component': 'other'}, 'not the ocs_locking.bus component'),
    (dict(INFO, address_root='elsewhere'), "serves address root 'elsewhere'"),
    (dict(INFO, registry='other-registry'), "serves registry 'other-registry'"),
    (dict(INFO, disclose=False), 'does not disclose publishers'), ('text', 'answered')])
def test_BusWatch_a_component_for_another_site_is_not_verified(info, words):
    """When the answer is not the component for this root and registry (or
    does not disclose publishers), the bus is not verified and says why."""
    s = Session(info=info)
    w, _, _ = watch(s)
    w.joined(s)
    assert w.verified is False and words in w.reason


def test_BusWatch_leave_forgets_the_map_and_says_not_joined():
    """When the registry leaves the router, the map is emptied and the bus
    is not verified until the next join."""
    s = Session()
    w, _, _ = watch(s)
    w.joined(s)
    w.left()
    assert (w.verified, w.session, w.sessions.agents()) == (False, None, {})


def test_BusWatch_detach_events_without_a_session_reach_the_map_and_the_registrar():
    """When crossbar names no session in on_unregister/on_delete (a detach),
    the agent holding it is gone and the registrar is asked (it ignores an
    id that is not its own)."""
    s = Session()
    w, gone, lost = watch(s)
    w.joined(s)
    w._on_unregister(None, 101)
    w._on_delete(None, 101)
    w._on_delete(99, 7)                 # another session's: not the registrar's business
    assert gone == ['dev-1'] and lost == [101, 101]


def test_BusWatch_tells_when_each_check_ends_and_leaves_no_timer():
    """When a check ends (verified, or not) or the session leaves,
    on_settled is called and the check's timeout is cancelled."""
    from twisted.internet.task import Clock
    clock, settled = Clock(), []
    for s in (Session(), Session(error=ApplicationError('wamp.error.no_such_procedure'))):
        s.log = mock.Mock()
        w = BusWatch(s, SessionMap('observatory'), 'observatory', 'lock-registry',
                     on_gone=lambda i: None, on_settled=lambda: settled.append(w.state),
                     reactor=clock)
        w.joined(s)
        assert clock.getDelayedCalls() == []
    w.left()
    assert settled == ['verified', 'unverified', 'unverified']
