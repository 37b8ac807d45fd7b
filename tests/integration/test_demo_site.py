"""The demo site for real: a crossbar router on a free loopback port, the
SimulatedDeviceAgent launched with ocs-agent-cli through this plugin's entry
point, and ocs's own OCSClient (HTTP) on the client side."""
import concurrent.futures
import os
import socket
import time

import pytest
import ocs
from ocs import ocs_client

from tools.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    with Site(SITE_FILE, 'demo', tmp_path_factory.mktemp('site'), port=0, teardown='kill') as s:
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


def _device_command(site, line):
    """Send one command to the simulated device directly (tests only)."""
    with socket.create_connection(('127.0.0.1', site.device('bridge-1')['port']), timeout=5) as s:
        s.sendall(line.encode() + b'\n')
        return s.makefile().readline().strip()


def _acq_data(client, until, what, timeout=30):
    """Poll acq's session.data (OCS offers no push to an HTTP client) until
    ``until(data)``; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        data = client.acq.status().session.get('data') or {}
        if until(data):
            return data
        assert time.monotonic() < deadline, f'acq never showed {what}; last data {data}'
        time.sleep(0.2)


def test_slow_sample_period_does_not_starve_tasks(client):
    """When acq samples only every 5 s (socs PR #614 yielded every 5 s against
    3 s task timeouts), tasks still get the lock at once: acq lends it."""
    _ensure_acq(client, rate=0.2)
    for value in (1.0, 2.0, 3.0):
        assert _ok(client.set_heater(value=value))
        assert _ok(client.get_reading(channel=0))
    _ensure_acq(client)


def test_task_refusal_over_ocs_names_the_holder(site, client):
    """When the device is slow (1.9 s a command) and three tasks queue behind
    acq, the last cannot get the lock within 3 s and returns the standard
    refusal naming the holder; nobody reports the device as offline."""
    _ensure_acq(client)
    assert _device_command(site, 'FAULT SLOW 1.9') == 'OK'
    try:
        c2 = ocs_client.OCSClient('sim-device-1', args=site.client_args)
        c3 = ocs_client.OCSClient('sim-device-1', args=site.client_args)
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            replies = list(ex.map(lambda f: f(), [lambda: client.set_heater(value=5),
                                                  lambda: c2.get_reading(),
                                                  lambda: c3.reconnect()]))
    finally:
        assert _device_command(site, 'FAULT OFF') == 'OK'
    refused = [r for r in replies if not _ok(r)]
    assert refused, replies
    for r in refused:
        msg = r.session['messages'][-2][1]
        assert msg.startswith("Could not acquire lock 'hw': held by '"), msg
        assert 'offline' not in msg
    _ensure_acq(client)


def test_device_offline_is_reported_as_such_and_the_agent_recovers(site, client):
    """When the device process goes away, tasks fail with 'Device offline'
    (not lock contention) and acq marks itself degraded; when the device
    comes back, acq and the tasks recover without a restart."""
    _ensure_acq(client)
    site.stop_device('bridge-1')
    try:
        reply = client.set_heater(value=7)
        assert reply.session['success'] is False
        msg = reply.session['messages'][-2][1]
        assert msg.startswith('Device offline: device 127.0.0.1:'), msg
        data = _acq_data(client, lambda d: str(d.get('device', '')).startswith('offline'),
                         'the device offline')
        assert client.acq.status().session['degraded'] is True
        assert data['lock']['holder'] == 'acq'
    finally:
        site.start_device('bridge-1')
    _acq_data(client, lambda d: d.get('device') == 'online', 'the device back online')
    assert client.acq.status().session['degraded'] is False
    assert _ok(client.set_heater(value=8))
    reply = client.reconnect()
    assert _ok(reply), reply
    assert reply.session['data']['idn'] == 'OCSLOCK,SIMTHERM,bridge-1,1.0'
