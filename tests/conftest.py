"""Fixtures shared by every test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pytest_django import Settings


@pytest.fixture(autouse=True)
def layerhub_store(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point LAYERHUB_STORE at a fresh directory, so no test touches var/store.

    A directory of its own rather than under ``tmp_path``, which the test may want to fill.
    """
    root = tmp_path_factory.mktemp("layerhub-store")
    settings.LAYERHUB_STORE = root
    return root


# A Redis database of its own for the tests' real workers, so a `make dev` worker on the same
# Redis never takes their tasks.
TEST_BROKER = "redis://127.0.0.1:6379/15"


@pytest.fixture
def broker() -> Iterator[str]:
    """The tests' broker URL, emptied before and after; skipped without Redis (not in CI)."""
    client = redis.Redis.from_url(TEST_BROKER, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {TEST_BROKER}")
    client.flushdb()
    yield TEST_BROKER
    client.flushdb()
