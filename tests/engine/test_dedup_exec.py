"""Commands run with runc on a kernel overlay mount of snapshots whose files dedup linked:
they read the same bytes, and a write copies up instead of going through the shared inode."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from pathlib import Path

import pytest

from layerhub.engine.dedup import Candidate, link_identical
from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.store import Store
from tests.engine.test_runtime import Container, Image, require_runtime, tree_digest
from tests.support.busybox import busybox_layer, require_busybox
from tests.support.oci import layer_tar

LIB = b"".join(bytes([i % 251]) for i in range(40_000))


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Image]:
    """Busybox under two builds of one layer that differ only in their build date, with
    the builds' identical files hardlinked by dedup."""
    require_busybox()
    require_runtime()
    store = Store(tmp_path_factory.mktemp("dedup-exec-store"), whiteouts="overlay")
    base = busybox_layer()
    base_id = sha256_bytes(base)
    base_snapshot = store.snapshots.unpack(
        base_id, io.BytesIO(base), diff_id=base_id, durable=False
    )
    images = []
    for date in (b"2026-11-01\n", b"2026-11-15\n"):
        tar = layer_tar(
            {
                "usr": None,
                "usr/lib": None,
                "usr/lib/libx.so": LIB,
                "etc": None,
                "etc/build-date": date,
            }
        )
        diff_id = sha256_bytes(tar)
        chain = chain_ids([base_id, diff_id])[-1]
        snapshot = store.snapshots.unpack(chain, io.BytesIO(tar), diff_id=diff_id, durable=False)
        images.append(Image(store, [base_snapshot.path, snapshot.path]))
    first, second = images
    result = link_identical(
        [Candidate(str(i), image.lowers[1], "usr/lib/libx.so") for i, image in enumerate(images)]
    )
    assert result.freed_bytes == len(LIB)
    return first, second


def _container(image: Image, tmp_path: Path) -> Container:
    root = image.store.containers / secrets.token_hex(32)
    (root / "upper").mkdir(parents=True)
    return Container(image, root, tmp_path, {"Env": ["PATH=/usr/bin:/bin"]})


def test_exec_reads_the_linked_file_and_a_write_copies_up(
    builds: tuple[Image, Image], tmp_path: Path
) -> None:
    first, second = builds
    shared = first.lowers[1] / "usr/lib/libx.so"
    assert os.lstat(shared).st_ino == os.lstat(second.lowers[1] / "usr/lib/libx.so").st_ino
    before = [tree_digest(image.lowers[1]) for image in builds]
    expected = hashlib.sha256(LIB).hexdigest()
    for image in builds:
        result = _container(image, tmp_path).run("sha256sum", "/usr/lib/libx.so")
        assert result.exit_code == 0, result.stderr
        assert result.stdout.decode().split()[0] == expected
    writer = _container(first, tmp_path)
    result = writer.run("sh", "-c", "echo patched >> /usr/lib/libx.so")
    assert result.exit_code == 0, result.stderr
    assert (writer.upper / "usr/lib/libx.so").read_bytes() == LIB + b"patched\n"
    assert os.lstat(writer.upper / "usr/lib/libx.so").st_ino != os.lstat(shared).st_ino
    assert [tree_digest(image.lowers[1]) for image in builds] == before
    reader = _container(second, tmp_path).run("sha256sum", "/usr/lib/libx.so")
    assert reader.stdout.decode().split()[0] == expected
