"""Who waits for whom: the wait-for graph and its cycles (pure).

A party is anyone that holds or waits: a site-lease owner (``schedule-A``)
or an agent's operation. An edge ``a -> b`` says ``a`` waits for something
``b`` holds. A cycle is a deadlock: nobody in it can go on until a timeout.

:func:`lease_edges` builds the edges of the site leases from the lease
state (grants and waiting requests); :func:`closing_cycle` says whether a new
request would close a cycle (the registry refuses it then, with
:func:`cycle_text`); :func:`cycles` finds every cycle already there
(strongly connected components, Tarjan), for reporting those the registry
cannot refuse (agent-local locks).

Pure: no OCS, no Twisted, no I/O.
"""
from .paths import overlap

__all__ = ['lease_edges', 'closing_cycle', 'cycles', 'cycle_text', 'reaches']


def _holds(grants, owner):
    return [g for g in grants if g['owner'] == owner]


def lease_edges(grants, waiting):
    """``{waiter: {holder: [resources]}}`` of the site leases: each waiting
    request's owner waits for the owner of every grant it conflicts with
    (the resources it waits for, per holder). ``grants``: dicts with
    ``resource``, ``owner``, ``tree``; ``waiting``: dicts with
    ``resources``, ``owner``, ``tree``. An owner waiting for itself (a
    second request of one owner) is no edge: it is not a deadlock between
    parties."""
    edges = {}
    for w in waiting:
        for g in grants:
            if g['owner'] != w['owner'] and overlap(w['resources'], w.get('tree', False),
                                                   [g['resource']], g.get('tree', False)):
                edges.setdefault(w['owner'], {}).setdefault(g['owner'], []).append(
                    g['resource'])
    return edges


def reaches(edges, start, goal):
    """The path ``[start, ..., goal]`` along ``edges`` (shortest), or None."""
    seen, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for to in sorted(edges.get(node, ())):
                if to in seen:
                    continue
                seen[to] = node
                if to == goal:
                    path = [to]
                    while seen[path[-1]] is not None:
                        path.append(seen[path[-1]])
                    return path[::-1]
                nxt.append(to)
        frontier = nxt
    return None


def closing_cycle(grants, waiting, request):
    """The cycle ``[owner, h1, ..., owner]`` that ``request`` (``owner``,
    ``resources``, ``tree``) would close by waiting, with the edges it
    runs along (``{(a, b): [resources]}``); None if it closes none."""
    owner = request['owner']
    mine = lease_edges(grants, [request]).get(owner, {})
    if not mine:
        return None
    edges = lease_edges(grants, waiting)
    best = None
    for holder in sorted(mine):
        path = reaches(edges, holder, owner)
        if path is not None and (best is None or len(path) < len(best)):
            best = path
    if best is None:
        return None
    cycle = [owner] + best
    along = {(owner, best[0]): mine[best[0]]}
    for a, b in zip(best, best[1:]):
        along[(a, b)] = edges[a][b]
    return cycle, along


def cycle_text(cycle, along, grants):
    """One line: ``deadlock: schedule-A holds satp1/mount, waits for
    satp1/hwp held by ops-console, which waits for satp1/mount``."""
    def held(owner):
        return ', '.join(sorted(g['resource'] for g in _holds(grants, owner))) or 'nothing'
    first, parts = cycle[0], []
    parts.append(f'{first} holds {held(first)}, waits for '
                 f"{', '.join(sorted(set(along[(first, cycle[1])])))} held by {cycle[1]}")
    for a, b in zip(cycle[1:], cycle[2:]):
        wanted = ', '.join(sorted(set(along[(a, b)])))
        parts.append(f'which waits for {wanted}' + ('' if b == first else f' held by {b}'))
    return 'deadlock: ' + ', '.join(parts)


def cycles(edges):
    """Every set of parties caught in a cycle (each a sorted list; sorted),
    from ``{a: iterable of b}``: the strongly connected components with more
    than one party, and a party that waits for itself."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]
    nodes = set(edges) | {b for bs in edges.values() for b in bs}

    def visit(v):                   # iterative Tarjan (no recursion limit)
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1 or node in edges.get(node, ()):
                        out.append(sorted(comp))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(out)
