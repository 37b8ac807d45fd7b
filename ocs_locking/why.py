"""Why is this lock or resource busy? The answer in a few lines (pure).

``ocs-locks why TARGET``, the registry's ``why`` task and the live page all
answer with :func:`explain`: who holds the target and since when, what that
holder is itself waiting for (the chain across agents' locks and site
leases, followed until it ends, loops or reaches :data:`MAX_CHAIN` links),
who waits and in what order, and how long the holder's holds usually last.

A refusal carries the same facts as a structured reason
(:func:`lock_reason` for ``@locked``, :func:`lease_reason` for leases)::

    {'target': 'hw', 'kind': 'lock', 'holder': 'acq (session 3)',
     'held_for': 12.3, 'left': None, 'waiting': 1,
     'text': "Could not acquire lock 'hw': ..."}

Inputs are plain data: the ownership table's rows (``lock``, ``agent``,
``job``, ``session_id``, ``held_for``, ``waiters``, ``queue``, ``alive``...)
and the lease state's snapshot (``grants``, ``waiting``), with times of the
registry's own clock (``now``). An agent lock's holder waits for another
lock of its agent when it stands in that lock's ``queue`` (same session);
it waits for a site lease when a waiting lease request's owner is its
agent (a :class:`SiteLock`'s default owner). A lease owner waits for the
other leases it has asked for.
"""
from .deadlock import site_deadlocks
from .leases.paths import check_resource, conflicts

__all__ = ['explain', 'lock_reason', 'lease_reason', 'MAX_CHAIN', 'REASON_KEYS']

#: The most links of a chain that :func:`explain` follows.
MAX_CHAIN = 8
#: The keys of every structured refusal reason.
REASON_KEYS = ('target', 'kind', 'holder', 'held_for', 'left', 'waiting', 'text')
#: Waiters named in one answer (the count says how many more).
SHOWN_WAITERS = 10


def _secs(x):
    if x is None:
        return '?'
    return f'{x:.1f} s' if x < 120 else (f'{x / 60:.1f} min' if x < 7200 else f'{x / 3600:.1f} h')


def _job(job, session_id):
    who = job if job is not None else 'an unnamed job'
    return who if session_id is None else f'{who} (session {session_id})'


def _lock_holder(row):
    return None if row.get('job') is None and row.get('session_id') is None \
        and row.get('since') is None else _job(row.get('job'), row.get('session_id'))


def _grant_holder(g):
    return f"{g.get('owner')} (token {g.get('token')})"


# -- structured refusals ------------------------------------------------------------


def lock_reason(status, timeout=None):
    """The structured reason of a refusal for a lock (``status``: a
    :class:`~ocs_locking.status.LockStatus`)."""
    h = status.holder
    return {'target': status.name, 'kind': 'lock',
            'holder': None if h is None else _job(h.job, h.session_id),
            'held_for': None if h is None else round(h.held_for, 3), 'left': None,
            'waiting': len(status.waiters), 'text': status.refusal(timeout)}


def lease_reason(resource, holders, now, waiting=0, text=''):
    """The structured reason of a refusal for a site lease on ``resource``
    (``holders``: the grants in the way, as dicts; ``now``: the clock of
    their ``granted_at``/``expires``)."""
    g = holders[0] if holders else None
    return {'target': resource, 'kind': 'lease',
            'holder': None if g is None else ', '.join(_grant_holder(h) for h in holders),
            'held_for': None if g is None else round(max(0.0, now - g['granted_at']), 3),
            'left': None if g is None else round(max(0.0, g['expires'] - now), 3),
            'waiting': waiting, 'text': text}


# -- the chain ------------------------------------------------------------------------


class _View:
    def __init__(self, rows, leases, now, usual):
        self.rows = {r['lock']: r for r in rows}
        leases = leases or {}
        self.grants = list(leases.get('grants') or ())
        self.waiting = sorted(leases.get('waiting') or (),
                              key=lambda w: (w.get('queued_at') or 0, w.get('request_id') or 0))
        self.now = now
        self.usual = usual

    def lease_holders(self, resource, tree=False):
        return [g for g in self.grants if conflicts(g['resource'], g['tree'], resource, tree)]

    def lease_waiters(self, resource, tree=False):
        return [w for w in self.waiting
                if any(conflicts(r, w['tree'], resource, tree) for r in w['resources'])]

    def waits_of_lock_holder(self, row):
        """What the holder of ``row`` waits for: [('lock', key) | ('lease', request)]."""
        out = []
        sid, job = row.get('session_id'), row.get('job')
        for key, other in sorted(self.rows.items()):
            if key == row['lock'] or other.get('agent') != row.get('agent'):
                continue
            for q in other.get('queue') or ():
                if (sid is not None and q.get('session_id') == sid) or \
                        (sid is None and job is not None and q.get('job') == job):
                    out.append(('lock', key))
                    break
        out += [('lease', w) for w in self.waiting if w.get('owner') == row.get('agent')]
        return out

    def waits_of_owner(self, owner):
        return [('lease', w) for w in self.waiting if w.get('owner') == owner]


def _usual_text(view, row):
    if view.usual is None or row.get('job') is None:
        return ''
    try:
        u = view.usual(row['lock'], row['job'])
    except Exception:       # statistics are a hint, never an error
        return ''
    if not u or not u.get('n'):
        return ''
    return (f"; its holds usually last {_secs(u['median'])} "
            f"(p90 {_secs(u['p90'])}, {u['n']} holds)")


def _link_text(view, what):
    """``(text, [next holders])`` of one thing waited for."""
    kind, item = what
    if kind == 'lock':
        row = view.rows[item]
        holder = _lock_holder(row)
        if holder is None:
            return f'{item}, which is free now', []
        return (f'{item}, held by {holder} for {_secs(row.get("held_for"))}',
                [('lock', row)])
    resources = list(item['resources'])
    holders = []
    for r in resources:
        holders += [g for g in view.lease_holders(r, item['tree']) if g not in holders]
    name = ', '.join(resources)
    if not holders:
        return f'{name} (site lease), whose holder is gone; it is next in line', []
    return (f'{name} (site lease), held by '
            + ', '.join(f'{_grant_holder(g)} for another '
                        f'{_secs(max(0.0, g["expires"] - view.now))}' for g in holders),
            [('lease', g) for g in holders])


def _chain(view, start, seen):
    """Lines and links of what ``start`` (('lock', row) | ('lease', grant))
    waits for, followed link by link."""
    lines, chain = [], []
    frontier = [start]
    while frontier and len(chain) < MAX_CHAIN:
        kind, item = frontier.pop(0)
        if kind == 'lock':
            who = _lock_holder(item)
            waits = view.waits_of_lock_holder(item)
            ident = ('lock', item['lock'])
        else:
            who = _grant_holder(item)
            waits = view.waits_of_owner(item['owner'])
            ident = ('lease', item['owner'])
        if ident in seen and chain:
            lines.append(f'  ... which closes a cycle: {who} is already in this chain '
                         f'(a deadlock until one of them gives up)')
            chain.append({'holder': who, 'waits_for': None, 'cycle': True})
            break
        seen.add(ident)
        if not waits:
            if chain:
                lines.append(f'  {who} waits for nothing')
            break
        for what in waits[:2]:
            text, nxt = _link_text(view, what)
            lines.append(f'  {who} waits for {text}')
            chain.append({'holder': who, 'waits_for': text, 'cycle': False})
            frontier += nxt
    return lines, chain


def _lock_answer(view, row):
    key = row['lock']
    holder = _lock_holder(row)
    queue = [dict(q, position=i + 1) for i, q in enumerate(row.get('queue') or ())]
    state = ''
    if not row.get('alive', True):
        state = ' (its agent is silent: the row is stale)'
    elif row.get('closed'):
        state = ' (closed: its agent is shutting down)'
    flags = row.get('flags') or ()
    flag_text = f" [{', '.join(flags)}]" if flags else ''
    if holder is None:
        lines = [f'{key} is free{state}{flag_text}']
        chain = []
    else:
        lines = [f'{key} is held by {holder} for {_secs(row.get("held_for"))}'
                 f'{_usual_text(view, row)}{state}{flag_text}']
        more, chain = _chain(view, ('lock', row), set())
        lines += more
    n = row.get('waiters') or 0
    if n:
        shown = '; '.join(f"{q['position']}. {_job(q.get('job'), q.get('session_id'))} "
                          f"for {_secs(q.get('waited_for'))}" for q in queue[:SHOWN_WAITERS])
        rest = n - min(len(queue), SHOWN_WAITERS)
        if rest > 0:
            shown = f'{shown}; and {rest} more' if shown else f'{rest} not named'
        lines.append(f'{n} waiting: {shown}')
    else:
        lines.append('nobody waits')
    return {'target': key, 'kind': 'lock', 'lines': lines, 'holder': holder,
            'chain': chain, 'queue': queue}


def _lease_answer(view, resource):
    holders = view.lease_holders(resource)
    waiters = view.lease_waiters(resource)
    queue = [{'position': i + 1, 'owner': w.get('owner'), 'note': w.get('note', ''),
              'waited_for': round(max(0.0, view.now - (w.get('queued_at') or view.now)), 3)}
             for i, w in enumerate(waiters)]
    chain = []
    if not holders:
        lines = [f'{resource} (site lease) is free']
    else:
        lines = []
        for g in holders:
            covered = '' if g['resource'] == resource else \
                f" (through {g['resource']}{'/**' if g['tree'] else ''})"
            note = f", note {g['note']!r:.80}" if g.get('note') else ''
            lines.append(f"{resource} (site lease) is held by {_grant_holder(g)}{covered}"
                         f"{note} for {_secs(max(0.0, view.now - g['granted_at']))}, "
                         f"for another {_secs(max(0.0, g['expires'] - view.now))}")
            more, links = _chain(view, ('lease', g), set())
            lines += more
            chain += links
    if queue:
        shown = '; '.join(f"{q['position']}. {q['owner']} for {_secs(q['waited_for'])}"
                          for q in queue[:SHOWN_WAITERS])
        if len(queue) > SHOWN_WAITERS:
            shown += f'; and {len(queue) - SHOWN_WAITERS} more'
        lines.append(f'{len(queue)} waiting: {shown}')
    else:
        lines.append('nobody waits')
    holder = ', '.join(_grant_holder(g) for g in holders) or None
    return {'target': resource, 'kind': 'lease', 'lines': lines, 'holder': holder,
            'chain': chain, 'queue': queue}


def explain(target, rows, leases=None, now=0.0, usual=None):
    """The answer to "why is ``target`` busy": ``{'target', 'kind' ('lock',
    'lease' or 'agent'), 'lines', 'holder', 'chain', 'queue', 'deadlocks'}``
    (``deadlocks``: the line of each deadlock through the target, see
    :func:`ocs_locking.deadlock.site_deadlocks`; also the answer's second
    lines).

    ``target`` is a lock key (``sim-device-1/hw``), an agent's instance-id
    (each of its locks, in turn) or a site resource (``demo/hwp``). Raises
    ValueError (one line) for a target that is none of them.
    ``usual(lock_key, job)`` may give ``{'n', 'median', 'p90'}`` of that
    job's past holds.
    """
    if not isinstance(target, str) or not target or len(target) > 400:
        raise ValueError(f'why: the target must be a lock (agent/lock) or a resource, '
                         f'not {target!r:.60}')
    answer = _explain(target, rows, leases, now, usual)
    # a deadlock through the target, spelled out (agents' locks included)
    mine = [d for d in site_deadlocks(rows, leases)
            if answer['target'] in d['locks'] or answer['target'] in d['leases'] or
            (answer['kind'] == 'agent' and any(k.startswith(answer['target'] + '/')
                                               for k in d['locks']))]
    answer['deadlocks'] = [d['text'] for d in mine]
    answer['lines'][1:1] = answer['deadlocks']
    return answer


def _explain(target, rows, leases, now, usual):
    view = _View(rows, leases, now, usual)
    if target in view.rows:
        return _lock_answer(view, view.rows[target])
    mine = [r for k, r in sorted(view.rows.items()) if r.get('agent') == target]
    if mine:
        answers = [_lock_answer(view, r) for r in mine]
        return {'target': target, 'kind': 'agent',
                'lines': [line for a in answers for line in a['lines']],
                'holder': None, 'chain': [c for a in answers for c in a['chain']],
                'queue': []}
    try:
        resource = check_resource(target)
    except ValueError:
        raise ValueError(f'why: {target!r:.80} is neither a lock the registry knows '
                         f'(agent/lock) nor a resource path') from None
    if '/' in resource and resource.split('/', 1)[0] in {r.get('agent') for r in rows} \
            and not view.lease_holders(resource) and not view.lease_waiters(resource):
        raise ValueError(f'why: no lock {resource!r:.80} (agent '
                         f'{resource.split("/", 1)[0]!r} reports '
                         + ', '.join(sorted(k for k in view.rows
                                            if k.startswith(resource.split('/', 1)[0] + '/')))
                         + ')')
    return _lease_answer(view, resource)
