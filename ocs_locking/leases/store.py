"""SQLite persistence for :class:`~ocs_locking.leases.state.LeaseState`.

One file holds the current grants, the token counters and the audit log, so
that a registry restart loses no grant, no history, and never reissues a
token. Waiting requests are not kept: their callers' sessions end with the
registry, and they ask again.
"""
import json
import os
import sqlite3
import threading

from ..errors import LeaseStoreError

__all__ = ['LeaseStore', 'LeaseStoreError', 'SCHEMA_VERSION']

SCHEMA_VERSION = 1
#: WAL pages after which a commit checkpoints by itself (if checkpoint() is
#: not called often enough); SQLite's default is 1000.
AUTOCHECKPOINT = 20000
_SCHEMA = """
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
"""
_GRANT_KEYS = ('resource', 'owner', 'token', 'expires', 'tree', 'note', 'client',
               'granted_at', 'request_id')
_AUDIT_KEYS = ('id', 'at', 'action', 'resource', 'owner', 'token', 'client', 'detail', 'ok')



class LeaseStore:
    """Grants, token counters and the audit log in one SQLite file.

    ``path`` is a file (created with its schema if absent) in an existing
    directory, or ``':memory:'`` for tests. The file uses WAL journaling with
    ``synchronous=NORMAL``: a commit is durable against the process being
    killed (kill -9) once :meth:`apply` returns; checkpoints (the fsyncs)
    run in :meth:`checkpoint`, off the commit path. One connection serves every thread, each call
    under an internal lock; each :meth:`apply` is one transaction. Token
    counters never decrease, even if asked to.

    Raises LeaseStoreError when the directory is missing, the file is not a
    SQLite database, or its schema is newer than (or unknown to) this version.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        if self.path != ':memory:':
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                raise LeaseStoreError(f'cannot open lease store {self.path!r}: '
                                      f'directory {folder!r} does not exist')
            if os.path.isdir(self.path):
                raise LeaseStoreError(f'cannot open lease store {self.path!r}: '
                                      f'it is a directory')
        self._lock = threading.Lock()
        self._ckpt_lock = threading.Lock()
        self._ckpt = None           # the checkpoint connection, once used
        self._db = None
        self._last_rid = None       # the last_request_id the file holds, once known
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute('PRAGMA journal_mode=WAL')
            self._db.execute('PRAGMA synchronous=NORMAL')
            # Checkpoints (the only fsyncs in WAL mode) are not run inside
            # commits, where they would delay a reply, but by checkpoint()
            # (the registry calls it from a thread); this bound is a backstop.
            self._db.execute(f'PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}')
            self._transaction(self._check_schema)
        except (sqlite3.Error, LeaseStoreError) as e:
            if self._db is not None:
                self._db.close()
            if isinstance(e, LeaseStoreError):
                raise
            raise LeaseStoreError(f'cannot open lease store {self.path!r}: {e}') from e

    def checkpoint(self):
        """Copy the write-ahead log into the database file (fsync), on a
        connection of its own: callable from another thread while commits go
        on. Returns ``(busy, wal_frames, checkpointed_frames)``."""
        if self.path == ':memory:':
            return (0, 0, 0)
        with self._ckpt_lock:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(self.path, check_same_thread=False,
                                             isolation_level=None)
            return tuple(self._ckpt.execute('PRAGMA wal_checkpoint(PASSIVE)').fetchone())

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
        if row[0] != SCHEMA_VERSION:
            raise LeaseStoreError(
                f'lease store {self.path!r} has schema version {row[0]!r}; this '
                f'ocs-locking reads version {SCHEMA_VERSION} (a newer release wrote it?)')

    def _transaction(self, work):
        with self._lock:
            self._db.execute('BEGIN IMMEDIATE')
            try:
                result = work(self._db)
            except BaseException:
                self._db.execute('ROLLBACK')
                raise
            self._db.execute('COMMIT')
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
        for g in grants:
            g['tree'] = bool(g['tree'])
        return {'grants': grants, 'counters': counters, 'last_request_id': rid[0] if rid else 0}

    def apply(self, counters=None, grants=None, audit=(), last_request_id=None, folds=()):
        """Write one operation's changes in one transaction, committed
        before it returns (the caller replies only after that).

        ``counters``: {resource: last token}; ``grants``: {resource: grant
        dict, or None to delete}; ``audit``: rows as for :meth:`record`;
        ``folds``: ``{'resource', 'token', 'owner', 'at', 'detail'}`` updates
        of the newest ``regrant`` row of that resource, after the new rows.
        """
        def work(db):
            if counters:
                db.executemany(
                    'INSERT INTO counters VALUES (?, ?) ON CONFLICT (resource) DO UPDATE '
                    'SET last_token = max(last_token, excluded.last_token)',
                    sorted(counters.items()))
            for resource, g in sorted((grants or {}).items()):
                if g is None:
                    db.execute('DELETE FROM grants WHERE resource = ?', (resource,))
                else:
                    db.execute(f'INSERT OR REPLACE INTO grants VALUES '
                               f'({", ".join("?" * len(_GRANT_KEYS))})',
                               tuple(g[k] for k in _GRANT_KEYS))
            self._insert_audit(db, audit)
            for f in folds:
                db.execute(
                    "UPDATE audit SET token = ?, owner = ?, detail = ? WHERE id = (SELECT "
                    "max(id) FROM audit WHERE resource = ? AND action = 'regrant')",
                    (f['token'], f['owner'], json.dumps(f['detail'], sort_keys=True),
                     f['resource']))
            if last_request_id is not None and last_request_id != self._last_rid:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('last_request_id', ?)",
                           (last_request_id,))
        self._transaction(work)
        if last_request_id is not None:
            self._last_rid = last_request_id     # written (or already there)

    @staticmethod
    def _insert_audit(db, rows):
        if not rows:
            return
        db.executemany(
            'INSERT INTO audit (at, action, resource, owner, token, client, detail, ok) '
            'VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
            [(r['at'], r['action'], r.get('resource'), r.get('owner'), r.get('token'),
              r.get('client'), json.dumps(r.get('detail') or {}, sort_keys=True),
              int(bool(r.get('ok', True)))) for r in rows])

    # -- for the agent and ocs-locks -----------------------------------------------

    def record(self, at, action, resource=None, owner=None, token=None, client=None,
               detail=None, ok=True):
        """Append one audit row on its own, e.g. a refused privileged request
        (``ok=False``) that changed no state."""
        row = {'at': at, 'action': action, 'resource': resource, 'owner': owner,
               'token': token, 'client': client, 'detail': detail, 'ok': ok}
        self._transaction(lambda db: self._insert_audit(db, [row]))

    def history(self, resource=None, limit=100, owner=None, actions=None, since=None):
        """Audit rows newest first, as dicts (``detail`` decoded, ``ok`` a bool).

        Args:
            resource (str): keep the rows about this path and the paths below it.
            limit (int): the most rows returned (None: all).
            owner (str): keep the rows whose owner is this (exactly).
            actions (list): keep the rows whose action is one of these.
            since (float): keep the rows at or after this time (the clock
                the rows were written with).
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
        if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
            raise ValueError(f'since must be a time in seconds or None, not {since!r:.80}')
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
        return rows

    def prune(self, before=None, keep_rows=None):
        """Delete audit rows older than ``before`` (a time, as the rows') and
        all but the newest ``keep_rows``; returns how many went. Grants and
        token counters are never pruned."""
        def work(db):
            n = 0
            if before is not None:
                n += db.execute('DELETE FROM audit WHERE at < ?', (float(before),)).rowcount
            if keep_rows is not None:
                n += db.execute('DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?',
                                (int(keep_rows),)).rowcount
            return n
        return self._transaction(work)

    def close(self):
        """Close the connection; further calls fail."""
        with self._lock:
            self._db.close()
        with self._ckpt_lock:
            if self._ckpt is not None:
                self._ckpt.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f'LeaseStore({self.path!r})'
