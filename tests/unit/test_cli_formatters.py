"""ocs-locks's text and JSON (pure)."""
import json
import time

import pytest

from ocs_locking import cli
from ocs_locking.cli.formatters import (RECEIVED, clock, format_history, health_lines,
                                        history_rows, span_text)

ROWS = [
    {'lock': 'dev-1/hw', 'agent': 'dev-1', 'job': 'acq', 'session_id': 3, 'since': 90.0,
     'held_for': 10.0, 'waiters': 1, 'alive': True, 'token': 4},
    {'lock': 'dev-2/hw', 'agent': 'dev-2', 'job': None, 'session_id': None, 'since': None,
     'held_for': None, 'waiters': 0, 'alive': False, 'token': 0},
]


def test_format_table_shows_holder_time_waiters_and_liveness():
    """When rows are printed, each shows holder and session, held-for, waiters,
    and alive or STALE; a free lock shows (free)."""
    lines = cli.format_table(ROWS, now=100.0).splitlines()
    assert lines[0].split() == ['LOCK', 'HOLDER', 'HELD', 'FOR', 'WAITERS', 'AGENT']
    assert lines[1].split() == ['dev-1/hw', 'acq', '(session', '3)', '10.0', 's', '1', 'alive']
    assert lines[2].split() == ['dev-2/hw', '(free)', '-', '0', 'STALE']
    assert cli.format_table([]).splitlines()[-1] == '(no locks reported yet)'


def test_json_rows_keep_exactly_the_documented_keys():
    """When rows are printed as JSON, each has exactly the contract's keys."""
    rows = json.loads(json.dumps(cli.json_rows(ROWS)))
    assert [sorted(r) for r in rows] == [sorted(cli.JSON_KEYS)] * 2
    assert rows[0]['session_id'] == 3


def test_format_table_held_for_counts_on_from_when_the_row_was_received():
    """When a row says how long its hold had lasted when the registry sent it
    (held_for) and when this process received it (its monotonic clock),
    HELD FOR adds the time since; the agent's since (its own clock, here
    far from ours) is never used."""
    row = dict(ROWS[0], since=1e9, held_for=60.0, **{RECEIVED: 500.0})
    assert cli.format_table([row], now=502.5).splitlines()[1].split()[4:6] == ['62.5', 's']
    row = dict(ROWS[0], since=1e9, held_for=None)
    assert cli.format_table([row], now=502.5).splitlines()[1].split()[4] == '?'


def test_format_history_prints_each_row_and_says_when_there_is_none():
    """When audit rows are printed, each shows time (tenths truncated),
    action, resource, owner, token, client and the detail; an empty log
    says so."""
    at = time.mktime((2026, 12, 1, 22, 0, 5, 0, 0, -1)) + 0.97
    lines = format_history([{'at': at, 'action': 'grant', 'resource': 'satp1/hwp',
                             'owner': 'alice', 'token': 7, 'client': None,
                             'detail': {'note': 'cal', 'request': 3, 'tree': False}}])
    assert lines.splitlines()[1].split() == ['2026-12-01', '22:00:05.9', 'grant', 'satp1/hwp',
                                             'alice', '7', '-', '-', 'note=cal', 'tree=False']
    assert format_history([]).splitlines()[-1] == '(no audit records)'


def test_history_rows_keep_exactly_the_documented_keys():
    """When audit rows are printed as JSON, each has exactly HISTORY_KEYS."""
    rows = history_rows([{'at': 1.0, 'action': 'grant', 'id': 4, 'extra': 1}])
    assert list(rows[0]) == list(cli.HISTORY_KEYS) and rows[0]['ok'] is None
    assert rows[0]['kind'] == 'lease'       # an older registry's row is a lease's


def span(**kw):
    out = {'kind': 'lock', 'lock': 'dev/hw', 'job': 'acq', 'session_id': 0,
           'start': time.mktime((2026, 12, 1, 12, 1, 3, 0, 0, -1)), 'end': None,
           'holds': 1, 'held': 4.25, 'longest': 4.25, 'lent': 0, 'gave_up': 0,
           'outcome': 'open'}
    out.update(kw)
    return out


@pytest.mark.parametrize('kw, text', [
    ({}, '12:01:03-now held 4.2 s; holding'),
    ({'end': time.mktime((2026, 12, 1, 12, 3, 40, 0, 0, -1)), 'holds': 1570, 'held': 151.2,
      'longest': 0.2, 'lent': 14, 'gave_up': 2, 'outcome': 'released'},
     '12:01:03-12:03:40 held 2m31s in 1570 holds (longest 0.2 s), lent 14 times, 2 gave up; '
     'released'),
    ({'held': 7300.0, 'longest': 60.0, 'holds': 2, 'lent': 1, 'gave_up': 1,
      'outcome': 'unknown'},
     '12:01:03-now held 2h01m in 2 holds (longest 60 s), lent once, 1 gave up; unknown'),
    ({'held': 'x', 'holds': None, 'outcome': 'stale', 'end': 1.0},
     '12:01:03-' + clock(1.0) + ' held ? in 0 holds (longest 4.2 s); stale'),
])
def test_span_text_says_when_how_long_how_often_and_how_it_ended(kw, text):
    """When a span is printed, one line says its times, how long it held
    in how many holds, how often it lent the lock, how many gave up, and
    how it ended (a malformed field prints as '?')."""
    assert span_text(span(**kw)) == text


def test_format_history_of_both_kinds_prints_spans_then_the_audit():
    """When both kinds are asked for, the spans come first, then the audit
    log; nothing at all says '(no history records)'."""
    lines = format_history([span(), {'kind': 'lease', 'at': 1.0, 'action': 'grant'}], 'all')
    assert lines.splitlines()[0].split() == ['LOCK', 'HOLDER', 'HELD']
    assert lines.splitlines()[1].startswith('dev/hw  acq (session 0)  12:01:03-now')
    assert lines.splitlines()[3].split()[0] == 'TIME'
    assert format_history([], 'all') == '(no history records)'
    assert format_history([], 'lock') == '(no history records)'
    assert format_history([span()], 'lock').count('\n') == 1


def test_clock_is_a_local_time_of_day_or_a_question_mark():
    """When a time is shown, it is HH:MM:SS; anything else is '?'."""
    assert clock(time.mktime((2026, 12, 1, 9, 8, 7, 0, 0, -1))) == '09:08:07'
    assert clock(None) == '?'


def test_health_lines_warn_of_failing_storage_and_missing_procedures_only():
    """When the registry reports its lease storage failing or lease
    procedures missing, one WARNING line each names what is wrong; a healthy
    or unknown (older registry, garbage) health prints nothing."""
    sick = {'storage': {'ok': False, 'error': 'write failed: database or disk is full'},
            'procedures': {'registered': False, 'missing': ['renew', 'release']}}
    assert health_lines(sick) == [
        'WARNING: lease storage is failing, so no lease is granted, renewed or released: '
        'write failed: database or disk is full',
        'WARNING: lease procedures not registered on the router (renew, release): lease '
        'calls fail until the registry holds them again']
    well = {'storage': {'ok': True, 'error': None},
            'procedures': {'registered': True, 'missing': []}}
    assert health_lines(well) == []
    for unknown in (None, 'x', {'storage': 'bad', 'procedures': [1]}, {}):
        assert health_lines(unknown) == []


def test_format_site_leases_lists_grants_with_their_queue_then_the_waiters():
    """When two resources are held and one request waits for one of them,
    the site-lease lines show each grant (owner, token, granted, until, the
    queue for it, note) and then the waiter with its place."""
    from ocs_locking.cli.formatters import clock, format_site_leases
    data = {'grants': [
        {'resource': 'satp1/hwp', 'owner': 'bob', 'token': 7, 'granted_at': 1000.0,
         'expires': 1030.0, 'expires_in': 23.4, 'tree': False, 'note': 'calibration'},
        {'resource': 'satp1', 'owner': 'sched', 'token': 2, 'granted_at': 990.0,
         'expires': 1050.0, 'tree': True, 'note': ''}],
        'waiting': [{'owner': 'carol', 'resources': ['satp1/hwp'], 'position': 1,
                     'deadline': 1040.0}]}
    lines = format_site_leases(data)
    assert lines[0].split() == ['SITE', 'LEASE', 'OWNER', 'TOKEN', 'GRANTED', 'UNTIL',
                                'LEFT', 'QUEUE', 'NOTE']
    # no expires_in (an older registry): no time left shown
    assert lines[1].split() == ['satp1/**', 'sched', '2', clock(990.0), clock(1050.0), '-',
                                '0']
    assert lines[2].split() == ['satp1/hwp', 'bob', '7', clock(1000.0), clock(1030.0), '23',
                                's', '1', 'calibration']
    assert lines[3] == f'waiting: carol for satp1/hwp (position 1, gives up {clock(1040.0)})'


def test_format_site_leases_empty_and_malformed_rows():
    """When nothing is held nor waiting there are no lines; malformed rows
    (not dicts, odd values) still print one line each, never raise."""
    from ocs_locking.cli.formatters import format_site_leases
    assert format_site_leases({'grants': [], 'waiting': []}) == []
    lines = format_site_leases({'grants': ['x', {'resource': 5, 'token': 10 ** 30}],
                                'waiting': [{'resources': [None]}]})
    assert len(lines) == 3 and lines[1].startswith('?') and lines[2].startswith('waiting: ')


def test_format_site_leases_counts_time_left_down_on_its_own_clock():
    """When the leases were received at monotonic time 100 with 23.4 s left
    (the registry's clock), LEFT counts down on this process's clock from
    then, never below 0; the registry's wall clock is never compared."""
    from ocs_locking.cli.formatters import RECEIVED, format_site_leases
    data = {'grants': [{'resource': 'r', 'owner': 'o', 'token': 1, 'granted_at': 5.0,
                        'expires': 9e9, 'expires_in': 23.4}], 'waiting': [], RECEIVED: 100.0}
    assert format_site_leases(data, now=100.0)[1].split()[5:7] == ['23', 's']
    assert format_site_leases(data, now=115.0)[1].split()[5:7] == ['8.4', 's']
    assert format_site_leases(data, now=500.0)[1].split()[5:7] == ['0.0', 's']


def test_format_waiters_lists_each_locks_queue_in_order():
    """When a lock has waiters, its lines give each one's position, job/op,
    session and how long it has waited (counting on from when the row was
    received); a lock without waiters gives no line; more waiters than the
    queue names says how many more."""
    from ocs_locking.cli.formatters import RECEIVED, format_waiters
    rows = [{'lock': 'a/hw', 'waiters': 0, 'queue': []},
            {'lock': 'b/hw', 'waiters': 10, RECEIVED: 50.0, 'queue': [
                {'job': 'set_heater', 'op': 'set_heater', 'session_id': 4, 'since': 1.0,
                 'waited_for': 2.0},
                {'job': 'cal', 'op': 'step', 'session_id': None, 'since': 2.0,
                 'waited_for': 'x'}]},
            {'lock': 'c/hw', 'waiters': 1}]     # an old agent: a count, no queue
    assert format_waiters(rows, now=51.5) == [
        'b/hw: 10 waiting',
        '  1. set_heater (session 4) waiting for 3.5 s',
        '  2. cal/step (no session) waiting for ?',
        '  ... and 8 more',
        'c/hw: 1 waiting',
        '  ... and 1 more']
    assert format_waiters([{'lock': 'x', 'waiters': 0}, 'junk'][:1]) == []


def test_json_rows_gain_the_queue():
    """When a row has a queue, --json rows carry it; [] when the row has none."""
    from ocs_locking.cli.formatters import json_rows
    q = [{'job': 'a', 'op': 'a', 'session_id': 1, 'since': 1.0, 'waited_for': 0.5}]
    assert [r['queue'] for r in json_rows([{'lock': 'x', 'queue': q}, {'lock': 'y'}])] == \
        [q, []]


def test_replication_lines_say_who_serves_and_who_stands_by():
    """When the registry's replication block names followers, a takeover
    and a dropped standby, status says each in one line; a standby's own
    block, or none at all, adds nothing."""
    from ocs_locking.cli.formatters import replication_lines
    rep = {'role': 'primary', 'identity': 'lock-registry-b',
           'took_over': {'at': 100.0, 'from_epoch': 3, 'epoch': 4},
           'followers': [{'name': 'lock-registry-a', 'verified': True, 'behind': 0,
                          'seen_ago': 0.4}], 'last_drop': None}
    lines = replication_lines(rep)
    assert lines[0].startswith('registry served by standby lock-registry-b since ')
    assert lines[0].endswith('(took over from epoch 3; now epoch 4)')
    assert lines[1] == 'standby lock-registry-a follows (verified): 0 batch(es) behind, ' \
                       'heard 0.4 s ago'
    alone = dict(rep, took_over=None, followers=[],
                 last_drop={'name': 'lock-registry-a', 'ago': 2.0, 'why': 'no ack'})
    assert replication_lines(alone) == [
        'WARNING: no standby follows: lock-registry-a was dropped 2.0 s ago (no ack)']
    assert replication_lines({'role': 'standby'}) == [] == replication_lines(None)


def test_deadlock_lines_name_each_cycle_with_its_age_and_ignore_junk():
    """The registry's deadlocks become one DEADLOCK line each (oldest
    first, as given); anything malformed (an older or odd registry) is
    skipped, never raised."""
    from ocs_locking.cli.formatters import deadlock_lines
    lines = deadlock_lines([
        {'text': 'deadlock: a j1 (session 1) holds a/l1, waits for a/l2 held by a j2 '
                 '(session 2), which waits for a/l1', 'for': 3.25},
        {'text': 'deadlock: x\nholds y'}, 'junk', {'text': 7}])
    assert lines == ['DEADLOCK (for 3.2 s): deadlock: a j1 (session 1) holds a/l1, waits for '
                     'a/l2 held by a j2 (session 2), which waits for a/l1',
                     'DEADLOCK: deadlock: x holds y']
    assert deadlock_lines(None) == deadlock_lines('x') == []
