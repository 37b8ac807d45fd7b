"""Stuck, silent and expiring: the flags (pure), the registry setting them on
its table and recording the alerts feed (no router), and ocs-locks showing them."""
import time

import pytest
from ocs.ocs_feed import Feed

from ocs_locking.agents.lock_registry.agent import LockRegistryAgent
from ocs_locking.agents.lock_registry.lease_pages import with_expires_in
from ocs_locking.cli.formatters import format_site_leases, format_table
from ocs_locking.flags import (ALERT_FIELDS, FLAG_KINDS, SILENT_AFTER, STUCK_MIN, alert_blocks,
                               count_flags, lease_flags, lease_lengths, lock_flags)
from ocs_locking.wire import ALERTS_FEED, OWNERSHIP_FEED
from tests.unit.test_registry_agent import FakeAgent, NowReactor, info, topic

USUAL = {'n': 5, 'span_p90': 2.0}


def row(**kw):
    out = {'lock': 'dev/hw', 'job': 'set_heater', 'held_for': 10.0, 'alive': True,
           'closed': False}
    out.update(kw)
    return out


@pytest.mark.parametrize('kw, usual, flags', [
    ({'held_for': STUCK_MIN + 1}, USUAL, ('stuck',)),               # > 60 s and > 10 x 2 s
    ({'held_for': STUCK_MIN - 1}, USUAL, ()),                        # not 60 s yet
    ({'held_for': 150.0}, {'n': 5, 'span_p90': 20.0}, ()),           # < 10 x its usual
    ({'held_for': 1e4}, {'n': 2, 'span_p90': 1.0}, ()),              # too little history
    ({'held_for': 1e4}, None, ()),                                   # no history at all
    ({'held_for': None}, USUAL, ()),                                 # free
    ({'held_for': 1e4, 'alive': False}, USUAL, ()),                  # stale says it already
])
def test_a_hold_is_stuck_only_far_beyond_that_jobs_usual(kw, usual, flags):
    assert lock_flags(row(**kw), usual) == flags


def test_a_live_agents_lock_is_silent_when_its_messages_stopped():
    assert lock_flags(row(), None, SILENT_AFTER + 1) == ('silent',)
    assert lock_flags(row(), None, SILENT_AFTER - 1) == ()
    assert lock_flags(row(alive=False), None, 1e3) == ()
    assert lock_flags(row(closed=True), None, 1e3) == ()
    assert lock_flags(row(held_for=1e4), USUAL, 1e3) == ('stuck', 'silent')


def test_a_lease_is_expiring_with_less_than_a_quarter_left():
    assert lease_flags({'lease': 30.0}, 7.0) == ('expiring',)
    assert lease_flags({'lease': 30.0}, 8.0) == ()
    assert lease_flags({}, 7.0, lease=30.0) == ('expiring',)
    assert lease_flags({'lease': None}, 0.0) == ()


def test_lease_lengths_are_learnt_from_each_grant_and_renewal():
    """A grant does not store its lease: the registry learns it from the
    seconds left each time ``expires`` moves, and flags from that."""
    g = [{'resource': 'a/b', 'token': 7, 'expires': 130.0}]
    lengths = lease_lengths(with_expires_in(g, 100.5), {})
    assert lengths == {('a/b', 7): (130.0, 29.5)}
    assert lease_lengths(with_expires_in(g, 120.0), lengths) == lengths    # not moved
    assert [x['flags'] for x in with_expires_in(g, 123.0, lengths)] == [['expiring']]
    assert [x['flags'] for x in with_expires_in(g, 110.0, lengths)] == [[]]
    renewed = [dict(g[0], expires=150.0)]
    lengths = lease_lengths(with_expires_in(renewed, 120.0), lengths)
    assert lengths == {('a/b', 7): (150.0, 30.0)}
    assert lease_lengths([], lengths) == {}                                # released


def test_alert_blocks_have_the_same_fields_every_time():
    counts = count_flags([row(flags=['stuck'], held_for=70.0), row(flags=['stuck'], held_for=90.0),
                          {'flags': ['expiring'], 'expires_in': 3.0},
                          {'flags': ['expiring'], 'expires_in': 1.5}, {'flags': []},
                          row(flags=['deadlock'], deadlock_for=2.5)])
    assert counts == {'stuck': (2, 90.0), 'silent': (0, 0.0), 'expiring': (2, 1.5),
                      'deadlock': (1, 2.5)}
    blocks = alert_blocks(counts)
    assert list(blocks) == list(FLAG_KINDS)
    assert all(tuple(blocks[k]) == ALERT_FIELDS[k] for k in FLAG_KINDS)
    assert blocks['stuck'] == {'stuck_count': 2, 'stuck_worst_s': 90.0}
    assert alert_blocks(count_flags([]))['silent'] == {'silent_count': 0, 'silent_worst_s': 0.0}


def lock_msg(seq, job='set_heater', event='acquired', token=1):
    return {'lock': 'hw', 'event': event, 'job': job, 'op': job, 'session_id': 2,
            'since': 1000.0, 'waiters': 0, 'token': token, 'seq': seq, 'boot': 1.0}


@pytest.fixture
def reg():
    r = LockRegistryAgent(FakeAgent(), reactor=NowReactor())
    r.usual_hold = lambda lock, job: USUAL
    r._on_locks([lock_msg(1), info('dev-1')], details=topic('dev-1'))
    r.agent.published.clear()
    return r


def alerts(reg):
    return {m['block_name']: m['data'] for name, m in reg.agent.published if name == ALERTS_FEED}


def test_the_registry_flags_a_stuck_hold_publishes_the_row_and_records_alerts(reg):
    """When a hold lasts far beyond its job's usual, the row's flags say
    stuck, the changed row goes out on ownership, and the alerts feed gets
    one block per kind, each valid for ocs's feed (recorded to InfluxDB)."""
    later = time.time() + STUCK_MIN + 5
    reg.table.heartbeat('dev-1', later)         # alive: not stale, not silent...
    reg.table._heard['dev-1/hw'] = later        # ...and heard from just now
    counts = reg._flag(later)
    assert counts['stuck'][0] == 1
    assert reg.table.rows['dev-1/hw']['flags'] == ['stuck']
    changes = [m for name, m in reg.agent.published if name == OWNERSHIP_FEED]
    assert changes and changes[-1]['rows'][0]['flags'] == ['stuck']
    blocks = alerts(reg)
    assert blocks['stuck']['stuck_count'] == 1 and blocks['silent']['silent_count'] == 0
    for data in blocks.values():
        for field, value in data.items():
            Feed.verify_data_field_string(field)
            Feed.verify_message_data_type(value)
    reg.agent.published.clear()
    reg._flag(later + 0.5)          # nothing changed, within stats_every: no new records
    assert alerts(reg) == {} and not reg.agent.published


def test_the_registry_flags_a_silent_lock_and_clears_it_when_heard(reg):
    """When a live agent's lock messages stop for SILENT_AFTER while its
    heartbeats go on, the row is silent; its next message clears it."""
    later = time.time() + SILENT_AFTER + 2
    reg.usual_hold = None
    reg.table.heartbeat('dev-1', later)
    reg._flag(later)
    assert reg.table.rows['dev-1/hw']['flags'] == ['silent']
    assert alerts(reg)['silent']['silent_count'] == 1
    reg._on_locks([lock_msg(2, event='released'), info('dev-1')], details=topic('dev-1'))
    reg._flag(time.time())
    assert reg.table.rows['dev-1/hw']['flags'] == []


def test_ocs_locks_shows_flags_beside_the_row_and_on_leases():
    """When a row or a lease is flagged, ocs-locks status and watch show it."""
    text = format_table([{'lock': 'dev/hw', 'job': 'acq', 'session_id': 1, 'since': 1.0,
                          'held_for': 99.0, 'waiters': 0, 'alive': True,
                          'flags': ['stuck', 'silent']}], now=0.0)
    assert text.splitlines()[1].endswith('alive [stuck, silent]')
    lines = format_site_leases({'grants': [{'resource': 'a/b', 'owner': 'x', 'token': 1,
                                            'lease': 30.0, 'expires_in': 5.0, 'flags': []}]})
    assert '5.0 s [expiring]' in lines[1]
