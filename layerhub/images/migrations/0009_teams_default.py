"""Every repository and registry login so far belongs to the ``default`` team; then the
team is required."""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def into_default_team(apps: Any, schema_editor: Any) -> None:
    team = apps.get_model("accounts", "Team").objects.get(name="default")
    apps.get_model("images", "Repository").objects.filter(team=None).update(team=team)
    apps.get_model("images", "RegistryCredential").objects.filter(team=None).update(team=team)
    apps.get_model("images", "Image").objects.filter(team=None).update(team=team)


class Migration(migrations.Migration):
    dependencies = [("images", "0008_teams")]

    operations = [
        migrations.RunPython(into_default_team, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="repository",
            name="team",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="repositories",
                to="accounts.team",
            ),
        ),
        migrations.AlterField(
            model_name="registrycredential",
            name="team",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="registry_logins",
                to="accounts.team",
            ),
        ),
    ]
