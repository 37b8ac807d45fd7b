"""An agent written the way many socs agents are today (before the migration).

It shares one device between an ``acq`` process and two tasks with
``ocs.ocs_twisted.TimeoutLock``: every task repeats the same lock prologue,
and ``acq`` hands the lock over by hand, once per loop, with
``release_and_acquire``. With a 5 s sample period it yields only every 5 s,
while the tasks wait 3 s: most tasks fail (socs pull request #614).

``device`` is any object with ``read()`` and ``set(value)`` methods.
"""
import time

from ocs import ocs_agent
from ocs.ocs_twisted import TimeoutLock


class SocsStyleAgent:
    """Agent for a one-value device, shared by a process and two tasks.

    Args:
        agent (OCSAgent): from ``ocs_agent.init_site_agent``.
        device: the device driver, with ``read()`` and ``set(value)``.
    """

    def __init__(self, agent, device):
        self.agent = agent
        self.log = agent.log
        self.device = device
        self.lock = TimeoutLock()
        self.take_data = False

    @ocs_agent.param('sample_period', default=5., type=float, check=lambda p: p > 0)
    def acq(self, session, params):
        """acq(sample_period=5.)

        **Process** - Read the device every ``sample_period`` seconds while
        holding the lock, releasing it once per sample so tasks can run.

        Parameters:
            sample_period (float, optional): seconds between samples.
                Default 5.

        Notes:
            The latest sample is kept in session.data::

                >>> response.session['data']
                {'value': 0.5, 'timestamp': 1700000000.0}

        """
        with self.lock.acquire_timeout(timeout=0, job='acq') as acquired:
            if not acquired:
                self.log.warn("Could not start acq because "
                              f"{self.lock.job} is already running")
                return False, "Could not acquire lock."

            last_release = time.time()
            self.take_data = True
            while self.take_data:
                # Relinquish the lock now and then so that tasks can run.
                if time.time() - last_release > 1.:
                    last_release = time.time()
                    if not self.lock.release_and_acquire(timeout=10):
                        self.log.warn("Could not re-acquire lock now held by "
                                      f"{self.lock.job}.")
                        return False, "Could not re-acquire lock."

                session.data = {'value': self.device.read(),
                                'timestamp': time.time()}
                time.sleep(params['sample_period'])

        return True, 'Acquisition exited cleanly.'

    def _stop_acq(self, session, params):
        if self.take_data:
            self.take_data = False
            return True, 'Requested to stop taking data.'
        return False, 'acq is not currently running.'

    @ocs_agent.param('value', type=float)
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
        with self.lock.acquire_timeout(timeout=3, job='set_value') as acquired:
            if not acquired:
                self.log.warn("Could not start Task because "
                              f"{self.lock.job} is already running")
                return False, "Could not acquire lock."

            self.device.set(params['value'])
        session.data = {'value': params['value']}
        return True, f"Value set to {params['value']}."

    def get_value(self, session, params):
        """get_value()

        **Task** - Read the device once, waiting up to 3 s for the lock.

        Notes:
            The reading is stored in session.data::

                >>> response.session['data']
                {'value': 0.5, 'timestamp': 1700000000.0}

        """
        with self.lock.acquire_timeout(timeout=3, job='get_value') as acquired:
            if not acquired:
                self.log.warn("Could not start Task because "
                              f"{self.lock.job} is already running")
                return False, "Could not acquire lock."

            value = self.device.read()
        session.data = {'value': value, 'timestamp': time.time()}
        return True, f'Value is {value}.'
