"""The simulated device's server (sockets, connections, faults on the wire,
bounded stop): every test runs a real DeviceServer on a free port (port=0),
over raw lines or the driver. Concurrency is lined up with barriers, never
with sleeps.
"""
import threading
import time

import pytest

from ocs_locking.agents.simulated_device.driver import DeviceError, DeviceOffline
from ocs_locking.agents.simulated_device.server import MAX_LINE, DeviceServer

from ..support import WAIT
from .sim_support import catch, clients, model, raw, run_together, server, slow_server  # noqa: F401 (fixtures)

#: The fencing and bus counters of a device no token has reached, idle.
IDLE = {'stale': 0, 'fence': 0, 'busy': 0}


def test_DeviceServer_identify_names_model_and_serial(server, clients):
    """When asked *IDN?, the device gives maker, model, its serial and version."""
    assert clients(server.port).identify() == 'OCSLOCK,SIMTHERM,SN42,1.0'


def test_DeviceServer_read_all_follows_the_model(server, clients):
    """When every channel is read, there is one value per channel, each matching
    the temperature model at the reading's time."""
    reading = clients(server.port).read()
    assert list(reading['channels']) == ['ch00', 'ch01', 'ch02', 'ch03']
    assert abs(reading['timestamp'] - time.time()) < WAIT
    for ch, value in enumerate(reading['channels'].values()):
        assert value == pytest.approx(model(ch, 0, reading['timestamp']), abs=2e-5)


def test_DeviceServer_read_one_channel_gives_six_decimals(server, raw):
    """When one channel is read on the wire, the reply is one number with 6 decimals."""
    reply = raw(server.port).ask('READ? 2')
    whole, _, decimals = reply.partition('.')
    assert whole == '0' and len(decimals) == 6
    assert float(reply) == pytest.approx(model(2, 0, time.time()), abs=2e-5)


def test_DeviceServer_heater_warms_every_channel(server, clients):
    """When the heater is set, HEATER? returns it and temperatures rise by 0.002 K/%."""
    client = clients(server.port)
    assert client.set_heater(50) == 50.0
    assert client.heater() == 50.0
    reading = client.read()
    for ch, value in enumerate(reading['channels'].values()):
        assert value == pytest.approx(model(ch, 50, reading['timestamp']), abs=2e-5)


def test_DeviceServer_channels_option_is_learned_by_the_client(clients):
    """When the device has 2 channels, reading all gives 2 and the client learns it."""
    with DeviceServer(channels=2) as srv:
        client = clients(srv.port)
        assert client.channels is None
        assert list(client.read()['channels']) == ['ch00', 'ch01']
        assert client.channels == 2
        with pytest.raises(DeviceError, match='bad channel 2'):
            client.read(2)


def test_DeviceServer_stats_count_commands_and_connections(server, clients):
    """When two clients each send device commands, STATS? counts every device
    command and connection but not itself, and the same numbers are in stats()."""
    a, b = clients(server.port), clients(server.port)
    a.identify()
    b.read()
    a.set_heater(1)
    assert a.stats() == {'commands': 3, 'collisions': 0, 'connections': 2, **IDLE}
    local = server.stats()
    assert (local['commands'], local['collisions'], local['connections'], local['open']) == \
        (3, 0, 2, 2)


def test_DeviceServer_commands_are_case_insensitive_and_accept_crlf(server, raw):
    """When a command comes in lower case and ends with CRLF, it is understood."""
    assert raw(server.port).ask(b'*idn?\r\n') == 'OCSLOCK,SIMTHERM,SN42,1.0'


# -- malformed input -------------------------------------------------------------

MALFORMED = [
    (b'\n', 'empty command'),
    (b'   \n', 'empty command'),
    (b'FROB 1\n', "unknown command 'FROB'"),
    (b'READ? x\n', "bad channel 'x'"),
    (b'READ? 4\n', 'bad channel 4'),
    (b'READ? -1\n', 'bad channel -1'),
    (b'READ? 1 2\n', 'at most one channel'),
    (b'HEATER\n', 'HEATER needs exactly one value'),
    (b'HEATER warm\n', "bad number 'warm'"),
    (b'HEATER 101\n', 'out of range'),
    (b'HEATER -1\n', 'out of range'),
    (b'HEATER nan\n', "bad number 'nan'"),
    (b'HEATER? now\n', 'HEATER? takes no arguments'),
    (b'*IDN? please\n', '*IDN? takes no arguments'),
    (b'STATS? all\n', 'STATS? takes no arguments'),
    (b'FAULT\n', 'FAULT needs a fault'),
    (b'FAULT MELT\n', "unknown fault 'MELT'"),
    (b'FAULT SLOW\n', 'FAULT SLOW needs exactly one value'),
    (b'FAULT SLOW soon\n', "bad number 'soon'"),
    (b'FAULT SLOW -1\n', 'out of range'),
    (b'FAULT DROP now\n', 'FAULT DROP takes no arguments'),
    (b'READ? \xff\n', 'not ASCII'),
    (b'A' * (MAX_LINE + 1) + b'\n', 'line too long'),
    (b'READ? ' + b'9' * 5000 + b'\n', 'line too long'),
]


@pytest.mark.parametrize('line, reason', MALFORMED,
                         ids=[repr(m[0][:20]) for m in MALFORMED])
def test_DeviceServer_malformed_gets_err_and_connection_survives(server, raw, line, reason):
    """When a malformed line arrives, the reply is one ERR line naming what was
    wrong, nothing runs on the bus, and the same connection keeps working."""
    conn = raw(server.port)
    reply = conn.ask(line)
    assert reply.startswith('ERR ') and reason in reply
    assert conn.ask('*IDN?') == 'OCSLOCK,SIMTHERM,SN42,1.0'
    assert conn.ask('STATS?') == 'commands=1 collisions=0 connections=1 stale=0 fence=0 busy=0'


def test_DeviceServer_longest_line_is_accepted(server, raw):
    """When a line is exactly MAX_LINE bytes, it is parsed, not refused as too long."""
    line = b'READ?' + b' ' * (MAX_LINE - len(b'READ?1')) + b'1'
    assert len(line) == MAX_LINE
    assert not raw(server.port).ask(line + b'\n').startswith('ERR')


def test_DeviceServer_collision_when_two_connections_overlap(slow_server, raw):
    """When two connections send a command at the same moment, one is served and
    the other gets ERR collision, and the collision is counted."""
    a, b = raw(slow_server.port), raw(slow_server.port)
    replies = run_together(lambda: a.ask('READ? 0'), lambda: b.ask('READ? 1'))
    assert sorted(r.startswith('ERR') for r in replies) == [False, True]
    assert 'ERR collision' in replies
    assert a.ask('STATS?') == 'commands=1 collisions=1 connections=2 stale=0 fence=0 busy=0'


def test_DeviceServer_collision_when_one_connection_pipelines(slow_server, raw):
    """When a connection sends a second command before the first one's reply,
    the first is answered and the second gets ERR collision."""
    conn = raw(slow_server.port)
    conn.send(b'READ? 0\nHEATER 10\n')
    assert not conn.reply().startswith('ERR')
    assert conn.reply() == 'ERR collision'
    assert conn.ask('HEATER?') == '0.000000'
    assert slow_server.stats()['collisions'] == 1


def test_DeviceServer_no_collision_when_connections_take_turns(server, clients):
    """When several connections alternate but never overlap, nothing collides."""
    a, b = clients(server.port), clients(server.port)
    for i in range(20):
        (a if i % 2 else b).read()
    assert a.stats()['collisions'] == 0


def test_DeviceServer_side_door_commands_never_collide(slow_server, raw):
    """When STATS? and FAULT arrive while a device command holds the bus, they
    are answered at once and count as neither commands nor collisions."""
    busy, side = raw(slow_server.port), raw(slow_server.port)
    replies = run_together(lambda: busy.ask('READ?'),
                           lambda: (side.ask('STATS?'), side.ask('FAULT OFF')))
    assert not replies[0].startswith('ERR')
    assert replies[1][1] == 'OK'
    assert slow_server.stats()['collisions'] == 0


def test_DeviceServer_fault_drop_closes_all_then_clients_recover(server, clients):
    """When FAULT DROP is sent, every client's next query raises DeviceOffline and
    the one after reconnects and succeeds."""
    a, b = clients(server.port), clients(server.port)
    a.identify()
    b.identify()
    assert a.query('FAULT DROP') == 'OK'
    for client in (a, b):
        with pytest.raises(DeviceOffline, match=rf'^device 127\.0\.0\.1:{server.port} offline: '):
            client.identify()
        assert not client.connected
        assert client.identify().startswith('OCSLOCK')
    assert a.stats()['connections'] == 4


def test_DeviceServer_fault_dropnext_closes_only_the_next_command(server, clients):
    """When FAULT DROPNEXT is armed, the next device command is not run and its
    connection closes; the command after that works."""
    ctl, client = clients(server.port), clients(server.port)
    assert ctl.query('FAULT DROPNEXT') == 'OK'
    assert ctl.stats()['commands'] == 0
    with pytest.raises(DeviceOffline, match='connection closed by the device'):
        client.set_heater(30)
    assert client.heater() == 0.0
    assert ctl.stats() == {'commands': 1, 'collisions': 0, 'connections': 3, **IDLE}


def test_DeviceServer_fault_slow_makes_client_time_out(server, clients):
    """When replies are slowed past the client's timeout, the query raises
    DeviceOffline; after FAULT OFF the client reconnects and gets answers."""
    ctl, client = clients(server.port), clients(server.port, timeout=0.2)
    assert ctl.query('FAULT SLOW 30') == 'OK'
    t0 = time.monotonic()
    with pytest.raises(DeviceOffline, match=r"no reply to '\*IDN\?' within 0\.2 s"):
        client.identify()
    assert time.monotonic() - t0 < WAIT
    assert ctl.query('FAULT OFF') == 'OK'
    assert client.identify().startswith('OCSLOCK')


def test_DeviceServer_slow_at_start_delays_device_replies_only(clients):
    """When started slow, device replies come late but STATS? answers at once."""
    with DeviceServer(slow=2.0) as srv:
        client = clients(srv.port, timeout=WAIT)
        t0 = time.monotonic()
        client.stats()
        fast = time.monotonic() - t0
        t0 = time.monotonic()
        client.identify()
        slow = time.monotonic() - t0
        assert slow >= 2.0 and fast < 2.0
        assert srv.stats()['slow'] == 2.0


# -- offline and recovery ------------------------------------------------------------------

def test_DeviceServer_stop_is_bounded_with_busy_connections(clients):
    """When stopped while a reply is being held back by FAULT SLOW, stop() returns
    promptly, closes every connection, and the waiting client sees DeviceOffline."""
    srv = DeviceServer(slow=60).start()
    held = threading.Event()
    hold = srv._slow_down
    srv._slow_down = lambda: (held.set(), hold())   # tells the test the reply is held
    client = clients(srv.port, timeout=WAIT)
    result = []
    waiter = threading.Thread(target=lambda: result.append(catch(client.identify)))
    waiter.start()
    try:
        assert held.wait(WAIT), 'the command never reached the device'
    finally:
        t0 = time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < WAIT     # the reply is held back for 60 s
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert isinstance(result[0], DeviceOffline)
    assert srv.stats()['open'] == 0


def test_DeviceServer_only_listens_on_loopback():
    """When asked to bind anything but loopback, the server refuses."""
    with pytest.raises(ValueError, match='loopback'):
        DeviceServer(host='0.0.0.0')
    with DeviceServer(host='localhost') as srv:
        assert srv.address == ('127.0.0.1', srv.port)


@pytest.mark.parametrize('kwargs', [{'channels': 0}, {'channels': 65}, {'latency': -1},
                                    {'port': 70000}, {'serial': 'a,b'}, {'slow': -1}])
def test_DeviceServer_bad_settings_raise_value_error(kwargs):
    """When a setting is out of range, the constructor raises ValueError."""
    with pytest.raises(ValueError):
        DeviceServer(**kwargs)


def test_DeviceServer_port_in_use_raises_os_error():
    """When the port is taken, start() raises OSError and leaves nothing running."""
    with DeviceServer() as srv:
        with pytest.raises(OSError):
            DeviceServer(port=srv.port).start()


# -- command line --------------------------------------------------------------------------------



# -- fencing tokens and FAULT HOLD -----------------------------------------------------

def test_DeviceServer_refuses_a_stale_token_on_the_wire(server, raw):
    """When one connection commands with token 5 and another then with token
    4, the second is answered 'ERR stale fencing token 4 ...', never runs, and
    STATS? counts it (stale=1, fence=5); the connection stays usable."""
    a, b = raw(server.port), raw(server.port)
    assert a.ask('TOKEN 5 HEATER 20') == 'OK'
    assert b.ask('TOKEN 4 HEATER 80') == 'ERR stale fencing token 4: this device has seen token 5'
    assert b.ask('HEATER?') == '20.000000'
    assert a.ask('STATS?') == 'commands=2 collisions=0 connections=2 stale=1 fence=5 busy=0'


def test_DeviceServer_fault_hold_keeps_the_bus_busy_and_off_clears_it(server, raw):
    """When FAULT HOLD 30 is set, a device command holds the bus (STATS? says
    busy=1 from another connection, a second command collides) until the
    server stops; FAULT OFF clears HOLD."""
    ctl, slow, other = raw(server.port), raw(server.port), raw(server.port)
    assert ctl.ask('FAULT HOLD 30') == 'OK' and server.stats()['hold'] == 30.0
    slow.send('HEATER 1')
    deadline = time.monotonic() + WAIT
    while 'busy=1' not in ctl.ask('STATS?'):
        assert time.monotonic() < deadline, 'the held command never took the bus'
    assert other.ask('HEATER 2') == 'ERR collision'
    assert ctl.ask('FAULT OFF') == 'OK' and server.stats()['hold'] == 0.0
