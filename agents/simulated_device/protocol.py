"""The simulated device's line protocol: parse one command line, and answer a
device command from the model. Pure (no sockets, no threads).

One line per command, terminated by ``\\n`` (a trailing ``\\r`` is ignored,
verbs are case-insensitive); one reply line each::

    *IDN?             -> OCSLOCK,SIMTHERM,<serial>,1.0
    READ? <ch>        -> 0.110123                  (6 decimals)
    READ?             -> 0.100841,0.110909,...     (all channels)
    HEATER <value>    -> OK                        (0..100 %)
    HEATER?           -> 12.500000
    TOKEN <n> <cmd>   -> the reply of the device command <cmd>, run only if the
                         fencing token <n> is not below the highest one the
                         device has seen; else ERR stale fencing token ...
    STATS?            -> commands=<n> collisions=<n> connections=<n> stale=<n>
                         fence=<n> busy=<0|1>
    FAULT SLOW <s>    -> OK   every device reply is delayed by <s> more seconds
    FAULT HOLD <s>    -> OK   every device command holds the bus <s> more seconds
    FAULT DROP        -> OK   then every open connection is closed (this one too)
    FAULT DROPNEXT    -> OK   the next device command is not run; its connection
                              is closed instead of replying
    FAULT OFF         -> OK   clear the faults (SLOW, HOLD, DROPNEXT)
    anything else     -> ERR <reason>   (the connection stays usable)

*Device commands* (``*IDN?``, ``READ?``, ``HEATER``, ``HEATER?``) use the
bus, and may carry a fencing token (``TOKEN <n>`` in front; see
:mod:`.device`): ``stale`` counts the commands refused for a lower token,
``fence`` is the highest token seen, ``busy`` is 1 while a command holds the
bus. ``STATS?`` and ``FAULT`` are the test bench's side door: they never
touch the bus and take no token (:mod:`.faults` keeps the fault settings).
"""
import math
from dataclasses import dataclass

from ocs_locking.agents.simulated_device.device import HEATER_MAX, MAX_TOKEN

__all__ = ['MAX_LINE', 'MAX_SLOW', 'DEVICE_COMMANDS', 'ProtocolError', 'Request', 'parse',
           'answer', 'stats_line', 'TOO_LONG']

#: Longest accepted command, in bytes before the newline.
MAX_LINE = 256
#: Longest accepted ``FAULT SLOW`` delay, in seconds.
MAX_SLOW = 600.0
#: Verbs that run on the device's bus.
DEVICE_COMMANDS = ('*IDN?', 'READ?', 'HEATER', 'HEATER?')
#: The reason given for a line longer than :data:`MAX_LINE`.
TOO_LONG = f'line too long: more than {MAX_LINE} bytes'


class ProtocolError(Exception):
    """A malformed command: answered ``ERR <reason>``."""


@dataclass(frozen=True)
class Request:
    """One parsed command line.

    ``arg`` is the channel (int or None) of ``READ?``, the value (float) of
    ``HEATER``, or ``(kind, seconds)`` of ``FAULT`` (seconds for SLOW and
    HOLD); ``token`` the fencing token of a device command (None: none).
    """
    verb: str
    arg: object = None
    token: object = None

    @property
    def on_bus(self):
        return self.verb in DEVICE_COMMANDS


def _short(token, limit=40):
    text = repr(token)
    return text if len(text) <= limit else text[:limit - 4] + '...' + text[-1]


def _number(token, what, low, high):
    try:
        value = float(token)
    except ValueError:
        raise ProtocolError(f'bad number {_short(token)} for {what}') from None
    if not math.isfinite(value):
        raise ProtocolError(f'bad number {_short(token)} for {what}: must be finite')
    if not low <= value <= high:
        raise ProtocolError(f'{what} {token} out of range {low:g}..{high:g}')
    return value


def _no_args(verb, args):
    if args:
        raise ProtocolError(f'{verb} takes no arguments, got {_short(" ".join(args))}')


def parse(raw, channels):
    """Parse one line (bytes, without the newline) for a device with
    ``channels`` channels. Returns a :class:`Request`; raises
    :class:`ProtocolError` naming what was wrong."""
    try:
        line = raw.decode('ascii')
    except UnicodeDecodeError:
        raise ProtocolError('command is not ASCII') from None
    if line.endswith('\r'):
        line = line[:-1]
    words = line.split()
    if not words:
        raise ProtocolError('empty command')
    if words[0].upper() == 'TOKEN':
        return _tokened(words[1:], channels)
    return _parse(words, channels)


def _tokened(words, channels):
    if len(words) < 2:
        raise ProtocolError('TOKEN needs a fencing token and a device command')
    try:
        token = int(words[0])
    except ValueError:
        raise ProtocolError(f'bad fencing token {_short(words[0])}: expected an integer '
                            f'in 0..2**63-1') from None
    if not 0 <= token <= MAX_TOKEN:
        raise ProtocolError(f'bad fencing token {token}: expected 0..2**63-1')
    request = None if words[1].upper() == 'TOKEN' else _parse(words[1:], channels)
    if request is None or not request.on_bus:
        raise ProtocolError(f'TOKEN goes with a device command ({", ".join(DEVICE_COMMANDS)}), '
                            f'not {_short(words[1])}')
    return Request(request.verb, request.arg, token)


def _parse(words, channels):
    verb, args = words[0].upper(), words[1:]
    if verb == 'FAULT':
        return Request(verb, _fault(args))
    if verb in ('STATS?', '*IDN?', 'HEATER?'):
        _no_args(verb, args)
        return Request(verb)
    if verb == 'HEATER':
        if len(args) != 1:
            raise ProtocolError(f'HEATER needs exactly one value in 0..{HEATER_MAX:g}, '
                                f'got {len(args)}')
        return Request(verb, _number(args[0], 'heater value', 0, HEATER_MAX))
    if verb == 'READ?':
        if len(args) > 1:
            raise ProtocolError(f'READ? takes at most one channel, got {len(args)} arguments')
        if not args:
            return Request(verb)
        try:
            channel = int(args[0])
        except ValueError:
            raise ProtocolError(f'bad channel {_short(args[0])}: expected an integer in '
                                f'0..{channels - 1}') from None
        if not 0 <= channel < channels:
            raise ProtocolError(f'bad channel {channel}: expected 0..{channels - 1}')
        return Request(verb, channel)
    raise ProtocolError(f'unknown command {_short(words[0])}: expected one of '
                        f'{", ".join(DEVICE_COMMANDS)}, STATS?, FAULT')


def _fault(args):
    kind = args[0].upper() if args else ''
    rest = args[1:]
    if kind in ('SLOW', 'HOLD'):
        if len(rest) != 1:
            raise ProtocolError(f'FAULT {kind} needs exactly one value in seconds')
        return (kind, _number(rest[0], f'FAULT {kind} seconds', 0, MAX_SLOW))
    if kind in ('DROP', 'DROPNEXT', 'OFF'):
        _no_args(f'FAULT {kind}', rest)
        return (kind, None)
    what = f'unknown fault {_short(args[0])}' if args else 'FAULT needs a fault'
    raise ProtocolError(f'{what}: expected SLOW <seconds>, HOLD <seconds>, DROP, DROPNEXT '
                        f'or OFF')


def answer(request, device):
    """Run a device command on ``device`` (a
    :class:`~.device.SimulatedThermometry`) and return its reply line.
    Raises :class:`~.device.BusCollision` if the bus is busy,
    :class:`~.device.StaleToken` if the request's token is stale."""
    verb, token = request.verb, request.token
    if verb == '*IDN?':
        return device.identify(token=token)
    if verb == 'HEATER?':
        return f'{device.get_heater(token=token):.6f}'
    if verb == 'HEATER':
        device.set_heater(request.arg, token=token)
        return 'OK'
    if verb == 'READ?':
        reading = device.read(request.arg, token=token)
        return ','.join(f'{v:.6f}' for v in reading['channels'].values())
    raise ValueError(f'{verb} is not a device command')


def stats_line(stats):
    """The ``STATS?`` reply for a stats dict."""
    return (f"commands={stats['commands']} collisions={stats['collisions']} "
            f"connections={stats['connections']} stale={stats['stale']} "
            f"fence={stats['fence']} busy={stats['busy']}")
