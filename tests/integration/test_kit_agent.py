"""The guide's migrated agent (docs/examples/kit_agent.py) runs as a real
agent: launched with ``ocs-agent-cli --agent ... --entrypoint main`` (it is
not part of a plugin) on a real site with a crossbar router and a
LockRegistryAgent, its lock shows up in the registry's table, its tasks
work over OCS, and it shuts down cleanly on SIGINT."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tools.devsite import Site

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KIT_AGENT = os.path.join(REPO, 'docs', 'examples', 'kit_agent.py')
#: Bound on every wait, in seconds (the waits end as soon as the thing happens).
WAIT = 60

SITE = {
    'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws', 'wamp_http': 'http://127.0.0.1:18001/call',
            'wamp_realm': 'test_realm', 'address_root': 'observatory'},
    'hosts': {
        # Started by Site: the plugin's agents.
        'registry': {'crossbar_timeout': 0, 'agent-instances': [
            {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry'}]},
        # Started by the test with --agent/--entrypoint (not a plugin agent).
        'kit': {'crossbar_timeout': 0, 'agent-instances': [
            {'agent-class': 'KitAgent', 'instance-id': 'kit-1',
             'arguments': [['--value', 0.25]]}]},
    },
}


@pytest.fixture(scope='module')
def site(tmp_path_factory, site_starter):
    root = tmp_path_factory.mktemp('kit-site')
    (root / 'crossbar').mkdir()
    shutil.copy(os.path.join(REPO, 'site-config', 'crossbar', 'config.json'),
                root / 'crossbar' / 'config.json')
    site_file = root / 'site.yaml'
    site_file.write_text(yaml.safe_dump(SITE))
    # The test checks the kit agent's own clean shutdown; the registry's
    # (ocs's SIGINT path, ~6 s) is not under test: the site is killed.
    s = site_starter(lambda attempt: Site(str(site_file), 'registry',
                                          root / f'work-{attempt}', port=0,
                                          teardown='kill'))
    try:
        yield s
    finally:
        s.close()


def start_kit_agent(site):
    """Launch the example as ocs-agent-cli runs a non-plugin agent; Site
    stops it with the others."""
    cmd = [sys.executable, '-u', '-m', 'ocs.agent_cli', '--agent', KIT_AGENT,
           '--entrypoint', 'main', '--site-file', site.site_file, '--site-host', 'kit',
           '--instance-id', 'kit-1', '--crossbar-timeout', '0']
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get('PATH', ''))
    with open(site.log_path('kit-1'), 'ab') as log:
        site.agents['kit-1'] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=site.workdir)
    return site.wait_agent('kit-1', timeout=WAIT)


def registry_row(site, lock, pred):
    """Poll the registry's table until the row of ``lock`` satisfies pred."""
    registry = site.wait_agent('lock-registry', timeout=WAIT)
    deadline = time.monotonic() + WAIT
    row = None
    while True:
        reply = registry.status()
        assert reply.session['success'] is True, reply
        row = next((r for r in reply.session['data']['locks'] if r['lock'] == lock), None)
        if row is not None and pred(row):
            return row
        assert time.monotonic() < deadline, f'the registry never showed {lock} as wanted; ' \
                                            f'last row {row}'
        time.sleep(0.2)     # poll interval of an HTTP query, not a wait for time


def test_kit_agent_runs_under_ocs_agent_cli_and_its_lock_is_in_the_registry_table(site):
    """When the guide's migrated agent is launched with ocs-agent-cli
    --agent/--entrypoint, acq starts, the registry's table (what `ocs-locks
    status` prints) has its row kit-1/hw held by acq and alive, and its tasks
    (set_value in a thread, get_value on the reactor) succeed while acq runs."""
    kit = start_kit_agent(site)
    row = registry_row(site, 'kit-1/hw', lambda r: r['job'] == 'acq' and r['alive'])
    assert row['agent'] == 'kit-1'

    ok = kit.set_value(value=1.5)
    assert ok.session['success'] is True, ok.session['messages']
    assert ok.session['data'] == {'value': 1.5}
    got = kit.get_value()
    assert got.session['success'] is True, got.session['messages']
    assert got.session['data']['value'] == 1.5
    status = kit.acq.status().session
    assert status['status'] == 'running'
    assert status['data']['lock']['holder'] == 'acq'

    # Clean shutdown: SIGINT ends the agent (lock closed, worker stopped).
    proc = site.agents.pop('kit-1')
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(WAIT) == 0
    with open(site.log_path('kit-1')) as f:
        log = f.read()
    assert 'Traceback' not in log, log[-3000:]
