"""A team's registry logins: every member sees each registry's host, the team's user name
for it, its TLS state and mirrors (never a password); maintainers and owners add a login
(checked against the registry first) and delete one."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from layerhub.accounts.forms import RegistryLoginForm
from layerhub.accounts.models import Team
from layerhub.accounts.views import team_or_404
from layerhub.core.permissions import MANAGE, VIEW, can, require, restrict
from layerhub.engine.errors import LayerhubError
from layerhub.images.models import RegistryCredential
from layerhub.images.selectors import registry_access_list
from layerhub.images.services import registry_login, registry_logout


def _page(
    request: HttpRequest, team: Team, form: RegistryLoginForm | None = None, status: int = 200
) -> HttpResponse:
    manage = can(request.user, MANAGE, team)
    context: dict[str, Any] = {
        "team": team,
        "rows": registry_access_list(team),
        "can_manage": manage,
        "form": form or (RegistryLoginForm() if manage else None),
    }
    return render(request, "accounts/logins.html", context, status=status)


@require_http_methods(["GET", "HEAD", "POST"])
def team_logins(request: HttpRequest, name: str) -> HttpResponse:
    """The registries the team reaches, with its logins; POST checks a login against the
    registry (as ``docker login`` does) and keeps it for the team's pulls and pushes."""
    team = team_or_404(request, name)
    if request.method != "POST":
        return _page(request, team)
    require(request.user, MANAGE, team)
    form = RegistryLoginForm(request.POST)
    if not form.is_valid():
        return _page(request, team, form, status=400)
    try:
        saved = registry_login(
            team=team,
            host=form.cleaned_data["host"],
            username=form.cleaned_data["username"],
            password=form.cleaned_data["password"],
            insecure=form.cleaned_data["insecure"],
            user=request.user,
        )
    except LayerhubError as exc:
        # the registry's answer (denied, unreachable, a certificate it cannot trust)
        form.add_error(None, str(exc))
        return _page(request, team, form, status=400)
    messages.success(request, f"Login Succeeded: {saved.username}@{saved.host} for {team.name}.")
    return redirect("teams:logins", name=team.name)


@require_POST
def team_login_delete(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """Forget one of the team's registry logins."""
    team = team_or_404(request, name)
    login = (
        restrict(RegistryCredential.objects.filter(team=team), request.user, VIEW)
        .filter(pk=pk)
        .first()
    )
    if login is None:
        raise Http404("no such registry login")
    require(request.user, MANAGE, team)
    host = login.host
    registry_logout(login=login, user=request.user)
    messages.success(request, f"Removed {team.name}'s login for {host}.")
    return redirect("teams:logins", name=team.name)
