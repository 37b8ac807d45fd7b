"""History of agent locks on the demo site for real: crossbar on loopback, the
registry and the SimulatedDeviceAgents launched with ocs-agent-cli, OCSClient
and ocs-locks as clients; and the flags of the same site (an expiring lease).
The registry restart (kill -9) runs last."""
import json
import os
import subprocess
import sys
import time

import ocs
import pytest

from ocs_locking.cli.formatters import SPAN_ROW_KEYS
from tools.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
WAIT = 30.0     # bound on every wait
LOCK = 'sim-device-1/hw'

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('history-site'), port=0,
              teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def device(site):
    return site.wait_agent('sim-device-1')


def ocs_locks(site, *args):
    return subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *args],
                          capture_output=True, text=True, timeout=60)


def spans(registry, **params):
    reply = registry.history(kind='lock', limit=1000, **params)
    assert reply.status == ocs.OK and reply.session['success'], reply
    return reply.session['data']['history']


def wait_spans(registry, pred, what, **params):
    """Ask the registry (HTTP clients cannot be pushed to) until pred(spans)
    holds; bounded."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            rows = spans(registry, **params)
        except Exception:       # the registry restarting
            rows = None
        if rows is not None and pred(rows):
            return rows
        assert time.monotonic() < deadline, f'the history never showed {what}; last {rows}'
        time.sleep(0.2)


@pytest.fixture(scope='module')
def heated(site, device):
    """acq runs; three set_heater calls borrowed the lock from it."""
    registry = site.wait_agent('lock-registry')
    wait_spans(registry, lambda r: any(s['job'] == 'acq' for s in r), 'acq holding',
               resource=LOCK)
    rows = []
    for n in (1, 2, 3):
        reply = device.set_heater(value=float(n))
        assert reply.session['success'], reply
        # one call at a time: events beyond the agent's rate limit (a burst
        # of 8, then 100 per second) are folded into one snapshot, counted in
        # the loop's holds only. The pause refills the bucket (80 ms) after
        # the span showed; load can only make it longer, never too short.
        rows = wait_spans(registry, lambda r: sum(s['job'] == 'set_heater' for s in r) >= n,
                          f'{n} set_heater span(s)', resource=LOCK)
        time.sleep(0.2)
    return rows


def test_a_borrowed_hold_is_its_own_span_and_the_loops_span_counts_it(site, heated):
    """When set_heater takes the lock from the acq loop three times, the
    history has one span per set_heater call (one hold each, released) and
    the acq loop's span goes on, open, having lent the lock three times."""
    heater = [s for s in heated if s['job'] == 'set_heater']
    assert all(s['holds'] == 1 and s['outcome'] == 'released' and s['end'] is not None
               for s in heater), [(s['holds'], s['outcome'], s['end']) for s in heater]
    acq = [s for s in heated if s['job'] == 'acq' and s['outcome'] == 'open']
    assert len(acq) == 1, heated
    assert acq[0]['lent'] >= 3 and acq[0]['holds'] > 3
    assert acq[0]['held'] > 0 and acq[0]['end'] is None
    assert all(s['kind'] == 'lock' and s['at'] == s['start'] and s['lock'] == LOCK
               for s in heated)


def test_ocs_locks_history_prints_spans_and_filters_by_job(site, heated):
    """When ocs-locks history asks for a lock's last 10 minutes, each span
    prints as a line (the loop's 'lent N times'); --owner picks one job's
    spans and --json gives the documented keys."""
    p = ocs_locks(site, 'history', LOCK, '--kind', 'lock', '--since', '10m', '--limit', '100')
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ['LOCK', 'HOLDER', 'HELD']
    acq = [line for line in lines if ' acq (session ' in line]
    assert acq and 'lent ' in acq[0] and acq[0].endswith('; holding'), lines
    assert sum(' set_heater (session ' in line for line in lines) >= 3
    p = ocs_locks(site, 'history', LOCK, '--owner', 'set_heater', '--json')
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) >= 3 and {r['job'] for r in rows} == {'set_heater'}
    assert all(tuple(r) == SPAN_ROW_KEYS and r['kind'] == 'lock' for r in rows)


def test_ocs_locks_history_at_gives_who_held_the_lock_then(site, heated):
    """When history is asked what was held at a moment (--at, here 1 s ago),
    it gives the spans open then: the acq loop's, none that ended before."""
    before = time.time()
    p = ocs_locks(site, 'history', LOCK, '--kind', 'lock', '--at', '1s', '--json')
    after = time.time()
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert any(r['job'] == 'acq' and r['end'] is None for r in rows), rows
    # the registry took "1 s ago" on its clock, between our before and after
    for r in rows:
        assert r['start'] <= after - 1 and (r['end'] is None or r['end'] >= before - 1), r


def test_a_bad_history_target_is_one_line_and_the_history_stays(site, heated):
    """When history is asked about something that is not a lock, the answer
    is one line and nothing stored is lost."""
    p = ocs_locks(site, 'history', 'a//b', '--kind', 'lock')
    assert p.returncode == 1 and p.stderr.count('\n') == 1, p.stderr
    registry = site.wait_agent('lock-registry')
    reply = registry.history(kind='lock', resource='sim device')
    assert reply.session['success'] is False
    assert reply.session['messages'][-2][1].startswith('Refused: lock must be ')
    assert len(spans(registry, resource=LOCK)) >= len(heated)


def alert_counts(registry):
    data = registry.monitor.status().session.get('data') or {}
    return {k: v['count'] for k, v in (data.get('alerts') or {}).items()}


def wait_for(pred, what, bound=WAIT):
    deadline = time.monotonic() + bound
    while not pred():
        assert time.monotonic() < deadline, f'never saw {what}'
        time.sleep(0.2)


def test_a_lease_left_unrenewed_is_flagged_expiring_until_it_ends(site):
    """When a lease is not renewed and less than a quarter of it is left,
    the registry counts it in its alerts (the recorded alerts feed's
    ``expiring`` block), ocs-locks status marks it, and the count goes back
    to 0 once it expired."""
    registry = site.wait_agent('lock-registry')
    # a 60 s lease is expiring for its last 15 s: room for a status command
    # started on a loaded machine to see it before it ends
    reply = registry.acquire(resource='it/expiring', owner='flag-test', lease=60)
    assert reply.session['success'], reply

    def marked():
        lines = ocs_locks(site, 'status').stdout.splitlines()
        return any(x.startswith('it/expiring') and '[expiring]' in x for x in lines)
    wait_for(lambda: alert_counts(registry).get('expiring') == 1, 'the lease expiring',
             bound=75)
    wait_for(marked, 'ocs-locks status marking the lease expiring', bound=30)
    wait_for(lambda: alert_counts(registry).get('expiring') == 0, 'the lease gone')
    assert 'it/expiring' not in ocs_locks(site, 'status').stdout
    assert alert_counts(registry) == {'stuck': 0, 'silent': 0, 'expiring': 0, 'deadlock': 0}


def test_the_history_survives_a_registry_kill9(site, heated):
    """When the registry is killed (SIGKILL) and started again, the spans it
    had written are still there; the loop's span that was open is marked
    unknown and a new one opens for the loop still holding the lock."""
    registry = site.wait_agent('lock-registry')
    before = {s['id'] for s in spans(registry, resource=LOCK) if s['job'] == 'set_heater'}
    site.kill_agent('lock-registry')
    site.start_agent('lock-registry')
    registry = site.wait_agent('lock-registry')
    rows = wait_spans(registry, lambda r: any(s['job'] == 'acq' and s['outcome'] == 'open'
                                              for s in r), 'a new acq span', resource=LOCK)
    assert before <= {s['id'] for s in rows}
    old = [s for s in rows if s['job'] == 'acq' and s['outcome'] == 'unknown']
    assert old and old[0]['lent'] >= 3
    new = [s for s in rows if s['job'] == 'acq' and s['outcome'] == 'open']
    assert new[0]['id'].split('-')[0] != old[0]['id'].split('-')[0]
