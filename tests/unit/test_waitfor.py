"""The wait-for graph (pure): the site leases' edges, the cycle a request
would close, every cycle there is; checked against a reference (the
transitive closure) on random holders and waiters."""
from hypothesis import given, settings
from hypothesis import strategies as st

from ocs_locking.leases.waitfor import closing_cycle, cycle_text, cycles, lease_edges, reaches


def grant(resource, owner, tree=False):
    return {'resource': resource, 'owner': owner, 'tree': tree}


def wait(owner, *resources, tree=False):
    return {'owner': owner, 'resources': list(resources), 'tree': tree}


def test_two_parties_each_holding_what_the_other_waits_for_is_spelled_out():
    grants = [grant('satp1/mount', 'schedule-A'), grant('satp1/hwp', 'ops-console')]
    waiting = [wait('ops-console', 'satp1/mount')]
    found = closing_cycle(grants, waiting, wait('schedule-A', 'satp1/hwp'))
    assert found is not None
    cycle, along = found
    assert cycle == ['schedule-A', 'ops-console', 'schedule-A']
    assert cycle_text(cycle, along, grants) == (
        'deadlock: schedule-A holds satp1/mount, waits for satp1/hwp held by ops-console, '
        'which waits for satp1/mount')


def test_a_three_party_cycle_and_trees():
    grants = [grant('a', 'A'), grant('b', 'B'), grant('c', 'C', tree=True)]
    waiting = [wait('B', 'c/x'), wait('C', 'a')]       # c is a tree grant: c/x conflicts
    cycle, along = closing_cycle(grants, waiting, wait('A', 'b'))
    assert cycle == ['A', 'B', 'C', 'A']
    assert cycle_text(cycle, along, grants) == (
        'deadlock: A holds a, waits for b held by B, which waits for c held by C, '
        'which waits for a')


def test_no_cycle_and_waiting_for_oneself_is_none():
    grants = [grant('a', 'A'), grant('b', 'B')]
    assert closing_cycle(grants, [], wait('A', 'b')) is None        # B waits for nobody
    assert closing_cycle(grants, [], wait('A', 'a')) is None        # its own grant
    assert closing_cycle(grants, [], wait('A', 'z')) is None        # nobody holds z
    assert lease_edges(grants, [wait('A', 'a', 'b')]) == {'A': {'B': ['b']}}
    assert reaches({'x': {'y'}, 'y': {'z'}}, 'x', 'z') == ['x', 'y', 'z']


def test_cycles_finds_every_component_and_self_waits():
    edges = {'a': {'b'}, 'b': {'a'}, 'c': {'d'}, 'd': {'e'}, 'e': {'c'}, 'f': {'f'},
             'g': {'a'}}
    assert cycles(edges) == [['a', 'b'], ['c', 'd', 'e'], ['f']]
    assert cycles({}) == []


OWNERS = ['A', 'B', 'C', 'D']
PATHS = ['m', 'h', 'm/x', 'k']


@st.composite
def states(draw):
    grants, held = [], set()
    for path in PATHS:
        owner = draw(st.sampled_from(OWNERS + [None]))
        if owner is not None and not any(p == path or path.startswith(p + '/')
                                         or p.startswith(path + '/') for p in held):
            grants.append(grant(path, owner))
            held.add(path)
    waiting = [wait(draw(st.sampled_from(OWNERS)),
                    *draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True)))
               for _ in range(draw(st.integers(0, 4)))]
    request = wait(draw(st.sampled_from(OWNERS)),
                   *draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=2, unique=True)))
    return grants, waiting, request


def closure(edges):
    nodes = set(OWNERS)
    reach = {a: set(edges.get(a, ())) for a in nodes}
    for k in nodes:
        for i in nodes:
            if k in reach[i]:
                reach[i] |= reach[k]
    return reach


@settings(max_examples=400, deadline=None)
@given(states())
def test_closing_cycle_agrees_with_the_transitive_closure(state):
    grants, waiting, request = state
    edges = lease_edges(grants, waiting)
    reach = closure(edges)
    mine = lease_edges(grants, [request]).get(request['owner'], {})
    expected = any(h == request['owner'] or request['owner'] in reach[h] for h in mine)
    found = closing_cycle(grants, waiting, request)
    assert (found is not None) == expected
    if found is not None:
        cycle, along = found
        assert cycle[0] == cycle[-1] == request['owner']
        for a, b in zip(cycle, cycle[1:]):
            assert (a, b) in along and along[(a, b)]
        assert cycle_text(cycle, along, grants).startswith(f"deadlock: {request['owner']} holds")


@settings(max_examples=400, deadline=None)
@given(states())
def test_cycles_are_exactly_the_parties_that_reach_themselves(state):
    grants, waiting, _ = state
    edges = lease_edges(grants, waiting)
    reach = closure(edges)
    in_cycle = {a for a in OWNERS if a in reach[a]}
    found = cycles({a: set(bs) for a, bs in edges.items()})
    assert {p for comp in found for p in comp} == in_cycle
    for comp in found:                  # each component: everyone reaches everyone
        assert all(b in reach[a] for a in comp for b in comp)
