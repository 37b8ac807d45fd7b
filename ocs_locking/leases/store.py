"""SQLite persistence for :class:`~ocs_locking.leases.state.LeaseState`.

One file holds the current grants, the token counters and the audit log, so
that a registry restart loses no grant, no history, and never reissues a
token. Waiting requests are not kept: their callers' sessions end with the
registry, and they ask again.

Storage faults never take the process down and never let memory and disk
part silently: the connection is opened with ``locking_mode=EXCLUSIVE``
before ``journal_mode=WAL``, so SQLite keeps the WAL index in heap memory
(no ``-shm`` file, no shared mmap that a read-only or truncated file could
turn into SIGBUS), and ``mmap_size=0``. Before every write the file's
identity (device, inode) is compared with the one opened: a database
deleted or replaced under the registry refuses writes. A write that fails
raises LeaseStoreError; :attr:`LeaseStore.error` then says why, until
:meth:`LeaseStore.rewrite` succeeds.

**Epochs.** Beside the database an *epoch file* (``.<name>.epoch``, JSON,
written with fsync) keeps the database's id, the epoch and whether the last
stop was clean. Every token issued in epoch ``e`` is above ``e * 2**32``
(:attr:`LeaseStore.token_base`): the epoch goes up at every start after an
unclean stop (kill -9, power loss: the last commits may be lost, see
``synchronous`` below) and when an operator accepts a new database, so a
token never repeats even when the database forgot it. A database missing
where the epoch file says one was, or a different one (its id), is not
written: the store opens refusing (:attr:`error`) until ``new_database``.

**Durability.** ``synchronous=NORMAL`` in WAL mode: a commit survives the
process being killed once :meth:`apply` returns; a power loss may lose the
commits since the last checkpoint (fsync, every second). The epoch covers
that: after a power loss the stop was unclean, the epoch goes up and every
new token exceeds every token of before, whatever the file forgot; a lost
grant's holder is refused at its next renewal. ``FULL`` (an fsync in every
commit) would cost about 0.25 ms per commit here, on every grant.
"""
import errno
import json
import logging
import operator
import os
import random
import sqlite3
import threading

from ..errors import LeaseStoreError

__all__ = ['LeaseStore', 'LeaseStoreError', 'SCHEMA_VERSION', 'EPOCH_BITS', 'epoch_file']

log = logging.getLogger(__name__)

#: A token of epoch ``e`` is ``e * 2**EPOCH_BITS + n``, n >= 1 (n counts the
#: grants of the resource in that epoch and lower ones); tokens stay below
#: 2**53 (exact in JSON) for epochs below 2**(53 - EPOCH_BITS).
EPOCH_BITS = 32
MAX_EPOCH = 2 ** (53 - EPOCH_BITS) - 1

SCHEMA_VERSION = 7
#: WAL pages after which a commit checkpoints by itself (if checkpoint() is
#: not called often enough); SQLite's default is 1000.
AUTOCHECKPOINT = 20000
#: Page size of a new file (an existing one keeps its own). Each grant or
#: release commit writes 3-4 pages to the WAL; small pages make that about a
#: fifth cheaper than SQLite's default 4096 (measured on the registry's
#: grant + release pair), at the cost of slightly deeper audit b-trees.
PAGE_SIZE = 1024
# Version 2: the text-keyed tables are WITHOUT ROWID (one b-tree each, not a
# table and its key's index: fewer pages written per commit).
# Version 3: audit ids without AUTOINCREMENT (no sqlite_sequence page written
# in every commit: one page of the 4-5 a grant or release writes); ids still
# never repeat: prune() always keeps the newest row, so max(id) never drops.
# Version 4: leases are capabilities and the audit says who. ``grants`` gets
# ``lease_key`` (the SHA-256 of the grant's secret lease id; NULL for a grant
# made before: it cannot be renewed or released and runs to its expiry) and
# ``audit`` gets ``caller`` (JSON: who made the call, verified or declared;
# NULL in older rows). Both added in place (ALTER TABLE ... ADD COLUMN).
# Version 5: the registry as access director. ``grant_privs`` keeps, per
# granted request, the hash (ocs's md5 HashedPass: ``hash``, ``value``) of
# the credential its holder was given, never the credential, so the access
# rules survive a registry restart. A row whose request holds no grant is
# deleted at the next write of this table.
# Version 6: no ``audit_by_resource`` index. It cost one WAL page (and a
# b-tree insert) in every commit that writes an audit row, i.e. every grant
# and release, and served only the fold of a holder's re-grants: history by
# resource (a path prefix) scans the table anyway, bounded by the retention
# (``prune``), and the fold finds its row scanning back from the newest id,
# a few rows (it is the resource's latest ``regrant``, within the fold
# window). Dropped in place.
# Version 7: booked reservations. ``bookings`` keeps each booking as JSON
# (``Booking.stored()``: its claim key's SHA-256, never the key), written in
# the same transaction as the grants it becomes; ``meta.last_booking_id``
# keeps booking ids from repeating. Created in place (empty).
_AUDIT_V3 = ('id INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL, '
             'resource TEXT, owner TEXT, token INTEGER, client TEXT, detail TEXT, '
             'ok INTEGER NOT NULL DEFAULT 1')
_AUDIT = _AUDIT_V3 + ', caller TEXT'
_KEYED_V3 = {
    'counters': 'resource TEXT PRIMARY KEY, last_token INTEGER NOT NULL',
    'grants': 'resource TEXT PRIMARY KEY, owner TEXT NOT NULL, token INTEGER NOT NULL, '
              'expires REAL NOT NULL, tree INTEGER NOT NULL, note TEXT NOT NULL, '
              'client TEXT NOT NULL, granted_at REAL NOT NULL, request_id INTEGER NOT NULL',
    'meta': 'key TEXT PRIMARY KEY, value INTEGER NOT NULL',
}
_KEYED = dict(_KEYED_V3, grants=_KEYED_V3['grants'] + ', lease_key TEXT')
_PRIVS = ('CREATE TABLE grant_privs (request_id INTEGER PRIMARY KEY, hash TEXT NOT NULL, '
          'value TEXT NOT NULL)')
_BOOKINGS = 'CREATE TABLE IF NOT EXISTS bookings (id INTEGER PRIMARY KEY, data TEXT NOT NULL)'
_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE audit (""" + _AUDIT + """);
""" + ''.join(f'CREATE TABLE {name} ({cols}) WITHOUT ROWID;\n' for name, cols in _KEYED.items()) \
    + _PRIVS + ';\n' + _BOOKINGS + ';\n'
_GRANT_KEYS = ('resource', 'owner', 'token', 'expires', 'tree', 'note', 'client',
               'granted_at', 'request_id', 'lease_key')
_AUDIT_KEYS = ('id', 'at', 'action', 'resource', 'owner', 'token', 'client', 'detail', 'ok',
               'caller')
_INSERT_AUDIT = ('INSERT INTO audit (at, action, resource, owner, token, client, detail, ok, '
                 'caller) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
_INSERT_GRANT = f'INSERT OR REPLACE INTO grants VALUES ({", ".join("?" * len(_GRANT_KEYS))})'
_UPSERT_COUNTER = ('INSERT INTO counters VALUES (?, ?) ON CONFLICT (resource) DO UPDATE '
                   'SET last_token = max(last_token, excluded.last_token)')
_grant_row = operator.itemgetter(*_GRANT_KEYS[:-1])


def _grant_values(g):
    """A grant dict as its row (``lease_key`` may be absent: NULL)."""
    return _grant_row(g) + (g.get('lease_key'),)
#: One encoder for audit details (json.dumps with options builds one per call).
_detail_json = json.JSONEncoder(sort_keys=True, separators=(',', ':')).encode



def epoch_file(path):
    """The epoch file of the database ``path``: ``.<name>.epoch`` beside it
    (hidden, so ``rm lock-registry.db*`` leaves it)."""
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.epoch')


def _write_durably(path, text):
    """Replace ``path`` with ``text``: a temporary file, fsync, rename, fsync
    of the directory (the rename survives a power loss)."""
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _one_line(e):
    return ' '.join(str(e).split())[:300]


class LeaseStore:
    """Grants, token counters and the audit log in one SQLite file.

    ``path`` is a file (created with its schema if absent) in an existing
    directory, or ``':memory:'`` for tests. The file uses WAL journaling with
    ``synchronous=NORMAL`` under an exclusive lock (one registry per file; no
    ``-shm`` file, no mmap): a commit is durable against the process being
    killed (kill -9) once :meth:`apply` returns; checkpoints (the fsyncs)
    run in :meth:`checkpoint`, on the same connection. One connection serves every
    thread, each call under an internal lock; each :meth:`apply` is one
    transaction. Token counters never decrease, even if asked to.

    ``rid_block``: request ids are reserved in the file this many at a time
    (the file holds the highest id reserved, written only when an id passes
    it), so most acquires write no ``meta`` page; after a restart ids go on
    above the reserved ones.

    ``new_database=True`` accepts the file found at ``path`` (or a new one
    when there is none) as this registry's, although its epoch file names
    another or a missing one, and raises the epoch.

    Attributes:
        error (str or None): why writes are refused (a failed write, a
            read-only, deleted or replaced file, a missing database), or None.
        epoch (int): this run's epoch; ``token_base`` is ``epoch * 2**32``.
        db_id (int or None): the database's random id, kept in the file
            and in the epoch file.

    Raises LeaseStoreError when the directory is missing, the file is not a
    SQLite database, or its schema is newer than (or unknown to) this version.
    """

    def __init__(self, path, new_database=False, rid_block=1):
        self.path = os.fspath(path)
        memory = self.path == ':memory:'
        self.epoch_path = None if memory else epoch_file(self.path)
        if not memory:
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                raise LeaseStoreError(f'cannot open lease store {self.path!r}: '
                                      f'directory {folder!r} does not exist')
            if os.path.isdir(self.path):
                raise LeaseStoreError(f'cannot open lease store {self.path!r}: '
                                      f'it is a directory')
        self._lock = threading.Lock()
        self._db = None
        self._last_rid = None       # the last_request_id the file holds, once known
        if isinstance(rid_block, bool) or not isinstance(rid_block, int) or rid_block < 1:
            raise LeaseStoreError(f'rid_block must be an integer >= 1, not {rid_block!r:.40}')
        self._rid_block = rid_block
        self._ident = None          # (st_dev, st_ino) of the file opened
        self._fatal = False         # error is one only a restart can clear
        self._sidecar_due = None    # the epoch file's content, until written
        self.error, self.epoch, self.db_id = None, 0, None
        side = self._read_epoch_file() if not memory else None
        existed = not memory and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if side is not None and not existed and not new_database:
            self._refuse(f'lease database {os.path.abspath(self.path)!r} is missing: its '
                         f'epoch file says database {side["db_id"]} was there (deleted or '
                         f'moved?); no grant until the registry is started with '
                         f'--new-database', fatal=True)
            self.epoch = side['epoch']
            memory = True           # answer status and history (empty) meanwhile
        try:
            self._open(memory)
        except LeaseStoreError as e:
            # An existing file SQLite cannot open (a read-only file system or
            # directory: WAL mode needs its -wal file): keep answering,
            # refuse every lease call. Not a database / a newer schema: raise.
            cause = e.__cause__
            if memory or not existed or type(cause) is not sqlite3.OperationalError:
                raise
            self._refuse(f'lease database {os.path.abspath(self.path)!r} cannot be opened: '
                         f'{_one_line(cause)} (read-only?); no grant until the registry '
                         f'is restarted with it writable', fatal=True)
            self._open(True)
            return
        if not memory and not self._fatal:
            try:
                self._start_epoch(side, existed, new_database)
            except BaseException:
                self._db.close()
                raise

    def _open(self, memory):
        """Connect (the file, or ``:memory:``), set the pragmas, check or
        create the schema; raises LeaseStoreError (closed) on failure."""
        self._db = None
        try:
            self._db = sqlite3.connect(':memory:' if memory else self.path,
                                       check_same_thread=False, isolation_level=None)
            # EXCLUSIVE before WAL: the WAL index then lives in heap memory
            # (no -shm mmap that a read-only or vanished file turns into SIGBUS).
            self._db.execute(f'PRAGMA page_size={PAGE_SIZE}')    # (new files only)
            self._db.execute('PRAGMA locking_mode=EXCLUSIVE')
            self._db.execute('PRAGMA mmap_size=0')
            self._db.execute('PRAGMA journal_mode=WAL')
            self._db.execute('PRAGMA synchronous=NORMAL')
            # Checkpoints (the only fsyncs in WAL mode) are not run inside
            # commits, where they would delay a reply, but by checkpoint()
            # (the registry calls it from a thread); this bound is a backstop.
            self._db.execute(f'PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}')
            if not memory:
                st = os.stat(self.path)
                self._ident = (st.st_dev, st.st_ino)
            try:
                self._transaction(self._check_schema, checked=False)
            except LeaseStoreError as e:
                cause = e.__cause__
                if cause is None:
                    raise                   # the schema's own complaint
                if not isinstance(cause, sqlite3.OperationalError) or not self._readable():
                    raise LeaseStoreError(f'cannot open lease store {self.path!r}: '
                                          f'{cause}') from cause
                self._refuse(f'lease database {self.path!r} cannot be written: '
                             f'{_one_line(cause)}')
        except (sqlite3.Error, LeaseStoreError, OSError) as e:
            if self._db is not None:
                self._db.close()
            self._ident = None
            if isinstance(e, LeaseStoreError):
                raise
            raise LeaseStoreError(f'cannot open lease store {self.path!r}: {e}') from e

    # -- epochs and the file's identity ---------------------------------------------

    @property
    def token_base(self):
        """Every token this run issues is above this (``epoch * 2**32``)."""
        return self.epoch << EPOCH_BITS

    def _read_epoch_file(self):
        try:
            with open(self.epoch_path) as f:
                side = json.load(f)
            if not (isinstance(side, dict) and isinstance(side.get('db_id'), int)
                    and isinstance(side.get('epoch'), int)
                    and isinstance(side.get('clean'), bool)):
                raise ValueError('not {db_id, epoch, clean}')
            return side
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise LeaseStoreError(f'cannot read the epoch file {self.epoch_path!r}: '
                                  f'{_one_line(e)}') from None

    def _readable(self):
        try:
            self._db.execute('SELECT count(*) FROM sqlite_master').fetchone()
            return True
        except sqlite3.Error:
            return False

    def _meta(self, key):
        row = self._db.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
        return row[0] if row else None

    def _start_epoch(self, side, existed, new_database):
        with self._lock:
            db_id, epoch = self._meta('db_id'), self._meta('epoch') or 0
        if side is not None and db_id is not None and side['db_id'] != db_id \
                and not new_database:
            self.epoch, self.db_id = max(epoch, side['epoch']), db_id
            self._refuse(f'lease database {os.path.abspath(self.path)!r} is not the one '
                         f'this registry used (its id is {db_id}, the epoch file says '
                         f'{side["db_id"]}: replaced?); no grant until the registry is '
                         f'started with --new-database', fatal=True)
            return
        epoch = max(epoch, side['epoch'] if side else 0)
        if new_database or (side is None and existed) or (side is not None and not side['clean']):
            epoch += 1          # the last stop was not clean, or nobody knows
        if epoch > MAX_EPOCH:
            raise LeaseStoreError(f'lease store {self.path!r}: epoch {epoch} is beyond '
                                  f'{MAX_EPOCH} (tokens would pass 2**53)')
        self.epoch, self.db_id = epoch, db_id if db_id is not None else random.getrandbits(62)
        self._sidecar_due = {'db_id': self.db_id, 'epoch': epoch, 'clean': False,
                             'database': os.path.abspath(self.path)}
        if self.error is None:
            try:
                self._write_epoch()
                self._sidecar_due = None
            except LeaseStoreError as e:
                self._refuse(str(e))
        log.info('lease database %s: id %s, epoch %d%s', os.path.abspath(self.path),
                 self.db_id, epoch, f' (not writable: {self.error})' if self.error else '')

    def _write_epoch(self, db=None):
        """Write the epoch and the id into the database and the epoch file."""
        def work(db):
            for key in ('db_id', 'epoch'):
                db.execute('INSERT OR REPLACE INTO meta VALUES (?, ?)',
                           (key, self._sidecar_due[key]))
        if db is None:
            self._transaction(work, checked=False)
        else:
            work(db)
        try:
            _write_durably(self.epoch_path, json.dumps(self._sidecar_due, sort_keys=True))
        except OSError as e:
            raise LeaseStoreError(f'cannot write the epoch file {self.epoch_path!r}: '
                                  f'{_one_line(e)}') from None

    def _refuse(self, why, fatal=False):
        if self.error != why:
            log.error('lease store: %s', why)
        self.error = why
        self._fatal = self._fatal or fatal

    def check(self):
        """Raise LeaseStoreError (and keep :attr:`error`) if the file was
        deleted or replaced since it was opened; else return None."""
        if self._ident is None:
            return
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._ident
        except OSError:
            same = False
        if not same:
            self._refuse(f'lease database {os.path.abspath(self.path)!r} was deleted or '
                         f'replaced while open; no grant until the registry is restarted '
                         f'(with --new-database)', fatal=True)
            raise LeaseStoreError(self.error)

    def health(self):
        """What ``status`` reports about storage: ``ok``, ``error``, the
        absolute ``path``, ``epoch``, ``db_id``, ``epoch_file``."""
        return {'ok': self.error is None, 'error': self.error,
                'path': self.path if self.path == ':memory:' else os.path.abspath(self.path),
                'epoch': self.epoch, 'db_id': self.db_id, 'epoch_file': self.epoch_path}

    def checkpoint(self):
        """Copy the write-ahead log into the database file (fsync), on the
        store's one connection (under its lock: commits wait meanwhile; run
        it from a thread). Returns ``(busy, wal_frames, checkpointed_frames)``."""
        if self.path == ':memory:' or self._fatal:
            return (0, 0, 0)
        with self._lock:
            try:
                return tuple(self._db.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchone())
            except sqlite3.Error as e:
                raise LeaseStoreError(f'checkpoint of {self.path!r} failed: '
                                      f'{_one_line(e)}') from e

    def _check_schema(self, db):
        tables = {r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")} - {'sqlite_sequence'}
        if not tables:
            for statement in _SCHEMA.split(';'):
                if statement.strip():
                    db.execute(statement)
            db.execute('INSERT INTO schema_version VALUES (?)', (SCHEMA_VERSION,))
            return
        if 'schema_version' not in tables:
            raise LeaseStoreError(f'{self.path!r} is not a lease store: it has tables '
                                  f'{", ".join(sorted(tables))[:80]} but no schema_version')
        row = db.execute('SELECT max(version) FROM schema_version').fetchone()
        if row[0] == 1:
            self._migrate_v1(db)
        if row[0] in (1, 2):
            self._migrate_v2(db)
        if row[0] in (1, 2, 3):
            self._migrate_v3(db)
        if row[0] in (1, 2, 3, 4):
            self._migrate_v4(db)
        if row[0] in (1, 2, 3, 4, 5):
            self._migrate_v5(db)
        if row[0] in (1, 2, 3, 4, 5, 6):
            self._migrate_v6(db)
            log.info('lease store %s: schema migrated from version %d to %d', self.path,
                     row[0], SCHEMA_VERSION)
            return
        if row[0] != SCHEMA_VERSION:
            raise LeaseStoreError(
                f'lease store {self.path!r} has schema version {row[0]!r}; this '
                f'ocs-locking reads version {SCHEMA_VERSION} (a newer release wrote it?)')

    def _migrate_v1(self, db):
        """Version 1 to 2, in the opening transaction: each text-keyed table
        copied into its WITHOUT ROWID form."""
        for name, cols in _KEYED_V3.items():
            db.execute(f'CREATE TABLE {name}_v2 ({cols}) WITHOUT ROWID')
            db.execute(f'INSERT INTO {name}_v2 SELECT * FROM {name}')
            db.execute(f'DROP TABLE {name}')
            db.execute(f'ALTER TABLE {name}_v2 RENAME TO {name}')

    def _migrate_v2(self, db):
        """Version 2 to 3, in the opening transaction: the audit table copied
        (ids kept) into its form without AUTOINCREMENT."""
        db.execute(f'CREATE TABLE audit_v3 ({_AUDIT_V3})')
        db.execute('INSERT INTO audit_v3 SELECT * FROM audit')
        db.execute('DROP TABLE audit')
        db.execute('ALTER TABLE audit_v3 RENAME TO audit')
        db.execute("DELETE FROM sqlite_sequence WHERE name = 'audit'")

    def _migrate_v3(self, db):
        """Version 3 to 4, in the opening transaction: ``grants.lease_key``
        and ``audit.caller`` added (NULL in the rows already there). The
        grants already held keep running to their expiry, unrenewable:
        their holders never got a lease id (a force_release also ends them)."""
        db.execute('ALTER TABLE grants ADD COLUMN lease_key TEXT')
        db.execute('ALTER TABLE audit ADD COLUMN caller TEXT')
        n = db.execute('SELECT count(*) FROM grants').fetchone()[0]
        if n:
            log.warning('lease store %s: %d lease(s) granted before lease ids run to their '
                        'expiry and cannot be renewed or released (force_release ends them)',
                        self.path, n)
        db.execute('UPDATE schema_version SET version = ?', (SCHEMA_VERSION,))

    def _migrate_v4(self, db):
        """Version 4 to 5, in the opening transaction: the ``grant_privs``
        table (empty: the grants already held have no credential, their
        access rules let nobody in until they end)."""
        db.execute(_PRIVS)
        db.execute('UPDATE schema_version SET version = ?', (SCHEMA_VERSION,))

    def _migrate_v5(self, db):
        """Version 5 to 6, in the opening transaction: the
        ``audit_by_resource`` index dropped (see the version notes)."""
        db.execute('DROP INDEX IF EXISTS audit_by_resource')
        db.execute('UPDATE schema_version SET version = ?', (SCHEMA_VERSION,))

    def _migrate_v6(self, db):
        """Version 6 to 7, in the opening transaction: the ``bookings``
        table (empty)."""
        db.execute(_BOOKINGS)
        db.execute('UPDATE schema_version SET version = ?', (SCHEMA_VERSION,))

    def _transaction(self, work, checked=True):
        """``work(db)`` in one transaction. A failure raises LeaseStoreError
        (one line); with ``checked``, refused while :attr:`error` is set and
        after the file was deleted or replaced."""
        with self._lock:
            if checked:
                if self.error is not None:
                    raise LeaseStoreError(self.error)
                self.check()
            try:
                self._db.execute('BEGIN IMMEDIATE')
                try:
                    result = work(self._db)
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute('ROLLBACK')
                    raise
                self._db.execute('COMMIT')
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    try:
                        self._db.execute('ROLLBACK')
                    except sqlite3.Error:
                        pass
                why = f'write to lease database {self.path!r} failed: {_one_line(e)}'
                if checked:
                    self._refuse(why)
                raise LeaseStoreError(why) from e
            return result

    # -- what LeaseState uses -------------------------------------------------------

    def load(self):
        """``{'grants': [dict], 'counters': {resource: token}, 'last_request_id': int}``."""
        with self._lock:
            grants = [dict(zip(_GRANT_KEYS, r)) for r in self._db.execute(
                f'SELECT {", ".join(_GRANT_KEYS)} FROM grants ORDER BY resource')]
            counters = dict(self._db.execute('SELECT resource, last_token FROM counters'))
            rid = self._db.execute(
                "SELECT value FROM meta WHERE key = 'last_request_id'").fetchone()
            bookings = [json.loads(r[0]) for r in self._db.execute(
                'SELECT data FROM bookings ORDER BY id')]
            bid = self._meta('last_booking_id')
        for g in grants:
            g['tree'] = bool(g['tree'])
        return {'grants': grants, 'counters': counters, 'last_request_id': rid[0] if rid else 0,
                'bookings': bookings, 'last_booking_id': bid or 0}

    def apply(self, counters=None, grants=None, audit=(), last_request_id=None, folds=(),
              bookings=None, last_booking_id=None):
        """Write one operation's changes in one transaction, committed
        before it returns (the caller replies only after that).

        ``counters``: {resource: last token}; ``grants``: {resource: grant
        dict, or None to delete}; ``audit``: rows as for :meth:`record`;
        ``folds``: ``{'resource', 'token', 'owner', 'at', 'detail'}`` updates
        of the newest ``regrant`` row of that resource, after the new rows;
        ``bookings``: {booking id: ``Booking.stored()`` dict, or None to
        delete}, with ``last_booking_id``.
        """
        def work(db):
            if bookings:
                self._write_bookings(db, bookings, last_booking_id)
            return self._write(db, counters, grants, audit, last_request_id, folds)
        reserved = self._transaction(work)
        self._last_rid = reserved           # written (or already there)

    def _write(self, db, counters, grants, audit, last_request_id, folds=()):
        # (execute, not executemany, for one row: the common case, cheaper)
        if counters:
            if len(counters) == 1:
                db.execute(_UPSERT_COUNTER, next(iter(counters.items())))
            else:
                db.executemany(_UPSERT_COUNTER, sorted(counters.items()))
        for resource, g in sorted((grants or {}).items()):
            if g is None:
                db.execute('DELETE FROM grants WHERE resource = ?', (resource,))
            else:
                db.execute(_INSERT_GRANT, _grant_values(g))
        self._insert_audit(db, audit)
        for f in folds:
            # (scans back from the newest row: the row is among the last few)
            db.execute(
                "UPDATE audit SET token = ?, owner = ?, detail = ? WHERE id = (SELECT id "
                "FROM audit WHERE resource = ? AND action = 'regrant' ORDER BY id DESC "
                "LIMIT 1)",
                (f['token'], f['owner'], _detail_json(f['detail']), f['resource']))
        if last_request_id is None or (self._last_rid is not None
                                       and last_request_id <= self._last_rid):
            return self._last_rid           # already reserved in the file
        reserved = last_request_id + self._rid_block - 1
        db.execute("INSERT OR REPLACE INTO meta VALUES ('last_request_id', ?)", (reserved,))
        return reserved

    @staticmethod
    def _write_bookings(db, bookings, last_booking_id):
        for bid, b in sorted(bookings.items()):
            if b is None:
                db.execute('DELETE FROM bookings WHERE id = ?', (int(bid),))
            else:
                db.execute('INSERT OR REPLACE INTO bookings VALUES (?, ?)',
                           (int(bid), _detail_json(b)))
        if last_booking_id is not None:
            db.execute("INSERT INTO meta VALUES ('last_booking_id', ?) ON CONFLICT (key) DO "
                       "UPDATE SET value = max(value, excluded.value)", (int(last_booking_id),))

    @staticmethod
    def _insert_audit(db, rows):
        if not rows:
            return
        values = [(r['at'], r['action'], r.get('resource'), r.get('owner'), r.get('token'),
                   r.get('client'), _detail_json(r.get('detail') or {}),
                   int(bool(r.get('ok', True))),
                   None if r.get('caller') is None else _detail_json(r['caller']))
                  for r in rows]
        if len(values) == 1:
            db.execute(_INSERT_AUDIT, values[0])
        else:
            db.executemany(_INSERT_AUDIT, values)

    # -- a standby's copy (see replica.py) ------------------------------------------

    def install(self, grants, counters, last_request_id, audit=(), privs=(), bookings=(),
                last_booking_id=0):
        """Make this file a copy of a primary's (a standby following it), in
        one transaction: its grants, audit rows, bookings and credential
        hashes replaced by the given ones (``audit`` oldest first; ``privs``:
        ``[request_id, hash, value]``; ``bookings``: ``Booking.stored()``
        dicts), counters and the last booking id max'd (they never go
        down), the request ids reserved up to ``last_request_id``."""
        def work(db):
            db.execute('DELETE FROM grants')
            db.execute('DELETE FROM audit')
            db.execute('DELETE FROM grant_privs')
            db.execute('DELETE FROM bookings')
            self._write_bookings(db, {b['booking_id']: b for b in bookings},
                                 last_booking_id or 0)
            self._last_rid = None
            reserved = self._write(db, counters, {g['resource']: g for g in grants}, audit,
                                   last_request_id)
            db.executemany('INSERT OR REPLACE INTO grant_privs VALUES (?, ?, ?)',
                           [(int(r), str(h), str(v)) for r, h, v in privs])
            return reserved
        self._last_rid = self._transaction(work)

    def raise_epoch(self, epoch):
        """Serve from now on in ``epoch`` (a standby taking over: above the
        primary's), kept in the file and the epoch file; never lowers it."""
        epoch = max(int(epoch), self.epoch)
        if epoch > MAX_EPOCH:
            raise LeaseStoreError(f'lease store {self.path!r}: epoch {epoch} is beyond '
                                  f'{MAX_EPOCH} (tokens would pass 2**53)')
        if self.epoch_path is None:
            self.epoch = epoch
            return
        self._sidecar_due = {'db_id': self.db_id, 'epoch': epoch, 'clean': False,
                             'database': os.path.abspath(self.path)}
        self._write_epoch()
        self._sidecar_due = None
        self.epoch = epoch
        log.info('lease database %s: now epoch %d', os.path.abspath(self.path), epoch)

    # -- the access director's credential hashes ---------------------------------

    def set_privs_hash(self, request_id, hash, value):
        """Keep the credential hash (``hash``, ``value``: an ocs HashedPass)
        of the granted request ``request_id``, in one transaction that also
        deletes the rows of requests that hold no grant any more."""
        def work(db):
            db.execute('INSERT OR REPLACE INTO grant_privs VALUES (?, ?, ?)',
                       (int(request_id), str(hash), str(value)))
            db.execute('DELETE FROM grant_privs WHERE request_id NOT IN '
                       '(SELECT request_id FROM grants)')
        self._transaction(work)

    def privs_hashes(self):
        """``{request_id: (hash, value)}`` of the requests that hold grants."""
        with self._lock:
            return {r: (h, v) for r, h, v in self._db.execute(
                'SELECT request_id, hash, value FROM grant_privs WHERE request_id IN '
                '(SELECT request_id FROM grants)')}

    # -- for the agent and ocs-locks -----------------------------------------------

    def record(self, at, action, resource=None, owner=None, token=None, client=None,
               detail=None, ok=True, caller=None):
        """Append one audit row on its own, e.g. a refused privileged request
        (``ok=False``) that changed no state."""
        row = {'at': at, 'action': action, 'resource': resource, 'owner': owner,
               'token': token, 'client': client, 'detail': detail, 'ok': ok,
               'caller': caller}
        self._transaction(lambda db: self._insert_audit(db, [row]))

    def history(self, resource=None, limit=100, owner=None, actions=None, since=None,
                until=None):
        """Audit rows newest first, as dicts (``detail`` decoded, ``ok`` a bool).

        Args:
            resource (str): keep the rows about this path and the paths below it.
            limit (int): the most rows returned (None: all).
            owner (str): keep the rows whose owner is this (exactly).
            actions (list): keep the rows whose action is one of these.
            since (float): keep the rows at or after this time (the clock
                the rows were written with).
            until (float): keep the rows at or before this time.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 1):
            raise ValueError(f'limit must be a positive integer or None, not {limit!r:.80}')
        for name, value in (('resource', resource), ('owner', owner)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f'{name} must be a string or None, not {value!r:.80}')
        if actions is not None and (isinstance(actions, str) or not all(
                isinstance(a, str) for a in actions)):
            raise ValueError(f'actions must be a list of strings or None, not {actions!r:.80}')
        for name, value in (('since', since), ('until', until)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise ValueError(f'{name} must be a time in seconds or None, not {value!r:.80}')
        where, args = [], []
        if resource is not None:
            where.append('(resource = ? OR substr(resource, 1, ?) = ?)')
            args += [resource, len(resource) + 1, resource + '/']
        if owner is not None:
            where.append('owner = ?')
            args.append(owner)
        if actions is not None:
            actions = list(actions)
            where.append(f'action IN ({", ".join("?" * len(actions))})' if actions else '0')
            args += actions
        if since is not None:
            where.append('at >= ?')
            args.append(float(since))
        if until is not None:
            where.append('at <= ?')
            args.append(float(until))
        sql = f'SELECT {", ".join(_AUDIT_KEYS)} FROM audit'
        if where:
            sql += ' WHERE ' + ' AND '.join(where)
        sql += ' ORDER BY id DESC' + ('' if limit is None else ' LIMIT ?')
        args += [] if limit is None else [limit]
        with self._lock:
            rows = [dict(zip(_AUDIT_KEYS, r)) for r in self._db.execute(sql, args)]
        for r in rows:
            r['detail'] = json.loads(r['detail']) if r['detail'] else {}
            r['ok'] = bool(r['ok'])
            r['caller'] = json.loads(r['caller']) if r['caller'] else None
        return rows

    def prune(self, before=None, keep_rows=None):
        """Delete audit rows older than ``before`` (a time, as the rows') and
        all but the newest ``keep_rows``; returns how many went. Grants and
        token counters are never pruned, nor the newest row (audit ids are
        the highest id + 1, so keeping it keeps ids from ever repeating)."""
        def work(db):
            n = 0
            if before is not None:
                n += db.execute('DELETE FROM audit WHERE at < ? AND id < '
                                '(SELECT max(id) FROM audit)', (float(before),)).rowcount
            if keep_rows is not None:
                n += db.execute('DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?',
                                (int(keep_rows),)).rowcount
            return n
        return self._transaction(work)

    def rewrite(self, grants, counters, audit=(), last_request_id=None):
        """After failed writes: make the file hold exactly the state in memory
        (``grants``: the current grant dicts, all others deleted;
        ``counters``: max'd with the file's; ``audit``: the rows not written
        yet) in one transaction, then clear :attr:`error`. Raises
        LeaseStoreError, keeping :attr:`error`, if it fails again or if the
        file was deleted or replaced (only a restart clears that)."""
        if self._fatal:
            raise LeaseStoreError(self.error)

        def work(db):
            db.execute('DELETE FROM grants')
            reserved = self._write(db, counters, {g['resource']: g for g in grants}, audit,
                                   last_request_id)
            if self._sidecar_due is not None:
                self._write_epoch(db)       # the start could not write the epoch
            return reserved
        with self._lock:
            self.check()
        self._last_rid = None
        self._last_rid = self._transaction(work, checked=False)
        self._sidecar_due = None
        if self.error is not None:
            log.info('lease store: writes work again (%s)', self.path)
        self.error = None

    def close(self):
        """Checkpoint, mark the stop clean in the epoch file (the next start
        keeps the epoch) and close the connection; further calls fail. A
        store that could not write closes without the mark."""
        with self._lock:
            clean = self.error is None and self._ident is not None and self._db is not None
            if clean:
                try:
                    self.check()
                    self._db.execute('PRAGMA wal_checkpoint(TRUNCATE)')
                    _write_durably(self.epoch_path, json.dumps(
                        {'db_id': self.db_id, 'epoch': self.epoch, 'clean': True,
                         'database': os.path.abspath(self.path)}, sort_keys=True))
                except (sqlite3.Error, OSError, LeaseStoreError) as e:
                    log.error('lease store: no clean-stop mark (%s)', _one_line(e))
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f'LeaseStore({self.path!r})'
