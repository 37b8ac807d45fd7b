"""The registry's history of agent locks: spans kept in SQLite.

:class:`LockHistory` owns a :class:`ocs_locking.lock_history.SpanFolder`
and the SQLite file its spans are kept in (``--history-db``, by default
``lock-history.db`` beside the site config file; a file of its own, so that
lock traffic never delays a lease commit). The registry feeds it every
change of its table on the reactor thread; it writes once per monitor tick,
in one transaction, and before each query. Retention: spans older than
``--history-days`` and all but the newest ``--history-rows`` are deleted,
once a minute.

A registry that stops (or is killed) with spans open leaves them ``open`` in
the file; the next start marks them ``unknown`` (nobody saw how they
ended). Span ids are ``<boot>-<n>``: ``boot`` counts the starts of this
file, so ids never repeat.

:func:`read_history` answers the registry's ``history`` task: lease audit
rows, lock spans, or both, newest first.
"""
import math
import sqlite3
import threading

from ocs_locking.errors import LeaseError
from ocs_locking.lock_history import FOLD_GAP, SPAN_KEYS, SpanFolder, check_lock_key

__all__ = ['LockHistory', 'read_history', 'add_arguments', 'check_arguments', 'HISTORY_DAYS',
           'HISTORY_ROWS', 'KINDS', 'usual_from']

#: Default retention: days, and rows.
HISTORY_DAYS = 30.0
HISTORY_ROWS = 1_000_000
#: Seconds between two prunings.
PRUNE_EVERY = 60.0
#: The history task's kinds: site-lease audit rows, agent-lock spans, both.
KINDS = ('lease', 'lock', 'all')
#: Spans of one lock and job that ``usual`` looks at (the newest).
USUAL_SPANS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spans (
    id TEXT PRIMARY KEY, lock TEXT NOT NULL, agent TEXT, name TEXT, job TEXT, op TEXT,
    session_id INTEGER, start REAL NOT NULL, "end" REAL, holds INTEGER NOT NULL,
    held REAL NOT NULL, longest REAL NOT NULL, lent INTEGER NOT NULL,
    gave_up INTEGER NOT NULL, token INTEGER, outcome TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS spans_lock_start ON spans (lock, start);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start);
CREATE INDEX IF NOT EXISTS spans_open ON spans (outcome) WHERE outcome = 'open';
"""
_COLUMNS = ', '.join('"end"' if k == 'end' else k for k in SPAN_KEYS)


def _pct(values, q):
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def usual_from(spans):
    """``{'n', 'median', 'p90', 'span_median', 'span_p90'}`` of spans: the
    median and 90th percentile of each span's mean hold (``held`` /
    ``holds``), and of its length (``end`` - ``start``, lent moments
    included: what a row's ``held_for`` measures); None with no span."""
    spans = [s for s in spans if s['holds']]
    if not spans:
        return None
    means = sorted(s['held'] / s['holds'] for s in spans)
    lengths = sorted(max(0.0, s['end'] - s['start']) if s.get('end') is not None
                     else s['held'] for s in spans)
    return {'n': len(means), 'median': _pct(means, 0.5), 'p90': _pct(means, 0.9),
            'span_median': _pct(lengths, 0.5), 'span_p90': _pct(lengths, 0.9)}


class LockHistory:
    """Spans of agent locks in one SQLite file (see the module docstring).

    Args:
        path (str): the file (created if absent) or ``':memory:'``.
        days (float), rows (int): the retention bounds.
        fold_gap (float): see :class:`~ocs_locking.lock_history.SpanFolder`.
        log: a txaio logger (``warn``, ``info``), or None.

    Raises ValueError (one line) when the file cannot be opened as a history.
    """

    def __init__(self, path, days=HISTORY_DAYS, rows=HISTORY_ROWS, fold_gap=FOLD_GAP, log=None):
        self.path, self.days, self.rows, self.log = path, float(days), int(rows), log
        self.error = None           # the last write error, or None
        self.closed = False
        self._lock = threading.Lock()
        self._pending = {}          # span id -> span not yet written
        self._last_prune = None
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if path != ':memory:':
                self._db.execute('PRAGMA journal_mode=WAL')
            self._db.execute('PRAGMA synchronous=NORMAL')
            self._db.executescript(_SCHEMA)
            self._db.execute('BEGIN IMMEDIATE')
            row = self._db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            self.boot = (row[0] if row else 0) + 1
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (self.boot,))
            self.unknown = self._db.execute(
                "UPDATE spans SET outcome = 'unknown' WHERE outcome = 'open'").rowcount
            self._db.execute('COMMIT')
        except sqlite3.Error as e:
            raise ValueError(f'--history-db {path}: cannot use it as a lock history ({e})') \
                from None
        self._n = 0
        self.folder = SpanFolder(fold_gap, new_id=self._next_id)

    def _next_id(self):
        self._n += 1
        return f'{self.boot}-{self._n}'

    # -- input (reactor thread) ----------------------------------------------------

    def observe(self, rows, removed, now):
        """The table's changed rows and removed keys, at ``now``."""
        for row in rows:
            self.folder.observe(row, now)
        for key in removed:
            self.folder.removed(key, now)

    def flush(self, now):
        """Write every changed span, in one transaction; prune once a
        minute. A write error is logged once, kept in :attr:`error`, and
        the spans are written at the next flush."""
        if self.closed:
            return
        self.folder.tick(now)
        for span in self.folder.take_changed(now):
            self._pending[span['id']] = span
        if self._pending:
            spans = list(self._pending.values())
            try:
                with self._lock:
                    self._db.execute('BEGIN')
                    self._db.executemany(
                        f'INSERT OR REPLACE INTO spans ({_COLUMNS}) VALUES '
                        f'({", ".join("?" * len(SPAN_KEYS))})',
                        [tuple(s[k] for k in SPAN_KEYS) for s in spans])
                    self._db.execute('COMMIT')
            except sqlite3.Error as e:
                self._failed(e)
                return
            self._pending.clear()
            if self.error is not None:
                self._say('info', 'lock history written again ({path})')
                self.error = None
        if self._last_prune is None or now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            self.prune(now)

    def _failed(self, e):
        try:
            self._db.execute('ROLLBACK')
        except sqlite3.Error:
            pass
        if self.error is None:
            self._say('warn', 'lock history not written ({path}): {err}; retrying', err=str(e))
        self.error = str(e)

    def _say(self, level, text, **kw):
        if self.log is not None:
            getattr(self.log, level)(text, path=self.path, **kw)

    def prune(self, now):
        """Apply the retention bounds; returns how many spans went."""
        try:
            with self._lock:
                n = self._db.execute('DELETE FROM spans WHERE coalesce("end", start) < ? '
                                     "AND outcome != 'open'",
                                     (now - self.days * 86400,)).rowcount
                n += self._db.execute(
                    'DELETE FROM spans WHERE rowid IN (SELECT rowid FROM spans ORDER BY start '
                    'DESC LIMIT -1 OFFSET ?)', (self.rows,)).rowcount
            return n
        except sqlite3.Error as e:
            self._failed(e)
            return 0

    def close(self):
        """Write what is pending and close the file (again: nothing)."""
        if self.closed:
            return
        try:
            import time
            self.flush(time.time())
        finally:
            self.closed = True
            self._db.close()

    # -- output ---------------------------------------------------------------------

    def query(self, lock=None, job=None, since=None, limit=20, now=None, at=None):
        """Spans newest first (by start): of one lock (``<instance>/<lock>``)
        or of each lock of one agent (``<instance>``), of one job, that
        were open at or after ``since`` and that were open at ``at`` (times
        of the registry's clock). Open spans count their hold in progress
        to ``now``."""
        if now is not None and not self.closed:
            self.flush(now)
        where, args = [], []
        if lock is not None:
            if '/' in lock:
                where.append('lock = ?')
                args.append(lock)
            else:
                where.append('agent = ?')
                args.append(lock)
        if job is not None:
            where.append('job = ?')
            args.append(job)
        if since is not None:
            where.append('("end" IS NULL OR "end" >= ?)')
            args.append(since)
        if at is not None:
            where.append('start <= ? AND ("end" IS NULL OR "end" >= ?)')
            args += [at, at]
        sql = f'SELECT {_COLUMNS} FROM spans' + (' WHERE ' + ' AND '.join(where) if where else '')
        with self._lock:
            rows = self._db.execute(sql + ' ORDER BY start DESC, rowid DESC LIMIT ?',
                                    (*args, limit)).fetchall()
        spans = [dict(zip(SPAN_KEYS, r)) for r in rows]
        if now is not None:
            live = {s['id']: s for s in self.folder.open_spans(now)}
            spans = [live.get(s['id'], s) for s in spans]
        return spans

    def usual(self, lock, job):
        """How long ``job``'s holds of ``lock`` usually last (see
        :func:`usual_from`), from its newest spans; None without any."""
        if self.closed:
            return None
        with self._lock:
            rows = self._db.execute(
                'SELECT held, holds, start, "end" FROM spans WHERE lock = ? AND job = ? '
                "AND holds > 0 AND outcome = 'released' ORDER BY start DESC LIMIT ?",
                (lock, job, USUAL_SPANS)).fetchall()
        return usual_from([{'held': h, 'holds': n, 'start': t0, 'end': t1}
                           for h, n, t0, t1 in rows])

    def status(self):
        """``{'ok', 'error', 'path', 'spans', 'pending', 'boot'}`` (public)."""
        spans = None
        if not self.closed:
            try:
                with self._lock:
                    spans = self._db.execute('SELECT count(*) FROM spans').fetchone()[0]
            except sqlite3.Error:
                pass
        return {'ok': self.error is None, 'error': self.error, 'path': self.path,
                'spans': spans, 'pending': len(self._pending), 'boot': self.boot}


# -- the history task ---------------------------------------------------------------

def _age(value, name='since'):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f'{name} must be an age in seconds >= 0, not {value!r:.40}')
    return float(value)


def read_history(params, leases, lock_history, now):
    """The ``history`` task's rows, newest first (by ``at``: an audit row's
    time, a span's start), each with ``kind`` ``lease`` or ``lock``.

    ``params``: ``kind`` (:data:`KINDS`, default ``lease``), ``resource``
    (a lease path, or a lock / agent for spans), ``owner`` (the lease owner,
    or the span's job), ``action`` (lease audit rows only), ``since`` (an
    age in seconds), ``at`` (an age in seconds: the spans open then, and
    the audit rows up to then), ``limit`` (1..1000). ``leases`` (LeaseOps) or
    ``lock_history`` (LockHistory) may be None: that kind is then empty.
    Raises ValueError (one line) for bad input.
    """
    params = dict(params or {})
    kind = params.pop('kind', None) or 'lease'
    extra = sorted(set(params) - {'resource', 'owner', 'action', 'since', 'limit', 'at'})
    if extra:
        raise ValueError(f'history takes no {", ".join(map(str, extra))[:60]}')
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {", ".join(KINDS)}, not {kind!r:.40}')
    if params.get('action') is not None and kind == 'lock':
        raise ValueError('action filters the lease audit only, not kind lock')
    for name in ('since', 'at'):
        if params.get(name) is not None:
            _age(params[name], name)
    limit = params.get('limit', 20)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValueError(f'limit must be an integer in [1, 1000], not {limit!r:.40}')
    resource = params.get('resource')
    rows = []
    lease_ok = lock_ok = True
    if kind in ('lock', 'all') and resource is not None:
        try:
            check_lock_key(resource)
        except ValueError:
            if kind == 'lock':
                raise
            lock_ok = False
    if kind in ('lease', 'all') and leases is not None:
        try:
            query = leases.history_query(**params)
        except (LeaseError, ValueError) as e:
            if kind == 'lease' or not lock_ok:
                raise ValueError(str(e)) from None
            lease_ok = False
        if lease_ok:
            rows += [dict(r, kind='lease') for r in leases.store.history(**query)]
    if kind in ('lock', 'all') and lock_ok and lock_history is not None \
            and params.get('action') is None:
        if params.get('owner') is not None:
            owner = params['owner']
            if not isinstance(owner, str) or not owner.strip() or len(owner) > 128:
                raise ValueError(f'owner must be 1..128 characters, not {owner!r:.40}')
        since = None if params.get('since') is None else now - params['since']
        at = None if params.get('at') is None else now - params['at']
        spans = lock_history.query(lock=resource, job=params.get('owner'), since=since,
                                   limit=limit, now=now, at=at)
        rows += [dict(s, kind='lock', at=s['start']) for s in spans]
    rows.sort(key=lambda r: r.get('at') or 0.0, reverse=True)
    return rows[:limit]


def add_arguments(parser):
    """The registry's history options."""
    parser.add_argument('--history-db', default='lock-history.db',
                        help='SQLite file for the history of agent locks (spans of holds); '
                             'a relative path is taken from the directory of the site '
                             'config file.')
    parser.add_argument('--no-history', action='store_true',
                        help='Keep no history of agent locks.')
    parser.add_argument('--history-days', type=float, default=HISTORY_DAYS,
                        help=f'Spans older than this many days are deleted (default '
                             f'{HISTORY_DAYS:g}).')
    parser.add_argument('--history-rows', type=int, default=HISTORY_ROWS,
                        help=f'At most this many spans are kept (default {HISTORY_ROWS}).')
    parser.add_argument('--history-fold', type=float, default=FOLD_GAP,
                        help='One holder\'s holds less than this many seconds apart fold '
                             f'into one span (default {FOLD_GAP:g}).')
    return parser


def check_arguments(args):
    """A one-line complaint about the history options, or None."""
    days = getattr(args, 'history_days', HISTORY_DAYS)
    rows = getattr(args, 'history_rows', HISTORY_ROWS)
    fold = getattr(args, 'history_fold', FOLD_GAP)
    if not (isinstance(days, (int, float)) and math.isfinite(days) and 0 < days <= 3650):
        return f'--history-days must be a number of days in (0, 3650], not {days}'
    if not (isinstance(rows, int) and 100 <= rows <= 10 ** 9):
        return f'--history-rows must be an integer in [100, 1000000000], not {rows}'
    if not (isinstance(fold, (int, float)) and math.isfinite(fold) and 0 <= fold <= 3600):
        return f'--history-fold must be seconds in [0, 3600], not {fold}'
    return None
