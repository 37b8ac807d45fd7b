"""ocs-locks watch without a router: applying ownership messages, ending once,
and the signals that end it."""
import io
import signal

import pytest
from twisted.internet.error import ReactorNotRunning

from ocs_locking.cli import signals as cli_signals
from ocs_locking.cli.watch import Watch, apply_message


def row(lock, job=None):
    return {'lock': lock, 'agent': lock.split('/')[0], 'job': job, 'session_id': None,
            'since': None if job is None else 1.0, 'waiters': 0, 'alive': True}


def test_apply_message_snapshot_replaces_change_updates_and_removes():
    """When a snapshot arrives the table becomes its rows; a change updates
    its rows and drops the keys it lists as removed."""
    rows = {'old/hw': row('old/hw')}
    assert apply_message(rows, {'kind': 'snapshot', 'rows': [row('a/hw'), row('b/hw')]})
    assert sorted(rows) == ['a/hw', 'b/hw']
    assert apply_message(rows, {'kind': 'change', 'rows': [row('a/hw', 'acq')],
                                'removed': ['b/hw']})
    assert list(rows) == ['a/hw'] and rows['a/hw']['job'] == 'acq'
    assert apply_message(rows, {'kind': 'change', 'rows': [row('c/hw')]})    # no 'removed'
    assert sorted(rows) == ['a/hw', 'c/hw']


@pytest.mark.parametrize('message', ['text', None, {'rows': []}, {'kind': 'other'},
                                     {'kind': 'change', 'rows': 'x'},
                                     {'kind': 'change', 'rows': [{'no': 'lock'}]},
                                     {'kind': 'change', 'rows': [], 'removed': 'a/hw'}])
def test_apply_message_ignores_what_is_not_an_ownership_message(message):
    """When a message does not have the ownership shape, the table is left
    as it was."""
    rows = {'a/hw': row('a/hw')}
    assert apply_message(rows, message) is False
    assert list(rows) == ['a/hw']


class FakeReactor:
    def __init__(self, running=True):
        self.running = running
        self.stops = 0

    def stop(self):
        self.stops += 1
        if not self.running:
            raise ReactorNotRunning()
        self.running = False


def watch(reactor=None, out=None, count=None):
    return Watch(reactor or FakeReactor(), 'ws://x/ws', 'realm', 'observatory.r.feeds.ownership',
                 {}, out or io.StringIO(), count=count, clear=False)


def test_Watch_end_keeps_the_first_outcome_and_stops_the_reactor_once():
    """When the watch is ended twice (Ctrl-C, then the connection dropping
    during shutdown), the first outcome stands and the reactor is stopped
    once."""
    w = watch()
    w.end(0)
    w.end(1, 'lost the connection to the router at ws://x/ws')
    assert (w.code, w.error, w.reactor.stops) == (0, None, 1)


def test_Watch_end_on_a_stopped_reactor_is_quiet():
    """When the reactor is already stopping, ending the watch raises nothing
    (no ReactorNotRunning traceback)."""
    w = watch(FakeReactor(running=False))
    w.end(0)
    assert w.code == 0


def test_Watch_counts_updates_and_ends_after_count():
    """When --count updates have been drawn, the watch ends with status 0;
    other messages are not counted."""
    out = io.StringIO()
    w = watch(out=out, count=2)
    w.on_message(['not ownership', {}])
    w.on_message([{'kind': 'snapshot', 'rows': [row('a/hw', 'acq')]}, {}])
    assert w.code is None
    w.on_message([{'kind': 'change', 'rows': [row('a/hw')]}, {}])
    assert (w.updates, w.code) == (2, 0)
    assert out.getvalue().count('ocs-locks watch  observatory.r.feeds.ownership') == 2


class Closed(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, 'Broken pipe')


def test_Watch_closed_stdout_ends_quietly():
    """When stdout is closed (| head, terminal gone), the watch ends with
    status 0 and no error line."""
    w = watch(out=Closed())
    w.draw()
    assert (w.code, w.error, w.reactor.stops) == (0, None, 1)


def test_Interrupter_raises_once_then_ignores(monkeypatch):
    """When ending signals arrive, the first raises KeyboardInterrupt and the
    next ones are ignored (so a release in progress is not cut short)."""
    installed = {}
    monkeypatch.setattr(signal, 'signal', lambda s, h: installed.setdefault(s, h))
    handler = cli_signals.Interrupter().install()
    assert set(installed) == {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGHUP, None)
    handler(signal.SIGTERM, None)
    handler(signal.SIGINT, None)
    assert handler.signum == signal.SIGHUP


# -- trust: only the registry's session, parts, malformed messages --------------------

from ocs_locking.cli.watch import OwnershipReader  # noqa: E402


def test_OwnershipReader_draws_only_the_registry_sessions_messages():
    """When the publisher is known (bus verified), a message from any other
    session, a forged empty snapshot too, is ignored and counted: the table
    stays."""
    rows = {'a/hw': row('a/hw')}
    reader = OwnershipReader(rows, publisher=7)
    assert reader.feed({'kind': 'snapshot', 'rows': []}, publisher=99) is False
    assert reader.feed({'kind': 'change', 'rows': [row('a/hw', 'forged')]}, publisher=None) \
        is False
    assert list(rows) == ['a/hw'] and rows['a/hw']['job'] is None
    assert reader.ignored == {"not published by the registry's session": 2}
    assert reader.ignored_line() == \
        "ignored 2 ownership message(s): not published by the registry's session (2)"
    assert reader.feed({'kind': 'change', 'rows': [row('a/hw', 'acq')]}, publisher=7)
    assert rows['a/hw']['job'] == 'acq'


def test_OwnershipReader_replaces_the_table_once_every_snapshot_part_came():
    """When a snapshot comes in parts, the table is replaced only once all
    parts of one seq came; a change meanwhile is applied on top of it; a part
    of a newer snapshot starts again."""
    rows = {'old/hw': row('old/hw')}
    reader = OwnershipReader(rows)
    part = {'kind': 'snapshot', 'seq': 5, 'parts': 3}
    assert reader.feed(dict(part, part=0, rows=[row('a/hw')])) is False
    assert reader.feed(dict(part, part=1, rows=[row('b/hw')])) is False
    assert reader.feed({'kind': 'change', 'seq': 6, 'rows': [row('b/hw', 'acq')]})
    assert 'old/hw' in rows
    assert reader.feed(dict(part, part=2, rows=[row('c/hw')])) is True
    assert sorted(rows) == ['a/hw', 'b/hw', 'c/hw'] and rows['b/hw']['job'] == 'acq'
    reader.feed(dict(part, seq=7, part=0, rows=[]))
    reader.feed(dict(part, seq=8, part=1, rows=[]))
    reader.feed(dict(part, seq=8, part=2, rows=[]))
    assert sorted(rows) == ['a/hw', 'b/hw', 'c/hw']     # seq 8 misses its part 0


@pytest.mark.parametrize('message', [
    {'kind': 'snapshot', 'part': 3, 'parts': 2, 'rows': []},
    {'kind': 'snapshot', 'part': 0, 'parts': 10 ** 9, 'rows': []},
    {'kind': 'change', 'rows': [], 'removed': [1, 2]},
    {'kind': 'change', 'rows': [{'lock': 5}]}])
def test_OwnershipReader_ignores_malformed_messages(message):
    """When a message is malformed (part numbers out of range, keys not
    strings), it is ignored and counted as malformed."""
    rows = {'a/hw': row('a/hw')}
    reader = OwnershipReader(rows)
    assert reader.feed(message) is False and list(rows) == ['a/hw']
    assert list(reader.ignored) and all(k.startswith('malformed: ') for k in reader.ignored)


def test_Watch_draws_a_malformed_row_in_one_line_and_goes_on():
    """When a row has fields of the wrong types, the watch draws it (text
    shown as repr) without a traceback, and the next message is drawn too."""
    out, err = io.StringIO(), io.StringIO()
    w = Watch(FakeReactor(), 'ws://x/ws', 'realm', 'topic', {}, out, clear=False, err=err)
    bad = {'lock': 'x/hw', 'job': {'a': [1]}, 'session_id': [1], 'waiters': None,
           'since': 'yesterday', 'held_for': 'long', 'alive': 'yes'}
    w.on_message([{'kind': 'change', 'rows': [bad]}, {}], details=None)
    w.on_message([{'kind': 'change', 'rows': [row('y/hw', 'acq')]}, {}], details=None)
    assert w.updates == 2 and err.getvalue() == ''
    text = out.getvalue()
    assert "x/hw  {'a': [1]} (session [1])" in text and 'y/hw' in text


def test_Watch_with_an_unverified_bus_heads_the_table_with_one_line():
    """When the registry says the bus is not verified, each drawing starts
    with 'bus not verified: <reason>'."""
    out = io.StringIO()
    w = Watch(FakeReactor(), 'ws://x/ws', 'realm', 'topic', {}, out, clear=False,
              bus={'verified': False, 'reason': 'no router component'})
    w.draw()
    assert out.getvalue().startswith('bus not verified: no router component\nocs-locks watch')
    assert w.reader.publisher is None


def test_Watch_with_a_verified_bus_follows_only_the_registry_session():
    """When the bus is verified, the watch takes the registry's session as
    the only publisher it draws."""
    w = Watch(FakeReactor(), 'ws://x/ws', 'realm', 'topic', {}, io.StringIO(), clear=False,
              bus={'verified': True, 'reason': None, 'session': 42})
    w.on_message([{'kind': 'snapshot', 'rows': []}, {}],
                 details=type('D', (), {'publisher': 41})())
    assert w.updates == 0 and w.reader.publisher == 42


class ThreadReactor(FakeReactor):
    """A FakeReactor whose thread pool runs calls at once (for refresh)."""

    def getThreadPool(self):
        return None


def test_Watch_while_the_bus_is_being_checked_asks_again_and_draws_it_verified(monkeypatch):
    """A watch started while the registry was still checking the bus
    ('being checked') asks the registry again on the next message and, once
    it says verified, draws without the 'bus not verified' line and follows
    only the registry's session."""
    from twisted.internet import defer, threads
    monkeypatch.setattr(threads, 'deferToThreadPool',
                        lambda reactor, pool, f: defer.succeed(f()))
    asked = []

    def refresh():
        asked.append(1)
        return {'verified': True, 'reason': None, 'session': 7}

    out = io.StringIO()
    w = Watch(ThreadReactor(), 'ws://x/ws', 'realm', 'topic', {}, out, clear=False,
              bus={'verified': False, 'reason': 'being checked'}, refresh=refresh)
    w.draw()
    assert 'bus not verified: being checked' in out.getvalue()
    out.seek(0), out.truncate()
    w.on_message([{'kind': 'snapshot', 'rows': []}, {}],
                 details=type('D', (), {'publisher': 7})())
    assert asked == [1]
    assert w.reader.publisher == 7
    assert out.getvalue() and 'bus not verified' not in out.getvalue()


class FakeClock:
    """This process's monotonic clock, moved by hand."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def leases_message(seq=1, left=30.0, waiting=()):
    return {'kind': 'leases', 'seq': seq, 'timestamp': 5e9,
            'grants': [{'resource': 'demo/hwp', 'owner': 'ops-console', 'token': 7,
                        'granted_at': 1.7e9, 'expires': 1.7e9 + 60, 'expires_in': left,
                        'tree': False, 'note': 'cal run'}],
            'waiting': list(waiting)}


def lease_line(text):
    return next(line for line in text.splitlines() if line.startswith('demo/hwp '))


def test_Watch_draws_the_latest_leases_below_the_locks_counting_down_on_its_clock():
    """When a leases message arrives, the watch draws the grant (owner,
    token, time left, queue, note) and the waiters below the lock table; at
    each redraw the time left counts down from expires_in on the watcher's
    own clock since the message arrived (the registry's wall clock, 5e9 in
    timestamp, is never compared); a newer message replaces it, and an
    empty one clears it."""
    out, clock = io.StringIO(), FakeClock()
    w = Watch(FakeReactor(), 'ws://x/ws', 'realm', 'topic', {'a/hw': row('a/hw', 'acq')},
              out, clear=False, clock=clock)
    w.on_message([leases_message(left=30.0, waiting=[
        {'owner': 'carol', 'resources': ['demo/hwp'], 'position': 1, 'deadline': 1.7e9}]), {}])
    assert w.updates == 1
    text = out.getvalue()
    assert text.index('a/hw') < text.index('SITE LEASE') < text.index('waiting: carol')
    fields = lease_line(text).split()
    assert fields[1:3] == ['ops-console', '7'] and fields[5:] == ['30', 's', '1', 'cal', 'run']
    clock.t += 12.5
    out.truncate(0)
    w.draw()
    assert lease_line(out.getvalue()).split()[5:7] == ['18', 's']
    clock.t += 100
    out.truncate(0)
    w.draw()
    assert lease_line(out.getvalue()).split()[5:7] == ['0.0', 's']
    w.on_message([{'kind': 'leases', 'seq': 2, 'grants': [], 'waiting': []}, {}])
    assert 'SITE LEASE' not in out.getvalue().rsplit('ocs-locks watch', 1)[1]


def test_Watch_starts_with_the_leases_read_over_http():
    """When the watch is given the leases read at start (no expires_in: an
    older registry), it draws them at once with no time left shown."""
    out = io.StringIO()
    first = leases_message()
    del first['grants'][0]['expires_in']
    w = Watch(FakeReactor(), 'ws://x/ws', 'realm', 'topic', {}, out, clear=False,
              leases=first, clock=FakeClock())
    w.draw()
    assert lease_line(out.getvalue()).split()[5] == '-'


@pytest.mark.parametrize('message', [
    {'kind': 'leases', 'grants': 'x'},
    {'kind': 'leases', 'grants': [], 'waiting': [1]}])
def test_OwnershipReader_ignores_malformed_leases_and_forged_ones(message):
    """When a leases message is malformed, or (bus verified) comes from
    another session than the registry's, the leases shown are kept."""
    reader = OwnershipReader({})
    reader.feed(leases_message(), received=1.0)
    assert reader.feed(message) is False and reader.leases['seq'] == 1
    reader.publisher = 42
    assert reader.feed(leases_message(seq=9), publisher=41) is False
    assert reader.leases['seq'] == 1 and reader.leases['_received'] == 1.0
