"""The accounts pages: teams and their members, API tokens (personal and robot), a team's
registry logins, and the audit log.

Every view finds its objects through ``restrict`` (one outside it is a 404: another team's
things do not exist for a user) and checks the act through ``require`` (a 403 with the role
it takes); every write goes through a service, which writes the audit entry.
"""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse

from layerhub.accounts.models import Membership, Team, team_name_validator
from layerhub.accounts.services import ROBOT_PREFIX
from layerhub.core.permissions import VIEW, restrict

TEAM_NAME = re.compile(team_name_validator.regex)


def team_or_404(request: HttpRequest, name: str) -> Team:
    """The team named ``name`` if the user sees it, else a 404 (another team's name is
    as unknown as a name nobody uses)."""
    if not TEAM_NAME.fullmatch(name):
        raise Http404(f"no such team: {name[:63]}")  # nor asked of the database (a NUL byte)
    team = restrict(Team.objects.all(), request.user, VIEW).filter(name=name).first()
    if team is None:
        raise Http404(f"no such team: {name}")
    return team


def people(team: Team, user: Any) -> QuerySet[Membership]:
    """The team's members the user sees, robots left out (a robot is its token, listed
    with the tokens)."""
    return (
        restrict(Membership.objects.filter(team=team), user, VIEW)
        .exclude(user__username__startswith=ROBOT_PREFIX)
        .select_related("user")
    )


def no_store(response: HttpResponse) -> HttpResponse:
    """A page that must not be kept by the browser or a proxy (a token's secret)."""
    response["Cache-Control"] = "no-store"
    return response
