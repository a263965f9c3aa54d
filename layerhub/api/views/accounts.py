"""Teams and members, tokens, registry logins and the audit log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.accounts.models import AuditEntry, Membership, Team, Token
from layerhub.accounts.services import (
    ROBOT_PREFIX,
    member_remove,
    member_set,
    token_create,
    token_revoke,
)
from layerhub.api.base import RestrictedViewSet
from layerhub.api.filters import AuditFilter, RegistryLoginFilter, TokenFilter
from layerhub.api.pagination import paginated
from layerhub.api.serializers.accounts import (
    AuditEntrySerializer,
    MemberSetSerializer,
    MembershipSerializer,
    RegistryLoginCreateSerializer,
    RegistryLoginSerializer,
    TeamSerializer,
    TokenCreatedSerializer,
    TokenCreateSerializer,
    TokenSerializer,
)
from layerhub.api.serializers.common import PAGE_PARAMETERS, page_of
from layerhub.core.permissions import ADMIN, MANAGE, VIEW, restrict, scope_allows
from layerhub.images.models import RegistryCredential
from layerhub.images.services import registry_login, registry_logout


@extend_schema(tags=["teams"])
class TeamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, RestrictedViewSet[Team]):
    """The teams you are in (staff: every team), with your role in each."""

    queryset = Team.objects.order_by("name")
    serializer_class = TeamSerializer
    lookup_field = "name"
    lookup_value_regex = "[a-z0-9][a-z0-9._-]{0,62}"
    permission_actions = {"member_set": ADMIN, "member_remove": ADMIN}

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        user = self.request.user
        if user is not None and user.is_authenticated:
            context["roles"] = dict(
                Membership.objects.filter(user=user).values_list("team_id", "role")
            )
        return context

    @extend_schema(
        summary="The team's members and their roles",
        parameters=PAGE_PARAMETERS,
        responses=page_of(MembershipSerializer, "MembershipPage"),
    )
    @action(detail=True, methods=["get"])
    def members(self, request: Request, name: str) -> Response:
        team = self.get_object()
        members = restrict(Membership.objects.filter(team=team), request.user, VIEW)
        members = members.select_related("user").order_by("user__username")
        return paginated(request, self, members, MembershipSerializer)

    @extend_schema(
        summary="Add a member, or change a member's role (owners)",
        request=MemberSetSerializer,
        responses=MembershipSerializer,
    )
    @members.mapping.post
    def member_set(self, request: Request, name: str) -> Response:
        team = self.get_object()
        form = MemberSetSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        username = form.validated_data["username"]
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None or username.startswith(ROBOT_PREFIX):
            raise ValidationError({"username": f"no such user: {username}"})
        membership = member_set(
            team=team, user=user, role=form.validated_data["role"], actor=request.user
        )
        return Response(MembershipSerializer(membership).data)

    @extend_schema(summary="Take a member out of the team (owners; never its last owner)")
    @action(detail=True, methods=["delete"], url_path="members/(?P<username>[^/]{1,150})")
    def member_remove(self, request: Request, name: str, username: str) -> Response:
        team = self.get_object()
        membership = get_object_or_404(
            Membership.objects.select_related("team", "user"), team=team, user__username=username
        )
        member_remove(membership=membership, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["tokens"])
class TokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    RestrictedViewSet[Token],
):
    """Your personal tokens, and the robot tokens of the teams you manage."""

    queryset = Token.objects.select_related("team", "user", "created_by")
    serializer_class = TokenSerializer
    filterset_class = TokenFilter
    lookup_value_regex = "[0-9]{1,18}"
    permission_actions = {"destroy": MANAGE}

    @extend_schema(
        summary="A personal token, or a robot token of a team (its secret shown this once)",
        request=TokenCreateSerializer,
        responses={201: TokenCreatedSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        user = request.user
        if not scope_allows(user, MANAGE):
            raise PermissionDenied("this token's scope does not allow making tokens")
        form = TokenCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        token, secret = token_create(
            name=data["name"], actor=user, scope=data["scope"], team=data["team"]
        )
        token.token = secret  # type: ignore[attr-defined]  # shown once, never stored
        body = TokenCreatedSerializer(token, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Revoke the token: its next request is refused")
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        token_revoke(token=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["registry logins"])
class RegistryLoginViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    RestrictedViewSet[RegistryCredential],
):
    """Your teams' registry logins (never their passwords): a pull or push for a team uses
    the team's login for the registry's host."""

    queryset = RegistryCredential.objects.select_related("team").order_by("team__name", "host")
    serializer_class = RegistryLoginSerializer
    filterset_class = RegistryLoginFilter
    lookup_value_regex = "[0-9]{1,18}"
    permission_actions = {"destroy": MANAGE}

    @extend_schema(
        summary="docker login: checked against the registry, then kept for the team",
        request=RegistryLoginCreateSerializer,
        responses={201: RegistryLoginSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = RegistryLoginCreateSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        form.is_valid(raise_exception=True)
        data = form.validated_data
        login = registry_login(
            team=data["team"],
            host=data["host"],
            username=data["username"],
            password=data["password"],
            insecure=data["insecure"],
            user=request.user,
        )
        return Response(RegistryLoginSerializer(login).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="docker logout: forget the team's login")
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        registry_logout(login=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["audit"])
class AuditViewSet(mixins.ListModelMixin, RestrictedViewSet[AuditEntry]):
    """Who did what and when, in the teams you own (staff: everything); never edited."""

    queryset = AuditEntry.objects.select_related("team").order_by("-at", "-id")
    serializer_class = AuditEntrySerializer
    filterset_class = AuditFilter
