"""Forms of the accounts pages (teams, members, tokens, registry logins, the audit log), and
what forms that act for a team share: the team to act for."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from layerhub.accounts.models import Membership, Role, Team, Token, team_name_validator
from layerhub.accounts.services import ROBOT_PREFIX
from layerhub.core.permissions import teams_for
from layerhub.engine.errors import LayerhubError
from layerhub.engine.reference import normalize_registry
from layerhub.env import parse_size


class TeamFormMixin:
    """Adds a ``team`` field offering the teams where the user may ``team_action``: a hidden
    field (and no need to send it) when there is only one, a choice otherwise."""

    team_action: str = "change"
    fields: dict[str, forms.Field]
    cleaned_data: dict[str, Any]

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._user = user
        teams = teams_for(user, self.team_action).order_by("name")
        choices = list(teams[:2])
        self._only_team = choices[0] if len(choices) == 1 else None
        self.fields["team"] = forms.ModelChoiceField(
            queryset=teams,
            to_field_name="name",
            required=False,
            label="Team",
            help_text="the team whose catalog, logins and quota this uses",
            widget=forms.HiddenInput if self._only_team is not None else forms.Select,
        )

    def clean_team(self) -> Team:
        team = self.cleaned_data.get("team") or self._only_team
        if team is None:
            raise forms.ValidationError(
                "choose a team"
                if self.fields["team"].queryset.exists()  # type: ignore[attr-defined]
                else "you are in no team that may do this; ask a team owner to add you"
            )
        return team


# -- the teams, tokens, registry logins and audit pages ---------------------------------------

QUOTA_HELP = "bytes, or with a unit: 500MB, 20GB, 2GiB; empty for no limit"


class QuotaField(forms.Field):
    """A team's quota: empty for none, else a size (``20GB``, ``2GiB``, ``1073741824``)."""

    max_length = 32

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("label", "Quota")
        kwargs.setdefault("help_text", QUOTA_HELP)
        kwargs.setdefault("widget", forms.TextInput(attrs={"maxlength": self.max_length}))
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> int | None:
        text = str(value if value is not None else "").strip()
        if not text:
            return None
        if len(text) > self.max_length:
            raise forms.ValidationError(f"a quota is at most {self.max_length} characters")
        try:
            return parse_size(text)
        except ValueError:
            raise forms.ValidationError(
                f"{text!r} is not a size: give bytes (1073741824) or a unit (500MB, 20GB, "
                "2GiB), below 8 EiB"
            ) from None


class TeamCreateForm(forms.Form):
    """Staff make a team: its name and, if any, its quota."""

    name = forms.CharField(
        max_length=63,
        validators=[team_name_validator],
        help_text="lowercase letters, digits, '.', '_' or '-'",
    )
    quota = QuotaField()

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"]).strip()
        if Team.objects.filter(name=name).exists():
            raise forms.ValidationError(f"there is a team named {name} already")
        return name


class TeamQuotaForm(forms.Form):
    """Staff set a team's quota (empty: no limit)."""

    quota = QuotaField()


class MemberAddForm(forms.Form):
    """An owner adds someone to the team, by user name, with a role."""

    username = forms.CharField(max_length=150, label="User name")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)

    def __init__(self, *args: Any, team: Team, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._team = team

    def clean_username(self) -> Any:
        name = str(self.cleaned_data["username"]).strip()
        users = get_user_model()
        user = users.objects.filter(**{users.USERNAME_FIELD: name}, is_active=True).first()
        # a robot belongs to the team its token made it in, through that token alone
        if user is None or name.startswith(ROBOT_PREFIX):
            raise forms.ValidationError(f"no such user: {name}")
        if Membership.objects.filter(team=self._team, user=user).exists():
            raise forms.ValidationError(
                f"{name} is a member already: change their role in the list"
            )
        return user


class MemberRoleForm(forms.Form):
    """An owner changes a member's role."""

    role = forms.ChoiceField(choices=Role.choices)


class TokenCreateForm(forms.Form):
    """A new API token: a name to tell it apart, and what it may do."""

    name = forms.CharField(max_length=100, help_text="what uses it: ci, laptop, deploy")
    scope = forms.ChoiceField(
        choices=Token.Scope.choices,
        initial=Token.Scope.READ,
        help_text="read: browse and pull; read-write: also push, import, commit",
    )


class RegistryLoginForm(forms.Form):
    """A team's login for a registry, checked against the registry before it is kept."""

    host = forms.CharField(max_length=255, label="Registry", help_text="ghcr.io, 127.0.0.1:5000")
    username = forms.CharField(max_length=255, label="User name")
    password = forms.CharField(
        max_length=4096,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="kept encrypted, never shown again",
    )
    insecure = forms.BooleanField(
        required=False,
        label="Insecure (plain HTTP, or TLS whose certificate fails verification)",
    )

    def clean_host(self) -> str:
        try:
            return normalize_registry(str(self.cleaned_data["host"]))
        except LayerhubError as exc:
            raise forms.ValidationError(str(exc)) from None


AUDIT_ACTIONS = (
    "container.commit",
    "container.create",
    "container.delete",
    "image.delete",
    "image.import",
    "image.pull",
    "image.push",
    "image.untag",
    "member.add",
    "member.remove",
    "member.role",
    "registry.login",
    "registry.logout",
    "tag.create",
    "tag.delete",
    "team.create",
    "team.quota",
    "token.create",
    "token.revoke",
)


class AuditFilterForm(forms.Form):
    """The audit log's filter: a team (of those whose log the user reads) and an action,
    exact (``image.pull``) or a group (``image``: every ``image.*``)."""

    team = forms.ModelChoiceField(
        queryset=Team.objects.none(), to_field_name="name", required=False, empty_label="any team"
    )
    action = forms.RegexField(
        regex=r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$",
        max_length=64,
        required=False,
        error_messages={"invalid": "an action is like image.pull, or a group like image"},
    )

    def __init__(self, *args: Any, teams: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = teams  # type: ignore[attr-defined]
