"""Imports follow symbolic links only inside the archive: a layout whose ``blobs/`` (or a
directory below it, or a blob) links out of the layout is refused, as a directory and as a tar."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from layerhub.engine.archive import import_archive
from layerhub.engine.errors import ArchiveError
from layerhub.engine.store import Store
from tests.support.oci import Image, make_layer, write_layout


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    image = Image([make_layer({"etc": None, "etc/motd": b"hello\n"})])
    return write_layout(tmp_path / "layout", {"localhost/linked:1": image})


def _move_out(layout: Path, relative: str, outside: Path) -> Path:
    """Move ``layout/relative`` to ``outside`` and leave a symlink to it in its place."""
    shutil.move(layout / relative, outside)
    (layout / relative).symlink_to(outside)
    return outside


def _store_is_empty(store: Store) -> bool:
    return not any(store.blobs.digests()) and not any(store.tmp.iterdir())


@pytest.mark.parametrize("relative", ["blobs", "blobs/sha256"])
def test_directory_layout_with_a_directory_linked_out_is_refused(
    layout: Path, tmp_path: Path, relative: str
) -> None:
    _move_out(layout, relative, tmp_path / "elsewhere")
    store = Store(tmp_path / "store")
    with pytest.raises(ArchiveError, match="symbolic link"):
        import_archive(layout, store)
    assert _store_is_empty(store)


def test_directory_layout_with_a_blob_linked_out_is_refused(layout: Path, tmp_path: Path) -> None:
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    _move_out(layout, str(blob.relative_to(layout)), tmp_path / "outside-blob")
    store = Store(tmp_path / "store")
    with pytest.raises(ArchiveError, match="symbolic link"):
        import_archive(layout, store)


def test_directory_layout_linking_inside_itself_imports(layout: Path, tmp_path: Path) -> None:
    shutil.move(layout / "blobs", layout / "real-blobs")
    (layout / "blobs").symlink_to("real-blobs")
    imported = import_archive(layout, Store(tmp_path / "store"))
    assert [str(r) for r in imported[0].references] == ["localhost/linked:1"]


def _tar_of(layout: Path, path: Path, links: dict[str, str]) -> Path:
    """A tar of ``layout`` in which each name of ``links`` is a symlink entry instead."""
    with tarfile.open(path, "w") as tf:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
        for entry in sorted(layout.rglob("*")):
            rel = str(entry.relative_to(layout))
            if any(rel == n or rel.startswith(f"{n}/") for n in links):
                continue
            tf.add(entry, arcname=rel, recursive=False)
    return path


@pytest.mark.parametrize("target", ["ABSOLUTE", "../outside", "sha256/../../outside"])
def test_tar_layout_with_blobs_linked_out_is_refused(
    layout: Path, tmp_path: Path, target: str
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(layout / "blobs", outside)
    link = str(outside) if target == "ABSOLUTE" else target
    archive = _tar_of(layout, tmp_path / "layout.tar", {"blobs": link})
    store = Store(tmp_path / "store")
    with pytest.raises(ArchiveError, match="outside the archive"):
        import_archive(archive, store)
    assert _store_is_empty(store)


def test_tar_layout_with_a_blob_linked_out_is_refused(layout: Path, tmp_path: Path) -> None:
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    rel = str(blob.relative_to(layout))
    archive = _tar_of(layout, tmp_path / "layout.tar", {rel: str(blob)})
    with pytest.raises(ArchiveError, match="outside the archive"):
        import_archive(archive, Store(tmp_path / "store"))


def test_tar_layout_with_a_link_loop_is_refused(layout: Path, tmp_path: Path) -> None:
    archive = _tar_of(layout, tmp_path / "layout.tar", {"blobs": "loop", "loop": "blobs"})
    with pytest.raises(ArchiveError, match="too many levels"):
        import_archive(archive, Store(tmp_path / "store"))


def test_tar_layout_linking_inside_itself_imports(layout: Path, tmp_path: Path) -> None:
    blob = max((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    archive = tmp_path / "layout.tar"
    with tarfile.open(archive, "w") as tf:
        for entry in sorted(layout.rglob("*")):
            rel = str(entry.relative_to(layout))
            if entry == blob:
                tf.add(entry, arcname=f"data/{blob.name}")
                info = tarfile.TarInfo(rel)
                info.type, info.linkname = tarfile.SYMTYPE, f"../../data/{blob.name}"
                tf.addfile(info)
            else:
                tf.add(entry, arcname=rel, recursive=False)
        tf.addfile(tarfile.TarInfo("unused"), io.BytesIO(b""))
    imported = import_archive(archive, Store(tmp_path / "store"))
    assert len(imported) == 1
