"""The benchmarks run (quick mode) and print their comparison table.

Speed is not asserted here (that belongs in the benchmark's own table); only
what is deterministic: the run completes, reports every scenario for every
lock, and our lock's FIFO share is 100%.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import port_was_taken

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Bound on a quick benchmark run that starts a site (about 35 s idle; a
#: loaded 2-core machine can double that).
SITE_BENCH_TIMEOUT = 300


class _SiteBench:
    """benchmarks/<name>.py --quick run in its own process (it runs the
    Twisted reactor) with its site under ``root``, kept (--keep) so that a
    failure can show the site's logs. Started when the module starts (the two
    site benchmarks spend most of their time waiting on their sites, so they
    run beside each other and beside the in-process benchmarks); run again,
    once, only when the site could not start because a port was taken
    meanwhile (see conftest.PORT_TAKEN)."""

    def __init__(self, name, root, attempts=2):
        self.name, self.root, self.attempts = name, root, attempts
        self.attempt = 0
        self._start()

    def _start(self):
        self.out = self.root / f'{self.name}-{self.attempt}.json'
        self.tmp = self.root / f'tmp-{self.attempt}'
        self.tmp.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(REPO, 'benchmarks', f'{self.name}.py'), '--quick',
             '--keep', '--json', str(self.out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, TMPDIR=str(self.tmp)))

    def result(self):
        """(returncode, stdout, stderr, json path) once the run has ended."""
        while True:
            try:
                stdout, stderr = self.proc.communicate(timeout=SITE_BENCH_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                stdout, stderr = self.proc.communicate()
                raise AssertionError(f'{self.name} --quick did not end within '
                                     f'{SITE_BENCH_TIMEOUT} s' + _logs(self.tmp))
            self.attempt += 1
            if self.out.exists() or not port_was_taken(stderr) \
                    or self.attempt == self.attempts:
                break
            self._start()
        # 1: a timing target failed (a site that cannot start writes no JSON)
        assert self.proc.returncode in (0, 1) and self.out.exists(), \
            stderr[-3000:] + _logs(self.tmp)
        return self.proc.returncode, stdout, stderr, self.out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope='module')
def site_benches(tmp_path_factory):
    """Both site benchmarks, started together when the module's first test
    asks for them; killed at the end of the module if still running."""
    benches = {name: _SiteBench(name, tmp_path_factory.mktemp(name))
               for name in ('registry_bench', 'site_lock_bench', 'liveness_bench',
                            'deadlock_bench', 'booking_bench', 'failover_bench')}
    yield benches
    for bench in benches.values():
        bench.stop()


@pytest.fixture(autouse=True)
def _start_site_benches_first(request):
    """The site benchmarks start with the module's first test (even one that
    does not use them), so that they run beside it."""
    if 'not integration' not in (request.config.getoption('-m', default='') or ''):
        request.getfixturevalue('site_benches')


def _logs(tmp):
    """The tails of the site logs a failed benchmark run left under tmp."""
    tails = []
    for log in sorted(tmp.glob('*/run/logs/*.log')):
        tails.append(f'\n--- {log.name}:\n' + log.read_text(errors='replace')[-1500:])
    return ''.join(tails)


def _load(name):
    path = os.path.join(REPO, 'benchmarks', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'bench_{name}', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lock_bench_quick_prints_table_for_every_lock(tmp_path, capsys):
    """When lock_bench runs in quick mode it prints the side-by-side table and
    writes every scenario for ours, ocs's and threading.Lock to JSON."""
    out = tmp_path / 'bench.json'
    _load('lock_bench').main(['--quick', '--json', str(out)])
    printed = capsys.readouterr().out
    assert '| scenario | ocs_locking | ocs 0.12.1 (baseline) |' in printed
    data = json.loads(out.read_text())
    for scenario, by_lock in data['results'].items():
        assert set(by_lock) >= {'ocs_locking', 'threading.Lock'}, scenario
    assert data['results']['fifo_pct']['ocs_locking'] == 100.0
    assert {t['name'] for t in data['targets']} >= {'FIFO ours 100%'}


def test_task_latency_quick_prints_both_tables_without_collisions(tmp_path, capsys):
    """When task_latency runs in quick mode it prints the (a) and (b) tables
    and writes every scenario, each with its task count and zero collisions
    on the simulated device, to JSON."""
    out = tmp_path / 'latency.json'
    _load('task_latency').main(['--quick', '--json', str(out)])
    printed = capsys.readouterr().out
    assert ('| metric | kit (ocs_locking) | socs pattern (ocs 0.12.1 TimeoutLock, baseline) '
            '| ratio |') in printed
    assert '| metric | kit (ocs_locking), period 0.1 s | kit (ocs_locking), period 5 s |' in printed
    data = json.loads(out.read_text())
    assert set(data['results']) == {'a_kit', 'a_socs', 'b_kit', 'b_kit5', 'b_socs'}
    for name, res in data['results'].items():
        assert res['tasks'] == (30 if name.startswith('a_') else 6), name
        assert res['collisions'] == 0, name
    assert {t['name'] for t in data['targets']} >= {
        '(b) zero kit failures (period 0.1 s and 5 s)', 'zero device collisions in every scenario'}


@pytest.mark.integration
def test_registry_bench_quick_prints_tables_and_accounts_for_every_event(site_benches):
    """When registry_bench runs in quick mode (a real site on loopback; its own
    process, as it runs the Twisted reactor) it prints the (a) and (b) tables,
    and its JSON accounts for every set_heater call and every published event."""
    _, printed, _, out = site_benches['registry_bench'].result()
    assert ('| metric | ours: lock-registry `ownership`, lock free | ocs 0.12.1 RegistryAgent '
            '`agent_operations`, lock free (baseline) | ours, acq running |') in printed
    assert ('| window (s) | published | received | latency median (ms) | latency p99 (ms) '
            '|') in printed
    data = json.loads(out.read_text())
    for run in ('free', 'acq'):
        a = data['results']['a'][run]
        assert a['changes'] == 20 and a['call_failures'] == 0, run
        assert 0 <= a['ours']['seen'] <= 20 and 0 <= a['ocs']['seen'] <= 20, run
    b = data['results']['b']
    s = b['summary']
    assert s['published'] == s['expected'] == 500
    assert s['received'] + s['superseded'] + s['missing'] == s['published']
    assert sum(w['published'] for w in b['windows']) == s['published']
    assert len(b['windows']) == 5
    assert s['expected_rows'] == 10
    assert {t['name'] for t in data['targets']} >= {
        '(a) ours median < 10 ms (lock free)', '(b) registry dropped 0 messages',
        '(c) bus component adds < 0.5 ms to the median event latency'}
    assert ('| router config | publishes | ack median (ms) | ack p99 (ms) | event median (ms) '
            '| event p99 (ms) |') in printed
    assert '| stock ocs config (baseline) | 200 |' in printed
    c = data['results']['c']
    for name in ('stock', 'bus'):
        assert c[name]['publishes'] == 200, name
        assert 0 < c[name]['ack_median_ms'] and 0 < c[name]['event_median_ms'], name
    # (d) the lock history: the demo's traffic grew it, one span per set_heater at least
    assert '| history growth | in the run | per hour |' in printed
    g = data['results']['d']['growth']
    assert g['calls'] >= 5 and g['spans'] >= g['calls'] and g['bytes'] >= 0
    assert g['spans_per_hour'] > 0
    assert s['history_spans'] >= s['expected_rows']
    assert '(b) flat memory with the lock history on: last window RSS < first x 1.1' in \
        {t['name'] for t in data['targets']}


@pytest.mark.integration
def test_site_lock_bench_quick_prints_table_and_every_round_trip_succeeds(site_benches):
    """When site_lock_bench runs in quick mode (a real site with the lock
    registry and ocs's AccessDirector; its own process, as it runs the Twisted
    reactor) it prints the round-trip table with the AccessDirector rows as
    the baseline, and its JSON has every round trip of every path, none failed."""
    _, printed, _, out = site_benches['site_lock_bench'].result()
    assert '| path | median (ms) | p99 (ms) | N | ratio (median / baseline median) |' in printed
    assert 'AccessDirector (c1, baseline): WAMP request_exclusive' in printed
    assert 'AccessDirector (c2, baseline): HTTP ExclusiveAccessClient' in printed
    data = json.loads(out.read_text())
    assert data['baseline'].endswith('AccessDirector') and data['quick'] is True
    n = {'a': 30, 'c1': 30, 'b': 20, 'c2': 20}
    assert set(data['results']) == set(n)
    for key, row in data['results'].items():
        assert row['n'] == row['completed'] == n[key], key
        assert row['failures'] == 0, (key, row['first_failure'])
    dist = data['distribution']
    assert dist['samples'] + dist['failures'] == 3
    assert '(d) Grant -> enforced at the agent' in printed
    for kind in ('ours', 'director'):
        enf = dist['enforcement'][kind]
        assert enf['samples'] == enf['n'] == 3 and enf['failures'] == 0, (kind, enf)
    assert '(e) Force-release -> holder told' in printed
    assert 'baseline (e1b): the same SiteLock, watch=False: told at its next renewal' in printed
    assert 'baseline (e2b): the same Reservation, watch=False: told at its next renewal' \
        in printed
    rev = dist['revocation']
    assert set(rev) == {'e1', 'e1b', 'e2', 'e2b', 'p1', 'p2'}
    assert 'ours (p1): SiteLock (WAMP), preempt -> on_preempt' in printed
    for key, row in rev.items():
        assert row['samples'] == row['n'] == 5 and row['failures'] == 0, (key, row)
        assert row['median_ms'] > 0 and row['p99_ms'] >= row['median_ms'], (key, row)
    assert (rev['e1']['watch'], rev['e1b']['watch']) == (True, False)
    assert {t['name'] for t in data['targets']} == {
        '(a) median < 5 ms from an agent (WAMP)',
        'every round trip granted and released (ours and baseline)',
        '(d) grant -> enforced at the agent, median <= 20 ms',
        '(d) every enforcement sample seen (ours and baseline)',
        '(e) force-release -> SiteLock told, median <= 100 ms',
        '(e) force-release -> Reservation told, median <= 100 ms',
        '(e) preempt -> SiteLock told (on_preempt), median <= 100 ms',
        '(e) preempt -> Reservation told (on_preempt), median <= 100 ms',
        '(e) every revocation sample told (pushed and baseline)'}


def test_liveness_bench_quick_prints_both_registries_for_every_kill(site_benches):
    """When liveness_bench runs in quick mode (a real site: kill -9 of an
    agent, twice), it prints the table with ocs's RegistryAgent as the
    baseline, and both registries marked the agent dead in every trial."""
    _, printed, _, out = site_benches['liveness_bench'].result()
    result = json.loads(out.read_text())
    assert 'RegistryAgent (baseline)' in printed and 'lock-registry: table' in printed
    trials = result['results']['trials']
    assert len(trials) == 2
    assert all(t['ours'] >= 0 and t['ocs'] > 0 for t in trials)


@pytest.mark.integration
def test_deadlock_bench_quick_refuses_every_cycle_and_prints_its_table(site_benches):
    """When deadlock_bench runs in quick mode (real sites), every request
    that would close a cycle is refused, with the cycle in the message, and
    the table sets it beside the busy refusal (the baseline); every cycle
    through an agent's own locks is reported, its detection time beside
    the lock event's propagation."""
    _, printed, _, out = site_benches['deadlock_bench'].result()
    assert '| refusal | trials refused | median (ms) | p99 (ms) | max (ms) |' in printed
    data = json.loads(out.read_text())
    r = data['results']
    assert r['deadlock']['refused'] == r['busy']['refused'] == 5
    assert r['messages'][0].startswith('Refused: deadlock: alice holds bench/dl-')
    assert len(data['trials']) == 5
    # (b) the cycles through an agent's own locks: every one reported
    assert '| detection: the closing row -> both rows flagged deadlock |' in printed
    assert data['agent']['reported'] == len(data['agent_trials']) == 5
    assert all(t['total'] >= t['detection'] >= 0 for t in data['agent_trials'])


@pytest.mark.integration
def test_booking_bench_quick_grants_every_booking_and_prints_its_table(site_benches):
    """When booking_bench runs in quick mode (a real site), every booking
    becomes its booker's lease, never before its start (the registry's
    audit), and the table sets it beside the client-side timer (the
    baseline)."""
    _, printed, _, out = site_benches['booking_bench'].result()
    assert '| from the start T to the grant | booker sees it: median (ms) |' in printed
    assert 'client-side timer to T, then Reservation.acquire' in printed
    data = json.loads(out.read_text())
    r = data['results']
    assert r['granted'] == len(data['trials']) == 5
    assert r['booked_audit']['min_ms'] >= 0 and r['booked_end']['min_ms'] >= 0


@pytest.mark.integration
def test_failover_bench_quick_keeps_every_lease_and_prints_its_table(site_benches):
    """When failover_bench runs in quick mode (two real sites), every kill
    of the serving registry is followed by a standby answering, the kept
    lease renews with its lease id after each, and the table sets failover
    beside a plain restart (the baseline) and the round trip with and
    without a standby."""
    _, printed, _, out = site_benches['failover_bench'].result()
    assert '| measured | samples | median (ms) | p99 (ms) | max (ms) |' in printed
    assert 'restart (baseline)' in printed and 'a standby following' in printed
    data = json.loads(out.read_text())
    r = data['results']
    assert r['kept'] == r['failover']['n'] == r['restart']['n'] == 5
    assert len(data['trials']) == 5
