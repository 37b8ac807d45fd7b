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
