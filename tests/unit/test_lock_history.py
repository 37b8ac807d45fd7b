"""SpanFolder: ownership-table rows folded into spans (pure; the real table feeds it)."""
import pytest

from ocs_locking.lock_history import SPAN_KEYS, SpanFolder, check_lock_key
from ocs_locking.ownership import OwnershipTable


class Site:
    """One agent's lock driven through a real OwnershipTable into a SpanFolder."""

    def __init__(self, fold_gap=2.0):
        self.table = OwnershipTable(expiry=5, forget=60)
        self.folder = SpanFolder(fold_gap)
        self.seq = 0
        self.token = 0
        self.now = 1000.0
        self.seen = {}

    def send(self, event, job=None, session_id=None, waiters=0, lock='hw'):
        self.seq += 1
        if event == 'acquired':
            self.token += 1
        msg = {'lock': lock, 'event': event, 'job': job, 'op': job, 'session_id': session_id,
               'since': self.now if event == 'acquired' else None, 'waiters': waiters,
               'token': self.token, 'seq': self.seq, 'boot': 1.0, 'age': 0.0}
        for row in self.table.lock_message('dev', msg, self.now):
            self.folder.observe(row, self.now)

    def hold(self, job, session_id, secs, waiters_after=0):
        self.send('acquired', job, session_id)
        self.now += secs
        self.send('released', waiters=waiters_after)

    def take(self):
        """Every span changed so far, by id (the latest copy of each)."""
        for s in self.folder.take_changed(self.now):
            self.seen[s['id']] = s
        return self.seen


@pytest.fixture
def site():
    return Site()


def test_a_loops_holds_fold_into_one_span(site):
    for _ in range(50):
        site.hold('acq', 0, 0.1)
        site.now += 0.05
    spans = site.take()
    assert len(spans) == 1
    (span,) = spans.values()
    assert set(span) == set(SPAN_KEYS)
    assert (span['job'], span['holds'], span['outcome']) == ('acq', 50, 'released')
    assert span['held'] == pytest.approx(5.0)
    assert span['longest'] == pytest.approx(0.1)
    assert span['start'] == 1000.0


def test_a_borrower_gets_its_own_span_and_the_lender_counts_it(site):
    for i in range(10):
        site.hold('acq', 0, 0.1, waiters_after=1 if i in (3, 7) else 0)
        if i in (3, 7):
            site.hold('set_heater', i, 0.5)
        site.now += 0.05
    spans = site.take()
    acq = [s for s in spans.values() if s['job'] == 'acq']
    heater = [s for s in spans.values() if s['job'] == 'set_heater']
    assert len(acq) == 1 and len(heater) == 2
    assert (acq[0]['holds'], acq[0]['lent']) == (10, 2)
    assert [h['holds'] for h in heater] == [1, 1]
    assert all(h['held'] == pytest.approx(0.5) for h in heater)
    # a borrower handing the lock back (acq waiting) does not lend it
    assert [h['outcome'] for h in heater] == ['released', 'released']


def test_a_gap_longer_than_the_fold_gap_starts_a_new_span_and_settles_the_old(site):
    site.hold('acq', 0, 1.0)
    site.now += 5.0
    site.folder.tick(site.now)
    site.hold('acq', 0, 1.0)
    spans = sorted(site.take().values(), key=lambda s: s['start'])
    assert [(s['holds'], s['outcome']) for s in spans] == [(1, 'released'), (1, 'released')]
    assert spans[0]['end'] == 1001.0


def test_a_released_span_opens_again_when_its_holder_returns_within_the_gap(site):
    site.hold('acq', 0, 1.0)
    (span,) = site.take().values()
    assert (span['outcome'], span['end']) == ('released', 1001.0)
    site.now += 1.5
    site.folder.tick(site.now)
    site.send('acquired', 'acq', 0)
    (span,) = site.take().values()
    assert (span['outcome'], span['end'], span['holds']) == ('open', None, 2)


def test_a_lenders_span_stays_open_while_lent(site):
    site.hold('acq', 0, 1.0, waiters_after=1)
    site.send('acquired', 'set_heater', 5)
    spans = site.take()
    assert {s['job']: s['outcome'] for s in spans.values()} == {'acq': 'open',
                                                               'set_heater': 'open'}
    site.now += 10.0
    site.folder.tick(site.now)      # lent for longer than the gap: still open
    assert {s['job'] for s in site.folder.open_spans(site.now)} == {'acq', 'set_heater'}


def test_a_hold_in_progress_counts_in_held_and_longest(site):
    site.send('acquired', 'acq', 0)
    site.now += 30.0
    (span,) = site.take().values()
    assert (span['held'], span['longest'], span['end']) == (30.0, 30.0, None)
    (live,) = site.folder.open_spans(site.now + 10)
    assert live['held'] == 40.0


def test_gave_up_is_counted_on_the_span_holding_the_lock(site):
    site.send('acquired', 'acq', 0)
    site.send('waiting', waiters=1)
    site.now += 1
    site.send('gave_up', waiters=0)
    (span,) = site.take().values()
    assert span['gave_up'] == 1


def test_a_silent_agent_ends_its_span_stale(site):
    site.send('acquired', 'acq', 0)
    site.now += 10.0
    for row in site.table.expire(site.now):
        site.folder.observe(row, site.now)
    (span,) = site.take().values()
    assert (span['outcome'], span['end'], span['held']) == ('stale', 1010.0, 10.0)


def test_a_closed_lock_ends_its_span_closed(site):
    site.hold('acq', 0, 1.0)
    site.send('closed')
    (span,) = site.take().values()
    assert span['outcome'] == 'closed'


def test_a_removed_row_ends_a_held_span_gone(site):
    site.send('acquired', 'acq', 0)
    site.now += 2
    site.folder.removed('dev/hw', site.now)
    (span,) = site.take().values()
    assert (span['outcome'], span['held']) == ('gone', 2.0)
    assert site.folder.open_spans(site.now) == []


def test_ids_come_from_new_id():
    ids = iter(['7-1', '7-2'])
    folder = SpanFolder(new_id=lambda: next(ids))
    row = {'lock': 'a/b', 'agent': 'a', 'name': 'b', 'job': 'x', 'op': 'x',
           'session_id': 1, 'since': 5.0, 'token': 1, 'acquired': 1, 'timed_out': 0,
           'waiters': 0, 'alive': True, 'closed': False, 'held_for': 0.0}
    folder.observe(row, 10.0)
    assert [s['id'] for s in folder.take_changed(10.0)] == ['7-1']


@pytest.mark.parametrize('bad', ['', 'a//b', '/x', 'a/b/c', 7, None, 'a b'])
def test_check_lock_key_refuses_what_is_not_a_lock(bad):
    with pytest.raises(ValueError, match='^lock must be <instance-id>/<lock> or an instance-id'):
        check_lock_key(bad)


def test_fold_gap_is_checked():
    with pytest.raises(ValueError, match=r'^fold_gap must be seconds in \[0, 3600\]'):
        SpanFolder(fold_gap=-1)
