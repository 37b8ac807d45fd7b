"""Lease ids: the secret that makes a lease a capability (pure).

A grant's fencing ``token`` is public: ``status``, ``leases`` and ``history``
show it, and agents check it at the hardware. Ending or extending a lease
needs more than that: the ``lease_id`` the registry returns to the requester
alone when it grants the request (128 random bits from :mod:`secrets`, as
32 lower-case hex digits). Only its SHA-256 (:func:`lease_key`) is kept, in
memory and in the lease database, so neither a copy of the database nor a
table shows a lease id; a registry restart keeps every holder able to renew.

Error messages about a lease id name its type or length, never its value.
"""
import hashlib
import hmac
import secrets

from ..errors import LeaseError

__all__ = ['new_lease_id', 'lease_key', 'check_lease_id', 'key_matches', 'LEASE_ID_DIGITS',
           'NotHolder']

#: A lease id is this many hex digits (128 bits).
LEASE_ID_DIGITS = 32
_HEX = frozenset('0123456789abcdef')


class NotHolder(LeaseError):
    """A renew or release refused for its lease id: missing, malformed, or
    not the one of the grant it names (the registry counts these)."""


def new_lease_id():
    """A fresh lease id: 128 random bits, 32 lower-case hex digits."""
    return secrets.token_hex(LEASE_ID_DIGITS // 2)


def check_lease_id(value):
    """``value`` if it is a well-formed lease id, else LeaseError (one line,
    without the value: a near-miss of a secret is still half a secret)."""
    if value is None:
        raise NotHolder('lease_id is required: renew and release need the lease_id '
                         'acquire returned to the requester (the public token is not '
                         "enough); force_release ends someone else's lease")
    if not isinstance(value, str):
        raise NotHolder(f'lease_id must be a string of {LEASE_ID_DIGITS} hex digits, '
                         f'not a {type(value).__name__}')
    if len(value) != LEASE_ID_DIGITS or not _HEX.issuperset(value):
        raise NotHolder(f'lease_id must be {LEASE_ID_DIGITS} lower-case hex digits, not '
                         f'{len(value)} character(s) of something else')
    return value


def lease_key(lease_id):
    """The stored form of a (checked) lease id: its SHA-256, hex."""
    return hashlib.sha256(check_lease_id(lease_id).encode()).hexdigest()


def key_matches(key, lease_id):
    """Whether ``lease_id`` is the one whose stored key is ``key`` (a key of
    None, a lease granted before lease ids, matches nothing). Constant time."""
    return key is not None and hmac.compare_digest(key, lease_key(lease_id))
