"""The Sphinx docs build with warnings as errors (their >>> examples run as
doctests: `make test` passes docs/ to pytest with --doctest-glob='*.rst')."""
import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_build_without_warnings(tmp_path):
    """When the docs are built with -W, Sphinx reports no warning."""
    proc = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-q', '-b', 'html',
         os.path.join(REPO, 'docs'), str(tmp_path / 'html')],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / 'html' / 'locks.html').exists()


def test_docs_examples_are_collected_as_doctests():
    """When pytest collects docs/ with --doctest-glob, the Locks page's
    examples are found (so they really run in `make test`)."""
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider',
         '--doctest-glob=*.rst', os.path.join(REPO, 'docs')],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'locks.rst::locks.rst' in proc.stdout


def _readme_python_blocks():
    """The README's ```python blocks, dedented, in order."""
    with open(os.path.join(REPO, 'README.md')) as f:
        text = f.read()
    blocks = re.findall(r'^( *)```python\n(.*?)^\1```', text, flags=re.S | re.M)
    return [textwrap.dedent(body) for _, body in blocks]


def _readme_block(marker):
    found = [b for b in _readme_python_blocks() if marker in b]
    assert len(found) == 1, f'expected one README python block with {marker!r}'
    return found[0]


def test_readme_step2_block_runs_and_refuses_with_the_standard_message():
    """When the README's "change one import" block runs and its task meets a
    lock held by another job, it returns the standard refusal of
    ocs_locking.ops (one format for one message); when the lock is free, the
    task runs."""
    from ocs_locking.testing import run_op, short_timeouts

    namespace = {}
    exec(compile(_readme_block('from ocs_locking.ops import refusal'), 'README.md', 'exec'),
         namespace)
    lock, set_heater = namespace['lock'], namespace['set_heater']
    assert lock.acquire(0, job='acq', session_id=0)
    try:
        with short_timeouts(lock, 0.05):        # not the block's full 3 s
            ok, msg = run_op(set_heater)
    finally:
        lock.release()
    assert ok is False
    assert re.match(r"^Could not acquire lock 'hw': held by 'acq' \(session 0\) for \d+\.\d s; "
                    r"0 waiting$", msg), msg
    assert run_op(set_heater) == (True, 'Heater set.')


def test_readme_kit_excerpt_is_literally_in_the_kit_agent_example():
    """When the README shows the kit, every line of that block is a line of
    docs/examples/kit_agent.py (which the tests run), so the excerpt cannot
    drift from a working agent."""
    block = _readme_block('class KitAgent')
    with open(os.path.join(REPO, 'docs', 'examples', 'kit_agent.py')) as f:
        agent = set(f.read().splitlines())
    missing = [line for line in block.splitlines() if line.strip() and line not in agent]
    assert not missing, f'README lines not in kit_agent.py: {missing}'
    assert len(block.splitlines()) > 30
