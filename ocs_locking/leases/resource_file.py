"""Reading a resources file (YAML) into a :class:`.resources.ResourceTree`.

The registry's ``--resources FILE`` and ``ocs-locks resources --file FILE``
both read it here, and check it against the agents of a site config
(:func:`site_agents`). YAML (PyYAML's safe loader) silently keeps the last of two
equal keys; this loader refuses them instead, so a path declared twice (or a
key given twice in one declaration) is one line naming the file, the key and
both lines. Every other check is :meth:`ResourceTree.from_config`'s.
"""
import yaml

from ..errors import ResourceConfigError
from .resources import ResourceTree

__all__ = ['load_resources', 'read_resources', 'site_agents']


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with the same key twice."""

    source = ''

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:           # an unhashable key: the base class says so
                break
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ResourceConfigError(
                    f'{self.source}: line {line}: {key!r:.60} is declared twice '
                    f'(first on line {first}); give each key once')
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_resources(text, source):
    """The ResourceTree of the YAML ``text`` (``source`` names it in errors)."""
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1})' if mark is not None else ''
        problem = getattr(e, 'problem', None) or type(e).__name__
        raise ResourceConfigError(f'{source}: not YAML{where}: {problem}') from None
    finally:
        loader.dispose()
    return ResourceTree.from_config(data, source)


def load_resources(path):
    """The ResourceTree of the resources file ``path``; raises
    ResourceConfigError in one line (missing, unreadable, not YAML, or a
    declaration the tree refuses)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, 'strerror', None) or type(e).__name__
        raise ResourceConfigError(f'cannot read the resources file {path}: {why}') from None
    return read_resources(text, path)


def site_agents(site_file):
    """``{instance_id: agent_class}`` of every host of the site file
    ``site_file``, or None when it cannot be read or is not of that form
    (the declared instances are then not checked)."""
    try:
        with open(site_file) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    hosts = data.get('hosts') if isinstance(data, dict) else None
    if not isinstance(hosts, dict):
        return None
    agents = {}
    for host in hosts.values():
        entries = host.get('agent-instances') if isinstance(host, dict) else None
        for inst in entries if isinstance(entries, list) else ():
            if isinstance(inst, dict) and isinstance(inst.get('instance-id'), str):
                agents[inst['instance-id']] = str(inst.get('agent-class', ''))
    return agents
