"""Resource names and argument checks for site-wide leases (pure).

Resources are ``/``-separated paths (``satp1/hwp``): each segment
``[a-z0-9][a-z0-9_.-]{0,31}``, at most 8 segments and 200 characters. Every
check raises :class:`LeaseError` with a one-line message naming the argument.
"""
import math
import re
import time

from ..errors import LeaseError

__all__ = ['MIN_LEASE', 'MAX_LEASE', 'LeaseError', 'ancestors', 'conflicts', 'overlap',
           'check_resource', 'check_resources', 'check_lease', 'check_seconds', 'check_text',
           'check_time', 'check_positive_int', 'bad_value', 'when']

MAX_PATH, MAX_DEPTH = 200, 8
_SEGMENT = re.compile(r'[a-z0-9][a-z0-9_.-]{0,31}\Z')
MAX_TIME = 1e12          # seconds; refuses inf, NaN and absurd clocks
#: The shortest and longest lease anyone may ask for, seconds. Shorter than
#: MIN_LEASE cannot be renewed in time over a real network; longer than
#: MAX_LEASE keeps hardware from everyone for too long after a crash.
MIN_LEASE, MAX_LEASE = 0.5, 3600.0


def bad_value(name, rule, value):
    return LeaseError(f'{name} must be {rule}, not {value!r:.80}')


def ancestors(path):
    """``'a/b/c'`` -> ``('a', 'a/b')``: the proper ancestors, outermost first."""
    parts = path.split('/')
    return tuple('/'.join(parts[:i]) for i in range(1, len(parts)))


def conflicts(a, a_tree, b, b_tree):
    """Whether a grant on path ``a`` and one on path ``b`` exclude each other.

    The same path always conflicts with itself; a tree grant also excludes
    every path below it. Non-tree grants on ``x`` and ``x/y`` coexist.
    """
    if a == b:
        return True
    if b.startswith(a + '/'):
        return a_tree
    if a.startswith(b + '/'):
        return b_tree
    return False


def overlap(paths, tree, other_paths, other_tree):
    return any(conflicts(a, tree, b, other_tree) for a in paths for b in other_paths)


def check_resource(value, name='resource'):
    """Return ``value`` if it is a well-formed resource path, else raise LeaseError."""
    if not isinstance(value, str):
        raise bad_value(name, "a path like 'satp1/hwp'", value)
    if not value:
        raise LeaseError(f'{name} must not be empty')
    if len(value) > MAX_PATH:
        raise LeaseError(f'{name} must be at most {MAX_PATH} characters, '
                         f'not {len(value)}: {value!r:.80}')
    parts = value.split('/')
    if len(parts) > MAX_DEPTH:
        raise LeaseError(f'{name} must have at most {MAX_DEPTH} segments, '
                         f'not {len(parts)}: {value!r:.80}')
    for part in parts:
        if not _SEGMENT.match(part):
            raise LeaseError(f'{name} segment {part!r:.40} must match '
                             f'[a-z0-9][a-z0-9_.-]{{0,31}}: {value!r:.80}')
    return value


def check_resources(value, tree, most):
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise bad_value('resources', 'a resource path or a list of them', value)
    if not items:
        raise LeaseError('resources must not be an empty list')
    if len(items) > most:
        raise LeaseError(f'resources must list at most {most} paths, not {len(items)}')
    names = sorted(check_resource(v) for v in items)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if a == b:
                raise LeaseError(f'resources must not list {a!r} twice')
            if conflicts(a, tree, b, tree):
                raise LeaseError(f'resources {a!r} and {b!r} overlap (tree={tree})')
    return tuple(names)


def check_seconds(name, value, most, zero_ok=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_value(name, 'a number of seconds', value)
    if not 0 <= value <= most or (value == 0 and not zero_ok):     # also refuses NaN
        raise bad_value(name, f'in {"[" if zero_ok else "("}0, {most:g}] seconds', value)
    return float(value)


def check_lease(value, most=MAX_LEASE, name='lease'):
    """Return ``value`` as a float if it is a lease length in
    ``[MIN_LEASE, most]`` seconds (``most`` at most MAX_LEASE), else raise."""
    most = min(most, MAX_LEASE)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_value(name, 'a number of seconds', value)
    if not MIN_LEASE <= value <= most:          # also refuses NaN
        raise bad_value(name, f'in [{MIN_LEASE:g}, {most:g}] seconds', value)
    return float(value)


def when(t):
    """``23:01:02.3``: a time of this host's clock as local time with tenths,
    truncated (never a second early); for messages, never for logic."""
    sec = math.floor(t)
    if sec != _when_last[0]:        # one strftime per second of times asked about
        _when_last[:] = [sec, time.strftime('%H:%M:%S', time.localtime(sec))]
    return f'{_when_last[1]}.{int(t % 1 * 10)}'


_when_last = [None, '']             # the last whole second when() formatted, and its text


def check_time(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not -MAX_TIME <= value <= MAX_TIME:
        raise bad_value('now', 'a finite time in seconds', value)
    return float(value)


def check_text(name, value, most, required=False):
    if not isinstance(value, str):
        raise bad_value(name, 'a string', value)
    if required and not value.strip():
        raise LeaseError(f'{name} must not be empty')
    if len(value) > most:
        raise LeaseError(f'{name} must be at most {most} characters, '
                         f'not {len(value)}: {value!r:.80}')
    if not value.isprintable():
        raise bad_value(name, 'printable text on one line', value)
    return value


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 63:
        raise bad_value(name, 'a positive integer', value)
    return value
