"""A WAMP caller in its own process, for the waiter fault tests.

``python -m tests.faults.wamp_caller URL REALM PROCEDURE KWARGS_JSON [COUNT]``
joins the realm, makes COUNT concurrent calls of PROCEDURE with the keyword
arguments KWARGS_JSON (each call's ``owner`` gets no suffix: they are one
client's requests), and prints one JSON line per event on stdout::

    {"event": "joined", "session": 123}
    {"event": "called", "i": 0, "t": <time.monotonic()>}
    {"event": "answer", "i": 0, "t": ..., "reply": {...}}
    {"event": "error", "i": 0, "t": ..., "error": "..."}

``t`` is this host's monotonic clock, which the test process shares. Lines
on stdin steer it: ``cancel`` cancels every call still out (a WAMP CANCEL),
``leave`` closes the session and exits; end of stdin leaves too. Killed
with SIGKILL, its TCP connection simply drops.
"""
import json
import os
import sys
import time

from autobahn.twisted.wamp import ApplicationRunner, ApplicationSession
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver


#: The events go to the original stdout; autobahn's log goes to stderr.
_EVENTS = os.fdopen(os.dup(1), 'w', buffering=1)
sys.stdout = sys.stderr


def say(**event):
    _EVENTS.write(json.dumps(event) + '\n')
    _EVENTS.flush()


class Commands(LineReceiver):
    delimiter = b'\n'

    def __init__(self, caller):
        self.caller = caller

    def lineReceived(self, line):
        command = line.decode().strip()
        if command == 'cancel':
            for d in list(self.caller.pending.values()):
                d.cancel()
        elif command == 'leave':
            self.caller.bye()

    def connectionLost(self, reason=None):
        self.caller.bye()


class Caller(ApplicationSession):
    procedure, kwargs, count = None, None, 1

    def onJoin(self, details):
        self.pending = {}
        say(event='joined', session=details.session)
        stdio.StandardIO(Commands(self))
        for i in range(self.count):
            d = self.call(self.procedure, **self.kwargs)
            self.pending[i] = d
            say(event='called', i=i, t=time.monotonic())
            d.addCallbacks(self._answer, self._error, callbackArgs=(i,), errbackArgs=(i,))

    def _answer(self, reply, i):
        self.pending.pop(i, None)
        say(event='answer', i=i, t=time.monotonic(), reply=reply)

    def _error(self, failure, i):
        self.pending.pop(i, None)
        say(event='error', i=i, t=time.monotonic(), error=failure.getErrorMessage())

    def bye(self):
        if self.is_attached():
            self.leave()

    def onDisconnect(self):
        if reactor.running:
            reactor.stop()


def main(argv=None):
    url, realm, procedure, kwargs, *rest = argv if argv is not None else sys.argv[1:]
    Caller.procedure, Caller.kwargs = procedure, json.loads(kwargs)
    Caller.count = int(rest[0]) if rest else 1
    ApplicationRunner(url, realm).run(Caller, auto_reconnect=False, log_level='warn')


if __name__ == '__main__':
    main()
