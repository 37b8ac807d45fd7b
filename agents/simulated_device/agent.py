"""SimulatedDeviceAgent: a thermometry controller over TCP, shared by a process
and tasks, written with the ocs_locking kit only.

* ``self.lock`` (a :class:`~ocs_locking.TimeoutLock`) decides who may talk to
  the device; ``@locked`` tasks take it, and the ``acq`` process holds it
  through a :class:`~ocs_locking.ops.YieldingHold` that lends it to waiting
  tasks between samples.
* ``self.worker`` (a :class:`~ocs_locking.worker.DeviceWorker`) owns the TCP
  driver: every device command runs on that one thread, whichever operation
  (worker thread or reactor) asks for it.
* A dropped connection is reported as "Device offline", never as lock
  contention; the driver reconnects on the next command, so the agent
  recovers when the device returns.
* With ``--site-lock PATH`` the device is shared with other agents: every
  device command also takes a site-wide lease on PATH from the
  LockRegistryAgent (a :class:`~ocs_locking.leases.sitelock.SiteLock`) and
  runs only under its guard, so two agents on one bridge never talk to it
  at once, and a lost lease means the command is refused, not sent. The
  guard is given the command's timeout (``--device-timeout``): a command
  starts only if it ends before the lease does. Each command carries the
  lease's fencing token, and the device refuses a token lower than one it
  has seen (a holder that wakes up late is refused by the device itself).
"""
import argparse
import math
import os
import time

import txaio
from ocs import ocs_agent, site_config
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from ocs_locking import TimeoutLock
from ocs_locking.events import report_locks
from ocs_locking.agents.simulated_device.driver import (DeviceError, DeviceOffline,
                                                        ThermometryClient)
from ocs_locking.ops import YieldingHold, locked
from ocs_locking.leases.sitelock import LeaseLost, LeaseUnavailable, SiteLock
from ocs_locking.worker import DeviceWorker

#: Seconds a task waits for the device lock.
TASK_TIMEOUT = 3.0
#: Seconds ``acq`` waits to take the lock back after lending it to a task.
RETAKE_TIMEOUT = 10.0
#: Query the device's collision counter every this many samples.
STATS_EVERY = 10
#: Largest ``--testing-wall-clock-offset``, seconds (a year).
MAX_CLOCK_OFFSET = 3.2e7


def shift_wall_clock(offset):
    """TESTING ONLY (``--testing-wall-clock-offset``): make this process's
    ``time.time()`` run ``offset`` seconds off the host's clock, as on a host
    whose clock is wrong; ``time.monotonic()`` is untouched. The fault tests
    use it to show that a SiteLock never judges its lease by a wall clock."""
    real = time.time
    time.time = lambda: real() + offset
    return real


class SimulatedDeviceAgent:
    """Agent for a simulated thermometry controller reached over TCP.

    Args:
        agent (OCSAgent): from ``ocs_agent.init_site_agent``.
        host (str): the device's address (loopback).
        port (int): the device's TCP port.
        timeout (float): seconds to wait for each device reply.
    """

    def __init__(self, agent, host='127.0.0.1', port=18101, timeout=2.0, site_lock=None,
                 site_lease=5.0):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock(name='hw')
        report_locks(agent, self.lock)      # lock events on this agent's 'locks' feed
        self.acq_hold = YieldingHold(self.lock, timeout=TASK_TIMEOUT,
                                     retake_timeout=RETAKE_TIMEOUT)
        self.driver = ThermometryClient(host, port, timeout=timeout)
        self.timeout = timeout
        self.worker = DeviceWorker('sim-device', on_stop=self.driver.close)
        self.worker.start()
        self.site_lock = None if site_lock is None else SiteLock(agent, site_lock,
                                                                  lease=site_lease)
        agent.register_feed('temperatures', record=True,
                            agg_params={'frame_length': 60}, buffer_time=1.)

    def shutdown(self):
        """Wake every waiter and stop the device thread (agent shutdown)."""
        self.lock.close()
        self.worker.stop()

    def _device(self, fn, *args):
        """Run one device command on the device thread (from a worker thread),
        under the site-wide lease when the device is shared: it starts only
        if it ends (its timeout) before the lease does, and carries the
        lease's fencing token."""
        if self.site_lock is None:
            return self.worker.call(fn, *args)
        if self.site_lock.token is not None:       # held for a while (take_site_lock)
            with self.site_lock.guard(timeout=self.timeout) as token:
                return self.worker.call(self._fenced, token, fn, *args)
        try:
            self.site_lock.acquire(timeout=TASK_TIMEOUT)
        except LeaseUnavailable as e:
            raise LeaseLost(f'site lock {self.site_lock.resource!r} not granted: {e}') from None
        try:
            with self.site_lock.guard(timeout=self.timeout) as token:
                return self.worker.call(self._fenced, token, fn, *args)
        finally:
            self.site_lock.release()

    def _fenced(self, token, fn, *args):
        """On the device thread: ``fn(*args)`` with its device commands
        carrying the fencing ``token``."""
        self.driver.token = token
        try:
            return fn(*args)
        finally:
            self.driver.token = None

    @inlineCallbacks
    def _device_deferred(self, fn, *args):
        """The reactor version of :meth:`_device`."""
        if self.site_lock is None:
            return (yield self.worker.call_deferred(fn, *args))
        if self.site_lock.token is not None:       # held for a while (take_site_lock)
            token = self.site_lock.check(timeout=self.timeout)
            return (yield self.worker.call_deferred(self._fenced, token, fn, *args))
        try:
            yield self.site_lock.acquire_deferred(TASK_TIMEOUT)
        except LeaseUnavailable as e:
            raise LeaseLost(f'site lock {self.site_lock.resource!r} not granted: {e}') from None
        try:
            token = self.site_lock.check(timeout=self.timeout)
            return (yield self.worker.call_deferred(self._fenced, token, fn, *args))
        finally:
            yield self.site_lock.release_deferred()

    @ocs_agent.param('rate', default=10., type=float, check=lambda r: 0 < r <= 100)
    @ocs_agent.param('test_mode', default=False, type=bool)
    def acq(self, session, params):
        """acq(rate=10., test_mode=False)

        **Process** - Sample every channel at ``rate`` Hz while holding the
        device lock, lending it to waiting tasks between samples.

        Parameters:
            rate (float, optional): samples per second, in (0, 100]. Default 10.
            test_mode (bool, optional): take one sample and exit.

        Notes:
            The latest sample, the device state and the lock state are kept
            in session.data::

                >>> response.session['data']
                {'timestamp': 1700000000.1,
                 'channels': {'ch00': 0.1, 'ch01': 0.11, 'ch02': 0.12, 'ch03': 0.13},
                 'samples': 42,
                 'device': 'online',
                 'collisions': 0,
                 'lock': {'holder': 'acq', 'session_id': 0, 'since': 1700000000.0,
                          'waiters': 0, 'handovers': 3}}

            While the device is unreachable ``device`` reads
            ``'offline: <reason>'`` and the session is marked degraded; the
            process keeps trying at every sample and recovers by itself.
        """
        offline = None
        for n in self.acq_hold.run(session, period=1.0 / params['rate']):
            try:
                reading = self._device(self.driver.read)
                if n % STATS_EVERY == 1:
                    session.data['collisions'] = self._device(self.driver.stats)['collisions']
            except LeaseLost as e:
                session.data['device'] = f'not ours: {e}'
                continue
            except DeviceError as e:    # the device refused this command
                session.data['device'] = f'error: {e}'
                continue
            except DeviceOffline as e:
                if offline is None:
                    self.log.warn('acq: device offline: {e}', e=e)
                offline = str(e)
                session.degraded = True
                session.data['device'] = f'offline: {e}'
                continue
            if offline is not None:
                self.log.info('acq: device back online')
                offline = None
                session.degraded = False
            session.data.update(reading, samples=n, device='online')
            self.agent.publish_to_feed('temperatures', {
                'timestamp': reading['timestamp'], 'block_name': 'temps',
                'data': reading['channels']})
            if params['test_mode']:
                break
        return self.acq_hold.result

    def _stop_acq(self, session, params):
        return self.acq_hold.stop()

    @ocs_agent.param('value', type=float, check=lambda v: 0 <= v <= 100)
    @locked(timeout=TASK_TIMEOUT)
    def set_heater(self, session, params):
        """set_heater(value)

        **Task** - Set the heater output, waiting up to 3 s for the device.

        Parameters:
            value (float): heater output in percent, 0 to 100.

        Notes:
            On success session.data holds the value the device reports::

                >>> response.session['data']
                {'heater': 42.0}

        """
        try:
            value = self._device(self.driver.set_heater, params['value'])
        except DeviceOffline as e:
            return False, f'Device offline: {e}'
        except DeviceError as e:
            return False, f'Device refused: {e}'
        except LeaseLost as e:
            return False, f'Site lock: {e}'
        session.data = {'heater': value}
        return True, f'Heater set to {value:g} %.'

    @ocs_agent.param('channel', default=None, type=int)
    @locked(timeout=TASK_TIMEOUT)
    @inlineCallbacks
    def get_reading(self, session, params):
        """get_reading(channel=None)

        **Task** - Read one channel (or all), waiting up to 3 s for the
        device. Runs in the reactor: it waits for the lock through
        ``acquire_deferred``, in the same queue as the thread operations.

        Parameters:
            channel (int, optional): channel number; all channels if omitted.

        Notes:
            The reading is stored in session.data::

                >>> response.session['data']
                {'timestamp': 1700000000.1, 'channels': {'ch00': 0.1}}

        """
        try:
            reading = yield self._device_deferred(self.driver.read, params['channel'])
        except DeviceOffline as e:
            return False, f'Device offline: {e}'
        except LeaseLost as e:
            return False, f'Site lock: {e}'
        except (DeviceError, ValueError) as e:
            return False, f'Device refused: {e}'
        session.data = reading
        return True, 'Read {} channel(s).'.format(len(reading['channels']))

    @locked(timeout=TASK_TIMEOUT)
    def reconnect(self, session, params):
        """reconnect()

        **Task** - Drop the device connection and connect again.

        Notes:
            On success session.data holds the device identity::

                >>> response.session['data']
                {'idn': 'OCSLOCK,SIMTHERM,bridge-1,1.0'}

        """
        try:
            self.worker.call(self.driver.reconnect)
            idn = self._device(self.driver.identify)
        except DeviceOffline as e:
            return False, f'Device offline: {e}'
        except LeaseLost as e:
            return False, f'Site lock: {e}'
        session.data = {'idn': idn}
        return True, f'Reconnected to {idn}.'


    def take_site_lock(self, session, params):
        """take_site_lock()

        **Task** - Take the site-wide lease (``--site-lock``) and keep it,
        renewed, until ``drop_site_lock``: the other agents sharing the
        device wait meanwhile. Device commands run under its guard.

        Notes:
            session.data holds the fencing token::

                >>> response.session['data']
                {'resource': 'lab/bridge-1', 'token': 12}

        """
        if self.site_lock is None:
            return False, 'This agent has no --site-lock.'
        if self.site_lock.token is not None:
            return False, f'Already holding {self.site_lock.resource!r} (token {self.site_lock.token}).'
        try:
            self.site_lock.acquire(timeout=TASK_TIMEOUT)
        except LeaseUnavailable as e:
            return False, f'Site lock {self.site_lock.resource!r} not granted: {e}'
        session.data = {'resource': self.site_lock.resource, 'token': self.site_lock.token}
        return True, f'Holding {self.site_lock.resource!r} (token {self.site_lock.token}).'

    def drop_site_lock(self, session, params):
        """drop_site_lock()

        **Task** - Give back the site-wide lease taken by ``take_site_lock``.
        """
        if self.site_lock is None or self.site_lock.token is None:
            return False, 'Not holding the site lock.'
        released = self.site_lock.release()
        return True, ('Released.' if released else 'The lease was already lost; forgotten.')


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group('Agent Options')
    pgroup.add_argument('--device-host', default='127.0.0.1',
                        help='Address of the simulated device (loopback).')
    pgroup.add_argument('--device-port', type=int, default=18101,
                        help='TCP port of the simulated device.')
    pgroup.add_argument('--device-timeout', type=float, default=2.0,
                        help='Seconds to wait for each device reply.')
    pgroup.add_argument('--mode', choices=['idle', 'acq'], default='acq',
                        help="Start the acq process at startup ('acq') or not.")
    pgroup.add_argument('--site-lock', default=None, metavar='PATH',
                        help='Share the device with other agents: take a site-wide lease '
                             'on PATH (e.g. satp1/bridge-1) from the lock registry for '
                             'every device command.')
    pgroup.add_argument('--site-lease', type=float, default=5.0,
                        help='Seconds of each site-wide lease (renewed while held).')
    # Testing only (docs/agents/simulated_device.rst): not in --help.
    pgroup.add_argument('--testing-wall-clock-offset', type=float, default=0.0,
                        help=argparse.SUPPRESS)
    return parser


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    parser = make_parser()
    args = site_config.parse_args(agent_class='SimulatedDeviceAgent',
                                  parser=parser, args=args)
    if not 1 <= args.device_port <= 65535:
        parser.error(f'--device-port must be 1..65535, not {args.device_port}')
    if not 0 < args.device_timeout <= 60:
        parser.error(f'--device-timeout must be in (0, 60] seconds, not {args.device_timeout}')
    offset = args.testing_wall_clock_offset
    if not (math.isfinite(offset) and abs(offset) <= MAX_CLOCK_OFFSET):
        parser.error(f'--testing-wall-clock-offset must be within +-{MAX_CLOCK_OFFSET:g} s, '
                     f'not {offset}')
    if offset:
        shift_wall_clock(offset)
    agent, runner = ocs_agent.init_site_agent(args)
    try:
        sim = SimulatedDeviceAgent(agent, host=args.device_host, port=args.device_port,
                                   timeout=args.device_timeout, site_lock=args.site_lock,
                                   site_lease=args.site_lease)
    except ValueError as e:     # a bad --site-lock path or --site-lease
        parser.error(str(e))
    agent.register_process('acq', sim.acq, sim._stop_acq, blocking=True,
                           startup=(args.mode == 'acq'))
    agent.register_task('set_heater', sim.set_heater, blocking=True)
    agent.register_task('get_reading', sim.get_reading, blocking=False)
    agent.register_task('reconnect', sim.reconnect, blocking=True)
    agent.register_task('take_site_lock', sim.take_site_lock, blocking=True)
    agent.register_task('drop_site_lock', sim.drop_site_lock, blocking=True)
    # Wake anything still waiting for the device when the agent shuts down.
    reactor.addSystemEventTrigger('before', 'shutdown', sim.shutdown)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
