"""The API's permission hook: every decision is ``layerhub.core.permissions``'.

Lists and lookups read ``restrict(queryset, user, VIEW)`` (the viewsets' base), so an object
the user may not see is a 404. An object they see but may not act on (a viewer deleting a tag,
a read token committing) is a 403 whose message says what is missing.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import Model
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from layerhub.accounts.models import Team
from layerhub.core.permissions import (
    ROLE_FOR_ACTION,
    VIEW,
    require,
    restrict,
    scope_allows,
    teams_for,
)

VERBS = {
    "view": "see",
    "pull": "pull into",
    "change": "change",
    "delete": "delete",
    "manage": "manage",
    "admin": "administer",
}


def _teams_of(obj: Any) -> list[Team]:
    """The teams an object belongs to, for the message of a refusal."""
    from layerhub.images.models import Image, Tag

    if isinstance(obj, Team):
        return [obj]
    if isinstance(obj, Tag):
        return [obj.repository.team]
    if isinstance(obj, Image):
        teams = [obj.team] if obj.team is not None else []
        return teams + [repo.team for repo in obj.repositories.select_related("team")]
    team = getattr(obj, "team", None)
    return [team] if isinstance(team, Team) else []


def require_on(user: Any, action: str, obj: Model) -> None:
    """Raise PermissionDenied, with a message, unless ``user`` may ``action`` ``obj`` (which
    the caller found in what the user may see)."""
    if restrict(type(obj)._default_manager.filter(pk=obj.pk), user, action).exists():
        return
    if not scope_allows(user, action):
        needed = ROLE_FOR_ACTION[action]
        raise PermissionDenied(f"this token's scope does not allow it (needs {needed})")
    visible = set(teams_for(user, VIEW).values_list("pk", flat=True))
    teams = _teams_of(obj)
    mine = [team for team in teams if team.pk in visible]
    # the user's own team names the reason (a missing role, a token's scope); another team
    # is never named
    for team in mine:
        require(user, action, team)
    if not teams:
        require(user, action, None)  # store-wide: staff only
    name = type(obj)._meta.verbose_name
    reason = ": another team's repository names it too" if len(mine) < len(teams) else ""
    raise PermissionDenied(f"you may not {VERBS.get(action, action)} this {name}{reason}")


class Restricted(BasePermission):
    """A signed-in user (a session or a token); for an object, the view's action allowed on it.

    A view says which action each of its endpoints needs with ``permission_action()``;
    anything else is VIEW, already applied to its queryset.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user is not None and user.is_authenticated and user.is_active)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        action = view.permission_action() if hasattr(view, "permission_action") else VIEW
        if action != VIEW:
            require_on(request.user, action, obj)
        return True
