"""The one place that decides what a user may see and do.

Every page, API endpoint and CLI path acting for a user goes through this module: querysets
through ``restrict(queryset, user, action)``, acts for a team through ``require``. An object
outside the restricted set is "not found" (404), never "forbidden", so names do not leak.

Roles, weakest first (each can do what the ones before it can):
- viewer: browse the team's catalog, pull into the team;
- developer: also push, import, create containers, write in them and commit;
- maintainer: also delete tags and images, manage the team's robot tokens and registry logins;
- owner: also manage members and roles, and read the audit log.
Staff see and do everything. A repository marked public is visible (not writable) to every
signed-in user. A token's scope caps what its requests may do: ``read`` acts as a viewer
whatever its user's roles, ``read-write`` as at most a developer for a robot.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Exists, Model, OuterRef, Q, QuerySet

from layerhub.accounts.models import ROLE_ORDER, AuditEntry, Membership, Role, Team, Token

M = TypeVar("M", bound=Model)

VIEW = "view"  # browse
PULL = "pull"  # pull into the team
CHANGE = "change"  # push, import, containers, commit
DELETE = "delete"  # delete tags and images
MANAGE = "manage"  # robot tokens, registry logins
ADMIN = "admin"  # members and roles, the audit log

ACTIONS = (VIEW, PULL, CHANGE, DELETE, MANAGE, ADMIN)

ROLE_FOR_ACTION: dict[str, Role] = {
    VIEW: Role.VIEWER,
    PULL: Role.VIEWER,
    CHANGE: Role.DEVELOPER,
    DELETE: Role.MAINTAINER,
    MANAGE: Role.MAINTAINER,
    ADMIN: Role.OWNER,
}

# set on a request's user by token authentication: the most the token's scope allows
SCOPE_ATTRIBUTE = "layerhub_role_cap"


def _cap(user: Any) -> Role | None:
    cap = getattr(user, SCOPE_ATTRIBUTE, None)
    return Role(cap) if cap else None


def scope_cap(token: Token) -> Role:
    """The strongest role a request made with ``token`` may act with."""
    if token.scope == Token.Scope.READ:
        return Role.VIEWER
    if token.kind == Token.Kind.ROBOT:
        return Role.DEVELOPER
    return Role.OWNER


def _signed_in(user: Any) -> bool:
    return user is not None and bool(user.is_authenticated) and bool(user.is_active)


def is_staff(user: Any) -> bool:
    """Staff and superusers see and do everything (within their token's scope)."""
    return _signed_in(user) and bool(user.is_staff or user.is_superuser)


def _role_allowed(user: Any, action: str) -> list[Role] | None:
    """The roles that may ``action``, or None when the user's token scope forbids it."""
    needed = ROLE_FOR_ACTION[action]
    cap = _cap(user)
    if cap is not None and needed.rank > cap.rank:
        return None
    return [role for role in ROLE_ORDER if role.rank >= needed.rank]


def scope_allows(user: Any, action: str) -> bool:
    """Whether ``user`` is signed in and their token's scope (if they came with a token)
    allows ``action`` at all: what acts on the user's own account (personal tokens) asks."""
    return _signed_in(user) and _role_allowed(user, action) is not None


def teams_for(user: Any, action: str = VIEW) -> QuerySet[Team]:
    """The teams in which ``user`` may ``action``."""
    if action not in ROLE_FOR_ACTION:
        raise ValueError(f"unknown action {action!r}")
    if not _signed_in(user):
        return Team.objects.none()
    roles = _role_allowed(user, action)
    if roles is None:
        return Team.objects.none()
    if is_staff(user):
        return Team.objects.all()
    return Team.objects.filter(
        Exists(Membership.objects.filter(team=OuterRef("pk"), user=user, role__in=roles))
    )


def can(user: Any, action: str, team: Team | None) -> bool:
    """Whether ``user`` may ``action`` in ``team`` (None: store-wide work, staff only)."""
    if team is None:
        return is_staff(user) and _role_allowed(user, action) is not None
    return teams_for(user, action).filter(pk=team.pk).exists()


def require(user: Any, action: str, team: Team | None) -> None:
    """Raise PermissionDenied, with a message for people, unless ``user`` may ``action``."""
    if can(user, action, team):
        return
    if team is None:
        raise PermissionDenied("only staff may do this")
    needed = ROLE_FOR_ACTION[action]
    if _cap(user) is not None and _role_allowed(user, action) is None:
        raise PermissionDenied(f"this token's scope does not allow it (needs {needed})")
    raise PermissionDenied(f"you need the {needed} role in team {team.name} for this")


def team_choose(user: Any, name: str | None = None, action: str = VIEW) -> Team:
    """The team a CLI or API call acts for: ``name`` if given (and the user may ``action``
    there), else the user's only such team. Raises PermissionDenied naming the choices."""
    allowed = teams_for(user, action)
    if name:
        team = Team.objects.filter(name=name).first()
        if team is None or not allowed.filter(pk=team.pk).exists():
            if team is not None and teams_for(user, VIEW).filter(pk=team.pk).exists():
                require(user, action, team)
            raise PermissionDenied(f"no such team: {name}")
        return team
    mine = allowed.filter(memberships__user=user).distinct() if is_staff(user) else allowed
    choices = list(mine.order_by("name")[:21])
    if not choices and is_staff(user):
        # staff in no team act for the only team there is, if there is only one
        choices = list(allowed.order_by("name")[:21])
    if len(choices) == 1:
        return choices[0]
    if not choices:
        member_of = list(teams_for(user, VIEW).order_by("name")[:2])
        if len(member_of) == 1:
            require(user, action, member_of[0])  # says which role it takes there
        raise PermissionDenied("you are in no team that may do this; ask a team owner to add you")
    names = ", ".join(team.name for team in choices[:20])
    raise PermissionDenied(f"choose a team with --team: {names}")


def named_ids(user: Any) -> list[int] | None:
    """The primary keys of the repositories whose names ``user`` may read (None for staff:
    all), for a filter on a row's own tag column where a subquery would join again."""
    from layerhub.images.models import Repository

    if is_staff(user):
        return None
    return list(restrict(Repository.objects.all(), user, VIEW).values_list("pk", flat=True))


def named_by(user: Any) -> QuerySet[Any] | None:
    """The repositories whose names ``user`` may read, for code that shows names of images
    (tags, "shared with"): None when that is every repository (staff)."""
    from layerhub.images.models import Repository

    if is_staff(user):
        return None
    return restrict(Repository.objects.all(), user, VIEW)


def team_ids(user: Any, action: str = VIEW) -> list[int]:
    """The primary keys of ``teams_for(user, action)``, read once: a user is in a few teams,
    and a short literal list keeps the permission filters below uncorrelated (one index
    lookup per table, not a subquery per row)."""
    return list(teams_for(user, action).values_list("pk", flat=True))


def restrict(queryset: QuerySet[M], user: Any, action: str = VIEW) -> QuerySet[M]:
    """``queryset`` narrowed to what ``user`` may ``action``: nothing for anonymous users,
    everything for staff (within their token's scope)."""
    from layerhub.containers.models import Container
    from layerhub.images.models import Image, ImageLayer, Layer, RegistryCredential, Repository, Tag
    from layerhub.jobs.models import Job

    if action not in ROLE_FOR_ACTION:
        raise ValueError(f"unknown action {action!r}")
    if not _signed_in(user) or _role_allowed(user, action) is None:
        return queryset.none()
    model = queryset.model
    staff = is_staff(user)
    if staff and model is not Token:
        return queryset
    if model is Token:
        own = Q(kind=Token.Kind.PERSONAL, user=user)
        robots = Q(kind=Token.Kind.ROBOT, team_id__in=team_ids(user, MANAGE))
        return queryset.filter(own | robots)
    if model is AuditEntry:
        if action != VIEW:
            return queryset.none()
        return queryset.filter(team_id__in=team_ids(user, ADMIN))
    if model is Container:
        # developers create containers and delete their own work
        return queryset.filter(team_id__in=team_ids(user, CHANGE if action == DELETE else action))
    ids = team_ids(user, action)
    if model is Team:
        return queryset.filter(pk__in=ids)
    if model is Repository:
        if action == VIEW:
            return queryset.filter(Q(team_id__in=ids) | Q(public=True))
        return queryset.filter(team_id__in=ids)
    if model is Tag:
        return queryset.filter(repository_id__in=_repository_ids(ids, action))
    if model in (Image, ImageLayer, Layer) and action == VIEW and _sees_every_image(user, ids):
        # the same rows, without a filter to pay for on every query of the request
        return queryset
    if model is Image:
        return queryset.filter(_image_condition(ids, action))
    if model is ImageLayer:
        return queryset.filter(image_id__in=_image_ids(ids, action))
    if model is Layer:
        used = ImageLayer.objects.filter(image_id__in=_image_ids(ids, VIEW))
        return queryset.filter(pk__in=used.values("layer_id"))
    if model is Job:
        return queryset.filter(Q(team_id__in=ids) | Q(created_by=user))
    if model in (RegistryCredential, Membership):
        return queryset.filter(team_id__in=ids)
    raise TypeError(f"no permission rule for {model.__name__}")


SEES_ALL_ATTRIBUTE = "_layerhub_sees_every_image"


def _sees_every_image(user: Any, ids: list[int]) -> bool:
    """Whether ``user`` may see every image of the catalog (one team holding it all, say),
    answered once per user object (a request's): two counts, then every image query of the
    request runs unfiltered with the same rows."""
    from layerhub.images.models import Image

    known = getattr(user, SEES_ALL_ATTRIBUTE, None)
    if known is not None and known[0] == ids:
        return bool(known[1])
    visible = Image.objects.filter(_image_condition(ids, VIEW)).count()
    answer = visible == Image.objects.count()
    # an object that takes no attributes is asked again next time
    with contextlib.suppress(AttributeError):
        setattr(user, SEES_ALL_ATTRIBUTE, (ids, answer))
    return answer


def _repository_ids(ids: list[int], action: str) -> QuerySet[Any]:
    """The repositories teams ``ids`` may ``action`` (seeing: also the public ones), as a
    subquery of primary keys."""
    from layerhub.images.models import Repository

    condition = Q(team_id__in=ids)
    if action == VIEW:
        condition |= Q(public=True)
    return Repository.objects.filter(condition).values("pk")


def _image_ids(ids: list[int], action: str) -> QuerySet[Any]:
    """The images teams ``ids`` may ``action``, as a subquery of primary keys."""
    from layerhub.images.models import Image

    return Image.objects.filter(_image_condition(ids, action)).values("pk")


def _image_condition(ids: list[int], action: str) -> Q:
    """Images teams ``ids`` may ``action``: seeing one needs one visible repository naming it
    (or its team being one of them); changing or deleting one needs every repository naming
    it to be in those teams, so nobody deletes another team's image."""
    from layerhub.images.models import Image

    through = Image.repositories.through.objects
    named = through.filter(repository_id__in=_repository_ids(ids, action)).values("image_id")
    own = Q(pk__in=named) | Q(team_id__in=ids)
    if action == VIEW:
        return own
    foreign = through.exclude(repository_id__in=_repository_ids(ids, action)).values("image_id")
    return own & ~Q(pk__in=foreign)
