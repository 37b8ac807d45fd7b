"""A schedule books the HWP for a calibration in the next free window and
runs it there, from the booking's start to its end.

Run by tests/integration/test_bookings.py against a real site.
"""
from ocs_locking.leases.booked import Calendar
from ocs_locking.leases.reservation import LeaseLost, Reservation


def book_calibration(site_args, length, after_in):
    """Book ``length`` seconds of demo/hwp in its next free window from
    ``after_in`` seconds on; returns the booking (with its claim key)."""
    cal = Calendar(args=site_args, client_id='schedule-7')
    window = cal.next_free(['demo/hwp'], length, after_in=after_in)
    return cal.book(['demo/hwp'], 'schedule-7', start=window['start'], end=window['end'],
                    note='HWP calibration')


def run_calibration(site_args, booking, claim, steps, run):
    """Hold the booking's lease from its start and run each step under it
    (``run(step, token)``); say how it ended."""
    res = Reservation.booked(booking, claim, args=site_args,
                             on_preempt=lambda reason, deadline: print('ending:', reason))
    try:
        with res:                   # waits for the start; the lease ends at the end
            for step in steps:
                with res.guard():   # LeaseLost (step not run) once the booking is over
                    run(step, res.tokens['demo/hwp'])
        return 'done'
    except LeaseLost as e:
        return f'lost: {e}'
