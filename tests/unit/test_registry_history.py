"""LockHistory (spans in SQLite) and the registry's history task, without a router."""
import sqlite3
from types import SimpleNamespace
from unittest import mock

import pytest

from ocs_locking.agents.lock_registry.agent import LockRegistryAgent
from ocs_locking.agents.lock_registry.history import (LockHistory, check_arguments,
                                                     read_history, usual_from)
from ocs_locking.lock_history import SPAN_KEYS
from tests.unit.test_registry_agent import FakeAgent, NowReactor, info, topic


def row(lock='dev/hw', job='acq', session_id=0, acquired=1, since=1.0, **kw):
    free = job is None
    out = {'lock': lock, 'agent': lock.split('/')[0], 'name': lock.split('/')[1],
           'job': job, 'op': job, 'session_id': None if free else session_id,
           'since': None if free else since, 'token': acquired, 'acquired': acquired,
           'timed_out': 0, 'waiters': 0, 'alive': True, 'closed': False, 'held_for': 0.0}
    out.update(kw)
    return out


def hold(h, t, secs, job='acq', lock='dev/hw', n=[0]):
    n[0] += 1
    h.observe([row(lock, job, acquired=n[0])], (), t)
    h.observe([row(lock, None, acquired=n[0])], (), t + secs)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / 'lock-history.db')


def test_spans_are_written_at_flush_and_read_back_newest_first(path):
    h = LockHistory(path)
    hold(h, 100.0, 1.0)
    hold(h, 200.0, 2.0, job='set_heater')
    assert h.query(now=None) == []          # nothing written before a flush
    h.flush(205.0)          # 3 s after the last hold: beyond the fold gap
    spans = h.query()
    assert [s['job'] for s in spans] == ['set_heater', 'acq']
    assert all(set(s) == set(SPAN_KEYS) for s in spans)
    assert [s['outcome'] for s in spans] == ['released', 'released']
    assert h.query(job='acq')[0]['held'] == 1.0
    assert h.query(lock='dev')[0]['lock'] == 'dev/hw'
    assert h.query(since=201.5) == [spans[0]]
    h.close()


def test_at_gives_the_spans_open_then(path):
    """When asked what was held at a time, only the spans open then come:
    started before it and not ended before it (or still open)."""
    h = LockHistory(path)
    hold(h, 100.0, 10.0)                    # 100..110
    hold(h, 200.0, 10.0, job='set_heater')  # 200..210
    h.observe([row(job='late', acquired=99)], (), 300.0)     # 300.. open
    h.flush(305.0)
    assert [s['job'] for s in h.query(at=105.0)] == ['acq']
    assert [s['job'] for s in h.query(at=150.0)] == []
    assert [s['job'] for s in h.query(at=400.0, now=400.0)] == ['late']
    h.close()


def test_a_query_sees_an_open_span_with_its_hold_in_progress(path):
    h = LockHistory(path)
    h.observe([row()], (), 100.0)
    (span,) = h.query(now=130.0)
    assert (span['outcome'], span['end'], span['held']) == ('open', None, 30.0)
    h.close()


def test_a_restart_marks_open_spans_unknown_and_ids_go_on(path):
    h = LockHistory(path)
    h.observe([row()], (), 100.0)
    h.flush(101.0)
    first = h.query()[0]['id']
    h._db.close()           # as a kill -9 leaves it: no close(), the span open
    h2 = LockHistory(path)
    assert h2.unknown == 1
    assert h2.query()[0]['outcome'] == 'unknown'
    hold(h2, 200.0, 1.0)
    h2.flush(202.0)
    ids = [s['id'] for s in h2.query()]
    assert first in ids and len(set(ids)) == 2
    assert first.split('-')[0] == '1' and ids[0].split('-')[0] == '2'
    h2.close()
    h2.close()              # idempotent


def test_retention_deletes_old_spans_and_keeps_at_most_rows(path):
    h = LockHistory(path, days=1, rows=100)
    for i in range(150):
        hold(h, 1000.0 + 10 * i, 1.0, lock=f'dev/l{i}')
    h.flush(5000.0)
    assert len(h.query(limit=1000)) == 100
    assert h.prune(1000.0 + 86400 + 10 * 120) > 0
    assert len(h.query(limit=1000)) == 30      # those ending after the cutoff
    h.close()


def test_usual_is_the_median_and_p90_of_past_mean_holds(path):
    h = LockHistory(path, fold_gap=0)
    for i in range(10):
        hold(h, 100.0 * (i + 1), float(i + 1))
    h.flush(5000.0)
    assert h.usual('dev/hw', 'acq') == {'n': 10, 'median': 5.0, 'p90': 9.0,
                                        'span_median': 5.0, 'span_p90': 9.0}
    assert h.usual('dev/hw', 'nobody') is None
    assert usual_from([]) is None
    h.close()


def test_a_write_error_is_logged_once_kept_and_retried(path):
    log = mock.MagicMock()
    h = LockHistory(path, log=log)
    real = h._db
    h._db = mock.MagicMock(wraps=real)
    h._db.executemany.side_effect = sqlite3.OperationalError('disk I/O error')
    hold(h, 100.0, 1.0)
    h.flush(102.0)
    h.flush(103.0)
    assert h.status()['ok'] is False and 'disk I/O error' in h.status()['error']
    assert h.status()['pending'] == 1
    assert log.warn.call_count == 1
    h._db = real
    h.flush(104.0)
    assert h.status()['ok'] is True and len(h.query()) == 1
    h.close()


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path):
    bad = tmp_path / 'junk.db'
    bad.write_bytes(b'not a database at all' * 100)
    with pytest.raises(ValueError, match=r'^--history-db .*junk\.db: cannot use it as a lock '
                                         r'history \(file is not a database\)$'):
        LockHistory(str(bad))


@pytest.mark.parametrize('name, value, complaint', [
    ('history_days', 0, '--history-days must be a number of days in (0, 3650], not 0'),
    ('history_rows', 5, '--history-rows must be an integer in [100, 1000000000], not 5'),
    ('history_fold', -1.0, '--history-fold must be seconds in [0, 3600], not -1.0'),
])
def test_check_arguments_names_the_bad_option(name, value, complaint):
    args = SimpleNamespace(history_days=30.0, history_rows=1000, history_fold=2.0)
    assert check_arguments(args) is None
    setattr(args, name, value)
    assert check_arguments(args) == complaint


@pytest.mark.parametrize('params, error', [
    ({'kind': 'span'}, "^kind must be one of lease, lock, all, not 'span'$"),
    ({'kind': 'lock', 'resource': 'a//b'}, '^lock must be <instance-id>/<lock> or '),
    ({'kind': 'lock', 'action': 'grant'}, '^action filters the lease audit only'),
    ({'kind': 'lock', 'since': -1}, r'^since must be an age in seconds >= 0, not -1$'),
    ({'kind': 'lock', 'limit': 0}, r'^limit must be an integer in \[1, 1000\], not 0$'),
    ({'kind': 'lock', 'owner': ''}, '^owner must be 1..128 characters'),
    ({'kind': 'all', 'colour': 'red'}, '^history takes no colour$'),
    ({'kind': 'lock', 'at': -5}, r'^at must be an age in seconds >= 0, not -5$'),
])
def test_read_history_refuses_bad_input_in_one_line(path, params, error):
    h = LockHistory(path)
    with pytest.raises(ValueError, match=error):
        read_history(params, None, h, 10.0)
    h.close()


def lock_msg(seq, job, event, token, since=1000.0):
    return {'lock': 'hw', 'event': event, 'job': job, 'op': job, 'session_id': 2,
            'since': since if job else None, 'waiters': 0, 'token': token, 'seq': seq,
            'boot': 1.0}


def test_the_registry_task_answers_spans_of_its_table(path):
    reg = LockRegistryAgent(FakeAgent(), reactor=NowReactor())
    reg.lock_history = LockHistory(path)
    reg._on_locks([lock_msg(1, 'acq', 'acquired', 1), info('dev-1')], details=topic('dev-1'))
    reg._on_locks([lock_msg(2, None, 'released', 1), info('dev-1')], details=topic('dev-1'))
    session = SimpleNamespace(data=None)
    ok, msg = reg.history(session, {'kind': 'lock', 'resource': 'dev-1/hw'})
    assert ok, msg
    assert msg == '0 audit record(s), 1 lock span(s).'
    (span,) = session.data['history']
    assert (span['kind'], span['lock'], span['job'], span['holds']) == \
        ('lock', 'dev-1/hw', 'acq', 1)
    assert span['at'] == span['start']
    ok, msg = reg.history(session, {'kind': 'lock', 'resource': '/x'})
    assert not ok and msg.startswith('Refused: lock must be')
    assert session.data == {'error': msg[len('Refused: '):]}
    reg.lock_history.close()
