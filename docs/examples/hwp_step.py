"""A step that needs the half-wave plate to itself, meant to run under
``ocs-locks run``, which holds the lease on ``demo/hwp`` while it runs::

    ocs-locks --site-file run/site.yaml --site-host demo run demo/hwp --lease 30 \\
        --note "hwp step" -- python docs/examples/hwp_step.py \\
        --site-file run/site.yaml --site-host demo

It drives fake-hwp (covered by ``demo/hwp``; the registry directs its
access) with the grant's credential that ``run`` passes in
``$OCS_LOCKS_PRIVS``, and names the fencing token it ran under.
"""
import os
import sys

from ocs.ocs_client import OCSClient


def main(site_args):
    token = os.environ['OCS_LOCKS_TOKEN']           # one resource: its fencing token
    privs = os.environ.get('OCS_LOCKS_PRIVS')       # secret: never print it
    hwp = OCSClient('fake-hwp', privs=privs, args=site_args)
    reply = hwp.delay_task(delay=0)
    if reply.status != 0 or not reply.session.get('success'):
        print(f'delay_task refused: {reply.msg}', file=sys.stderr)
        return 1
    print(f'delay_task done under {os.environ["OCS_LOCKS_RESOURCES"]} token {token}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
