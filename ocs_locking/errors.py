"""Exceptions raised by ocs_locking.

Every misuse raises at once with a message naming the lock and the rule that
was broken; nothing here changes lock state.
"""


class NotOwner(RuntimeError):
    """Raised when a caller releases a lock it does not hold."""


class LockClosed(RuntimeError):
    """Raised to every waiter, and to every new acquire, once a lock is closed."""


class ReactorBlockingError(RuntimeError):
    """Raised when a blocking wait is attempted on the Twisted reactor thread.

    Waiting there would freeze the whole agent (heartbeats stop and the ocs
    registry marks the agent dead); use ``acquire_deferred`` or ``timeout=0``.
    """


class LockTimeout(TimeoutError):
    """Raised by :meth:`TimeoutLock.hold` when the lock is not acquired in time."""
