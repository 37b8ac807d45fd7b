"""The site's wait-for graph across agents' locks and site leases
(ocs_locking.deadlock): examples, and a Hypothesis model of random holders
and waiters checked against a reference cycle finder."""
from hypothesis import given, settings, strategies as st

from ocs_locking.deadlock import party_name, site_deadlocks, site_graph


def lock_row(key, job=None, sid=None, queue=(), lease=None, alive=True):
    agent = key.split('/', 1)[0]
    return {'lock': key, 'agent': agent, 'job': job, 'session_id': sid, 'lease': lease,
            'alive': alive, 'closed': False,
            'queue': [{'job': j, 'session_id': s} for j, s in queue]}


def test_two_operations_taking_two_locks_in_opposite_orders_are_a_deadlock():
    rows = [lock_row('a/l1', 'j1', 1, [('j2', 2)]), lock_row('a/l2', 'j2', 2, [('j1', 1)])]
    [d] = site_deadlocks(rows)
    assert d['text'] == ('deadlock: a j1 (session 1) holds a/l1, waits for a/l2 held by '
                         'a j2 (session 2), which waits for a/l1')
    assert d['locks'] == ['a/l1', 'a/l2'] and d['leases'] == [] and d['local'] is True
    assert d['parties'] == ['a j1 (session 1)', 'a j2 (session 2)']


def test_a_wait_that_leads_nowhere_back_is_no_deadlock():
    rows = [lock_row('a/l1', 'j1', 1, [('j2', 2)]), lock_row('a/l2', 'j3', 3, [('j1', 1)])]
    assert site_deadlocks(rows) == []
    assert site_graph(rows)   # edges there are, just no cycle


def test_a_cycle_through_an_agent_lock_and_two_site_leases_is_spelled_out():
    """The issue's case with an agent in it: the script ops-console holds
    demo/x and waits for demo/y, held by sim-1's acq (its SiteLock row);
    acq waits for sim-1/hw, held by cal, whose SiteLock acquire waits for
    demo/x."""
    rows = [lock_row('sim-1/hw', 'cal', 4, [('acq', 3)]),
            lock_row('sim-1/lease:demo:y', 'acq', 3, lease='demo/y'),
            lock_row('sim-1/lease:demo:x', None, None, [('cal', 4)], lease='demo/x')]
    leases = {'grants': [{'resource': 'demo/x', 'owner': 'ops-console', 'tree': False},
                         {'resource': 'demo/y', 'owner': 'sim-1', 'tree': False}],
              'waiting': [{'owner': 'ops-console', 'resources': ['demo/y'], 'tree': False},
                          {'owner': 'sim-1', 'resources': ['demo/x'], 'tree': False}]}
    [d] = site_deadlocks(rows, leases)
    assert d['text'] == ('deadlock: sim-1 acq (session 3) holds demo/y (site lease), waits '
                         'for sim-1/hw held by sim-1 cal (session 4), which waits for demo/x '
                         '(site lease) held by ops-console, which waits for demo/y (site lease)')
    assert d['locks'] == ['sim-1/hw'] and d['leases'] == ['demo/x', 'demo/y']


def test_a_stale_agent_waits_no_more():
    """Rows of an agent that left the bus are in no cycle (it waits for nothing now)."""
    rows = [lock_row('a/l1', 'j1', 1, [('j2', 2)], alive=False),
            lock_row('a/l2', 'j2', 2, [('j1', 1)], alive=False)]
    assert site_deadlocks(rows) == []


def test_a_tree_grant_is_in_the_way_of_a_path_below_it():
    rows = [lock_row('a/hw', 'j1', 1, [('j2', 2)]),
            lock_row('a/lease:s:hwp', None, None, [('j1', 1)], lease='s/hwp')]
    leases = {'grants': [{'resource': 's', 'owner': 'ops', 'tree': True}],
              'waiting': [{'owner': 'a', 'resources': ['s/hwp'], 'tree': False},
                          {'owner': 'ops', 'resources': ['b/x'], 'tree': False}]}
    # ops waits for nothing the agent holds: no cycle
    assert site_deadlocks(rows, leases) == []
    leases['grants'].append({'resource': 'b/x', 'owner': 'a', 'tree': False})
    rows.append(lock_row('a/lease:b:x', 'j2', 2, lease='b/x'))
    [d] = site_deadlocks(rows, leases)
    assert d['leases'] == ['b/x', 's'] and d['locks'] == ['a/hw']


def test_party_name_reads_the_node():
    assert party_name('owner\x00ops-console') == 'ops-console'
    assert party_name('op\x00sim-1\x00s3') == 'sim-1 operation (session 3)'
    assert party_name('op\x00sim-1\x00jacq') == 'sim-1 acq'


# -- the model --------------------------------------------------------------------

AGENTS, OPS, SCRIPTS, RESOURCES = ('a0', 'a1'), (1, 2, 3), ('s0', 's1', 's2'), \
    ('r/0', 'r/1', 'r/2', 'r/3')


def op_node(agent, sid):
    return f'op\x00{agent}\x00s{sid}'


def script_node(s):
    return f'owner\x00{s}'


@st.composite
def scenes(draw):
    """Random holders and waiters: each agent's locks (a holder op, a queue
    of its other ops), each resource's holder (nobody, a script, or an op
    through its agent's SiteLock) and its waiters (scripts; ops through
    their agent's SiteLock, one per agent and resource)."""
    locks = []
    for agent in AGENTS:
        for i in range(draw(st.integers(0, 3))):
            holder = draw(st.sampled_from(OPS))
            queue = draw(st.lists(st.sampled_from([o for o in OPS if o != holder]),
                                  unique=True, max_size=2))
            locks.append((agent, f'l{i}', holder, queue))
    leases = []
    for r in RESOURCES:
        holder = draw(st.one_of(st.none(), st.sampled_from(SCRIPTS).map(lambda s: ('s', s)),
                                st.tuples(st.sampled_from(AGENTS), st.sampled_from(OPS))
                                .map(lambda t: ('op',) + t)))
        scripts = draw(st.lists(st.sampled_from(SCRIPTS), unique=True, max_size=2))
        ops = []
        for agent in AGENTS:
            if holder is not None and holder[0] == 'op' and holder[1] == agent:
                continue    # its SiteLock holds it: no waiter of its own
            sid = draw(st.one_of(st.none(), st.sampled_from(OPS)))
            if sid is not None:
                ops.append((agent, sid))
        if holder is not None and holder[0] == 's':
            scripts = [s for s in scripts if s != holder[1]]
        leases.append((r, holder, scripts, ops))
    return locks, leases


def render(locks, leases):
    """The scene as the registry sees it: table rows and the lease state."""
    rows = [lock_row(f'{a}/{name}', f'j{h}', h, [(f'j{q}', q) for q in queue])
            for a, name, h, queue in locks]
    grants, waiting = [], []
    for r, holder, scripts, ops in leases:
        site_rows = {}
        if holder is not None:
            if holder[0] == 's':
                grants.append({'resource': r, 'owner': holder[1], 'tree': False})
            else:
                grants.append({'resource': r, 'owner': holder[1], 'tree': False})
                site_rows[holder[1]] = lock_row(f'{holder[1]}/lease:{r}'.replace('r/', 'r:'),
                                                f'j{holder[2]}', holder[2], lease=r)
        for s in scripts:
            waiting.append({'owner': s, 'resources': [r], 'tree': False})
        for agent, sid in ops:
            waiting.append({'owner': agent, 'resources': [r], 'tree': False})
            site_rows[agent] = lock_row(f'{agent}/lease:{r}'.replace('r/', 'r:'), None, None,
                                        [(f'j{sid}', sid)], lease=r)
        rows += site_rows.values()
    return rows, {'grants': grants, 'waiting': waiting}


def reference_edges(locks, leases):
    edges = {}
    for a, _name, h, queue in locks:
        for q in queue:
            edges.setdefault(op_node(a, q), set()).add(op_node(a, h))
    for _r, holder, scripts, ops in leases:
        if holder is None:
            continue
        held = script_node(holder[1]) if holder[0] == 's' else op_node(holder[1], holder[2])
        for s in scripts:
            edges.setdefault(script_node(s), set()).add(held)
        for agent, sid in ops:
            edges.setdefault(op_node(agent, sid), set()).add(held)
    return {a: {b for b in bs if b != a} for a, bs in edges.items()}


def on_a_cycle(edges):
    """Every node that reaches itself (a transitive closure, by search)."""
    out = set()
    for start in edges:
        seen, todo = set(), list(edges[start])
        while todo:
            n = todo.pop()
            if n == start:
                out.add(start)
                break
            if n not in seen:
                seen.add(n)
                todo += edges.get(n, ())
    return out


@settings(max_examples=400, deadline=None)
@given(scenes())
def test_the_deadlocks_found_are_exactly_the_cycles_of_the_model(scene):
    """When random holders and waiters are rendered as table rows and
    lease state, the parties caught in the deadlocks found are exactly the
    model's nodes that reach themselves, and every reported cycle runs
    along the model's edges."""
    locks, leases = scene
    rows, state = render(locks, leases)
    edges = reference_edges(locks, leases)
    found = site_deadlocks(rows, state)
    assert {n for d in found for n in d['nodes']} == on_a_cycle(edges)
    names = {}
    for a, sid in ((a, s) for a in AGENTS for s in OPS):
        names[f'{a} j{sid} (session {sid})'] = op_node(a, sid)
    names.update({s: script_node(s) for s in SCRIPTS})
    for d in found:
        cyc = [names[p] for p in d['parties']]
        assert all(b in edges[a] for a, b in zip(cyc, cyc[1:] + cyc[:1]))
        assert d['text'].startswith('deadlock: ' + d['parties'][0] + ' holds ')
