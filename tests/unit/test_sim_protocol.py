"""The simulated device's line protocol (protocol.py), pure: parsing lines
into requests, answering device commands from the model, the STATS? line."""
import pytest

from ocs_locking.agents.simulated_device.device import SimulatedThermometry
from ocs_locking.agents.simulated_device.protocol import (ProtocolError, Request, answer,
                                                          parse, stats_line)


@pytest.mark.parametrize('raw, request_', [
    (b'*IDN?', Request('*IDN?')),
    (b'*idn?\r', Request('*IDN?')),
    (b'READ?', Request('READ?')),
    (b'read? 3', Request('READ?', 3)),
    (b'HEATER 12.5', Request('HEATER', 12.5)),
    (b'HEATER?', Request('HEATER?')),
    (b'STATS?', Request('STATS?')),
    (b'FAULT SLOW 1.5', Request('FAULT', ('SLOW', 1.5))),
    (b'fault dropnext', Request('FAULT', ('DROPNEXT', None))),
    (b'FAULT OFF', Request('FAULT', ('OFF', None))),
])
def test_parse_gives_the_request(raw, request_):
    """When a well-formed line is parsed (any case, optional CR), it gives the
    verb in upper case and its checked argument."""
    assert parse(raw, channels=4) == request_


def test_parse_marks_only_device_commands_as_on_the_bus():
    """When requests are parsed, only *IDN?, READ?, HEATER, HEATER? use the bus."""
    on_bus = {line: parse(line, 4).on_bus for line in
              (b'*IDN?', b'READ?', b'HEATER 1', b'HEATER?', b'STATS?', b'FAULT OFF')}
    assert on_bus == {b'*IDN?': True, b'READ?': True, b'HEATER 1': True, b'HEATER?': True,
                      b'STATS?': False, b'FAULT OFF': False}


@pytest.mark.parametrize('raw, reason', [
    (b'', r'^empty command$'),
    (b'FROB 1', r"^unknown command 'FROB': expected one of \*IDN\?, READ\?, HEATER, "
                r"HEATER\?, STATS\?, FAULT$"),
    (b'READ? 4', r'^bad channel 4: expected 0\.\.3$'),
    (b'READ? x', r"^bad channel 'x': expected an integer in 0\.\.3$"),
    (b'HEATER 101', r'^heater value 101 out of range 0\.\.100$'),
    (b'HEATER inf', r"^bad number 'inf' for heater value: must be finite$"),
    (b'FAULT SLOW 601', r'^FAULT SLOW seconds 601 out of range 0\.\.600$'),
    (b'FAULT MELT', r"^unknown fault 'MELT': expected SLOW <seconds>, HOLD <seconds>, DROP, DROPNEXT or OFF$"),
    (b'READ? \xff', r'^command is not ASCII$'),
    (b'HEATER ' + b'x' * 100, r"^bad number 'xxxx.*\.\.\.' for heater value$"),
])
def test_parse_bad_line_raises_naming_what_was_wrong(raw, reason):
    """When a line is malformed, ProtocolError says what (long tokens cut short)."""
    with pytest.raises(ProtocolError, match=reason):
        parse(raw, channels=4)


def test_answer_formats_device_replies_from_the_model():
    """When device commands are answered, readings have 6 decimals, HEATER
    says OK and HEATER? gives the value set."""
    dev = SimulatedThermometry(channels=2, latency=0, serial='SN1', clock=lambda: 0.0)
    assert answer(Request('*IDN?'), dev) == 'OCSLOCK,SIMTHERM,SN1,1.0'
    assert answer(Request('HEATER', 25.0), dev) == 'OK'
    assert answer(Request('HEATER?'), dev) == '25.000000'
    assert answer(Request('READ?', 1), dev) == '0.160841'
    assert answer(Request('READ?'), dev) == '0.150000,0.160841'
    assert dev.stats()['commands'] == 5


def test_answer_refuses_a_side_door_request():
    """When asked to answer STATS? (not a device command), answer raises."""
    with pytest.raises(ValueError, match=r'^STATS\? is not a device command$'):
        answer(Request('STATS?'), SimulatedThermometry(latency=0))


def test_stats_line_lists_the_three_counters():
    """When stats are formatted, commands, collisions and connections appear."""
    assert stats_line({'commands': 3, 'collisions': 0, 'connections': 2, 'open': 1,
                       'stale': 1, 'fence': 7, 'busy': 0}) == \
        'commands=3 collisions=0 connections=2 stale=1 fence=7 busy=0'
