"""ocs_locking.cli.why: the target check and printing the registry's answer."""
import argparse
import json

import pytest

from ocs_locking.cli import why
from ocs_locking.errors import CliError


@pytest.mark.parametrize('value', ['', '   ', 'a b', 'x' * 401, None])
def test_a_bad_target_is_refused_in_one_line(value):
    with pytest.raises(CliError) as e:
        why.check_target(value)
    assert str(e.value).startswith('why: the target must be a lock') and '\n' not in str(e.value)


def fake(monkeypatch, result=None, error=None):
    seen = []

    def run_task(args, name, params, refusal=None):
        seen.append((name, params))
        if error is not None:
            raise CliError(f"why: {refusal(error) if refusal else error}")
        return 'ok', result
    monkeypatch.setattr('ocs_locking.cli.leases._run_task', run_task)
    return seen


def test_the_answer_lines_are_printed(monkeypatch, capsys):
    seen = fake(monkeypatch, {'why': {'lines': ['a is free', 'nobody waits']}})
    assert why.cmd_why(argparse.Namespace(target=' dev/hw ', json=False, registry='r')) == 0
    assert seen == [('why', {'target': 'dev/hw'})]
    assert capsys.readouterr().out == 'a is free\nnobody waits\n'


def test_json_prints_the_whole_answer(monkeypatch, capsys):
    answer = {'lines': ['x'], 'kind': 'lock', 'queue': []}
    fake(monkeypatch, {'why': answer})
    why.cmd_why(argparse.Namespace(target='dev/hw', json=True, registry='r'))
    assert json.loads(capsys.readouterr().out) == answer


def test_the_registrys_refusal_is_one_line_without_a_doubled_prefix(monkeypatch):
    fake(monkeypatch, error="why: no lock 'dev/x'")
    with pytest.raises(CliError, match=r"^why: no lock 'dev/x'$"):
        why.cmd_why(argparse.Namespace(target='dev/x', json=False, registry='r'))


def test_an_answer_without_lines_is_an_error(monkeypatch):
    fake(monkeypatch, {})
    with pytest.raises(CliError, match='^why: the registry gave no answer$'):
        why.cmd_why(argparse.Namespace(target='dev/x', json=False, registry='r'))
