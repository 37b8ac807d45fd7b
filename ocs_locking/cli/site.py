"""The site config and the registry, as ``ocs-locks`` finds them.

The site config is read and its hub checked, and the registry name must be
an instance-id, before any network call. When the router has no agent of
that name, a near miss of an instance the site config names gets a "did you
mean" (a registry the site config does not name is still asked: it may run
elsewhere).
"""
import difflib
import re

from ..errors import CliError
from ..wire import error_reason

__all__ = ['load_site', 'check_registry_name', 'did_you_mean', 'unreachable', 'registry_client',
           'site_instances']

NOT_RUNNING = 'it is not running (no such agent on the router)'

HUB_KEYS = ('wamp_server', 'wamp_http', 'wamp_realm', 'address_root')

_INSTANCE_ID = re.compile(r'^[A-Za-z0-9_-]{1,64}$')

NO_SITE = ('no site config: pass --site-file FILE (e.g. --site-file site-config/default.yaml '
           '--site-host demo for the demo site) or set OCS_CONFIG_DIR to a directory '
           'holding default.yaml')


def load_site(args):
    """The site config of ``args`` (ocs's ``site_config.get_config``), with a
    hub that names the router; CliError with one line otherwise."""
    from ocs import site_config
    try:
        site, _, _ = site_config.get_config(args, '*control*')
    except AssertionError:      # ocs asserts OCS_CONFIG_DIR is set
        if getattr(args, 'site', None) is not None and getattr(args, 'site_file', None):
            raise CliError('pass --site or --site-file, not both') from None
        raise CliError(NO_SITE) from None
    except OSError as e:
        raise CliError(f'cannot read the site config: {e.strerror}: {e.filename}') from None
    except Exception as e:      # YAML errors, missing sections...
        text = ' '.join(str(e).split())[:200] or type(e).__name__
        raise CliError(f'the site config is not valid: {type(e).__name__}: {text}') from None
    if site is None:
        raise CliError('no site config (--site none); ocs-locks needs one to find the router')
    missing = [k for k in HUB_KEYS if not isinstance(site.hub.data.get(k), str)]
    if missing:
        raise CliError(f"the site config's hub lacks {', '.join(missing)}")
    return site


def site_instances(site):
    """Every instance-id the site config names, on any host."""
    ids = set()
    for host in (getattr(site, 'hosts', None) or {}).values():
        for inst in getattr(host, 'instances', None) or ():
            if isinstance(inst, dict) and isinstance(inst.get('instance-id'), str):
                ids.add(inst['instance-id'])
    return ids


def check_registry_name(name):
    """Refuse a ``--registry`` that cannot be an instance-id (before any
    network call: the router would answer with an HTTP 500 page)."""
    if not isinstance(name, str) or not _INSTANCE_ID.match(name):
        raise CliError(f'no such registry name {name!r:.70}: an instance-id is 1-64 '
                       'letters, digits, _ or -')
    return name


def did_you_mean(name, site):
    """The instance of the site config ``name`` is a near miss of, or None."""
    known = site_instances(site)
    if name in known:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
    return close[0] if close else None


def unreachable(args, site, exc):
    """The CliError for a registry call that failed with ``exc``: "no such
    agent ...; did you mean ..." when the router has no such agent and the
    name is a near miss of an instance in the site config."""
    reason = error_reason(exc, not_running=NOT_RUNNING)
    close = did_you_mean(args.registry, site) if reason == NOT_RUNNING else None
    if close is not None:
        return CliError(f"no such agent {args.registry!r}; did you mean {close!r}?")
    return CliError(f"cannot reach the lock registry '{args.registry}' at "
                    f"{site.hub.data.get('wamp_http')}: {reason[:200]}")


def registry_client(args, privs=None):
    """An OCSClient of the registry; CliError with one line if unreachable."""
    from ocs.ocs_client import OCSClient
    site = load_site(args)
    try:
        return OCSClient(args.registry, privs=privs, args=args)
    except Exception as e:
        raise unreachable(args, site, e) from None
