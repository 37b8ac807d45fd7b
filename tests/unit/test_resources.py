"""The declared resource tree (ocs_locking.leases.resources) and its file
loader: config errors (one line each, naming the source and the key),
suggestions, coverage, inheritance, lease limits, the site check."""
import json
import os
import re

import pytest

from ocs_locking.errors import LeaseError, ResourceConfigError, UnknownResource
from ocs_locking.leases.resource_file import load_resources, read_resources
from ocs_locking.leases.resources import (DEFAULT_LEASE, MAX_TREE_JSON, Resource, ResourceTree,
                                          suggest)

SRC = 'site/res.yaml'


def tree(resources, **top):
    return ResourceTree.from_config(dict(top, resources=resources), SRC)


def error(data):
    with pytest.raises(ResourceConfigError) as info:
        ResourceTree.from_config(data, SRC)
    return str(info.value)


MALFORMED = [
    # (config, the exact line)
    (None, "site/res.yaml: the resources config is empty: it needs a mapping with "
           "'resources' (and optionally 'adhoc', 'defaults')"),
    ([1, 2], "site/res.yaml: the resources config is a list, not a mapping: it needs a "
             "mapping with 'resources' (and optionally 'adhoc', 'defaults')"),
    ({'resource': {}}, "site/res.yaml: the resources config: unknown key 'resource'; did you "
                       "mean 'resources'? (known: adhoc, defaults, resources)"),
    ({'resources': {'a': {}}, 'colour': 1},
     "site/res.yaml: the resources config: unknown key 'colour' "
     "(known: adhoc, defaults, resources)"),
    ({'resources': {'a': {'instance': ['x']}}},
     "site/res.yaml: resources[a]: unknown key 'instance'; did you mean 'instances'? (known: "
     "instances, classes, description, lockout_levels, holder_level, default_lease, "
     "max_lease)"),
    ({'resources': {'a': {}}, 'defaults': {'holder': 3}},
     "site/res.yaml: defaults: unknown key 'holder'; did you mean 'holder_level'? (known: "
     "lockout_levels, holder_level, default_lease, max_lease)"),
    ({'resources': {'a': {'x_lease': 3}}},
     "site/res.yaml: resources[a]: unknown key 'x_lease'; did you mean 'max_lease' or "
     "'default_lease'? (known: instances, classes, description, lockout_levels, holder_level, "
     "default_lease, max_lease)"),
    ({'resources': {'a': {}}, 'defaults': {'instances': ['x']}},
     "site/res.yaml: defaults: unknown key 'instances' (known: lockout_levels, holder_level, "
     "default_lease, max_lease)"),
    ({'resources': {'Demo/hwp': {}}},
     "site/res.yaml: resources: path segment 'Demo' must match [a-z0-9][a-z0-9_.-]{0,31}: "
     "'Demo/hwp'"),
    ({'resources': {'a//b': {}}},
     "site/res.yaml: resources: path segment '' must match [a-z0-9][a-z0-9_.-]{0,31}: 'a//b'"),
    ({'resources': {12: {}}}, "site/res.yaml: resources: path must be a path like "
                              "'satp1/hwp', not 12"),
    ({'resources': []}, "site/res.yaml: resources must be a mapping (resource paths to their "
                        "declarations), not a list"),
    ({'resources': {'a': ['x']}}, "site/res.yaml: resources[a] must be a mapping (instances, "
                                  "classes, description, lockout_levels, holder_level, "
                                  "default_lease, max_lease), not a list"),
    ({'resources': {}}, "site/res.yaml: resources: none declared and adhoc is false: every "
                        "lease would be refused (declare some, or set adhoc: true)"),
    ({'resources': {'a': {}}, 'adhoc': 'yes'},
     "site/res.yaml: adhoc must be true or false, not 'yes'"),
    ({'resources': {'a': {'lockout_levels': [0, 1]}}},
     "site/res.yaml: resources[a].lockout_levels must hold credential levels 1..3, not 0"),
    ({'resources': {'a': {'lockout_levels': [1, 4]}}},
     "site/res.yaml: resources[a].lockout_levels must hold credential levels 1..3, not 4"),
    ({'resources': {'a': {'lockout_levels': []}}},
     "site/res.yaml: resources[a].lockout_levels must not be empty (a reservation locks out "
     "some level)"),
    ({'resources': {'a': {'lockout_levels': [2, 2]}}},
     "site/res.yaml: resources[a].lockout_levels lists level 2 twice"),
    ({'resources': {'a': {'lockout_levels': 3}}},
     "site/res.yaml: resources[a].lockout_levels must be a list of credential levels 1..3 "
     "(e.g. [1, 2, 3]), not 3"),
    ({'resources': {'a': {'lockout_levels': [True]}}},
     "site/res.yaml: resources[a].lockout_levels must hold credential levels 1..3, not True"),
    ({'resources': {'a': {'holder_level': 2}}},
     "site/res.yaml: resources[a]: holder_level 2 is below lockout level 3: the holder would "
     "lock itself out"),
    ({'resources': {'a': {'holder_level': 5}}},
     "site/res.yaml: resources[a].holder_level must be a credential level 1..3, not 5"),
    ({'resources': {'a': {}}, 'defaults': {'lockout_levels': [1], 'holder_level': 0}},
     "site/res.yaml: defaults.holder_level must be a credential level 1..3, not 0"),
    ({'resources': {'a': {'max_lease': 0}}},
     "site/res.yaml: resources[a].max_lease must be in [0.5, 3600] seconds, not 0"),
    ({'resources': {'a': {'default_lease': -5}}},
     "site/res.yaml: resources[a].default_lease must be in [0.5, 3600] seconds, not -5"),
    ({'resources': {'a': {'default_lease': 'long'}}},
     "site/res.yaml: resources[a].default_lease must be a number of seconds, not 'long'"),
    ({'resources': {'a': {'max_lease': True}}},
     "site/res.yaml: resources[a].max_lease must be a number of seconds, not True"),
    ({'resources': {'a': {'default_lease': 100, 'max_lease': 10}}},
     "site/res.yaml: resources[a]: default_lease 100 s is more than max_lease 10 s"),
    ({'resources': {'a': {}}, 'defaults': {'default_lease': 100, 'max_lease': 10}},
     "site/res.yaml: defaults: default_lease 100 s is more than max_lease 10 s"),
    ({'resources': {'a': {'max_lease': 10}, 'a/b': {'default_lease': 20}}},
     "site/res.yaml: resources[a/b]: default_lease 20 s is more than max_lease 10 s"),
    ({'resources': {'a': {'instances': []}}},
     "site/res.yaml: resources[a].instances must not be empty (leave the key out for none)"),
    ({'resources': {'a': {'classes': []}}},
     "site/res.yaml: resources[a].classes must not be empty (leave the key out for none)"),
    ({'resources': {'a': {'instances': 'fake-hwp'}}},
     "site/res.yaml: resources[a].instances must be a list of agent instance ids, "
     "not 'fake-hwp'"),
    ({'resources': {'a': {'instances': [7]}}},
     "site/res.yaml: resources[a].instances must hold agent instance ids (non-empty strings "
     "of at most 128 printable characters), not 7"),
    ({'resources': {'a': {'classes': ['']}}},
     "site/res.yaml: resources[a].classes must hold agent classes (non-empty strings of at "
     "most 128 printable characters), not ''"),
    ({'resources': {'a': {'instances': ['x', 'x']}}},
     "site/res.yaml: resources[a].instances lists 'x' twice"),
    ({'resources': {'a': {'description': 'two\nlines'}}},
     "site/res.yaml: resources[a].description must be one line of text of at most 200 "
     "characters, not 'two\\nlines'"),
    # overlap: an agent in two resources (unrelated, or parent and child)
    ({'resources': {'a': {'instances': ['x']}, 'b': {'instances': ['y', 'x']}}},
     "site/res.yaml: resources[b].instances: instance 'x' is covered by resources[a] too; an "
     "agent belongs to one resource (hold both with one tree lease on a common parent)"),
    ({'resources': {'a': {'classes': ['C']}, 'a/b': {'classes': ['C']}}},
     "site/res.yaml: resources[a/b].classes: agent class 'C' is covered by resources[a] too; "
     "an agent belongs to one resource (hold both with one tree lease on a common parent)"),
    # overlap: a child that locks out fewer levels than its parent
    ({'resources': {'a': {'lockout_levels': [2, 3]}, 'a/b/c': {'lockout_levels': [3]}}},
     "site/res.yaml: resources[a/b/c].lockout_levels [3] lacks level(s) 2 of its ancestor "
     "'a' ([2, 3]): a tree lease on 'a' locks them out everywhere below it"),
    ({'resources': {'a': {'lockout_levels': [1, 2, 3]}, 'a/b': {'max_lease': 10},
                    'a/b/c': {'lockout_levels': [2, 3]}}},
     "site/res.yaml: resources[a/b/c].lockout_levels [2, 3] lacks level(s) 1 of its ancestor "
     "'a' ([1, 2, 3]): a tree lease on 'a' locks them out everywhere below it"),
]


@pytest.mark.parametrize('data, line', MALFORMED, ids=range(len(MALFORMED)))
def test_ResourceTree_malformed_config_is_refused_in_one_exact_line(data, line):
    """When a config is malformed, from_config raises ResourceConfigError
    whose single line names the source, the key and the rule."""
    assert error(data) == line
    assert '\n' not in line


def test_ResourceTree_refuses_more_than_its_json_budget():
    """When the declarations would take more than MAX_TREE_JSON octets, the
    tree is refused in one line saying so."""
    many = {f'r/{i}': {'description': 'x' * 200} for i in range(700)}
    msg = error({'resources': many})
    assert re.fullmatch(rf'site/res\.yaml: resources take \d+ octets as JSON, more than '
                        rf'{MAX_TREE_JSON}: declare fewer or shorter ones', msg)


@pytest.mark.parametrize('text, line', [
    ('resources:\n  demo/hwp: {}\n  demo/hwp: {instances: [x]}\n',
     "f.yaml: line 3: 'demo/hwp' is declared twice (first on line 2); give each key once"),
    ('resources:\n  a: {instances: [x], instances: [y]}\n',
     "f.yaml: line 2: 'instances' is declared twice (first on line 2); give each key once"),
    ('resources: [1\n', "f.yaml: not YAML (line 2): expected ',' or ']', but got "
                        "'<stream end>'"),
    ('', "f.yaml: the resources config is empty: it needs a mapping with 'resources' "
         "(and optionally 'adhoc', 'defaults')"),
    ('just a string\n', "f.yaml: the resources config is a string, not a mapping: it needs "
                        "a mapping with 'resources' (and optionally 'adhoc', 'defaults')"),
])
def test_read_resources_refuses_duplicates_and_non_yaml_in_one_line(text, line):
    """When a path (or any key) is declared twice, or the text is not a YAML
    mapping, the loader says so in one line with the line numbers."""
    with pytest.raises(ResourceConfigError) as info:
        read_resources(text, 'f.yaml')
    assert str(info.value) == line


def test_load_resources_missing_file_is_one_line(tmp_path):
    """When the resources file does not exist, one line names it."""
    path = tmp_path / 'none.yaml'
    with pytest.raises(ResourceConfigError) as info:
        load_resources(str(path))
    assert str(info.value) == f'cannot read the resources file {path}: No such file or directory'


# -- lookups and suggestions --------------------------------------------------------

DEMO = {'demo/hwp': {'instances': ['fake-hwp']},
        'demo/hwp/encoder': {'instances': ['enc']},
        'demo/sim-device-1': {'instances': ['sim-device-1']},
        'demo/sim-device-2': {'instances': ['sim-device-2']},
        'satp1/hwp': {'classes': ['HWPAgent']}}


def test_ResourceTree_check_of_a_close_miss_suggests_the_declared_path():
    """When an undeclared path is one typo from a declared one, the refusal
    is the UnknownResource line with that suggestion."""
    t = tree(DEMO)
    with pytest.raises(UnknownResource) as info:
        t.check('satp1/hwpp')
    assert str(info.value) == "no resource 'satp1/hwpp'; did you mean 'satp1/hwp'?"
    assert isinstance(info.value, LeaseError)


def test_ResourceTree_check_names_several_candidates_best_first():
    """When several declared paths are close, all are named (at most three),
    ties in path order."""
    with pytest.raises(UnknownResource) as info:
        tree(DEMO).check('demo/sim-device-3')
    assert str(info.value) == ("no resource 'demo/sim-device-3'; did you mean "
                               "'demo/sim-device-1' or 'demo/sim-device-2'?")


def test_ResourceTree_check_of_a_far_miss_suggests_nothing():
    """When nothing declared is close, the refusal says how many are declared
    and where to list them, with no suggestion."""
    with pytest.raises(UnknownResource) as info:
        tree(DEMO).check('lab/cryostat')
    assert str(info.value) == ("no resource 'lab/cryostat': it is none of the 5 the site "
                               "declares (ocs-locks resources lists them)")


def test_ResourceTree_check_of_a_malformed_path_is_the_paths_rule():
    """When the path is malformed, check raises the LeaseError of
    paths.check_resource (not a suggestion)."""
    with pytest.raises(LeaseError) as info:
        tree(DEMO).check('Demo/hwp')
    assert not isinstance(info.value, UnknownResource)
    assert str(info.value).startswith("resource segment 'Demo' must match")


def test_suggest_formats_one_two_and_three_candidates():
    """When one, two or three candidates are close, suggest names them
    joined with commas and 'or'; none close gives ''."""
    assert suggest('lab/dev-1', ['lab/dev-2']) == "did you mean 'lab/dev-2'?"
    assert suggest('lab/dev-1', ['lab/dev-3', 'lab/dev-2']) == \
        "did you mean 'lab/dev-2' or 'lab/dev-3'?"
    assert suggest('lab/dev-1', ['lab/dev-5', 'lab/dev-4', 'lab/dev-3', 'lab/dev-2']) == \
        "did you mean 'lab/dev-2', 'lab/dev-3' or 'lab/dev-4'?"
    assert suggest('lab/dev-1', ['zzzz/qqq']) == ''


def test_ResourceTree_adhoc_allows_undeclared_paths_and_still_knows_declared_ones():
    """When adhoc is true, an undeclared well-formed path is allowed (check
    returns None) and a declared one returns its Resource."""
    t = tree(DEMO, adhoc=True)
    assert t.check('lab/anything') is None
    assert t.check('demo') is None
    assert t.check('demo/hwp').instances == ('fake-hwp',)
    with pytest.raises(LeaseError):
        t.check('Bad')


def test_ResourceTree_adhoc_still_refuses_a_near_miss_of_a_declared_path():
    """When adhoc is true, an undeclared path one typo from a declared one
    is refused with the suggestion (a typo must not lease a path nobody
    uses), every time it is asked."""
    t = tree(DEMO, adhoc=True)
    for _ in range(2):
        with pytest.raises(UnknownResource) as info:
            t.check('demo/hwpp')
        assert str(info.value) == "no resource 'demo/hwpp'; did you mean 'demo/hwp'?"


def test_ResourceTree_adhoc_only_declares_nothing_and_allows_everything():
    """When no resources are configured, adhoc_only allows every well-formed
    path, declares none, and its lease default is the registry's 30 s."""
    t = ResourceTree.adhoc_only()
    assert t.adhoc is True and len(t) == 0 and list(t) == []
    assert t.check('satp1/hwp') is None and t.covered('satp1', tree=True) == []
    assert t.lease('satp1/hwp') == DEFAULT_LEASE == 30.0
    assert t.lease('satp1/hwp', lease=3600) == 3600
    assert t.as_dict() == {'adhoc': True, 'source': '', 'resources': []}


# -- coverage -----------------------------------------------------------------------

def test_ResourceTree_plain_lease_covers_only_its_own_path():
    """When a lease is not a tree lease, it covers the resource at its path
    only, not the declared ones below it."""
    assert [r.path for r in tree(DEMO).covered('demo/hwp')] == ['demo/hwp']


def test_ResourceTree_tree_lease_covers_declared_descendants_in_path_order():
    """When a lease is a tree lease, it covers its own resource and every
    declared one below it, in path order, and nothing that only shares a
    prefix (demo/hwpx is not below demo/hwp)."""
    t = tree(dict(DEMO, **{'demo/hwpx': {}}))
    assert [r.path for r in t.covered('demo/hwp', tree=True)] == \
        ['demo/hwp', 'demo/hwp/encoder']
    assert [r.path for r in t.covered('demo', tree=True)] == \
        ['demo/hwp', 'demo/hwp/encoder', 'demo/hwpx', 'demo/sim-device-1',
         'demo/sim-device-2']
    assert t.covered('demo') == []


def test_ResourceTree_enforced_lists_covered_resources_with_agents():
    """When a tree lease covers a resource without agents, enforced leaves
    it out and lists the others with their instances and classes."""
    t = tree({'a': {}, 'a/b': {'instances': ['x']}, 'a/c': {'classes': ['C']}})
    assert [(r.path, i, c) for r, i, c in t.enforced('a', tree=True)] == \
        [('a/b', ('x',), ()), ('a/c', (), ('C',))]


def test_ResourceTree_iterates_in_path_order_and_as_dict_is_json():
    """When iterated, the tree yields its Resources in path order; as_dict is
    JSON-ready and carries adhoc, the source and every field."""
    t = tree(DEMO)
    assert [r.path for r in t] == sorted(DEMO)
    d = json.loads(json.dumps(t.as_dict()))
    assert d['adhoc'] is False and d['source'] == SRC
    assert d['resources'][0] == {'path': 'demo/hwp', 'instances': ['fake-hwp'], 'classes': [],
                                 'lockout_levels': [1, 2, 3], 'holder_level': 3,
                                 'default_lease': None, 'max_lease': None, 'description': ''}


# -- defaults and inheritance -------------------------------------------------------

def test_ResourceTree_defaults_fill_what_a_resource_leaves_out():
    """When a resource sets nothing, it gets lockout levels (1, 2, 3), holder
    level 3 and no lease limits; the defaults block replaces those."""
    assert tree({'a': {}}).get('a') == Resource('a', (), (), (1, 2, 3), 3, None, None, '')
    t = tree({'a': {}}, defaults={'lockout_levels': [3, 2], 'default_lease': 60,
                                  'max_lease': 600})
    assert t.get('a') == Resource('a', (), (), (2, 3), 3, 60.0, 600.0, '')


def test_ResourceTree_child_inherits_from_its_nearest_declared_ancestor():
    """When a child leaves out lockout levels and leases, it takes its
    nearest declared ancestor's (not the defaults'), skipping undeclared
    levels in between; holder_level is the child's own highest level."""
    t = tree({'a': {'lockout_levels': [1, 2], 'max_lease': 100},
              'a/b/c': {'instances': ['x']}},
             defaults={'lockout_levels': [1, 2, 3], 'max_lease': 3600})
    c = t.get('a/b/c')
    assert (c.lockout_levels, c.holder_level, c.max_lease) == ((1, 2), 2, 100.0)


def test_ResourceTree_inherited_default_lease_is_cut_to_the_own_max_lease():
    """When a child sets only a max_lease shorter than the inherited default
    lease, its default is cut to that max (not refused)."""
    t = tree({'a': {'max_lease': 20}}, defaults={'default_lease': 60})
    assert (t.get('a').default_lease, t.get('a').max_lease) == (20.0, 20.0)


def test_ResourceTree_child_may_lock_out_more_levels_than_its_parent():
    """When a child locks out a superset of its parent's levels, it is fine."""
    t = tree({'a': {'lockout_levels': [3]}, 'a/b': {'lockout_levels': [1, 2, 3]}})
    assert t.get('a/b').lockout_levels == (1, 2, 3)


def test_ResourceTree_child_may_lock_out_fewer_levels_than_defaults_gave_its_parent():
    """When the parent's lockout levels come from the defaults only (it sets
    none itself), a child locking out fewer levels is fine."""
    t = tree({'a': {}, 'a/b': {'lockout_levels': [1, 2]}})
    assert (t.get('a').lockout_levels, t.get('a/b').lockout_levels) == ((1, 2, 3), (1, 2))


def test_ResourceTree_holder_level_default_comes_from_defaults():
    """When defaults set a holder_level, resources without one take it."""
    t = tree({'a': {'lockout_levels': [1]}}, defaults={'holder_level': 3})
    assert t.get('a').holder_level == 3


# -- leases -------------------------------------------------------------------------

LIMITS = {'a': {'default_lease': 60, 'max_lease': 600},
          'a/b': {'default_lease': 20, 'max_lease': 40},
          'c': {}}


def test_ResourceTree_lease_not_given_is_the_smallest_default_of_what_it_covers():
    """When no lease is given, a plain lease gets its resource's default; a
    tree lease the smallest default of what it covers; an undeclared or
    unlimited resource DEFAULT_LEASE."""
    t = tree(LIMITS, adhoc=True)
    assert t.lease('a') == 60.0
    assert t.lease('a', tree=True) == 20.0
    assert t.lease(['a', 'c']) == 60.0
    assert t.lease('c') == t.lease('zz/top') == DEFAULT_LEASE


def test_ResourceTree_lease_longer_than_a_covered_max_is_refused_naming_it():
    """When the lease asked for exceeds the max_lease of a resource it
    covers (itself or, as a tree, one below), one LeaseError line names the
    resource and its max."""
    t = tree(LIMITS, adhoc=True)
    assert t.lease('a', lease=600) == 600
    with pytest.raises(LeaseError) as info:
        t.lease('a', tree=True, lease=50)
    assert str(info.value) == "lease 50 s is longer than the max_lease 40 s of resource 'a/b'"
    with pytest.raises(LeaseError):
        t.lease(['c', 'a'], lease=601)


def test_ResourceTree_lease_not_a_number_is_left_to_the_lease_state():
    """When the lease is not a number, lease() returns it as it is (the
    lease state refuses it with its own rule)."""
    assert tree(LIMITS).lease('a', lease='long') == 'long'


# -- the site check -------------------------------------------------------------------

AGENTS = {'fake-hwp': 'FakeDataAgent', 'sim-device-1': 'SimulatedDeviceAgent',
          'lock-registry': 'LockRegistryAgent'}


def test_ResourceTree_check_site_accepts_declared_agents_of_the_site():
    """When every declared instance and class is in the site, nothing is raised."""
    tree({'demo/hwp': {'instances': ['fake-hwp']},
          'demo/sim': {'classes': ['SimulatedDeviceAgent']}}).check_site(AGENTS, 's.yaml')


@pytest.mark.parametrize('resources, line', [
    ({'demo/hwp': {'instances': ['fake-hwpp']}},
     "site/res.yaml: resources[demo/hwp].instances: no agent instance 'fake-hwpp' in the "
     "site config s.yaml; did you mean 'fake-hwp'?"),
    ({'demo/hwp': {'instances': ['cryostat']}},
     "site/res.yaml: resources[demo/hwp].instances: no agent instance 'cryostat' in the "
     "site config s.yaml"),
    ({'demo/hwp': {'classes': ['FakeDataAgnet']}},
     "site/res.yaml: resources[demo/hwp].classes: no agent of class 'FakeDataAgnet' in the "
     "site config s.yaml; did you mean 'FakeDataAgent'?"),
    ({'demo/hwp': {'instances': ['fake-hwp']}, 'demo/fake': {'classes': ['FakeDataAgent']}},
     "site/res.yaml: resources[demo/hwp]: agent 'fake-hwp' (FakeDataAgent) is covered by "
     "resources[demo/fake] too; an agent belongs to one resource"),
])
def test_ResourceTree_check_site_refuses_missing_agents_and_double_cover(resources, line):
    """When a declared instance or class is not in the site config, or an
    agent is covered once by instance and once by class, one line says so."""
    with pytest.raises(ResourceConfigError) as info:
        tree(resources).check_site(AGENTS, 's.yaml')
    assert str(info.value) == line


def test_demo_resources_file_loads_and_matches_the_demo_site():
    """When the demo's resources file is loaded, demo/hwp covers fake-hwp and
    every declared instance is an agent of site-config/default.yaml."""
    from ocs_locking.leases.resource_file import site_agents
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t = load_resources(os.path.join(repo, 'site-config', 'lock-registry-resources.yaml'))
    assert t.get('demo/hwp').instances == ('fake-hwp',)
    t.check_site(site_agents(os.path.join(repo, 'site-config', 'default.yaml')))


def test_docs_example_resources_file_loads_as_documented():
    """When docs/examples/resources.yaml is loaded, its resources inherit as
    docs/resources.rst says: the encoder takes its parent's levels and the
    defaults' default lease within its own max; the mount keeps level 3."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t = load_resources(os.path.join(repo, 'docs', 'examples', 'resources.yaml'))
    assert [r.path for r in t] == ['satp1', 'satp1/hwp', 'satp1/hwp/encoder', 'satp1/mount']
    assert t.adhoc is False
    enc = t.get('satp1/hwp/encoder')
    assert (enc.classes, enc.lockout_levels, enc.default_lease, enc.max_lease) == \
        (('HWPEncoderAgent',), (1, 2, 3), 60.0, 600.0)
    mount = t.get('satp1/mount')
    assert (mount.lockout_levels, mount.holder_level) == ((1, 2), 3)
    assert [r.path for r in t.covered('satp1', tree=True)] == [r.path for r in t]
    assert t.lease('satp1', tree=True) == 60.0
