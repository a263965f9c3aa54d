"""The ``default`` team: today's repositories, containers and registry logins move into it,
and every superuser owns it (``make dev``'s first admin creates it on a fresh database)."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def create_default_team(apps: Any, schema_editor: Any) -> None:
    Team = apps.get_model("accounts", "Team")
    Membership = apps.get_model("accounts", "Membership")
    User = apps.get_model("auth", "User")
    team, _ = Team.objects.get_or_create(name="default")
    for user in User.objects.filter(is_superuser=True):
        Membership.objects.get_or_create(team=team, user=user, defaults={"role": "owner"})


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_teams"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create_default_team, migrations.RunPython.noop)]
