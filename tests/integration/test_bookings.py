"""Booked reservations on a real site (crossbar on loopback, the real
registry launched with ocs-agent-cli, site-config/default.yaml): a booking
becomes the booker's lease at its start and ends at its end; the holder in
its way is warned and revoked; extensions; ``ocs-locks book | calendar |
next-free | unbook``; persistence across a registry restart (last).

Every wait is on an event or a bounded poll of the registry; the only
figures asserted are the registry's own (its audit, its clock).
"""
import os
import subprocess
import sys
import threading
import time

import pytest

from tools.devsite import Site
from ocs_locking.errors import ReservationError
from ocs_locking.leases.booked import Calendar
from ocs_locking.leases.reservation import Reservation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
#: Bounds of the waits (seconds): never reached unless something is broken.
WAIT = 30.0
#: A test booking starts this long after it is made (the booker claims first).
AHEAD = 1.5
#: How late a grant may come after its booking's start here (the registry's
#: clock): a bound never reached unless something is broken; the precision
#: itself is booking_bench's to measure, on an unloaded machine.
LATE = 5.0

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('bookings-site'), port=0,
              teardown='kill') as s:
        yield s


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


@pytest.fixture
def cal(site, registry):
    return Calendar(args=site.client_args, client_id='test_bookings')


def audit(registry, resource, action):
    rows = registry.history(resource=resource, action=action, limit=100).session['data']
    return rows['history']


def ocs_locks(site, *argv, timeout=60):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep +
               os.environ.get('PATH', ''))
    return subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *argv],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_booking_becomes_the_bookers_lease_at_its_start_and_ends_at_its_end(site, registry,
                                                                           cal):
    """When a booking on the declared demo/hwp starts, the booker's
    Reservation (claiming before the start) gets the lease then, never
    before, with the claim key as its lease id; at the end the lease
    expires (audited with the booking id) and the booker hears of it."""
    b = cal.book('demo/hwp', 'schedule-b', start_in=AHEAD, end_in=AHEAD + 2.0,
                 note='calibration')
    ended = threading.Event()
    res = Reservation.booked(b['booking_id'], b['claim'], args=site.client_args,
                             on_lost=lambda reason: ended.set())
    with res:
        late = res.claimed['late']
        assert 0 <= late < LATE, late          # the registry's clock: grant - start
        assert res.lease_id == b['claim'] and res.tokens['demo/hwp'] >= 1
        assert res.check() == res.tokens['demo/hwp']
        assert ended.wait(WAIT), 'the booked lease never ended'
        assert 'booking' in res.lost and 'ended' in res.lost
    (grant,) = [r for r in audit(registry, 'demo/hwp', 'grant')
                if r['detail'].get('booking') == b['booking_id']]
    (end,) = [r for r in audit(registry, 'demo/hwp', 'expire')
              if r['detail'].get('booking') == b['booking_id']]
    assert grant['owner'] == 'schedule-b' and 0 <= grant['at'] - b['start'] < LATE
    assert 0 <= end['at'] - b['end'] < LATE
    assert [x['outcome'] for x in cal.bookings('demo/hwp', done=True)
            if x['booking_id'] == b['booking_id']] == ['expire']


def test_holder_in_the_way_is_warned_then_revoked_at_the_start(site, registry, cal):
    """When someone holds a resource a booking starts on, its Reservation's
    on_preempt fires at once (deadline: the start); if it does not give
    way it is revoked at the start and the booker gets the lease."""
    asked, lost = threading.Event(), threading.Event()
    holder = Reservation('it/booked-a', 'alice', lease=60, args=site.client_args,
                         on_preempt=lambda reason, deadline: asked.set(),
                         on_lost=lambda reason: lost.set())
    with holder:
        b = cal.book('it/booked-a', 'bob', start_in=AHEAD, end_in=AHEAD + 30)
        assert asked.wait(WAIT), 'no preempt notice'
        with Reservation.booked(b['booking_id'], b['claim'], args=site.client_args) as res:
            assert lost.wait(WAIT), 'the holder in the way was never revoked'
            assert 'booking' in holder.lost
            assert res.tokens['it/booked-a'] > holder.tokens['it/booked-a']
    revoked = audit(registry, 'it/booked-a', 'force_release')
    assert revoked[0]['detail']['holder'] == 'alice'


def test_booked_lease_extends_when_nothing_follows_and_is_capped_by_the_next(site, registry,
                                                                            cal):
    """When the booker extends its lease with nothing booked after, it holds
    longer than its end; with a booking following on the path, the
    extension stops at that booking's start."""
    b = cal.book('it/booked-b', 'bob', start_in=0, end_in=5)
    c = cal.book('it/booked-b', 'carol', start_in=12, end_in=20)
    with Reservation.booked(b['booking_id'], b['claim'], args=site.client_args) as res:
        held = res.extend(60)
        assert 5 < held <= 12, held             # capped at carol's start
        (g,) = [g for g in registry.leases().session['data']['grants']
                if g['resource'] == 'it/booked-b']
        assert g['expires'] == pytest.approx(c['start'], abs=1e-6)   # (both registry times)
    b = cal.book('it/booked-c', 'bob', start_in=0, end_in=5)
    with Reservation.booked(b['booking_id'], b['claim'], args=site.client_args) as res:
        assert res.extend(60) > 50


def test_ocs_locks_book_calendar_next_free_unbook(site, registry):
    """When an operator books with ocs-locks, it prints the booking id and
    claim key once; calendar shows the booking (no key), next-free skips
    it, an overlapping booking or an unknown resource is refused in one
    line (exit 1), a bad time in one line (exit 2), and unbook with the
    key cancels it."""
    out = ocs_locks(site, 'book', 'demo/hwp', '--start', '+2h', '--end', '+1h',
                    '--note', 'maintenance')
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    bid = int(lines[0].rsplit('booking ', 1)[1].rstrip('.'))
    key = lines[1].rsplit(': ', 1)[1]
    cal = ocs_locks(site, 'calendar', 'demo/hwp')
    assert cal.returncode == 0 and 'maintenance' in cal.stdout and key not in cal.stdout
    assert any(line.split()[0] == str(bid) for line in cal.stdout.splitlines()[1:])
    free = ocs_locks(site, 'next-free', 'demo/hwp', '--length', '90m', '--after', '+90m',
                     '--json')
    import json
    start = json.loads(free.stdout)['start']
    clash = ocs_locks(site, 'book', 'demo/hwp', '--start', '+150m', '--end', '+1h')
    assert clash.returncode == 1 and clash.stderr.count('\n') == 1
    assert f'overlaps demo/hwp from' in clash.stderr and f'(booking {bid},' in clash.stderr
    typo = ocs_locks(site, 'book', 'demo/hwpp', '--start', '+3d', '--end', '+1h')
    assert typo.returncode == 1 and "did you mean 'demo/hwp'?" in typo.stderr
    bad = ocs_locks(site, 'book', 'demo/hwp', '--start', '25:00', '--end', '+1h')
    assert bad.returncode == 2 and bad.stderr.startswith('ocs-locks: --start must be')
    gone = ocs_locks(site, 'unbook', str(bid), '--claim', key)
    assert gone.returncode == 0 and f'Cancelled booking {bid}' in gone.stdout
    after = [b for b in Calendar(args=site.client_args).bookings('demo/hwp', done=True)
             if b['booking_id'] == bid]
    assert after[0]['outcome'] == 'cancelled'
    # next-free: the first 90 min from +90m that avoid the booking at +2h..+3h
    assert start is not None
    assert start >= after[0]['end'] - 0.5     # (it was booked when next-free was asked)


def test_the_booking_example_in_the_docs_runs(site, registry):
    """When the docs' booking example runs against the site, it books the
    next free window of demo/hwp and runs every step under the booked
    lease, from its start, with the booking's one token."""
    import importlib.util
    path = os.path.join(REPO, 'docs', 'examples', 'book_hwp.py')
    spec = importlib.util.spec_from_file_location('book_hwp', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    b = example.book_calibration(site.client_args, 5.0, after_in=AHEAD)
    assert b['resources'] == ['demo/hwp'] and b['end'] - b['start'] == 5.0
    seen = []
    assert example.run_calibration(site.client_args, b['booking_id'], b['claim'], [1, 2, 3],
                                   lambda step, token: seen.append((step, token))) == 'done'
    assert [s for s, _ in seen] == [1, 2, 3] and len({t for _, t in seen}) == 1
    (grant,) = [r for r in audit(registry, 'demo/hwp', 'grant')
                if r['detail'].get('booking') == b['booking_id']]
    assert grant['token'] == seen[0][1] and grant['at'] >= b['start']

def test_ocs_locks_reserve_booking_holds_from_the_start_to_the_end(site, registry, cal):
    """When an operator runs ``ocs-locks reserve --booking ID --claim KEY``
    before the start, it waits, holds the booking's lease from the start
    (printing its token) and exits 0 when the booking is over."""
    # The command must reach the registry before the start: a loaded
    # machine may start it late, so the start moves further ahead (bounded)
    # until it did; a late start still holds the booking to its end.
    for ahead in (AHEAD * 2 ** k for k in range(5)):
        b = cal.book('it/booked-f', 'operator', start_in=ahead, end_in=ahead + 2)
        out = ocs_locks(site, 'reserve', '--booking', str(b['booking_id']), '--claim',
                        b['claim'])
        lines = out.stdout.splitlines()
        assert out.returncode == 0 or 'is over' in out.stderr, out.stderr
        if out.returncode == 0 and lines[0].startswith('Waiting for booking'):
            break
        assert out.returncode != 0 or lines[0].startswith('Holding'), out.stdout
    assert out.returncode == 0, out.stderr
    assert lines[0].startswith(f"Waiting for booking {b['booking_id']} (it/booked-f)")
    assert lines[1].startswith(f"Holding it/booked-f (booking {b['booking_id']}): token(s) "
                               f"it/booked-f=")
    assert lines[2].startswith(f"Booking {b['booking_id']} is over:") and 'ended' in lines[2]
    wrong = ocs_locks(site, 'reserve', '--booking', str(b['booking_id']), '--claim', 'f' * 32)
    assert wrong.returncode == 1 and wrong.stderr.count('\n') == 1
    assert 'that claim key is not the key of booking' in wrong.stderr

def test_bookings_persist_across_a_registry_restart_and_a_missed_start_activates_at_once(
        site, registry, cal):
    """When the registry is stopped across a booking's start, the booking
    is still there after the restart and becomes the booker's lease at once
    (late by the outage, on the registry's clock); a booking far ahead keeps
    its id; a claim key given before the restart still holds it."""
    later = cal.book('it/booked-d', 'dave', start_in=3600, end_in=7200, note='later')
    # The registry must be down before the start: on a loaded machine the
    # stop may take longer than the start is ahead, so it moves (bounded).
    for ahead in (1.0, 2.0, 4.0, 8.0, 16.0):
        b = cal.book('it/booked-e', 'erin', start_in=ahead, end_in=120)
        site.stop_agent('lock-registry')
        if time.time() < b['start']:
            break
        site.start_agent('lock-registry')
        site.wait_agent('lock-registry')
        cal.unbook(b['booking_id'], b['claim'])
    else:
        pytest.fail('the registry never stopped before a booking 16 s ahead started')
    deadline = time.monotonic() + WAIT
    while time.time() < b['start'] + 0.2:           # the start passes while it is down
        assert time.monotonic() < deadline
        time.sleep(0.05)
    site.start_agent('lock-registry')
    reg = site.wait_agent('lock-registry')
    with Reservation.booked(b['booking_id'], b['claim'], args=site.client_args,
                            wait=WAIT) as res:
        assert res.claimed['late'] > 0
        assert res.tokens['it/booked-e'] >= 1
    ids = [x['booking_id'] for x in Calendar(args=site.client_args).bookings('it/booked-d')]
    assert ids == [later['booking_id']]
    with pytest.raises(ReservationError, match=r'that claim key is not the key of booking'):
        Calendar(args=site.client_args).unbook(later['booking_id'], b['claim'])
    Calendar(args=site.client_args).unbook(later['booking_id'], later['claim'])
    assert reg is not None

