"""The teams pages: the list (the user's teams; staff: all) with members, repositories,
logical bytes against the quota; a team's page with its members and roles. Owners add,
re-role and remove members; staff create teams and set quotas."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from layerhub.accounts.forms import MemberAddForm, MemberRoleForm, TeamCreateForm, TeamQuotaForm
from layerhub.accounts.models import AuditEntry, Membership, Role, Team, Token
from layerhub.accounts.services import (
    ROBOT_PREFIX,
    member_remove,
    member_set,
    team_create,
    team_quota_set,
)
from layerhub.accounts.views import people, team_or_404
from layerhub.core.permissions import ADMIN, MANAGE, VIEW, can, is_staff, require, restrict
from layerhub.images.models import RegistryCredential, Repository
from layerhub.images.sizes import logical_bytes, team_images, team_usage

TEAMS_PER_PAGE = 25


def _count(queryset: Any) -> Coalesce:
    """A per-team count as a Subquery annotation (no JOIN fan-out between two counts)."""
    return Coalesce(
        Subquery(
            queryset.filter(team=OuterRef("pk"))
            .order_by()
            .values("team")
            .annotate(n=Count("pk"))
            .values("n"),
            output_field=IntegerField(),
        ),
        0,
    )


def _list_context(request: HttpRequest, **forms: Any) -> dict[str, Any]:
    teams = (
        restrict(Team.objects.all(), request.user, VIEW)
        .annotate(
            member_count=_count(
                Membership.objects.exclude(user__username__startswith=ROBOT_PREFIX)
            ),
            repository_count=_count(Repository.objects.all()),
        )
        .order_by("name", "pk")
    )
    page = Paginator(teams, TEAMS_PER_PAGE).get_page(request.GET.get("page"))
    user: Any = request.user
    roles = dict(
        Membership.objects.filter(team__in=list(page.object_list), user=user).values_list(
            "team_id", "role"
        )
    )
    rows = []
    for team in page:
        # two aggregates per listed team: bounded by the page size
        used = logical_bytes(team_images(team))
        quota = team.quota_bytes
        rows.append(
            {
                "team": team,
                "role": roles.get(team.pk, ""),
                "logical_bytes": used,
                "percent": _percent(used, quota),
                "over": quota is not None and used > quota,
            }
        )
    staff = is_staff(request.user)
    return {
        "page": page,
        "rows": rows,
        "staff": staff,
        "create_form": forms.get("create_form") or (TeamCreateForm() if staff else None),
    }


def _percent(used: int, quota: int | None) -> float:
    if quota is None:
        return 0.0
    if quota == 0:
        return 100.0 if used else 0.0
    return min(100.0 * used / quota, 100.0)


@require_safe
def team_list(request: HttpRequest) -> HttpResponse:
    """The user's teams (staff: every team), a page at a time."""
    return render(request, "accounts/team_list.html", _list_context(request))


@require_POST
def team_create_view(request: HttpRequest) -> HttpResponse:
    """Staff create a team (they own it) with an optional quota."""
    require(request.user, ADMIN, None)
    form = TeamCreateForm(request.POST)
    if form.is_valid():
        try:
            team = team_create(
                name=form.cleaned_data["name"],
                quota_bytes=form.cleaned_data["quota"],
                actor=request.user,
            )
        except ValidationError as exc:
            form.add_error("name", exc.messages[0])
        except IntegrityError:  # made at the same moment by someone else
            form.add_error("name", f"there is a team named {form.cleaned_data['name']} already")
        else:
            messages.success(request, f"Created team {team.name}.")
            return redirect("teams:detail", name=team.name)
    return render(
        request, "accounts/team_list.html", _list_context(request, create_form=form), status=400
    )


def _detail_context(request: HttpRequest, team: Team, **forms: Any) -> dict[str, Any]:
    user = request.user
    members = sorted(
        people(team, user),
        key=lambda m: (-Role(m.role).rank, m.user.get_username()),
    )
    admin = can(user, ADMIN, team)
    manage = can(user, MANAGE, team)
    staff = is_staff(user)
    mine = next((m for m in members if m.user_id == user.pk), None)
    return {
        "team": team,
        "usage": team_usage(team),
        "members": members,
        "my_role": mine.role if mine is not None else "",
        "roles": Role.choices,
        "can_admin": admin,
        "can_manage": manage,
        "staff": staff,
        "repositories": restrict(Repository.objects.filter(team=team), user, VIEW).count(),
        "logins": restrict(RegistryCredential.objects.filter(team=team), user, VIEW).count(),
        "robots": (
            restrict(Token.objects.filter(team=team, kind=Token.Kind.ROBOT), user, VIEW)
            .filter(revoked_at=None)
            .count()
            if manage
            else None
        ),
        "audit_entries": (
            restrict(AuditEntry.objects.filter(team=team), user, VIEW)[:5] if admin else []
        ),
        "add_form": forms.get("add_form") or (MemberAddForm(team=team) if admin else None),
        "quota_form": forms.get("quota_form")
        or (
            TeamQuotaForm(
                initial={"quota": team.quota_bytes if team.quota_bytes is not None else ""}
            )
            if staff
            else None
        ),
        "member_error": forms.get("member_error", ""),
    }


@require_safe
def team_detail(request: HttpRequest, name: str) -> HttpResponse:
    """A team: its usage against its quota, its members and their roles, and links to its
    robot tokens, registry logins and audit log."""
    team = team_or_404(request, name)
    return render(request, "accounts/team_detail.html", _detail_context(request, team))


def _refused(request: HttpRequest, team: Team, **forms: Any) -> HttpResponse:
    """The team's page again with a form's errors, as a 400."""
    return render(
        request, "accounts/team_detail.html", _detail_context(request, team, **forms), status=400
    )


@require_POST
def team_quota(request: HttpRequest, name: str) -> HttpResponse:
    """Staff set the team's quota (empty: no limit)."""
    team = team_or_404(request, name)
    require(request.user, ADMIN, None)
    form = TeamQuotaForm(request.POST)
    if not form.is_valid():
        return _refused(request, team, quota_form=form)
    try:
        team_quota_set(team=team, quota_bytes=form.cleaned_data["quota"], actor=request.user)
    except ValidationError as exc:
        form.add_error("quota", exc.messages[0])
        return _refused(request, team, quota_form=form)
    quota = form.cleaned_data["quota"]
    messages.success(
        request,
        f"Team {team.name} has no quota now."
        if quota is None
        else f"Team {team.name} may keep {quota:,} bytes of images.",
    )
    return redirect("teams:detail", name=team.name)


@require_POST
def member_add(request: HttpRequest, name: str) -> HttpResponse:
    """An owner adds a user to the team with a role."""
    team = team_or_404(request, name)
    require(request.user, ADMIN, team)
    form = MemberAddForm(request.POST, team=team)
    if not form.is_valid():
        return _refused(request, team, add_form=form)
    member = form.cleaned_data["username"]
    try:
        member_set(team=team, user=member, role=form.cleaned_data["role"], actor=request.user)
    except ValidationError as exc:
        form.add_error(None, exc.messages[0])
        return _refused(request, team, add_form=form)
    messages.success(
        request, f"Added {member.get_username()} to {team.name} as {form.cleaned_data['role']}."
    )
    return redirect("teams:detail", name=team.name)


def _membership(request: HttpRequest, team: Team, pk: int) -> Membership:
    """A person's membership of ``team`` the user sees (robots are not people here)."""
    membership = people(team, request.user).filter(pk=pk).first()
    if membership is None:
        raise Http404("no such member")
    return membership


@require_POST
def member_role(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """An owner changes a member's role (the last owner stays one)."""
    team = team_or_404(request, name)
    membership = _membership(request, team, pk)
    require(request.user, ADMIN, team)
    form = MemberRoleForm(request.POST)
    who = membership.user.get_username()
    if not form.is_valid():
        return _refused(request, team, member_error=f"{who}: choose a role from the list")
    try:
        member_set(
            team=team, user=membership.user, role=form.cleaned_data["role"], actor=request.user
        )
    except ValidationError as exc:
        return _refused(request, team, member_error=exc.messages[0])
    messages.success(request, f"{who} is a {form.cleaned_data['role']} of {team.name} now.")
    return redirect("teams:detail", name=team.name)


@require_POST
def member_remove_view(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """An owner takes a member out of the team (never its last owner)."""
    team = team_or_404(request, name)
    membership = _membership(request, team, pk)
    require(request.user, ADMIN, team)
    who = membership.user.get_username()
    try:
        member_remove(membership=membership, actor=request.user)
    except ValidationError as exc:
        return _refused(request, team, member_error=exc.messages[0])
    messages.success(request, f"Removed {who} from {team.name}.")
    if not restrict(Team.objects.filter(pk=team.pk), request.user, VIEW).exists():
        return redirect("teams:list")  # they left the team: its page is no longer theirs
    return redirect("teams:detail", name=team.name)
