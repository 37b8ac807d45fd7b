"""tools.supervisor: the first stop signal raises Stop, later ones never
interrupt the shutdown; ExitWatcher wakes on a child's exit."""
import os
import signal
import subprocess
import sys

import pytest

from tools.supervisor import ExitWatcher, Shutdown, Stop

from ..support import WAIT


@pytest.fixture
def shutdown():
    repeats = []
    s = Shutdown(on_repeat=repeats.append).install()
    s.repeats_seen = repeats
    yield s
    s.restore()


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_Shutdown_first_signal_raises_stop_naming_it(shutdown, signum):
    """When the first of SIGINT, SIGTERM or SIGHUP arrives, Stop is raised
    where the main thread is, naming the signal, and stopping begins."""
    with pytest.raises(Stop) as e:
        signal.raise_signal(signum)
    assert e.value.name == signal.Signals(signum).name
    assert shutdown.stopping and shutdown.signum == signum


def test_Shutdown_second_signal_does_not_interrupt_the_stop(shutdown):
    """When SIGTERM follows SIGINT while stopping, nothing is raised: the
    repeat is only reported."""
    with pytest.raises(Stop):
        signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGINT)
    assert shutdown.repeats == 2
    assert shutdown.repeats_seen == [signal.SIGTERM, signal.SIGINT]


def test_Shutdown_after_begin_no_signal_raises(shutdown):
    """When a stop began for another reason (the router died), a signal only
    reports itself."""
    shutdown.begin()
    signal.raise_signal(signal.SIGHUP)
    assert shutdown.repeats_seen == [signal.SIGHUP] and shutdown.signum is None


def test_Shutdown_restore_puts_back_the_previous_handlers():
    """When restored, the handlers that were there before are back."""
    before = signal.getsignal(signal.SIGTERM)
    s = Shutdown().install()
    assert signal.getsignal(signal.SIGTERM) != before
    s.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def _child(code):
    return subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE)


def test_ExitWatcher_returns_the_child_that_exited():
    """When one of two watched children exits, wait() returns its key only
    (reaped), and keeps watching the other."""
    stays, ends = _child('import sys; sys.stdin.read()'), _child('import sys; sys.stdin.read()')
    watcher = ExitWatcher()
    try:
        watcher.add('stays', stays)
        watcher.add('ends', ends)
        ends.stdin.close()
        assert watcher.wait(WAIT) == ['ends']
        assert ends.returncode == 0
        assert watcher.keys() == ['stays']
    finally:
        watcher.close()
        for p in (stays, ends):
            p.kill()
            p.wait(WAIT)


def test_ExitWatcher_times_out_with_nothing_exited():
    """When nobody exits within the timeout, wait() returns an empty list."""
    p = _child('import sys; sys.stdin.read()')
    watcher = ExitWatcher()
    try:
        watcher.add('p', p)
        assert watcher.wait(0.05) == []
    finally:
        watcher.close()
        p.kill()
        p.wait(WAIT)


def test_ExitWatcher_wait_is_interrupted_by_a_stop_signal():
    """When a stop signal arrives while waiting, Stop propagates out of wait()."""
    p = _child('import sys; sys.stdin.read()')
    watcher = ExitWatcher()
    s = Shutdown().install()
    try:
        watcher.add('p', p)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        old = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        try:
            with pytest.raises(Stop):
                watcher.wait(WAIT)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    finally:
        s.restore()
        watcher.close()
        p.kill()
        p.wait(WAIT)
