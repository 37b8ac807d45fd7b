"""``ocs-locks crossbar-config IN.json OUT.json``: run the bus component.

Reads a crossbar config (e.g. the one ocs generates), rewrites it with
:func:`ocs_locking.bus.config.rewrite` (the bus component, and the live page
at ``/locks/`` unless ``--no-page``) and writes the result; running it on
its own output changes nothing. No network, no site config needed.
"""
import os

from ..bus import config as bus_config
from ..errors import CliError

__all__ = ['cmd_crossbar_config']


def cmd_crossbar_config(opts):
    try:
        with open(opts.input) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f'cannot read crossbar config {opts.input}: '
                       f'{getattr(e, "strerror", None) or e}') from None
    try:
        cfg = bus_config.parse(text, where=f'crossbar config {opts.input}')
        out = bus_config.rewrite(cfg, address_root=opts.address_root or 'observatory',
                                 registry=opts.registry, realm=opts.realm,
                                 where=f'crossbar config {opts.input}',
                                 page=getattr(opts, 'page', 'locks'),
                                 standbys=getattr(opts, 'standby', None) or ())
        if opts.pythonpath:
            out = bus_config.add_pythonpath(out, os.path.abspath(opts.pythonpath))
    except bus_config.ConfigError as e:
        raise CliError(str(e)) from None
    tmp = f'{opts.output}.tmp'
    try:
        with open(tmp, 'w') as f:
            f.write(bus_config.dumps(out))
        os.replace(tmp, opts.output)
    except OSError as e:
        raise CliError(f'cannot write {opts.output}: {e.strerror}') from None
    unchanged = ' (unchanged: it already ran the component)' if out == cfg else ''
    print(f'wrote {opts.output}: {bus_config.summary(out)}{unchanged}')
    return 0
