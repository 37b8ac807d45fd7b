"""ocs-locking: exclusive access to observatory hardware for OCS agents."""
from .errors import LockClosed, LockTimeout, NotOwner, ReactorBlockingError
from .lock import Cancel, TimeoutLock
from .ops import YieldingHold, locked, refusal
from .status import HolderInfo, LockCounters, LockEvent, LockStatus, WaiterInfo
from .worker import DeviceWorker, WorkerStopped

__all__ = ['TimeoutLock', 'Cancel', 'NotOwner', 'LockClosed', 'ReactorBlockingError',
           'LockTimeout', 'LockStatus', 'LockEvent', 'HolderInfo', 'WaiterInfo',
           'LockCounters', 'locked', 'refusal', 'YieldingHold', 'DeviceWorker',
           'WorkerStopped']
__version__ = '0.2.0'
