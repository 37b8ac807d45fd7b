"""Proofs over a lease audit log: no overlapping holds, tokens only grew.

The fault tests read the registry's audit log (``LeaseStore.history``,
reversed to oldest first) after each fault and call :func:`check_audit`.
"""
import json

from .paths import conflicts

__all__ = ['check_audit']

#: Audit actions that end a grant; the row's ``token`` names which.
ENDS = ('release', 'force_release', 'expire')


def _detail(row):
    detail = row.get('detail') or {}
    return json.loads(detail) if isinstance(detail, str) else detail


def _tree(row):
    return bool(_detail(row).get('tree'))


def check_audit(rows):
    """Replay audit ``rows`` (dicts, oldest first) and list what went wrong.

    Returns one string per violation (empty when the log is sound):

    * a grant that conflicts (by :func:`~.state.conflicts`) with a grant still
      held at that point, whoever the owners;
    * a token not larger than the previous token granted on that resource;
    * a release, revocation or expiry of a grant that was not held.

    A ``regrant`` row (a holder's folded re-grants) counts as a grant of its
    token, followed by its release when its detail says ``released``.
    Rows with ``ok`` false (refusals) and other actions (queue, renew, ...)
    change nothing. Give the whole log: a window that starts while grants
    are held reports their ends as violations.
    """
    held = {}       # (resource, token) -> (owner, tree, row id)
    last = {}       # resource -> last token granted on it
    problems = []
    for row in rows:
        if not row.get('ok', True):
            continue
        action, res, token, rid = row['action'], row['resource'], row['token'], row.get('id')
        if action in ('grant', 'regrant'):
            tree = _tree(row)
            for (other, other_token), (owner, other_tree, since) in held.items():
                if conflicts(res, tree, other, other_tree):
                    problems.append(
                        f'row {rid}: {row["owner"]!r} got {res!r} (token {token}, '
                        f'tree={tree}) while {owner!r} held {other!r} (token {other_token}, '
                        f'tree={other_tree}, row {since})')
            if res in last and token <= last[res]:
                problems.append(f'row {rid}: token {token} on {res!r} is not larger than '
                                f'the previous token {last[res]}')
            last[res] = max(token, last.get(res, token))
            held[(res, token)] = (row['owner'], tree, rid)
            if action == 'regrant' and _detail(row).get('released'):
                del held[(res, token)]
        elif action in ENDS and held.pop((res, token), None) is None:
            problems.append(f'row {rid}: {action} of {res!r} token {token}, which was '
                            f'not held')
    return problems
