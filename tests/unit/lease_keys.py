"""Lease ids for the lease tests written in fencing tokens.

:class:`KeyedState` is the real LeaseState; only, when a test renews or
releases with an ``int`` (a token, as those tests were written), it looks up
the lease id the registry gave the grant ``(resource, token)`` (heard from
the grant Outcomes) and makes the real call with it; a token never granted
becomes a lease id never issued. Tests of the lease id rules themselves pass
lease ids (``out.lease_id``).
"""
from ocs_locking.leases.state import LeaseState

#: A well-formed lease id no grant ever had.
UNISSUED = 'f' * 32


class KeyedState(LeaseState):

    def __init__(self, *args, lease_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        #: (resource, token) -> the lease id of that grant; share it with a
        #: restarted state (``lease_ids=old.lease_ids``)
        self.lease_ids = {} if lease_ids is None else lease_ids
        self.add_listener(self._heard)

    def _heard(self, action, item):
        if action == 'grant':
            for g in item.grants:
                self.lease_ids[(g.resource, g.token)] = item.lease_id

    def lease_id(self, resource, token):
        return self.lease_ids.get((resource, token), UNISSUED)

    def _id(self, resource, key):
        if isinstance(key, int) and not isinstance(key, bool):
            return self.lease_id(resource, key)
        return key

    def renew(self, resource, lease_id, *args, **kwargs):
        return super().renew(resource, self._id(resource, lease_id), *args, **kwargs)

    def release(self, resource, lease_id, *args, **kwargs):
        return super().release(resource, self._id(resource, lease_id), *args, **kwargs)
