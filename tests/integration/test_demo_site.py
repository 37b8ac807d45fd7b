"""The demo site for real: a crossbar router on a free loopback port, the
SimulatedDeviceAgent launched with ocs-agent-cli through this plugin's entry
point, and ocs's own OCSClient (HTTP) on the client side."""
import concurrent.futures
import os

import pytest
import ocs
from ocs import ocs_client

from ocs_locking.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('site'), port=0) as s:
        yield s


@pytest.fixture(scope='module')
def client(site):
    return site.wait_agent('sim-device-1')


def _ok(reply):
    return reply.status == ocs.OK and reply.session.get('success') is True


def _ensure_acq(client, **params):
    """Make sure acq runs with the given params (restart it if needed)."""
    status = client.acq.status().session
    if status.get('status') in ('starting', 'running'):
        client.acq.stop()
        client.acq.wait(timeout=30)
    client.acq.start(**params)
    reply = client.acq.status()
    assert reply.session['status'] in ('starting', 'running'), reply


def test_demo_agent_is_launched_by_ocs_agent_cli_with_acq_running(site, client):
    """When the site starts, ocs-agent-cli finds SimulatedDeviceAgent through
    the ocs.plugins entry point and acq runs from startup."""
    cmd = site.agent_command('sim-device-1')
    assert cmd[2:4] == ['-m', 'ocs.agent_cli']
    reply = client.acq.status()
    assert reply.session['op_name'] == 'acq'
    assert reply.session['status'] in ('starting', 'running')
    with open(site.log_path('sim-device-1')) as f:
        assert "Installed OCS Plugins:" in f.read()


def test_set_heater_succeeds_while_acq_runs(client):
    """When acq holds the device lock and samples at 10 Hz, set_heater still
    gets the lock at a sample boundary and succeeds, every time."""
    _ensure_acq(client)
    for value in (10.0, 20.5, 30.0, 40.0, 50.0):
        reply = client.set_heater(value=value)
        assert _ok(reply), reply
        assert reply.session['data']['heater'] == value
        assert reply.session['data']['waited'] < 3.0
    assert client.acq.status().session['status'] == 'running'


def test_get_reading_waits_on_the_reactor_while_acq_runs(client):
    """When a reactor-thread task (get_reading, acquire_deferred) shares the
    lock with the acq thread, it gets the lock and the agent stays responsive."""
    _ensure_acq(client)
    for channel in (0, 3, None):
        reply = client.get_reading(channel=channel)
        assert _ok(reply), reply
        expected = 4 if channel is None else 1
        assert len(reply.session['data']['channels']) == expected


def test_concurrent_tasks_never_collide_on_the_device(site, client):
    """When a thread task (set_heater) and a reactor task (get_reading) run
    over and over from two clients at once while acq runs, the device never
    sees two commands at once (its collision counter stays 0)."""
    _ensure_acq(client)

    def hammer(op):
        c = ocs_client.OCSClient('sim-device-1', args=site.client_args)
        call = getattr(c, op)
        return [call(value=float(n)) if op == 'set_heater' else call() for n in range(8)]

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        replies = [r for rs in ex.map(hammer, ['set_heater', 'get_reading']) for r in rs]
    assert all(_ok(r) for r in replies), [r for r in replies if not _ok(r)]
    data = client.acq.status().session['data']
    assert data['collisions'] == 0
    assert data['samples'] > 0


def test_bad_heater_value_is_refused_and_acq_keeps_running(client):
    """When set_heater gets an out-of-range value it is refused with a clear
    error before touching the lock; acq is unaffected."""
    _ensure_acq(client)
    reply = client.set_heater(value=500)
    assert reply.status == ocs.ERROR
    assert "Param 'value' failed validity check" in reply.msg
    assert client.acq.status().session['status'] == 'running'


def test_task_refusal_names_the_holder(client):
    """When acq holds the lock longer than a task's 3 s timeout (a 5 s sample
    period), the task fails with (False, message) naming the holder."""
    _ensure_acq(client, rate=0.2)
    reply = client.set_heater(value=1.0)
    assert reply.session['success'] is False
    last = reply.session['messages'][-2][1]
    assert last.startswith("Could not set heater: lock 'hw' held by 'acq' (session "), last
    assert last.endswith('0 waiting'), last
    _ensure_acq(client)
