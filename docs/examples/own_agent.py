"""An agent of your own beside the demo: not part of any OCS plugin.

The demo site starts it with ``ocs-agent-cli --agent own_agent.py --entrypoint
main`` (see ``own_agent_site.yaml``). It shares one counter between tasks
through a :class:`~ocs_locking.TimeoutLock` and reports that lock to the lock
registry, so it shows up in ``ocs-locks status`` like the demo's devices.
"""
import argparse
import os
import time

import txaio
from ocs import ocs_agent, site_config
from twisted.internet import reactor

from ocs_locking import TimeoutLock
from ocs_locking.events import report_locks
from ocs_locking.ops import locked


class CounterAgent:
    """A counter that one task at a time may change.

    Args:
        agent (OCSAgent): from ``ocs_agent.init_site_agent``.
        step_time (float): seconds each ``bump`` holds the lock.
    """

    def __init__(self, agent, step_time=0.1):
        self.agent = agent
        self.log = agent.log
        self.step_time = step_time
        self.count = 0
        self.lock = TimeoutLock(name='counter')
        report_locks(agent, self.lock)      # lock events on this agent's 'locks' feed

    def shutdown(self):
        """Wake every waiter (agent shutdown)."""
        self.lock.close()

    @ocs_agent.param('by', default=1, type=int, check=lambda n: 1 <= n <= 1000)
    @locked(timeout=3)
    def bump(self, session, params):
        """bump(by=1)

        **Task** - Add ``by`` to the counter, holding the lock ``counter``
        for ``step_time`` seconds; waits up to 3 s for it.

        Parameters:
            by (int, optional): how much to add, 1..1000. Default 1.

        Notes:
            The new value is stored in session.data::

                >>> response.session['data']
                {'count': 3}

        """
        time.sleep(self.step_time)
        self.count += params['by']
        session.data = {'count': self.count}
        return True, f'Counter is {self.count}.'


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group('Agent Options')
    pgroup.add_argument('--step-time', type=float, default=0.1,
                        help='Seconds each bump holds the lock.')
    return parser


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    parser = make_parser()
    args = site_config.parse_args(agent_class='CounterAgent', parser=parser, args=args)
    if not 0 <= args.step_time <= 10:
        parser.error(f'--step-time must be in 0..10 seconds, not {args.step_time}')
    agent, runner = ocs_agent.init_site_agent(args)
    counter = CounterAgent(agent, step_time=args.step_time)
    agent.register_task('bump', counter.bump, blocking=True)
    reactor.addSystemEventTrigger('before', 'shutdown', counter.shutdown)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
