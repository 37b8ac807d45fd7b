"""Shared by the simulated device's tests: a raw line connection, a real
DeviceServer on a free port, drivers closed after each test, and a barrier
that lines up concurrent calls (never sleeps)."""
import math
import socket
import threading

import pytest

from ocs_locking.agents.simulated_device.driver import ThermometryClient
from ocs_locking.agents.simulated_device.server import DeviceServer

from ..support import WAIT


class LineSocket:
    """A raw protocol connection: send bytes, read one reply line (bounded)."""

    def __init__(self, port):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=WAIT)
        self.buf = b''

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode() + b'\n')

    def reply(self):
        while b'\n' not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError('device closed the connection')
            self.buf += chunk
        line, self.buf = self.buf.split(b'\n', 1)
        return line.decode('ascii')

    def ask(self, data):
        self.send(data)
        return self.reply()

    def close(self):
        self.sock.close()


@pytest.fixture
def server():
    with DeviceServer(serial='SN42') as srv:
        yield srv


@pytest.fixture
def slow_server():
    """Commands hold the bus for 0.2 s: long enough to overlap on purpose."""
    with DeviceServer(latency=0.2) as srv:
        yield srv


@pytest.fixture
def clients():
    made = []

    def make(port, **kw):
        c = ThermometryClient('127.0.0.1', port, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


@pytest.fixture
def raw():
    made = []

    def make(port):
        s = LineSocket(port)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def run_together(*fns):
    """Run fns in threads released by one barrier; return their results or errors."""
    barrier = threading.Barrier(len(fns))
    results = [None] * len(fns)

    def run(i, fn):
        barrier.wait(WAIT)
        try:
            results[i] = fn()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e
    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), 'a thread did not finish in time'
    return results


def model(ch, heater, t):
    return 0.1 + 0.01 * ch + 0.002 * heater + 0.001 * math.sin(t / 10 + ch)


# -- protocol round trips ---------------------------------------------------------

def catch(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return e


