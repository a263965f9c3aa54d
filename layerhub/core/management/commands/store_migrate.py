"""``python manage.py store_migrate``: bring the layer store to this version's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from layerhub.engine.errors import LayerhubError
from layerhub.engine.store import migrate_store


class Command(BaseCommand):
    help = "Migrate the layer store (LAYERHUB_STORE) in place to the current layout."

    def handle(self, *args: Any, **options: Any) -> None:
        root = Path(settings.LAYERHUB_STORE)
        if not (root / "store.json").exists():
            raise CommandError(f"{root} is not a layer store (no store.json)")
        try:
            moved = migrate_store(root)
        except (LayerhubError, PermissionError) as exc:
            raise CommandError(str(exc)) from None
        if moved:
            self.stdout.write(f"migrated {root}: {moved} snapshots moved")
        else:
            self.stdout.write(f"{root} is already current")
