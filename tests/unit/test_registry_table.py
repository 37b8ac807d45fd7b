"""The ownership table (pure): applying lock messages and heartbeats."""
import pytest

from ocs_locking.ownership import BadLockMessage, OwnershipTable


def msg(event, seq, job=None, token=0, waiters=0, since=None, lock='hw', boot=1.0, **kw):
    m = {'lock': lock, 'event': event, 'job': job, 'op': job, 'session_id': None,
         'since': since, 'waiters': waiters, 'token': token, 'seq': seq, 'boot': boot}
    m.update(kw)
    return m


@pytest.fixture
def table():
    return OwnershipTable(expiry=5.0)


def test_OwnershipTable_acquired_then_released_tracks_the_holder(table):
    """When an agent reports acquired then released, its row shows the
    holder, then nobody; keyed <instance-id>/<lock>."""
    [row] = table.lock_message('dev-1', msg('acquired', 1, job='acq', token=1, since=10.0), 11.0)
    assert (row['lock'], row['agent'], row['job'], row['since'], row['alive']) == \
        ('dev-1/hw', 'dev-1', 'acq', 10.0, True)
    [row] = table.lock_message('dev-1', msg('released', 2, job='acq', token=1), 12.0)
    assert row['job'] is None and row['since'] is None
    assert row['longest_hold'] == pytest.approx(2.0)
    assert table.seq == 2


def test_OwnershipTable_waiting_and_gave_up_change_only_waiters(table):
    """When a waiter queues or gives up, the holder stays and the waiter count
    and timeout count follow."""
    table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=1.0), 1.0)
    [row] = table.lock_message('d', msg('waiting', 2, job='task', waiters=1), 2.0)
    assert (row['job'], row['waiters']) == ('acq', 1)
    [row] = table.lock_message('d', msg('gave_up', 3, job='task', waiters=0), 3.0)
    assert (row['job'], row['waiters'], row['timed_out']) == ('acq', 0, 1)


def test_OwnershipTable_snapshot_sets_the_whole_state(table):
    """When a snapshot arrives (e.g. after a registry restart), the row takes
    its state as it is."""
    [row] = table.lock_message('d', msg('snapshot', 40, job='set_heater', token=7,
                                        waiters=2, since=5.0), 6.0)
    assert (row['job'], row['token'], row['waiters']) == ('set_heater', 7, 2)


def test_OwnershipTable_drops_out_of_order_messages(table):
    """When a message's seq is not newer than the last from that agent, it is
    dropped and counted."""
    table.lock_message('d', msg('acquired', 5, job='a', token=1, since=1.0), 1.0)
    assert table.lock_message('d', msg('released', 4, token=1), 2.0) == []
    assert table.dropped == 1
    assert table.rows['d/hw']['job'] == 'a'


def test_OwnershipTable_restarted_agent_starts_a_new_seq(table):
    """When an agent restarts (new boot), its low seq numbers are accepted."""
    table.lock_message('d', msg('acquired', 500, job='a', token=9, since=1.0), 1.0)
    [row] = table.lock_message('d', msg('snapshot', 1, job=None, boot=2.0), 2.0)
    assert row['job'] is None


def test_OwnershipTable_marks_silent_agents_stale_and_revives_them(table):
    """When an agent's heartbeats stop for longer than the expiry its locks
    are marked stale; its next heartbeat marks them alive again."""
    table.lock_message('d', msg('acquired', 1, job='a', token=1, since=0.0), 0.0)
    table.heartbeat('d', 1.0)
    assert table.expire(5.9) == []
    [row] = table.expire(6.1)
    assert row['alive'] is False
    [row] = table.heartbeat('d', 7.0)
    assert row['alive'] is True


def test_OwnershipTable_rows_are_only_ever_about_the_senders_locks(table):
    """When an agent's message names a lock like 'other/hw', it is refused:
    a lock name may not contain '/', so no agent can write another's row."""
    with pytest.raises(BadLockMessage, match=r'^lock must be a name of 1-64 letters'):
        table.lock_message('evil', msg('acquired', 1, lock='sim-device-1/hw'), 1.0)
    assert table.rows == {}


BAD = [
    ('not a dict', r'^a lock message must be a dict, not str$'),
    ({'event': 'acquired'}, r'^lock must be a name'),
    (msg('exploded', 1), r'^event must be one of waiting, acquired, released'),
    (msg('acquired', -1), r'^seq must be an integer >= 0, not -1$'),
    (msg('acquired', 1, token='7'), r"^token must be an integer >= 0, not '7'$"),
    (msg('acquired', 1, waiters=True), r'^waiters must be an integer >= 0, not True$'),
    (msg('acquired', 1, since=float('nan')), r'^since must be a time in seconds or null'),
    (msg('acquired', 1, job=['x']), r'^job must be a string of at most 200 characters'),
    (msg('acquired', 1, job='x' * 201), r'^job must be a string of at most 200'),
    (msg('acquired', 1, session_id=-3), r'^session_id must be an integer >= 0'),
]


@pytest.mark.parametrize('bad,error', BAD, ids=[e for _, e in BAD])
def test_OwnershipTable_malformed_message_raises_and_changes_nothing(table, bad, error):
    """When a message breaks the contract, BadLockMessage says which field,
    and the table is unchanged."""
    table.lock_message('d', msg('acquired', 1, job='a', token=1, since=1.0), 1.0)
    before = (table.snapshot(), table.seq)
    with pytest.raises(BadLockMessage, match=error):
        table.lock_message('d', bad, 2.0)
    assert (table.snapshot(), table.seq) == before


def test_OwnershipTable_bad_expiry_raises():
    """When expiry is not a positive number of seconds, ValueError says so."""
    with pytest.raises(ValueError, match=r'^expiry must be seconds in \(0, 3600\], not 0$'):
        OwnershipTable(expiry=0)
