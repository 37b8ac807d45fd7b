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

from ocs_locking.testing import (LockHog, LockProbe, mock_agent, run_op, short_timeouts,
                                start_op)
from ocs_locking.worker import WorkerStopped

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
kit_agent = _load('kit_agent')
KitAgent = kit_agent.KitAgent


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


@pytest.fixture
def make_kit(device):
    """make_kit(**options) -> a KitAgent on the fake device, shut down after
    the test as the agent is at exit (lock closed, device thread stopped)."""
    made = []

    def make(**options):
        made.append(KitAgent(mock_agent(), device, **options))
        return made[-1]
    yield make
    for kit in made:
        kit.shutdown()


def test_KitAgent_task_gets_the_lock_while_acq_sleeps(make_kit, device):
    """When set_value is issued while acq samples every 5 s, acq lends it the
    lock at once and the task succeeds; acq then takes the lock back."""
    kit = make_kit()
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 5.})
    probe.wait_for('acquired', job='acq')

    assert run_op(kit.set_value, {'value': 1.5}) == (True, 'Value set to 1.5.')
    probe.assert_acquired_within('set_value', 2.0)     # not at the next sample, 5 s away
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


def test_KitAgent_retake_failure_ends_acq_with_a_message(make_kit):
    """When a task keeps the lock longer than acq's retake_timeout, acq ends
    with (False, message) saying it could not take the lock back, and who
    holds it."""
    kit = make_kit(retake_timeout=0.05)
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


def test_KitAgent_stop_while_waiting_to_retake_ends_acq_at_once(make_kit):
    """When acq is stopped while it waits (up to 60 s) to take the lock back
    from a long task, it ends now, without the lock."""
    kit = make_kit(retake_timeout=60.)
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


def test_KitAgent_refusal_names_the_holder(make_kit, device):
    """When the lock stays busy past set_value's timeout, the task returns the
    standard refusal naming the lock, the holder and its session, for how
    long, and how many wait; the device is not touched. (short_timeouts cuts
    the task's 3 s wait to 0.05 s: the test does not wait the 3 s out.)"""
    kit = make_kit()
    assert kit.lock.acquire(0, job='calibrate', session_id=12)
    try:
        with short_timeouts(kit.lock, 0.05):
            ok, msg = run_op(kit.set_value, {'value': 1.5})
    finally:
        kit.lock.release()
    assert ok is False
    assert REFUSAL.match(msg), msg
    assert device.values_set == []


def test_KitAgent_get_value_on_the_reactor_shares_the_queue(reactor_thread, make_kit):
    """When get_value runs on the reactor (registered blocking=False) while
    acq samples every 5 s, it waits through acquire_deferred without blocking
    the reactor, and acq lends it the lock at once; the device is read on
    the device thread."""
    kit = make_kit()
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 5.})
    probe.wait_for('acquired', job='acq')

    assert reactor_thread.run_op(kit.get_value, timeout=WAIT) == (True, 'Value is 0.5.')
    probe.assert_acquired_within('get_value', 2.0)

    acq.stop(kit._stop_acq)
    ok, msg = acq.result()
    assert ok, msg


def test_KitAgent_reports_its_lock_on_the_locks_feed(make_kit):
    """When the agent is built, its lock is reported: the agent registers the
    'locks' feed (unrecorded), so a lock registry and `ocs-locks status` see
    it (the integration test sees the row itself)."""
    agent = mock_agent()
    kit = KitAgent(agent, FakeDevice())
    try:
        feeds = [c.args[0] for c in agent.register_feed.call_args_list]
        assert feeds == ['locks']
        assert agent.register_feed.call_args.kwargs['record'] is False
    finally:
        kit.shutdown()


def test_KitAgent_device_calls_run_on_one_thread(make_kit, device):
    """When acq, set_value (pool thread) and get_value (reactor) all use the
    device, every call runs on the agent's one device thread."""
    kit = make_kit()
    threads = []
    read, write = device.read, device.set
    device.read = lambda: threads.append(threading.current_thread().name) or read()
    device.set = lambda v: threads.append(threading.current_thread().name) or write(v)
    probe = LockProbe(kit.lock)
    acq = start_op(kit.acq, {'sample_period': 60.})
    probe.wait_for('acquired', job='acq')
    assert run_op(kit.set_value, {'value': 2.0}) == (True, 'Value set to 2.0.')
    acq.stop(kit._stop_acq)
    assert acq.result()[0] is True
    assert len(threads) == 2 and set(threads) == {'DeviceWorker-kit-device'}, threads


def test_KitAgent_shutdown_refuses_waiting_and_new_tasks_with_a_reason(make_kit, device):
    """When the agent shuts down while a task waits for the lock, the task is
    refused at once with the 'closed' refusal (not after its 3 s), later
    tasks too, and the device thread takes no more calls."""
    kit = make_kit()
    probe = LockProbe(kit.lock)
    with LockHog(kit.lock, job='calibrate') as hog:
        hog.wait_holding()
        waiting = start_op(kit.set_value, {'value': 1.5})
        probe.wait_for('waiting', job='set_value')
        kit.shutdown()
        closed = ("Could not acquire lock 'hw': it is closed (the agent is shutting down)")
        assert waiting.result() == (False, closed)
        assert run_op(kit.set_value, {'value': 2.5}) == (False, closed)
    with pytest.raises(WorkerStopped):
        kit.worker.call(device.read)
    assert device.values_set == []


def test_kit_agent_parser_has_the_agent_options():
    """When the example's make_parser() parses its agent options, --value and
    --mode have their documented defaults, and a bad --mode is refused."""
    parser = kit_agent.make_parser()
    opts = parser.parse_args([])
    assert (opts.value, opts.mode) == (0.5, 'acq')
    assert parser.parse_args(['--value', '2', '--mode', 'idle']).mode == 'idle'
    with pytest.raises(SystemExit):
        parser.parse_args(['--mode', 'fast'])


def test_OneValueDevice_refuses_a_second_thread():
    """When the example's stand-in driver is entered by a second thread while
    in use, it raises instead of answering (as a real driver might corrupt
    its state), which the agent's DeviceWorker prevents."""
    dev = kit_agent.OneValueDevice(1.0)
    assert dev.read() == 1.0
    dev.set(2.0)
    assert dev.read() == 2.0
    assert dev._inside.acquire(blocking=False)      # another thread is inside
    try:
        with pytest.raises(RuntimeError, match='^OneValueDevice used from two threads at once$'):
            dev.read()
    finally:
        dev._inside.release()


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
