"""Every container so far belongs to the ``default`` team; then the team is required."""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def into_default_team(apps: Any, schema_editor: Any) -> None:
    team = apps.get_model("accounts", "Team").objects.get(name="default")
    apps.get_model("containers", "Container").objects.filter(team=None).update(team=team)


class Migration(migrations.Migration):
    dependencies = [("containers", "0002_team")]

    operations = [
        migrations.RunPython(into_default_team, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="container",
            name="team",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="containers",
                to="accounts.team",
            ),
        ),
    ]
