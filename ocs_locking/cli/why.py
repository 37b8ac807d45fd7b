"""``ocs-locks why LOCK|RESOURCE``: why it is busy, in a few lines.

Asks the registry's ``why`` task (:func:`ocs_locking.why.explain` runs
there, on the registry's own table and lease state and clock) and prints
its lines; ``--json`` prints the whole answer.
"""
import json

from ..errors import CliError

__all__ = ['cmd_why', 'MAX_TARGET']

#: The longest target accepted (a lock key or resource path is far shorter).
MAX_TARGET = 400


def check_target(value):
    """The target, stripped; CliError (one line) for an empty or huge one."""
    target = value.strip() if isinstance(value, str) else ''
    if not target or len(target) > MAX_TARGET or any(c.isspace() for c in target):
        raise CliError(f'why: the target must be a lock (agent/lock, e.g. sim-device-1/hw) '
                       f'or a resource (e.g. demo/hwp), not {value!r:.60}')
    return target


def cmd_why(args):
    """Print why ``args.target`` is busy (the registry's answer)."""
    from .leases import _run_task
    target = check_target(args.target)
    try:
        _message, data = _run_task(args, 'why', {'target': target},
                                   refusal=lambda m: m[5:] if m.startswith('why: ') else m)
    except AttributeError:      # ocs's client has no such operation
        raise CliError(f'why: the registry {args.registry!r} does not answer it '
                       f'(an older LockRegistryAgent without the why task)') from None
    answer = (data or {}).get('why')
    if not isinstance(answer, dict) or not isinstance(answer.get('lines'), list):
        raise CliError('why: the registry gave no answer')
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        for line in answer['lines']:
            print(line)
    return 0
