"""A simulated thermometry controller that detects concurrent access.

It models a device that must only ever be spoken to by one caller at a time:
each command takes ``latency`` seconds and a second command arriving while one
is in progress is a *bus collision*, counted and raised as
:class:`BusCollision`. The demo agent shows that its lock keeps the count at 0.
"""
import math
import threading
import time


class BusCollision(RuntimeError):
    """Two commands reached the device at once."""


class SimulatedThermometry:
    def __init__(self, channels=4, latency=0.002, clock=time.time):
        if not isinstance(channels, int) or not 1 <= channels <= 64:
            raise ValueError(f'channels must be an int in 1..64, not {channels!r}')
        if not isinstance(latency, (int, float)) or not 0 <= latency <= 10:
            raise ValueError(f'latency must be a number of seconds in 0..10, not {latency!r}')
        self.channels = channels
        self.latency = latency
        self.heater = 0.0
        self.collisions = 0
        self.commands = 0
        self._clock = clock
        self._busy = threading.Lock()   # detects overlap; never waited on

    def _command(self, fn):
        if not self._busy.acquire(blocking=False):
            self.collisions += 1
            raise BusCollision('bus collision: a command arrived while another was in progress')
        try:
            self.commands += 1
            if self.latency:
                time.sleep(self.latency)
            return fn()
        finally:
            self._busy.release()

    def _temperature(self, channel, t):
        # A slow drift per channel, warmed by the heater.
        return 0.1 + 0.01 * channel + 0.002 * self.heater + 0.001 * math.sin(t / 10 + channel)

    def read(self, channel=None):
        """Return ``{'timestamp': t, 'channels': {'ch00': K, ...}}`` (one or all)."""
        def _read():
            t = self._clock()
            chans = range(self.channels) if channel is None else [channel]
            return {'timestamp': t,
                    'channels': {f'ch{c:02d}': self._temperature(c, t) for c in chans}}
        if channel is not None and not (isinstance(channel, int) and 0 <= channel < self.channels):
            raise ValueError(f'channel must be an int in 0..{self.channels - 1}, not {channel!r}')
        return self._command(_read)

    def set_heater(self, value):
        if not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ValueError(f'heater value must be a number in 0..100, not {value!r}')

        def _set():
            self.heater = float(value)
            return self.heater
        return self._command(_set)
