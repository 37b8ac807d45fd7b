"""Paging of the lease tables: the pure page cut, the registry's ``leases``
task and ``status`` lease block under the message budget however many
grants and waiting requests there are, and ``ocs-locks leases`` reading
every page."""
import json
from types import SimpleNamespace
from unittest import mock

import pytest
from ocs import OK

from ocs_locking import cli
from ocs_locking.agents.lock_registry.agent import STATUS_LEASE_ROWS, LockRegistryAgent
from ocs_locking.agents.lock_registry.lease_pages import LEASE_PAGE_ROWS, lease_page
from ocs_locking.agents.lock_registry.leases import LeaseOps
from ocs_locking.cli import leases as cli_leases
from ocs_locking.testing import FakeSession, _params
from ocs_locking.wire import MESSAGE_BUDGET, json_size

from .test_lease_ops import Reactor, hold
from .test_registry_agent import FakeAgent, NowReactor

N = 5000


def snapshot(grants, waiting, counters):
    return {'grants': [{'resource': f'r/{i:05d}', 'note': 'n' * 50} for i in range(grants)],
            'waiting': [{'request_id': i, 'resources': [f'r/{i:05d}']} for i in range(waiting)],
            'counters': {f'r/{i:05d}': i + 1 for i in range(counters)}}


def test_lease_page_cuts_grants_waiting_and_counters_into_one_sequence():
    """When pages are read one after another, every grant, waiting request
    and counter comes once, in order, each page within its limit and budget,
    with the totals."""
    snap = snapshot(25, 10, 30)
    seen, offset = {'grants': [], 'waiting': [], 'counters': {}}, 0
    while True:
        page = lease_page(snap, offset, limit=7, budget=9000)
        assert (page['total'], page['grants_total'], page['waiting_total'],
                page['counters_total']) == (65, 25, 10, 30)
        n = len(page['grants']) + len(page['waiting']) + len(page['counters'])
        assert n <= 7 and json_size(page) < 9000
        if not n:
            break
        seen['grants'] += page['grants']
        seen['waiting'] += page['waiting']
        seen['counters'].update(page['counters'])
        offset += n
    assert offset == 65 and seen == snap


def test_lease_page_past_the_end_is_empty_with_the_totals():
    """When the offset is past the end, the page is empty and says the totals."""
    page = lease_page(snapshot(2, 1, 2), 10)
    assert (page['grants'], page['waiting'], page['counters']) == ([], [], {})
    assert (page['offset'], page['total']) == (10, 5)


@pytest.fixture(scope='module')
def busy(tmp_path_factory):
    """A registry's LeaseOps with N grants and some waiting requests."""
    path = tmp_path_factory.mktemp('pages') / 'leases.db'
    ops = LeaseOps(mock.MagicMock(name='agent'), str(path), reactor=Reactor())
    names = [f'satp{i % 7}/dev-{i:05d}' for i in range(N)]
    for k in range(0, N, 16):           # 16 resources a request (the most)
        hold(ops, names[k:k + 16], f'owner-{k % 50}', lease=3600,
             note='a note of some length ' * 3)
    for i in range(20):
        ops._rpc_acquire(names[i], f'waiter-{i}', lease=60, timeout=600)
    assert len(ops.state.snapshot()['waiting']) == 20
    yield ops
    ops.close()


def run_leases(ops, **params):
    session = FakeSession('leases')
    ok, msg = ops.leases(session, _params(ops.leases, params))
    assert ok is True
    return msg, session.data


def test_LeaseOps_leases_pages_5000_grants_every_reply_under_the_budget(busy):
    """When the registry holds 5,000 grants and 20 waiting requests, every
    page of the leases task is under the message budget and the pages hold
    every grant, waiting request and counter once."""
    grants, waiting, counters, offset = [], [], {}, 0
    for _ in range(100):
        msg, data = run_leases(busy, offset=offset)
        assert json_size(data) < MESSAGE_BUDGET
        assert (data['grants_total'], data['waiting_total']) == (N, 20)
        n = len(data['grants']) + len(data['waiting']) + len(data['counters'])
        if not n:
            break
        assert n <= LEASE_PAGE_ROWS
        grants += data['grants']
        waiting += data['waiting']
        counters.update(data['counters'])
        offset += n
    assert offset == data['total'] == N + 20 + N
    assert msg.startswith(f'{N} lease(s), 20 waiting. No rows from {offset}')
    assert len({g['resource'] for g in grants}) == N and len(waiting) == 20
    assert counters == busy.state.snapshot()['counters']


def test_LeaseOps_leases_limit_is_checked_by_ocs(busy):
    """When a limit out of bounds is given, ocs refuses the params."""
    with pytest.raises(Exception, match='limit'):
        _params(busy.leases, {'limit': 0})


def test_registry_status_lease_block_is_bounded_with_totals(busy):
    """When the registry holds 5,000 grants, the status task's leases block
    holds the first STATUS_LEASE_ROWS rows and the totals, and the whole
    reply stays under the budget."""
    reg = LockRegistryAgent(FakeAgent(), reactor=NowReactor())
    reg.leases = busy
    session = SimpleNamespace(data=None)
    reg.status(session, {})
    block = session.data['leases']
    assert json_size(session.data) < MESSAGE_BUDGET
    assert len(block['grants']) == STATUS_LEASE_ROWS
    assert (block['grants_total'], block['waiting_total'], block['counters_total']) == \
        (N, 20, N)
    assert block['storage']['ok'] is True


class LeasesTask:
    """The registry's leases task behind a fake OCS client."""

    def __init__(self, ops):
        self.ops, self.calls, self.sizes = ops, [], []

    def start(self, **params):
        self.calls.append(params)
        self.msg, self.data = run_leases(self.ops, **params)
        self.sizes.append(json_size(self.data))
        return SimpleNamespace(status=OK, msg='started', session={'session_id': 1})

    def wait(self, timeout=None):
        return SimpleNamespace(status=OK, msg='', session={
            'session_id': 1, 'status': 'done', 'success': True, 'data': self.data,
            'messages': [[0.0, self.msg]]})


def test_ocs_locks_leases_reads_every_page_of_5000_grants(busy, monkeypatch, capsys):
    """When the registry holds 5,000 grants, ``ocs-locks leases --json``
    reads every page (each under the budget) and prints every grant,
    waiting request and counter."""
    task = LeasesTask(busy)
    monkeypatch.setattr(cli_leases, 'registry_client',
                        lambda args, privs=None: SimpleNamespace(leases=task))
    assert cli.main(['leases', '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    snap = busy.state.snapshot()
    assert len(task.calls) > 2 and task.calls[0] == {}
    assert all(size < MESSAGE_BUDGET for size in task.sizes)
    assert sorted(g['resource'] for g in out['grants']) == \
        sorted(g['resource'] for g in snap['grants'])
    assert len(out['waiting']) == 20 and out['counters'] == snap['counters']


def test_ocs_locks_leases_prints_one_line_per_grant_and_waiter(monkeypatch, capsys):
    """When the registry answers without pages (an older one: no total),
    one reply is read and each grant and waiting request is one line."""
    data = {'grants': [{'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
                        'expires': 0.0, 'tree': False, 'note': 'cal'}],
            'waiting': [{'owner': 'bob', 'resources': ['satp1/hwp'], 'position': 1,
                         'deadline': 0.0}], 'counters': {'satp1/hwp': 7}}
    task = SimpleNamespace(calls=[])
    calls = []

    def run_task(args, name, params, **kw):
        calls.append((name, params))
        return '1 lease(s), 1 waiting.', data
    monkeypatch.setattr(cli_leases, '_run_task', run_task)
    assert cli.main(['leases']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert calls == [('leases', {})] and not task.calls
    assert lines[1].split()[:3] == ['satp1/hwp', 'alice', '7'] and lines[1].endswith('cal')
    assert lines[2].startswith('waiting: bob for satp1/hwp (position 1')
