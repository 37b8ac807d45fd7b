"""Client driver for the simulated thermometry controller (:mod:`.server`).

:class:`ThermometryClient` is a plain blocking driver, deliberately NOT
thread-safe, like most instrument drivers: one thread (a ``DeviceWorker``)
owns it. A second thread entering :meth:`~ThermometryClient.query` while
another is inside raises ``RuntimeError`` instead of mixing the two
conversations on one socket.

Errors come in two kinds:

* :class:`DeviceError` - the device answered ``ERR <reason>``; the connection
  is fine and stays open.
* :class:`DeviceOffline` (a ``ConnectionError``) - refused connection, socket
  error, timeout, end of stream or a garbled reply. The socket is closed; the
  next query connects again, so the client recovers when the device is back.

Fencing: while :attr:`ThermometryClient.token` is set (the agent sets it to
its lease's fencing token around each guarded call), every device command
goes out as ``TOKEN <n> <command>`` and the device refuses it if it has seen
a higher token (a :class:`DeviceError` "stale fencing token ...").

Example::

    >>> dev = ThermometryClient('127.0.0.1', 18101)
    >>> dev.read()
    {'timestamp': 1700000000.1, 'channels': {'ch00': 0.1008, 'ch01': 0.1109, ...}}
"""
import math
import operator
import socket
import threading
import time

from ocs_locking.agents.simulated_device.protocol import DEVICE_COMMANDS

__all__ = ['ThermometryClient', 'DeviceError', 'DeviceOffline']


#: Longest reply accepted, in bytes.
MAX_REPLY = 65536


class DeviceError(RuntimeError):
    """The device refused a command (it replied ``ERR <message>``)."""


class DeviceOffline(ConnectionError):
    """The device cannot be reached; the next query tries to connect again."""


def _reason(exc):
    if isinstance(exc, ConnectionRefusedError):
        return 'connection refused'
    if isinstance(exc, ConnectionResetError):
        return 'connection reset by the device'
    if isinstance(exc, BrokenPipeError):
        return 'connection closed by the device'
    return exc.strerror or str(exc) or type(exc).__name__


class ThermometryClient:
    """Blocking client for the simulated thermometry controller.

    Args:
        host (str): device address.
        port (int): device TCP port.
        timeout (float or None): seconds allowed for each query, from its
            start (connecting first, if need be) to the end of the reply: one
            deadline. None waits forever.

    Attributes:
        token (int or None): the fencing token sent with every device
            command (None: none is sent).

    Connects lazily, on the first query. Not thread-safe: own it from one thread.
    """

    def __init__(self, host, port, timeout=2.0):
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < math.inf):
            raise ValueError(f'timeout must be a positive number of seconds or None, '
                             f'not {timeout!r}')
        self.host = host
        self.port = operator.index(port)
        self.timeout = timeout
        #: Number of channels, learned from the last ``READ?`` of all channels.
        self.channels = None
        self.token = None
        self._sock = None
        self._in_use = threading.Lock()   # detects misuse; never waited on

    def __repr__(self):
        state = 'connected' if self._sock is not None else 'not connected'
        return f'<ThermometryClient {self.host}:{self.port} {state}>'

    @property
    def connected(self):
        return self._sock is not None

    # -- connection ----------------------------------------------------------

    def _offline(self, reason, cause=None):
        self._close_socket()
        raise DeviceOffline(f'device {self.host}:{self.port} offline: {reason}') from cause

    def _connect(self):
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except socket.timeout as e:
                self._offline(f'no connection within {self.timeout:g} s', e)
            except OSError as e:
                self._offline(_reason(e), e)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self._sock = sock
        return self._sock

    def _close_socket(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)   # wakes a query blocked in recv
            except OSError:
                pass
            sock.close()

    def close(self):
        """Close the connection (the next query opens a new one).

        The one call that may come from another thread: a query blocked on the
        device then fails at once with DeviceOffline (useful at shutdown).
        """
        self._close_socket()

    def reconnect(self):
        """Close the connection and connect again now (DeviceOffline if that fails)."""
        self._claim()
        try:
            self._close_socket()
            self._connect()
        finally:
            self._in_use.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _claim(self):
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError(f'ThermometryClient for {self.host}:{self.port} is not '
                               f'thread-safe: it was called from two threads at once')

    # -- the protocol ------------------------------------------------------------

    def query(self, line):
        """Send one command line and return the reply line (without newline).

        Raises:
            DeviceError: the device replied ``ERR ...``.
            DeviceOffline: the device could not be reached or did not answer.
            ValueError: ``line`` is not a single line of ASCII.
        """
        if not isinstance(line, str):
            raise TypeError(f'command must be a str, not {type(line).__name__}')
        if '\n' in line or '\r' in line:
            raise ValueError(f'command must be a single line, not {line!r}')
        try:
            data = line.encode('ascii') + b'\n'
        except UnicodeEncodeError:
            raise ValueError(f'command must be ASCII, not {line!r}') from None
        if self.token is not None and line.split(None, 1)[:1] and \
                line.split(None, 1)[0].upper() in DEVICE_COMMANDS:
            data = f'TOKEN {int(self.token)} '.encode('ascii') + data
        self._claim()
        try:
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            sock = self._connect()
            try:
                sock.settimeout(None if deadline is None
                                else max(0.001, deadline - time.monotonic()))
                sock.sendall(data)
                reply = self._read_line(sock, deadline)
            except DeviceOffline:
                raise
            except socket.timeout as e:
                self._offline(f'no reply to {line!r} within {self.timeout:g} s', e)
            except OSError as e:
                closed_here = self._sock is not sock   # close() from another thread
                self._offline('connection closed by the client' if closed_here
                              else _reason(e), e)
        finally:
            self._in_use.release()
        if reply == 'ERR' or reply.startswith('ERR '):
            raise DeviceError(reply[4:] or 'error')
        return reply

    def _read_line(self, sock, deadline):
        buf = bytearray()
        while True:
            nl = buf.find(b'\n')
            if nl >= 0:
                break
            if len(buf) > MAX_REPLY:
                self._offline(f'reply longer than {MAX_REPLY} bytes')
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout('timed out')
                sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                self._offline('connection closed by the '
                              + ('device' if self._sock is sock else 'client'))
            buf += chunk
        if nl + 1 != len(buf):
            # One command, one reply: anything more means we lost track.
            self._offline('unexpected data after the reply')
        try:
            return buf[:nl].decode('ascii').rstrip('\r')
        except UnicodeDecodeError:
            self._offline('reply is not ASCII')

    @staticmethod
    def _floats(reply, command):
        try:
            values = [float(v) for v in reply.split(',')]
        except ValueError:
            raise DeviceError(f'unexpected reply to {command}: {reply!r}') from None
        return values

    def identify(self):
        """The ``*IDN?`` string, e.g. ``'OCSLOCK,SIMTHERM,0,1.0'``."""
        return self.query('*IDN?')

    def read(self, channel=None):
        """Read one channel, or all of them when ``channel`` is None.

        Returns ``{'timestamp': time.time(), 'channels': {'ch00': K, ...}}``.
        """
        if channel is None:
            values = self._floats(self.query('READ?'), 'READ?')
            self.channels = len(values)
            channels = {f'ch{c:02d}': v for c, v in enumerate(values)}
        else:
            if isinstance(channel, bool):
                raise TypeError('channel must be an int, not bool')
            channel = operator.index(channel)
            command = f'READ? {channel}'
            values = self._floats(self.query(command), command)
            if len(values) != 1:
                raise DeviceError(f'unexpected reply to {command}: {len(values)} values')
            channels = {f'ch{channel:02d}': values[0]}
        return {'timestamp': time.time(), 'channels': channels}

    def set_heater(self, value):
        """Set the heater output (percent, 0..100); returns the value set."""
        if isinstance(value, bool):
            raise TypeError('heater value must be a number, not bool')
        value = float(value)
        reply = self.query(f'HEATER {value!r}')
        if reply != 'OK':
            raise DeviceError(f'unexpected reply to HEATER: {reply!r}')
        return value

    def heater(self):
        """The heater output, in percent."""
        values = self._floats(self.query('HEATER?'), 'HEATER?')
        if len(values) != 1:
            raise DeviceError(f'unexpected reply to HEATER?: {len(values)} values')
        return values[0]

    def stats(self):
        """The device's counters: ``{'commands': n, 'collisions': n, 'connections': n}``."""
        reply = self.query('STATS?')
        stats = {}
        for item in reply.split():
            key, sep, value = item.partition('=')
            try:
                stats[key] = int(value)
            except ValueError:
                if not sep:
                    raise DeviceError(f'unexpected reply to STATS?: {reply!r}') from None
                stats[key] = value
        return stats
