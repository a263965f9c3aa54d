"""Fields the API's serializers share: links, teams chosen for an act, objects the user sees."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from django.db.models import QuerySet
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request

from layerhub.accounts.models import Team
from layerhub.api.base import context_user
from layerhub.core.permissions import CHANGE, VIEW, restrict, team_choose


def api_url(context: Mapping[str, Any], name: str, *args: Any) -> str:
    """The absolute URL of the API route ``api:<name>``."""
    path = reverse(f"api:{name}", args=args)
    request: Request | None = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path


class VisiblePrimaryKeyField(serializers.PrimaryKeyRelatedField):  # type: ignore[type-arg]
    """An object by id among those the request's user may see (no other exists for them)."""

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        assert queryset is not None  # every use names its queryset
        return restrict(queryset, context_user(self.context), VIEW)


class TeamActSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A request that acts for a team: ``team`` (a name) if given, else the user's only team
    where they may ``team_action`` (a 403 lists the choices when there are several)."""

    team_action: ClassVar[str] = CHANGE

    team = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=63,
        help_text="the team to act for; default: your only team that may do this",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        name = attrs.get("team") or None
        attrs["team"] = team_choose(context_user(self.context), name, self.team_action)
        return attrs


def team_name(team: Team | None) -> str | None:
    """A team as the API names it."""
    return team.name if team is not None else None


PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description="how many results (at most 500)", required=False),
    OpenApiParameter("offset", int, description="where the page starts", required=False),
]


def page_of(serializer: type[serializers.Serializer], name: str) -> Any:  # type: ignore[type-arg]
    """The schema of a page of ``serializer``'s objects, for a list an action returns."""
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer(many=True),
        },
    )
