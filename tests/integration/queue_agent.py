"""A test agent whose lock is held until told, so that tasks queue behind it
in a known order (for the queue tests; launched with ocs-agent-cli
--agent/--entrypoint like docs/examples/kit_agent.py).

``hold`` (process) takes the lock and keeps it until stopped; ``first``
and ``second`` (tasks: two operations, as OCS runs one session of an
operation at a time) wait up to 120 s for the lock, then return at once.
"""
import os
import threading

import txaio
from ocs import ocs_agent, site_config
from twisted.internet import reactor

from ocs_locking import TimeoutLock
from ocs_locking.events import report_locks
from ocs_locking.ops import locked


class QueueAgent:
    def __init__(self, agent):
        self.agent = agent
        self.lock = TimeoutLock(name='hw')
        report_locks(agent, self.lock)
        self._stop = threading.Event()

    def hold(self, session, params):
        """hold()

        **Process** - Hold the lock until stopped."""
        self._stop.clear()
        if not self.lock.acquire(timeout=30, job='hold', op='hold',
                                 session_id=session.session_id):
            return False, 'could not take the lock'
        try:
            session.data = {'held': True}
            self._stop.wait(600)
        finally:
            self.lock.release()
        return True, 'released'

    def _stop_hold(self, session, params):
        self._stop.set()
        return True, 'stopping'

    @locked(timeout=120)
    def step(self, session, params):
        """step()

        **Task** - Wait for the lock (up to 120 s), then return."""
        return True, 'stepped'


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    args = site_config.parse_args(agent_class='QueueAgent', args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    q = QueueAgent(agent)
    agent.register_process('hold', q.hold, q._stop_hold, blocking=True)
    agent.register_task('first', q.step, blocking=True)
    agent.register_task('second', q.step, blocking=True)
    reactor.addSystemEventTrigger('before', 'shutdown', q.lock.close)
    runner.run(agent, auto_reconnect=True)
