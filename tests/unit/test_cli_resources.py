"""``ocs-locks resources`` without a router: the table, --json and --file
(the registry path runs in tests/integration/test_resources.py)."""
import json
import os
from types import SimpleNamespace
from unittest import mock

import pytest

from ocs_locking import cli
from ocs_locking.cli import resources as cli_resources
from ocs_locking.cli.formatters import format_resources
from ocs_locking.errors import CliError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_FILE = os.path.join(REPO, 'site-config', 'lock-registry-resources.yaml')
DEMO_SITE = os.path.join(REPO, 'site-config', 'default.yaml')

TREE = {'adhoc': False, 'source': '/site/res.yaml', 'resources': [
    {'path': 'satp1/hwp', 'instances': ['hwp-1'], 'classes': ['HWPAgent'],
     'lockout_levels': [1, 2, 3], 'holder_level': 3, 'default_lease': 60.0,
     'max_lease': 600.0, 'description': 'half-wave plate'},
    {'path': 'satp1/mount', 'instances': [], 'classes': [], 'lockout_levels': [1, 2],
     'holder_level': 3, 'default_lease': None, 'max_lease': None, 'description': ''}]}


def test_format_resources_prints_one_line_per_resource_and_the_adhoc_rule():
    """When the tree is formatted, each resource is a row (agents with
    classes marked, levels, holder level, default and max lease with the
    registry's 30 s / 3600 s where none is declared), then the ad-hoc rule
    and the source."""
    assert format_resources(TREE).splitlines() == [
        'RESOURCE     AGENTS                 LOCKOUT  HOLDER  LEASE  MAX LEASE  DESCRIPTION',
        'satp1/hwp    hwp-1, class HWPAgent  1,2,3    3       60 s   600 s      '
        'half-wave plate',
        'satp1/mount  -                      1,2      3       30 s   3600 s',
        'Only these paths may be leased (adhoc: false).',
        'Declared in /site/res.yaml.']


def test_format_resources_of_nothing_declared_says_every_path_is_allowed():
    """When nothing is declared and ad-hoc paths are allowed (no
    --resources), one line says every path may be leased."""
    assert format_resources({'adhoc': True, 'source': '', 'resources': []}) == (
        'No resources declared: every well-formed path may be leased (the registry was '
        'given no --resources).')


def test_format_resources_survives_a_malformed_block():
    """When the block is malformed (an older or broken registry), it still
    formats, without raising."""
    assert format_resources({'resources': [None, {'path': 'a', 'lockout_levels': 'x'}]}) \
        .splitlines()[1].split()[:3] == ['a', '-', '?']
    assert format_resources(None) == '(no resources declared)'


def test_ocs_locks_resources_file_prints_the_demo_table(capsys):
    """When --file names the demo's resources file (and --site-file the demo
    site), the table lists demo/hwp covering fake-hwp; exit 0."""
    assert cli.main(['--site-file', DEMO_SITE, 'resources', '--file', DEMO_FILE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ['demo/hwp', 'fake-hwp', '1,2,3', '3']


def test_ocs_locks_resources_file_json_is_the_tree(capsys):
    """When --json is given with --file, stdout is the tree as JSON."""
    assert cli.main(['resources', '--file', DEMO_FILE, '--json']) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree['adhoc'] is True and tree['resources'][0]['path'] == 'demo/hwp'


def test_ocs_locks_resources_bad_file_is_one_line(tmp_path, capsys):
    """When the --file is malformed, or names an instance the --site-file
    lacks, one line says why and the exit status is 1."""
    bad = tmp_path / 'r.yaml'
    bad.write_text('resources: {demo/hwp: {instances: [fake-hwpp]}}\n')
    assert cli.main(['resources', '--file', str(bad), '--site-file', DEMO_SITE]) == 1
    assert capsys.readouterr().err == (
        f"ocs-locks: {bad}: resources[demo/hwp].instances: no agent instance 'fake-hwpp' in "
        f"the site config {DEMO_SITE}; did you mean 'fake-hwp'?\n")
    bad.write_text('resources: {demo/hwp: {adhoc: 1}}\n')
    assert cli.main(['resources', '--file', str(bad)]) == 1
    assert capsys.readouterr().err.startswith(
        f"ocs-locks: {bad}: resources[demo/hwp]: unknown key 'adhoc'")


def test_fetch_resources_of_a_registry_without_the_block_is_one_line():
    """When the registry's status carries no resources block (an older
    registry), fetch_resources raises one CliError saying so."""
    args = SimpleNamespace(registry='lock-registry')
    with mock.patch('ocs_locking.cli.leases._run_task', return_value=('ok', {'total': 0})):
        with pytest.raises(CliError) as info:
            cli_resources.fetch_resources(args)
    assert str(info.value) == ("the registry 'lock-registry' reports no resources (it serves "
                               "no site-wide leases, or predates --resources)")


def test_fetch_resources_reads_one_status_row():
    """When the registry is asked, it is one status call of one row and the
    resources block is returned as it is."""
    with mock.patch('ocs_locking.cli.leases._run_task',
                    return_value=('ok', {'resources': TREE})) as call:
        assert cli_resources.fetch_resources(SimpleNamespace(registry='r')) == TREE
    assert call.call_args[0][1:] == ('status', {'limit': 1})
