"""ThermometryClient, the driver, against a real DeviceServer on a free port:
errors, offline and recovery, one-thread use, timeouts.
"""
import threading
import time

import pytest

from ocs_locking.agents.simulated_device.driver import DeviceError, DeviceOffline
from ocs_locking.agents.simulated_device.server import DeviceServer

from ..support import WAIT
from .sim_support import catch, clients, run_together, server, slow_server  # noqa: F401 (fixtures)

#: The fencing and bus counters of a device no token has reached, idle.
IDLE = {'stale': 0, 'fence': 0, 'busy': 0}


def test_ThermometryClient_err_reply_raises_device_error_and_keeps_connection(server, clients):
    """When the device answers ERR, query raises DeviceError with the reason and
    the next query uses the same connection."""
    client = clients(server.port)
    with pytest.raises(DeviceError, match=r'^bad channel 7: expected 0\.\.3$'):
        client.read(7)
    with pytest.raises(DeviceError, match='out of range'):
        client.set_heater(150)
    assert client.identify().startswith('OCSLOCK,SIMTHERM')
    assert client.stats()['connections'] == 1


def test_ThermometryClient_rejects_multiline_and_non_ascii_commands(server, clients):
    """When a command holds a newline or non-ASCII text, query refuses it before sending."""
    client = clients(server.port)
    with pytest.raises(ValueError, match='single line'):
        client.query('READ?\nHEATER 100')
    with pytest.raises(ValueError, match='ASCII'):
        client.query('READ? \u00b2')
    assert client.stats() == {'commands': 0, 'collisions': 0, 'connections': 1, **IDLE}


# -- one bus -------------------------------------------------------------------------

def test_ThermometryClient_refuses_use_from_two_threads_at_once(slow_server, clients):
    """When two threads call one client at the same moment, one is served and the
    other gets RuntimeError instead of sharing the socket."""
    client = clients(slow_server.port)
    results = run_together(client.identify, client.identify)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert 'thread-safe' in str(errors[0])
    assert client.stats()['collisions'] == 0


# -- faults ----------------------------------------------------------------------------

def test_ThermometryClient_refused_raises_device_offline(clients):
    """When nothing listens on the port, the query raises DeviceOffline (a
    ConnectionError) saying the connection was refused."""
    with DeviceServer() as srv:
        port = srv.port
    client = clients(port)
    with pytest.raises(ConnectionError) as excinfo:
        client.identify()
    assert isinstance(excinfo.value, DeviceOffline)
    assert str(excinfo.value) == f'device 127.0.0.1:{port} offline: connection refused'


def test_ThermometryClient_server_stopped_raises_device_offline(clients):
    """When the device stops while a client is connected, the next query raises
    DeviceOffline and so does the one after (nothing to reconnect to)."""
    srv = DeviceServer().start()
    client = clients(srv.port)
    client.identify()
    srv.stop()
    with pytest.raises(DeviceOffline):
        client.identify()
    with pytest.raises(DeviceOffline, match='refused'):
        client.identify()


def test_ThermometryClient_recovers_when_server_restarts_on_same_port(clients):
    """When the device comes back on the same port, the client reconnects by itself."""
    first = DeviceServer(serial='first').start()
    port = first.port
    client = clients(port)
    assert client.identify() == 'OCSLOCK,SIMTHERM,first,1.0'
    first.stop()
    with pytest.raises(DeviceOffline):
        client.identify()
    with DeviceServer(port=port, serial='second'):
        assert client.identify() == 'OCSLOCK,SIMTHERM,second,1.0'


def test_ThermometryClient_reconnect_opens_a_fresh_connection(server, clients):
    """When reconnect() is called, the old connection is closed and a new one opened."""
    client = clients(server.port)
    client.identify()
    client.reconnect()
    assert client.connected
    assert client.stats()['connections'] == 2


def test_ThermometryClient_connects_lazily(server, clients):
    """When a client is made, it does not connect until its first query."""
    client = clients(server.port)
    assert not client.connected and server.stats()['connections'] == 0
    client.identify()
    assert client.connected


# -- server life cycle ------------------------------------------------------------------------

def test_ThermometryClient_close_from_another_thread_aborts_a_waiting_query(clients):
    """When close() is called while a query waits on a held-back reply, the query
    fails at once with DeviceOffline instead of waiting out its timeout."""
    with DeviceServer(slow=60) as srv:
        held = threading.Event()
        hold = srv._slow_down
        srv._slow_down = lambda: (held.set(), hold())
        client = clients(srv.port, timeout=WAIT)
        result = []
        waiter = threading.Thread(target=lambda: result.append(catch(client.identify)))
        waiter.start()
        assert held.wait(WAIT), 'the command never reached the device'
        t0 = time.monotonic()
        client.close()
        waiter.join(WAIT)
        assert not waiter.is_alive()            # the reply is held back for 60 s
        assert isinstance(result[0], DeviceOffline)
        assert 'closed by the client' in str(result[0])


def test_ThermometryClient_token_goes_with_device_commands_only(server, clients):
    """When the driver's token is set, its device commands carry it (the
    device's fence rises to it) and STATS? does not; a lower token is then
    refused by the device as a DeviceError."""
    client = clients(server.port)
    client.token = 11
    client.set_heater(4)
    assert client.stats()['fence'] == 11
    client.token = 3
    with pytest.raises(DeviceError, match=r'^stale fencing token 3: this device has seen '
                                          r'token 11$'):
        client.read(0)
    client.token = None
    assert client.heater() == 4.0       # no token: served
    assert client.stats()['stale'] == 1


def test_ThermometryClient_timeout_covers_the_whole_query(server, clients):
    """When the device holds the bus past the driver's timeout, the query
    fails as DeviceOffline naming that one timeout."""
    client = clients(server.port, timeout=0.3)
    client.query('FAULT HOLD 5')
    with pytest.raises(DeviceOffline, match=r"no reply to 'HEATER\?' within 0\.3 s"):
        client.heater()
