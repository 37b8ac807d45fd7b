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


def test_stats_line_lists_the_counters():
    """When stats are formatted, the counters appear in order (open does not)."""
    assert stats_line({'commands': 3, 'collisions': 0, 'connections': 2, 'open': 1,
                       'stale': 1, 'fence': 7, 'busy': 0}) == \
        'commands=3 collisions=0 connections=2 stale=1 fence=7 busy=0'


def test_parse_token_prefix_fences_a_device_command():
    """When a device command is preceded by TOKEN <n>, the request carries the
    token; without it, the token is None."""
    assert parse(b'TOKEN 12 HEATER 5', 4) == Request('HEATER', 5.0, 12)
    assert parse(b'token 0 read? 1', 4) == Request('READ?', 1, 0)
    assert parse(b'HEATER?', 4).token is None


@pytest.mark.parametrize('line, message', [
    (b'TOKEN', r'^TOKEN needs a fencing token and a device command$'),
    (b'TOKEN 3', r'^TOKEN needs a fencing token and a device command$'),
    (b'TOKEN x HEATER?', r"^bad fencing token 'x': expected an integer in 0\.\.2\*\*63-1$"),
    (b'TOKEN -1 HEATER?', r'^bad fencing token -1: expected 0\.\.2\*\*63-1$'),
    (b'TOKEN 3 STATS?', r"^TOKEN goes with a device command \(.*\), not 'STATS\?'$"),
    (b'TOKEN 3 TOKEN 4 HEATER?', r"^TOKEN goes with a device command .*, not 'TOKEN'$"),
    (b'TOKEN 3 HEATER 500', r'^heater value 500 out of range 0\.\.100$'),
])
def test_parse_bad_token_line_names_what_was_wrong(line, message):
    """When a TOKEN line is malformed, parse raises ProtocolError naming why."""
    with pytest.raises(ProtocolError, match=message):
        parse(line, 4)


def test_parse_fault_hold_takes_seconds():
    """When FAULT HOLD <s> is parsed, it carries its seconds, checked like SLOW's."""
    assert parse(b'FAULT HOLD 2.5', 4) == Request('FAULT', ('HOLD', 2.5))
    with pytest.raises(ProtocolError, match=r'^FAULT HOLD needs exactly one value in seconds$'):
        parse(b'FAULT HOLD', 4)


def test_answer_passes_the_token_to_the_device():
    """When a tokened request is answered, the device sees its token (a stale
    one raises StaleToken)."""
    from ocs_locking.agents.simulated_device.device import StaleToken
    dev = SimulatedThermometry(latency=0)
    assert answer(Request('HEATER', 3.0, 9), dev) == 'OK'
    with pytest.raises(StaleToken):
        answer(Request('HEATER?', None, 8), dev)
    assert dev.stats()['fence'] == 9
