"""Packaging: the wheel carries the agents as ocs_locking.agents and the
ocs.plugins entry point, and ocs-agent-cli's plugin discovery finds them."""
import configparser
import importlib
import os
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
                 'ocs_locking/ownership.py', 'ocs_locking/leases/state.py', 'ocs_locking/lock.py'):
        assert path in names
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



#: Modules that must stay pure (design: "a test pins it"). ocs_locking.lock
#: is checked above; the package's __init__ loads the agent kit (Twisted),
#: so these are imported with the package __init__ files bypassed.
PURE_MODULES = ('ocs_locking.ownership', 'ocs_locking.wire', 'ocs_locking.errors',
                'ocs_locking.leases.paths', 'ocs_locking.leases.state',
                'ocs_locking.leases.holder', 'ocs_locking.leases.audit')
_BARE_IMPORT = """
import importlib, sys, types
for name, path in (('ocs_locking', 'ocs_locking'), ('ocs_locking.leases', 'ocs_locking/leases')):
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
