"""Site-wide leases: resource paths, the pure state machine, the SQLite store,
the audit check (all importable without OCS or a network), and the two shells
lease holders use: :class:`SiteLock` (agents, Twisted) and
:class:`Reservation` (scripts and people, threads), loaded on first use."""
from ..errors import (LeaseBusy, LeaseError, LeaseLost, LeaseStoreError, LeaseUnavailable,
                      ReservationBusy, ReservationError)
from .audit import check_audit
from .holder import LeaseHolder, describe_holders
from .paths import MAX_LEASE, MIN_LEASE, check_resource, conflicts
from .state import Grant, LeaseState, Outcome, Request
from .store import LeaseStore

__all__ = ['LeaseState', 'LeaseError', 'Grant', 'Outcome', 'Request', 'LeaseStore',
           'LeaseStoreError', 'check_audit', 'check_resource', 'conflicts', 'LeaseLost',
           'LeaseHolder', 'describe_holders', 'MIN_LEASE', 'MAX_LEASE', 'LeaseBusy',
           'LeaseUnavailable', 'SiteLock', 'Reservation', 'RetryPolicy', 'BridgeClient',
           'ReservationBusy', 'ReservationError']

_SHELLS = {'SiteLock': 'sitelock', 'Reservation': 'reservation', 'RetryPolicy': 'reservation',
           'BridgeClient': 'bridge'}


def __getattr__(name):          # the shells import Twisted or OCS: only when asked for
    if name in _SHELLS:
        import importlib
        return getattr(importlib.import_module(f'{__name__}.{_SHELLS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
