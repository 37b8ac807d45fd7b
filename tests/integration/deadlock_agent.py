"""A test agent whose operations take its locks and site leases in an order
the test chooses, step by step, so that cycles of waits can be closed on
purpose (for tests/integration/test_deadlock.py and
benchmarks/deadlock_bench.py; launched with ocs-agent-cli --agent/--entrypoint).

Two local locks, ``a`` and ``b``, and two SiteLocks, on ``dl/x`` and
``dl/y``, all reported on the agent's ``locks`` feed. Operations ``op1``,
``op2`` and ``op3`` (tasks, so they run at once, each in its own session)
all run :meth:`DeadlockAgent.step`: take ``first`` (a lock name or a
SiteLock ``x``/``y``), then wait until ``go`` is called for this
operation, then take ``then`` (up to ``timeout`` s), then let go of both.
``untangle`` ends every wait for a local lock at once (a Cancel).
"""
import os
import threading

import txaio
from ocs import ocs_agent, site_config
from twisted.internet import reactor

from ocs_locking import Cancel, TimeoutLock
from ocs_locking.events import report_locks
from ocs_locking.leases.sitelock import SiteLock

OPS = ('op1', 'op2', 'op3')


class DeadlockAgent:
    def __init__(self, agent):
        self.agent = agent
        self.locks = {'a': TimeoutLock(name='a'), 'b': TimeoutLock(name='b')}
        self.sites = {'x': SiteLock(agent, 'dl/x', lease=60, note='deadlock test'),
                      'y': SiteLock(agent, 'dl/y', lease=60, note='deadlock test')}
        report_locks(agent, *self.locks.values(), *self.sites.values())
        self.go_events = {op: threading.Event() for op in OPS}
        self.cancel = Cancel()

    def _take(self, name, timeout, op, sid):
        if name in self.locks:
            return self.locks[name].acquire(timeout=timeout, job=op, op=op, session_id=sid,
                                            cancel=self.cancel)
        try:
            self.sites[name].acquire(timeout=timeout, job=op, op=op, session_id=sid)
            return True
        except Exception:       # busy, timed out in the queue, refused
            return False

    def _let_go(self, name):
        if name in self.locks:
            self.locks[name].release()
        else:
            self.sites[name].release()

    @ocs_agent.param('first', type=str, choices=['a', 'b', 'x', 'y'])
    @ocs_agent.param('then', type=str, choices=['a', 'b', 'x', 'y'])
    @ocs_agent.param('timeout', default=30.0, type=float)
    def step(self, session, params):
        """step(first, then, timeout=30)

        **Task** - Take ``first``, wait for ``go``, take ``then``, let go."""
        op, sid = session.op_name, session.session_id
        if not self._take(params['first'], 10.0, op, sid):
            return False, f"could not take {params['first']}"
        try:
            session.data = {'first': params['first']}
            self.go_events[op].clear()
            if not self.go_events[op].wait(120):
                return False, 'never told to go'
            got = self._take(params['then'], params['timeout'], op, sid)
            if got:
                self._let_go(params['then'])
            return True, f"took {params['then']}" if got else f"gave up {params['then']}"
        finally:
            self._let_go(params['first'])

    @ocs_agent.param('op', type=str, choices=list(OPS))
    def go(self, session, params):
        """go(op)

        **Task** - Let ``op`` take its second lock."""
        self.go_events[params['op']].set()
        return True, f"{params['op']} goes"

    def untangle(self, session, params):
        """untangle()

        **Task** - End every wait for a local lock at once."""
        self.cancel.cancel()
        self.cancel = Cancel()
        return True, 'untangled'


def main(args=None):
    txaio.start_logging(level=os.environ.get('LOGLEVEL', 'info'))
    args = site_config.parse_args(agent_class='DeadlockAgent', args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    d = DeadlockAgent(agent)
    for op in OPS:
        agent.register_task(op, d.step, blocking=True)
    agent.register_task('go', d.go, blocking=True)
    agent.register_task('untangle', d.untangle, blocking=True)
    for lock in d.locks.values():
        reactor.addSystemEventTrigger('before', 'shutdown', lock.close)
    runner.run(agent, auto_reconnect=True)


if __name__ == '__main__':
    main()
