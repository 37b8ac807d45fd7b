"""Storage fault tests for site-wide leases (issue 9 items 1-3): a real
crossbar router, a real LockRegistryAgent and a SimulatedDeviceAgent ``a-1``
holding the site lock ``lab/bridge`` through its SiteLock.

The registry's database lives on a small tmpfs of this module's own (4 MB,
mounted at ``<root>/db``), so the tests can make it read-only for real
(``mount -o remount,ro``: the test process runs as root, for whom ``chmod``
changes nothing). A failing write is injected with ``RLIMIT_FSIZE`` set on
the running registry (``prlimit``: every write to a file then fails with
EFBIG; Python ignores SIGXFSZ), lifted again to end the fault.

Each test checks what the registry and the holder do during the fault and
after it, and ends with the audit log replayed by
:func:`ocs_locking.leases.audit.check_audit`. Every wait is for something
the site shows, polled with a bound (helpers copied from test_faults.py).
"""
import os
import resource
import shutil
import subprocess
import sys

import pytest
import yaml

from tools.devsite import Site
from tools.processes import spawn
from ocs_locking.leases.audit import check_audit
from .support import (client, grant_of, history, leases, messages, retry, wait_for,
                      wait_lease_rpcs)
from .support import give_back, take_lease

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CROSSBAR_CONFIG = os.path.join(REPO, 'site-config', 'crossbar', 'config.json')
RESOURCE = 'lab/bridge'
LEASE = 3.0
BACK = 60
REGISTRY = 'lock-registry'


def _site_config(db):
    return {
        'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws',
                'wamp_http': 'http://127.0.0.1:18001/call',
                'wamp_realm': 'test_realm', 'address_root': 'observatory'},
        'hosts': {'faults': {
            'crossbar_timeout': 0,
            'simulated-devices': [
                {'name': 'bridge', 'port': 18121, 'channels': 2, 'latency': 0.01}],
            'agent-instances': [
                {'agent-class': 'LockRegistryAgent', 'instance-id': REGISTRY,
                 'arguments': [['--db', db]]},
                {'agent-class': 'SimulatedDeviceAgent', 'instance-id': 'a-1',
                 'arguments': [['--device-port', 18121], ['--mode', 'idle'],
                               ['--site-lock', RESOURCE], ['--site-lease', LEASE]]}]}},
    }


def _mount(path, *options):
    subprocess.run(['mount', *options, path], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope='module')
def _storage_site(tmp_path_factory, site_starter):
    root = tmp_path_factory.mktemp('storage-site')
    dbdir = root / 'db'
    dbdir.mkdir()
    _mount(str(dbdir), '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs')
    db = str(dbdir / 'leases.db')

    def make(attempt):
        where = root / f'attempt-{attempt}'
        (where / 'crossbar').mkdir(parents=True)
        shutil.copy(CROSSBAR_CONFIG, where / 'crossbar' / 'config.json')
        (where / 'site.yaml').write_text(yaml.safe_dump(_site_config(db)))
        return Site(str(where / 'site.yaml'), 'faults', where / 'work', port=0,
                    teardown='kill')
    try:
        s = site_starter(make)
        s.db = db
        try:
            wait_lease_rpcs(s)
            yield s
        finally:
            s.close()
    finally:
        subprocess.run(['umount', '-l', str(dbdir)], capture_output=True, timeout=30)


@pytest.fixture
def site(_storage_site):
    """The module's site, healed before the test; its audit log checked after."""
    healed(_storage_site)
    yield _storage_site
    assert check_audit(history(_storage_site)) == []


# -- helpers (as in test_faults.py) ----------------------------------------------------


def ocs_locks_status(site):
    """``ocs-locks status`` against the site: its stdout."""
    proc = subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, 'status'],
                          capture_output=True, text=True, timeout=BACK)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


STORAGE_WARNING = 'WARNING: lease storage is failing, so no lease is granted'


def acquire(site, res, lease=30.0):
    return take_lease(site, res, lease=lease)


def release(site, res, token):
    return give_back(site, res, token)


def start_registry(site, *extra, cwd=None):
    """Start the registry as the site does, with ``extra`` arguments (added
    to its instance's in a copy of the site config, in the same directory:
    ocs-agent-cli takes no agent arguments of its own) and in ``cwd``
    (default the site's work directory); wait until it answers."""
    command = site.agent_command(REGISTRY)
    if extra:
        with open(site.site_file) as f:
            data = yaml.safe_load(f)
        for inst in data['hosts'][site.host]['agent-instances']:
            if inst['instance-id'] == REGISTRY:
                inst['arguments'] = inst['arguments'] + [list(extra)]
        variant = os.path.join(os.path.dirname(site.site_file), 'site-registry-variant.yaml')
        with open(variant, 'w') as f:
            yaml.safe_dump(data, f)
        command[command.index('--site-file') + 1] = variant
    env = dict(os.environ)
    env['PATH'] = os.path.dirname(os.sys.executable) + os.pathsep + env.get('PATH', '')
    env.setdefault('LOGLEVEL', 'info')
    site.agents[REGISTRY] = spawn(command, site.log_path(REGISTRY), env=env,
                                  cwd=site.workdir if cwd is None else cwd)
    site.wait_agent(REGISTRY, timeout=BACK)
    wait_lease_rpcs(site)


def kill_registry(site):
    site.kill_agent(REGISTRY)


def healed(site):
    """Router up, agents running, the registry's storage writable, no lease held."""
    if site.router is None or site.router.poll() is not None or not site.router_ready():
        site.stop_router()
        site.start_router()
    for name in (REGISTRY, 'a-1'):
        proc = site.agents.get(name)
        if proc is None or proc.poll() is not None:
            site.agents.pop(name, None)
            if name == REGISTRY:
                start_registry(site)
            else:
                site.start_agent(name)
    if not leases(site)['storage']['ok']:
        kill_registry(site)
        start_registry(site, '--new-database')
    client(site, 'a-1')
    wait_lease_rpcs(site)
    retry(lambda: client(site, 'a-1').drop_site_lock(), 'a-1.drop_site_lock')
    for g in leases(site)['grants']:
        if g['owner'] == 'tester':
            release(site, g['resource'], g['token'])
    wait_for(lambda: not leases(site)['grants'], 'no grant left', BACK)


def set_fsize(site, limit):
    """RLIMIT_FSIZE of the running registry: 1 makes every file write fail."""
    pid = site.agents[REGISTRY].pid
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def take(site):
    session = retry(lambda: client(site, 'a-1').take_site_lock(), 'a-1.take_site_lock').session
    assert session['success'] is True, messages(session)
    return session['data']['token']


# -- tests ----------------------------------------------------------------------------

def test_write_failing_then_recovering_lease_still_ends_and_grants_resume(site):
    """When the registry's writes fail (file size limit: as a full disk) while
    a 1 s lease is held, the lease still ends, new grants are refused in one
    line naming the storage problem and leases says so; when writes work
    again, grants resume with a larger token and disk and memory agree."""
    first = acquire(site, 'lab/x', lease=1.0)
    assert first['success'] is True, messages(first)
    set_fsize(site, 1)
    try:
        # The first write after the limit (the lease's expiry) fails.
        wait_for(lambda: not leases(site)['storage']['ok'], 'the storage marked failing', BACK)
        wait_for(lambda: grant_of(site, 'lab/x') is None, 'the 1 s lease ended', BACK)
        refused = acquire(site, 'lab/y')
        assert refused['success'] is False
        [line] = [m for m in messages(refused) if 'lease storage is failing' in m]
        assert 'File too large' in line or 'disk' in line or 'I/O' in line, line
        data = leases(site)
        assert data['storage']['error'] and data['storage']['path'] == site.db
        assert site.agents[REGISTRY].poll() is None
        # the operator's view says so (the monitor refreshes it every tick)
        warned = wait_for(lambda: next((line for line in ocs_locks_status(site).splitlines()
                                        if line.startswith(STORAGE_WARNING)), None),
                          'ocs-locks status warning that lease storage is failing', BACK)
        assert 'File too large' in warned or 'disk' in warned or 'I/O' in warned, warned
    finally:
        set_fsize(site, resource.RLIM_INFINITY)
    wait_for(lambda: leases(site)['storage']['ok'], 'the storage writing again', BACK)
    wait_for(lambda: STORAGE_WARNING not in ocs_locks_status(site),
             'ocs-locks status without the storage warning', BACK)
    again = acquire(site, 'lab/x', lease=5.0)
    assert again['success'] is True, messages(again)
    assert again['data']['token'] > first['data']['token']
    assert [r['action'] for r in history(site) if r['resource'] == 'lab/x'][-3:] == [
        'grant', 'expire', 'grant']
    assert release(site, 'lab/x', again['data']['token'])['success'] is True


def test_read_only_database_keeps_the_registry_running_and_refuses_clearly(site):
    """When the database, its WAL and its directory are made read-only while
    a-1 holds the site lock, the registry keeps running (no SIGBUS) and a-1
    keeps renewing; restarted on a read-only file system, the registry
    answers but refuses every grant in one line; writable and restarted
    again, it grants tokens above every earlier one."""
    t1 = take(site)
    held = grant_of(site, RESOURCE)
    for f in (site.db, site.db + '-wal'):
        if os.path.exists(f):
            os.chmod(f, 0o444)
    os.chmod(os.path.dirname(site.db), 0o555)
    try:
        wait_for(lambda: (grant_of(site, RESOURCE) or held)['expires'] > held['expires'],
                 'a renewal of a-1 on the read-only files', BACK)
        assert site.agents[REGISTRY].poll() is None
        kill_registry(site)
        _mount(os.path.dirname(site.db), '-o', 'remount,ro')
        try:
            start_registry(site)
            data = leases(site)
            assert data['storage']['ok'] is False
            assert 'cannot be opened' in data['storage']['error'], data['storage']
            refused = acquire(site, 'lab/y')
            assert refused['success'] is False
            assert any('lease storage is failing' in m and 'read-only' in m
                       for m in messages(refused)), messages(refused)
            kill_registry(site)
        finally:
            _mount(os.path.dirname(site.db), '-o', 'remount,rw')
    finally:
        os.chmod(os.path.dirname(site.db), 0o755)
        for f in (site.db, site.db + '-wal'):
            if os.path.exists(f):
                os.chmod(f, 0o644)
    start_registry(site)
    assert leases(site)['storage']['ok'] is True
    got = acquire(site, 'lab/y', lease=5.0)
    assert got['success'] is True and got['data']['token'] > 2 ** 32, messages(got)
    assert release(site, 'lab/y', got['data']['token'])['success'] is True
    assert t1 < 2 ** 32 * leases(site)['storage']['epoch']


def test_deleted_database_refuses_then_restart_needs_new_database(site):
    """When the database file is deleted while a-1 holds the site lock, the
    registry refuses grants (naming the deletion) but answers leases and
    history; restarted, it refuses until --new-database; then its tokens
    exceed every token issued before."""
    t1 = take(site)
    before = max(leases(site)['counters'].values())
    for f in (site.db, site.db + '-wal'):
        if os.path.exists(f):
            os.unlink(f)
    refused = acquire(site, 'lab/y')
    assert refused['success'] is False
    assert any('was deleted or replaced while open' in m for m in messages(refused)), \
        messages(refused)
    assert leases(site)['storage']['ok'] is False
    assert client(site, REGISTRY).history(limit=5).session['success'] is True
    assert site.agents[REGISTRY].poll() is None

    kill_registry(site)
    start_registry(site)
    assert not os.path.exists(site.db)
    data = leases(site)
    assert data['storage']['ok'] is False and 'is missing' in data['storage']['error']
    refused = acquire(site, RESOURCE)
    assert any(m.endswith('no grant until the registry is started with --new-database')
               for m in messages(refused)), messages(refused)

    kill_registry(site)
    start_registry(site, '--new-database')
    assert leases(site)['storage']['ok'] is True
    got = wait_for(lambda: (lambda s: s if s['success'] else None)(acquire(site, RESOURCE, 5)),
                   'a grant of the site lock (a-1 let it go)', BACK)
    assert got['data']['token'] > max(t1, before)
    assert release(site, RESOURCE, got['data']['token'])['success'] is True


def test_registry_restarted_from_another_cwd_keeps_its_database(site, tmp_path):
    """When the registry, its --db a relative path, is stopped and started
    again from another working directory, it opens the same database (taken
    from the site config's directory, not the cwd): the grant is still
    there, tokens go on above the old ones, nothing is created in the cwd."""
    relative = os.path.join(os.path.dirname(site.site_file), 'rel.db')
    kill_registry(site)         # (the stop under test is the one below, of rel.db's)
    try:
        start_registry(site, '--db', 'rel.db')
        assert leases(site)['storage']['path'] == relative
        got = acquire(site, 'lab/z', lease=600)
        assert got['success'] is True, messages(got)
        t = got['data']['token']
        site.stop_agent(REGISTRY)
        elsewhere = tmp_path / 'elsewhere'
        elsewhere.mkdir()
        start_registry(site, '--db', 'rel.db', cwd=str(elsewhere))
        assert leases(site)['storage']['path'] == relative
        assert (grant_of(site, 'lab/z') or {}).get('token') == t
        assert release(site, 'lab/z', t)['success'] is True
        again = acquire(site, 'lab/z', lease=5)
        assert again['data']['token'] == t + 1, messages(again)     # clean stop: same epoch
        assert release(site, 'lab/z', again['data']['token'])['success'] is True
        assert os.listdir(elsewhere) == []
        assert check_audit(history(site)) == []
    finally:
        kill_registry(site)
        start_registry(site)
