"""Hold demo/hwp and run fake-hwp's delay_task with the grant's credential
(the registry is the site's access director; see docs/access.rst)."""
from ocs.ocs_client import OCSClient

from ocs_locking.leases.reservation import Reservation


def calibrate(site_args):
    """Reserve demo/hwp, then drive fake-hwp as its holder: ``site_args``
    are the site options, e.g. ``['--site-file', 'run/site.yaml',
    '--site-host', 'demo']``. Returns the task's reply."""
    with Reservation(['demo/hwp'], 'alice', lease=60, note='calibration',
                     args=site_args) as res:
        hwp = OCSClient('fake-hwp', privs=res.grant_privs, args=site_args)
        return hwp.delay_task(delay=0)
