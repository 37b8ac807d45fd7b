"""SimulatedDeviceAgent without a router: the real TCP device simulator, the
agent class on a mocked OCSAgent, operations run by ocs_locking.testing."""
import pytest

from ocs_locking.agents.simulated_device.agent import SimulatedDeviceAgent
from ocs_locking.agents.simulated_device.server import DeviceServer
from ocs_locking.testing import LockHog, LockProbe, mock_agent, run_op, start_op


@pytest.fixture
def server():
    with DeviceServer(port=0, latency=0.002, serial='unit') as s:
        yield s


@pytest.fixture
def sim(server):
    agent = SimulatedDeviceAgent(mock_agent(), port=server.port, timeout=1.0)
    yield agent
    agent.shutdown()


def test_SimulatedDeviceAgent_task_gets_the_lock_within_a_sample_while_acq_runs(sim, server):
    """When acq samples at 10 Hz and set_heater runs repeatedly, each task gets
    the lock within one sample period and the device never sees a collision."""
    probe = LockProbe(sim.lock)
    acq = start_op(sim.acq, {'rate': 10})
    probe.wait_for('acquired', job='acq')
    for value in (1, 2, 3, 4, 5):
        ok, msg = run_op(sim.set_heater, {'value': value})
        assert ok, msg
        probe.assert_acquired_within('set_heater', 0.1)
    assert acq.stop(sim._stop_acq) == (True, 'Requested stop.')
    ok, msg = acq.result()
    assert ok and msg.startswith('Stopped on request after ')
    assert server.stats()['collisions'] == 0
    assert acq.session.data['device'] == 'online'


def test_SimulatedDeviceAgent_acq_test_mode_takes_one_sample(sim):
    """When acq runs with test_mode, it takes one sample and ends cleanly."""
    ok, msg = run_op(sim.acq, {'test_mode': True})
    assert (ok, msg) == (True, 'Ended after 1 samples.')
    assert sim.lock.status().holder is None


def test_SimulatedDeviceAgent_get_reading_runs_on_the_reactor(reactor_thread, sim):
    """When get_reading runs as a reactor operation, it waits through the
    lock's Deferred path and reads through the device worker."""
    ok, msg = reactor_thread.run_op(sim.get_reading, {'channel': 2})
    assert (ok, msg) == (True, 'Read 1 channel(s).')
    ok, msg = reactor_thread.run_op(sim.get_reading, {'channel': 99})
    assert ok is False and msg.startswith('Device refused: ')


def test_SimulatedDeviceAgent_device_offline_is_not_lock_contention(sim, server):
    """When the device is gone, a task gets the lock and then reports
    'Device offline', not a lock refusal."""
    server.stop()
    ok, msg = run_op(sim.set_heater, {'value': 3})
    assert ok is False
    assert msg.startswith(f'Device offline: device 127.0.0.1:{server.port} offline: ')
    ok, msg = run_op(sim.reconnect)
    assert ok is False and msg.startswith('Device offline: ')


def test_SimulatedDeviceAgent_refusal_names_the_holder(sim):
    """When another operation keeps the lock past 3 s, set_heater returns the
    standard refusal naming it."""
    with LockHog(sim.lock, job='manual') as hog:
        hog.wait_holding()
        ok, msg = run_op(sim.set_heater, {'value': 3})
    assert ok is False
    assert msg.startswith("Could not acquire lock 'hw': held by 'manual' for 3.")


def test_SimulatedDeviceAgent_shutdown_ends_acq_and_waiting_tasks(sim):
    """When the agent shuts down while acq waits to take the lock back, acq
    ends at once and later calls are refused with a clear message."""
    probe = LockProbe(sim.lock)
    acq = start_op(sim.acq, {'rate': 10})
    probe.wait_for('acquired', job='acq')
    with LockHog(sim.lock, job='long-task') as hog:
        hog.wait_holding()
        probe.wait_for('waiting', job='acq')
        sim.shutdown()
        ok, msg = acq.result()
    assert ok is True
    assert msg.startswith('Stopped after ') and msg.endswith(
        "lock 'hw' was closed (the agent is shutting down).")
    ok, msg = run_op(sim.set_heater, {'value': 1})
    assert (ok, msg) == (False, "Could not acquire lock 'hw': it is closed "
                                "(the agent is shutting down)")
