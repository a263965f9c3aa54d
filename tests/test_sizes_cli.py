"""``manage.py df [-v]`` over catalog rows (no blobs on disk needed: sizes are recorded)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from django.core.management import call_command

from layerhub.containers.models import Container
from layerhub.core.store import get_store
from layerhub.images.sizes import images_delete_plan, store_totals
from layerhub.images.usage import tmp_entries
from tests.support.teams import default_team
from tests.test_sizes import APP, BASE, OTHER, image

pytestmark = pytest.mark.django_db


def df(*args: str) -> list[list[str]]:
    out = io.StringIO()
    call_command("df", *args, stdout=out)
    return [line.split() for line in out.getvalue().splitlines()]


def test_df_summarises_images_containers_and_tmp(layerhub_store: Path) -> None:
    a = image([BASE, APP], tag="v1")
    b = image([BASE, OTHER], tag="v2")
    get_store()
    upper = layerhub_store / "containers" / ("c" * 64) / "upper"
    upper.mkdir(parents=True)
    (upper / "note").write_bytes(b"n" * 4_000)
    Container.objects.create(container_id="c" * 64, name="web", image=b, team=default_team())
    (layerhub_store / "tmp" / "leftover").write_bytes(b"t" * 3_000)

    lines = df()
    assert lines[0] == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    totals = store_totals()
    freed = images_delete_plan([a]).frees_bytes  # a alone is idle: b has a container
    assert freed == 700 + 200 + 100 + 10
    assert lines[1][:3] == ["Images", "2", "1"]
    percent = round(100 * freed / totals.physical_bytes)
    assert lines[1][3:] == ["8.32kB", "1.01kB", f"({percent}%)"]
    assert totals.physical_bytes == 1_720 + 6_600
    # the container is not running: its 4kB layer is reclaimable
    assert lines[2] == ["Containers", "1", "0", "4kB", "4kB", "(100%)"]
    # a tmp/ entry no process holds is a leftover the next sweep removes
    assert lines[3] == ["Temporary", "files", "1", "0", "3kB", "3kB", "(100%)"]


def test_df_verbose_lists_images_and_containers() -> None:
    image([BASE, APP], tag="v1")
    b = image([BASE, OTHER], tag="v2")
    Container.objects.create(container_id="d" * 64, name="db", image=b, team=default_team())
    lines = df("-v")
    at = lines.index(["Images", "space", "usage:"])
    header = lines[at + 1]
    assert header == [
        "REPOSITORY",
        "TAG",
        "IMAGE",
        "ID",
        "CREATED",
        "SIZE",
        "SHARED",
        "SIZE",
        "UNIQUE",
        "SIZE",
        "CONTAINERS",
    ]
    rows = {row[1]: row for row in lines[at + 2 : at + 4]}
    assert rows["v1"][0] == "team/app"
    # SIZE, SHARED SIZE, UNIQUE SIZE, CONTAINERS
    assert rows["v1"][-4:] == ["5.7kB", "5kB", "700B", "0"]
    assert rows["v2"][-4:] == ["5.9kB", "5kB", "900B", "1"]
    at = lines.index(["Containers", "space", "usage:"])
    assert lines[at + 1][:3] == ["CONTAINER", "ID", "IMAGE"]
    assert lines[at + 2][0] == "d" * 12
    assert lines[at + 2][-1] == "db"


def test_df_of_an_empty_store() -> None:
    lines = df("-v")
    assert lines[1] == ["Images", "0", "0", "0B", "0B", "(0%)"]


def test_a_tmp_entry_a_live_process_holds_is_live(layerhub_store: Path) -> None:
    from layerhub.engine.fsutil import TempEntry

    store = get_store()
    entry = TempEntry(store.tmp, "pull-", directory=True)
    try:
        (entry.path / "part").write_bytes(b"p" * 500)
        (store.tmp / "stale").write_bytes(b"s" * 10)
        found = {e.name: e for e in tmp_entries()}
        assert found[entry.path.name].live
        assert found[entry.path.name].size == 500
        assert not found["stale"].live
    finally:
        entry.close(remove=True)
    assert os.listdir(store.tmp) == ["stale"]
