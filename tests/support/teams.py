"""The team tests act for: the ``default`` team the migrations create."""

from __future__ import annotations

from layerhub.accounts.models import Team


def default_team() -> Team:
    """The ``default`` team: made by migration, and made again after a transactional test
    emptied the tables."""
    team, _ = Team.objects.get_or_create(name="default")
    return team
