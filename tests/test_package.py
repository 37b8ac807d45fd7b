"""Packaging: the wheel carries the agents as ocs_locking.agents and the
ocs.plugins entry point, and ocs-agent-cli's plugin discovery finds them."""
import configparser
import importlib
import os
import re
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_contains_agents_and_plugin_entry_point(tmp_path):
    """When the project is built as a wheel (what `pip install .` installs),
    the top-level agents/ directory lands in ocs_locking/agents and the wheel
    declares the ocs.plugins entry point."""
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
         '-q', '-w', str(tmp_path), REPO],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [wheel] = list(tmp_path.glob('ocs_locking-*.whl'))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    for path in ('ocs_locking/agents/simulated_device/agent.py',
                 'ocs_locking/agents/simulated_device/server.py',
                 'ocs_locking/agents/lock_registry/agent.py',
                 'ocs_locking/ownership.py', 'ocs_locking/leases/state.py', 'ocs_locking/lock.py',
                 'ocs_locking/web/index.html', 'ocs_locking/web/locks.js',
                 'ocs_locking/web/locks.css'):
        assert path in names
    # the page's autobahn bundle, once `make web` has put it in the package
    if os.path.exists(os.path.join(REPO, 'ocs_locking', 'web', 'autobahn.min.js')):
        assert 'ocs_locking/web/autobahn.min.js' in names
    cfg = configparser.ConfigParser()
    cfg.read_string(entry_points)
    assert cfg['ocs.plugins']['ocs_locking'] == 'ocs_locking.plugin'
    assert cfg['console_scripts']['ocs-locks'] == 'ocs_locking.cli:main'


def test_ocs_agent_cli_discovers_every_agent_of_the_plugin():
    """When ocs-agent-cli builds its agent list, each agent class of this
    plugin maps to an importable module with the named entry point."""
    from ocs.agent_cli import build_agent_list

    from ocs_locking import plugin
    agents = build_agent_list()
    for name, info in plugin.agents.items():
        assert agents[name] == info
        module = importlib.import_module(info['module'])
        assert callable(getattr(module, info['entry_point']))


@pytest.mark.parametrize('module', ['ocs_locking.lock', 'ocs_locking.listeners'])
def test_lock_core_imports_nothing_from_ocs_or_the_network(module):
    """When ocs_locking.lock or ocs_locking.listeners is imported alone, neither
    ocs, autobahn nor a Twisted reactor is loaded (the core stays free of OCS
    and network code)."""
    code = (f'import sys, {module}; '
            'bad = [m for m in ("ocs", "autobahn", "twisted.internet.reactor") if m in sys.modules]; '
            'print(bad)')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def _readme_layout():
    """The README's Layout block as (top-level entry, [names in its description])."""
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    section = text.split('\n## Layout', 1)[1]
    block = section.split('```', 2)[1]
    entries = []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        if not line[0].isspace():
            top, _, rest = line.partition(' ')
            entries.append((top, []))
        else:
            rest = line
        if entries:
            entries[-1][1].extend(re.findall(r'[\w.-]+(?:/|\.py|\.yaml|\.json|\.rst)(?=[\s,;:)]|$)',
                                             rest))
    return entries


def _tracked_top_level():
    proc = subprocess.run(['git', 'ls-files'], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {path.split('/', 1)[0] for path in proc.stdout.splitlines() if '/' in path}


def test_readme_layout_names_what_is_in_the_repository():
    """When the README's Layout section is read, every top-level entry it
    lists exists, every file or directory named in a description exists under
    its entry, and every top-level directory in git is listed."""
    entries = _readme_layout()
    assert entries, 'the README has no Layout block'
    problems = []
    listed = set()
    for top, names in entries:
        listed.add(top.rstrip('/'))
        root = os.path.join(REPO, top)
        if not os.path.exists(root):
            problems.append(f'{top} does not exist')
            continue
        found = set()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in ('__pycache__', '_build')]
            found.update(d + '/' for d in dirnames)
            found.update(filenames)
            found.update(os.path.relpath(os.path.join(dirpath, n), root) for n in filenames)
            found.update(os.path.relpath(os.path.join(dirpath, d), root) + '/'
                         for d in dirnames)
        problems += [f'{top}: {name} is not in {top}' for name in names if name not in found]
    problems += [f'{d}/ is in git but not in the Layout' for d in
                 sorted(_tracked_top_level() - listed)]
    assert not problems, 'README Layout is stale:\n' + '\n'.join(problems)


#: Modules that must stay pure (design: "a test pins it"). ocs_locking.lock
#: is checked above; the package's __init__ loads the agent kit (Twisted),
#: so these are imported with the package __init__ files bypassed.
PURE_MODULES = ('ocs_locking.ownership', 'ocs_locking.why', 'ocs_locking.lock_history',
                'ocs_locking.flags', 'ocs_locking.stats', 'ocs_locking.deadlock',
                'ocs_locking.leases.lease_report',
                'ocs_locking.children', 'ocs_locking.wire', 'ocs_locking.errors',
                'ocs_locking.leases.paths', 'ocs_locking.leases.state',
                'ocs_locking.leases.holder', 'ocs_locking.leases.audit',
                'ocs_locking.leases.keys', 'ocs_locking.leases.resources',
                'ocs_locking.leases.waitfor', 'ocs_locking.leases.bookings',
                'ocs_locking.leases.booking_state', 'ocs_locking.leases.replica',
                'ocs_locking.bus.rules', 'ocs_locking.bus.config', 'ocs_locking.web',
                'ocs_locking.agents.lock_registry.sessions',
                'ocs_locking.agents.lock_registry.lease_pages',
                'ocs_locking.agents.lock_registry.lease_feed')
_BARE_IMPORT = """
import importlib, sys, types
for name, path in (('ocs_locking', 'ocs_locking'), ('ocs_locking.leases', 'ocs_locking/leases'),
                   ('ocs_locking.bus', 'ocs_locking/bus'), ('ocs_locking.agents', 'agents'),
                   ('ocs_locking.agents.lock_registry', 'agents/lock_registry')):
    pkg = types.ModuleType(name)
    pkg.__path__ = [path]
    sys.modules[name] = pkg
before = set(sys.modules)
importlib.import_module(%r)
loaded = {m.split('.')[0] for m in set(sys.modules) - before}
print(sorted(loaded & {'ocs', 'autobahn', 'twisted', 'txaio', 'socket', 'requests',
                       'urllib3', 'http', 'ssl', 'sqlite3'}))
"""


@pytest.mark.parametrize('module', PURE_MODULES)
def test_pure_module_imports_neither_ocs_twisted_autobahn_nor_the_network(module):
    """When a pure core module is imported on its own (a fresh interpreter,
    the package __init__ files bypassed), neither ocs, autobahn, twisted,
    txaio nor a network or database module (socket, requests, urllib3, http,
    ssl, sqlite3) is loaded."""
    proc = subprocess.run([sys.executable, '-c', _BARE_IMPORT % module], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]', module


def test_director_rules_core_imports_ocs_access_but_neither_twisted_nor_autobahn():
    """When the access director's rule core (director_rules) is imported on
    its own (package __init__ files bypassed), it loads ocs (ocs.access, on
    purpose: the rules are ocs's) but neither twisted, autobahn, txaio nor
    sqlite3: a pure core beside its Twisted shell (director.py)."""
    code = _BARE_IMPORT.replace("print(sorted(loaded & {", "print(sorted(loaded & {'ocs', ") \
        % 'ocs_locking.agents.lock_registry.director_rules'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = set(eval(proc.stdout.strip()))
    assert 'ocs' in loaded
    assert not loaded & {'twisted', 'autobahn', 'txaio', 'sqlite3'}, loaded


_CROSSBAR_IMPORT = """
import sys
sys.path.insert(0, %r)
import autobahn.twisted.wamp, twisted.internet.defer, txaio
before = set(sys.modules)
import ocs_locking.bus.authorizer, ocs_locking.bus.rules, ocs_locking.bus.config
import ocs_locking.web      # crossbar's static service imports it to find the page
loaded = {m.split('.')[0] for m in set(sys.modules) - before}
print(sorted(loaded - set(sys.stdlib_module_names) - {'ocs_locking'}))
"""


def test_bus_component_imports_in_crossbars_python_with_nothing_beyond_its_libraries():
    """When the bus component's modules are imported by crossbar's own
    python (what the router worker does with the config's pythonpath), they
    import and load nothing beyond the standard library, autobahn, twisted
    and txaio (loaded first: crossbar has them)."""
    from tools.devsite import find_crossbar
    python = os.path.join(os.path.dirname(find_crossbar()), 'python')
    proc = subprocess.run([python, '-c', _CROSSBAR_IMPORT % REPO], capture_output=True,
                          text=True, timeout=120, cwd='/')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def test_bus_package_imports_only_stdlib_autobahn_twisted_txaio_in_its_source():
    """When ocs_locking/bus/*.py are parsed, every import names the standard
    library, autobahn, twisted, txaio or the package itself (relative, or
    ocs_locking's own version)."""
    import ast
    allowed = set(sys.stdlib_module_names) | {'autobahn', 'twisted', 'txaio'}
    bus = os.path.join(REPO, 'ocs_locking', 'bus')
    bad = []
    for name in sorted(os.listdir(bus)):
        if not name.endswith('.py'):
            continue
        with open(os.path.join(bus, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split('.')[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    continue
                tops = [node.module.split('.')[0]]
                if node.module == 'ocs_locking' and [a.name for a in node.names] == ['__version__']:
                    continue
            else:
                continue
            bad += [f'{name}: {t}' for t in tops if t not in allowed]
    assert not bad
