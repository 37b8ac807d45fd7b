"""Site-wide lock state: the ownership table (``table``), later leases."""
from .audit import check_audit
from .state import Grant, LeaseError, LeaseState, Outcome, Request
from .store import LeaseStore, LeaseStoreError
from .table import BadLockMessage, OwnershipTable

__all__ = ['OwnershipTable', 'BadLockMessage', 'LeaseState', 'LeaseError', 'Grant',
           'Outcome', 'Request', 'LeaseStore', 'LeaseStoreError', 'check_audit']
