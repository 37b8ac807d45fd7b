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
