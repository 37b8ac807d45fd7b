"""Site-wide lock state: the ownership table (``table``), later leases."""
from .table import BadLockMessage, OwnershipTable

__all__ = ['OwnershipTable', 'BadLockMessage']
