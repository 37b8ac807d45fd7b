"""Deadlocks across agents: the site's whole wait-for graph (pure).

The registry refuses a site-lease request that would close a cycle among
lease owners (:mod:`ocs_locking.leases.waitfor`). A cycle that runs through
an agent's own lock it cannot refuse: the agent's lock does not ask the
registry. It can see it, from what it already has, and report it
(:func:`site_deadlocks`): the ownership table's rows and the lease state.

Parties (the nodes):

* an agent's *operation*: ``(agent, session_id)`` (or its job name when
  the lock event gave no session id), named ``sim-1 acq (session 3)``;
* a lease *owner* that is not seen as an agent's operation (a script's
  Reservation, an operator's console, an agent whose SiteLock is not
  reported): its owner string, with the operation that asked when the
  request said (``party``: ``sim-1 cal (session 4)``).

Edges, ``a -> b``: ``a`` waits for something ``b`` holds.

* an agent lock row: every operation in its ``queue`` waits for its holder;
* a SiteLock row (a row with ``lease``: the agent reports its SiteLock with
  ``report_locks(agent, site_lock)``, see :mod:`ocs_locking.events`): the
  operation in its ``queue`` (whose acquire waits in the registry's queue)
  waits for the holder of every grant in the lease's way;
* a waiting lease request that no SiteLock row explains (its owner is not
  an agent whose SiteLock row for that resource has a waiter): its owner
  waits for the holder of every grant in its way.

The holder of a grant is the operation holding the owner agent's SiteLock
row for that resource when there is one, else the owner.

Pure: no OCS, no Twisted, no I/O.
"""
from .leases.paths import overlap
from .leases.waitfor import cycles, reaches

__all__ = ['site_graph', 'site_deadlocks', 'party_name', 'DEADLOCK_FLAG']

#: The flag of a row or grant caught in a cycle (see :mod:`ocs_locking.flags`).
DEADLOCK_FLAG = 'deadlock'


# Nodes are strings (sortable, hashable): ``op\x00<agent>\x00s<session id>``
# or ``op\x00<agent>\x00j<job>`` for an operation, ``owner\x00<owner>``.
def _op(agent, job, session_id):
    return f'op\x00{agent}\x00' + (f's{session_id}' if session_id is not None else f'j{job}')


def _owner(owner):
    return f'owner\x00{owner}'


def _label(item):
    """A lease owner, with the operation that asked (``party``) when known."""
    return item['owner'] if not item.get('party') else f"{item['owner']} {item['party']}"


def party_name(node):
    """A party's name for people, from its node alone: the owner, or
    ``sim-1 operation (session 3)`` / ``sim-1 acq``."""
    kind, *rest = node.split('\x00')
    if kind == 'owner':
        return rest[0]
    agent, ident = rest
    if ident[0] == 's':
        return f'{agent} operation (session {ident[1:]})'
    return f'{agent} {ident[1:] if ident[1:] != "None" else "an unnamed job"}'


class _Graph:
    def __init__(self, rows, leases):
        leases = leases or {}
        self.grants = [g for g in leases.get('grants') or () if g.get('owner') is not None]
        self.waiting = list(leases.get('waiting') or ())
        # a stale row (its agent left the bus) or a closing one waits no more
        self.rows = [r for r in rows if r.get('agent') is not None and
                     r.get('alive', True) and not r.get('closed')]
        self.edges = {}         # node -> {node: [(kind, what)]}
        self.holds = {}         # node -> [what it holds, for the text]
        self.names = {}         # op node -> its display name (job and session)
        # (agent, resource) -> the SiteLock row reporting that lease
        self.site_rows = {(r['agent'], r['lease']): r for r in self.rows if r.get('lease')}

    def op(self, agent, job, session_id):
        node = _op(agent, job, session_id)
        if job is not None or node not in self.names:
            self.names[node] = (f'{agent} {job or "an unnamed job"}' +
                                ('' if session_id is None else f' (session {session_id})'))
        return node

    def name(self, node):
        return self.names.get(node) or party_name(node)

    def grant_holder(self, g):
        row = self.site_rows.get((g['owner'], g['resource']))
        if row is not None and (row.get('job') is not None or
                                row.get('session_id') is not None):
            return self.op(row['agent'], row.get('job'), row.get('session_id'))
        return _owner(_label(g))

    def edge(self, a, b, label):
        if a != b:
            self.edges.setdefault(a, {}).setdefault(b, [])
            if label not in self.edges[a][b]:
                self.edges[a][b].append(label)

    def in_the_way(self, resources, tree, owner):
        return [g for g in self.grants if g['owner'] != owner and
                overlap(resources, tree, [g['resource']], g.get('tree', False))]

    def build(self):
        for row in self.rows:
            holder = None
            if row.get('job') is not None or row.get('session_id') is not None:
                holder = self.op(row['agent'], row.get('job'), row.get('session_id'))
                self.holds.setdefault(holder, []).append(
                    f"{row['lease']} (site lease)" if row.get('lease') else row['lock'])
            for q in row.get('queue') or ():
                waiter = self.op(row['agent'], q.get('job'), q.get('session_id'))
                if row.get('lease'):
                    req = self._request(row['agent'], row['lease'])
                    tree = bool(req and req.get('tree'))
                    for g in self.in_the_way([row['lease']], tree, row['agent']):
                        self.edge(waiter, self.grant_holder(g), ('lease', g['resource']))
                elif holder is not None:
                    self.edge(waiter, holder, ('lock', row['lock']))
        for g in self.grants:
            node = self.grant_holder(g)
            if node.startswith('owner\x00'):
                self.holds.setdefault(node, []).append(g['resource'])
        for w in self.waiting:
            owner = w.get('owner')
            if owner is None or any((owner, r) in self.site_rows and
                                    self.site_rows[(owner, r)].get('queue')
                                    for r in w.get('resources') or ()):
                continue        # its SiteLock row says which operation waits
            for g in self.in_the_way(list(w.get('resources') or ()), w.get('tree', False),
                                     owner):
                self.edge(_owner(_label(w)), self.grant_holder(g), ('lease', g['resource']))
        return self

    def _request(self, owner, resource):
        for w in self.waiting:
            if w.get('owner') == owner and resource in (w.get('resources') or ()):
                return w
        return None


def site_graph(rows, leases=None):
    """``{party: {party: [(kind, what)]}}``: who waits for whom across the
    site (``kind`` ``lock``: an agent lock's key; ``lease``: a resource).
    ``rows``: the ownership table's rows (``lock``, ``agent``, ``job``,
    ``session_id``, ``queue``; ``lease`` for SiteLock rows); ``leases``:
    the lease state's snapshot (``grants``, ``waiting``)."""
    return _Graph(rows, leases).build().edges


def _one_cycle(edges, comp):
    """A shortest cycle through the smallest party of ``comp``."""
    start = min(comp)
    best = None
    for nxt in sorted(b for b in edges.get(start, ()) if b in comp):
        path = reaches({a: [b for b in bs if b in comp] for a, bs in edges.items()
                        if a in comp}, nxt, start)
        if path is not None and (best is None or len(path) < len(best)):
            best = path
    return [start] + (best or [start])


def _what(labels):
    return ', '.join(sorted({what if kind == 'lock' else f'{what} (site lease)'
                             for kind, what in labels}))


def site_deadlocks(rows, leases=None):
    """Every deadlock of the site, each ``{'parties', 'text', 'locks',
    'leases', 'local'}``: the parties' names around one cycle, the line
    that spells it out (``deadlock: sim-1 acq (session 3) holds sim-1/hw,
    waits for demo/hwp (site lease) held by ops-console, which waits for
    sim-1/hw``), the agent lock keys and the lease resources it runs
    through, and whether an agent-local lock is one of them (the registry
    refuses a lease request that would close a cycle of site leases only,
    so a cycle found here is usually ``local``). Sorted by text."""
    g = _Graph(rows, leases).build()
    out = []
    for comp in cycles(g.edges):
        comp = set(comp)
        cyc = _one_cycle(g.edges, comp)
        locks, resources, parts = set(), set(), []
        for i, (a, b) in enumerate(zip(cyc, cyc[1:])):
            labels = g.edges[a][b]
            for kind, what in labels:
                (locks if kind == 'lock' else resources).add(what)
            if i == 0:
                held = ', '.join(sorted(set(g.holds.get(a, ())))) or 'nothing'
                parts.append(f'{g.name(a)} holds {held}, waits for {_what(labels)} '
                             f'held by {g.name(b)}')
            else:
                parts.append(f'which waits for {_what(labels)}' +
                             ('' if b == cyc[0] else f' held by {g.name(b)}'))
        # every edge inside the component is part of some cycle
        for a in comp:
            for b, labels in g.edges.get(a, {}).items():
                if b in comp:
                    for kind, what in labels:
                        (locks if kind == 'lock' else resources).add(what)
        out.append({'parties': [g.name(n) for n in cyc[:-1]],
                    'text': 'deadlock: ' + ', '.join(parts),
                    'locks': sorted(locks), 'leases': sorted(resources),
                    'local': bool(locks) or any(n.startswith('op\x00') for n in comp),
                    'nodes': sorted(comp)})
    return sorted(out, key=lambda d: d['text'])
