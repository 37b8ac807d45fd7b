"""Small fixes for WAMP sessions (autobahn + Twisted).

autobahn 26.10 tries to switch Nagle's algorithm off in ``connectionMade``
before its ``tcpNoDelay`` option is set, so the attempt fails silently and
small messages can wait ~40 ms for a delayed ACK. :func:`set_nodelay` turns
it off on a joined session's TCP connection.
"""

__all__ = ['set_nodelay']


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
