"""Token scopes: what a pull or a push asks the token service for."""

from __future__ import annotations


def push_scope(repository: str, *pull_from: str) -> str:
    """The token scope a push needs: pull and push on ``repository``, and pull on each
    repository a blob is mounted from."""
    scopes = [f"repository:{repository}:pull,push"]
    scopes += [f"repository:{other}:pull" for other in pull_from if other != repository]
    return " ".join(scopes)


def merge_scopes(*scopes: str) -> list[str]:
    """Space-separated scopes merged to one per resource, actions in first-seen order:
    ``repository:a:pull`` and ``repository:a:pull,push`` give ``["repository:a:pull,push"]``."""
    actions: dict[str, list[str]] = {}
    for item in " ".join(scopes).split():
        resource, _, wanted = item.rpartition(":")
        merged = actions.setdefault(resource or item, [])
        merged.extend(a for a in wanted.split(",") if resource and a and a not in merged)
    return [f"{r}:{','.join(a)}" if a else r for r, a in actions.items()]
