"""The audit log: who did what and when, for team owners (their teams' entries) and staff
(every entry). Read-only: nothing on the site edits or deletes an entry."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from layerhub.accounts.forms import AUDIT_ACTIONS, AuditFilterForm
from layerhub.accounts.models import AuditEntry
from layerhub.core.permissions import ADMIN, VIEW, is_staff, restrict, teams_for
from layerhub.images.views import wants_fragment

ENTRIES_PER_PAGE = 50


def reads_audit(user: Any) -> bool:
    """Whether ``user`` may open the audit log: staff, or the owner of a team."""
    return is_staff(user) or teams_for(user, ADMIN).exists()


@require_safe
def audit_log(request: HttpRequest) -> HttpResponse:
    """The entries the user may read, newest first, filtered by team and action, a page at
    a time (``?page=``; a page past the end shows the last)."""
    if not reads_audit(request.user):
        raise PermissionDenied("only team owners and staff read the audit log")
    entries = restrict(AuditEntry.objects.select_related("team"), request.user, VIEW)
    form = AuditFilterForm(
        request.GET or None, teams=teams_for(request.user, ADMIN).order_by("name")
    )
    status = 200
    if form.is_bound and not form.is_valid():
        # a team the user does not own is "not a valid choice": its name tells nothing
        entries = entries.none()
        status = 400
    elif form.is_bound:
        team = form.cleaned_data.get("team")
        action = form.cleaned_data.get("action")
        if team is not None:
            entries = entries.filter(team=team)
        if action:
            entries = entries.filter(Q(action=action) | Q(action__startswith=f"{action}."))
    page = Paginator(entries.order_by("-at", "-id"), ENTRIES_PER_PAGE).get_page(
        request.GET.get("page")
    )
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "actions": AUDIT_ACTIONS,
        "filtered": form.is_bound and any(v for k, v in request.GET.items() if k != "page"),
    }
    template = (
        "accounts/htmx/audit_table.html" if wants_fragment(request) else "accounts/audit.html"
    )
    return render(request, template, context, status=status)
