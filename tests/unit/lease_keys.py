"""Lease ids for the lease tests written in fencing tokens.

:class:`KeyedState` is the real LeaseState; only, when a test renews or
releases with an ``int`` (a token, as those tests were written), it looks up
the lease id the registry gave the grant ``(resource, token)`` (heard from
the grant Outcomes, also those of grants the call itself makes first) and
checks that one; a token never granted becomes a lease id never issued. Tests of the lease id rules themselves pass
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

    # A token is turned into its lease id where the real call checks the
    # lease id (after the expiries and grants the call applies first, whose
    # Outcomes listeners hear only after the call).
    _token = None

    def _holding(self, resource, lease_id):
        if self._token is not None:
            for action, item in self._batch.notices:
                self._heard(action, item)
            lease_id = self.lease_id(resource, self._token)
        return super()._holding(resource, lease_id)

    def _by_token(self, method, resource, key, *args, **kwargs):
        if not isinstance(key, int) or isinstance(key, bool):
            return method(resource, key, *args, **kwargs)
        self._token = key
        try:
            return method(resource, UNISSUED, *args, **kwargs)
        finally:
            self._token = None

    def renew(self, resource, lease_id, *args, **kwargs):
        return self._by_token(super().renew, resource, lease_id, *args, **kwargs)

    def release(self, resource, lease_id, *args, **kwargs):
        return self._by_token(super().release, resource, lease_id, *args, **kwargs)
