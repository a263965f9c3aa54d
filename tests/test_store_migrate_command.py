"""``manage.py store_migrate``: the command a refused old store names."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pytest_django import Settings

from layerhub.engine.errors import StoreLayoutError
from layerhub.engine.store import MIGRATE_COMMAND, Store
from tests.engine.test_store_safety import TREES, assert_migrated, make_v1_store


def test_the_command_migrates_an_old_store(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids = make_v1_store(root, TREES)
    settings.LAYERHUB_STORE = root
    with pytest.raises(StoreLayoutError, match=MIGRATE_COMMAND):
        Store(root, migrate=False)
    assert MIGRATE_COMMAND.endswith("store_migrate")
    out = io.StringIO()
    call_command("store_migrate", stdout=out)
    assert out.getvalue() == f"migrated {root}: 3 snapshots moved\n"
    assert_migrated(Store(root, migrate=False), ids)
    out = io.StringIO()
    call_command("store_migrate", stdout=out)
    assert out.getvalue() == f"{root} is already current\n"


def test_the_command_refuses_what_is_not_a_store(settings: Settings, tmp_path: Path) -> None:
    settings.LAYERHUB_STORE = tmp_path
    with pytest.raises(CommandError, match="not a layer store"):
        call_command("store_migrate", stdout=io.StringIO())
