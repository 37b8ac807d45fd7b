"""Which WAMP session speaks for which agent (pure: no OCS, no Twisted).

An ocs agent registers ``<root>.<instance-id>.ops`` first thing after it
joins, and the router lets only one session hold a registration, so the
session that holds it *is* that agent on the bus. :class:`SessionMap` keeps
that map from the router's meta events (``wamp.registration.on_create``,
``on_register``, ``on_unregister``, ``on_delete``, ``wamp.session.on_leave``)
and from the registrations already there when the registry joined (:meth:`load`).

Contract:

* :meth:`agent_of` / :meth:`session_of` answer from the latest events; an
  unknown session or agent is None.
* Every input is checked: a malformed event changes nothing and is counted
  in :attr:`bad` by reason (the shell logs them).
* The inputs that end an agent's session (:meth:`left`, :meth:`unregistered`,
  :meth:`deleted`) return the instance ids that lost their session, so the
  registry can mark their locks not alive at once.
"""

__all__ = ['SessionMap']


class SessionMap:
    """Session id <-> agent instance id, from registrations of ``<root>.<id>.ops``.

    Args:
        root (str): the site's address root (``observatory``).
    """

    def __init__(self, root):
        self.root = root
        self._regs = {}         # registration id -> instance id (ops registrations only)
        self._callee = {}       # registration id -> session id holding it
        self._agent = {}        # session id -> instance id
        self._session = {}      # instance id -> session id
        self.bad = {}           # reason -> count of malformed events

    # -- queries --------------------------------------------------------------

    def agent_of(self, session_id):
        """The instance id whose ``.ops`` the session holds, or None."""
        return self._agent.get(session_id) if _is_id(session_id) else None

    def session_of(self, instance_id):
        """The session holding ``<root>.<instance_id>.ops``, or None."""
        return self._session.get(instance_id) if isinstance(instance_id, str) else None

    def __len__(self):
        return len(self._session)

    def agents(self):
        """``{instance_id: session_id}`` of every agent on the bus now."""
        return dict(self._session)

    # -- inputs ---------------------------------------------------------------

    def instance_of_uri(self, uri):
        """``sim-device-1`` for ``<root>.sim-device-1.ops``, else None."""
        if not isinstance(uri, str):
            return None
        head, _, rest = uri.partition('.')
        if head != self.root or not rest.endswith('.ops'):
            return None
        instance_id = rest[:-len('.ops')]
        return instance_id if instance_id and '.' not in instance_id else None

    def created(self, session_id, details):
        """``wamp.registration.on_create(session_id, details)``: ``details``
        has ``id`` and ``uri``; the creating session is its first callee."""
        if not _is_id(session_id) or not isinstance(details, dict) or \
                not _is_id(details.get('id')) or not isinstance(details.get('uri'), str):
            return self._bad('on_create: not (session id, {id, uri})')
        instance_id = self.instance_of_uri(details['uri'])
        if instance_id is not None:
            self._regs[details['id']] = instance_id
            self._hold(details['id'], session_id)
        return None

    def registered(self, session_id, registration_id):
        """``wamp.registration.on_register(session_id, registration_id)``."""
        if not _is_id(session_id) or not _is_id(registration_id):
            return self._bad('on_register: not (session id, registration id)')
        if registration_id in self._regs:
            self._hold(registration_id, session_id)
        return None

    def unregistered(self, session_id, registration_id):
        """``wamp.registration.on_unregister``: that session no longer holds
        it (crossbar sends ``None`` for the session when the callee's
        session detached: then whoever held it). Returns the instance ids
        that lost their session."""
        if (session_id is not None and not _is_id(session_id)) or not _is_id(registration_id):
            self._bad('on_unregister: not (session id, registration id)')
            return []
        if session_id is not None and self._callee.get(registration_id) != session_id:
            return []
        return self._release(registration_id)

    def deleted(self, session_id, registration_id):
        """``wamp.registration.on_delete``: the registration is gone (the
        session may be ``None``: crossbar's at a callee's detach). Returns
        the instance ids that lost their session."""
        if not _is_id(registration_id):
            self._bad('on_delete: not (session id, registration id)')
            return []
        gone = self._release(registration_id)
        self._regs.pop(registration_id, None)
        return gone

    def left(self, session_id):
        """``wamp.session.on_leave(session_id)``. Returns the instance ids
        that lost their session."""
        if not _is_id(session_id):
            self._bad('on_leave: not a session id')
            return []
        return [g for reg in [r for r, s in self._callee.items() if s == session_id]
                for g in self._release(reg)]

    def load(self, registrations):
        """The registrations already on the router when the registry joined:
        ``[(details {id, uri}, [callee session ids]), ...]`` (from
        ``wamp.registration.get`` and ``list_callees``). A registration known
        from an event meanwhile keeps what the event said."""
        for item in registrations:
            try:
                details, callees = item
                reg = details['id']
                uri = details['uri']
            except (TypeError, ValueError, KeyError):
                self._bad('registration list: not ({id, uri}, [sessions])')
                continue
            if not _is_id(reg) or not isinstance(callees, (list, tuple)) or \
                    not all(_is_id(s) for s in callees):
                self._bad('registration list: not ({id, uri}, [sessions])')
                continue
            instance_id = self.instance_of_uri(uri)
            if instance_id is None or reg in self._regs or not callees:
                continue
            self._regs[reg] = instance_id
            self._hold(reg, callees[0])

    def clear(self):
        """Forget everything (the registry left the router)."""
        self._regs.clear()
        self._callee.clear()
        self._agent.clear()
        self._session.clear()

    # -- internals --------------------------------------------------------------

    def _hold(self, reg, session_id):
        old = self._callee.get(reg)
        if old is not None and old != session_id:
            self._release(reg)
        instance_id = self._regs[reg]
        previous = self._session.get(instance_id)
        if previous is not None and previous != session_id:
            self._agent.pop(previous, None)
        self._callee[reg] = session_id
        self._agent[session_id] = instance_id
        self._session[instance_id] = session_id

    def _release(self, reg):
        session_id = self._callee.pop(reg, None)
        instance_id = self._regs.get(reg)
        if session_id is None or instance_id is None:
            return []
        if self._agent.get(session_id) == instance_id:
            del self._agent[session_id]
        if self._session.get(instance_id) == session_id:
            del self._session[instance_id]
            return [instance_id]
        return []

    def _bad(self, reason):
        self.bad[reason] = self.bad.get(reason, 0) + 1
        return None


def _is_id(value):
    """A WAMP id: an integer 1..2**53."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2 ** 53
