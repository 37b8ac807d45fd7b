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


class StubSiteLock:
    """A held site lock: guard() records the timeout it was given and yields
    ``token``, or raises ``refuse``."""
    resource = 'lab/bridge'

    def __init__(self, token, refuse=None):
        self.token, self.refuse, self.timeouts = token, refuse, []

    def check(self, timeout=None):
        self.timeouts.append(timeout)
        if self.refuse is not None:
            raise self.refuse
        return self.token

    def guard(self, timeout=None):
        import contextlib
        return contextlib.nullcontext(self.check(timeout))


def test_SimulatedDeviceAgent_site_locked_commands_carry_timeout_and_token(
        reactor_thread, sim, server):
    """When the agent holds its site lock, each device command's guard gets the
    driver's timeout and the command carries the lease's fencing token to the
    device (thread and reactor paths); the token is not left on the driver."""
    sim.site_lock = StubSiteLock(42)
    assert run_op(sim.set_heater, {'value': 7})[0] is True
    assert server.stats()['fence'] == 42
    sim.site_lock.token = 43
    ok, msg = reactor_thread.run_op(sim.get_reading, {'channel': 1})
    assert ok, msg
    assert server.stats()['fence'] == 43
    assert sim.site_lock.timeouts == [1.0, 1.0] and sim.driver.token is None


def test_SimulatedDeviceAgent_command_that_would_outlast_the_lease_is_not_sent(sim, server):
    """When the guard refuses because the command's timeout does not fit in
    what is left of the lease, set_heater answers 'Site lock: ...' and the
    device sees no command."""
    from ocs_locking.errors import LeaseTooShort
    sim.site_lock = StubSiteLock(5, LeaseTooShort('0.40 s left of the lease on lab/bridge'))
    before = server.stats()['commands']
    ok, msg = run_op(sim.set_heater, {'value': 7})
    assert (ok, msg) == (False, 'Site lock: 0.40 s left of the lease on lab/bridge')
    assert server.stats()['commands'] == before


def test_SimulatedDeviceAgent_stale_token_is_refused_by_the_device(sim, server):
    """When the device has seen a higher token than the agent's, the device
    itself refuses the command: 'Device refused: stale fencing token ...'."""
    server.device.fenced(100)
    sim.site_lock = StubSiteLock(99)
    ok, msg = run_op(sim.set_heater, {'value': 7})
    assert (ok, msg) == (False, 'Device refused: stale fencing token 99: this device has '
                                'seen token 100')
    assert server.stats()['stale'] == 1 and server.device.heater == 0.0


def test_shift_wall_clock_moves_time_time_but_not_monotonic(monkeypatch):
    """When the testing-only wall-clock offset is applied, time.time() runs
    that far off and time.monotonic() does not move."""
    import time
    from ocs_locking.agents.simulated_device import agent as agent_mod
    monkeypatch.setattr(time, 'time', time.time)        # restored after the test
    mono = time.monotonic
    real = agent_mod.shift_wall_clock(-30.0)
    assert round(real() - time.time()) == 30
    assert time.monotonic is mono


def test_main_refuses_a_wall_clock_offset_out_of_bounds(tmp_path):
    """When --testing-wall-clock-offset is beyond a year (or not finite), the
    agent exits (status 2) with one line naming the option, before joining
    anything (run as a process: main() starts txaio's logging)."""
    import subprocess
    import sys
    import yaml
    site = tmp_path / 'site.yaml'
    site.write_text(yaml.safe_dump({
        'hub': {'wamp_server': 'ws://127.0.0.1:1/ws', 'wamp_http': 'http://127.0.0.1:1/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {'h': {'agent-instances': [
            {'agent-class': 'SimulatedDeviceAgent', 'instance-id': 'x', 'arguments': []}]}}}))
    for bad in ('1e9', 'nan'):
        proc = subprocess.run(
            [sys.executable, '-c', 'import sys; from ocs_locking.agents.simulated_device.agent '
                                   'import main; main(sys.argv[1:])',
             '--site-file', str(site), '--site-host', 'h', '--instance-id', 'x',
             '--testing-wall-clock-offset', bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        out = proc.stdout + proc.stderr
        assert f'error: --testing-wall-clock-offset must be within +-3.2e+07 s, not ' \
               f'{float(bad)}' in out, out
