"""The Sphinx docs build with warnings as errors (their >>> examples run as
doctests: `make test` passes docs/ to pytest with --doctest-glob='*.rst')."""
import os
import subprocess
import sys

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
