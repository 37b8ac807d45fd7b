"""A simulated thermometry controller reachable over TCP on loopback.

The device of :mod:`.device` behind a one-line-per-command ASCII protocol, so
that an agent talks to it the way it talks to real hardware: through a socket
and a driver (:mod:`.driver`) that must only ever be used from one place.

The device has ONE bus. Commands from every connection are serialized by the
device: a device command that arrives while another one (from any connection,
including a command pipelined on the same connection before the previous
reply) is in progress is a *collision*: it is counted and answered
``ERR collision``. Tests read the count to prove an agent never talks to the
device from two places at once.

Protocol (one line per command, terminated by ``\\n``; one reply line each)::

    *IDN?             -> OCSLOCK,SIMTHERM,<serial>,1.0
    READ? <ch>        -> 0.110123                  (6 decimals)
    READ?             -> 0.100841,0.110909,...     (all channels)
    HEATER <value>    -> OK                        (0..100 %)
    HEATER?           -> 12.500000
    STATS?            -> commands=<n> collisions=<n> connections=<n>
    FAULT SLOW <s>    -> OK   every device reply is delayed by <s> more seconds
    FAULT DROP        -> OK   then every open connection is closed (this one too)
    FAULT DROPNEXT    -> OK   the next device command is not run; its connection
                              is closed instead of replying
    FAULT OFF         -> OK   clear the faults
    anything else     -> ERR <reason>   (the connection stays usable)

*Device commands* (``*IDN?``, ``READ?``, ``HEATER``, ``HEATER?``) use the bus,
take ``latency`` seconds and are counted in ``commands``. ``STATS?`` and
``FAULT`` are the test bench's side door: they never touch the bus, are never
delayed, never collide and are not counted, so a test may use them while an
agent is busy. ``connections`` counts connections accepted since start.

Run it on its own with::

    python -m ocs_locking.agents.simulated_device.server --port 18101
"""
import argparse
import ipaddress
import math
import selectors
import signal
import socket
import sys
import threading
import time

from ocs_locking.agents.simulated_device.device import BusCollision, SimulatedThermometry

__all__ = ['DeviceServer', 'make_parser', 'main', 'MAX_LINE']

#: Longest accepted command, in bytes before the newline.
MAX_LINE = 256
#: Longest accepted ``FAULT SLOW`` delay, in seconds.
MAX_SLOW = 600.0
#: Bound on :meth:`DeviceServer.stop`, in seconds.
STOP_TIMEOUT = 5.0
VERSION = '1.0'

_DEVICE_COMMANDS = ('*IDN?', 'READ?', 'HEATER', 'HEATER?')
_DONTWAIT = getattr(socket, 'MSG_DONTWAIT', 0)   # pipelining detection where available


class _Device(SimulatedThermometry):
    """The model of :mod:`.device`, with exact counters under concurrent
    connections and waits that :meth:`DeviceServer.stop` cuts short."""

    def __init__(self, channels, latency, stopping):
        super().__init__(channels=channels, latency=latency)
        self._counts = threading.Lock()
        self._stopping = stopping

    def _command(self, fn):
        if not self._busy.acquire(blocking=False):
            self.collision()
            raise BusCollision('bus collision: a command arrived while another was in progress')
        try:
            with self._counts:
                self.commands += 1
            if self.latency:
                self._stopping.wait(self.latency)
            return fn()
        finally:
            self._busy.release()

    def collision(self):
        with self._counts:
            self.collisions += 1

    def run(self, fn):
        """Run ``fn()`` as one device command on the bus."""
        return self._command(fn)


class _Error(Exception):
    """A malformed command: answered ``ERR <reason>``."""


def _short(token, limit=40):
    text = repr(token)
    return text if len(text) <= limit else text[:limit - 4] + '...' + text[-1]


def _number(token, what, low, high):
    try:
        value = float(token)
    except ValueError:
        raise _Error(f'bad number {_short(token)} for {what}') from None
    if not math.isfinite(value):
        raise _Error(f'bad number {_short(token)} for {what}: must be finite')
    if not low <= value <= high:
        raise _Error(f'{what} {token} out of range {low:g}..{high:g}')
    return value


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
                    reply, then = f'ERR line too long: more than {MAX_LINE} bytes', None
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
        serial = str(serial)
        if not serial or not serial.isascii() or not serial.isprintable() \
                or ',' in serial or any(c.isspace() for c in serial):
            raise ValueError(f'serial must be printable ASCII without commas or spaces, '
                             f'not {serial!r}')
        if not isinstance(slow, (int, float)) or not 0 <= slow <= MAX_SLOW:
            raise ValueError(f'slow must be a number of seconds in 0..{MAX_SLOW:g}, '
                             f'not {slow!r}')
        self._stopping = threading.Event()
        self.device = _Device(channels, latency, self._stopping)   # validates both
        self.host = host
        self._family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self.port = port
        self.serial = serial
        self._lock = threading.Lock()
        self._state = 'new'
        self._conns = set()
        self._connections = 0
        self._slow = float(slow)
        self._drop_next = bool(drop_next)
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
            slow, drop_next = self._slow, self._drop_next
        with self.device._counts:
            commands, collisions = self.device.commands, self.device.collisions
        return {'commands': commands, 'collisions': collisions, 'connections': connections,
                'open': open_, 'heater': self.device.heater, 'channels': self.device.channels,
                'latency': self.device.latency, 'slow': slow, 'drop_next': drop_next}

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
        slow = self._slow
        if slow:
            self._stopping.wait(slow)

    # -- the protocol -----------------------------------------------------------

    def _respond(self, raw, pipelined):
        """Answer one line: ``(reply or None, then)`` where ``then`` is None,
        'ran' (a device command used the bus), 'drop-this' or 'drop-all'."""
        try:
            try:
                line = raw.decode('ascii')
            except UnicodeDecodeError:
                raise _Error('command is not ASCII') from None
            if line.endswith('\r'):
                line = line[:-1]
            words = line.split()
            if not words:
                raise _Error('empty command')
            verb, args = words[0].upper(), words[1:]
            if verb == 'FAULT':
                return self._fault(args)
            if verb == 'STATS?':
                self._no_args(verb, args)
                s = self.stats()
                return (f"commands={s['commands']} collisions={s['collisions']} "
                        f"connections={s['connections']}"), None
            if verb not in _DEVICE_COMMANDS:
                raise _Error(f'unknown command {_short(words[0])}: expected one of '
                             f'{", ".join(_DEVICE_COMMANDS)}, STATS?, FAULT')
            fn = self._parse_device_command(verb, args)
        except _Error as e:
            return f'ERR {e}', None
        if pipelined:
            # Sent before the previous command's reply: it overlapped that command.
            self.device.collision()
            return 'ERR collision', None
        with self._lock:
            drop, self._drop_next = self._drop_next, False
        if drop:
            return None, 'drop-this'
        try:
            return self.device.run(fn), 'ran'
        except BusCollision:
            return 'ERR collision', None

    @staticmethod
    def _no_args(verb, args):
        if args:
            raise _Error(f'{verb} takes no arguments, got {_short(" ".join(args))}')

    def _parse_device_command(self, verb, args):
        dev = self.device
        if verb == '*IDN?':
            self._no_args(verb, args)
            reply = f'OCSLOCK,SIMTHERM,{self.serial},{VERSION}'
            return lambda: reply
        if verb == 'HEATER?':
            self._no_args(verb, args)
            return lambda: f'{dev.heater:.6f}'
        if verb == 'HEATER':
            if len(args) != 1:
                raise _Error(f'HEATER needs exactly one value in 0..100, got {len(args)}')
            value = _number(args[0], 'heater value', 0, 100)

            def set_heater():
                dev.heater = value
                return 'OK'
            return set_heater
        # READ?
        if len(args) > 1:
            raise _Error(f'READ? takes at most one channel, got {len(args)} arguments')
        if args:
            try:
                channel = int(args[0])
            except ValueError:
                raise _Error(f'bad channel {_short(args[0])}: expected an integer in '
                             f'0..{dev.channels - 1}') from None
            if not 0 <= channel < dev.channels:
                raise _Error(f'bad channel {channel}: expected 0..{dev.channels - 1}')
            chans = [channel]
        else:
            chans = range(dev.channels)

        def read():
            t = dev._clock()
            return ','.join(f'{dev._temperature(c, t):.6f}' for c in chans)
        return read

    def _fault(self, args):
        kind = args[0].upper() if args else ''
        rest = args[1:]
        if kind == 'SLOW':
            if len(rest) != 1:
                raise _Error('FAULT SLOW needs exactly one value in seconds')
            slow = _number(rest[0], 'FAULT SLOW seconds', 0, MAX_SLOW)
            with self._lock:
                self._slow = slow
            return 'OK', None
        if kind in ('DROP', 'DROPNEXT', 'OFF'):
            self._no_args(f'FAULT {kind}', rest)
            if kind == 'DROP':
                return 'OK', 'drop-all'
            with self._lock:
                if kind == 'DROPNEXT':
                    self._drop_next = True
                else:
                    self._slow, self._drop_next = 0.0, False
            return 'OK', None
        what = f'unknown fault {_short(args[0])}' if args else 'FAULT needs a fault'
        raise _Error(f'{what}: expected SLOW <seconds>, DROP, DROPNEXT or OFF')


# -- command line ------------------------------------------------------------------

def _ranged(kind, low, high, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{what} must be a {kind.__name__}, '
                                             f'not {text!r}') from None
        if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f'{what} must be in {low:g}..{high:g}, '
                                             f'not {text}')
        return value
    return parse


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser(
            prog='python -m ocs_locking.agents.simulated_device.server',
            description='A simulated thermometry controller on 127.0.0.1 (line protocol '
                        'over TCP). Runs until SIGINT or SIGTERM.')
    parser.add_argument('--port', type=_ranged(int, 0, 65535, 'port'), default=18101,
                        help='TCP port on 127.0.0.1; 0 picks a free one (default 18101).')
    parser.add_argument('--channels', type=_ranged(int, 1, 64, 'channels'), default=4,
                        help='Number of thermometer channels, 1..64 (default 4).')
    parser.add_argument('--latency', type=_ranged(float, 0, 10, 'latency'), default=0.002,
                        help='Seconds each device command takes, 0..10 (default 0.002).')
    parser.add_argument('--serial', default='0', help='Serial number for *IDN? (default 0).')
    parser.add_argument('--slow', type=_ranged(float, 0, MAX_SLOW, 'slow'), default=0.0,
                        metavar='S', help='Start with FAULT SLOW S: delay every reply by S s.')
    parser.add_argument('--drop-next', action='store_true',
                        help='Start with FAULT DROPNEXT armed.')
    return parser


def main(args=None):
    parser = make_parser()
    opts = parser.parse_args(args)
    try:
        server = DeviceServer(port=opts.port, channels=opts.channels, latency=opts.latency,
                              serial=opts.serial, slow=opts.slow, drop_next=opts.drop_next)
    except ValueError as e:
        parser.error(str(e))
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Installed explicitly: a background job started by a shell has SIGINT
        # ignored, and Python would then never raise KeyboardInterrupt.
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            server.start()
        except OSError as e:
            print(f'simulated device: cannot listen on 127.0.0.1:{opts.port}: '
                  f'{e.strerror or e}', file=sys.stderr)
            return 1
        print(f'simulated device listening on 127.0.0.1:{server.port}', flush=True)
        stop.wait()
        return 0
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == '__main__':
    sys.exit(main())
