"""``ocs-locks watch``: a live table from the registry's ownership feed.

The table starts from an HTTP snapshot, then follows the ``ownership``
feed over WAMP. When the registry says the bus is verified, only messages
whose disclosed publisher is the registry's own session (``bus['session']``)
are drawn; others are ignored and counted (a forged empty snapshot cannot
wipe the table). When it is not, one line ``bus not verified: <reason>``
heads the table. Below the locks it shows the site leases (owner, token,
granted, until, time left, queue, note, then the waiting requests), from the
latest ``leases`` message of the feed (the first from HTTP): time left
counts down from each grant's ``expires_in`` on this process's monotonic
clock since the message arrived, never comparing two hosts' wall clocks.
A snapshot may come in parts (``part``/``parts``): the table
is replaced once every part of one snapshot has come. A malformed message
or row is ignored and counted, never a traceback. How it ends:

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
from ..wire import (LEASES_KIND, OWNERSHIP_FEED, OWNERSHIP_KINDS, error_reason, feed_topic,
                    one_line)
from .formatters import RECEIVED, bus_lines, format_site_leases, format_table
from .signals import Interrupter, on_ending
from .site import load_site
from .status import fetch_leases, fetch_view

__all__ = ['cmd_watch', 'apply_message', 'Watch', 'OwnershipReader']

#: Most parts of one snapshot (a 10,000-row table takes about 5).
MAX_PARTS = 10000
#: The publisher is looked up again (the registry may have restarted) at
#: most once per this many seconds.
REFRESH_EVERY = 5.0

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
    if _malformed(message) or message['kind'] == LEASES_KIND:
        return False
    new = message.get('rows', [])
    removed = message.get('removed', [])
    if message['kind'] == 'snapshot':
        rows.clear()
    for key in removed:
        rows.pop(key, None)
    received = time.monotonic() if received is None else received
    for row in new:
        rows[row['lock']] = dict(row, **{RECEIVED: received})
    return True


def _malformed(message):
    """Why ``message`` is not an ownership message (None: it is one)."""
    if not isinstance(message, dict) or message.get('kind') not in OWNERSHIP_KINDS:
        return 'not an ownership message'
    new = message.get('rows', [])
    removed = message.get('removed', [])
    if not isinstance(new, list) or not isinstance(removed, list):
        return 'rows or removed not a list'
    if not all(isinstance(r, dict) and isinstance(r.get('lock'), str) for r in new):
        return 'a row without a lock name'
    if not all(isinstance(k, str) for k in removed):
        return 'a removed key not a string'
    if message['kind'] == LEASES_KIND:
        for key in ('grants', 'waiting'):
            value = message.get(key, [])
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                return f'leases {key} not a list of rows'
    part, parts = message.get('part', 0), message.get('parts', 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (part, parts)) \
            or not 0 <= part < parts <= MAX_PARTS:
        return 'part/parts out of range'
    return None


class OwnershipReader:
    """Turns ownership-feed messages into changes of ``rows`` (pure).

    Args:
        rows (dict): lock -> row, updated in place.
        publisher (int or None): the registry's WAMP session id; when set,
            a message published by any other session is ignored.

    :attr:`ignored` counts the messages ignored, by reason. A snapshot in
    parts replaces the table only once all its parts (same ``seq``) have
    come; changes that come meanwhile are applied again on top of it.
    """

    def __init__(self, rows, publisher=None):
        self.rows = rows
        self.publisher = publisher
        #: the latest site leases (a ``leases`` message, marked RECEIVED), or None
        self.leases = None
        self.ignored = {}
        self._parts = None          # (seq, parts, {part: rows}, [changes meanwhile])

    def _ignore(self, reason):
        self.ignored[reason] = self.ignored.get(reason, 0) + 1
        return False

    def feed(self, message, publisher=None, received=None):
        """One message as it came, with its disclosed ``publisher``. Returns
        True if the table changed."""
        if self.publisher is not None and publisher != self.publisher:
            return self._ignore("not published by the registry's session")
        why = _malformed(message)
        if why is not None:
            return self._ignore(f'malformed: {why}')
        parts = message.get('parts', 1)
        if message['kind'] == LEASES_KIND:
            self.leases = dict(message, **{RECEIVED: time.monotonic() if received is None
                                           else received})
            return True
        if message['kind'] == 'change':
            if self._parts is not None:
                self._parts[3].append(message)
            return apply_message(self.rows, message, received)
        if parts == 1:
            self._parts = None
            return apply_message(self.rows, message, received)
        seq = message.get('seq')
        if self._parts is None or self._parts[0] != seq or self._parts[1] != parts:
            self._parts = (seq, parts, {}, [])      # a newer snapshot: start again
        self._parts[2][message['part']] = message['rows']
        if len(self._parts[2]) < parts:
            return False
        _, _, got, meanwhile = self._parts
        self._parts = None
        whole = {'kind': 'snapshot', 'rows': [r for i in range(parts) for r in got[i]]}
        apply_message(self.rows, whole, received)
        for change in meanwhile:
            apply_message(self.rows, change, received)
        return True

    def ignored_line(self):
        """One line saying what was ignored ('' when nothing was)."""
        if not self.ignored:
            return ''
        n = sum(self.ignored.values())
        return f"ignored {n} ownership message(s): " + ', '.join(
            f'{k} ({v})' for k, v in sorted(self.ignored.items()))


class Watch:
    """One run of the watch on ``reactor``: draws ``rows`` to ``out``."""

    def __init__(self, reactor, url, realm, topic, rows, out, count=None, clear=True,
                 header=None, bus=None, refresh=None, err=None, leases=None,
                 clock=time.monotonic):
        self.reactor = reactor
        self.clock = clock          # this process's monotonic clock (time left, held for)
        self.url, self.realm, self.topic = url, realm, topic
        self.rows = rows
        self.err = sys.stderr if err is None else err
        self.refresh = refresh      # () -> the registry's bus block (a blocking call)
        self._refreshed = None      # monotonic time of the last refresh
        self.bus = None
        self.reader = OwnershipReader(rows)
        if isinstance(leases, dict):        # the leases read over HTTP at start
            self.reader.leases = dict(leases, **{RECEIVED: clock()})
        self.set_bus(bus)
        self.out = out
        self.count, self.clear, self.header = count, clear, header
        self.updates = 0
        self.code = None        # the exit status, once decided
        self.error = None       # the one line to print, if it failed
        self._stopping = False
        self._ticker = None
        self._connect_error = None

    def set_bus(self, bus):
        """The registry's ``bus`` block: draw only its session's messages
        when verified."""
        self.bus = bus if isinstance(bus, dict) else None
        verified = self.bus is not None and self.bus.get('verified') is True
        session = self.bus.get('session') if verified else None
        self.reader.publisher = session if isinstance(session, int) else None

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
        now = self.clock()
        text = format_table(sorted(self.rows.values(), key=lambda r: r['lock']), now)
        leases = format_site_leases(self.reader.leases, now) if self.reader.leases else []
        if leases:
            text += '\n\n' + '\n'.join(leases)
        notes = ([self.header] if self.header else []) + bus_lines(self.bus)
        ignored = self.reader.ignored_line()
        header = ''.join(f'{n}\n' for n in notes)
        tail = f'\n{ignored}' if ignored else ''
        try:
            if self.clear:
                self.out.write('\x1b[H\x1b[2J')
            self.out.write(f'{header}ocs-locks watch  {self.topic}  '
                           f'{time.strftime("%H:%M:%S")}\n{text}{tail}\n\n')
            self.out.flush()
        except OSError:         # stdout closed (| head, terminal gone): end quietly
            self.end(0)

    def on_message(self, *args, details=None):
        publisher = getattr(details, 'publisher', None)
        if not (self.bus is not None and self.bus.get('verified') is True):
            self._maybe_refresh()   # 'being checked' at start, a registry restart...
        try:
            message = args[0][0] if args and isinstance(args[0], (list, tuple)) and args[0] \
                else None
            changed = self.reader.feed(message, publisher, self.clock())
        except Exception as e:      # a row no check foresaw: one line, go on
            self.reader._ignore('malformed')
            self._warn(f'ignored a malformed ownership message: {e!r}')
            return
        if not changed:
            if self.reader.publisher is not None and publisher != self.reader.publisher:
                self._maybe_refresh()
            return          # not drawn; keep the table as it is
        self.updates += 1
        self.draw()
        if self.count is not None and self.updates >= self.count:
            self.end(0)

    def _warn(self, line):
        try:
            self.err.write(f'ocs-locks watch: {one_line(line, 200)}\n')
            self.err.flush()
        except OSError:
            pass

    def _maybe_refresh(self):
        """Ask the registry for its bus block again (over HTTP, in a thread;
        at most once per REFRESH_EVERY s): on a message from another session
        (the registry restarted: a new session), and on every message while
        the bus is not verified (the registry may still be checking it, as
        right after it joined), then draw with what it says."""
        now = time.monotonic()
        if self.refresh is None or (self._refreshed is not None
                                    and now - self._refreshed < REFRESH_EVERY):
            return
        self._refreshed = now
        from twisted.internet import threads
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.refresh)
        d.addCallbacks(self._refreshed_bus, lambda f: None)

    def _refreshed_bus(self, bus):
        before = self.bus
        self.set_bus(bus)
        if self.bus != before:
            self.draw()

    def start(self):
        from autobahn.twisted.component import Component
        from autobahn.wamp.types import SubscribeOptions
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
            return session.subscribe(self.on_message, self.topic,
                                     options=SubscribeOptions(details_arg='details'))

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
    view = fetch_view(args, site)
    rows = {r['lock']: r for r in view['rows'] if isinstance(r.get('lock'), str)}
    leases, _why = fetch_leases(args)       # None: the feed's next leases message says
    hub = site.hub.data
    from twisted.internet import reactor
    return Watch(reactor, hub['wamp_server'], hub['wamp_realm'],
                 feed_topic(hub['address_root'], args.registry, OWNERSHIP_FEED), rows,
                 sys.stdout, count=args.count, clear=not args.no_clear,
                 header=args.header, bus=view['bus'], leases=leases,
                 refresh=lambda: fetch_view(args, site)['bus']).run()
