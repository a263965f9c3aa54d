"""Teams and their members, tokens, registry logins and the audit log."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from layerhub.accounts.models import AuditEntry, Membership, Role, Team, Token
from layerhub.api.base import context_user
from layerhub.api.serializers.common import TeamActSerializer
from layerhub.core.permissions import MANAGE, team_choose
from layerhub.images.models import RegistryCredential


class TeamSerializer(serializers.ModelSerializer[Team]):
    """A team, and the role the requesting user holds in it (null: not a member)."""

    role = serializers.SerializerMethodField()

    class Meta:
        model = Team
        fields = ["name", "role", "quota_bytes", "created_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_role(self, team: Team) -> str | None:
        roles: dict[int, str] = self.context.get("roles") or {}
        return roles.get(team.pk)


class MembershipSerializer(serializers.ModelSerializer[Membership]):
    """A member of a team and their role."""

    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]
        read_only_fields = fields


class MemberSetSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Add a user to the team with a role, or change their role."""

    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)


class TokenSerializer(serializers.ModelSerializer[Token]):
    """An API token, never its secret (shown once, when it is created)."""

    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )
    user: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Token
        fields = [
            "id",
            "kind",
            "name",
            "team",
            "user",
            "scope",
            "key_prefix",
            "created_by",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = fields


class TokenCreatedSerializer(TokenSerializer):
    """A new token with its secret: shown this once, kept only as a hash."""

    token = serializers.CharField(read_only=True, help_text="send as 'Authorization: Bearer ...'")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class TokenCreateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A personal token (no team), or a robot token of a team you manage."""

    name = serializers.CharField(max_length=100)
    scope = serializers.ChoiceField(choices=Token.Scope.choices, default=Token.Scope.READ)
    team = serializers.CharField(
        max_length=63, required=False, allow_blank=True, help_text="a robot token of this team"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        name = attrs.get("team") or None
        attrs["team"] = team_choose(context_user(self.context), name, MANAGE) if name else None
        return attrs


class RegistryLoginSerializer(serializers.ModelSerializer[RegistryCredential]):
    """A team's login for a registry host (never its password)."""

    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )

    class Meta:
        model = RegistryCredential
        fields = ["id", "team", "host", "username", "insecure"]
        read_only_fields = fields


class RegistryLoginCreateSerializer(TeamActSerializer):
    """``docker login``: checked against the registry, then stored encrypted for the team."""

    team_action = MANAGE

    host = serializers.CharField(max_length=255, help_text="e.g. ghcr.io or 127.0.0.1:5000")
    username = serializers.CharField(max_length=255, allow_blank=True)
    password = serializers.CharField(
        max_length=4096, allow_blank=True, trim_whitespace=False, write_only=True
    )
    insecure = serializers.BooleanField(default=False, help_text="plain HTTP")


class AuditEntrySerializer(serializers.ModelSerializer[AuditEntry]):
    """Who did what, when: kept for good, never edited."""

    actor = serializers.CharField(source="actor_name", read_only=True)
    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "actor", "team", "action", "target", "detail"]
        read_only_fields = fields
