"""LAYERHUB_STORE_RESERVE: a size or a share of the disk, parsed strictly."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from pytest_django import Settings

import layerhub.settings
from layerhub.core.store import get_store
from layerhub.engine.errors import StoreFull
from layerhub.engine.store import DEFAULT_RESERVE, StoreReserve
from layerhub.env import env_reserve, parse_size

NAME = "LAYERHUB_STORE_RESERVE"
SETTINGS_FILE = str(Path(layerhub.settings.__file__))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1073741824", StoreReserve(bytes=1 << 30)),
        ("2GiB", StoreReserve(bytes=2 << 30)),
        ("500M", StoreReserve(bytes=500_000_000)),
        ("500 MB", StoreReserve(bytes=500_000_000)),
        ("1.5gib", StoreReserve(bytes=3 << 29)),
        ("0", StoreReserve()),
        (" 64KiB ", StoreReserve(bytes=64 << 10)),
        ("5%", StoreReserve(percent=5.0)),
        ("0.5 %", StoreReserve(percent=0.5)),
    ],
)
def test_sizes_and_percentages(raw: str, expected: StoreReserve) -> None:
    assert env_reserve(NAME, environ={NAME: raw}) == expected


def test_unset_is_the_larger_of_one_gib_and_five_percent() -> None:
    assert env_reserve(NAME, environ={}) == DEFAULT_RESERVE
    assert DEFAULT_RESERVE.resolve(10 << 30) == 1 << 30  # a small disk: 1 GiB
    assert DEFAULT_RESERVE.resolve(1000 << 30) == 50 << 30  # a big one: 5%


@pytest.mark.parametrize(
    "raw", ["", "lots", "-1G", "5 %%", "100%", "250%", "1e9", "2 GiB extra", "1QB", "٣G", "inf"]
)
def test_nonsense_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=NAME):
        env_reserve(NAME, environ={NAME: raw})


def test_parse_size_refuses_what_cannot_be_a_byte_count() -> None:
    assert parse_size("8MiB") == 8 << 20
    with pytest.raises(ValueError, match="too large"):
        parse_size("99999999999TiB")


def test_the_settings_read_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME, "3GiB")
    assert runpy.run_path(SETTINGS_FILE)[NAME] == StoreReserve(bytes=3 << 30)
    monkeypatch.setenv(NAME, "plenty")
    with pytest.raises(ImproperlyConfigured, match="plenty"):
        runpy.run_path(SETTINGS_FILE)


def test_the_store_keeps_the_configured_reserve(settings: Settings, tmp_path: Path) -> None:
    settings.LAYERHUB_STORE = tmp_path / "store"
    settings.LAYERHUB_STORE_RESERVE = StoreReserve(bytes=12345)
    assert get_store().reserve == 12345
    settings.LAYERHUB_STORE_RESERVE = StoreReserve(bytes=1 << 62)
    with pytest.raises(StoreFull, match="below the reserve"):
        get_store().blobs.put_bytes(b"config")
