"""Hold and wait percentiles between two lock_stats records (pure), as the
ownership table gathers them from real lock messages."""
from ocs_locking.ownership import OwnershipTable
from ocs_locking.stats import PERIOD_FIELDS, PeriodStats, percentile


def test_take_gives_counts_and_percentiles_then_starts_a_new_period():
    p = PeriodStats()
    for s in range(1, 101):
        p.hold('a', s / 100)
    p.wait('a', 2.0)
    out = p.take('a')
    assert tuple(out) == PERIOD_FIELDS
    assert out == {'holds': 100, 'hold_p50_s': 0.5, 'hold_p99_s': 0.99,
                   'waits': 1, 'wait_p50_s': 2.0, 'wait_p99_s': 2.0}
    assert p.take('a') == dict.fromkeys(PERIOD_FIELDS, 0) | {
        'hold_p50_s': 0.0, 'hold_p99_s': 0.0, 'wait_p50_s': 0.0, 'wait_p99_s': 0.0}


def test_a_flood_keeps_a_bounded_sample_and_exact_counts():
    p = PeriodStats(max_samples=64)
    for i in range(10000):
        p.hold('a', float(i % 100))
    out = p.take('a')
    assert out['holds'] == 10000
    assert 20 <= out['hold_p50_s'] <= 80       # a uniform sample of 0..99
    assert len(p._periods) == 0


def test_bad_durations_are_ignored_and_counters_only_grow():
    p = PeriodStats()
    for bad in (-1, float('nan'), float('inf'), None, 'x'):
        p.hold('a', bad)
    assert p.take('a')['holds'] == 0
    p.count('a', 'acquired')
    p.count('a', 'acquired', 2)
    p.take('a')
    assert p.counter('a', 'acquired') == 3 and p.counter('b', 'acquired') == 0
    p.forget('a')
    assert p.counter('a', 'acquired') == 0
    assert percentile([], 0.5) == 0.0


def msg(seq, event, job=None, waiters=0, queue=None, token=1):
    m = {'lock': 'hw', 'event': event, 'job': job, 'op': job,
         'session_id': None if job is None else 1, 'since': 1.0 if job else None,
         'waiters': waiters, 'token': token, 'seq': seq, 'boot': 1.0, 'age': 0.0}
    if queue is not None:
        m['queue'] = queue
    return m


def test_the_table_measures_each_hold_and_each_wait_on_its_clock():
    """When a loop holds, a task waits 2 s for it and is served, the table's
    period has both holds and the waits: 0 for a free lock, 2 s for the task."""
    t = OwnershipTable()
    t.lock_message('dev', msg(1, 'acquired', 'acq'), 100.0)            # free: waited 0
    waiting = [{'job': 'set_heater', 'op': 'set_heater', 'session_id': 1, 'since': 1.0,
                'age': 0.0}]
    t.lock_message('dev', msg(2, 'waiting', 'acq', waiters=1, queue=waiting), 101.0)
    # the agent says how long each waiter has waited (age), on its own clock
    t.lock_message('dev', msg(3, 'released', waiters=1, queue=[dict(waiting[0], age=2.0)]),
                   103.0)
    t.lock_message('dev', msg(4, 'acquired', 'set_heater', token=2), 103.0)
    t.lock_message('dev', msg(5, 'released', token=2), 103.5)
    out = t.period.take('dev/hw')
    assert (out['holds'], out['waits']) == (2, 2)
    assert (out['hold_p50_s'], out['hold_p99_s']) == (0.5, 3.0)
    assert (out['wait_p50_s'], out['wait_p99_s']) == (0.0, 2.0)
