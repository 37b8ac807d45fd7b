"""The ownership table (pure): applying lock messages and heartbeats."""
import pytest

from ocs_locking.ownership import (MAX_COUNT, MAX_TIME, MAX_WAITERS, SEQ_JUMP, BadLockMessage,
                                    OwnershipTable, Refused)
from ocs_locking.wire import ROW_KEYS


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
    [row] = table.lock_message('dev-1', msg('acquired', 1, job='acq', token=1, since=10.0,
                                            age=1.0), 11.0)
    assert (row['lock'], row['agent'], row['job'], row['since'], row['alive']) == \
        ('dev-1/hw', 'dev-1', 'acq', 10.0, True)
    [row] = table.lock_message('dev-1', msg('released', 2, job='acq', token=1), 12.0)
    assert row['job'] is None and row['since'] is None and row['held_for'] is None
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
    (msg('acquired', -1), r'^seq must be an integer 0\.\.9007199254740991, not -1$'),
    (msg('acquired', 1, token='7'), r"^token must be an integer 0\.\.\d+, not '7'$"),
    (msg('acquired', 1, token=2 ** 100), r'^token must be an integer 0\.\.9007199254740991, '
                                          r'not 1267650600228229401496703205376$'),
    (msg('acquired', 1, waiters=True), r'^waiters must be an integer 0\.\.1000000, not True$'),
    (msg('acquired', 1, waiters=10 ** 30), r'^waiters must be an integer 0\.\.1000000, not '
                                           r'1000000000000000000000000000000$'),
    (msg('acquired', 1, since=float('nan')), r'^since must be a Unix time in seconds '
                                             r'\(0\.\.1e\+10\) or null, not nan$'),
    (msg('acquired', 1, since=-1e300), r'^since must be a Unix time in seconds '
                                       r'\(0\.\.1e\+10\) or null, not -1e\+300$'),
    (msg('acquired', 1, boot=1e300), r'^boot must be a Unix time'),
    (msg('acquired', 1, job=['x']), r'^job must be a string of at most 200 characters'),
    (msg('acquired', 1, job='x' * 201), r'^job must be a string of at most 200'),
    (msg('acquired', 1, session_id=-3), r'^session_id must be an integer 0\.\.\d+, not -3$'),
    (msg('snapshot', 1, folded_acquired=2 ** 60), r'^folded_acquired must be an integer'),
    (msg('acquired', 1, waiters=1, queue={'job': 'x'}), r'^queue must be a list of at most 8 '
                                                         r'waiters \(and no more than waiters, '
                                                         r"1\), not \{'job': 'x'\}$"),
    (msg('acquired', 1, waiters=20, queue=[{}] * 9), r'^queue must be a list of at most 8'),
    (msg('acquired', 1, waiters=1, queue=[{}, {}]), r'no more than waiters, 1\)'),
    (msg('acquired', 1, waiters=1, queue=['x']), r"^queue\[0\] must be a dict, not 'x'$"),
    (msg('acquired', 1, waiters=2, queue=[{}, {'job': 'x' * 201}]),
     r'^queue\[1\]\.job must be a string of at most 200 characters'),
    (msg('acquired', 1, waiters=1, queue=[{'session_id': -1}]),
     r'^queue\[0\]\.session_id must be an integer'),
    (msg('acquired', 1, waiters=1, queue=[{'since': float('inf')}]),
     r'^queue\[0\]\.since must be a Unix time'),
    (msg('acquired', 1, waiters=1, queue=[{'age': -1}]), r'^queue\[0\]\.age must be a duration'),
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
    assert table.dropped == 1


def test_OwnershipTable_bounds_are_inclusive():
    """When fields sit exactly on their bounds, the message is accepted."""
    table = OwnershipTable()
    [row] = table.lock_message('d', msg('acquired', MAX_COUNT, job='a', token=MAX_COUNT,
                                        waiters=MAX_WAITERS, since=MAX_TIME), 1.0)
    assert (row['token'], row['waiters'], row['since']) == (MAX_COUNT, MAX_WAITERS, MAX_TIME)


def test_OwnershipTable_bad_expiry_raises():
    """When expiry is not a positive number of seconds, ValueError says so."""
    with pytest.raises(ValueError, match=r'^expiry must be seconds in \(0, 3600\], not 0$'):
        OwnershipTable(expiry=0)


def test_OwnershipTable_bad_forget_raises():
    """When forget is shorter than expiry, ValueError says so."""
    with pytest.raises(ValueError, match=r'^forget must be seconds in \[expiry, 30 days\], '
                                         r'not 1$'):
        OwnershipTable(expiry=5, forget=1)


def test_OwnershipTable_rows_have_exactly_the_wire_row_keys(table):
    """When a row is made, its keys are wire.ROW_KEYS."""
    [row] = table.lock_message('d', msg('acquired', 1, job='a', token=1, since=1.0), 1.0)
    assert sorted(row) == sorted(ROW_KEYS)


def lend(table, now, seq, lender='acq', borrower='task', token=1):
    """The messages of one hand-over: the lender releases with the borrower
    waiting, the borrower holds, releases with the lender waiting, the lender
    re-takes. Returns the last row."""
    table.lock_message('d', msg('waiting', seq, job=borrower, waiters=1), now)
    table.lock_message('d', msg('released', seq + 1, job=lender, token=token, waiters=1), now)
    [row] = table.lock_message('d', msg('acquired', seq + 2, job=borrower, token=token + 1,
                                        since=now), now)
    assert row['held_since'] == now         # the borrower's own hold
    table.lock_message('d', msg('released', seq + 3, job=borrower, token=token + 1,
                                waiters=1), now + 0.1)
    [row] = table.lock_message('d', msg('acquired', seq + 4, job=lender, token=token + 2,
                                        since=now + 0.1), now + 0.1)
    return row


def test_OwnershipTable_held_since_survives_a_lend_to_a_waiting_task(table):
    """When an acquisition loop lends the lock to a waiting task and re-takes
    it, held_since stays at its first grant (since is the latest grant)."""
    table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=10.0), 10.0)
    row = lend(table, 50.0, 2)
    assert (row['job'], row['since'], row['held_since']) == ('acq', 50.1, 10.0)
    row = lend(table, 90.0, 7, token=3)
    assert (row['since'], row['held_since']) == (90.1, 10.0)


def test_OwnershipTable_held_since_survives_folded_events(table):
    """When the releases of a hand-over were folded into snapshots (the
    reporter's rate limit), the lender re-taking the lock keeps its first grant."""
    table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=10.0), 10.0)
    table.lock_message('d', msg('snapshot', 2, job='task', token=2, since=50.0), 50.0)
    [row] = table.lock_message('d', msg('snapshot', 3, job='acq', token=3, since=50.1), 50.1)
    assert (row['job'], row['held_since']) == ('acq', 10.0)


def test_OwnershipTable_held_since_restarts_after_a_real_release(table):
    """When the holder releases with nobody waiting, its next grant is a new
    hold: held_since is that grant."""
    table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=10.0), 10.0)
    [row] = table.lock_message('d', msg('released', 2, job='acq', token=1, waiters=0), 20.0)
    assert row['held_since'] is None
    [row] = table.lock_message('d', msg('acquired', 3, job='acq', token=2, since=30.0), 30.0)
    assert row['held_since'] == 30.0


def test_OwnershipTable_held_since_is_the_borrowers_own_when_another_takes_over(table):
    """When the lock passes to another holder that is not the lender, that
    holder's held_since is its own grant."""
    table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=10.0), 10.0)
    table.lock_message('d', msg('released', 2, job='acq', token=1, waiters=1), 20.0)
    [row] = table.lock_message('d', msg('acquired', 3, job='task', token=2, since=20.0), 20.0)
    assert row['held_since'] == 20.0
    table.lock_message('d', msg('released', 4, job='task', token=2, waiters=1), 21.0)
    [row] = table.lock_message('d', msg('acquired', 5, job='other', token=3, since=21.0), 21.0)
    assert row['held_since'] == 21.0


def test_OwnershipTable_forgets_an_agent_holding_nothing_when_it_goes_stale(table):
    """When an agent that holds none of its locks (closed, or released as a
    clean stop does) goes stale, its rows are removed at once; the rows of
    a stale agent still holding a lock (a crash) stay."""
    table.lock_message('closed', msg('acquired', 1, job='a', token=1, since=0.0), 0.0)
    table.lock_message('closed', msg('closed', 2, token=1), 0.0)
    table.lock_message('stopped', msg('acquired', 1, job='a', token=1, since=0.0), 0.0)
    table.lock_message('stopped', msg('released', 2, job='a', token=1), 0.0)
    table.lock_message('crashed', msg('acquired', 1, job='a', token=1, since=0.0), 0.0)
    assert table.forget_silent(1.0) == []       # still alive
    table.expire(6.0)
    seq = table.seq
    assert table.forget_silent(6.0) == ['closed/hw', 'stopped/hw']
    assert set(table.rows) == {'crashed/hw'} and set(table.agents) == {'crashed'}
    assert table.seq == seq + 1


def test_OwnershipTable_forgets_a_silent_agent_after_forget_seconds():
    """When an agent has been silent for longer than forget, its rows are
    removed; a heartbeat before that keeps them."""
    table = OwnershipTable(expiry=5.0, forget=60.0)
    table.lock_message('d', msg('acquired', 1, job='a', token=1, since=0.0), 0.0)
    table.expire(6.0)
    assert table.forget_silent(6.0) == []       # it still holds: stale, kept
    assert table.forget_silent(60.0) == []
    assert table.forget_silent(60.1) == ['d/hw']
    assert table.rows == {} and table.agents == {}


def test_OwnershipTable_gives_copies_and_counts_drops_through_methods(table):
    """When rows are read with rows_by_key or snapshot they are copies, and
    drops counted from outside go through count_dropped."""
    table.lock_message('d', msg('acquired', 1, job='a', token=1, since=1.0), 1.0)
    copy = table.rows_by_key()
    copy['d/hw']['job'] = 'changed'
    table.snapshot()[0]['job'] = 'changed'
    assert table.rows['d/hw']['job'] == 'a'
    table.count_dropped(2)
    assert table.dropped == 2
    with pytest.raises(AttributeError):
        table.dropped = 0
    assert table.agents_seen() == {'d': {'alive': True, 'last_seen': 1.0}}


def test_OwnershipTable_held_for_never_compares_the_agents_clock_with_its_own(table):
    """When the agent's clock is far from the registry's (since = 1e9 on the
    agent, now = 500 here), held_for and longest_hold come from the
    message's age and the table's own clock, never from since."""
    [row] = table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=1e9,
                                        age=0.5), 500.0)
    assert row['held_for'] == pytest.approx(0.5)
    assert table.snapshot(now=510.0)[0]['held_for'] == pytest.approx(10.5)
    assert table.held_for(520.0) == {'d/hw': pytest.approx(20.5)}
    # a snapshot of the same hold, later: counted from the age it reports
    [row] = table.lock_message('d', msg('snapshot', 2, job='acq', token=1, since=1e9,
                                        age=30.5), 530.0)
    assert row['held_for'] == pytest.approx(30.5)
    [row] = table.lock_message('d', msg('released', 3, job='acq', token=1), 531.0)
    assert row['longest_hold'] == pytest.approx(31.5) and table.held_for(532.0) == {}


def test_OwnershipTable_held_for_counts_from_the_first_grant_of_a_lent_hold(table):
    """When an acquisition loop lends the lock and re-takes it, held_for
    counts from its first grant, on the table's clock."""
    table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=10.0, age=0.0), 10.0)
    row = lend(table, 50.0, 2)
    assert row['held_for'] == pytest.approx(40.1)


def test_OwnershipTable_refuses_a_bad_age(table):
    """When a message's age is not a duration, it is dropped with a one-line
    error naming age, and the table is unchanged."""
    for bad in (-1.0, float('nan'), 'soon', True, 1e300):
        with pytest.raises(BadLockMessage, match=r'^age must be a duration'):
            table.lock_message('d', msg('acquired', 1, job='acq', token=1, since=1.0,
                                        age=bad), 2.0)
    assert table.snapshot() == [] and table.dropped == 5


# -- seq streams: no single message makes later genuine ones be dropped ------------

def genuine(table, first, n, boot=1.0):
    """n genuine messages seq first..first+n-1; how many the table took."""
    taken = 0
    for seq in range(first, first + n):
        before = table.dropped
        table.lock_message('dev-1', msg('acquired', seq, job='acq', token=seq, boot=boot), 1.0)
        taken += table.dropped == before
    return taken


@pytest.mark.parametrize('forged_seq', [10 ** 15, 3 + SEQ_JUMP, 3 + 5, 4, 1])
def test_OwnershipTable_one_forged_seq_never_drops_later_genuine_messages(table, forged_seq):
    """When one forged message with any seq (huge, just past the jump bound,
    a few ahead, the next one, an old one) comes between genuine messages
    of the same boot, every later genuine message is still taken."""
    assert genuine(table, 1, 3) == 3
    table.lock_message('dev-1', msg('acquired', forged_seq, job='forged', token=99), 1.0)
    assert genuine(table, 4, 20) == 20
    assert table.rows['dev-1/hw']['job'] == 'acq'


def test_OwnershipTable_a_huge_seq_jump_is_dropped_and_counted(table):
    """When a message moves seq further than SEQ_JUMP past every stream, it
    is dropped and counted as out of sequence; the row is unchanged."""
    genuine(table, 1, 2)
    table.lock_message('dev-1', msg('acquired', 2 ** 50, job='forged', token=9), 1.0)
    assert table.rows['dev-1/hw']['job'] == 'acq' and table.out_of_sequence == 1


def test_OwnershipTable_a_replayed_message_is_dropped(table):
    """When an earlier message of the same process comes again, the very
    same (a duplicate), it is dropped."""
    genuine(table, 1, 5)
    table.lock_message('dev-1', msg('released', 6, token=6), 1.0)
    table.lock_message('dev-1', msg('acquired', 3, job='acq', token=3), 1.0)
    assert table.rows['dev-1/hw']['job'] is None and table.out_of_sequence == 1


def test_OwnershipTable_a_new_boot_starts_a_new_seq_space(table):
    """When an agent restarts (a new boot), its low seq is taken; a forged
    boot does not block the genuine one either."""
    genuine(table, 1000, 3, boot=1.0)
    assert genuine(table, 1, 2, boot=2.0) == 2
    table.lock_message('dev-1', msg('acquired', 10 ** 12, job='forged', boot=3.0), 1.0)
    assert genuine(table, 3, 2, boot=2.0) == 2
    assert table.rows['dev-1/hw']['job'] == 'acq'


def test_OwnershipTable_a_real_gap_resyncs_on_the_second_message(table):
    """When the registry missed more than SEQ_JUMP messages of a live agent,
    the first message after the gap is dropped and the next one taken."""
    genuine(table, 1, 2)
    assert genuine(table, 3 + 2 * SEQ_JUMP, 3) == 2


# -- caps -----------------------------------------------------------------------------

def test_OwnershipTable_caps_locks_per_agent_rows_and_agents():
    """When an agent reports more locks than max_locks_per_agent, the table
    more rows than max_rows, or heartbeats come from more agents than
    max_agents, the extra is refused (Refused, by cause) and counted;
    what is held stays."""
    t = OwnershipTable(max_agents=3, max_locks_per_agent=2, max_rows=3)
    for i, lock in enumerate(('a', 'b')):
        t.lock_message('d1', msg('snapshot', i + 1, lock=lock), 1.0)
    with pytest.raises(Refused, match=r"^'d1' has 2 locks already \(--max-locks-per-agent 2\)"):
        t.lock_message('d1', msg('snapshot', 3, lock='c'), 1.0)
    t.lock_message('d1', msg('acquired', 4, lock='a', job='acq', token=1), 1.0)   # known row
    t.lock_message('d2', msg('snapshot', 1, lock='a'), 1.0)
    with pytest.raises(Refused, match=r'^the table has 3 rows already \(--max-rows 3\)'):
        t.lock_message('d2', msg('snapshot', 2, lock='b'), 1.0)
    t.heartbeat('d3', 1.0)
    with pytest.raises(Refused, match=r"^3 agents tracked already \(--max-agents 3\)"):
        t.heartbeat('made-up', 1.0)
    assert t.refused == {'max_locks_per_agent': 1, 'max_rows': 1, 'max_agents': 1}
    assert sorted(t.rows) == ['d1/a', 'd1/b', 'd2/a'] and t.rows['d1/a']['job'] == 'acq'
    assert sorted(t.agents) == ['d1', 'd2', 'd3']


@pytest.mark.parametrize('bad', [0, -1, 1.5, True, 10 ** 8])
def test_OwnershipTable_refuses_a_bad_cap(bad):
    """When a cap is not an integer 1..10**7, the table is not built."""
    with pytest.raises(ValueError, match='^max_rows must be an integer 1..10000000'):
        OwnershipTable(max_rows=bad)


# -- liveness from the bus -------------------------------------------------------------

def test_OwnershipTable_gone_marks_the_agents_locks_not_alive_at_once(table):
    """When the bus says an agent's session ended, its rows are not alive
    at once (no heartbeat expiry), others untouched; its next heartbeat
    (a new process) makes them alive again."""
    table.lock_message('d1', msg('acquired', 1, job='acq', token=1, since=1.0), 1.0)
    table.lock_message('d2', msg('acquired', 1, job='acq', token=1, since=1.0), 1.0)
    [row] = table.gone('d1', 1.1)
    assert (row['lock'], row['alive'], row['job']) == ('d1/hw', False, 'acq')
    assert table.rows['d2/hw']['alive'] is True
    assert table.gone('d1', 1.2) == [] and table.gone('unknown', 1.2) == []
    [row] = table.heartbeat('d1', 2.0)
    assert row['alive'] is True


def test_OwnershipTable_rows_carry_the_queue_in_order_with_waited_for(table):
    """When a message names its waiters, the row's queue lists them in order,
    each waited_for counted from its age on the table's own clock (the
    agent's since is for display only, never compared)."""
    queue = [{'job': 'set_heater', 'op': 'set_heater', 'session_id': 4, 'since': 50.0,
              'age': 2.0},
             {'job': 'get', 'op': 'get', 'session_id': None, 'since': 51.0, 'age': 1.0}]
    [row] = table.lock_message('d', msg('waiting', 1, job='get', waiters=2, queue=queue),
                               1000.0)
    assert row['queue'] == [
        {'job': 'set_heater', 'op': 'set_heater', 'session_id': 4, 'since': 50.0,
         'waited_for': 2.0},
        {'job': 'get', 'op': 'get', 'session_id': None, 'since': 51.0, 'waited_for': 1.0}]
    [later] = table.snapshot(1003.5)
    assert [w['waited_for'] for w in later['queue']] == [5.5, 4.5]
    # the hand-over empties it; an old agent's message (no queue) says []
    [row] = table.lock_message('d', msg('acquired', 2, job='set_heater', token=1, since=60.0,
                                        waiters=1, queue=queue[1:]), 1004.0)
    assert [w['job'] for w in row['queue']] == ['get']
    [row] = table.lock_message('d', msg('released', 3, job='set_heater', token=1), 1005.0)
    assert row['queue'] == [] and table.snapshot()[0]['queue'] == []


def test_OwnershipTable_a_bad_queue_keeps_the_rows_queue(table):
    """When a message's queue is malformed, the row keeps its queue as it was."""
    q = [{'job': 'a', 'op': 'a', 'session_id': 1, 'since': 1.0, 'age': 0.0}]
    table.lock_message('d', msg('waiting', 1, job='a', waiters=1, queue=q), 10.0)
    with pytest.raises(BadLockMessage, match=r'^queue\[1\]\.job'):
        table.lock_message('d', msg('waiting', 2, job='b', waiters=2,
                                    queue=q + [{'job': 7}]), 11.0)
    assert [w['job'] for w in table.snapshot()[0]['queue']] == ['a']
