"""The simulated device's model (device.py), with no sockets: readings, the
heater, the one bus and its collision counter, settings checks."""
import math
import threading

import pytest

from ocs_locking.agents.simulated_device.device import BusCollision, SimulatedThermometry

from ..support import WAIT

#: The fencing and bus counters of a device no token has reached, idle.
IDLE = {'stale': 0, 'fence': 0, 'busy': 0}


def expected(ch, heater, t):
    return 0.1 + 0.01 * ch + 0.002 * heater + 0.001 * math.sin(t / 10 + ch)


def test_SimulatedThermometry_read_all_channels_follows_the_model_at_the_clock():
    """When every channel is read, each follows the model at the injected
    clock's time, in channel order, and one command is counted."""
    dev = SimulatedThermometry(channels=3, latency=0, clock=lambda: 42.0)
    reading = dev.read()
    assert reading['timestamp'] == 42.0
    assert list(reading['channels']) == ['ch00', 'ch01', 'ch02']
    for c, value in enumerate(reading['channels'].values()):
        assert value == pytest.approx(expected(c, 0, 42.0))
    assert dev.stats() == {'commands': 1, 'collisions': 0, **IDLE}


def test_SimulatedThermometry_heater_warms_every_channel():
    """When the heater is set, get_heater returns it and every channel reads
    warmer by 0.002 K per percent."""
    dev = SimulatedThermometry(channels=2, latency=0, clock=lambda: 0.0)
    cold = dev.read(1)['channels']['ch01']
    assert dev.set_heater(50) == 50.0 and dev.get_heater() == 50.0
    assert dev.read(1)['channels']['ch01'] == pytest.approx(cold + 0.1)


def test_SimulatedThermometry_identify_names_model_serial_and_version():
    """When identified, the device gives model, serial and firmware version."""
    assert SimulatedThermometry(serial='SN42', latency=0).identify() == \
        'OCSLOCK,SIMTHERM,SN42,1.0'


def test_SimulatedThermometry_second_command_during_one_is_a_collision():
    """When a command arrives while another holds the bus, it raises
    BusCollision and is counted; the first one completes."""
    entered, release = threading.Event(), threading.Event()

    def wait(seconds):          # the first command's latency: held until released
        entered.set()
        assert release.wait(WAIT)
    dev = SimulatedThermometry(latency=1, wait=wait)
    result = {}
    first = threading.Thread(target=lambda: result.update(idn=dev.identify()))
    first.start()
    assert entered.wait(WAIT)
    with pytest.raises(BusCollision, match='^bus collision: a command arrived while '
                                           'another was in progress$'):
        dev.read()
    release.set()
    first.join(WAIT)
    assert result['idn'].startswith('OCSLOCK,SIMTHERM')
    assert dev.stats() == {'commands': 1, 'collisions': 1, **IDLE}


def test_SimulatedThermometry_collision_counts_one_seen_outside_the_bus():
    """When the server reports a pipelined command, collision() counts it."""
    dev = SimulatedThermometry(latency=0)
    dev.collision()
    assert dev.stats() == {'commands': 0, 'collisions': 1, **IDLE}


def test_SimulatedThermometry_latency_is_spent_through_the_injected_wait():
    """When a command runs, its latency goes through wait() (the server's
    stop-aware wait), once per command."""
    waits = []
    dev = SimulatedThermometry(latency=0.25, wait=waits.append)
    dev.read()
    dev.set_heater(1)
    assert waits == [0.25, 0.25]


@pytest.mark.parametrize('call, complaint', [
    (lambda d: d.read(4), r'^channel must be an int in 0\.\.3, not 4$'),
    (lambda d: d.read(True), r'^channel must be an int in 0\.\.3, not True$'),
    (lambda d: d.set_heater(101), r'^heater value must be a number in 0\.\.100, not 101$'),
    (lambda d: d.set_heater('5'), r"^heater value must be a number in 0\.\.100, not '5'$"),
])
def test_SimulatedThermometry_bad_arguments_raise_before_the_bus(call, complaint):
    """When a command's argument is out of range, ValueError names it and
    nothing reaches the bus."""
    dev = SimulatedThermometry(latency=0)
    with pytest.raises(ValueError, match=complaint):
        call(dev)
    assert dev.stats() == {'commands': 0, 'collisions': 0, **IDLE} and dev.heater == 0.0


@pytest.mark.parametrize('kwargs, complaint', [
    ({'channels': 0}, r'^channels must be an int in 1\.\.64'),
    ({'channels': 65}, r'^channels must be an int in 1\.\.64'),
    ({'latency': -1}, r'^latency must be a number of seconds in 0\.\.10'),
    ({'latency': True}, r'^latency must be a number of seconds in 0\.\.10'),
    ({'serial': 'a,b'}, r'^serial must be printable ASCII without commas or spaces'),
    ({'serial': ''}, r'^serial must be printable ASCII without commas or spaces'),
])
def test_SimulatedThermometry_bad_settings_raise_value_error(kwargs, complaint):
    """When a setting is out of range, the device is not created."""
    with pytest.raises(ValueError, match=complaint):
        SimulatedThermometry(**kwargs)


# -- fencing tokens ------------------------------------------------------------------

def test_SimulatedThermometry_refuses_a_token_below_the_highest_seen():
    """When a command carries token 7 and another then carries 6, the second
    is refused as stale (StaleToken naming both tokens) before it touches the
    bus; equal and higher tokens, and commands without one, are served."""
    from ocs_locking.agents.simulated_device.device import StaleToken
    dev = SimulatedThermometry(latency=0)
    assert dev.set_heater(5, token=7) == 5.0
    with pytest.raises(StaleToken, match=r'^stale fencing token 6: this device has seen '
                                         r'token 7$'):
        dev.set_heater(9, token=6)
    assert dev.heater == 5.0
    assert dev.get_heater(token=7) == 5.0
    dev.identify(token=8)
    dev.read(0)                         # no token: not fenced
    assert dev.stats() == {'commands': 4, 'collisions': 0, 'stale': 1, 'fence': 8,
                           'busy': 0}


def test_SimulatedThermometry_bad_token_is_refused_in_one_line():
    """When a token is not an int in 0..2**63-1, the command is refused with
    ValueError and nothing changes."""
    dev = SimulatedThermometry(latency=0)
    for bad in (-1, 2 ** 63, 1.5, True, '3'):
        with pytest.raises(ValueError, match=r'^token must be an int in 0\.\.2\*\*63-1, not '):
            dev.identify(token=bad)
    assert dev.stats() == {'commands': 0, 'collisions': 0, **IDLE}


def test_SimulatedThermometry_hold_keeps_the_bus_busy_longer():
    """When hold() says 2.5, a command's wait is its latency + 2.5 s and the
    bus reads busy meanwhile."""
    seen = []
    dev = SimulatedThermometry(latency=0.5, hold=lambda: 2.5,
                               wait=lambda s: seen.append((s, dev.stats()['busy'])))
    dev.identify()
    assert seen == [(3.0, 1)] and dev.stats()['busy'] == 0
