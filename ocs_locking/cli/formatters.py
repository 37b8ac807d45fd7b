"""Text and JSON for ``ocs-locks``: the lock table and the audit log (pure)."""
import time

from ..flags import lease_flags
from ..lock_history import SPAN_KEYS
from ..wire import one_line

__all__ = ['JSON_KEYS', 'HISTORY_KEYS', 'RECEIVED', 'format_table', 'json_rows',
           'format_history', 'history_rows', 'clock', 'health_lines', 'bus_lines',
           'format_resources', 'format_site_leases', 'format_waiters', 'SPAN_ROW_KEYS',
           'span_text', 'deadlock_lines']

#: The keys of every ``ocs-locks status --json`` row (contract). ``held_for``:
#: seconds the hold had lasted when the registry sent the row (None: free).
#: ``queue``: who waits, in order (``{'job', 'op', 'session_id', 'since',
#: 'waited_for'}``, the first QUEUE_SHOWN; [] from an agent older than it).
JSON_KEYS = ('lock', 'agent', 'job', 'session_id', 'since', 'waiters', 'alive', 'held_for',
             'queue')

#: The keys of every ``ocs-locks history --json`` row of a site lease
#: (contract; ``kind`` is ``lease``). ``caller``: who made the call
#: (``{'identity', 'verified', 'via', ...}``) or None.
HISTORY_KEYS = ('kind', 'at', 'action', 'resource', 'owner', 'token', 'client', 'detail',
                'ok', 'caller')
#: The keys of every ``ocs-locks history --json`` row of an agent lock's span
#: (contract; ``kind`` is ``lock``, ``at`` its start; see
#: :data:`ocs_locking.lock_history.SPAN_KEYS`).
SPAN_ROW_KEYS = ('kind', 'at') + SPAN_KEYS


def json_rows(rows):
    """Rows of the table with exactly :data:`JSON_KEYS` (``queue``: [] when
    the registry's row has none)."""
    return [{k: (r.get(k) if k != 'queue' else _queue(r)) for k in JSON_KEYS} for r in rows]


def _queue(row):
    q = row.get('queue')
    return [w for w in q if isinstance(w, dict)] if isinstance(q, list) else []


def history_rows(rows):
    """History rows with exactly :data:`HISTORY_KEYS` (site leases; a row
    without ``kind`` from an older registry is one) or
    :data:`SPAN_ROW_KEYS` (``kind`` ``lock``)."""
    out = []
    for r in rows:
        kind = 'lock' if r.get('kind') == 'lock' else 'lease'
        keys = SPAN_ROW_KEYS if kind == 'lock' else HISTORY_KEYS
        out.append(dict({k: r.get(k) for k in keys}, kind=kind))
    return out


def clock(t):
    """``HH:MM:SS`` (local time) of a Unix time; ``?`` for anything else."""
    return time.strftime('%H:%M:%S', time.localtime(t)) if isinstance(t, (int, float)) \
        else '?'


def _free(row):
    return row.get('job') is None and row.get('since') is None


def _text(value, most=80):
    """A field of a row as display text: one line, bounded (a malformed
    row still prints)."""
    return one_line(value if isinstance(value, str) else repr(value), most)


#: The key under which ``ocs-locks`` notes when it received a row (its own
#: monotonic clock), so that "held for" counts on between messages.
RECEIVED = '_received'


def _held_for(row, now):
    if _free(row):
        return '-'
    # held_for: how long the hold (from its first grant, through moments
    # lent to others) had lasted when the registry sent the row, measured
    # on one clock at a time; plus how long ago this process received it.
    # The agent's ``since`` is never compared with this host's clock.
    held = row.get('held_for')
    if isinstance(held, bool) or not isinstance(held, (int, float)):
        return '?'
    received = row.get(RECEIVED)
    if isinstance(received, (int, float)) and now is not None:
        held += max(0.0, now - received)
    return f'{max(0.0, held):.1f} s'


def format_table(rows, now=None):
    """The table as text: lock, holder, held for, waiters, agent alive (and
    the row's flags, ``alive [stuck]``).

    ``now``: this process's ``time.monotonic()``, for rows marked with when
    they were received (:data:`RECEIVED`); default: now."""
    now = time.monotonic() if now is None else now
    header = ('LOCK', 'HOLDER', 'HELD FOR', 'WAITERS', 'AGENT')
    lines = []
    for r in rows:
        if _free(r):
            holder = '(free)'
        else:
            holder = _text(r.get('job')) if r.get('job') else '(unnamed)'
            if r.get('session_id') is not None:
                holder += f" (session {_text(r['session_id'], 20)})"
        agent = 'alive' if r.get('alive') is True else 'STALE'
        flags = _flags(r)
        if flags:
            agent += f" [{', '.join(flags)}]"
        lines.append((_text(r.get('lock', '?'), 130), holder, _held_for(r, now),
                      _text(r.get('waiters', 0), 20), agent))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [fmt.format(*header)] + [fmt.format(*line) for line in lines]
    if not lines:
        out.append('(no locks reported yet)')
    return '\n'.join(out)


def bus_lines(bus):
    """``['bus not verified: <reason>']`` when the registry's ``bus`` block
    says the router does not enforce who publishes (ocs's stock config, or
    no router component); [] when it is verified or unknown (an older
    registry)."""
    if not isinstance(bus, dict) or bus.get('verified') is not False:
        return []
    return [f"bus not verified: {one_line(bus.get('reason') or 'no reason given', 200)}"]


def replication_lines(rep):
    """Who serves the registry and who stands by (its ``replication``
    block, docs/standby.rst): [] when no standby follows and none ever did,
    or the block is unknown (an older registry)."""
    if not isinstance(rep, dict) or rep.get('role') != 'primary':
        return []
    lines = []
    took = rep.get('took_over')
    if isinstance(took, dict):
        lines.append(f"registry served by standby {_text(rep.get('identity'), 60)} since "
                     f"{clock(took.get('at'))} (took over from epoch "
                     f"{_text(took.get('from_epoch'), 20)}; now epoch "
                     f"{_text(took.get('epoch'), 20)})")
    followers = rep.get('followers') if isinstance(rep.get('followers'), list) else []
    for f in followers:
        if isinstance(f, dict):
            who = 'verified' if f.get('verified') else 'NOT verified'
            lines.append(f"standby {_text(f.get('name'), 60)} follows ({who}): "
                         f"{_text(f.get('behind'), 20)} batch(es) behind, heard "
                         f"{_text(f.get('seen_ago'), 20)} s ago")
    drop = rep.get('last_drop')
    if not followers and isinstance(drop, dict):
        lines.append(f"WARNING: no standby follows: {_text(drop.get('name'), 60)} was "
                     f"dropped {_text(drop.get('ago'), 20)} s ago "
                     f"({one_line(str(drop.get('why')), 120)})")
    return lines


def deadlock_lines(deadlocks):
    """One line per deadlock the registry sees (its ``deadlocks``:
    cycles of waits through agents' locks and site leases), oldest first;
    [] when there is none or the registry does not say."""
    if not isinstance(deadlocks, list):
        return []
    lines = []
    for d in deadlocks:
        if isinstance(d, dict) and isinstance(d.get('text'), str):
            age = d.get('for')
            since = f' (for {age:.1f} s)' if isinstance(age, (int, float)) and \
                not isinstance(age, bool) else ''
            lines.append(f"DEADLOCK{since}: {one_line(d['text'], 600)}")
    return lines


def health_lines(health):
    """One line per thing wrong with the registry's lease service (its
    ``lease_health``), for the operator; [] when all is well or unknown."""
    if not isinstance(health, dict):
        return []
    lines = []
    storage = health.get('storage')
    if isinstance(storage, dict) and storage.get('ok') is False:
        lines.append(f"WARNING: lease storage is failing, so no lease is granted, renewed "
                     f"or released: {one_line(storage.get('error') or '?', 200)}")
    procs = health.get('procedures')
    if isinstance(procs, dict) and procs.get('registered') is False:
        missing = procs.get('missing')
        names = ', '.join(str(m) for m in missing) if isinstance(missing, list) else '?'
        lines.append(f'WARNING: lease procedures not registered on the router ({names}): '
                     f'lease calls fail until the registry holds them again')
    return lines


def _detail_text(detail):
    if not isinstance(detail, dict):
        return str(detail)
    parts = []
    for k, v in detail.items():
        if v in (None, '', {}, []) or k == 'request':
            continue
        if k == 'expires' and isinstance(v, (int, float)):
            v = clock(v)
        parts.append(f'{k}={v}')
    return ' '.join(parts)


def _when(at):
    if not isinstance(at, (int, float)):
        return '?'
    # tenths are truncated, not rounded: 28.97 s is 28.9, never "28.0" (nor 29.0)
    return time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at)) + f'.{int(at % 1 * 10)}'


def caller_text(caller):
    """Who made an audited call: ``sim-device-1``, ``alice@host (declared)``,
    ``-`` when unknown (the registry's timer, rows older than schema 4)."""
    if not isinstance(caller, dict):
        return '-'
    who = ' '.join(str(caller.get('identity') or '?').split())[:60]
    return who if caller.get('verified') is True else f'{who} (declared)'


def _span_secs(x):
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return '?'
    if x < 120:
        return f'{x:.1f} s' if x < 10 else f'{x:.0f} s'
    m, sec = divmod(int(x), 60)
    return f'{m}m{sec:02d}s' if m < 60 else f'{m // 60}h{m % 60:02d}m'


def _count(n, one, many):
    return f'{n} {one if n == 1 else many}'


def span_text(span):
    """One span as a line: ``12:01:03-12:03:40 held 2m31s in 1570 holds
    (longest 0.2 s), lent 14 times, 2 gave up; released``."""
    end = span.get('end')
    outcome = span.get('outcome')
    when = f"{clock(span.get('start'))}-{clock(end) if end is not None else 'now'}"
    holds = span.get('holds') if isinstance(span.get('holds'), int) else 0
    text = f"{when} held {_span_secs(span.get('held'))}"
    if holds != 1:
        text += f" in {_count(holds, 'hold', 'holds')} (longest " \
                f"{_span_secs(span.get('longest'))})"
    for key, one, many in (('lent', 'lent once', 'lent {} times'),
                           ('gave_up', '1 gave up', '{} gave up')):
        n = span.get(key)
        if isinstance(n, int) and n > 0:
            text += ', ' + (one if n == 1 else many.format(n))
    if outcome != 'open':
        text += f'; {_text(outcome, 20)}'
    elif end is None:
        text += '; holding'
    return text


def _holder_text(span):
    job = _text(span.get('job') or '?', 40)
    return job if span.get('session_id') is None else f"{job} (session {span['session_id']})"


def format_spans(rows):
    """Spans of agent locks as text: lock, holder, and :func:`span_text`."""
    header = ('LOCK', 'HOLDER', 'HELD')
    lines = [(_text(r.get('lock'), 80), _holder_text(r), span_text(r)) for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths[:-1]) + '  {}'
    return [fmt.format(*header).rstrip()] + [fmt.format(*line).rstrip() for line in lines]


def format_history(rows, kind='lease'):
    """History as text: the spans of agent locks (:func:`format_spans`),
    then the audit log of site leases (time, action, resource, owner,
    token, client, by (the caller: verified, or marked declared), detail).
    ``kind``: what was asked for (``lease``, ``lock`` or ``all``)."""
    spans = [r for r in rows if r.get('kind') == 'lock']
    rows = [r for r in rows if r.get('kind') != 'lock']
    if kind != 'lease' and not spans and not rows:
        return '(no history records)'
    out = format_spans(spans) if spans else []
    if kind == 'lock' or (spans and not rows):
        return '\n'.join(out)
    if out:
        out.append('')
    out += _format_audit(rows)
    return '\n'.join(out)


def _format_audit(rows):
    header = ('TIME', 'ACTION', 'RESOURCE', 'OWNER', 'TOKEN', 'CLIENT', 'BY', 'DETAIL')
    lines = []
    for r in rows:
        lines.append((_when(r.get('at')), str(r.get('action', '?')),
                      str(r.get('resource', '?')), str(r.get('owner', '')),
                      '-' if r.get('token') is None else str(r['token']),
                      str(r.get('client') or '-'), caller_text(r.get('caller')),
                      _detail_text(r.get('detail'))))
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths[:-1]) + '  {}'
    out = [fmt.format(*header).rstrip()] + [fmt.format(*line).rstrip() for line in lines]
    if not lines:
        out.append('(no audit records)')
    return out


def _seconds(value, fallback):
    value = fallback if value is None else value
    return f'{value:g} s' if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else '?'


def _names(value):
    return [_text(v, 60) for v in value] if isinstance(value, list) else []


def format_resources(tree):
    """The declared resources (``ResourceTree.as_dict()``) as text: path,
    the agents covered (instances; classes as ``class NAME``), lockout
    levels, the holder's level, default and maximum lease (the registry's
    30 s and 3600 s where none is declared), description; then whether
    undeclared paths may be leased."""
    from ..leases.paths import MAX_LEASE
    from ..leases.resources import DEFAULT_LEASE
    header = ('RESOURCE', 'AGENTS', 'LOCKOUT', 'HOLDER', 'LEASE', 'MAX LEASE', 'DESCRIPTION')
    lines = []
    rows = tree.get('resources') if isinstance(tree, dict) else None
    for r in rows if isinstance(rows, list) else ():
        if not isinstance(r, dict):
            continue
        agents = _names(r.get('instances')) + [f'class {c}' for c in _names(r.get('classes'))]
        levels = r.get('lockout_levels')
        most = r.get('max_lease')
        default = r.get('default_lease')
        if default is None and isinstance(most, (int, float)):
            default = min(DEFAULT_LEASE, most)
        lines.append((_text(r.get('path', '?'), 130), ', '.join(agents) or '-',
                      ','.join(str(n) for n in levels) if isinstance(levels, list) else '?',
                      _text(r.get('holder_level', '?'), 5), _seconds(default, DEFAULT_LEASE),
                      _seconds(most, MAX_LEASE), _text(r.get('description') or '', 200)))
    adhoc = tree.get('adhoc') if isinstance(tree, dict) else None
    source = tree.get('source') if isinstance(tree, dict) else None
    if not lines:
        if adhoc is True:
            return ('No resources declared: every well-formed path may be leased '
                    '(the registry was given no --resources).')
        return '(no resources declared)'
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths[:-1]) + '  {}'
    out = [fmt.format(*header).rstrip()] + [fmt.format(*line).rstrip() for line in lines]
    if adhoc is True:
        out.append('Undeclared paths may be leased too (adhoc: true), except a near miss of '
                   'a declared one.')
    else:
        out.append('Only these paths may be leased (adhoc: false).')
    if source:
        out.append(f'Declared in {_text(source, 200)}.')
    return '\n'.join(out)


def _path(value):
    return _text(value, 130) if isinstance(value, str) else '?'


def _left(grant, received, now):
    """How long a grant still holds: its ``expires_in`` (seconds left on the
    registry's clock when it answered) less the time since this process
    received it (its own monotonic clock); ``-`` when the registry did not
    say (an older registry)."""
    left = grant.get('expires_in')
    if isinstance(left, bool) or not isinstance(left, (int, float)) or left != left:
        return '-'
    if isinstance(received, (int, float)) and now is not None:
        left -= max(0.0, now - received)
    left = max(0.0, left)
    text = f'{left:.1f} s' if left < 10 else f'{left:.0f} s'
    # expiring: counted down here too, so the flag shows between messages
    if lease_flags(grant, left) or 'expiring' in _flags(grant):
        text += ' [expiring]'
    return text


def _flags(row):
    """A row's ``flags`` as display words (an older registry's row has none)."""
    flags = row.get('flags')
    return [_text(f, 20) for f in flags] if isinstance(flags, list) else []


def format_site_leases(data, now=None):
    """The site leases below the lock table: one line per grant (resource,
    owner, token, granted, until, time left, how many wait for it, note),
    then one line per waiting request (who, for what, its place, when it
    gives up). Times are the registry's clock shown as local time (never
    compared with this host's); LEFT counts down from the grant's
    ``expires_in`` on this process's monotonic clock (``now``, default now)
    from when ``data`` was received (its :data:`RECEIVED`, if marked).
    ``data``: the ``leases`` pages or feed message (``grants``, ``waiting``).
    ``[]`` when nothing is held nor waiting."""
    now = time.monotonic() if now is None else now
    received = data.get(RECEIVED)
    grants = [g for g in data.get('grants') or [] if isinstance(g, dict)]
    waiting = [w for w in data.get('waiting') or [] if isinstance(w, dict)]
    if not grants and not waiting:
        return []
    queue = {}
    for w in waiting:
        for r in w.get('resources') or []:
            if isinstance(r, str):
                queue[r] = queue.get(r, 0) + 1
    header = ('SITE LEASE', 'OWNER', 'TOKEN', 'GRANTED', 'UNTIL', 'LEFT', 'QUEUE', 'NOTE')
    rows = []
    for g in sorted(grants, key=lambda g: str(g.get('resource'))):
        path = _path(g.get('resource')) + ('/**' if g.get('tree') is True else '')
        rows.append((path, _text(g.get('owner'), 40), _text(g.get('token'), 20),
                     clock(g.get('granted_at')), clock(g.get('expires')),
                     _left(g, received, now),
                     str(queue.get(g.get('resource'), 0)), _text(g.get('note') or '', 60)))
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [fmt.format(*header).rstrip()] + [fmt.format(*row).rstrip() for row in rows]
    if not rows:
        out.append('(no site leases held)')
    for w in waiting:
        wanted = ', '.join(_path(r) for r in w.get('resources') or [])
        out.append(f"waiting: {_text(w.get('owner'), 40)} for {wanted} (position "
                   f"{_text(w.get('position'), 10)}, gives up {clock(w.get('deadline'))})")
    return out


def _waited(entry, received, now):
    waited = entry.get('waited_for')
    if isinstance(waited, bool) or not isinstance(waited, (int, float)) or waited != waited:
        return '?'
    if isinstance(received, (int, float)) and now is not None:
        waited += max(0.0, now - received)
    return f'{max(0.0, waited):.1f} s'


def format_waiters(rows, now=None):
    """Who waits for each lock, in the order they will be served: for each
    row with a ``queue``, its lock, then one line per waiter (position,
    job/op, session, waited for; waited for counts on from when the row was
    received, :data:`RECEIVED`, on this process's monotonic clock ``now``),
    and ``... and N more`` when ``waiters`` says more wait than the queue
    names. ``[]`` when nobody waits."""
    now = time.monotonic() if now is None else now
    out = []
    for r in rows:
        queue = _queue(r)
        total = r.get('waiters')
        more = total - len(queue) if isinstance(total, int) and not isinstance(total, bool) \
            else 0
        if not queue and more <= 0:
            continue
        out.append(f"{_text(r.get('lock', '?'), 130)}: {total} waiting")
        for i, w in enumerate(queue, 1):
            job, op = w.get('job'), w.get('op')
            who = _text(job) if job else '(unnamed)'
            if op and op != job:
                who += f'/{_text(op)}'
            session = w.get('session_id')
            where = f'session {_text(session, 20)}' if session is not None else 'no session'
            out.append(f"  {i}. {who} ({where}) waiting for "
                       f"{_waited(w, r.get(RECEIVED), now)}")
        if more > 0:
            out.append(f'  ... and {more} more')
    return out
