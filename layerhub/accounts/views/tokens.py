"""API tokens: a user's personal tokens, and a team's robot tokens (maintainers and owners).

A token's secret is shown once, on the page that answers its creation (never cached, never
put in the session or a redirect), and never again: only its hash and first characters are
kept. Revoking is at once.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from layerhub.accounts.forms import TokenCreateForm
from layerhub.accounts.models import Team, Token
from layerhub.accounts.services import token_create, token_revoke
from layerhub.accounts.views import no_store, team_or_404
from layerhub.core.permissions import MANAGE, VIEW, require, restrict


def _personal(request: HttpRequest) -> QuerySet[Token]:
    user: Any = request.user
    return restrict(Token.objects.filter(kind=Token.Kind.PERSONAL, user=user), user, VIEW)


def _robots(request: HttpRequest, team: Team) -> QuerySet[Token]:
    return restrict(
        Token.objects.filter(kind=Token.Kind.ROBOT, team=team), request.user, VIEW
    ).select_related("created_by")


def _page(
    request: HttpRequest,
    tokens: QuerySet[Token],
    *,
    team: Team | None,
    form: TokenCreateForm,
    created: tuple[Token, str] | None = None,
    status: int = 200,
) -> HttpResponse:
    context: dict[str, Any] = {
        "team": team,
        "tokens": list(tokens.order_by("revoked_at", "-created_at", "-pk")),
        "form": form,
        "created": created[0] if created else None,
        "secret": created[1] if created else "",
    }
    response = render(request, "accounts/tokens.html", context, status=status)
    # the token list changes with every create and revoke, and the create page holds a secret
    return no_store(response)


def _create(request: HttpRequest, tokens: QuerySet[Token], team: Team | None) -> HttpResponse:
    form = TokenCreateForm(request.POST)
    if form.is_valid():
        try:
            created = token_create(
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                team=team,
                actor=request.user,
            )
        except ValidationError as exc:
            form.add_error("name", exc.messages[0])
        else:
            # shown on this answer alone: a reload asks to send the form again, and makes
            # another token, never this secret again
            return _page(request, tokens, team=team, form=TokenCreateForm(), created=created)
    return _page(request, tokens, team=team, form=form, status=400)


@require_http_methods(["GET", "HEAD", "POST"])
def personal_tokens(request: HttpRequest) -> HttpResponse:
    """The user's personal tokens (they act as the user, capped by their scope); POST makes
    one and shows its secret once."""
    tokens = _personal(request)
    if request.method == "POST":
        return _create(request, tokens, None)
    return _page(request, tokens, team=None, form=TokenCreateForm())


@require_POST
def personal_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke one of the user's personal tokens."""
    token = _personal(request).filter(pk=pk).first()
    if token is None:
        raise Http404("no such token")
    token_revoke(token=token, actor=request.user)
    messages.success(request, f"Revoked token {token.name} ({token.key_prefix}...).")
    return redirect("tokens:list")


@require_http_methods(["GET", "HEAD", "POST"])
def robot_tokens(request: HttpRequest, name: str) -> HttpResponse:
    """A team's robot tokens (maintainers and owners): each acts as a robot member of the
    team alone, a viewer (read) or a developer (read-write)."""
    team = team_or_404(request, name)
    require(request.user, MANAGE, team)
    tokens = _robots(request, team)
    if request.method == "POST":
        return _create(request, tokens, team)
    return _page(request, tokens, team=team, form=TokenCreateForm())


@require_POST
def robot_token_revoke(request: HttpRequest, name: str, pk: int) -> HttpResponse:
    """Revoke a robot token of the team; its robot leaves the team with it."""
    team = team_or_404(request, name)
    require(request.user, MANAGE, team)
    token = _robots(request, team).filter(pk=pk).first()
    if token is None:
        raise Http404("no such token")
    token_revoke(token=token, actor=request.user)
    messages.success(request, f"Revoked robot token {token.name} ({token.key_prefix}...).")
    return redirect("teams:tokens", name=team.name)
