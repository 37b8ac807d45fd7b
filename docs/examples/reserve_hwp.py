"""A schedule reserves the HWP and the mount for a calibration.

Run by tests/integration/test_leases.py against a real site.
"""
from ocs_locking.leases.reservation import LeaseLost, Reservation, ReservationBusy, RetryPolicy


def calibrate(site_args, steps, run):
    """Run each step while holding satp1/hwp and satp1/mount; say how it ended."""
    try:
        with Reservation(['satp1/hwp', 'satp1/mount'], owner='schedule-7', lease=30,
                         note='HWP calibration', args=site_args,
                         retry=RetryPolicy(attempts=5, first=1, factor=2,
                                           max_delay=10, deadline=60)) as r:
            for step in steps:
                with r.guard():         # LeaseLost (step not run) once the lease is gone
                    run(step, r.tokens)     # hand the fencing tokens to the agents
        return 'done'
    except ReservationBusy as e:
        return f'gave up: {e}'          # e.holders: who holds what
    except LeaseLost as e:
        return f'lost the reservation: {e}'
