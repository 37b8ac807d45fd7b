"""``ocs-locks resources``: the resources the site declares.

From the registry (its ``status`` task's ``resources`` block: what it
enforces now), or with ``--file FILE`` from a resources file read here
(checked as the registry would check it, and against the agents of
``--site-file`` when one is given), so an operator can try a change
before restarting the registry.
"""
import json
import sys

from ..errors import CliError, ResourceConfigError
from .formatters import format_resources

__all__ = ['cmd_resources', 'fetch_resources', 'file_resources']


def fetch_resources(args):
    """The registry's declared tree (``ResourceTree.as_dict()``), from one
    ``status`` page of one row; CliError when it has none to say."""
    from .leases import _run_task
    _, data = _run_task(args, 'status', {'limit': 1})
    tree = (data or {}).get('resources')
    if not isinstance(tree, dict) or not isinstance(tree.get('resources'), list):
        raise CliError(f"the registry '{args.registry}' reports no resources (it serves no "
                       f"site-wide leases, or predates --resources)")
    return tree


def file_resources(args):
    """The tree of ``args.file`` (checked against ``args.site_file``'s agents
    when given), as ``as_dict()``; CliError with the file's one line."""
    from ..leases.resource_file import load_resources, site_agents
    try:
        tree = load_resources(args.file)
        site_file = getattr(args, 'site_file', None)
        agents = site_agents(site_file) if site_file else None
        if agents is not None:
            tree.check_site(agents, site_file)
    except ResourceConfigError as e:
        raise CliError(str(e)) from None
    return tree.as_dict()


def cmd_resources(args):
    tree = file_resources(args) if args.file else fetch_resources(args)
    if args.json:
        sys.stdout.write(json.dumps(tree, indent=1) + '\n')
    else:
        sys.stdout.write(format_resources(tree) + '\n')
    return 0
