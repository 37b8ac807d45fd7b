"""The simulated device's test-bench faults (``FAULT`` commands). Pure and
thread-safe: the server asks it what to do; it never touches a socket.

* ``SLOW s``: every device reply is delayed by ``s`` more seconds;
* ``HOLD s``: every device command holds the bus ``s`` more seconds (a slow
  command: one that another caller's command can collide with);
* ``DROPNEXT``: the next device command is not run (its connection is closed);
* ``DROP``: every open connection is closed (the server does it);
* ``OFF``: clear SLOW, HOLD and DROPNEXT.
"""
import threading

from ocs_locking.agents.simulated_device.protocol import MAX_SLOW

__all__ = ['Faults']


class Faults:
    """Fault settings shared by every connection of one device.

    Args:
        slow (float): initial ``FAULT SLOW`` delay, 0..600 s.
        drop_next (bool): start with ``FAULT DROPNEXT`` armed.
        hold (float): initial ``FAULT HOLD`` bus time, 0..600 s.
    """

    def __init__(self, slow=0.0, drop_next=False, hold=0.0):
        if isinstance(slow, bool) or not isinstance(slow, (int, float)) \
                or not 0 <= slow <= MAX_SLOW:
            raise ValueError(f'slow must be a number of seconds in 0..{MAX_SLOW:g}, '
                             f'not {slow!r}')
        if isinstance(hold, bool) or not isinstance(hold, (int, float)) \
                or not 0 <= hold <= MAX_SLOW:
            raise ValueError(f'hold must be a number of seconds in 0..{MAX_SLOW:g}, '
                             f'not {hold!r}')
        self._lock = threading.Lock()
        self._slow = float(slow)
        self._hold = float(hold)
        self._drop_next = bool(drop_next)

    @property
    def slow(self):
        return self._slow

    @property
    def hold(self):
        return self._hold

    @property
    def drop_next(self):
        return self._drop_next

    def apply(self, kind, seconds=None):
        """Apply one ``FAULT`` (kind SLOW, HOLD, DROP, DROPNEXT or OFF, already
        checked by :func:`.protocol.parse`). Returns ``'drop-all'`` when every
        connection must now be closed, else None."""
        with self._lock:
            if kind == 'SLOW':
                self._slow = float(seconds)
            elif kind == 'HOLD':
                self._hold = float(seconds)
            elif kind == 'DROPNEXT':
                self._drop_next = True
            elif kind == 'OFF':
                self._slow, self._hold, self._drop_next = 0.0, 0.0, False
            elif kind == 'DROP':
                return 'drop-all'
            else:
                raise ValueError(f'unknown fault {kind!r}')
        return None

    def take_drop_next(self):
        """True once if DROPNEXT is armed (and disarm it)."""
        with self._lock:
            drop, self._drop_next = self._drop_next, False
        return drop
