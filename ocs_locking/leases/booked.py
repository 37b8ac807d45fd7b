"""Booked reservations for scripts and schedules: book, cancel, read the
calendar, find the next free window, and hold a booking's lease.

Each call is one request to the registry's booking procedure
(``<registry>.lease.book`` ...) through the router's HTTP bridge, like a
Reservation's lease calls::

    from ocs_locking.leases.booked import Calendar
    from ocs_locking.leases.reservation import Reservation

    cal = Calendar(args=['--site-file', 'site.yaml'])
    start = cal.next_free(['satp1/hwp'], 3600, after_in=600)['start']
    b = cal.book(['satp1/hwp'], 'schedule-42', start=start, end=start + 3600,
                 note='HWP calibration')
    # keep b['booking_id'] and b['claim'] (the claim key, shown once) ...
    with Reservation.booked(b['booking_id'], b['claim'], args=[...]) as r:
        calibrate(token=r.tokens['satp1/hwp'])      # from the booking's start

Times are the registry's clock: ``start``/``end`` are UTC seconds;
``start_in``/``end_in``/``after_in`` are seconds from the registry's now (so
no two hosts' clocks are ever compared). Every refusal raises
:class:`ReservationError` with the registry's one line.
"""
from ..errors import ReservationError
from .bridge import lease_transport

__all__ = ['Calendar']


class Calendar:
    """The registry's calendar, for a script.

    Args:
        registry (str): instance-id of the LockRegistryAgent.
        args (list): site arguments, as for ``OCSClient``.
        client: a transport with ``lease_call(name, params, wait)`` (tests,
            a Reservation's), or an ``OCSClient``; default a BridgeClient.
        client_id (str): the identity recorded in the audit log.
    """

    def __init__(self, registry='lock-registry', args=None, client=None, client_id=''):
        self.registry, self.args, self.client_id = registry, args, client_id
        self._client = client

    @property
    def client(self):
        self._client = lease_transport(self.registry, self.args, self._client)
        return self._client

    def call(self, name, params_wait=0.0, **params):
        """The answer's data, or ReservationError with the one-line reason
        (``params_wait``: how long the registry may take, seconds)."""
        ans = self.client.lease_call(name, params, params_wait)
        if not ans.ok:
            raise ReservationError(f'{name.replace("_", "-")}: {ans.reason}')
        return ans.data

    def book(self, resources, owner, start=None, end=None, start_in=None, end_in=None,
             tree=False, note=''):
        """Book ``resources`` (a path or a list) for a window; returns the
        booking (``booking_id``, ``start``, ``end``... and ``claim``, the
        secret claim key, given once: it is the lease_id of the lease the
        booking becomes). Give ``start`` or ``start_in``, ``end`` or ``end_in``."""
        params = {k: v for k, v in (('start', start), ('end', end), ('start_in', start_in),
                                    ('end_in', end_in)) if v is not None}
        return self.call('book', resource=resources, owner=owner, tree=tree, note=note,
                         client=self.client_id, **params)

    def unbook(self, booking, claim):
        """Cancel a booking with its claim key (a held one's lease is released)."""
        return self.call('unbook', booking=booking, claim=claim, client=self.client_id)

    def bookings(self, resource=None, done=False):
        """The bookings by start (``calendar``): a list of dicts."""
        params = {} if resource is None else {'resource': resource}
        return self.call('calendar', done=done, **params)['bookings']

    def next_free(self, resources, length, after=None, after_in=None, tree=False):
        """``{'start', 'end', 'starts_in'}`` of the next window of ``length``
        seconds no booking on ``resources`` overlaps (``start`` None: none
        within 30 days)."""
        params = {'after': after} if after is not None else \
            {'after_in': after_in if after_in is not None else 0.0}
        return self.call('next_free', resource=resources, length=length, tree=tree, **params)
