"""The benchmarks run (quick mode) and print their comparison table.

Speed is not asserted here (that belongs in the benchmark's own table); only
what is deterministic: the run completes, reports every scenario for every
lock, and our lock's FIFO share is 100%.
"""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
