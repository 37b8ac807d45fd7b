"""Issue 12 on a real site (crossbar on loopback, the LockRegistryAgent, a
test agent launched with ocs-agent-cli, OCSClient and ocs-locks as
clients): who waits for a lock, in order, in ``ocs-locks status --waiters``
and ``--json``; a lease taken with ``ocs-locks reserve`` in ``ocs-locks
watch``; a busy reserve saying how much longer and until when."""
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from ocs import ocs_client

from tools.devsite import Site

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUEUE_AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'queue_agent.py')
#: Bound on every wait, in seconds (the waits end as soon as the thing happens).
WAIT = 60

SITE = {
    'hub': {'wamp_server': 'ws://127.0.0.1:18001/ws', 'wamp_http': 'http://127.0.0.1:18001/call',
            'wamp_realm': 'test_realm', 'address_root': 'observatory'},
    'hosts': {
        'registry': {'crossbar_timeout': 0, 'agent-instances': [
            {'agent-class': 'LockRegistryAgent', 'instance-id': 'lock-registry'}]},
        # started by the test with --agent/--entrypoint (not a plugin agent)
        'queue': {'crossbar_timeout': 0, 'agent-instances': [
            {'agent-class': 'QueueAgent', 'instance-id': 'queue-1'}]},
    },
}


@pytest.fixture(scope='module')
def site(tmp_path_factory, site_starter):
    root = tmp_path_factory.mktemp('queue-site')
    (root / 'crossbar').mkdir()
    shutil.copy(os.path.join(REPO, 'site-config', 'crossbar', 'config.json'),
                root / 'crossbar' / 'config.json')
    site_file = root / 'site.yaml'
    site_file.write_text(yaml.safe_dump(SITE))
    s = site_starter(lambda attempt: Site(str(site_file), 'registry',
                                          root / f'work-{attempt}', port=0,
                                          teardown='kill'))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope='module')
def agent(site):
    """The queue agent, launched as ocs-agent-cli runs a non-plugin agent."""
    cmd = [sys.executable, '-u', '-m', 'ocs.agent_cli', '--agent', QUEUE_AGENT,
           '--entrypoint', 'main', '--site-file', site.site_file, '--site-host', 'queue',
           '--instance-id', 'queue-1', '--crossbar-timeout', '0']
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get('PATH', ''))
    with open(site.log_path('queue-1'), 'ab') as log:
        site.agents['queue-1'] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=site.workdir)
    return site.wait_agent('queue-1', timeout=WAIT)


def registry_row(site, lock, pred, what):
    """Poll the registry's table (HTTP clients cannot be pushed to) until
    the row of ``lock`` satisfies pred; bounded."""
    registry = site.wait_agent('lock-registry', timeout=WAIT)
    deadline = time.monotonic() + WAIT
    row = None
    while True:
        reply = registry.status()
        assert reply.session['success'] is True, reply
        row = next((r for r in reply.session['data']['locks'] if r['lock'] == lock), None)
        if row is not None and pred(row):
            return row
        assert time.monotonic() < deadline, f'the registry never showed {what}; last row {row}'
        time.sleep(0.2)     # poll interval of an HTTP query, not a wait for time


def ocs_locks(site, *args):
    return subprocess.run([sys.executable, '-m', 'ocs_locking.cli', *site.client_args, *args],
                          capture_output=True, text=True, timeout=WAIT)


def read_until(proc, pred, what):
    """Lines of a background ocs-locks' stdout until one satisfies pred
    (returned); bounded."""
    deadline = time.monotonic() + WAIT
    seen = []
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail(f'no {what} within {WAIT} s; last lines {seen[-10:]}')
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f'ended before {what}: {proc.communicate(timeout=WAIT)[1]}; '
                            f'last lines {seen[-10:]}')
            seen.append(line.rstrip('\n'))
            if pred(line):
                return line


def background(site, *args):
    return subprocess.Popen([sys.executable, '-u', '-m', 'ocs_locking.cli', *site.client_args,
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def end(proc):
    """SIGINT a background ocs-locks and wait (bounded): (status, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)
    return proc.returncode, err


def test_status_waiters_lists_two_waiters_in_order(site, agent):
    """When 'hold' holds queue-1's lock and tasks 'first' then 'second'
    queue for it, `ocs-locks status --waiters` lists them under the lock in
    that order (position, job, session, waited for) and `--json` rows carry
    the same queue; once the hold ends both run and the queue is empty."""
    agent.hold.start()
    registry_row(site, 'queue-1/hw', lambda r: r['job'] == 'hold', 'the hold')
    c2 = ocs_client.OCSClient('queue-1', args=site.client_args)
    try:
        agent.first.start()
        registry_row(site, 'queue-1/hw', lambda r: r['waiters'] == 1, 'one waiter')
        c2.second.start()
        row = registry_row(site, 'queue-1/hw', lambda r: len(r['queue']) == 2, 'two waiters')
        sessions = [agent.first.status().session['session_id'],
                    c2.second.status().session['session_id']]
        assert [(w['job'], w['session_id']) for w in row['queue']] == \
            list(zip(['first', 'second'], sessions))
        proc = ocs_locks(site, 'status', '--waiters')
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        at = lines.index('queue-1/hw: 2 waiting')
        assert re.match(rf'^  1\. first \(session {sessions[0]}\) waiting for \d+\.\d s$',
                        lines[at + 1]), lines
        assert re.match(rf'^  2\. second \(session {sessions[1]}\) waiting for \d+\.\d s$',
                        lines[at + 2]), lines
        proc = ocs_locks(site, 'status', '--json')
        assert proc.returncode == 0, proc.stderr
        import json
        [jrow] = [r for r in json.loads(proc.stdout) if r['lock'] == 'queue-1/hw']
        assert [w['job'] for w in jrow['queue']] == ['first', 'second']
        assert all(w['waited_for'] >= 0 for w in jrow['queue'])
    finally:
        agent.hold.stop()
        agent.hold.wait(timeout=WAIT)
    assert agent.first.wait(timeout=WAIT).session['success'] is True
    assert c2.second.wait(timeout=WAIT).session['success'] is True
    registry_row(site, 'queue-1/hw', lambda r: r['queue'] == [] and r['job'] is None,
                 'the queue empty')


def test_a_reserved_lease_appears_in_watch_and_a_busy_reserve_says_until_when(site):
    """When ops-console holds it/watched with `ocs-locks reserve`, a running
    `ocs-locks watch` shows it below the locks (owner, token, time left,
    note); a second reserve is refused naming the holder, its token, for how
    much longer and until when (UTC); once released the watch drops it."""
    res = background(site, 'reserve', 'it/watched', '--lease', '60', '--note', 'bench',
                     '--owner', 'ops-console')
    watch = None
    try:
        got = read_until(res, lambda line: line.startswith('Reserved'), 'the reservation')
        token = re.search(r'it/watched=(\d+)', got).group(1)
        watch = background(site, 'watch', '--no-clear')
        line = read_until(watch, lambda line: line.startswith('it/watched '), 'the lease row')
        fields = line.split()
        assert fields[1:3] == ['ops-console', token] and fields[-1] == 'bench', line
        assert fields[6] == 's' and 0 < float(fields[5]) <= 60, line
        busy = ocs_locks(site, 'reserve', 'it/watched', '--lease', '10', '--owner', 'bob')
        assert busy.returncode == 1
        assert re.search(rf"it/watched held by 'ops-console' \(token {token}\) for another "
                         rf"\d+ s, until \d\d:\d\d:\d\d UTC \(bench\)", busy.stderr), busy.stderr
    finally:
        code, err = end(res)
    assert code == 0, err
    # the release reaches the watch on the feed: a table without the lease
    read_until(watch, lambda line: line.startswith('ocs-locks watch'), 'a redraw')
    deadline = time.monotonic() + WAIT
    block = []
    while True:         # each drawing: header line, table, blank; bounded
        line = read_until(watch, lambda line: True, 'a drawing')
        if line.startswith('ocs-locks watch'):
            if not any(b.startswith('it/watched ') for b in block):
                break
            block = []
        else:
            block.append(line)
        assert time.monotonic() < deadline, 'the watch kept showing the released lease'
    code, err = end(watch)
    assert code == 0 and err == '', err
