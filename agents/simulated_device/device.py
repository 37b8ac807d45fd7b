"""The simulated thermometry controller itself: a pure model (no sockets).

It models a device that must only ever be spoken to by one caller at a time:
it has ONE bus. Each device command holds the bus for ``latency`` seconds; a
second command arriving while one is in progress is a *bus collision*,
counted and raised as :class:`BusCollision`. The demo agent shows that its
lock keeps the count at 0.

It also **checks fencing tokens** itself, as a real device that can take one
should: a command may carry the lease holder's fencing token; the device
remembers the highest token it has seen (:attr:`fence`) and refuses, before
touching the bus, any command with a lower one (:class:`StaleToken`, counted
as ``stale``). A holder that was frozen past its lease and wakes up with its
old token is then refused by the device itself, whatever it believes.
Commands without a token (one agent, no site lock) are always served.

:class:`~.server.DeviceServer` puts this model behind a line protocol on TCP
(:mod:`.protocol`); the model is also usable on its own, e.g. in tests. Every
method may be called from any thread; the counters are exact.
"""
import math
import threading
import time

__all__ = ['BusCollision', 'StaleToken', 'SimulatedThermometry', 'MAX_TOKEN', 'HEATER_MAX', 'MAX_CHANNELS',
           'MAX_LATENCY', 'VERSION']

#: Highest heater output, in percent (the lowest is 0).
HEATER_MAX = 100.0
#: Most thermometer channels a device may have.
MAX_CHANNELS = 64
#: Longest per-command latency, in seconds.
MAX_LATENCY = 10.0
#: Firmware version reported by :meth:`SimulatedThermometry.identify`.
VERSION = '1.0'
#: Largest fencing token a command may carry.
MAX_TOKEN = 2 ** 63 - 1


class BusCollision(RuntimeError):
    """Two commands reached the device at once."""


class StaleToken(RuntimeError):
    """A command carried a fencing token lower than one the device has seen."""


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SimulatedThermometry:
    """A thermometry controller with ``channels`` thermometers and a heater.

    Args:
        channels (int): number of thermometer channels, 1..64.
        latency (float): seconds each device command holds the bus, 0..10.
        serial (str): serial number, printable ASCII without commas or spaces.
        clock (callable): the time source of readings (default ``time.time``).
        wait (callable): ``wait(seconds)`` spends a command's latency (default
            ``time.sleep``; the server passes an Event's wait so that a stop
            cuts it short).
        hold (callable): ``hold()`` is how many seconds more each command
            holds the bus (default none; the server's ``FAULT HOLD``).

    Raises:
        ValueError: a setting is out of range (nothing is created).
    """

    def __init__(self, channels=4, latency=0.002, serial='0', clock=time.time,
                 wait=time.sleep, hold=None):
        if not isinstance(channels, int) or isinstance(channels, bool) \
                or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f'channels must be an int in 1..{MAX_CHANNELS}, not {channels!r}')
        if not _is_number(latency) or not 0 <= latency <= MAX_LATENCY:
            raise ValueError(f'latency must be a number of seconds in 0..{MAX_LATENCY:g}, '
                             f'not {latency!r}')
        serial = str(serial)
        if not serial or not serial.isascii() or not serial.isprintable() \
                or ',' in serial or any(c.isspace() for c in serial):
            raise ValueError(f'serial must be printable ASCII without commas or spaces, '
                             f'not {serial!r}')
        self.channels = channels
        self.latency = latency
        self.serial = serial
        self.heater = 0.0
        self.commands = 0      # device commands run (guarded by _counts)
        self.collisions = 0    # commands refused as overlapping (guarded by _counts)
        self.stale = 0         # commands refused for a stale token (guarded by _counts)
        self.fence = 0         # the highest fencing token seen (guarded by _counts)
        self._clock = clock
        self._wait = wait
        self._hold = hold
        self._busy = threading.Lock()     # the bus: detects overlap, never waited on
        self._counts = threading.Lock()

    def __repr__(self):
        return (f'<SimulatedThermometry {self.serial} channels={self.channels} '
                f'latency={self.latency:g}>')

    # -- the bus ---------------------------------------------------------------

    def _command(self, fn, token=None):
        if token is not None:
            self.fenced(token)
        if not self._busy.acquire(blocking=False):
            self.collision()
            raise BusCollision('bus collision: a command arrived while another was in progress')
        try:
            with self._counts:
                self.commands += 1
            busy = self.latency + (self._hold() if self._hold is not None else 0.0)
            if busy:
                self._wait(busy)
            return fn()
        finally:
            self._busy.release()

    def fenced(self, token):
        """Admit a command carrying fencing ``token``: raise
        :class:`StaleToken` (and count it) if a higher token was seen, else
        remember it as the highest. Tokens are ints in 0..MAX_TOKEN."""
        if isinstance(token, bool) or not isinstance(token, int) \
                or not 0 <= token <= MAX_TOKEN:
            raise ValueError(f'token must be an int in 0..2**63-1, not {token!r:.40}')
        with self._counts:
            if token < self.fence:
                self.stale += 1
                raise StaleToken(f'stale fencing token {token}: this device has seen '
                                 f'token {self.fence}')
            self.fence = token

    def collision(self):
        """Count a collision seen outside the bus (e.g. a command sent over
        the wire before the previous command's reply)."""
        with self._counts:
            self.collisions += 1

    def stats(self):
        """``{'commands', 'collisions', 'stale', 'fence', 'busy'}``, read
        together (``busy``: 1 while a command holds the bus)."""
        with self._counts:
            return {'commands': self.commands, 'collisions': self.collisions,
                    'stale': self.stale, 'fence': self.fence,
                    'busy': int(self._busy.locked())}

    # -- device commands (each holds the bus) -------------------------------------

    # Each takes ``token``: the caller's fencing token (None: not fenced).

    def identify(self, token=None):
        """``'OCSLOCK,SIMTHERM,<serial>,1.0'``."""
        return self._command(lambda: f'OCSLOCK,SIMTHERM,{self.serial},{VERSION}', token)

    def check_channel(self, channel):
        """Raise ValueError unless ``channel`` is one of this device's channels."""
        if isinstance(channel, bool) or not isinstance(channel, int) \
                or not 0 <= channel < self.channels:
            raise ValueError(f'channel must be an int in 0..{self.channels - 1}, '
                             f'not {channel!r}')

    def read(self, channel=None, token=None):
        """Return ``{'timestamp': t, 'channels': {'ch00': K, ...}}`` for one
        channel or (None) all of them, in channel order."""
        if channel is not None:
            self.check_channel(channel)
        chans = range(self.channels) if channel is None else [channel]

        def read():
            t = self._clock()
            return {'timestamp': t,
                    'channels': {f'ch{c:02d}': self._temperature(c, t) for c in chans}}
        return self._command(read, token)

    def set_heater(self, value, token=None):
        """Set the heater output (percent, 0..100); returns it as a float."""
        if not _is_number(value) or not 0 <= value <= HEATER_MAX:
            raise ValueError(f'heater value must be a number in 0..{HEATER_MAX:g}, '
                             f'not {value!r}')

        def set_():
            self.heater = float(value)
            return self.heater
        return self._command(set_, token)

    def get_heater(self, token=None):
        """The heater output, in percent."""
        return self._command(lambda: self.heater, token)

    def _temperature(self, channel, t):
        # A slow drift per channel, warmed by the heater.
        return 0.1 + 0.01 * channel + 0.002 * self.heater + 0.001 * math.sin(t / 10 + channel)
