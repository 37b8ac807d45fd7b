"""``ocs-locks watch``: a live table from the registry's ownership feed.

The table starts from an HTTP snapshot, then follows the ``ownership``
feed over WAMP. How it ends:

* Ctrl-C, SIGTERM, SIGHUP, or ``--count`` updates: exit 0, nothing on stderr;
* the router unreachable or lost: one line on stderr, exit 1;
* stdout closed (``| head``): exit 0, nothing on stderr.

The reactor runs without Twisted's own signal handlers: ours are always
installed (see :mod:`.signals`) and stop the reactor once, so a second
signal during shutdown is ignored rather than met with ``ReactorNotRunning``.

Once the reactor has run, :func:`ocs_locking.cli.main` ends the process at
once (``os._exit``, after flushing stdout and stderr): the reactor cannot
run again anyway, and tearing down the interpreter with ocs, Twisted and
autobahn loaded took more than a second on a busy machine, too slow for a
watch stopped by Ctrl-C or by a supervisor.
"""
import sys
import time

from ..errors import CliError
from ..wamp import set_nodelay
from ..wire import OWNERSHIP_FEED, OWNERSHIP_KINDS, error_reason, feed_topic, one_line
from .formatters import RECEIVED, format_table
from .signals import Interrupter, on_ending
from .site import load_site
from .status import fetch_rows

__all__ = ['cmd_watch', 'apply_message', 'Watch']

#: True once a watch has run the (global, not restartable) reactor.
reactor_ran = False


def apply_message(rows, message, received=None):
    """Apply one ownership-feed message to ``rows`` (lock -> row) in place.

    A ``snapshot`` replaces the table; a ``change`` updates its rows and
    drops the locks listed in ``removed``. Each new row is marked with
    ``received`` (this process's monotonic clock; default: now), from which
    "held for" counts on. Returns False (``rows`` untouched) for anything
    that is not an ownership message.
    """
    if not isinstance(message, dict) or message.get('kind') not in OWNERSHIP_KINDS:
        return False
    new = message.get('rows', [])
    removed = message.get('removed', [])
    if not isinstance(new, list) or not isinstance(removed, list) or \
            not all(isinstance(r, dict) and isinstance(r.get('lock'), str) for r in new):
        return False
    if message['kind'] == 'snapshot':
        rows.clear()
    for key in removed:
        rows.pop(key, None)
    received = time.monotonic() if received is None else received
    for row in new:
        rows[row['lock']] = dict(row, **{RECEIVED: received})
    return True


class Watch:
    """One run of the watch on ``reactor``: draws ``rows`` to ``out``."""

    def __init__(self, reactor, url, realm, topic, rows, out, count=None, clear=True,
                 header=None):
        self.reactor = reactor
        self.url, self.realm, self.topic = url, realm, topic
        self.rows = rows
        self.out = out
        self.count, self.clear, self.header = count, clear, header
        self.updates = 0
        self.code = None        # the exit status, once decided
        self.error = None       # the one line to print, if it failed
        self._stopping = False
        self._ticker = None
        self._connect_error = None

    def end(self, code, error=None):
        """Decide the outcome (the first decision wins) and stop the reactor once."""
        if self.code is None:
            self.code, self.error = code, error
        if self._stopping:
            return
        self._stopping = True
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        from twisted.internet.error import ReactorNotRunning
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def draw(self):
        if self._stopping:
            return
        text = format_table(sorted(self.rows.values(), key=lambda r: r['lock']))
        header = f'{self.header}\n' if self.header else ''
        try:
            if self.clear:
                self.out.write('\x1b[H\x1b[2J')
            self.out.write(f'{header}ocs-locks watch  {self.topic}  '
                           f'{time.strftime("%H:%M:%S")}\n{text}\n\n')
            self.out.flush()
        except OSError:         # stdout closed (| head, terminal gone): end quietly
            self.end(0)

    def on_message(self, *args):
        if not args or not isinstance(args[0], list) or not args[0] or \
                not apply_message(self.rows, args[0][0]):
            return          # not an ownership message; keep the table as it is
        self.updates += 1
        self.draw()
        if self.count is not None and self.updates >= self.count:
            self.end(0)

    def start(self):
        from autobahn.twisted.component import Component
        from twisted.internet import task
        comp = Component(transports=[{'url': self.url, 'max_retries': 0}], realm=self.realm)

        @comp.on_join
        def joined(session, details):
            set_nodelay(session)
            self.draw()
            if self._ticker is None and not self._stopping:
                # Keep "held for" current between messages.
                self._ticker = task.LoopingCall(self.draw)
                self._ticker.clock = self.reactor
                self._ticker.start(1.0, now=False)
            return session.subscribe(self.on_message, self.topic)

        @comp.on_disconnect
        def lost(session, was_clean):
            self.end(1, f'lost the connection to the router at {self.url}')

        @comp.on_connectfailure
        def failed(comp_, err):
            self._connect_error = error_reason(err)

        def ended(result):
            reason = self._connect_error or (error_reason(result.value)
                                             if hasattr(result, 'value') else 'it went away')
            self.end(1, f'cannot connect to the router at {self.url}: {reason}')
        comp.start(self.reactor).addBoth(
            lambda r: None if self._stopping else ended(r))

    def run(self):
        """Run the reactor until the watch ends; returns the exit status or
        raises CliError with the one line."""
        global reactor_ran
        on_ending(lambda signum, frame: self.reactor.callFromThread(self.end, 0))
        self.reactor.callWhenRunning(self.start)
        reactor_ran = True
        self.reactor.run(installSignalHandlers=False)
        if self.error:
            raise CliError(one_line(self.error))
        return self.code or 0


def cmd_watch(args):
    """Live table: HTTP snapshot, then the ownership feed over WAMP."""
    if args.count is not None and args.count < 1:
        raise CliError(f'--count must be at least 1, not {args.count}')
    Interrupter().install()     # until the reactor runs: end at once (main says 0)
    site = load_site(args)
    rows = {r['lock']: r for r in fetch_rows(args, site) if isinstance(r.get('lock'), str)}
    hub = site.hub.data
    from twisted.internet import reactor
    return Watch(reactor, hub['wamp_server'], hub['wamp_realm'],
                 feed_topic(hub['address_root'], args.registry, OWNERSHIP_FEED), rows,
                 sys.stdout, count=args.count, clear=not args.no_clear,
                 header=args.header).run()
