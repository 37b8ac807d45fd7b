"""SimulatedDeviceAgent: a thermometry controller shared by a process and tasks.

The ``acq`` process samples at ``rate`` Hz while holding the device lock and
hands it to waiting tasks between samples (``release_and_acquire``); the tasks
take the same lock with a 3 s timeout. ``set_heater`` waits in a worker thread,
``get_reading`` waits on the reactor through ``acquire_deferred``: both join one
FIFO queue.
"""
import argparse
import os
import time

import txaio
from ocs import ocs_agent, site_config
from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks

from ocs_locking import TimeoutLock
from ocs_locking.agents.simulated_device.device import SimulatedThermometry

#: Seconds a task waits for the device lock.
TASK_TIMEOUT = 3.0
#: Seconds ``acq`` waits to take the lock back after letting tasks in.
RETAKE_TIMEOUT = 10.0


class SimulatedDeviceAgent:
    """Agent for a simulated thermometry controller.

    Args:
        agent (OCSAgent): the agent object from ``ocs_agent.init_site_agent``.
        channels (int): number of thermometer channels.
        latency (float): seconds each device command takes.
    """

    def __init__(self, agent, channels=4, latency=0.002):
        self.agent = agent
        self.log = agent.log
        self.device = SimulatedThermometry(channels=channels, latency=latency)
        self.lock = TimeoutLock(name='hw')
        self.take_data = False
        agent.register_feed('temperatures', record=True,
                            agg_params={'frame_length': 60}, buffer_time=1.)

    def _refusal(self, what):
        return False, f'Could not {what}: lock {self.lock.status().describe()}'

    @ocs_agent.param('rate', default=10., type=float, check=lambda r: 0 < r <= 100)
    @ocs_agent.param('test_mode', default=False, type=bool)
    def acq(self, session, params):
        """acq(rate=10., test_mode=False)

        **Process** - Sample every channel at ``rate`` Hz, holding the device
        lock and handing it to waiting tasks between samples.

        Parameters:
            rate (float, optional): samples per second, in (0, 100]. Default 10.
            test_mode (bool, optional): take one sample and exit.

        Notes:
            The latest sample and the lock state are kept in session.data::

                >>> response.session['data']
                {'timestamp': 1700000000.1,
                 'channels': {'ch00': 0.1, 'ch01': 0.11, 'ch02': 0.12, 'ch03': 0.13},
                 'samples': 42,
                 'collisions': 0,
                 'lock': "'hw' held by 'acq' (session 0) for 4.2 s; 0 waiting"}

        """
        period = 1.0 / params['rate']
        with self.lock.acquire_timeout(0, job='acq', op='acq',
                                       session_id=session.session_id) as acquired:
            if not acquired:
                return self._refusal('start acq')
            session.set_status('running')
            self.take_data = True
            samples = 0
            next_sample = time.monotonic()
            while self.take_data:
                reading = self.device.read()
                samples += 1
                session.data.update(reading)
                session.data.update(samples=samples, collisions=self.device.collisions,
                                    lock=self.lock.status().describe())
                self.agent.publish_to_feed('temperatures', {
                    'timestamp': reading['timestamp'],
                    'block_name': 'temps',
                    'data': reading['channels']})
                if params['test_mode']:
                    break
                next_sample += period
                delay = next_sample - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_sample = time.monotonic()
                # Let every waiting task in, then take the lock back.
                if not self.lock.release_and_acquire(timeout=RETAKE_TIMEOUT):
                    return False, (f'acq stopped: could not take the lock back within '
                                   f'{RETAKE_TIMEOUT:g} s; {self.lock.status().describe()}')
        return True, f'Acquisition exited cleanly after {samples} samples.'

    def _stop_acq(self, session, params):
        if not self.take_data:
            return False, 'acq is not running.'
        self.take_data = False
        session.set_status('stopping')
        return True, 'Requested acq to stop.'

    @ocs_agent.param('value', type=float, check=lambda v: 0 <= v <= 100)
    def set_heater(self, session, params):
        """set_heater(value)

        **Task** - Set the heater output, waiting up to 3 s for the device.

        Parameters:
            value (float): heater output in percent, 0 to 100.

        Notes:
            On success session.data holds the value set::

                >>> response.session['data']
                {'heater': 42.0, 'waited': 0.05}

        """
        t0 = time.monotonic()
        with self.lock.acquire_timeout(TASK_TIMEOUT, job='set_heater', op='set_heater',
                                       session_id=session.session_id) as acquired:
            if not acquired:
                return self._refusal('set heater')
            waited = time.monotonic() - t0
            value = self.device.set_heater(params['value'])
        session.data = {'heater': value, 'waited': waited}
        return True, f'Heater set to {value:g} % (waited {waited:.3f} s for the lock).'

    @ocs_agent.param('channel', default=None, type=int)
    @inlineCallbacks
    def get_reading(self, session, params):
        """get_reading(channel=None)

        **Task** - Read one channel (or all), waiting up to 3 s for the device.
        Runs in the reactor: it waits through ``acquire_deferred`` in the same
        queue as the thread-based operations.

        Parameters:
            channel (int, optional): channel number; all channels if omitted.

        Notes:
            The reading is stored in session.data::

                >>> response.session['data']
                {'timestamp': 1700000000.1, 'channels': {'ch00': 0.1}}

        """
        channel = params['channel']
        if channel is not None and not 0 <= channel < self.device.channels:
            return False, (f'channel must be in 0..{self.device.channels - 1}, '
                           f'not {channel}')
        acquired = yield self.lock.acquire_deferred(
            TASK_TIMEOUT, job='get_reading', op='get_reading', session_id=session.session_id)
        if not acquired:
            return self._refusal('read the device')
        try:
            reading = yield threads.deferToThread(self.device.read, channel)
        finally:
            self.lock.release()
        session.data = reading
        return True, 'Read {} channel(s).'.format(len(reading['channels']))


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group('Agent Options')
    pgroup.add_argument('--channels', type=int, default=4,
                        help='Number of simulated thermometer channels (1..64).')
    pgroup.add_argument('--latency', type=float, default=0.002,
                        help='Seconds each device command takes (0..10).')
    pgroup.add_argument('--mode', choices=['idle', 'acq'], default='acq',
                        help="Start the acq process at startup ('acq') or not.")
    return parser


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    parser = make_parser()
    args = site_config.parse_args(agent_class='SimulatedDeviceAgent',
                                  parser=parser, args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    try:
        sim = SimulatedDeviceAgent(agent, channels=args.channels, latency=args.latency)
    except ValueError as e:
        parser.error(str(e))
    agent.register_process('acq', sim.acq, sim._stop_acq, blocking=True,
                           startup=(args.mode == 'acq'))
    agent.register_task('set_heater', sim.set_heater, blocking=True)
    agent.register_task('get_reading', sim.get_reading, blocking=False)
    # Wake anything still waiting for the device when the agent shuts down.
    reactor.addSystemEventTrigger('before', 'shutdown', sim.lock.close)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
