"""ocs-locking: exclusive access to observatory hardware for OCS agents."""
from .errors import LockClosed, LockTimeout, NotOwner, ReactorBlockingError
from .lock import Cancel, TimeoutLock
from .status import HolderInfo, LockCounters, LockEvent, LockStatus, WaiterInfo

__all__ = ['TimeoutLock', 'Cancel', 'NotOwner', 'LockClosed', 'ReactorBlockingError',
           'LockTimeout', 'LockStatus', 'LockEvent', 'HolderInfo', 'WaiterInfo',
           'LockCounters']
__version__ = '0.1.0'
