"""The examples of the guide "Writing a locking agent" (docs/guide.rst).

The two agents of the guide, docs/examples/socs_style_agent.py (before) and
docs/examples/kit_agent.py (after), tested with ocs_locking.testing: no
router, no network, a fake device. The guide shows these tests as they are.
"""
import contextlib
import importlib.util
import os
import re
import threading

import pytest

from ocs_locking.testing import FakeSession, LockHog, LockProbe, mock_agent, run_op, start_op

WAIT = 10.0     # bound on every wait, in seconds

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        os.pardir, os.pardir, 'docs', 'examples')


def _load(name):
    """Import docs/examples/<name>.py (not a package) from its path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SocsStyleAgent = _load('socs_style_agent').SocsStyleAgent
KitAgent = _load('kit_agent').KitAgent


class FakeDevice:
    """A device with ``read()`` and ``set(value)``. Not thread-safe, like most
    drivers: it counts every time two threads are inside it at once."""

    def __init__(self, value=0.5):
        self.value = value
        self.values_set = []
        self.overlaps = 0
        self.sampled = threading.Event()    # set by the first read()
        self._inside = threading.Lock()     # never waited on: detects overlap

    @contextlib.contextmanager
    def _alone(self):
        if not self._inside.acquire(blocking=False):
            self.overlaps += 1
            raise RuntimeError('FakeDevice entered by two threads at once')
        try:
            yield
        finally:
            self._inside.release()

    def read(self):
        with self._alone():
            self.sampled.set()
            return self.value

    def set(self, value):
        with self._alone():
            self.value = value
            self.values_set.append(value)


@pytest.fixture
def device():
    dev = FakeDevice()
    yield dev
    assert dev.overlaps == 0, 'two threads were inside the device at once'


def test_KitAgent_task_gets_the_lock_while_acq_sleeps(device):
    """When set_value is issued while acq samples every 5 s, acq lends it the
    lock at once and the task succeeds; acq then takes the lock back."""
    kit = KitAgent(mock_agent(), device)
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 5.})
    probe.wait_for('acquired', job='acq')

    assert run_op(kit.set_value, {'value': 1.5}) == (True, 'Value set to 1.5.')
    probe.assert_acquired_within('set_value', 0.5)
    probe.wait_for('acquired', job='acq', n=2)      # acq took the lock back
    assert device.values_set == [1.5]

    assert acq.stop(kit._stop_acq) == (True, 'Requested stop.')
    ok, msg = acq.result()
    assert ok, msg


def test_SocsStyleAgent_task_times_out_while_acq_sleeps(device):
    """When set_value (3 s timeout) is issued just after acq took the lock
    with a 5 s sample period, it is refused: acq yields only once per sample
    (socs pull request #614)."""
    socs = SocsStyleAgent(mock_agent(), device)
    acq = start_op(socs.acq, {'sample_period': 5.})
    # LockProbe needs an ocs_locking lock; acq reads the device only while
    # it holds ocs's lock, so its first read says it holds it.
    assert device.sampled.wait(WAIT), 'acq did not sample'
    assert socs.lock.job == 'acq'

    assert run_op(socs.set_value, {'value': 1.5}) == (False, 'Could not acquire lock.')
    assert device.values_set == []

    assert acq.stop(socs._stop_acq) == (True, 'Requested to stop taking data.')
    assert acq.result() == (True, 'Acquisition exited cleanly.')  # once its sleep ends


def test_KitAgent_retake_failure_ends_acq_with_a_message(device):
    """When a task keeps the lock longer than acq's retake_timeout, acq ends
    with (False, message) saying it could not take the lock back, and who
    holds it."""
    kit = KitAgent(mock_agent(), device, retake_timeout=0.05)
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 60.})
    probe.wait_for('acquired', job='acq')

    with LockHog(kit.lock, job='long-task') as hog:
        hog.wait_holding()                  # acq lent it the lock
        ok, msg = acq.result()
    assert ok is False
    assert msg.startswith("Stopped: could not take the lock back within 0.05 s. "
                          "Could not acquire lock 'hw': held by 'long-task' for "), msg
    assert kit.lock.status().holder is None


def test_KitAgent_stop_while_waiting_to_retake_ends_acq_at_once(device):
    """When acq is stopped while it waits (up to 60 s) to take the lock back
    from a long task, it ends now, without the lock."""
    kit = KitAgent(mock_agent(), device, retake_timeout=60.)
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 60.})
    probe.wait_for('acquired', job='acq')

    with LockHog(kit.lock, job='long-task') as hog:
        hog.wait_holding()
        probe.wait_for('waiting', job='acq')    # acq queued to take it back
        assert acq.stop(kit._stop_acq) == (True, 'Requested stop.')
        assert acq.result(timeout=WAIT) == (True, 'Stopped on request after 1 samples.')
        assert kit.lock.job == 'long-task'      # the task was never disturbed
    assert kit.lock.status().waiters == ()


REFUSAL = re.compile(r"^Could not acquire lock 'hw': held by 'calibrate' \(session 12\) "
                     r"for \d+\.\d s; 0 waiting$")


def test_KitAgent_refusal_names_the_holder(device):
    """When the lock stays busy past set_value's 3 s, the task returns the
    standard refusal naming the lock, the holder and its session, for how
    long, and how many wait; the device is not touched."""
    kit = KitAgent(mock_agent(), device)
    assert kit.lock.acquire(0, job='calibrate', session_id=12)
    try:
        ok, msg = run_op(kit.set_value, {'value': 1.5})
    finally:
        kit.lock.release()
    assert ok is False
    assert REFUSAL.match(msg), msg
    assert device.values_set == []


def test_KitAgent_get_value_on_the_reactor_shares_the_queue(reactor_thread, device):
    """When get_value runs on the reactor (registered blocking=False) while
    acq samples every 5 s, it waits through acquire_deferred without blocking
    the reactor, and acq lends it the lock at once."""
    kit = KitAgent(mock_agent(), device)
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 5.})
    probe.wait_for('acquired', job='acq')

    done, out = threading.Event(), []

    def start():                            # on the reactor thread
        d = kit.get_value(FakeSession('get_value'), {})
        d.addBoth(out.append)
        d.addBoth(lambda _: done.set())
    reactor_thread.reactor.callFromThread(start)
    assert done.wait(WAIT), 'get_value did not finish'
    assert out == [(True, 'Value is 0.5.')]
    probe.assert_acquired_within('get_value', 0.5)

    acq.stop(kit._stop_acq)
    ok, msg = acq.result()
    assert ok, msg


def test_guide_diff_lines_are_in_the_example_files():
    """When the guide shows the migration as a diff, every '-' line is in
    socs_style_agent.py, every '+' line in kit_agent.py and every context
    line in both, so the diff cannot drift from the files it describes."""
    def lines(name):
        with open(os.path.join(EXAMPLES, name)) as f:
            return set(f.read().splitlines())
    before, after = lines('socs_style_agent.py'), lines('kit_agent.py')
    with open(os.path.join(EXAMPLES, os.pardir, 'guide.rst')) as f:
        guide = f.read().splitlines()
    starts = [i for i, line in enumerate(guide) if line == '.. code-block:: diff']
    assert starts, 'the guide shows no diff'
    checked = 0
    for start in starts:
        for line in guide[start + 1:]:
            if line and not line.startswith('   '):
                break                       # the end of the block
            line = line[3:]
            if not line.strip():
                continue
            sign, code = line[0], line[1:]
            wanted = {'-': [before], '+': [after], ' ': [before, after]}[sign]
            assert all(code in f for f in wanted), f'not in the example file(s): {line!r}'
            checked += 1
    assert checked > 20
