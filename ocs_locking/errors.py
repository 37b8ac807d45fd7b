"""Exceptions raised by ocs_locking.

Every misuse raises at once with a message naming the lock and the rule that
was broken; nothing here changes lock state.
"""


class NotOwner(RuntimeError):
    """Raised when a caller releases a lock it does not hold."""


class LockClosed(RuntimeError):
    """Raised to every waiter, and to every new acquire, once a lock is closed."""


class ReactorBlockingError(RuntimeError):
    """Raised by a lock made with ``strict_reactor=True`` when a blocking
    acquire (``timeout != 0``) is called on the Twisted reactor thread.

    Waiting there would freeze the whole agent (heartbeats stop and the ocs
    registry marks the agent dead). Without the strict option such a call is
    served at once when the lock is free, and returns False at once (with one
    warning line) when it would have to wait; reactor code waits with
    ``acquire_deferred``. SiteLock's thread API raises it on the reactor too.
    """


class LockTimeout(TimeoutError):
    """Raised by :meth:`TimeoutLock.hold` when the lock is not acquired in time."""


class WorkerStopped(RuntimeError):
    """Raised to every queued and every new call once a DeviceWorker is stopped."""


# -- the registry and site-wide leases ------------------------------------------


class BadLockMessage(ValueError):
    """A lock message that does not follow the contract; the text says why."""


class LeaseError(ValueError):
    """A call LeaseState refuses; the one-line text says why. Nothing changed."""


class UnknownResource(LeaseError):
    """A lease call named a resource the site does not declare (and the site
    allows no ad-hoc paths): ``no resource 'satp1/hwpp'; did you mean
    'satp1/hwp'?``. Nothing changed."""


class ResourceConfigError(ValueError):
    """A resource tree (the registry's ``--resources`` file) that cannot be
    used; the one-line text names the file and the key at fault."""


class LeaseStoreError(RuntimeError):
    """The lease store cannot be opened or is not one this version understands."""


class LeaseLost(RuntimeError):
    """The site-wide lease is gone: the hardware must not be touched."""


class LeaseTooShort(LeaseLost):
    """What is left of a held lease is too short for the device call about
    to start (its timeout plus the guard's margin): the call must not start.
    The lease itself is kept (the next renewal extends it). A LeaseLost, so
    code that refuses on LeaseLost refuses on it too."""


class LeaseUnavailable(RuntimeError):
    """The lease could not be had: the registry refused the request (bad
    arguments), or could not be reached. The one-line text says why.
    Raised by both lease holders, :class:`SiteLock` and :class:`Reservation`
    (``ReservationError`` is the same class)."""


class LeaseBusy(LeaseUnavailable):
    """The resources were held by someone else (for every attempt of a
    Reservation's retry policy, or through a SiteLock's queue wait).

    Attributes:
        holders (list): the registry's last word on who holds them (dicts
            with ``resource``, ``owner``, ``token``, ``expires``, ``note``).
        attempts (int): how many acquire attempts were made.
    """

    def __init__(self, message, holders=(), attempts=0):
        super().__init__(message)
        self.holders = list(holders)
        self.attempts = attempts


class CliError(Exception):
    """A failure of ``ocs-locks`` to report as one line on stderr (exit status 1)."""


#: The names Reservation raised first; the same classes.
ReservationError = LeaseUnavailable
ReservationBusy = LeaseBusy
