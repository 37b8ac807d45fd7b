"""Pushed revocation on a real site (issue 11 part 4): crossbar on loopback,
the registry under ocs-agent-cli, a SiteLock on a raw WAMP session (as an
agent's reactor code holds one) and a Reservation over the HTTP bridge.

A force_release (the registry's OCS task, level 2) and an expiry reach the
holder through its lease watch: each test waits on the holder's own
on_lost event (bounded), then checks the reason names who, why and when, and
that guard() refuses. No wall-clock assertions: how fast is the
benchmark's business (benchmarks/site_lock_bench.py, section (e))."""
import concurrent.futures
import os
import re
import threading

import pytest

from ocs_locking.errors import LeaseLost
from ocs_locking.leases.reservation import Reservation, RetryPolicy
from ocs_locking.leases.sitelock import SiteLock
from tools.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
#: Bound on every wait (never reached when it works).
WAIT = 30.0

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('revoke-site'), port=0,
              teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


@pytest.fixture(scope='module')
def admin(site, registry):
    from ocs.ocs_client import OCSClient
    return OCSClient('lock-registry', privs='demo-operator', args=site.client_args)


class WampAgent:
    """A raw autobahn session on the site's router, with what a SiteLock
    needs of an OCSAgent: ``call`` and ``agent_address``."""

    def __init__(self, rt, site, instance='revoke-holder'):
        from autobahn.twisted.component import Component
        self.rt = rt
        self.agent_address = f'{site.address_root}.{instance}'
        joined = concurrent.futures.Future()

        def start():
            self.comp = Component(transports=[{'url': f'ws://127.0.0.1:{site.port}/ws',
                                               'max_retries': 0}], realm=site.realm)

            @self.comp.on_join
            def on_join(session, details):
                self.session = session
                joined.set_result(True)
            self.comp.start(rt.reactor)
        rt.reactor.callFromThread(start)
        joined.result(WAIT)

    def call(self, uri, *args, **kwargs):
        return self.session.call(uri, *args, **kwargs)

    def close(self):
        from twisted.internet import defer
        self.rt.call(lambda: defer.maybeDeferred(self.comp.stop), timeout=WAIT)


@pytest.fixture(scope='module')
def wamp(reactor_thread, site, registry):
    agent = WampAgent(reactor_thread, site)
    yield agent
    agent.close()


def force_release(admin, resource, reason):
    reply = admin.force_release(resource=resource, reason=reason, client='ops-console')
    assert reply.session['success'], reply.session['messages']


def lost_event():
    told, reasons = threading.Event(), []
    return told, reasons, lambda reason: (reasons.append(reason), told.set())


REVOKED = (r"^the lease on {res} \(token \d+\) was revoked: force-released by ops-console "
           r"\(declared, cred_level 2\): 'hwp jammed' at \d\d:\d\d:\d\d UTC$")


def test_force_release_reaches_a_sitelock_through_its_watch(reactor_thread, wamp, admin):
    """When an operator force-releases a SiteLock's lease (lease 60 s: its
    next renewal is 20 s away), on_lost is called through the watch with who,
    why and when, and guard() refuses from then on."""
    told, reasons, on_lost = lost_event()
    lock = SiteLock(wamp, 'it/revoke/wamp', lease=60, on_lost=on_lost,
                    reactor=reactor_thread.reactor)
    reactor_thread.call(lock.acquire_deferred)
    try:
        force_release(admin, 'it/revoke/wamp', 'hwp jammed')
        assert told.wait(WAIT), 'on_lost was never called'
        assert re.match(REVOKED.format(res='it/revoke/wamp'), reasons[0]), reasons
        assert lock.watch_events.get('revoked') == 1
        with pytest.raises(LeaseLost, match='force-released by ops-console'):
            with lock.guard():
                raise AssertionError('the device was touched')
    finally:
        reactor_thread.call(lock.release_deferred)


def test_force_release_reaches_a_reservation_through_its_watch(site, admin):
    """When an operator force-releases a Reservation's lease (over HTTP,
    lease 60 s), on_lost is called from its watch thread with who, why and
    when; check() refuses; leaving the block is not an error."""
    told, reasons, on_lost = lost_event()
    with Reservation('it/revoke/http', 'schedule-42', lease=60, args=site.client_args,
                     retry=RetryPolicy(attempts=1), on_lost=on_lost) as res:
        force_release(admin, 'it/revoke/http', 'hwp jammed')
        assert told.wait(WAIT), 'on_lost was never called'
        assert re.match(REVOKED.format(res='it/revoke/http'), reasons[0]), reasons
        assert res.watch_events.get('revoked') == 1
        with pytest.raises(LeaseLost, match='force-released by ops-console'):
            res.check()


def test_expiry_at_the_registry_is_pushed_to_a_sitelock(reactor_thread, wamp):
    """When a SiteLock's renewals stop reaching the registry (here: stopped
    by hand, as a cut link would) and the registry expires the lease, the
    watch tells the holder that it expired at the registry."""
    told, reasons, on_lost = lost_event()
    lock = SiteLock(wamp, 'it/revoke/expire', lease=2, on_lost=on_lost,
                    reactor=reactor_thread.reactor)
    reactor_thread.call(lock.acquire_deferred)
    reactor_thread.call(lambda: lock._renewer.stop())      # no renewal from now on
    assert told.wait(WAIT), 'on_lost was never called'
    assert re.match(r'^the lease on it/revoke/expire \(token \d+\) expired at the registry '
                    r'at \d\d:\d\d:\d\d UTC \(no renewal reached it in time\)$', reasons[0]), reasons
    with pytest.raises(LeaseLost):
        lock.check()



# -- negotiated preemption (part 5) ------------------------------------------------------

def history(registry, resource):
    rows = registry.history(resource=resource, limit=50).session['data']['history']
    return [r['action'] for r in reversed(rows)]


def test_preempt_reaches_a_sitelock_that_releases_and_the_requester_is_granted(
        reactor_thread, wamp, registry, admin):
    """When an operator preempts a SiteLock's lease for a requester (grace
    20 s), on_preempt gets the notice at once with the reason and a
    deadline on the holder's own monotonic clock; the holder releases; the
    requester, queued first, is granted with a larger token and was told
    who held, what was asked and when the deadline falls. Every step is in
    the audit."""
    import time
    noticed = threading.Event()
    notices = []

    def on_preempt(reason, deadline):
        notices.append((reason, deadline, time.monotonic()))
        noticed.set()
        lock.release_deferred()         # safe state reached: give way (reactor thread)
    lock = SiteLock(wamp, 'it/preempt/wamp', lease=60, on_preempt=on_preempt,
                    reactor=reactor_thread.reactor)
    reactor_thread.call(lock.acquire_deferred)
    held_token = lock.token
    admin.preempt.start(resource='it/preempt/wamp', reason='calibration', grace=20,
                        owner='calib', lease=30, client='ops-console')
    assert noticed.wait(WAIT), 'on_preempt was never called'
    reason, deadline, at = notices[0]
    assert reason == ("ops-console (declared, cred_level 2) asks for it/preempt/wamp: "
                      "'calibration'; it is revoked in " + reason.split('revoked in ')[1])
    assert at < deadline <= at + 20
    reply = admin.preempt.wait(timeout=WAIT)
    data = reply.session['data']
    assert reply.session['success'], reply.session['messages']
    assert data['owner'] == 'calib' and data['token'] > held_token
    assert data['preempt']['holder'] == 'revoke-holder' and \
        data['preempt']['reason'] == 'calibration'
    assert re.search(r"^Asked 'revoke-holder' \(token \d+\) to give it/preempt/wamp way: "
                     r"'calibration'; it is revoked at \d\d:\d\d:\d\d UTC \(in 20 s\) unless "
                     r"released; 'calib' is first in line\. Granted ",
                     reply.session['messages'][-2][1] if 'Status' in
                     reply.session['messages'][-1][1] else reply.session['messages'][-1][1])
    steps = history(registry, 'it/preempt/wamp')
    assert steps[:4] == ['grant', 'preempt', 'notice', 'release'], steps
    assert steps[4] in ('grant', 'regrant'), steps


def test_preempt_without_on_preempt_revokes_a_reservation_at_the_deadline(site, registry):
    """When a Reservation without on_preempt is preempted with
    ``ocs-locks preempt --grace 1 --wait`` (level-2 password), it is revoked
    at the deadline: on_lost says it was preempted and why; the command
    says the holder was revoked at the deadline; the audit has asked,
    notice, forced."""
    import subprocess
    import sys
    told, reasons, on_lost = lost_event()
    with Reservation('it/preempt/http', 'schedule-7', lease=60, args=site.client_args,
                     retry=RetryPolicy(attempts=1), on_lost=on_lost) as res:
        env = dict(os.environ, OCS_LOCKS_PASSWORD='demo-operator')
        out = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args,
                              'preempt', 'it/preempt/http', '--reason', 'emergency stow',
                              '--grace', '1', '--wait'],
                             capture_output=True, text=True, timeout=WAIT * 2, env=env)
        assert out.returncode == 0, out.stderr
        assert re.match(r"^'schedule-7' was revoked at the deadline on it/preempt/http "
                        r"\(\d+\.\d s after the ask\)\.$", out.stdout.strip()), out.stdout
        assert told.wait(WAIT), 'on_lost was never called'
        assert 'preempted: emergency stow (not released within its 1 s grace)' in reasons[0]
        with pytest.raises(LeaseLost):
            res.check()
    steps = history(registry, 'it/preempt/http')
    assert steps == ['grant', 'preempt', 'notice', 'force_release'], steps


def test_preempt_procedure_grants_the_requester_with_its_lease_id(site, registry):
    """When a script preempts through the registry's ``lease.preempt``
    procedure with the level-2 password and a requester, the holder (a
    Reservation that gives way in on_preempt) releases and the reply is
    the requester's grant with its secret lease_id, which releases it; a
    wrong password is refused in one line."""
    from ocs.ocs_client import OCSClient

    from ocs_locking.leases.bridge import OCSClientTransport
    bridge = OCSClientTransport(OCSClient('lock-registry', args=site.client_args))
    params = {'resource': 'it/preempt/proc', 'reason': 'calibration', 'grace': 20,
              'owner': 'calib', 'lease': 30, 'client': 'it'}
    with Reservation('it/preempt/proc', 'schedule-9', lease=60, args=site.client_args,
                     retry=RetryPolicy(attempts=1),
                     on_preempt=lambda reason, deadline: res.release()) as res:
        refused = bridge.lease_call('preempt', dict(params, password='nope'), wait=5)
        assert not refused.ok and refused.message.startswith(
            'Refused: preempt requires credential level 2')
        ans = bridge.lease_call('preempt', dict(params, password='demo-operator'), wait=40)
    assert ans.ok, ans.message
    assert ans.data['owner'] == 'calib' and ans.data['preempt']['holder'] == 'schedule-9'
    done = bridge.lease_call('release', {'resource': 'it/preempt/proc',
                                         'lease_id': ans.data['lease_id']})
    assert done.ok, done.message
