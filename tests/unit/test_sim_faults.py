"""The simulated device's fault settings (faults.py), pure."""
import pytest

from ocs_locking.agents.simulated_device.faults import Faults


def test_Faults_slow_and_dropnext_are_set_and_cleared_by_off():
    """When SLOW and DROPNEXT are applied, they show; OFF clears both."""
    f = Faults()
    assert f.apply('SLOW', 1.5) is None and f.slow == 1.5
    assert f.apply('DROPNEXT') is None and f.drop_next
    f.apply('OFF')
    assert (f.slow, f.drop_next) == (0.0, False)


def test_Faults_dropnext_is_taken_once():
    """When DROPNEXT is armed, take_drop_next is true once, then false."""
    f = Faults(drop_next=True)
    assert [f.take_drop_next(), f.take_drop_next()] == [True, False]


def test_Faults_drop_asks_the_server_to_close_every_connection():
    """When DROP is applied, the answer is 'drop-all' and no setting changes."""
    f = Faults(slow=2)
    assert f.apply('DROP') == 'drop-all'
    assert (f.slow, f.drop_next) == (2.0, False)


@pytest.mark.parametrize('slow', [-1, 601, True, '1'])
def test_Faults_bad_initial_slow_is_refused(slow):
    """When the initial SLOW is not 0..600 s, Faults is not created."""
    with pytest.raises(ValueError, match=r'^slow must be a number of seconds in 0\.\.600'):
        Faults(slow=slow)
