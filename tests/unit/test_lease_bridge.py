"""BridgeClient (ocs_locking.leases.bridge): one HTTP POST per lease call to
the router's /call bridge, and a one-line reason for every way it can fail.
A fake requests.Session stands in for the router."""
import json

import pytest
import requests

from ocs_locking.leases.bridge import BridgeClient, OCSClientTransport

URL = 'http://127.0.0.1:18001/call'


class Response:
    def __init__(self, status=200, body=None, text=None):
        self.status_code = status
        self._body, self._text = body, text

    def json(self):
        if self._text is not None:
            return json.loads(self._text)
        return self._body


class Session:
    """Records each POST; answers with the next queued response (or raises it)."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.posts = []

    def post(self, url, data=None, headers=None, timeout=None):
        self.posts.append((url, json.loads(data), timeout))
        r = self.responses.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    def close(self):
        pass


def test_BridgeClient_each_lease_call_is_one_post_to_the_procedure():
    """When acquire is called, exactly one POST goes to the bridge, naming the
    registry's lease procedure with keyword arguments, its read timeout the
    queue wait plus a margin; the procedure's reply becomes the Answer."""
    reply = {'ok': True, 'message': 'Granted a.', 'data': {'token': 3, 'queued_for': 0.0}}
    s = Session(Response(body={'args': [reply]}))
    c = BridgeClient(URL, 'observatory.lock-registry', session=s)
    ans = c.lease_call('acquire', {'resource': 'a', 'owner': 'x', 'timeout': 5.0}, wait=5.0)
    assert (ans.ok, ans.message, ans.data, ans.answered) == (True, 'Granted a.', reply['data'],
                                                             True)
    [(url, body, timeout)] = s.posts
    assert url == URL and c.requests == 1
    assert body == {'procedure': 'observatory.lock-registry.lease.acquire', 'args': [],
                    'kwargs': {'resource': 'a', 'owner': 'x', 'timeout': 5.0}}
    assert timeout == (5.0, 15.0)


@pytest.mark.parametrize('response,reason', [
    (requests.exceptions.ConnectionError('refused'),
     f'cannot reach the router at {URL}: ConnectionError'),
    (requests.exceptions.ReadTimeout('slow'), f'cannot reach the router at {URL}: ReadTimeout'),
    (Response(status=502), f'the router at {URL} answered HTTP 502'),
    (Response(text='<html>'), f'the router at {URL} sent no JSON'),
    (Response(body={'error': 'wamp.error.no_such_procedure', 'args': ['no proc'],
                    'kwargs': {}}),
     'the registry is not running (its lease procedures are not registered on the router)'),
    (Response(body={'error': 'wamp.error.runtime_error', 'args': ['boom\nline 2'],
                    'kwargs': {}}), 'boom line 2'),
    (Response(body={'args': ['not a dict']}), "unexpected reply from the registry: 'not a dict'"),
])
def test_BridgeClient_failures_are_unanswered_with_one_line(response, reason):
    """When the router cannot be reached, answers badly or the procedure is
    missing or fails, the Answer is unanswered (not a refusal by the
    registry) with a one-line reason."""
    c = BridgeClient(URL, 'observatory.lock-registry', session=Session(response))
    ans = c.lease_call('renew', {'resource': 'a', 'token': 1})
    assert (ans.ok, ans.answered, ans.message) == (False, False, reason)
    assert ans.kind == 'unreachable'


def test_BridgeClient_refusal_is_answered_and_ocs_transport_calls_the_same_uri():
    """When the registry refuses, the Answer is answered (kind 'refused',
    reason without 'Refused:'); through an OCSClient the same procedure URI
    is called once."""
    refused = {'ok': False, 'message': 'Refused: lease must be in [0.5, 3600] seconds, not 0',
               'data': {'error': 'lease must be in [0.5, 3600] seconds, not 0'}}
    c = BridgeClient(URL, 'observatory.lock-registry', session=Session(Response(
        body={'args': [refused]})))
    ans = c.lease_call('acquire', {'resource': 'a', 'owner': 'x', 'lease': 0})
    assert ans.kind == 'refused' and ans.reason == 'lease must be in [0.5, 3600] seconds, not 0'

    class ControlClient:
        agent_addr = 'observatory.lock-registry'
        calls = []

        def call(self, uri, **kw):
            self.calls.append((uri, kw))
            return refused

    class FakeOCSClient:
        _client = ControlClient()
    ans = OCSClientTransport(FakeOCSClient()).lease_call('release', {'resource': 'a',
                                                                     'token': 2})
    assert ans.kind == 'refused'
    assert ControlClient.calls == [('observatory.lock-registry.lease.release',
                                    {'resource': 'a', 'token': 2})]


def test_OCSClientTransport_posts_with_the_same_read_timeout_as_the_bridge():
    """When a Reservation goes through an OCSClient (whose own call has no
    timeout), its lease calls are POSTed to the client's bridge URL with the
    read timeout wait + CALL_MARGIN, the margin being wire.ANSWER_MARGIN."""
    from ocs_locking.leases.bridge import CALL_MARGIN
    from ocs_locking.wire import ANSWER_MARGIN

    class ControlClient:
        agent_addr, call_url = 'observatory.lock-registry', URL

        def call(self, uri, **kw):
            raise AssertionError('ocs call used: no read timeout')
    t = OCSClientTransport(ControlClient())
    s = t._bridge._http = Session(Response(body={'args': [{'ok': True, 'message': 'Granted.',
                                                           'data': {}}]}))
    assert t.lease_call('acquire', {'resource': 'a', 'owner': 'x', 'timeout': 3.0},
                        wait=3.0).ok
    [(url, body, timeout)] = s.posts
    assert url == URL and body['procedure'] == 'observatory.lock-registry.lease.acquire'
    assert CALL_MARGIN == ANSWER_MARGIN and timeout == (5.0, 3.0 + ANSWER_MARGIN)
