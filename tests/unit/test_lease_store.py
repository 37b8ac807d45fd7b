"""LeaseStore (SQLite): persistence across restarts, WAL, schema checks,
history, atomic writes; and LeaseState on top of it after a restart."""
import contextlib
import json
import os
import sqlite3
import threading

import pytest

from ocs_locking.leases.audit import check_audit
from ocs_locking.leases.state import LeaseError, LeaseState
from .lease_keys import UNISSUED, KeyedState
from ocs_locking.leases.store import (PAGE_SIZE, SCHEMA_VERSION, LeaseStore, LeaseStoreError,
                                      epoch_file)


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / 'leases.db')


def sql(path, statement, *args):
    """Run one statement on the file with a connection of its own."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        return db.execute(statement, args).fetchall()


#: path -> the lease ids its grants were given (what their holders keep)
_LEASE_IDS = {}


def reopen(path):
    """A registry restart: a new store and a new state on the same file
    (the holders keep their lease ids across it)."""
    store = LeaseStore(path)
    return store, KeyedState(store=store, lease_ids=_LEASE_IDS.setdefault(path, {}))


def test_LeaseStore_restart_loses_no_grant_counter_or_history(path):
    """When the registry restarts on the same file, the grants are there
    with their tokens and expiries, history is whole, and new tokens and
    request ids keep growing."""
    store, state = reopen(path)
    multi = state.acquire(['a', 'b'], 'alice', 100, 0, note='cooldown', client='sched')
    state.release('c', state.acquire('c', 'bob', 100, 1).grants[0].token, 2)
    state.acquire('c', 'carol', 100, 3, tree=True)
    before = (state.snapshot(), store.history(limit=None))
    store.close()

    store, state = reopen(path)
    assert (state.snapshot(), store.history(limit=None)) == before
    assert state.poll(multi.request_id).grants == multi.grants
    state.release('c', 2, 4)
    out = state.acquire('c', 'dave', 10, 5)
    assert out.grants[0].token == 3 and out.request_id == 4
    assert check_audit(list(reversed(store.history(limit=None)))) == []
    store.close()


def test_LeaseStore_lease_that_ran_out_during_a_restart_expires_on_the_next_call(path):
    """When a lease ends while the registry is down, the first call after
    the restart expires it (and records that), and the next token is larger."""
    store, state = reopen(path)
    state.acquire('a', 'alice', 10, 0)
    store.close()
    store, state = reopen(path)
    out = state.acquire('a', 'bob', 10, 50)
    assert (out.status, out.grants[0].token) == ('granted', 2)
    assert [(r['action'], r['at'], r['detail'].get('expires')) for r in store.history(limit=2)] \
        == [('grant', 50.0, 60.0), ('expire', 50.0, 10.0)]
    store.close()


def test_LeaseStore_uses_wal_with_normal_sync(path):
    """When a store file is created it is in WAL mode with synchronous=NORMAL
    and records its schema version; used as a context manager it closes."""
    with LeaseStore(path) as store:
        assert repr(store) == f'LeaseStore({path!r})'
        assert store._db.execute('PRAGMA synchronous').fetchone()[0] == 1    # NORMAL
    assert sql(path, 'PRAGMA journal_mode') == [('wal',)]
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION,)]
    with pytest.raises(sqlite3.ProgrammingError):
        store.history()


def test_LeaseStore_path_in_a_missing_directory_is_refused(tmp_path):
    """When the directory does not exist, LeaseStoreError names it; nothing
    is created."""
    missing = tmp_path / 'nope'
    with pytest.raises(LeaseStoreError, match=r"^cannot open lease store '.*/nope/x\.db': "
                                              r"directory '.*/nope' does not exist$"):
        LeaseStore(missing / 'x.db')
    assert not missing.exists()


def test_LeaseStore_path_that_is_a_directory_is_refused(tmp_path):
    """When the path is a directory, LeaseStoreError says so."""
    with pytest.raises(LeaseStoreError, match=r"^cannot open lease store '.*': "
                                              r"it is a directory$"):
        LeaseStore(tmp_path)


def test_LeaseStore_file_that_is_not_a_database_is_refused(path):
    """When the file is not SQLite, LeaseStoreError says so."""
    with open(path, 'w') as f:
        f.write('not a database, just text\n' * 100)
    with pytest.raises(LeaseStoreError, match=r"^cannot open lease store '.*leases\.db': "
                                              r"file is not a database$"):
        LeaseStore(path)


def test_LeaseStore_newer_schema_is_refused(path):
    """When the file was written with a newer schema version, opening it
    raises LeaseStoreError naming both versions, and the file is untouched."""
    LeaseStore(path).close()
    sql(path, 'UPDATE schema_version SET version = ?', SCHEMA_VERSION + 1)
    with pytest.raises(LeaseStoreError, match=rf"^lease store '.*' has schema version "
                                              rf"{SCHEMA_VERSION + 1}; this ocs-locking reads "
                                              rf"version {SCHEMA_VERSION} "):
        LeaseStore(path)
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION + 1,)]


def test_LeaseStore_other_database_is_refused(path):
    """When the file is a SQLite database of something else, opening it
    raises LeaseStoreError and adds no tables."""
    sql(path, 'CREATE TABLE readings (t REAL, v REAL)')
    with pytest.raises(LeaseStoreError, match=r"^'.*' is not a lease store: it has tables "
                                              r"readings but no schema_version$"):
        LeaseStore(path)
    assert sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'") == [('readings',)]


def test_LeaseStore_history_is_newest_first_and_filters_by_path():
    """When history is asked for a resource it returns the rows about it and
    the paths below it (not 'satp10'), newest first, at most ``limit``."""
    store = LeaseStore(':memory:')
    state = KeyedState(store=store)
    for i, path in enumerate(('satp1', 'satp1/hwp', 'satp10', 'satp1/hwp/motor', 'd')):
        state.acquire(path, f'o{i}', 10, i)
    assert [r['resource'] for r in store.history('satp1')] == \
        ['satp1/hwp/motor', 'satp1/hwp', 'satp1']
    assert [r['resource'] for r in store.history('satp1/hwp', limit=1)] == ['satp1/hwp/motor']
    assert len(store.history()) == 5 and store.history('zz') == []
    row = store.history('d')[0]
    assert {k: row[k] for k in ('action', 'resource', 'owner', 'token', 'at', 'ok')} == \
        {'action': 'grant', 'resource': 'd', 'owner': 'o4', 'token': 1, 'at': 4.0, 'ok': True}
    for bad in (0, -1, 1.5, True, 'all'):
        with pytest.raises(ValueError, match=r'^limit must be a positive integer or None'):
            store.history(limit=bad)
    with pytest.raises(ValueError, match=r'^resource must be a string or None, not 5$'):
        store.history(5)


def test_LeaseStore_operation_is_one_transaction():
    """When any part of an operation's write fails, none of it is stored, and
    the store refuses writes naming the failure until a rewrite succeeds."""
    store = LeaseStore(':memory:')
    store.apply(counters={'a': 1}, audit=[{'at': 0, 'action': 'grant', 'resource': 'a'}])
    with pytest.raises(LeaseStoreError, match=r"^write to lease database ':memory:' failed: "
                                              r"NOT NULL constraint failed: audit\.at$"):
        store.apply(counters={'a': 2, 'b': 1}, last_request_id=9,
                    audit=[{'at': 1, 'action': 'grant'}, {'at': None, 'action': 'broken'}])
    assert store.load() == {'grants': [], 'counters': {'a': 1}, 'last_request_id': 0,
                            'bookings': [], 'last_booking_id': 0}
    assert len(store.history()) == 1
    assert store.error.startswith('write to lease database')
    with pytest.raises(LeaseStoreError):
        store.apply(counters={'a': 2})
    store.rewrite([], {'a': 1})
    assert store.error is None
    store.apply(counters={'a': 2})
    assert store.load()['counters'] == {'a': 2}


def test_LeaseStore_counters_never_decrease():
    """When a lower counter is written, the stored counter keeps the higher."""
    store = LeaseStore(':memory:')
    store.apply(counters={'a': 5})
    store.apply(counters={'a': 3})
    assert store.load()['counters'] == {'a': 5}


def test_LeaseStore_record_keeps_refusals_that_change_nothing():
    """When the agent records a refused privileged request (ok=False) it is
    in history, and check_audit ignores it."""
    store = LeaseStore(':memory:')
    store.record(5.0, 'force_release', 'a', owner='mallory', client='cli',
                 detail={'refused': 'needs privilege level 3'}, ok=False)
    [row] = store.history()
    assert (row['ok'], row['owner'], row['detail']) == \
        (False, 'mallory', {'refused': 'needs privilege level 3'})
    assert check_audit([row]) == []


def test_LeaseStore_can_be_used_from_several_threads():
    """When threads write at once, every row arrives (one connection, locked)."""
    store = LeaseStore(':memory:')

    def write(n):
        for i in range(50):
            store.record(float(i), 'queue', f'r{n}', owner=f't{n}')
    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.history(limit=None)) == 200


def test_LeaseStore_history_filters_by_prefix_owner_action_and_time():
    """When history is asked for a resource prefix, an owner, actions and a
    time, only the rows matching all of them come back, newest first."""
    store = LeaseStore(':memory:')
    for i, (at, action, resource, owner) in enumerate([
            (1.0, 'grant', 'satp1', 'a'), (2.0, 'grant', 'satp1/hwp', 'b'),
            (3.0, 'release', 'satp1/hwp', 'b'), (4.0, 'grant', 'satp10', 'b'),
            (5.0, 'expire', 'satp1/hwp/motor', 'c')]):
        store.record(at, action, resource, owner=owner, token=i + 1)
    def pick(**kw):
        return [(r['at'], r['resource']) for r in store.history(limit=None, **kw)]
    assert pick(resource='satp1') == [(5.0, 'satp1/hwp/motor'), (3.0, 'satp1/hwp'),
                                      (2.0, 'satp1/hwp'), (1.0, 'satp1')]
    assert pick(owner='b') == [(4.0, 'satp10'), (3.0, 'satp1/hwp'), (2.0, 'satp1/hwp')]
    assert pick(actions=['release', 'expire']) == [(5.0, 'satp1/hwp/motor'),
                                                   (3.0, 'satp1/hwp')]
    assert pick(since=3.0) == [(5.0, 'satp1/hwp/motor'), (4.0, 'satp10'), (3.0, 'satp1/hwp')]
    assert pick(resource='satp1', owner='b', actions=['grant'], since=1.5) == \
        [(2.0, 'satp1/hwp')]
    assert pick(actions=[]) == []
    for bad in ({'owner': 3}, {'actions': 'grant'}, {'actions': [1]}, {'since': 'now'}):
        with pytest.raises(ValueError, match=f'^{next(iter(bad))} must be '):
            store.history(**bad)


def test_LeaseStore_prune_keeps_grants_counters_and_the_newest_rows(path):
    """When the audit log passes its age or row bound, prune deletes the
    oldest rows only; grants and token counters stay."""
    store, state = reopen(path)
    for t in range(50):
        g = state.acquire(f'r{t}', 'x', 3600, float(t)).grants[0]
    assert store.prune(before=10.0) == 10
    assert min(r['at'] for r in store.history(limit=None)) == 10.0
    assert store.prune(keep_rows=15) == 25
    assert [r['resource'] for r in store.history(limit=None)][-1] == 'r35'
    assert store.prune(before=0.0, keep_rows=100) == 0
    store.close()
    store, state = reopen(path)
    assert len(state.holders()) == 50 and state.acquire('r0', 'y', 5, 60).status == 'busy'
    assert state.snapshot()['counters']['r49'] == g.token
    store.close()


def test_LeaseStore_checkpoint_runs_beside_commits_and_keeps_everything(path):
    """When the write-ahead log is checkpointed from another thread while the
    state commits grants, both go on, the WAL is copied into the file, and a
    restart sees every grant (commits do not checkpoint by themselves)."""
    store, state = reopen(path)
    assert sql(path, 'PRAGMA wal_autocheckpoint')[0][0] == 1000     # a connection's own
    assert store._db.execute('PRAGMA wal_autocheckpoint').fetchone()[0] == 20000
    results, stop = [], threading.Event()

    def checkpoints():
        while not stop.is_set() and len(results) < 1000:
            results.append(store.checkpoint())
    t = threading.Thread(target=checkpoints)
    t.start()
    for i in range(200):
        state.acquire(f'c/r{i}', 'x', 600, float(i))
    stop.set()
    t.join(10)
    assert results and all(len(r) == 3 for r in results)
    busy, frames, done = store.checkpoint()
    assert busy == 0 and frames == done
    store.close()
    store, state = reopen(path)
    assert len(state.holders()) == 200
    store.close()


# -- storage faults and epochs (issue 9) ------------------------------------------------

def test_LeaseStore_holds_the_file_exclusively_with_no_shm_and_no_mmap(path):
    """When a store is open it holds the file with an exclusive lock, in WAL
    mode, with mmap off and no -shm file (the WAL index is in heap memory:
    nothing a read-only or truncated file could turn into SIGBUS)."""
    store, state = reopen(path)
    state.acquire('a', 'alice', 10, 0)
    db = store._db
    assert db.execute('PRAGMA locking_mode').fetchone()[0] == 'exclusive'
    assert db.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'
    assert db.execute('PRAGMA mmap_size').fetchone()[0] == 0
    assert os.path.exists(path + '-wal') and not os.path.exists(path + '-shm')
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as other, \
            pytest.raises(sqlite3.OperationalError, match='locked'):
        other.execute('SELECT count(*) FROM grants')
    store.close()


def test_LeaseStore_deleted_file_refuses_writes_and_keeps_reading(path):
    """When the database file is deleted while open, the next write is
    refused naming it (and every later one: only a restart clears it), a
    rewrite is refused too, and history still answers."""
    store, state = reopen(path)
    state.acquire('a', 'alice', 10, 0)
    os.unlink(path)
    with pytest.raises(LeaseStoreError, match=r"^lease database '.*leases\.db' was deleted or "
                                              r"replaced while open; no grant until"):
        store.apply(counters={'b': 1})
    assert store.health()['ok'] is False and 'deleted' in store.error
    with pytest.raises(LeaseStoreError, match='deleted'):
        store.rewrite([], {'a': 1})
    assert [r['action'] for r in store.history()] == ['grant']
    store.close()


def test_LeaseStore_replaced_file_refuses_writes(path, tmp_path):
    """When another file is moved over the database while open, writes are
    refused (the file's device and inode differ from the one opened)."""
    store, _ = reopen(path)
    other = tmp_path / 'other.db'
    other.write_bytes(b'')
    os.replace(other, path)
    with pytest.raises(LeaseStoreError, match='was deleted or replaced while open'):
        store.check()
    store.close()


def epoch_of(path):
    with open(epoch_file(path)) as f:
        return json.load(f)


def test_LeaseStore_epoch_rises_after_an_unclean_stop_only(path):
    """When a store is closed (a clean stop) the next start keeps its epoch
    and tokens go on by one; when it was not (kill -9, power loss) the epoch
    rises and every new token exceeds 2**32 times it."""
    store, state = reopen(path)
    assert (store.epoch, store.token_base) == (0, 0)
    assert state.acquire('a', 'x', 10, 0).grants[0].token == 1
    assert epoch_of(path)['clean'] is False
    store.close()
    assert epoch_of(path) == {'db_id': store.db_id, 'epoch': 0, 'clean': True,
                              'database': os.path.abspath(path)}
    store, state = reopen(path)
    state.release('a', 1, 1)
    assert state.acquire('a', 'x', 10, 2).grants[0].token == 2
    store._db.close()                   # no close(): as after kill -9
    store, state = reopen(path)
    assert store.epoch == 1
    g = state.acquire(['a', 'b'], 'x', 10, 20).grants     # 'a' expired meanwhile
    assert [t.token for t in g] == [2 ** 32 + 1, 2 ** 32 + 1]
    assert check_audit(list(reversed(store.history(limit=None)))) == []
    store.close()


def test_LeaseStore_missing_database_refuses_until_new_database(path):
    """When the database is gone but its epoch file says one was there, the
    store opens refusing every write (one line naming the file and
    --new-database) and creates nothing; with new_database it starts a new
    file whose epoch exceeds the old one, so tokens exceed the old ones."""
    store, state = reopen(path)
    state.acquire('a', 'x', 10, 0)
    store._db.close()
    for f in (path, path + '-wal'):
        if os.path.exists(f):
            os.unlink(f)
    store, state = reopen(path)
    assert store.error == (f'lease database {path!r} is missing: its epoch file says database '
                           f'{epoch_of(path)["db_id"]} was there (deleted or moved?); no grant '
                           f'until the registry is started with --new-database')
    with pytest.raises(LeaseError, match=r'^lease storage is failing, so nothing is granted, '
                                         r'renewed or released: lease database .* is missing'):
        state.acquire('a', 'y', 10, 1)
    assert not os.path.exists(path) and store.history() == []
    store.close()
    store = LeaseStore(path, new_database=True)
    state = KeyedState(store=store)
    assert store.error is None and store.epoch == 1
    assert state.acquire('a', 'y', 10, 1).grants[0].token == 2 ** 32 + 1
    store.close()


def test_LeaseStore_other_database_refuses_until_new_database(path, tmp_path):
    """When the file at the path is another lease database than the epoch
    file names (its id), the store refuses writes until new_database, which
    adopts it with a higher epoch."""
    store, _ = reopen(path)
    store.close()
    other = str(tmp_path / 'other.db')
    LeaseStore(other).close()
    os.replace(other, path)
    store = LeaseStore(path)
    assert 'is not the one this registry used' in store.error
    assert store.error.endswith('no grant until the registry is started with --new-database')
    store.close()
    store = LeaseStore(path, new_database=True)
    assert store.error is None and store.epoch == 1
    assert epoch_of(path)['db_id'] == store.db_id
    store.close()


def test_LeaseStore_write_failure_refuses_until_rewrite(path):
    """When a write fails (disk full, I/O error), nothing of it is stored,
    the store refuses writes naming the failure, and a rewrite of the whole
    state (grants replaced, counters max'd, rows kept meanwhile) clears it."""
    store, state = reopen(path)
    state.acquire('a', 'x', 10, 0)
    real = store._write

    def full(*a, **kw):
        raise sqlite3.OperationalError('database or disk is full')
    store._write = full
    with pytest.raises(LeaseError, match=r"^lease storage is failing, so nothing is granted, "
                                         r"renewed or released: write to lease database "
                                         r"'.*' failed: database or disk is full$"):
        state.acquire('b', 'x', 10, 1)
    assert [g.resource for g in state.holders()] == ['a']
    store._write = real
    state.expire_unstored(11)           # 'a' ends in memory only
    assert state.holders() == () and store.load()['grants'] != []
    state.resync(12)
    assert store.error is None and store.load()['grants'] == []
    assert [r['action'] for r in store.history()] == ['expire', 'grant']
    assert state.acquire('b', 'x', 10, 13).status == 'granted'
    store.close()


V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE counters (resource TEXT PRIMARY KEY, last_token INTEGER NOT NULL);
CREATE TABLE grants (
    resource TEXT PRIMARY KEY, owner TEXT NOT NULL, token INTEGER NOT NULL,
    expires REAL NOT NULL, tree INTEGER NOT NULL, note TEXT NOT NULL,
    client TEXT NOT NULL, granted_at REAL NOT NULL, request_id INTEGER NOT NULL);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL,
    resource TEXT, owner TEXT, token INTEGER, client TEXT, detail TEXT,
    ok INTEGER NOT NULL DEFAULT 1);
CREATE INDEX audit_by_resource ON audit (resource, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
INSERT INTO counters VALUES ('a', 7), ('b', 2);
INSERT INTO grants VALUES ('a', 'alice', 7, 100.0, 0, 'n', 'c', 0.0, 5);
INSERT INTO audit (at, action, resource, owner, token, client, detail)
    VALUES (0.0, 'grant', 'a', 'alice', 7, 'c', '{}');
INSERT INTO meta VALUES ('last_request_id', 5);
"""


def test_LeaseStore_migrates_a_version_1_file_to_without_rowid_tables(path):
    """When a store written by schema version 1 is opened, its text-keyed
    tables become WITHOUT ROWID (version 2, then 3, then 4) with every grant,
    counter, audit row and request id kept; being an unknown stop, the
    epoch rises, so new tokens exceed the old ones."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA)
    store, state = reopen(path)
    assert SCHEMA_VERSION == 7 and store.epoch == 1
    assert [(g.resource, g.token, g.request_id) for g in state.holders()] == [('a', 7, 5)]
    assert state.snapshot()['counters'] == {'a': 7, 'b': 2}
    assert [r['action'] for r in store.history()] == ['grant']
    out = state.acquire('b', 'bob', 10, 1)
    assert out.request_id == 6 and out.grants[0].token == 2 ** 32 + 1
    store.close()
    tables = dict(sql(path, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    assert all(tables[t].endswith('WITHOUT ROWID') for t in ('counters', 'grants', 'meta'))
    assert 'AUTOINCREMENT' not in tables['audit']
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION,)]
    assert sql(path, 'SELECT count(*) FROM grants') == [(2,)]


def test_LeaseStore_migrates_a_version_2_file_to_audit_ids_without_autoincrement(path):
    """When a store written by schema version 2 is opened, its audit table
    loses AUTOINCREMENT (version 3: no sqlite_sequence page per commit) with
    every row and its id kept; new rows take the next ids."""
    v2 = V1_SCHEMA.replace('INSERT INTO schema_version VALUES (1)',
                           'INSERT INTO schema_version VALUES (2)')
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(v2)
        db.execute("INSERT INTO audit (id, at, action, resource, owner, token, client, detail) "
                   "VALUES (9, 1.0, 'release', 'a', 'alice', 7, 'c', '{}')")
        db.commit()
    store, state = reopen(path)
    assert [(r['id'], r['action']) for r in store.history()] == [(9, 'release'), (1, 'grant')]
    state.acquire('b', 'bob', 10, 2)
    assert [r['id'] for r in store.history()] == [10, 9, 1]
    store.close()
    tables = dict(sql(path, "SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    assert 'AUTOINCREMENT' not in tables['audit']
    assert sql(path, "SELECT count(*) FROM sqlite_master WHERE name = 'audit_by_resource'") \
        == [(0,)]
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION,)]


def test_LeaseStore_migrates_a_version_5_file_dropping_the_audit_index(path):
    """When a store written by schema version 5 (with the audit_by_resource
    index) is opened, the index is dropped (version 6: one WAL page less per
    grant or release) with every audit row kept; history by resource and
    the fold of re-grants still find their rows."""
    with LeaseStore(path) as store:
        state = LeaseState(store)
        state.acquire('a/b', 'alice', 10, 1)
    sql(path, 'CREATE INDEX audit_by_resource ON audit (resource, id)')
    sql(path, 'UPDATE schema_version SET version = 5')
    store, state = reopen(path)
    assert [(r['action'], r['resource']) for r in store.history('a')] == [('grant', 'a/b')]
    store.apply(audit=[{'at': 2.0, 'action': 'regrant', 'resource': 'a/b', 'owner': 'x',
                        'token': 1, 'detail': {}}],
                folds=[{'resource': 'a/b', 'token': 2, 'owner': 'alice', 'at': 3.0,
                        'detail': {'n': 2}}])
    assert [(r['action'], r['owner'], r['token']) for r in store.history('a/b', limit=1)] \
        == [('regrant', 'alice', 2)]
    store.close()
    assert sql(path, "SELECT count(*) FROM sqlite_master WHERE name = 'audit_by_resource'") \
        == [(0,)]
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION,)]


def v3_file(path):
    """A store as schema version 3 wrote it: one grant (``a``, token 7,
    until 100.0), its audit row."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(V1_SCHEMA)
    LeaseStore(path).close()            # (this release's own migration: undone below)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute('DROP TABLE grant_privs')
        db.execute('ALTER TABLE grants DROP COLUMN lease_key')
        db.execute('ALTER TABLE audit DROP COLUMN caller')
        db.execute('UPDATE schema_version SET version = 3')


def test_LeaseStore_migrates_a_version_3_file_whose_leases_run_to_their_expiry(path):
    """When a store written by schema version 3 (no lease ids) is opened,
    it becomes version 4; the grant it held stays held, can be neither
    renewed nor released (its holder never got a lease id: refused in one
    line naming its expiry), ends at its expiry; a new grant has a lease id
    whose hash, not the id, is in the file."""
    v3_file(path)
    store, state = reopen(path)
    assert [(g.resource, g.token) for g in state.holders()] == [('a', 7)]
    for call in (lambda: state.renew('a', UNISSUED, 10, 1),
                 lambda: state.release('a', UNISSUED, 1)):
        with pytest.raises(LeaseError, match=r"^the lease on 'a' \(token 7, 'alice'\) was "
                                             r"granted before lease ids: nobody can renew or "
                                             r"release it; it ends at its expiry, "):
            call()
    assert state.expire(100.0)['expired'][0].token == 7
    out = state.acquire('a', 'bob', 10, 101.0)
    assert out.lease_id is not None and state.renew('a', out.lease_id, 10, 102.0).token > 7
    raw = open(path, 'rb').read() + b''.join(
        open(f, 'rb').read() for f in (path + '-wal',) if os.path.exists(f))
    assert out.lease_id.encode() not in raw
    store.close()
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION,)]
    [(key,)] = sql(path, 'SELECT lease_key FROM grants')
    assert len(key) == 64 and key != out.lease_id


def test_LeaseStore_migrates_a_version_4_file_and_keeps_credential_hashes(path):
    """When a store written by schema version 4 (no credential hashes) is
    opened, it becomes version 5 with an empty ``grant_privs`` table, the
    grant it held kept; a hash set for a new grant survives a reopen, and
    is dropped once its grant has ended."""
    v3_file(path)
    reopen(path)[0].close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute('DROP TABLE grant_privs')
        db.execute('UPDATE schema_version SET version = 4')
    store, state = reopen(path)
    assert [(g.resource, g.token) for g in state.holders()] == [('a', 7)]
    assert store.privs_hashes() == {}
    out = state.acquire('b', 'bob', 10, 1.0)
    store.set_privs_hash(out.request_id, 'md5', '0123456789abcdef')
    store.close()
    assert sql(path, 'SELECT version FROM schema_version') == [(SCHEMA_VERSION,)]
    store, state = reopen(path)
    assert store.privs_hashes() == {out.request_id: ('md5', '0123456789abcdef')}
    state.release('b', out.lease_id, 2.0)
    assert store.privs_hashes() == {}
    other = state.acquire('c', 'carol', 10, 3.0)
    store.set_privs_hash(other.request_id, 'md5', 'fedcba9876543210')
    store.close()
    assert sql(path, 'SELECT request_id FROM grant_privs') == [(other.request_id,)]


def test_LeaseStore_prune_keeps_the_newest_row_so_ids_never_repeat(path):
    """When every audit row is older than the retention, prune keeps the
    newest one, so the next row's id is above every id ever written."""
    store, state = reopen(path)
    for t in range(5):
        state.acquire(f'r{t}', 'x', 3600, float(t))
    top = store.history(limit=1)[0]['id']
    assert store.prune(before=100.0) == 4
    assert [r['id'] for r in store.history(limit=None)] == [top]
    state.acquire('s', 'x', 3600, 200.0)
    assert [r['id'] for r in store.history(limit=None)] == [top + 1, top]
    store.close()


def test_LeaseStore_reserves_request_ids_in_blocks(path):
    """When request ids are reserved in blocks of 100, the file's id is
    written once per block, not per acquire, and after a restart new ids go
    on above the block (never reused)."""
    store = LeaseStore(path, rid_block=100)
    state = KeyedState(store=store)
    ids = [state.acquire(f'r{i}', 'x', 10, 0).request_id for i in range(5)]
    assert ids == [1, 2, 3, 4, 5] and store.load()['last_request_id'] == 100
    store.close()
    store = LeaseStore(path, rid_block=100)
    state = KeyedState(store=store)
    assert state.acquire('s', 'x', 10, 1).request_id == 101
    assert store.load()['last_request_id'] == 200
    store.close()
    with pytest.raises(LeaseStoreError, match=r'^rid_block must be an integer >= 1, not 0$'):
        LeaseStore(path, rid_block=0)


def test_LeaseStore_new_files_use_small_pages_and_old_ones_keep_theirs(path, tmp_path):
    """When a store creates its file it uses PAGE_SIZE pages (cheaper
    commits); a file made with another page size keeps it and its rows."""
    LeaseStore(path).close()
    assert PAGE_SIZE == 1024 and sql(path, 'PRAGMA page_size') == [(PAGE_SIZE,)]
    old = str(tmp_path / 'old.db')
    with contextlib.closing(sqlite3.connect(old)) as db:
        db.execute('PRAGMA page_size=4096')
        db.executescript(V1_SCHEMA)
    store, state = reopen(old)
    assert [(g.resource, g.token) for g in state.holders()] == [('a', 7)]
    store.close()
    assert sql(old, 'PRAGMA page_size') == [(4096,)]


def test_LeaseStore_migrates_a_version_6_file_adding_the_bookings_table(path):
    """When a store written by schema version 6 (no bookings) is opened, it
    becomes version 7 in place: its grants stay held, the ``bookings``
    table is added (empty), and a booking made then survives a restart."""
    with LeaseStore(path) as store:
        state = LeaseState(store)
        out = state.acquire('a', 'alice', 100, 1000.0)
    sql(path, 'DROP TABLE bookings')
    sql(path, 'UPDATE schema_version SET version = 6')
    store, state = reopen(path)
    assert state.holding('a', out.lease_id).owner == 'alice'
    state.book('b', 'bob', 1100.0, 1200.0, 1000.0)
    store.close()
    store, state = reopen(path)
    assert [(b.booking_id, b.resources) for b in state.bookings()] == [(1, ('b',))]
    store.close()
    assert sql(path, 'SELECT version FROM schema_version') == [(7,)]
