"""``ocs-locks run`` on a real site: crossbar on loopback, the registry (as
the access director) and ocs's own FakeDataAgent as ``fake-hwp`` under
ocs-agent-cli, both entries as in the demo site file; ``demo/hwp`` covers
fake-hwp.

Every wait is on an event (a line the command prints, its exit), bounded.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

from tools.devsite import Site

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE_FILE = os.path.join(REPO, 'site-config', 'default.yaml')
OPERATOR = 'demo-operator'          # level 2 in the demo's access file
WAIT = 60.0                         # bound on one run (a broken run only)

pytestmark = pytest.mark.integration


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """The demo's registry and fake-hwp entries; demo/hwp covers fake-hwp."""
    with open(SITE_FILE) as f:
        data = yaml.safe_load(f)
    host = data['hosts']['demo']
    host['agent-instances'] = [i for i in host['agent-instances']
                               if i['instance-id'] in ('lock-registry', 'fake-hwp')]
    host.pop('simulated-devices', None)
    base = tmp_path_factory.mktemp('run-config')
    shutil.copy(os.path.join(REPO, 'site-config', 'lock-registry-access.yaml'), base)
    with open(base / 'lock-registry-resources.yaml', 'w') as f:
        yaml.safe_dump({'adhoc': True, 'resources': {
            'demo/hwp': {'instances': ['fake-hwp'], 'description': 'ocs FakeDataAgent'}}}, f)
    with open(base / 'site.yaml', 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)
    with Site(str(base / 'site.yaml'), 'demo', tmp_path_factory.mktemp('run-site'),
              port=0, teardown='kill') as s:
        s.wait_agent('lock-registry')
        s.wait_agent('fake-hwp')
        yield s


@pytest.fixture(scope='module')
def registry(site):
    return site.wait_agent('lock-registry')


def grants(registry):
    return {g['resource']: g for g in registry.leases().session['data']['grants']}


def ocs_locks(site, *args):
    return [sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *args]


def start(site, *args):
    """``ocs-locks run ARGS...`` in a child process (text pipes)."""
    return subprocess.Popen(ocs_locks(site, 'run', *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc):
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, out, err


# The command: prints its environment's lease variables and what
# `ocs-locks leases --json` says while it runs, as one JSON line.
INSIDE = """
import json, os, subprocess, sys
leases = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *sys.argv[1:], 'leases',
                         '--json'], capture_output=True, text=True, timeout=60)
print(json.dumps({'env': {k: v for k, v in os.environ.items() if k.startswith('OCS_LOCKS_')},
                  'leases': json.loads(leases.stdout or 'null'), 'err': leases.stderr}))
sys.exit(4)
"""


def test_run_holds_the_lease_while_the_command_runs_and_passes_it_on(site, registry):
    """When `ocs-locks run` holds two resources while a command runs, the
    command sees them, their tokens and the owner in its environment, and
    `ocs-locks leases` from inside it shows the grants; run exits with the
    command's status, the grants are gone after, and nothing secret is
    printed."""
    proc = start(site, 'it/run-a', 'it/run-b', '--lease', '5', '--note', 'in a command',
                 '--owner', 'rita', '--', sys.executable, '-c', INSIDE, *site.client_args)
    rc, out, err = finish(proc)
    assert rc == 4 and err == '', err
    seen = json.loads(out)
    env = seen['env']
    assert env['OCS_LOCKS_RESOURCES'] == 'it/run-a it/run-b'
    assert env['OCS_LOCKS_OWNER'] == 'rita' and 'OCS_LOCKS_LEASE_ID' not in env
    held = {g['resource']: g for g in seen['leases']['grants']}
    tokens = dict(pair.split('=') for pair in env['OCS_LOCKS_TOKENS'].split())
    for r in ('it/run-a', 'it/run-b'):
        assert held[r]['owner'] == 'rita' and held[r]['note'] == 'in a command'
        assert str(held[r]['token']) == tokens[r]
    assert not {'it/run-a', 'it/run-b'} & set(grants(registry))


def test_run_the_docs_example_drives_fake_hwp_with_the_grants_credential(site, registry):
    """When docs/examples/hwp_step.py runs under `ocs-locks run demo/hwp`, it
    runs fake-hwp's delay_task with $OCS_LOCKS_PRIVS (the grant's
    credential) while the lease keeps everyone else out; the credential is
    printed nowhere."""
    example = os.path.join(REPO, 'docs', 'examples', 'hwp_step.py')
    proc = start(site, 'demo/hwp', '--lease', '30', '--note', 'hwp step', '--owner', 'hana',
                 '--', sys.executable, example, *site.client_args)
    rc, out, err = finish(proc)
    assert rc == 0, err
    assert out.startswith('delay_task done under demo/hwp token ') and err == ''
    assert 'demo/hwp' not in grants(registry)


# A command that prints 'ready' once its handler is in place; SIGINT or
# SIGTERM makes it print the signal's name and exit with code 9.
WAITER = """
import signal, sys
def on(signum, frame):
    print(signal.Signals(signum).name, flush=True)
    sys.exit(9)
signal.signal(signal.SIGINT, on)
signal.signal(signal.SIGTERM, on)
print('ready', flush=True)
while True:
    signal.pause()
"""


def test_run_busy_exits_75_and_never_starts_the_command(site, registry, tmp_path):
    """When someone else holds the resource, run (--timeout 0.5: waiting in
    the queue) exits 75 with the holder in one line; the command never ran."""
    holder = start(site, 'it/run-busy', '--owner', 'hugo', '--', sys.executable, '-c',
                   WAITER)
    try:
        assert holder.stdout.readline() == 'ready\n', holder.stderr.read()
        marker = tmp_path / 'ran'
        rc, out, err = finish(start(site, 'it/run-busy', '--timeout', '0.5', '--',
                                    'touch', str(marker)))
        assert rc == 75 and err.count('\n') == 1, err
        assert err.startswith('ocs-locks run: it/run-busy still busy') and "'hugo'" in err
        assert not marker.exists()
    finally:
        holder.send_signal(signal.SIGTERM)
        rc, out, err = finish(holder)
    assert (rc, out, err) == (9, 'SIGTERM\n', '')      # passed on to the command


def test_run_ctrl_c_reaches_the_command_then_the_lease_is_released(site, registry):
    """When run gets Ctrl-C (SIGINT) while the command runs, the command gets
    it, run exits with the command's status and then the lease is gone."""
    proc = start(site, 'it/run-int', '--lease', '3', '--', sys.executable, '-c', WAITER)
    try:
        assert proc.stdout.readline() == 'ready\n', proc.stderr.read()
        assert grants(registry)['it/run-int']['owner']
        proc.send_signal(signal.SIGINT)
    finally:
        rc, out, err = finish(proc)
    assert (rc, out, err) == (9, 'SIGINT\n', '')
    assert 'it/run-int' not in grants(registry)


def test_run_force_released_lease_ends_the_command_and_exits_124(site, registry):
    """When an operator force-releases the resource while the command runs,
    run says so in one line, the command gets SIGTERM, and run exits 124."""
    from ocs.ocs_client import OCSClient
    proc = start(site, 'it/run-lost', '--lease', '3', '--', sys.executable, '-c', WAITER)
    try:
        assert proc.stdout.readline() == 'ready\n', proc.stderr.read()
        admin = OCSClient('lock-registry', privs=OPERATOR, args=site.client_args)
        reply = admin.force_release(resource='it/run-lost', reason='cryostat service')
        assert reply.session['success'], reply.msg
    finally:
        rc, out, err = finish(proc)
    assert (rc, out) == (124, 'SIGTERM\n'), err
    assert err.count('\n') == 1 and err.startswith('ocs-locks run: lost the lease on '
                                                   'it/run-lost: ')
    assert 'cryostat service' in err and err.rstrip().endswith(
        'ending the command (SIGTERM, SIGKILL after 10 s)')


# Like WAITER, and SIGUSR1 (the preemption signal below) makes it print
# 'USR1' and exit 0: it gives way.
GIVES_WAY = WAITER.replace("signal.signal(signal.SIGTERM, on)",
                           "signal.signal(signal.SIGTERM, on)\n"
                           "def way(signum, frame):\n"
                           "    print('USR1', flush=True)\n"
                           "    sys.exit(0)\n"
                           "signal.signal(signal.SIGUSR1, way)")


def test_run_preempted_sends_the_preempt_signal_and_the_command_gives_way(site, registry):
    """When `ocs-locks preempt` asks the holder of the resource to give way
    and run was given --preempt-signal USR1, the command gets SIGUSR1 at
    once (long before the grace ends), run says who asked in one line, the
    command exits 0, run exits 0 and the lease is released (not revoked)."""
    proc = start(site, 'it/run-pre', '--lease', '30', '--preempt-signal', 'USR1', '--',
                 sys.executable, '-c', GIVES_WAY)
    try:
        assert proc.stdout.readline() == 'ready\n', proc.stderr.read()
        p = subprocess.run(ocs_locks(site, 'preempt', 'it/run-pre', '--reason',
                                     'calibration must run', '--grace', '120'),
                           capture_output=True, text=True, timeout=WAIT,
                           env=dict(os.environ, OCS_LOCKS_PASSWORD=OPERATOR))
        assert p.returncode == 0, p.stderr
    finally:
        rc, out, err = finish(proc)
    assert (rc, out) == (0, 'USR1\n'), err
    assert err.count('\n') == 1 and err.startswith('ocs-locks run: preemption of it/run-pre '
                                                   'asked: ') and 'calibration must run' in err
    assert err.rstrip().endswith('sent SIGUSR1 to the command'), err
    assert 'it/run-pre' not in grants(registry)
    rows = registry.history(resource='it/run-pre', limit=20).session['data']['history']
    assert 'release' in [r['action'] for r in rows], [r['action'] for r in rows]


def test_reserve_prints_a_preemption_notice_and_ctrl_c_gives_way(site, registry):
    """When the holder is `ocs-locks reserve` and someone preempts it, reserve
    prints the notice (who asked, revoked in how long) on stderr at once;
    Ctrl-C then releases before the grace ends."""
    from tests.support import reserve_process
    with reserve_process(site, 'it/res-pre', '--lease', '30', '--owner', 'una') as r:
        assert r.proc.stdout.readline().startswith("Reserved it/res-pre for 'una'")
        p = subprocess.run(ocs_locks(site, 'preempt', 'it/res-pre', '--reason',
                                     'dome closing', '--grace', '120'),
                           capture_output=True, text=True, timeout=WAIT,
                           env=dict(os.environ, OCS_LOCKS_PASSWORD=OPERATOR))
        assert p.returncode == 0, p.stderr
        import select
        assert select.select([r.proc.stderr], [], [], WAIT)[0], 'no preemption notice'
        line = r.proc.stderr.readline()
        assert line.startswith('preemption of it/res-pre asked: ') and 'dome closing' in line
        assert line.rstrip().endswith('unless released (Ctrl-C releases)'), line
    assert (r.returncode, r.out.strip()) == (0, 'Released it/res-pre.'), r.err
    assert 'it/res-pre' not in grants(registry)
