"""Helpers shared by the fault test modules (each module runs its own site).

Every wait is bounded and polls something the site shows; nothing here
sleeps for a margin.
"""
import json
import os
import shutil
import socket
import time
import urllib.request

#: Bound on waits for processes, the router and the registry to come back
#: (not a margin: each wait ends as soon as they are back).
BACK = 60
REGISTRY = 'lock-registry'
CROSSBAR_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'site-config', 'crossbar', 'config.json')


def retry(fn, what, timeout=30):
    """fn() until it returns without raising (an agent or the router coming
    back); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as e:      # ControlClientError etc. while re-joining
            if time.monotonic() > deadline:
                raise AssertionError(f'{what}: still failing after {timeout} s: {e}')
            time.sleep(0.2)


def wait_for(pred, what, timeout=BACK):
    """Poll pred() (exceptions count as false) until true; bounded. Returns
    its last true value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:
            last = e
        assert time.monotonic() < deadline, f'never saw {what} within {timeout} s; last {last!r}'
        time.sleep(0.05)


def lease_rpc(site, name, *args, **kwargs):
    """Call the registry's plain WAMP procedure <registry>.lease.<name> through
    the router's HTTP caller; the reply dict, or the WAMP error as a string."""
    body = json.dumps({'procedure': f'{site.address_root}.{REGISTRY}.lease.{name}',
                       'args': list(args), 'kwargs': kwargs}).encode()
    req = urllib.request.Request(f'http://127.0.0.1:{site.port}/call', data=body,
                                 headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=30) as r:
        reply = json.load(r)
    return reply['args'][0] if 'args' in reply else reply.get('error', str(reply))


def wait_lease_rpcs(site, timeout=BACK):
    """Wait until the registry's lease procedures are registered on the router
    (the registry registers them after joining, so they lag behind its OCS
    operations). Probes with a renewal by a lease id never issued: refused,
    changes nothing."""
    wait_for(lambda: isinstance(lease_rpc(site, 'renew', resource='probe/never',
                                          lease_id=UNISSUED, lease=1.0), dict),
             'the lease procedures registered', timeout)


#: A well-formed lease id no grant ever had.
UNISSUED = 'f' * 32
#: (resource, token) -> lease id of the grants take_lease made (their holder's secret).
LEASE_IDS = {}


def _as_session(reply):
    """A lease procedure's reply in the shape of an OCS task's session."""
    if not isinstance(reply, dict):
        return {'success': False, 'data': {}, 'messages': [[0.0, str(reply)]]}
    return {'success': bool(reply['ok']), 'data': reply.get('data') or {},
            'messages': [[0.0, reply.get('message', '')]]}


def take_lease(site, resource, owner='tester', lease=30.0, timeout=0.0, tree=False):
    """Acquire through the lease procedure (as holders do), keeping the lease
    id in LEASE_IDS; the reply shaped as a task session ('success', 'data')."""
    reply = lease_rpc(site, 'acquire', resource=resource, owner=owner, lease=lease,
                      timeout=timeout, tree=tree, client='fault-test')
    s = _as_session(reply)
    if s['success']:
        LEASE_IDS[(resource, s['data']['token'])] = s['data']['lease_id']
    return s


def give_back(site, resource, token):
    """Release the grant (resource, token) take_lease made, with its lease id."""
    lease_id = LEASE_IDS.pop((resource, token), UNISSUED)
    return _as_session(lease_rpc(site, 'release', resource=resource, lease_id=lease_id,
                                 client='fault-test'))


def end_lease(site, grant):
    """End a grant left behind: with its lease id if take_lease made it,
    else (an agent's, or lost with a test) by a force_release at level 2."""
    if (grant['resource'], grant['token']) in LEASE_IDS:
        return give_back(site, grant['resource'], grant['token'])
    from ocs.ocs_client import OCSClient
    admin = OCSClient(REGISTRY, privs='demo-operator', args=site.client_args)
    reply = admin.force_release(resource=grant['resource'], reason='fault test cleanup',
                                client='fault-test')
    return reply.session or {'success': False, 'data': {}, 'messages': [[0.0, reply.msg]]}


def client(site, instance_id):
    return site.wait_agent(instance_id, timeout=BACK)


def leases(site):
    reply = retry(lambda: client(site, REGISTRY).leases(), 'registry leases')
    assert reply.session['success'] is True, reply
    return reply.session['data']


def grant_of(site, resource):
    return next((g for g in leases(site)['grants'] if g['resource'] == resource), None)


def history(site):
    """The whole audit log, oldest first."""
    reply = retry(lambda: client(site, REGISTRY).history(limit=1000), 'registry history')
    assert reply.session['success'] is True, reply
    rows = reply.session['data']['history']
    assert len(rows) < 1000, 'audit log longer than one history() page: the check would ' \
                             'replay a window, not the whole log'
    return list(reversed(rows))


def device_stats(site, name='bridge'):
    """The simulated device's counters through its side door (not counted)."""
    with socket.create_connection(('127.0.0.1', site.device(name)['port']),
                                  timeout=5) as s:
        s.sendall(b'STATS?\n')
        return {k: int(v) for k, v in
                (kv.split('=') for kv in s.makefile().readline().split())}


def take(site, instance_id):
    return retry(lambda: client(site, instance_id).take_site_lock(),
                 f'{instance_id}.take_site_lock').session


def drop(site, instance_id):
    return retry(lambda: client(site, instance_id).drop_site_lock(),
                 f'{instance_id}.drop_site_lock').session


def messages(session):
    return [m for _, m in session['messages']]


def module_site(tmp_path_factory, site_starter, name, config, host, site_class=None):
    """A fault module's site (a generator, for a module fixture): the repo's
    crossbar config and ``config`` (a site dict) under a fresh directory for
    each start attempt, started by ``site_starter``, its lease procedures
    registered; closed when the module is done."""
    import yaml
    if site_class is None:
        from tools.devsite import Site as site_class
    root = tmp_path_factory.mktemp(name)

    def make(attempt):
        r = root / f'attempt-{attempt}'
        (r / 'crossbar').mkdir(parents=True)
        shutil.copy(CROSSBAR_CONFIG, r / 'crossbar' / 'config.json')
        site_file = r / 'site.yaml'
        site_file.write_text(yaml.safe_dump(config))
        return site_class(str(site_file), host, r / 'work', port=0, teardown='kill')
    s = site_starter(make)
    try:
        wait_lease_rpcs(s)
        yield s
    finally:
        s.close()
