"""Small fixes for WAMP sessions (autobahn + Twisted).

autobahn 26.10 tries to switch Nagle's algorithm off in ``connectionMade``
before its ``tcpNoDelay`` option is set, so the attempt fails silently and
small messages can wait ~40 ms for a delayed ACK. :func:`set_nodelay` turns
it off on a joined session's TCP connection.

:class:`JoinEdge` tells a periodic task when its OCS agent has (re)joined the
router, so it can fix the new connection and publish a snapshot once.
"""

__all__ = ['set_nodelay', 'JoinEdge']


class JoinEdge:
    """The not-joined -> joined edge of an OCS agent's session, polled.

    ``poll()`` returns True once per (re)join (and turns Nagle off on the new
    connection); :attr:`joined` is the state seen by the last poll. An object
    without ``realm_joined`` counts as joined (a test double).
    """

    def __init__(self, agent):
        self.agent = agent
        self.joined = False

    def poll(self):
        """True if the agent joined since the last poll."""
        joined = bool(getattr(self.agent, 'realm_joined', True))
        edge = joined and not self.joined
        self.joined = joined
        if edge:
            set_nodelay(self.agent)
        return edge


def set_nodelay(session):
    """Disable Nagle on the session's TCP connection; True if it was done."""
    proto = getattr(session, '_transport', None)
    tcp = getattr(proto, 'transport', None)
    setter = getattr(tcp, 'setTcpNoDelay', None)
    if setter is None:
        return False
    try:
        setter(True)
        return bool(tcp.getTcpNoDelay())
    except (OSError, AttributeError):
        return False
