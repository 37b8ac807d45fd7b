"""History of agent locks as spans: a pure fold of ownership-table rows.

The registry sees every change of every agent lock (the rows
:class:`ocs_locking.ownership.OwnershipTable` returns). Kept one by one, an
acquisition loop that takes its lock ten times a second would write 864,000
rows a day. :class:`SpanFolder` turns them into **spans**: one holder's run
of holds of one lock, e.g. ``acq held 12:01:03-12:03:40 in 1570 holds, lent
14 times``.

Folding rules:

* one holder (job, op, session) keeps one span while the gaps between its
  holds are at most ``fold_gap`` seconds, and across any hold it lent to
  another operation (the table's ``held_since`` went on through it);
* an operation that borrowed the lock (a task served between two samples of
  a loop) gets a span of its own; the lender's span counts it in ``lent``;
* a waiter that gave up is counted in ``gave_up`` of the span holding the
  lock then (or the latest span when nobody held it).

Each span says how it ended (``outcome``): ``open`` (held now, or lent to
another operation), ``released`` (a span released less than ``fold_gap``
ago opens again if its holder returns), ``stale`` (its agent went
silent while holding), ``closed`` (the lock was closed), ``gone`` (its agent
left the table while holding), ``unknown`` (the registry stopped while it was
open; set by the store). Times are the registry's own clock at arrival
(``held`` and ``longest`` are seconds measured on that one clock).

Pure: no OCS, no Twisted, no I/O; the registry's ``history`` module stores
what :meth:`SpanFolder.take_changed` returns.
"""
import re

__all__ = ['SpanFolder', 'SPAN_KEYS', 'OUTCOMES', 'FOLD_GAP', 'MAX_RESTING', 'check_lock_key',
           'span_held']

#: The keys of every span, in display order.
SPAN_KEYS = ('id', 'lock', 'agent', 'name', 'job', 'op', 'session_id', 'start', 'end',
             'holds', 'held', 'longest', 'lent', 'gave_up', 'token', 'outcome')

#: How a span ended (``open``: it has not).
OUTCOMES = ('open', 'released', 'stale', 'closed', 'gone', 'unknown')

#: Seconds between two holds of one holder that still fold into one span.
FOLD_GAP = 2.0
#: Ended spans per lock kept in memory, waiting for their holder to return.
MAX_RESTING = 8

_PART = r'[A-Za-z0-9_.:-]{1,64}'
_LOCK_KEY = re.compile(rf'^{_PART}(/{_PART})?$')


def check_lock_key(value):
    """``value`` if it names a lock (``sim-device-1/hw``) or an agent
    (``sim-device-1``: each of its locks); else ValueError in one line."""
    if not isinstance(value, str) or not _LOCK_KEY.match(value):
        raise ValueError(f'lock must be <instance-id>/<lock> or an instance-id (letters, '
                         f'digits and _.:-), not {value!r:.60}')
    return value


def _holder(row):
    if row.get('job') is None and row.get('since') is None:
        return None
    return (row.get('job'), row.get('op'), row.get('session_id'))


def span_held(span, now):
    """Seconds ``span`` has been held in all, as of ``now`` (its hold in
    progress included)."""
    begun = span.get('_hold_start')
    return span['held'] + (max(0.0, now - begun) if begun is not None else 0.0)


class _Lock:
    __slots__ = ('holder', 'current', 'lender', 'resting', 'acquired', 'timed_out', 'last')

    def __init__(self):
        self.holder = None      # (job, op, session_id) holding now, or None
        self.current = None     # the holder's span
        self.lender = None      # the span that lent the lock, until it returns
        self.resting = {}       # holder -> its ended span, awaiting a return
        self.acquired = None    # the row's counters when last seen
        self.timed_out = None
        self.last = None        # the latest span of this lock


class SpanFolder:
    """Folds ownership-table rows into spans (see the module docstring).

    Args:
        fold_gap (float): seconds between one holder's holds that still fold.
        new_id (callable): returns the id of a new span (default ``'1'``,
            ``'2'``, ...; the registry's store gives ``'<boot>-<n>'``).
    """

    def __init__(self, fold_gap=FOLD_GAP, new_id=None):
        if isinstance(fold_gap, bool) or not isinstance(fold_gap, (int, float)) \
                or not 0 <= fold_gap <= 3600:
            raise ValueError(f'fold_gap must be seconds in [0, 3600], not {fold_gap!r}')
        self.fold_gap = float(fold_gap)
        self._n = 0
        self._new_id = new_id or self._next_id
        self._locks = {}        # lock key -> _Lock
        self._changed = {}      # span id -> span, changed since take_changed

    def _next_id(self):
        self._n += 1
        return str(self._n)

    # -- input ----------------------------------------------------------------------

    def observe(self, row, now):
        """A row of the table as it is after a change, at ``now``."""
        key = row['lock']
        st = self._locks.get(key)
        if st is None:
            st = self._locks[key] = _Lock()
        holder = _holder(row)
        if st.timed_out is not None and row.get('timed_out', 0) > st.timed_out:
            span = st.current or st.lender or st.last
            if span is not None:
                span['gave_up'] += row['timed_out'] - st.timed_out
                self._touch(span)
        if holder is not None and holder == st.holder and st.acquired is not None \
                and row.get('acquired', 0) > st.acquired:
            # holds the table saw that came and went within one change
            st.current['holds'] += row['acquired'] - st.acquired
            st.current['token'] = row.get('token')
            self._touch(st.current)
        elif holder != st.holder:
            if st.holder is not None:
                self._end_hold(st, row, now)
            if holder is not None:
                self._begin_hold(st, row, holder, now)
        st.acquired, st.timed_out = row.get('acquired', 0), row.get('timed_out', 0)
        if st.current is not None and (row.get('alive') is False or row.get('closed')):
            self._finish(st, st.current, now, 'closed' if row.get('closed') else 'stale')
        elif row.get('closed') and st.last is not None and st.last['outcome'] != 'closed' \
                and (st.last['outcome'] == 'open' or now - st.last['end'] <= self.fold_gap):
            self._finish(st, st.last, now, 'closed')    # released as the lock closed

    def removed(self, key, now):
        """The row ``key`` left the table (its agent went away)."""
        st = self._locks.pop(key, None)
        if st is None:
            return
        if st.current is not None:
            self._finish(st, st.current, now, 'gone')
        for span in st.resting.values():
            self._settle(span)

    def tick(self, now):
        """Settle the spans whose holder did not return within ``fold_gap``."""
        for st in self._locks.values():
            if not st.resting:
                continue
            for holder, span in list(st.resting.items()):
                if span is not st.lender and now - span['end'] > self.fold_gap:
                    del st.resting[holder]
                    self._settle(span)

    # -- output ---------------------------------------------------------------------

    def take_changed(self, now):
        """The spans (copies, :data:`SPAN_KEYS`) changed since the last call,
        ``held`` counted to ``now`` for a hold in progress."""
        changed, self._changed = self._changed, {}
        return [self._public(s, now) for s in changed.values()]

    def open_spans(self, now):
        """Every span not yet ended or settled (copies), as of ``now``."""
        out = []
        for st in self._locks.values():
            spans = {id(s): s for s in (st.current, st.lender, *st.resting.values())
                     if s is not None and s['outcome'] == 'open'}
            out.extend(self._public(s, now) for s in spans.values())
        return out

    @staticmethod
    def _public(span, now):
        out = {k: span[k] for k in SPAN_KEYS}
        out['held'] = round(span_held(span, now), 3)
        if span.get('_hold_start') is not None:
            out['longest'] = round(max(span['longest'], now - span['_hold_start']), 3)
        return out

    # -- the rules ------------------------------------------------------------------

    def _touch(self, span):
        self._changed[span['id']] = span

    def _new_span(self, row, holder, start):
        job, op, session_id = holder
        return {'id': self._new_id(), 'lock': row['lock'], 'agent': row.get('agent'),
                'name': row.get('name'), 'job': job, 'op': op, 'session_id': session_id,
                'start': start, 'end': None, 'holds': 0, 'held': 0.0, 'longest': 0.0,
                'lent': 0, 'gave_up': 0, 'token': row.get('token'), 'outcome': 'open',
                '_hold_start': None, '_held_since': row.get('held_since')}

    def _begin_hold(self, st, row, holder, now):
        span = st.resting.pop(holder, None)
        if span is not None and span is not st.lender and now - span['end'] > self.fold_gap:
            self._settle(span)
            span = None
        if span is None:
            # a hold the registry saw begin late (a snapshot after its own
            # start) began held_for seconds ago
            span = self._new_span(row, holder, now - (row.get('held_for') or 0.0))
        span['end'] = None
        span['outcome'] = 'open'
        span['holds'] += 1
        span['token'] = row.get('token')
        span['_hold_start'] = span['start'] if span['holds'] == 1 else now
        if st.lender is not None:
            if st.lender is span:
                st.lender = None            # the lender has it back
            else:
                st.lender['lent'] += 1      # another borrows it
                self._touch(st.lender)
        st.holder, st.current, st.last = holder, span, span
        self._touch(span)

    def _end_hold(self, st, row, now):
        span, holder = st.current, st.holder
        st.holder = st.current = None
        if span is None or span['_hold_start'] is None:
            return
        took = max(0.0, now - span['_hold_start'])
        span['held'] += took
        span['longest'] = max(span['longest'], took)
        span['_hold_start'] = None
        span['end'] = now
        self._touch(span)
        handed_over = _holder(row) is not None or row.get('waiters', 0) > 0
        # released, unless lent (a borrower handing it on does not lend it);
        # a return within fold_gap opens it again
        lends = handed_over and st.lender is None
        span['outcome'] = 'open' if lends else 'released'
        if lends:
            st.lender = span                # lent: it comes back to this span
        elif not handed_over and st.lender is not None and st.lender is not span:
            st.lender = None                # the borrower let go with nobody waiting
        st.resting[holder] = span
        if len(st.resting) > MAX_RESTING:
            oldest = min((s for s in st.resting.values() if s is not st.lender),
                         key=lambda s: s['end'], default=None)
            if oldest is not None:
                del st.resting[next(h for h, s in st.resting.items() if s is oldest)]
                self._settle(oldest)

    def _settle(self, span):
        if span['outcome'] == 'open':
            span['outcome'] = 'released'
            self._touch(span)

    def _finish(self, st, span, now, outcome):
        """``span`` ends at ``now`` with ``outcome`` (not via a release)."""
        if span['_hold_start'] is not None:
            took = max(0.0, now - span['_hold_start'])
            span['held'] += took
            span['longest'] = max(span['longest'], took)
            span['_hold_start'] = None
        span['end'] = span['end'] if span['end'] is not None and st.current is not span \
            else now
        span['outcome'] = outcome
        if st.current is span:
            st.holder = st.current = None
        if st.lender is span:
            st.lender = None
        for h, s in list(st.resting.items()):
            if s is span:
                del st.resting[h]
        self._touch(span)
