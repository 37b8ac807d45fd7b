"""The wire contract: feed names, event names, row keys and procedure URIs.

Everything that crosses the router between agents, the LockRegistryAgent,
the lease clients and ``ocs-locks`` is named here once (pure: no OCS, no
Twisted, no network). See the Events page of the docs for the message shapes.
"""
import json

__all__ = ['LOCKS_FEED', 'HEARTBEAT_FEED', 'OWNERSHIP_FEED', 'STATS_FEED', 'ALERTS_FEED', 'EVENTS',
           'ROW_KEYS', 'TABLE_KEY', 'HEALTH_KEY', 'OWNERSHIP_KINDS', 'LEASE_PROCEDURES',
           'WATCH_EVENTS', 'WATCH_WAIT', 'BUS_KEY', 'BUS_INFO', 'PAYLOAD_LIMIT', 'MESSAGE_BUDGET', 'feed_topic', 'lease_uri',
           'error_reason', 'one_line', 'json_size', 'split_rows', 'QUEUE_SHOWN', 'LEASES_KIND']

#: The feed on which every agent that uses ocs_locking publishes its lock events.
LOCKS_FEED = 'locks'
#: ocs's own heartbeat feed, which every agent publishes.
HEARTBEAT_FEED = 'heartbeat'
#: The registry's feed of ownership-table changes (snapshot + changes, with ``seq``).
OWNERSHIP_FEED = 'ownership'
#: The registry's recorded statistics feed (fixed keys, for InfluxDB).
STATS_FEED = 'lock_stats'
#: The registry's recorded alerts feed: one block per kind of flag
#: (``stuck``, ``silent``, ``expiring``), fixed fields ``<kind>_count`` and
#: ``<kind>_worst_s`` (see :mod:`ocs_locking.flags`).
ALERTS_FEED = 'alerts'

#: Lock event names, in the order of a lock's life.
EVENTS = ('waiting', 'acquired', 'released', 'gave_up', 'closed', 'snapshot')

#: The keys of every ownership-table row, in display order (the
#: ``ocs-locks status --json`` contract uses lock, agent, job, session_id,
#: since, waiters, alive, held_for). ``held_since`` is the first grant of a
#: hold that was only lent to others for a moment (``since`` is the latest
#: grant); both are the agent's own clock, for display. ``held_for`` is how
#: long the hold has lasted (from ``held_since``) when the row was sent, in
#: seconds, measured without comparing two hosts' clocks (None when free).
#: ``longest_hold``: the longest single hold seen, the one in progress
#: included. ``flags``: what the registry finds unusual about the row now
#: (``stuck``, ``silent``, ``deadlock``; see :mod:`ocs_locking.flags`), [] when
#: nothing. ``lease``: for an agent's reported SiteLock, the site resource
#: it stands for (its holder and queue are the operations holding and
#: waiting for the lease in that agent); None for a lock.
ROW_KEYS = ('lock', 'agent', 'name', 'job', 'op', 'session_id', 'since', 'held_since',
            'held_for', 'waiters', 'token', 'alive', 'closed', 'acquired', 'timed_out',
            'longest_hold', 'updated', 'queue', 'flags', 'lease')

#: The key of the table in the registry's ``monitor`` and ``status``
#: session.data (rows keyed by lock in ``monitor``, a sorted list in ``status``).
TABLE_KEY = 'locks'

#: The key of the lease service's health in the registry's ``monitor``
#: session.data: ``{'storage': {'ok', 'error'}, 'procedures': {'registered',
#: 'missing'}}`` (``ocs-locks status`` prints a line when something is wrong).
HEALTH_KEY = 'lease_health'

#: The key of the bus's trust in the registry's ``monitor`` and ``status``
#: session.data: ``{'verified': bool, 'reason': str|None (why not verified),
#: 'session': int|None (the registry's own WAMP session id: the only
#: publisher of its ownership feed), 'dropped': {reason: count}, 'limits':
#: {name: value}}``. ``ocs-locks status`` and ``watch`` print
#: ``bus not verified: <reason>`` when ``verified`` is False.
BUS_KEY = 'bus'

#: The procedure of the router component (``ocs_locking.bus``) that says the
#: bus is ours: the registry calls it after each join. An answer means the
#: router enforces who may publish on each agent's feeds; an error
#: (``not_authorized`` under ocs's stock config, ``no_such_procedure``) means
#: it does not.
BUS_INFO = 'ocs_locking.bus.info'

#: crossbar's limit on one WAMP message (``DEFAULT_MAX_MESSAGE_SIZE`` in
#: crossbar/router/protocol.py, 26.10.1: 2**24 octets, on both WebSocket and
#: RawSocket; the largest a RawSocket can negotiate). A message over it ends
#: the sender's connection (``PayloadExceededError``).
PAYLOAD_LIMIT = 2 ** 24
#: What the registry lets one message, reply or session.data copy grow to
#: (JSON octets): 1/16 of the limit, room for the envelope and ocs's own
#: session fields.
MESSAGE_BUDGET = 2 ** 20

#: The kinds of message on the registry's ownership feed: ``snapshot`` (every
#: row), ``change`` (the rows that changed, and the keys ``removed``) and
#: ``leases`` (the site leases and waiting requests, see LEASES_KIND).
OWNERSHIP_KINDS = ('snapshot', 'change', 'leases')

#: The lease calls the registry also offers as plain WAMP procedures
#: (several callers may be in them at once, unlike an OCS task). ``watch``
#: is the holder's long poll: ``watch(resource, lease_id, wait=20)``
#: answers when the lease is revoked, expires, is released or its holder is
#: asked to give way, else after ``wait`` seconds (see WATCH_EVENTS).
#: ``preempt`` (credential level 2: its ``password`` argument) asks a
#: holder to give way, as the OCS task does, and answers a requester's
#: grant with its lease_id (the reply goes to the caller alone).
LEASE_PROCEDURES = ('acquire', 'renew', 'release', 'watch', 'preempt')
#: The ``event`` of a watch's answer (its ``data``): the lease was
#: force-released (``by``, ``reason``, ``at``), expired (``at``), released
#: by its holder, is asked to give way (``preempt``: ``by``, ``reason``,
#: ``grace_left``), was already gone when asked (``gone``: ``reason``);
#: nothing happened in ``wait`` (``timeout``), or the registry is stopping
#: or lost its router (``stopping``).
WATCH_EVENTS = ('revoked', 'expired', 'released', 'preempt', 'gone', 'timeout', 'stopping')
#: The ``wait`` a holder's watch asks for, seconds (it polls again after).
WATCH_WAIT = 20.0

#: One deadline: a caller's lease ``acquire`` with queue ``timeout`` T is
#: answered by the registry itself at T (a ``timed_out`` refusal) at the
#: latest. Every client transport (the HTTP bridge's read timeout, a
#: SiteLock's WAMP call, a thread waiting for the reactor, an OCS task wait)
#: waits T + ANSWER_MARGIN seconds, so it never gives up before the registry
#: answers; the margin covers the trip and a busy registry.
ANSWER_MARGIN = 10.0


def feed_topic(address_root, instance_id, feed):
    """``observatory.sim-device-1.feeds.locks``; ``instance_id=''`` gives the
    wildcard pattern ``observatory..feeds.locks``."""
    return f'{address_root}.{instance_id}.feeds.{feed}'


def lease_uri(registry_address, name):
    """The URI of the registry's lease procedure ``name``
    (``observatory.lock-registry.lease.acquire``), from the registry's agent
    address (``observatory.lock-registry``)."""
    if name not in LEASE_PROCEDURES:
        raise ValueError(f'no lease procedure {name!r}; one of {", ".join(LEASE_PROCEDURES)}')
    return f'{registry_address}.lease.{name}'


def one_line(text, most=300):
    """``text`` squeezed onto one line, at most ``most`` characters."""
    text = ' '.join(str(text).split())
    return text if len(text) <= most else text[:most - 3] + '...'


def error_reason(exc, not_running='it is not running (no such agent on the router)'):
    """A one-line reason from an error met on the way to an agent or procedure.

    Understands autobahn's ``ApplicationError`` (``.error`` is the URI, the
    text in ``.args``) and ocs's ``ControlClientError``, which packs a WAMP
    error list ``[..., error_uri, [text, ...], {}]`` in its first argument.
    ``wamp.error.no_such_procedure`` becomes ``not_running``.
    """
    arg = exc.args[0] if getattr(exc, 'args', None) else None
    if isinstance(arg, list) and len(arg) >= 6 and isinstance(arg[5], list):
        if arg[4] == 'wamp.error.no_such_procedure':
            return not_running
        if arg[5]:
            return one_line(arg[5][0])
    uri = getattr(exc, 'error', None)
    if uri == 'wamp.error.no_such_procedure':
        return not_running
    if isinstance(uri, str) and not arg:
        return one_line(uri)
    return one_line(str(arg if isinstance(arg, str) else exc) or type(exc).__name__)


def json_size(value):
    """Octets of ``value`` as compact JSON (what it costs on the wire)."""
    return len(json.dumps(value, separators=(',', ':'), default=str))


#: Octets :func:`split_rows` leaves in each part for the message around the
#: rows (kind, seq, part numbers, ocs's feed info or session fields).
ENVELOPE = 8192


def split_rows(rows, budget=MESSAGE_BUDGET, most=None):
    """``rows`` cut into consecutive parts, each at most ``budget -
    ENVELOPE`` octets of JSON and ``most`` rows (None: no count bound),
    so that the message around each part stays within ``budget``; always at least one part
    (empty for no rows). A single row over the budget still gets a part of
    its own (rows are bounded by the table's field checks)."""
    parts, part, size = [], [], 2
    budget -= ENVELOPE
    for row in rows:
        n = json_size(row) + 1
        if part and (size + n > budget or (most is not None and len(part) >= most)):
            parts.append(part)
            part, size = [], 2
        part.append(row)
        size += n
    parts.append(part)
    return parts


#: How many waiters of one lock its events, snapshots and ownership rows
#: name (``queue``: the first QUEUE_SHOWN, FIFO order; ``waiters`` stays the
#: full count), so that a long queue never grows a message.
QUEUE_SHOWN = 8

#: The ``kind`` of the ownership-feed message that carries the site leases:
#: ``{'kind': 'leases', 'seq', 'timestamp', 'grants': [...], 'waiting':
#: [...]}``, sent when the lease state changes (coalesced: at most one per
#: reactor turn and about 10 per second) and after every ownership snapshot.
#: Rows have the public shape of the ``leases`` task (never a lease id or a
#: credential); each grant also says ``expires_in`` (seconds left on the
#: registry's own clock when the message was sent).
LEASES_KIND = 'leases'
