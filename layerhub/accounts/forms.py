"""What forms that act for a team share: the team to act for."""

from __future__ import annotations

from typing import Any

from django import forms

from layerhub.accounts.models import Team
from layerhub.core.permissions import teams_for


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
