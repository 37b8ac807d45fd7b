"""Lock status values (pure): describe() and the one refusal text."""
import pytest

from ocs_locking.status import HolderInfo, LockCounters, LockEvent, LockStatus, WaiterInfo


def status(holder=True, waiters=1, closed=False, job='acq', session_id=12):
    h = HolderInfo(job=job, op=job, session_id=session_id, thread='t', since=1.0,
                   held_for=3.44, token=4) if holder else None
    w = tuple(WaiterInfo(job='task', op='task', session_id=None, since=2.0, waited_for=1.0,
                         reactor=False) for _ in range(waiters))
    return LockStatus(name='hw', holder=h, waiters=w, counters=LockCounters(), closed=closed)


def test_LockStatus_describe_names_holder_session_time_and_waiters():
    """When a lock is held, describe() names the holder and its session, how
    long, and the waiters; a free or closed lock says so."""
    assert status().describe() == "'hw' held by 'acq' (session 12) for 3.4 s; 1 waiting"
    assert status(holder=False, waiters=0).describe() == "'hw' is free; 0 waiting"
    assert status(job=None, session_id=None, closed=True).describe() == \
        "'hw' held by an unnamed job for 3.4 s; 1 waiting; closed"


def test_LockStatus_refusal_is_the_standard_refusal_line():
    """When an operation could not get the lock, refusal() is the one line
    every locked operation returns: holder, held-for, waiters."""
    assert status().refusal() == \
        "Could not acquire lock 'hw': held by 'acq' (session 12) for 3.4 s; 1 waiting"
    assert status(holder=False).refusal(2.5) == \
        "Could not acquire lock 'hw' within 2.5 s; it is free now, try again"
    assert status(closed=True).refusal() == \
        "Could not acquire lock 'hw': it is closed (the agent is shutting down)"


def test_LockStatus_describe_and_refusal_word_a_hold_alike():
    """When both are shown, the hold reads the same in describe() and in
    refusal() (one wording, not two copies)."""
    st = status(waiters=3)
    assert st.refusal().endswith(st.describe()[len("'hw' "):])


def test_status_values_are_frozen_and_as_dict_is_the_wire_form():
    """When a status or an event is made, it cannot be changed, and as_dict()
    gives plain dicts."""
    st = status()
    with pytest.raises(AttributeError):
        st.name = 'other'
    assert st.as_dict()['holder']['job'] == 'acq' and st.held
    ev = LockEvent(lock='hw', event='acquired', job='acq', op='acq', session_id=1, since=1.0,
                   waiters=0, token=1, seq=1)
    assert ev.as_dict()['event'] == 'acquired'
