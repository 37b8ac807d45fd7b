"""The agent of ``socs_style_agent.py`` migrated to the ocs_locking kit (after).

The same operations, parameters and replies on success. The lock is
``ocs_locking.TimeoutLock``; ``@locked`` replaces each task's prologue; a
``YieldingHold`` replaces the hand-written acquisition loop: it lends the lock
to a waiting task at once, whatever the sample period, and never when nobody
waits.

``device`` is any object with ``read()`` and ``set(value)`` methods.
"""
import time

from ocs import ocs_agent

from ocs_locking import TimeoutLock
from ocs_locking.ops import YieldingHold, locked


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
        self.acq_hold = YieldingHold(self.lock, retake_timeout=retake_timeout)

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
            session.data.update(value=self.device.read(), timestamp=time.time())
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
        self.device.set(params['value'])
        session.data = {'value': params['value']}
        return True, f"Value set to {params['value']}."

    @locked(timeout=3)
    def get_value(self, session, params):
        """get_value()

        **Task** - Read the device once, waiting up to 3 s for the lock.

        Notes:
            The reading is stored in session.data::

                >>> response.session['data']
                {'value': 0.5, 'timestamp': 1700000000.0}

        """
        value = self.device.read()
        session.data = {'value': value, 'timestamp': time.time()}
        return True, f'Value is {value}.'
