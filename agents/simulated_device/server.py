"""The simulated thermometry controller, reachable over TCP on loopback.

The model of :mod:`.device` behind the line protocol of :mod:`.protocol`, so
that an agent talks to it the way it talks to real hardware: through a socket
and a driver (:mod:`.driver`) that must only ever be used from one place. This
module only does the sockets: one thread per connection, the ``FAULT`` side
effects on connections (:mod:`.faults` keeps the settings), and a stop that is
bounded.

The device has ONE bus. Commands from every connection are serialized by the
device: a device command that arrives while another one (from any connection,
including a command pipelined on the same connection before the previous
reply) is in progress is a *collision*: it is counted and answered
``ERR collision``. Tests read the count to prove an agent never talks to the
device from two places at once. A command carrying a stale fencing token
(``TOKEN <n> ...``, see :mod:`.device`) is answered ``ERR stale fencing
token ...`` without touching the bus.

``STATS?`` and ``FAULT`` are the test bench's side door: they never touch the
bus, are never delayed, never collide and are not counted, so a test may use
them while an agent is busy. ``connections`` counts connections accepted since
start.

Run it on its own with (see :mod:`ocs_locking.agents.simulated_device.cli`)::

    python -m ocs_locking.agents.simulated_device.server --port 18101
"""
import ipaddress
import selectors
import socket
import threading
import time

from ocs_locking.agents.simulated_device import protocol
from ocs_locking.agents.simulated_device.device import (BusCollision, SimulatedThermometry,
                                                        StaleToken)
from ocs_locking.agents.simulated_device.faults import Faults
from ocs_locking.agents.simulated_device.protocol import (MAX_LINE, MAX_SLOW, TOO_LONG,
                                                          ProtocolError)

__all__ = ['DeviceServer', 'make_parser', 'main', 'MAX_LINE', 'MAX_SLOW']

#: Bound on :meth:`DeviceServer.stop`, in seconds.
STOP_TIMEOUT = 5.0

_DONTWAIT = getattr(socket, 'MSG_DONTWAIT', 0)   # pipelining detection where available


class _Connection:
    """One client connection, served by its own thread.

    Only the serving thread reads, writes and closes the socket; other threads
    may only :meth:`shutdown` it, which wakes the serving thread (the socket's
    lock keeps a shutdown from ever reaching a reused file descriptor).
    """

    def __init__(self, server, sock, addr):
        self.server = server
        self.sock = sock
        self.addr = addr
        self._lock = threading.Lock()
        self._closed = False
        self.thread = threading.Thread(target=self._serve, daemon=True,
                                       name=f'simdev-{server.port}-conn-{addr[1]}')

    def shutdown(self):
        with self._lock:
            if not self._closed:
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                self.sock.close()

    def _early_bytes(self, buf):
        """After a device command and before its reply: how many bytes of the
        next command(s) have already arrived (they were sent while it ran),
        and whether the peer has already closed its side."""
        if _DONTWAIT:
            try:
                data = self.sock.recv(4096, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return len(buf), True
            else:
                buf += data
                if not data:
                    return len(buf), True
        return len(buf), False

    def _serve(self):
        buf = bytearray()
        discarding = False   # inside a line already known to be too long
        early = 0            # leading bytes of buf that arrived during a command
        eof = False
        try:
            while True:
                nl = buf.find(b'\n')
                if nl < 0:
                    if len(buf) > MAX_LINE:
                        discarding = True
                        early = max(0, early - len(buf))
                        del buf[:]
                    if eof:
                        return
                    data = self.sock.recv(4096)
                    if not data:
                        return
                    buf += data
                    continue
                raw = bytes(buf[:nl])
                pipelined = early > 0
                early = max(0, early - (nl + 1))
                del buf[:nl + 1]
                if discarding or len(raw) > MAX_LINE:
                    discarding = False
                    reply, then = f'ERR {TOO_LONG}', None
                else:
                    reply, then = self.server._respond(raw, pipelined)
                if then == 'ran':
                    early, eof = self._early_bytes(buf)
                elif then == 'drop-this':
                    return
                elif then == 'drop-all':
                    self.server._drop_all(but=self)
                if reply is not None:
                    if then == 'ran':
                        self.server._slow_down()
                    if self.server._stopping.is_set():
                        return   # switched off mid-command: no reply
                    self.sock.sendall(reply.encode('ascii') + b'\n')
                if then == 'drop-all':
                    return
        except OSError:
            return   # the peer went away, or the server dropped us
        finally:
            self._close()
            self.server._forget(self)


class DeviceServer:
    """The simulated thermometry controller, serving on loopback TCP.

    Args:
        host (str): a loopback address ('127.0.0.1', '::1' or 'localhost').
        port (int): TCP port; 0 picks a free one (see :attr:`port`).
        channels (int): number of thermometer channels, 1..64.
        latency (float): seconds each device command holds the bus, 0..10.
        serial (str): serial number reported by ``*IDN?``.
        slow (float): initial ``FAULT SLOW`` delay in seconds.
        drop_next (bool): start with ``FAULT DROPNEXT`` armed.

    Use ``with DeviceServer() as dev:`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(self, host='127.0.0.1', port=0, channels=4, latency=0.002, serial='0',
                 slow=0.0, drop_next=False):
        if host == 'localhost':
            host = '127.0.0.1'
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f'host must be a loopback address, not {host!r}') from None
        if not address.is_loopback:
            raise ValueError(f'host must be a loopback address, not {host!r}')
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f'port must be an int in 0..65535, not {port!r}')
        self._stopping = threading.Event()
        # Both validate their settings; a stop cuts a command's latency short.
        self.faults = Faults(slow=slow, drop_next=drop_next)
        self.device = SimulatedThermometry(channels=channels, latency=latency, serial=serial,
                                           wait=self._stopping.wait,
                                           hold=lambda: self.faults.hold)
        self.host = host
        self._family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self.port = port
        self.serial = self.device.serial
        self._lock = threading.Lock()
        self._state = 'new'
        self._conns = set()
        self._connections = 0
        self._listener = None
        self._wake = None
        self._accept_thread = None

    # -- life cycle ----------------------------------------------------------

    def start(self):
        """Listen and serve in background threads; returns once listening."""
        with self._lock:
            if self._state != 'new':
                raise RuntimeError(f'DeviceServer already {self._state}; make a new one')
            sock = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
                sock.listen(16)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self._listener = sock
            self.port = sock.getsockname()[1]
            self._wake = socket.socketpair()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, name=f'simdev-{self.port}-accept', daemon=True)
            self._accept_thread.start()
            self._state = 'running'
        return self

    def stop(self, timeout=STOP_TIMEOUT):
        """Close the listener and every connection, and join the threads
        (within ``timeout`` seconds overall). Safe to call more than once."""
        with self._lock:
            was, self._state = self._state, 'stopped'
            self._stopping.set()
            conns = list(self._conns)
        if was != 'running':
            return
        deadline = time.monotonic() + timeout
        try:
            self._wake[1].send(b'x')
        except OSError:
            pass
        self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        for conn in conns:
            conn.shutdown()
        for conn in conns:
            conn.thread.join(max(0.0, deadline - time.monotonic()))
        for s in self._wake:
            s.close()

    def __enter__(self):
        if self._state == 'new':
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def address(self):
        return (self.host, self.port)

    def stats(self):
        """Counters and fault settings, as a dict."""
        with self._lock:
            open_ = len(self._conns)
            connections = self._connections
        return {**self.device.stats(), 'connections': connections,
                'open': open_, 'heater': self.device.heater, 'channels': self.device.channels,
                'latency': self.device.latency, 'slow': self.faults.slow,
                'hold': self.faults.hold, 'drop_next': self.faults.drop_next}

    def __repr__(self):
        return (f'<DeviceServer {self.host}:{self.port} {self._state} '
                f'channels={self.device.channels} latency={self.device.latency:g}>')

    # -- connections -----------------------------------------------------------

    def _accept_loop(self):
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake[0], selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake[0]:
                        return
                    try:
                        sock, addr = self._listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError:
                        if self._stopping.is_set():
                            return
                        continue   # e.g. out of file descriptors: keep serving the others
                    sock.setblocking(True)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conn = _Connection(self, sock, addr)
                    with self._lock:
                        if self._state != 'running':
                            sock.close()
                            return
                        self._conns.add(conn)
                        self._connections += 1
                        conn.thread.start()
        finally:
            sel.close()

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)

    def _drop_all(self, but=None):
        with self._lock:
            conns = [c for c in self._conns if c is not but]
        for conn in conns:
            conn.shutdown()

    def _slow_down(self):
        slow = self.faults.slow
        if slow:
            self._stopping.wait(slow)

    # -- one line in, one reply out ----------------------------------------------

    def _respond(self, raw, pipelined):
        """Answer one line: ``(reply or None, then)`` where ``then`` is None,
        'ran' (a device command used the bus), 'drop-this' or 'drop-all'."""
        try:
            request = protocol.parse(raw, self.device.channels)
        except ProtocolError as e:
            return f'ERR {e}', None
        if request.verb == 'FAULT':
            return 'OK', self.faults.apply(*request.arg)
        if request.verb == 'STATS?':
            return protocol.stats_line(self.stats()), None
        if pipelined:
            # Sent before the previous command's reply: it overlapped that command.
            self.device.collision()
            return 'ERR collision', None
        if self.faults.take_drop_next():
            return None, 'drop-this'
        try:
            return protocol.answer(request, self.device), 'ran'
        except BusCollision:
            return 'ERR collision', None
        except StaleToken as e:
            return f'ERR {e}', None


def make_parser(parser=None):
    """The command line of :mod:`.cli` (kept here for ``python -m ...server``)."""
    from ocs_locking.agents.simulated_device import cli
    return cli.make_parser(parser)


def main(args=None):
    """``python -m ocs_locking.agents.simulated_device.server``: see :mod:`.cli`."""
    from ocs_locking.agents.simulated_device import cli
    return cli.main(args)


if __name__ == '__main__':
    import sys
    sys.exit(main())
