"""The LockRegistryAgent's site-wide lease tasks, on the pure LeaseState.

Every task runs on the reactor thread and answers ``(ok, message)`` with the
grant (or the holders) in session.data. A queued ``acquire`` waits, within
its timeout, for the state machine to grant it. Grants, token counters and
the audit log live in SQLite (``--db``), committed before each reply, so a
registry restart (even kill -9) loses no grant.

**Leases are capabilities.** A grant's secret ``lease_id`` (see
:mod:`ocs_locking.leases.keys`) renews and releases it; the fencing token is
public. The lease *procedures* (``<registry>.lease.acquire``) return it in
their reply, which WAMP delivers to the caller alone. The OCS ``acquire``
task cannot: ocs publishes a task's session (``data`` and ``messages``) on
the agent's feeds and to anyone who calls ``status``; so its grant carries
no lease id (its message says so): it runs to its expiry or a force_release.

**Who did it.** The procedures are registered with WAMP call details: when
the router discloses the caller (``ocs_locking.bus``), an audit row names
the caller's agent (``identify(session)``) or its WAMP session, verified.
HTTP-bridge calls (one shared service session, role ``iocs_controller``) and
OCS task calls record the declared ``client``/``owner`` and the ocs
credential level, marked ``verified: False``.
"""
import math
import os
import stat
import time

from ocs import ocs_agent
from twisted.internet import defer

from ocs_locking.leases.holder import describe_holders, utc
from ocs_locking.leases.keys import NotHolder, check_lease_id
from ocs_locking.errors import ResourceConfigError
from ocs_locking.leases.paths import check_resource, check_text, when
from ocs_locking.leases.resource_file import load_resources, site_agents
from ocs_locking.leases.resources import ResourceTree
from ocs_locking.leases.state import (AUDIT_ACTIONS, MAX_WAITING_PER_CLIENT,
                                      MAX_WAITING_PER_OWNER, LeaseError, LeaseState)
from ocs_locking.leases.store import LeaseStore, LeaseStoreError
from ocs_locking.why import lease_reason
from ocs_locking.agents.lock_registry.lease_pages import (LEASE_PAGE_ROWS, lease_page,
                                                       with_expires_in)
from ocs_locking.agents.lock_registry.registrar import NOT_JOINED, Registrar
from ocs_locking.agents.lock_registry.watchers import (MAX_WATCH_WAIT, WATCH_WAIT, Watchers,
                                                       WatchRefused)
from ocs_locking.wire import LEASE_PROCEDURES, MESSAGE_BUDGET, json_size, lease_uri

#: How often due leases and waiter timeouts are applied, seconds.
EXPIRE_EVERY = 0.1
#: How often the audit log is pruned to its retention bounds, seconds.
PRUNE_EVERY = 60.0
#: How often the store's write-ahead log is checkpointed (in a thread), seconds.
CHECKPOINT_EVERY = 1.0
#: Request ids reserved in the database at a time (one ``meta`` write per
#: this many acquires; ids jump by up to this much at a restart).
RID_BLOCK = 1000
#: Default audit retention: rows older than this many days, or beyond this
#: many rows, are deleted (``--audit-days``, ``--audit-rows``).
AUDIT_DAYS, AUDIT_ROWS = 30.0, 100_000
#: At most one ``refuse`` audit row per (resource, owner, call) per this many seconds.
REFUSE_AUDIT_EVERY = 10.0
#: Lease calls also offered as plain WAMP procedures, ``<registry>.lease.<name>``:
#: unlike OCS tasks, several callers may use them at once (agents' SiteLocks do).
RPCS = LEASE_PROCEDURES
_when = when        # the name this module used first
#: The WAMP role of crossbar's HTTP bridge (ocs's ``iocs_controller``): one
#: service session calls for every HTTP client, so its callers are declared.
HTTP_BRIDGE_ROLE = 'iocs_controller'
#: The keys an access file may have (ocs's AccessDirector config keys).
ACCESS_FILE_KEYS = ('passwords', 'passwords_block_default_hashfunc', 'distrib_hashfunc')


def add_arguments(parser):
    """The registry's lease options (``make_parser`` adds them)."""
    parser.add_argument('--db', default='lock-registry.db',
                        help='SQLite file for site-wide leases, token counters and the '
                             'audit log; a relative path is taken from the directory of '
                             'the site config file (not the working directory).')
    parser.add_argument('--new-database', action='store_true',
                        help='Accept the database found at --db (or create one) although '
                             'its epoch file says another one, or one now missing, was '
                             'there; every token issued from now on exceeds every earlier '
                             'one. Without it such a registry refuses to grant.')
    parser.add_argument('--audit-days', type=float, default=AUDIT_DAYS,
                        help='Audit rows older than this many days are deleted '
                             f'(default {AUDIT_DAYS:g}).')
    parser.add_argument('--audit-rows', type=int, default=AUDIT_ROWS,
                        help=f'At most this many audit rows are kept (default {AUDIT_ROWS}).')
    parser.add_argument('--max-waiting-per-owner', type=int, default=MAX_WAITING_PER_OWNER,
                        help='At most this many lease requests of one owner wait in the '
                             f'queue at once (default {MAX_WAITING_PER_OWNER}).')
    parser.add_argument('--max-waiting-per-client', type=int, default=MAX_WAITING_PER_CLIENT,
                        help='At most this many lease requests of one client identity wait '
                             f'in the queue at once (default {MAX_WAITING_PER_CLIENT}).')
    parser.add_argument('--access-file', default=None,
                        help="The registry's passwords (YAML, ocs's AccessDirector "
                             "'passwords' format; clear text or hashed), a file only "
                             'operators read (mode 0600), instead of --access-policy '
                             'override:... in the site file every client reads. A relative '
                             'path is taken from the directory of the site config file.')
    parser.add_argument('--resources', default=None, metavar='FILE',
                        help='The resources the site declares (YAML, see docs/resources.rst): '
                             'their paths, the agents each covers, lockout levels, default '
                             'and maximum lease. An undeclared path is then refused (unless '
                             'the file says adhoc: true). A relative path is taken from the '
                             'directory of the site config file. Default: none declared, '
                             'every well-formed path allowed.')
    return parser


def check_arguments(args):
    """A one-line complaint about the lease options, or None."""
    days, rows = getattr(args, 'audit_days', AUDIT_DAYS), getattr(args, 'audit_rows', AUDIT_ROWS)
    if not (isinstance(days, (int, float)) and math.isfinite(days) and days > 0):
        return f'--audit-days must be a number of days > 0, not {days}'
    if not (isinstance(rows, int) and rows >= 100):
        return f'--audit-rows must be an integer >= 100, not {rows}'
    for name in ('max_waiting_per_owner', 'max_waiting_per_client'):
        value = getattr(args, name, 1)
        if not (isinstance(value, int) and 1 <= value <= 1000):
            return f"--{name.replace('_', '-')} must be an integer in [1, 1000], not {value}"
    access_file = getattr(args, 'access_file', None)
    if access_file is not None:
        if getattr(args, 'access_policy', None) not in (None, '', 'none'):
            return '--access-file and --access-policy both set the passwords: give one'
        try:
            load_access_file(resolve_db(access_file, site_dir(args)))
        except ValueError as e:
            return str(e)
    try:
        resource_tree(args)
    except ResourceConfigError as e:
        return str(e)
    return None


def resource_tree(args):
    """The registry's ResourceTree: that of its ``--resources`` file
    (relative to the site file's directory, like ``--access-file``),
    checked against the agent instances of its site file when that can be
    read; ``ResourceTree.adhoc_only()`` without ``--resources``. Raises
    ResourceConfigError in one line. Read once per ``args`` (cached on it)."""
    cached = getattr(args, '_resource_tree', None)
    if isinstance(cached, ResourceTree):
        return cached
    name = getattr(args, 'resources', None)
    if not isinstance(name, str):
        tree = ResourceTree.adhoc_only()
    else:
        tree = load_resources(resolve_db(name, site_dir(args)))
        site_file = getattr(args, 'site_file', None)
        agents = site_agents(site_file) if site_file else None
        if agents is not None:
            tree.check_site(agents, site_file)
    try:
        args._resource_tree = tree
    except AttributeError:          # an args object that takes no attribute
        pass
    return tree


def read_yaml(path, what):
    """The YAML document of the file ``path`` (``what`` names it in errors,
    e.g. 'the access file'); raises ValueError in one line for a file that
    is missing, unreadable or not YAML (never showing its content)."""
    import yaml
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise ValueError(f'cannot read {what} {path!r}: '
                         f'{e.strerror or type(e).__name__}') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark is not None else ''
        raise ValueError(f'{what} {path!r} is not YAML{where}') from None


def load_access_file(path):
    """The ocs AccessRules of the access file ``path`` (ocs's AccessDirector
    ``passwords`` entries, parsed by ``ocs.access.director_parse_config``),
    after a free level-1 rule (as ocs's ``override`` policy has); raises
    ValueError in one line for a file that is missing, unreadable, not
    YAML, or not of that form. Never shows a password."""
    from ocs import access
    config = read_yaml(path, 'the access file')
    if not isinstance(config, dict) or not isinstance(config.get('passwords'), list) \
            or not config['passwords']:
        raise ValueError(f"the access file {path!r} must be a mapping with 'passwords': "
                         f"a list of ocs password entries")
    extra = sorted(set(config) - set(ACCESS_FILE_KEYS))
    if extra:
        raise ValueError(f'the access file {path!r} has unknown key(s) {", ".join(extra)}; '
                         f'known: {", ".join(ACCESS_FILE_KEYS)}')
    for i, entry in enumerate(config['passwords']):
        if not isinstance(entry, dict):
            raise ValueError(f'the access file {path!r}: passwords[{i}] must be a mapping')
        for key, value in entry.items():
            if key.startswith('password_') and isinstance(value, dict) \
                    and value.get('hash') not in access.HASHFUNCS:
                raise ValueError(f'the access file {path!r}: passwords[{i}].{key} hash must '
                                 f'be one of {", ".join(access.HASHFUNCS)}')
    try:
        parsed = access.director_parse_config(config)
    except Exception as e:          # pydantic's ValidationError, TypeError...
        first = ' '.join(str(e).split())[:120]
        raise ValueError(f'the access file {path!r} is not an ocs password config: '
                         f'{type(e).__name__}: {first}') from None
    free = access.AccessRule(hashed_pass=access.HashedPass.create_free(),
                             cred_level=access.CredLevel(1))
    return [free] + parsed['_rules']


def caller_of(details, client='', identify=None):
    """Who made a lease procedure call, for the audit log: a JSON-ready
    dict ``{'identity', 'verified', 'via', ...}``.

    * The router disclosed the caller (``details.caller``, a session id):
      ``identify(session)`` names its agent instance, else ``wamp session
      N``; ``verified`` True (the router says so, not the caller).
    * The caller is crossbar's HTTP bridge (role ``iocs_controller``, one
      service session for every HTTP client), or was not disclosed: the
      ``client`` the call declares, ``verified`` False.
    """
    declared = client if isinstance(client, str) else ''
    session = getattr(details, 'caller', None)
    role = getattr(details, 'caller_authrole', None)
    role = role if isinstance(role, str) else None
    if isinstance(session, bool) or not isinstance(session, int):
        return {'identity': declared or 'unknown', 'verified': False, 'via': 'wamp',
                'note': 'caller not disclosed by the router'}
    if role == HTTP_BRIDGE_ROLE:
        return {'identity': declared or 'unknown', 'verified': False, 'via': 'http-bridge',
                'session': session, 'role': role}
    agent = None
    if identify is not None:
        try:
            agent = identify(session)
        except Exception:           # an identify that fails names nobody
            agent = None
    out = {'identity': agent if isinstance(agent, str) and agent else f'wamp session {session}',
           'verified': True, 'via': 'wamp', 'session': session, 'role': role}
    if declared and declared != out['identity']:
        out['declared'] = declared
    return out


def task_caller(session, declared):
    """Who started an OCS task: the declared name and the ocs credential
    level of the session (ocs passes no WAMP caller to operations)."""
    level = getattr(session, 'cred_level', None)
    return {'identity': declared or 'unknown', 'verified': False, 'via': 'ocs-task',
            'cred_level': level if isinstance(level, int) else None}


class _DetailsRegistrar:
    """The agent, as the Registrar sees it: registers each procedure with
    ``details_arg='details'`` so it learns the (disclosed) caller."""

    def __init__(self, agent):
        self.agent = agent

    def register(self, fn, uri):
        from autobahn.wamp.types import RegisterOptions
        return self.agent.register(fn, uri, options=RegisterOptions(details_arg='details'))


def site_dir(args):
    """The directory a relative ``--db`` is taken from: that of the site
    config file the agent was started with (``args.site_file``, which ocs's
    ``site_config.parse_args`` fills in from ``--site-file`` or
    ``$OCS_CONFIG_DIR``), else ``$OCS_CONFIG_DIR``, else the working
    directory (``--site=none``)."""
    site_file = getattr(args, 'site_file', None)
    if site_file:
        return os.path.dirname(os.path.abspath(site_file))
    return os.path.abspath(os.environ.get('OCS_CONFIG_DIR') or os.getcwd())


def resolve_db(db, base):
    """``db`` as an absolute path: a relative one is joined to ``base``."""
    if db == ':memory:':
        return db
    return os.path.normpath(os.path.join(base, os.path.expanduser(db)))


_GRANT_KEYS = ('resource', 'owner', 'token', 'expires', 'request_id', 'lease', 'queued_for')
_RENEW_KEYS = ('resource', 'token', 'expires', 'lease', 'expires_in')


def _compact(data):
    """A grant's data as the lease procedures return it: the grant's own keys,
    and ``grants`` (resource and token of each) only for several resources."""
    out = {k: data[k] for k in _GRANT_KEYS}
    if len(data['grants']) > 1:
        out['grants'] = [{'resource': g['resource'], 'token': g['token']}
                         for g in data['grants']]
    return out


def _watch_text(event):
    """The message of a watch's answer (one line; never a lease id)."""
    kind = event.get('event')
    what = f"{event.get('resource')!r} (token {event.get('token')})"
    if kind == 'revoked':
        return f"Revoked: {what} by {event.get('by')}: {event.get('reason')!r}"
    if kind == 'expired':
        return f'Expired: {what}.'
    if kind == 'released':
        return f'Released: {what}.'
    if kind == 'timeout':
        return f"Nothing happened in {event.get('waited', 0):g} s: watch again."
    return f"{str(kind).capitalize()}: {event.get('reason', '')}"


class LeaseOps:
    """Lease tasks for the registry agent.

    Args:
        agent (OCSAgent): the registry's agent.
        db (str): SQLite file for grants, token counters and the audit log
            (a relative path is taken from ``base``).
        reactor: the Twisted reactor (default: the global one).
        clock: wall-clock time source of the registry (default ``time.time``).
        audit_days (float): retention of the audit log, days.
        audit_rows (int): the most audit rows kept.
        new_database (bool): accept the database found (or a new one) whatever
            its epoch file says, raising the epoch (``--new-database``).
        base (str): the directory a relative ``db`` is taken from (the
            site's, see :func:`site_dir`; default the working directory).
        max_waiting_per_owner (int): waiting requests of one owner at most.
        max_waiting_per_client (int): waiting requests of one client at most.
        identify (callable): ``identify(wamp_session_id) -> agent instance id
            or None``, for the audit's verified identities (the registry's
            session map); None: a disclosed caller is named by its session.
        access_file (str): the registry's passwords (see
            :func:`load_access_file`; a relative path is taken from
            ``base``): replaces the agent's ocs access rules.
        budget (int): octets of JSON one ``leases`` page may take (default
            :data:`ocs_locking.wire.MESSAGE_BUDGET`).
        resources (ResourceTree): the site's declared resources (default
            ``ResourceTree.adhoc_only()``: none declared, every well-formed
            path allowed). An acquire of an undeclared path is refused
            (``UnknownResource``, audited) unless the tree allows ad-hoc
            paths; a lease longer than the ``max_lease`` of a resource it
            covers is refused; an acquire that gives no lease gets the
            resources' ``default_lease``.

    The expiry timer runs every EXPIRE_EVERY seconds whatever happens: each
    tick catches and logs (once per kind) anything that goes wrong, and
    schedules the next. When the store refuses writes, no lease call is
    served (one line naming the storage problem), leases still end on time
    in memory, ``leases``/``status`` say so under ``storage``, and every
    tick tries to write the whole state again; grants resume once it does.

    Raises:
        LeaseStoreError: the database cannot be opened (one line; the
            agent's ``main`` prints it and exits).
    """

    def __init__(self, agent, db, reactor=None, clock=time.time, audit_days=AUDIT_DAYS,
                 audit_rows=AUDIT_ROWS, new_database=False, base=None,
                 max_waiting_per_owner=MAX_WAITING_PER_OWNER,
                 max_waiting_per_client=MAX_WAITING_PER_CLIENT, identify=None,
                 access_file=None, budget=MESSAGE_BUDGET, resources=None, wrap_store=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        #: the site's declared resources (ResourceTree)
        self.resources = ResourceTree.adhoc_only() if resources is None else resources
        self.budget = budget
        self.agent = agent
        self.log = agent.log
        self.clock = clock
        self.audit_days, self.audit_rows = audit_days, audit_rows
        self.identify = identify
        #: how long each lease is, as the registry saw (flags.lease_lengths;
        #: kept by the LockRegistryAgent's monitor), for the expiring flag
        self.lease_lengths = {}
        #: {resource: [flag]} the registry adds to grants (``deadlock``)
        self.flagged_leases = {}
        #: refused lease calls per resource (lock_stats ``refused``)
        self.refusal_counts = {}
        #: lease calls refused for a missing or wrong lease_id, per call name
        self.refused_lease_ids = {'renew': 0, 'release': 0}
        base = os.getcwd() if base is None else base
        if access_file is not None:
            self._use_access_file(resolve_db(access_file, base))
        db = resolve_db(db, base)
        try:
            self.store = LeaseStore(db, new_database=new_database, rid_block=RID_BLOCK)
            if wrap_store is not None:      # every write also goes to standbys (replication.py)
                self.store = wrap_store(self.store)
            self.state = LeaseState(store=self.store,
                                    max_waiting_per_owner=max_waiting_per_owner,
                                    max_waiting_per_client=max_waiting_per_client)
        except (LeaseStoreError, LeaseError) as e:
            raise LeaseStoreError(f'cannot open the lease database {db!r}: {e}') from None
        # (the store logs, once, each new reason it refuses writes)
        self.log.info('lease database {path} (epoch {epoch}, id {db_id})',
                      **self.store.health())
        # Waiters: the caller of each queued request. Invariants: a request
        # id is in _waiters (and _deadlines) exactly while the request waits
        # in self.state, so a caller who is gone can be withdrawn (withdraw());
        # it is in _delivering from its grant until the grant is handed over.
        self._waiters = {}          # request id -> Deferred fired with its final Outcome
        self._deadlines = {}        # request id -> IDelayedCall at its deadline
        self._delivering = {}       # request id -> granted Outcome on its way to the caller
        self._refusals = {}         # (resource, owner, call) -> time of its last audit row
        self._pruned = None
        self._checkpointed = None
        self._checkpointing = False
        self._logged = set()        # kinds of tick failure logged since the last success
        self._next_tick = None
        #: ``grant_privs(request_id) -> str or None``: hands over (once) the
        #: access credential of a grant (the registry as access director,
        #: :mod:`.director`); None: grants carry no credential.
        self.grant_privs = None
        #: ``enforced() -> Deferred or None``: a grant's reply waits for it
        #: (the director's rules passed on by the router; :mod:`.director`).
        self.enforced = None
        #: the lease watches outstanding (:mod:`.watchers`)
        self.watchers = Watchers(reactor)
        self._ending = {}           # holder's request id -> Deferreds of preempts waiting
        #: ``answer_after(result) -> result or Deferred``: every lease call's
        #: answer waits for it (the standbys' acknowledgement of what the
        #: call wrote: :mod:`.replication`); None: answered at once.
        self.answer_after = None
        #: ``paused() -> bool``: True while this registry must not change its
        #: lease state (a standby: its store follows the primary's); the
        #: expiry timer then does nothing.
        self.paused = None
        self.state.add_listener(self._on_change)
        reactor.callWhenRunning(self._schedule)
        if callable(getattr(reactor, 'addSystemEventTrigger', None)):
            reactor.addSystemEventTrigger('before', 'shutdown', self.close)
        # Registrations do not survive a router restart: register at every
        # join ('ready' fires after each onJoin of this session object).
        agent.on('ready', lambda session: self._register_rpcs())
        # While the registry is off the router no caller can hear an answer:
        # every waiting request is withdrawn (they ask again).
        # Every lease watch is answered too (it frees its slot; the holder's
        # call has failed already and it polls again).
        agent.on('leave', self._left)

    def _left(self, session, details=None):
        why = 'the registry lost its router connection'
        self.withdraw_all(why)
        self.watchers.wake_all({'event': 'stopping', 'reason': why})

    def _use_access_file(self, path):
        """Serve ocs's access control from the access file ``path``
        (raises LeaseStoreError in one line if it cannot be used)."""
        from ocs import access
        try:
            rules = load_access_file(path)
        except ValueError as e:
            raise LeaseStoreError(str(e)) from None
        agent = self.agent
        agent.access_config = access.AgentAccessRules(
            policy='override', rules=rules,
            agent=access.AgentSpec(instance_id=getattr(agent, 'instance_id', None),
                                   agent_class=getattr(agent, 'class_name', None),
                                   superuser_key=agent))
        data = getattr(agent, 'access_data', None)
        if isinstance(data, dict):
            data['policy'] = 'override'
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            self.log.warn('access file {path} is readable by others (mode {mode:o}): '
                          'chmod 600 it', path=path, mode=mode)
        self.log.info('access rules from {path} ({n} rule(s))', path=path, n=len(rules))

    # -- plumbing -----------------------------------------------------------------

    def _schedule(self):
        self._next_tick = self.reactor.callLater(EXPIRE_EVERY, self._tick)

    def _tick(self):
        """One run of the expiry timer: nothing it raises stops the timer."""
        try:
            self._expire()
        except Exception as e:
            self._log_once(type(e).__name__, f'lease expiry tick failed: {e!r:.300}')
        finally:
            self._schedule()

    def _log_once(self, kind, message):
        if kind not in self._logged:
            self._logged.add(kind)
            self.log.error('{message}', message=message)

    def _expire(self):
        if self.paused is not None and self.paused():
            return
        now = self.clock()
        if self.store.error is None:
            try:
                self.store.check()          # deleted or replaced under us?
                self.state.expire(now)
            except (LeaseError, LeaseStoreError):
                pass                        # the store says why, below
        if self.store.error is not None:
            try:
                self.state.resync(now)      # write the whole state again
                self._logged.clear()
                self.log.info('lease storage writes again: grants resume')
            except (LeaseError, LeaseStoreError):
                self.state.expire_unstored(now)     # the store logged why, once
            return
        if self._pruned is None or now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            self.prune(now)
        if not self._checkpointing and (self._checkpointed is None
                                        or now - self._checkpointed >= CHECKPOINT_EVERY):
            self._checkpointed = now
            self._checkpoint()

    def _checkpoint(self):
        """Checkpoint the store in a pool thread (its fsync off the reactor)."""
        if not callable(getattr(self.reactor, 'getThreadPool', None)):
            return                  # a test's fake reactor
        from twisted.internet import threads
        self._checkpointing = True
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      self.store.checkpoint)
        d.addErrback(lambda f: self._log_once('checkpoint',
                                              f'checkpoint failed: {f.getErrorMessage()}'))
        d.addBoth(lambda _: setattr(self, '_checkpointing', False))

    def close(self):
        """Stop the expiry timer and close the store (a clean stop: the next
        start keeps the epoch). Called before the reactor shuts down."""
        if self._next_tick is not None and self._next_tick.active():
            self._next_tick.cancel()
        self._next_tick = None
        self.watchers.wake_all({'event': 'stopping', 'reason': 'the registry is stopping'})
        self.store.close()

    def storage(self):
        """The storage's health, as ``leases`` and ``status`` report it:
        ``ok``, ``error`` (why nothing is granted), ``path`` (absolute),
        ``epoch``, ``db_id``, ``epoch_file``."""
        return self.store.health()

    def health(self):
        """What an operator must know at a glance (the monitor's session data,
        ``ocs-locks status``): ``{'storage': {'ok', 'error'}, 'procedures':
        {'registered', 'missing'}}``."""
        storage, procs = self.store.health(), self.procedures()
        return {'storage': {'ok': storage['ok'], 'error': storage['error']},
                'procedures': {'registered': procs['registered'], 'missing': procs['missing']}}

    def prune(self, now=None):
        """Apply the audit retention bounds; returns how many rows went."""
        now = self.clock() if now is None else now
        if self.store.error is not None:
            return 0
        n = self.store.prune(before=now - self.audit_days * 86400, keep_rows=self.audit_rows)
        if n:
            self.log.info('audit log: pruned {n} row(s)', n=n)
        return n

    def _register_rpcs(self):
        """(Re-)register the lease procedures on the router: called at every
        join ('ready'). Registrations do not survive a reconnect, and one
        may fail (an old registration of this registry still in the router:
        ``procedure_already_exists``; the router going away meanwhile), so
        the ones missing are retried with a bounded backoff (0.5 .. 2 s, see
        :class:`.registrar.Registrar`) until all are held or the session
        leaves; :meth:`procedures` says which are held."""
        registrar = self.__dict__.get('_registrar')
        if registrar is None:
            registrar = self._registrar = Registrar(
                _DetailsRegistrar(self.agent), self.reactor, self.log,
                {lease_uri(self.agent.agent_address, n): self._answered(getattr(self, f'_rpc_{n}'))
                 if n != 'watch' else self._rpc_watch for n in RPCS})
            self.agent.on('leave', lambda session, details=None: registrar.left())
        registrar.joined()

    def _answered(self, fn):
        """``fn`` whose answer goes through :attr:`answer_after` (if set)."""
        def call(*args, **kwargs):
            if self.answer_after is None:
                return fn(*args, **kwargs)
            return defer.maybeDeferred(fn, *args, **kwargs).addCallback(self.answer_after)
        return call

    def procedures(self):
        """Whether the lease procedures are registered on the router now:
        ``{'registered': bool, 'missing': [name, ...], 'errors': {name:
        reason}}`` (``errors``: why each missing one failed last)."""
        registrar = self.__dict__.get('_registrar')
        if registrar is None:
            return {'registered': False, 'missing': list(RPCS),
                    'errors': {n: NOT_JOINED for n in RPCS}}
        return registrar.status()

    # The procedures answer {'ok', 'message', 'data'}; a grant's or renewal's
    # data is compact (what a holder needs: it crosses the router on every
    # call), the OCS tasks' session.data keeps every field.

    # A grant's reply carries the secret ``lease_id``: a WAMP RESULT goes to
    # the caller alone (over the HTTP bridge: to the one HTTP client).
    # ``token`` (keyword) is accepted so that an old caller renewing or
    # releasing by token hears why it is refused instead of a TypeError.

    def _rpc_acquire(self, resource, owner, lease=None, timeout=0.0, tree=False, note='',
                     client='', details=None, party=None):
        d = self.do_acquire(resource, owner, lease, timeout, tree, note, client,
                            compact=True, secret=True,
                            caller=caller_of(details, client, self.identify), party=party)
        if self.enforced is not None:
            d.addCallback(self._after_enforced)
        return d.addCallback(lambda r: {'ok': r[0], 'message': r[1], 'data': r[2]})

    def _after_enforced(self, result):
        """A granted reply waits until the access director's rules are on
        their way to the agents (the router acked their publication)."""
        wait = self.enforced() if result[0] else None
        return result if wait is None else wait.addCallback(lambda _: result)

    def _rpc_renew(self, resource, lease_id=None, lease=30.0, client='', details=None,
                   token=None):
        ok, msg, data = self.do_renew(resource, lease_id, lease, client,
                                      caller=caller_of(details, client, self.identify))
        return {'ok': ok, 'message': msg,
                'data': {k: data[k] for k in _RENEW_KEYS} if ok else data}

    def _rpc_release(self, resource, lease_id=None, client='', details=None, token=None):
        ok, msg, data = self.do_release(resource, lease_id, client,
                                        caller=caller_of(details, client, self.identify))
        return {'ok': ok, 'message': msg, 'data': data}

    def _cred_level(self, password):
        """The ocs credential level ``password`` has on this registry (its
        own access rules, as its OCS tasks check them); 0 when there are
        none to check against. The password is never logged."""
        from ocs import access
        rules = getattr(self.agent, 'access_config', None)
        if not isinstance(rules, access.AgentAccessRules):
            return 0
        try:
            level, _ = access.agent_get_creds(password, rules, rules.agent)
        except Exception:           # a malformed password value
            return 0
        return level.value

    def _rpc_preempt(self, resource, reason, grace, owner=None, lease=None, note='',
                     client='', password=None, wait=True, details=None):
        """``preempt`` as a procedure: the same as the task, for callers who
        need the requester's grant *with* its lease_id (the reply goes to
        the caller alone). ``password``: a credential of level 2 on this
        registry (as the task's ``min_privs=2``), checked first."""
        caller = caller_of(details, client, self.identify)
        level = self._cred_level(password)
        if level < 2:
            e = LeaseError(f'preempt requires credential level 2 (the password given has '
                           f'level {level})')
            self._audit_refusal('preempt', resource, caller['identity'], client, e, caller)
            return {'ok': False, 'message': f'Refused: {e}', 'data': {'error': str(e)}}
        how = 'verified' if caller.get('verified') else 'declared'
        by = f"{caller['identity']} ({how}, cred_level {level})"[:128]
        d = self.do_preempt(resource, reason, grace, by, owner=owner, lease=lease, note=note,
                            client=client, caller=caller, wait=wait, secret=True)
        if owner is not None and self.enforced is not None:
            d.addCallback(self._after_enforced)
        return d.addCallback(lambda r: {'ok': r[0], 'message': r[1], 'data': r[2]})

    def _rpc_watch(self, resource, lease_id=None, wait=WATCH_WAIT, client='', details=None):
        return self.do_watch(resource, lease_id, wait)

    def do_watch(self, resource, lease_id, wait=WATCH_WAIT):
        """A lease watch (see :mod:`.watchers`): a Deferred firing
        ``{'ok', 'message', 'data'}`` when something happens to the lease
        that ``lease_id`` holds on ``resource``, or after ``wait`` seconds
        (``data['event']``: ``revoked``, ``expired``, ``released``,
        ``preempt``, ``timeout``, ``stopping``). A lease that is no longer
        held is answered at once (``gone``, with how it ended); a bad
        argument or a watch over a cap is refused in one line (``ok``
        false). The lease_id is never logged nor echoed."""
        try:
            if isinstance(wait, bool) or not isinstance(wait, (int, float)) \
                    or not 0 <= wait <= MAX_WATCH_WAIT:
                raise LeaseError(f'wait must be a number of seconds in '
                                 f'[0, {MAX_WATCH_WAIT:g}], not {wait!r:.40}')
            g = self.state.holding(resource, lease_id)
            p = self.state.preemption(g.request_id)
            if p is not None and not p.noticed:     # asked before this watch came
                event = self._preempt_event(p)
                self.reactor.callLater(0, self._noticed, p.holder_rid)
                return defer.succeed({'ok': True, 'message': _watch_text(event),
                                      'data': event})
            d = self.watchers.add(g.request_id, float(wait), repr(g.resource))
        except NotHolder as e:
            ended = self.state.ended(resource, lease_id) if isinstance(lease_id, str) else None
            if ended is not None:   # it ended before the watch came: the same answer
                event = self._end_event(ended['action'], resource, ended['token'], ended)
                return defer.succeed({'ok': True, 'message': _watch_text(event),
                                      'data': event})
            return defer.succeed({'ok': True, 'message': f'Gone: {e}.',
                                  'data': {'event': 'gone', 'resource': resource,
                                           'reason': str(e)}})
        except (LeaseError, WatchRefused) as e:
            return defer.succeed({'ok': False, 'message': f'Refused: {e}',
                                  'data': {'error': str(e)}})
        return d.addCallback(lambda event: {'ok': True, 'message': _watch_text(event),
                                            'data': event})

    def _wake_watchers(self, action, g):
        """An end of grant ``g`` answers its lease's watches."""
        if not self.watchers.count(g.request_id):
            return
        ended = self.state.ended(g.resource) or {'at': g.expires}
        self.watchers.wake(g.request_id, self._end_event(action, g.resource, g.token, ended))

    @staticmethod
    def _end_event(action, resource, token, ended):
        """The watch event of a grant's end (``ended``: LeaseState.ended)."""
        event = {'resource': resource, 'token': token}
        if action == 'force_release':
            event.update(event='revoked', by=ended.get('by'), reason=ended.get('reason'),
                         at=ended.get('at'))
        elif action == 'expire':
            event.update(event='expired', at=ended.get('at'))
        else:
            event.update(event='released')
        return event

    def _preempt_event(self, p):
        return {'event': 'preempt', 'resource': p.resource, 'token': p.token, 'by': p.by,
                'reason': p.reason, 'grace_left': round(max(0.0, p.deadline - self.clock()), 3),
                'deadline': p.deadline}

    def _noticed(self, holder_rid):
        try:
            self.state.noticed(holder_rid, self.clock())
        except Exception as e:      # never let the audit trail break the notice
            self.log.error('could not record a preempt notice: {e}', e=e)

    def _on_change(self, action, item):
        if action in ('force_release', 'expire', 'release'):
            self._wake_watchers(action, item)
            for d in self._ending.pop(item.request_id, ()):
                if not d.called:
                    d.callback((action, item))
        elif action == 'preempt' and self.watchers.wake(item.holder_rid,
                                                        self._preempt_event(item)):
            self.reactor.callLater(0, self._noticed, item.holder_rid)
        # A queued request reached its end (granted, timed out, cancelled);
        # a grant's Outcome carries how long it queued.
        rid = getattr(item, 'request_id', None)
        d = self._waiters.get(rid)
        if d is not None and action in ('grant', 'timeout', 'cancel'):
            del self._waiters[rid]
            timer = self._deadlines.pop(rid, None)
            if timer is not None and timer.active():
                timer.cancel()
            out = item if action == 'grant' else self.state.poll(rid)
            if action == 'grant':
                self._delivering[rid] = out
            self.reactor.callLater(0, self._deliver, rid, d, out)

    def _deliver(self, rid, d, out):
        self._delivering.pop(rid, None)
        if not d.called:            # not cancelled meanwhile (see _cancelled)
            d.callback(out)

    # -- withdrawing the requests of callers who are gone ---------------------------

    def withdraw(self, request_id, reason):
        """Withdraw the waiting request ``request_id`` because its caller is
        gone (``reason`` goes to its ``cancel`` audit rows); its caller's
        Deferred fires with the ``cancelled`` Outcome. True if it was
        waiting; False if it had already ended."""
        if request_id not in self._waiters:
            return False
        try:
            self.state.cancel(request_id, self.clock(), reason=reason)
        except LeaseError as e:     # ended meanwhile (it is then no longer a waiter)
            self.log.info('request {rid} not withdrawn: {e}', rid=request_id, e=e)
            return False
        except Exception as e:      # the store could not write it: it times out instead
            self.log.error('could not withdraw request {rid}: {e}', rid=request_id, e=e)
            return False
        self.log.info('request {rid} withdrawn: {why}', rid=request_id, why=reason)
        return True

    def withdraw_all(self, reason):
        """Withdraw every waiting request (the registry left the router)."""
        return sum(self.withdraw(rid, reason) for rid in list(self._waiters))

    def _cancelled(self, rid):
        """The caller's Deferred was cancelled (WAMP: the router INTERRUPTed
        the call because the caller left or cancelled it): withdraw the
        request; a grant not yet delivered is given back at once."""
        if self.withdraw(rid, 'the caller cancelled its call or left the router'):
            return
        out = self._delivering.pop(rid, None)
        if out is not None and out.grants:
            g = out.grants[0]
            try:
                self.state.release(g.resource, out.lease_id, self.clock(),
                                   client='registry: caller gone before its grant arrived')
            except Exception as e:
                self.log.error('could not give back the undelivered grant {rid}: {e}',
                               rid=rid, e=e)

    def _due(self, rid, deadline):
        """A waiter's own deadline (not left to the periodic ticker, so the
        caller hears back at its deadline whatever else happens)."""
        self._deadlines.pop(rid, None)
        if rid not in self._waiters:
            return
        now = self.clock()
        if now < deadline:          # the reactor's timer ran ahead of our clock
            self._deadlines[rid] = self.reactor.callLater(deadline - now, self._due, rid,
                                                          deadline)
            return
        try:
            self.state.expire(now)
        except Exception as e:      # a failed write: try again shortly
            self.log.error('could not apply the deadline of request {rid}: {e}', rid=rid, e=e)
        if rid in self._waiters and rid not in self._deadlines:
            self._deadlines[rid] = self.reactor.callLater(EXPIRE_EVERY, self._due, rid,
                                                          deadline)

    @staticmethod
    def _grant_data(outcome, lease, compact=False, secret=False):
        """A grant's data; with ``secret`` (the lease procedures' reply
        only, never session.data) its ``lease_id``."""
        if compact:         # = _compact(_grant_data(...)), built directly (the hot path)
            gs = outcome.grants
            first = gs[0]
            out = {'resource': first.resource if len(gs) == 1 else [g.resource for g in gs],
                   'owner': first.owner, 'token': first.token, 'expires': first.expires,
                   'request_id': outcome.request_id, 'lease': lease,
                   'queued_for': round(outcome.queued_for, 6)}
            if len(gs) > 1:
                out['grants'] = [{'resource': g.resource, 'token': g.token} for g in gs]
            if secret:
                out['lease_id'] = outcome.lease_id
            return out
        grants = [g.as_dict() for g in outcome.grants]
        first = grants[0]
        out = {'resource': first['resource'] if len(grants) == 1 else
                [g['resource'] for g in grants],
                'owner': first['owner'], 'token': first['token'],
                'expires': first['expires'], 'request_id': outcome.request_id,
                'lease': lease, 'queued_for': round(outcome.queued_for, 6),
                'grants': grants}
        if secret:
            out['lease_id'] = outcome.lease_id
        return out

    def _refused(self, session, e):
        ok, msg, session.data = self._refusal(e)
        return ok, msg

    @staticmethod
    def _refusal(e):
        return False, f'Refused: {e}', {'error': str(e)}

    def _audit_refusal(self, call, resource, owner, client, reason, caller=None):
        """One ``refuse`` row (ok false) for a refused lease call, at most one
        per resource, owner, call and caller identity every
        REFUSE_AUDIT_EVERY seconds. (Reasons never hold a lease id.)"""
        now = self.clock()
        for r in str(resource).split(',')[:64]:         # every refusal counts in lock_stats
            if len(self.refusal_counts) < 100000 or r in self.refusal_counts:
                self.refusal_counts[r] = self.refusal_counts.get(r, 0) + 1
        if self.store.error is not None:
            return                  # nothing is written meanwhile (the tick logs why)
        who = str((caller or {}).get('identity', ''))[:200]
        key = (str(resource)[:200], str(owner)[:128], call, who)
        last = self._refusals.get(key)
        if last is not None and now - last < REFUSE_AUDIT_EVERY:
            return
        if len(self._refusals) > 10000:
            self._refusals.clear()
        self._refusals[key] = now
        try:
            self.store.record(now, 'refuse', key[0], owner=key[1], client=str(client)[:200],
                              detail={'call': call, 'reason': str(reason)[:300]}, ok=False,
                              caller=caller)
        except Exception as e:       # never let the audit trail break a reply
            self.log.error('could not record a refusal: {e}', e=e)

    # -- tasks ----------------------------------------------------------------------

    @ocs_agent.param('resource')
    @ocs_agent.param('owner', type=str)
    @ocs_agent.param('lease', default=None, type=float)
    @ocs_agent.param('timeout', default=0.0, type=float)
    @ocs_agent.param('tree', default=False, type=bool)
    @ocs_agent.param('note', default='', type=str)
    @ocs_agent.param('client', default='', type=str)
    @defer.inlineCallbacks
    def acquire(self, session, params):
        """acquire(resource, owner, lease=None, timeout=0., tree=False, note='', client='')

        **Task** - Lease one resource, or several all-or-nothing, site-wide.

        Parameters:
            resource (str or list): ``/``-separated path(s), e.g. ``satp1/hwp``.
            owner (str): who will hold it (agent, operator or schedule).
            lease (float): seconds until the lease ends unless renewed;
                at most the ``max_lease`` of every declared resource it
                covers. None (not given): the smallest ``default_lease``
                of those, else 30.
            timeout (float): seconds to wait in the FIFO queue if busy; the
                registry answers (``timed_out``) at this deadline itself.
            tree (bool): also exclude everything below the path(s).
            note (str): why, shown to others and kept in the audit log.
            client (str): the caller's identity, kept in the audit log
                (marked as declared).

        Notes:
            On success session.data holds the grant; each resource has its
            own fencing token, strictly increasing per resource. It holds
            no ``lease_id``: ocs shows every task's session data and
            messages to anyone, so this grant cannot be renewed or
            released; it ends at its expiry (or by ``force_release``). For
            a lease you can renew and release, call the procedure
            ``<registry>.lease.acquire`` (``Reservation``, ``SiteLock``,
            ``ocs-locks reserve`` do), whose reply goes to you alone::

                >>> response.session['data']
                {'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
                 'expires': 1700000030.0, 'request_id': 12, 'grants': [...]}

            When busy, it holds the current holders and the queue position::

                >>> response.session['data']
                {'holders': [{'resource': 'satp1/hwp', 'owner': 'bob', ...}],
                 'queue_position': 1}

            Aborting the task while it waits withdraws the request (it is
            never granted afterwards; audited as ``cancel``).

        """
        def queued(out):
            session.data = {'queue_position': out.queue_position,
                            'request_id': out.request_id,
                            'holders': [g.as_dict() for g in out.holders]}
        ok, msg, data = yield self.do_acquire(
            **params, on_queued=queued,
            caller=task_caller(session, params['client'] or params['owner']))
        session.data = data
        if ok:
            msg += (f' No lease_id (task results are public): this lease ends at its expiry '
                    f'or by force_release; to renew or release one, acquire through the '
                    f'procedure {lease_uri(self.agent.agent_address, "acquire")} '
                    f'(Reservation, ocs-locks reserve).')
        return ok, msg

    def abort_acquire(self, session, params):
        """The acquire task's aborter: withdraw the request it waits on."""
        rid = (session.data or {}).get('request_id')
        if rid is None or not self.withdraw(rid, 'the acquire task was aborted'):
            return defer.succeed((False, 'Nothing to abort: the acquire is not waiting.'))
        return defer.succeed((True, f'Withdrew request {rid}.'))

    def do_acquire(self, resource, owner, lease=None, timeout=0.0, tree=False, note='',
                   client='', on_queued=None, compact=False, secret=False, caller=None,
                   party=None):
        """The acquire itself: a Deferred firing ``(ok, message, data)``
        (already fired unless the request queues); ``on_queued(outcome)`` is
        called if the request has to wait. The grant is committed to the
        store before the Deferred fires. ``compact``: a grant's data as the
        lease procedures return it (see :func:`_compact`); ``secret``: with
        its ``lease_id`` (for a reply that goes to the caller alone);
        ``caller``: who asks, for the audit (see :func:`caller_of`).
        ``lease`` None: the declared default (see :meth:`checked_lease`);
        ``party``: the owner's operation asking (see LeaseState.acquire)."""
        now = self.clock()
        try:
            lease = self.checked_lease(resource, tree, lease)
            out = self.state.acquire(resource, owner, lease, now, timeout=timeout,
                                     tree=tree, note=note, client=client, caller=caller,
                                     party=party)
        except LeaseError as e:
            self._audit_refusal('acquire', resource, owner, client, e, caller)
            return defer.succeed(self._refusal(e))
        if out.status == 'queued':
            rid = out.request_id
            # Cancelling the Deferred withdraws the request: autobahn cancels
            # it when the router INTERRUPTs the call (the caller left or
            # cancelled); an OCS task's abort withdraws it too.
            d = self._waiters[rid] = defer.Deferred(
                canceller=lambda _, rid=rid: self._cancelled(rid))
            self._deadlines[rid] = self.reactor.callLater(timeout, self._due, rid,
                                                          now + timeout)
            if on_queued is not None:
                on_queued(out)
            return d.addCallback(self._acquired, resource, owner, lease, client, compact,
                                 secret, caller)
        return defer.succeed(self._acquired(out, resource, owner, lease, client, compact,
                                            secret, caller))

    def checked_lease(self, resource, tree, lease):
        """The lease a request for ``resource`` (a path or a list) gets,
        after the declared-resource checks: raises UnknownResource for an
        undeclared path the site does not allow, LeaseError for a lease
        longer than a covered resource's ``max_lease``; ``lease`` None gives
        the declared default (see ``ResourceTree.lease``). A registry
        without declarations only fills in the default (30 s)."""
        tree_ = self.resources
        if len(tree_) or not tree_.adhoc:
            paths = [resource] if isinstance(resource, str) else resource
            if isinstance(paths, (list, tuple)):
                for path in paths:
                    tree_.check(path)
        return tree_.lease(resource, tree is True, lease)

    def _check_renewal(self, resource, lease):
        """Raise LeaseError if renewing the request that holds ``resource``
        for ``lease`` seconds would exceed the ``max_lease`` of a declared
        resource it covers (checked only when resources are declared)."""
        if not len(self.resources) or not isinstance(resource, str):
            return
        held = [g for g in self.state.holders() if g.resource == resource]
        if held:
            rid = held[0].request_id
            paths = [g.resource for g in self.state.holders() if g.request_id == rid]
            self.resources.lease(paths, held[0].tree, lease)

    def _acquired(self, out, resource, owner, lease, client, compact=False, secret=False,
                  caller=None):
        if out.status == 'granted':
            names = ', '.join(g.resource for g in out.grants)
            tokens = ', '.join(str(g.token) for g in out.grants)
            data = self._grant_data(out, lease, compact, secret)
            # The access director's credential of this grant (handed over
            # once): in a reply to the caller alone, never in session.data.
            privs = self.grant_privs(out.request_id) if self.grant_privs else None
            if secret and privs is not None:
                data['privs'] = privs
            return (True, f"Granted {names} to {owner!r} (token {tokens}) until "
                          f"{when(out.grants[0].expires)}.", data)
        wanted = resource if isinstance(resource, list) else [resource]
        if out.status == 'cancelled':
            return (False, f'Withdrawn: the request for {", ".join(wanted)} was cancelled '
                           f'(its caller is gone) and will not be granted.',
                    {'status': out.status, 'request_id': out.request_id})
        holders = [g.as_dict() for g in out.holders] or \
            [g.as_dict() for g in self.state.holders() if g.resource in wanted]
        holders = with_expires_in(holders, self.clock())     # "for another N s"
        why = describe_holders(holders) or 'earlier requests are waiting'
        self._audit_refusal('acquire', wanted[0] if len(wanted) == 1 else ','.join(wanted),
                            owner, client, f'{out.status}: {why}', caller)
        text = f'Busy ({out.status}): {why}.'
        return (False, text,
                {'holders': holders, 'queue_position': out.queue_position,
                 'status': out.status,
                 'refused': lease_reason(wanted[0], holders, self.clock(),
                                         max(0, (out.queue_position or 1) - 1), text)})

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('lease_id', default=None)
    @ocs_agent.param('lease', default=30.0, type=float)
    @ocs_agent.param('client', default='', type=str)
    def renew(self, session, params):
        """renew(resource, lease_id, lease=30., client='')

        **Task** - Extend a lease you hold (all resources of its request).

        Parameters:
            resource (str): one resource of the lease.
            lease_id (str): the secret the lease procedure ``acquire``
                returned to you (the public token is not enough).
            lease (float): seconds from now until the lease ends.
            client (str): your identity (declared), kept in the audit log.

        Notes:
            A missing or wrong ``lease_id`` is refused in one line, changes
            nothing, and is audited as a refusal (without the lease id).
            session.data holds the renewed grant (``resource``, ``owner``,
            ``token``, ``expires``), never the lease id.
        """
        ok, msg, session.data = self.do_renew(
            **params, caller=task_caller(session, params['client']))
        return ok, msg

    def _check_holder(self, call, resource, lease_id, client, caller):
        """None, or the refusal ``(False, message, data)`` of a renew or
        release whose lease_id is missing or malformed (counted, audited)."""
        try:
            check_lease_id(lease_id)
            return None
        except NotHolder as e:
            return self._lease_id_refused(call, resource, client, caller, e)

    def _lease_id_refused(self, call, resource, client, caller, e):
        """A refused renew or release: audited; counted when refused for its
        lease id (NotHolder), not for a bad argument or failing storage."""
        if isinstance(e, NotHolder):
            self.refused_lease_ids[call] += 1
        self._audit_refusal(call, resource, '', client, e, caller)
        return self._refusal(e)

    def do_renew(self, resource, lease_id, lease=30.0, client='', caller=None):
        """The renewal itself: ``(ok, message, data)``."""
        refused = self._check_holder('renew', resource, lease_id, client, caller)
        if refused is not None:
            return refused
        now = self.clock()
        try:
            self._check_renewal(resource, lease)
            g = self.state.renew(resource, lease_id, lease, now, client=client,
                                 caller=caller)
        except LeaseError as e:
            return self._lease_id_refused('renew', resource, client, caller, e)
        # expires_in: what is left now on the registry's clock (a booked
        # lease's renewal keeps its end, or is capped at the next booking)
        return (True, f'Renewed {g.resource} (token {g.token}) until {when(g.expires)}.',
                dict(g.as_dict(), lease=lease, expires_in=round(g.expires - now, 6)))

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('lease_id', default=None)
    @ocs_agent.param('client', default='', type=str)
    def release(self, session, params):
        """release(resource, lease_id, client='')

        **Task** - Release a lease you hold (all resources of its request).

        Parameters:
            resource (str): one resource of the lease.
            lease_id (str): the secret the lease procedure ``acquire``
                returned to you. Someone else's lease: ``force_release``.
            client (str): your identity (declared), kept in the audit log.

        Notes:
            session.data lists the requests granted as a result::

                >>> response.session['data']
                {'released': 'satp1/hwp', 'granted': [{'resource': ..., 'token': 8}]}
        """
        ok, msg, session.data = self.do_release(
            **params, caller=task_caller(session, params['client']))
        return ok, msg

    def do_release(self, resource, lease_id, client='', caller=None):
        """The release itself: ``(ok, message, data)``."""
        refused = self._check_holder('release', resource, lease_id, client, caller)
        if refused is not None:
            return refused
        try:
            granted = self.state.release(resource, lease_id, self.clock(), client=client,
                                         caller=caller)
        except LeaseError as e:
            return self._lease_id_refused('release', resource, client, caller, e)
        return (True, f'Released {resource}.',
                {'released': resource,
                 'granted': [g.as_dict() for o in granted for g in o.grants]})

    def do_preempt(self, resource, reason, grace, by, owner=None, lease=None, note='',
                   client='', caller=None, wait=True, on_asked=None, secret=False):
        """Ask the holder of ``resource`` to give way (see
        ``LeaseState.preempt``): a Deferred firing ``(ok, message, data)``.
        ``on_asked(asked)`` is called at once with who holds, what was asked
        and when the deadline falls (``asked``: ``holder``, ``token``,
        ``resource``, ``reason``, ``by``, ``grace``, ``deadline`` on the
        registry's clock, ``message``). With ``owner``: that requester is
        queued first and the Deferred fires at its grant (or refusal), the
        ask in ``data['preempt']``; ``secret``: with the grant's lease_id.
        Without: it fires when the holder gave way (released, or revoked at
        the deadline), or at once with ``wait`` False."""
        now = self.clock()
        try:
            if owner is not None:
                lease = self.checked_lease(resource, False, lease)
            p, out = self.state.preempt(resource, reason, grace, by, now, owner=owner,
                                        lease=lease, note=note, client=client, caller=caller)
        except LeaseError as e:
            self._audit_refusal('preempt', resource, by, client, e, caller)
            return defer.succeed(self._refusal(e))
        msg = (f"Asked {p.holder!r} (token {p.token}) to give {resource} way: {p.reason!r}; "
               f"it is revoked at {utc(p.deadline)} (in {p.grace:g} s) unless released"
               + (f'; {owner!r} is first in line' if owner is not None else '') + '.')
        asked = {'holder': p.holder, 'token': p.token, 'resource': resource,
                 'reason': p.reason, 'by': by, 'grace': p.grace, 'deadline': p.deadline,
                 'message': msg}
        if on_asked is not None:
            on_asked(asked)
        if out is not None:
            rid = out.request_id
            d = self._waiters[rid] = defer.Deferred(
                canceller=lambda _, rid=rid: self._cancelled(rid))
            wait_for = p.grace + 10.0
            self._deadlines[rid] = self.reactor.callLater(wait_for, self._due, rid,
                                                          now + wait_for)
            d.addCallback(self._acquired, resource, owner, lease, client, secret, secret,
                          caller)

            def with_ask(result):
                ok, text, data = result
                return ok, f'{msg} {text}', dict(data, preempt=asked)
            return d.addCallback(with_ask)
        if not wait:
            return defer.succeed((True, msg, {'preempt': asked}))
        d = defer.Deferred()
        self._ending.setdefault(p.holder_rid, []).append(d)

        def ended(result):
            action, g = result
            how = 'released' if action == 'release' else \
                'was revoked at the deadline' if action == 'force_release' else 'expired'
            verb = f'{p.holder!r} {how} {resource}' if action == 'release' else \
                f'{p.holder!r} {how} on {resource}'
            return True, (f'{verb} ({self.clock() - p.asked_at:.1f} s after the ask).'), \
                {'preempt': asked, 'ended': action}
        return d.addCallback(ended)

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('reason', type=str)
    @ocs_agent.param('grace', type=float)
    @ocs_agent.param('owner', default=None)
    @ocs_agent.param('lease', default=None)
    @ocs_agent.param('note', default='', type=str)
    @ocs_agent.param('client', default='', type=str)
    @ocs_agent.param('wait', default=True, type=bool)
    @defer.inlineCallbacks
    def preempt(self, session, params):
        """preempt(resource, reason, grace, owner=None, lease=None, note='', client='', wait=True)

        **Task** (privileged) - Ask whoever holds ``resource`` to give way
        within ``grace`` seconds; needs credential level 2 (as
        ``force_release``). The holder's ``SiteLock`` / ``Reservation`` gets
        the notice at once through its lease watch (``on_preempt(reason,
        deadline)``) and may bring its hardware to a safe state and release;
        if it has not released by the deadline its lease is revoked (the
        next token is larger). A holder without ``on_preempt`` is revoked at
        the deadline.

        Parameters:
            resource (str): the resource whose holder is asked.
            reason (str): why (required; the holder is told; audited).
            grace (float): seconds the holder has, in [0, 3600].
            owner (str, optional): a requester queued *first*, ahead of
                every waiter, and granted when the holder gives way (the
                grant, like the acquire task's, carries no lease_id: it ends
                at its expiry or by force_release). None: nobody in
                particular; the queue is served as usual.
            lease (float, optional): the requester's lease (the resource's
                default when not given).
            note (str): the requester's note.
            client (str): who you are (declared), audited with your ocs
                credential level.
            wait (bool): wait for the outcome (the grant, or how the holder
                gave way); False: answer once the holder is asked.

        Notes:
            Every step is in the audit: ``preempt`` (asked), ``notice``
            (the holder's watch was answered), ``release`` or
            ``force_release`` (reason ``preempted: ...``), ``grant``.
            session.data holds the ask at once, then the outcome::

                >>> response.session['data']
                {'preempt': {'holder': 'alice', 'token': 3, 'resource': 'satp1/hwp',
                             'reason': 'calibration', 'by': 'ops (declared, cred_level 2)',
                             'grace': 30.0, 'deadline': 1700000030.0, 'message': '...'},
                 'ended': 'release'}
        """
        caller = task_caller(session, params['client'])
        by = f"{caller['identity']} (declared, cred_level {caller['cred_level']})"[:128]
        lease = params['lease']
        if lease is not None and (isinstance(lease, bool) or not isinstance(lease, (int, float))):
            session.data = {'error': f'lease must be a number of seconds, not {lease!r:.40}'}
            return False, f"Refused: {session.data['error']}"

        def asked(info):
            session.data = {'preempt': info}
        ok, msg, data = yield self.do_preempt(
            params['resource'], params['reason'], params['grace'], by, owner=params['owner'],
            lease=lease, note=params['note'], client=params['client'], caller=caller,
            wait=params['wait'], on_asked=asked)
        session.data = data
        return ok, msg

    @ocs_agent.param('resource', type=str)
    @ocs_agent.param('reason', type=str)
    @ocs_agent.param('client', default='', type=str)
    def force_release(self, session, params):
        """force_release(resource, reason, client='')

        **Task** (privileged) - Revoke whoever holds ``resource``; needs an
        advanced credential through ocs's access control. The holder's
        ``SiteLock`` or ``Reservation`` is told at once through its lease
        watch (``lease.watch``: who, why and when), else at its next
        renewal.

        Parameters:
            resource (str): the resource whose lease is revoked.
            reason (str): why (required, kept in the audit log).
            client (str): who you are (declared), kept in the audit log
                with your ocs credential level.

        Notes:
            The ``force_release`` audit row's ``owner`` is who did it
            (``"<client> (declared, cred_level 2)"``), its ``detail`` the
            holder and the reason, its ``caller`` the identity.
            session.data holds the revoked grants and who was granted next.
        """
        caller = task_caller(session, params['client'])
        by = f"{caller['identity']} (declared, cred_level {caller['cred_level']})"[:128]
        try:
            revoked, granted = self.state.force_release(
                params['resource'], params['reason'], by, self.clock(),
                client=params['client'], caller=caller)
        except LeaseError as e:
            self._audit_refusal('force_release', params['resource'], by, params['client'], e,
                                caller)
            return self._refused(session, e)
        session.data = {'revoked': [g.as_dict() for g in revoked],
                        'granted': [g.as_dict() for o in granted for g in o.grants]}
        owners = ', '.join(sorted({g.owner for g in revoked}))
        return True, f"Revoked {params['resource']} from {owners}: {params['reason']}"

    @ocs_agent.param('resource', default=None)
    @ocs_agent.param('owner', default=None)
    @ocs_agent.param('action', default=None)
    @ocs_agent.param('since', default=None)
    @ocs_agent.param('limit', default=20)
    def history(self, session, params):
        """history(resource=None, owner=None, action=None, since=None, limit=20)

        **Task** - The audit log, newest first, filtered.

        Parameters:
            resource (str, optional): only this path and everything below it.
            owner (str, optional): only rows of this owner (exactly).
            action (str or list, optional): only these audit actions
                (``grant``, ``regrant``, ``queue``, ``renew``, ``release``,
                ``force_release``, ``expire``, ``timeout``, ``cancel``,
                ``refuse``).
            since (float, optional): only rows newer than this many seconds
                ago, on the registry's own clock.
            limit (int, optional): at most this many rows, in [1, 1000].
                Default 20.

        Notes:
            Bad input is refused in one line and changes nothing.
            session.data holds the rows::

                >>> response.session['data']
                {'history': [{'at': 1700000000.0, 'action': 'grant',
                              'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
                              'client': 'ocs-locks', 'detail': {...}, 'ok': True,
                              'caller': {'identity': 'sim-device-1', 'verified': True,
                                         'via': 'wamp', 'session': 123, ...}}]}

            ``caller`` says who made the call: ``verified`` when the router
            disclosed the caller's session (its agent, or ``wamp session
            N``); else declared (HTTP bridge, OCS tasks: the ``client`` or
            owner given, with ``cred_level`` for tasks). None on rows the
            registry's timer wrote (expiries, timeouts) and on rows older
            than store schema 4.
        """
        try:
            query = self.history_query(**params)
            rows = self.store.history(**query)
        except (LeaseError, ValueError) as e:
            return self._refused(session, e)
        session.data = {'history': rows}
        return True, f'{len(rows)} audit record(s).'

    def lease_page(self, offset=0, limit=LEASE_PAGE_ROWS, budget=None):
        """One page of the lease tables (:func:`.lease_pages.lease_page`)
        within ``budget`` octets (default: the registry's message budget)."""
        snapshot = self.state.snapshot()
        snapshot['grants'] = with_expires_in(snapshot['grants'], self.clock(),
                                             self.lease_lengths, self.flagged_leases)
        return lease_page(snapshot, offset, limit, self.budget if budget is None else budget)

    def _ago(self, name, age):
        """The time ``age`` seconds ago on the registry's clock (None for
        None); LeaseError naming ``name`` for anything but an age >= 0."""
        if age is None:
            return None
        if isinstance(age, bool) or not isinstance(age, (int, float)) \
                or not math.isfinite(age) or age < 0:
            raise LeaseError(f'{name} must be an age in seconds >= 0, not {age!r:.40}')
        return self.clock() - age

    def history_query(self, resource=None, owner=None, action=None, since=None, limit=20,
                      at=None):
        """The history task's arguments checked and turned into
        :meth:`LeaseStore.history` keywords; raises LeaseError naming the
        first bad one."""
        if resource is not None:
            check_resource(resource)
        if owner is not None:
            check_text('owner', owner, 128, required=True)
        actions = None
        if action is not None:
            actions = [action] if isinstance(action, str) else action
            if not isinstance(actions, (list, tuple)) or not actions:
                raise LeaseError(f'action must be an audit action or a list of them, '
                                 f'not {action!r:.60}')
            for a in actions:
                if a not in AUDIT_ACTIONS:
                    raise LeaseError(f'action must be one of {", ".join(AUDIT_ACTIONS)}, '
                                     f'not {a!r:.40}')
        cutoff, until = self._ago('since', since), self._ago('at', at)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise LeaseError(f'limit must be an integer in [1, 1000], not {limit!r:.40}')
        return {'resource': resource, 'owner': owner, 'actions': actions, 'since': cutoff,
                'until': until, 'limit': limit}

    @ocs_agent.param('offset', default=0, type=int, check=lambda n: 0 <= n <= 10 ** 9)
    @ocs_agent.param('limit', default=LEASE_PAGE_ROWS, type=int,
                     check=lambda n: 1 <= n <= 10 ** 6)
    def leases(self, session, params):
        """leases(offset=0, limit=1000)

        **Task** - One page of the current leases, waiting requests and
        token counters, with the totals, so that a client can read every page.

        Parameters:
            offset (int): the first row (0-based) of the page, in the
                sequence grants, then waiting requests, then counters (by
                resource).
            limit (int): the most rows of the page (at most 1000; fewer when
                the rows would take more than the registry's message budget,
                1 MiB).

        Notes:
            session.data holds the page's ``grants`` (each with
            ``expires_in``: seconds left on the registry's clock), ``waiting`` and token
            ``counters`` (``{resource: last token}``), the page's
            ``offset``, the totals ``total`` (rows in the sequence),
            ``grants_total``, ``waiting_total`` and ``counters_total``,
            ``refused_lease_ids`` (renewals and releases refused for a
            missing or wrong lease_id, per call) and ``storage`` (see
            :meth:`storage`; ``ok`` false and ``error`` when nothing can be
            granted) and ``resources`` (the declared resource tree,
            ``ResourceTree.as_dict()``). The next page starts at ``offset``
            + the rows of this one; ``ocs-locks leases`` reads them all. No lease id, nor its
            hash, is ever in it::

                >>> response.session['data']
                {'grants': [{'resource': 'satp1/hwp', 'owner': 'alice', 'token': 7,
                             'expires': 1700000030.0, 'expires_in': 23.5, ...}],
                 'waiting': [], 'counters': {'satp1/hwp': 7},
                 'offset': 0, 'total': 2, 'grants_total': 1, 'waiting_total': 0,
                 'counters_total': 1, 'refused_lease_ids': {'renew': 0, 'release': 0},
                 'resources': {'adhoc': True, 'source': '', 'resources': []},
                 'storage': {'ok': True, 'error': None, 'path': '/site/lock-registry.db',
                             'epoch': 2, 'db_id': 81985529216486895,
                             'epoch_file': '/site/.lock-registry.db.epoch'}}
        """
        params = params or {}
        extra = {'storage': self.storage(), 'refused_lease_ids': dict(self.refused_lease_ids),
                 'resources': self.resources.as_dict()}
        page = self.lease_page(params.get('offset', 0),
                               min(params.get('limit', LEASE_PAGE_ROWS), LEASE_PAGE_ROWS),
                               self.budget - json_size(extra))
        session.data = dict(page, **extra)
        msg = f"{page['grants_total']} lease(s), {page['waiting_total']} waiting."
        shown = len(page['grants']) + len(page['waiting']) + len(page['counters'])
        if shown < page['total']:
            msg += f" Rows {page['offset']}..{page['offset'] + shown - 1} of {page['total']} " \
                   f"here." if shown else f" No rows from {page['offset']} (of {page['total']})."
        if self.store.error is not None:
            msg += f' Storage failing, nothing is granted: {self.store.error}'
        return True, msg
