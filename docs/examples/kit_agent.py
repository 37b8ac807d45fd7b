"""The agent of ``socs_style_agent.py`` migrated to the ocs_locking kit (after).

The same operations, parameters and replies on success. The lock is
``ocs_locking.TimeoutLock``; ``@locked`` replaces each task's prologue; a
``YieldingHold`` replaces the hand-written acquisition loop: it lends the lock
to a waiting task at once, whatever the sample period, and never when nobody
waits. ``report_locks`` publishes the lock's events, so the lock registry and
``ocs-locks status`` show it; a ``DeviceWorker`` is the one thread that talks
to the device; the lock is closed and the worker stopped at shutdown.

``device`` is any object with ``read()`` and ``set(value)`` methods.
:func:`main` runs the agent on :class:`OneValueDevice`, an in-memory
stand-in for a driver. The agent is not part of a plugin, so ocs-agent-cli
is told where it is::

    ocs-agent-cli --agent docs/examples/kit_agent.py --entrypoint main \\
        --site-file run/site.yaml --site-host demo --instance-id kit-1

with an instance ``{'agent-class': 'KitAgent', 'instance-id': 'kit-1'}``
listed under that host of the site config.
"""
import argparse
import os
import threading
import time

import txaio
from ocs import ocs_agent, site_config
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from ocs_locking import TimeoutLock
from ocs_locking.events import report_locks
from ocs_locking.ops import YieldingHold, locked
from ocs_locking.worker import DeviceWorker


class OneValueDevice:
    """A device that holds one value: a stand-in for your driver.

    Like most drivers it must not be used from two threads at once (it
    raises ``RuntimeError`` if it is); the agent's ``DeviceWorker`` makes
    sure it never is.

    Args:
        value (float): the value it starts with.
    """

    def __init__(self, value=0.5):
        self.value = value
        self._inside = threading.Lock()     # never waited on: detects a second thread

    def _enter(self):
        if not self._inside.acquire(blocking=False):
            raise RuntimeError('OneValueDevice used from two threads at once')

    def read(self):
        self._enter()
        try:
            return self.value
        finally:
            self._inside.release()

    def set(self, value):
        self._enter()
        try:
            self.value = value
        finally:
            self._inside.release()


class KitAgent:
    """Agent for a one-value device, shared by a process and two tasks.

    Args:
        agent (OCSAgent): from ``ocs_agent.init_site_agent``.
        device: the device driver, with ``read()`` and ``set(value)``.
        retake_timeout (float): seconds ``acq`` waits to take the lock back
            after lending it to a task.
    """

    def __init__(self, agent, device, retake_timeout=10.):
        self.agent = agent
        self.log = agent.log
        self.device = device
        self.lock = TimeoutLock(name='hw')
        report_locks(agent, self.lock)      # lock events on this agent's 'locks' feed
        self.acq_hold = YieldingHold(self.lock, retake_timeout=retake_timeout)
        self.worker = DeviceWorker('kit-device')    # the one thread that talks to it
        self.worker.start()

    def shutdown(self):
        """Wake every waiter and stop the device thread (agent shutdown)."""
        self.lock.close()
        self.worker.stop()

    @ocs_agent.param('sample_period', default=5., type=float, check=lambda p: p > 0)
    def acq(self, session, params):
        """acq(sample_period=5.)

        **Process** - Read the device every ``sample_period`` seconds while
        holding the lock, lending it to waiting tasks between samples.

        Parameters:
            sample_period (float, optional): seconds between samples.
                Default 5.

        Notes:
            The latest sample and the lock state are kept in session.data::

                >>> response.session['data']
                {'value': 0.5, 'timestamp': 1700000000.0,
                 'lock': {'holder': 'acq', 'session_id': 0, 'since': 1699999990.0,
                          'waiters': 0, 'handovers': 2}}

        """
        for _ in self.acq_hold.run(session, period=params['sample_period']):
            value = self.worker.call(self.device.read)
            session.data.update(value=value, timestamp=time.time())
        return self.acq_hold.result

    def _stop_acq(self, session, params):
        return self.acq_hold.stop()

    @ocs_agent.param('value', type=float)
    @locked(timeout=3)
    def set_value(self, session, params):
        """set_value(value)

        **Task** - Set the device's value, waiting up to 3 s for the lock.

        Parameters:
            value (float): the new value.

        Notes:
            On success session.data holds the value set::

                >>> response.session['data']
                {'value': 0.5}

        """
        self.worker.call(self.device.set, params['value'])
        session.data = {'value': params['value']}
        return True, f"Value set to {params['value']}."

    @locked(timeout=3)
    @inlineCallbacks
    def get_value(self, session, params):
        """get_value()

        **Task** - Read the device once, waiting up to 3 s for the lock.
        Runs on the reactor (registered with ``blocking=False``).

        Notes:
            The reading is stored in session.data::

                >>> response.session['data']
                {'value': 0.5, 'timestamp': 1700000000.0}

        """
        value = yield self.worker.call_deferred(self.device.read)
        session.data = {'value': value, 'timestamp': time.time()}
        return True, f'Value is {value}.'


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group('Agent Options')
    pgroup.add_argument('--value', type=float, default=0.5,
                        help='The value the device starts with.')
    pgroup.add_argument('--mode', choices=['idle', 'acq'], default='acq',
                        help="Start the acq process at startup ('acq') or not.")
    return parser


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    parser = make_parser()
    args = site_config.parse_args(agent_class='KitAgent', parser=parser, args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    kit = KitAgent(agent, OneValueDevice(args.value))
    agent.register_process('acq', kit.acq, kit._stop_acq, blocking=True,
                           startup=(args.mode == 'acq'))
    agent.register_task('set_value', kit.set_value, blocking=True)
    agent.register_task('get_value', kit.get_value, blocking=False)
    # Wake anything still waiting for the device when the agent shuts down.
    reactor.addSystemEventTrigger('before', 'shutdown', kit.shutdown)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
