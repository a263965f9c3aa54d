"""Fixtures shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_django import Settings


@pytest.fixture(autouse=True)
def layerhub_store(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point LAYERHUB_STORE at a fresh directory, so no test touches var/store.

    A directory of its own rather than under ``tmp_path``, which the test may want to fill.
    """
    root = tmp_path_factory.mktemp("layerhub-store")
    settings.LAYERHUB_STORE = root
    return root
