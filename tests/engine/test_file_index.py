"""The file index apply_layer builds as it unpacks, checked against a walk of what it wrote.

Every layer here is unpacked once with the index on, and the records apply_layer returns must
be exactly what ``walk_snapshot`` reads from the finished snapshot (paths, kinds, modes,
owners, sizes, sha256 read back from the files, hardlinks, whiteouts and opaque markers), in
each whiteout form the host can write.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

import pytest

from layerhub.engine.apply import apply_layer
from layerhub.engine.errors import LayerError
from layerhub.engine.file_index import (
    DIRECTORY,
    FILE,
    HARDLINK,
    OPAQUE,
    SYMLINK,
    WHITEOUT,
    FileRecord,
    read_records,
    walk_snapshot,
    write_records,
)
from layerhub.engine.whiteouts import OciWhiteouts, WhiteoutFormat
from tests.engine.layerkit import Kit, Spec


def applied(tmp_path: Path, fmt: WhiteoutFormat, data: bytes) -> tuple[list[FileRecord], Path]:
    dest = tmp_path / "fs"
    dest.mkdir()
    result = apply_layer(io.BytesIO(data), dest, whiteouts=fmt)
    assert result.files is not None
    walked = list(walk_snapshot(dest, fmt))
    assert list(result.files) == walked
    return list(result.files), dest


def by_path(records: list[FileRecord]) -> dict[tuple[str, str], FileRecord]:
    return {(r.path, r.kind): r for r in records}


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_varied_layer(tmp_path: Path, kit: Kit, fmt: WhiteoutFormat) -> None:
    entries: list[Spec] = [
        kit.dir("etc", mode=0o755),
        kit.file("etc/passwd", b"root:x:0:0\n"),
        kit.file("etc/motd", b"first"),
        kit.file("etc/motd", b"second, longer"),
        kit.file("etc/motd", b"third and final"),  # overwritten twice: the last one stays
        kit.file("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755, uid=12, gid=34),
        kit.hardlink("usr/bin/tool2", "usr/bin/tool"),
        kit.hardlink("usr/bin/tool3", "usr/bin/tool2"),
        kit.symlink("usr/bin/sh", "tool"),
        kit.symlink("lib", "usr/lib"),
        kit.dir("usr/lib", mode=0o700),
        kit.file("lib/libx.so", b"\x7fELF" * 1000),  # through the in-layer symlink
        kit.fifo("run/pipe", mode=0o640),
        kit.whiteout("var/cache"),
        kit.opaque("opt"),
        kit.file("opt/new", b"n"),
        kit.file("tmp/gone", b"soon deleted"),
        kit.whiteout("tmp/gone"),  # written, then deleted in the same layer
        kit.dir("srv/d"),
        kit.file("srv/d/f", b"in a directory replaced below"),
        kit.file("srv/d", b"a file where the directory was"),
        kit.file("home/a", b"replaced by a directory"),
        kit.dir("home/a", mode=0o750),
        kit.file("home/a/b", b"under it"),
        kit.file("big", os.urandom(3 << 20)),
        kit.file("empty", b""),
    ]
    records, dest = applied(tmp_path, fmt, kit.tar(entries))
    index = by_path(records)
    assert index[("etc/motd", FILE)].sha256 == sha(b"third and final")
    assert index[("etc/motd", FILE)].size == len(b"third and final")
    assert sum(1 for r in records if r.path == "etc/motd") == 1
    tool = index[("usr/bin/tool", FILE)]
    assert (tool.mode, tool.uid, tool.gid) == (0o4755, 12, 34)
    assert index[("usr/bin/tool2", HARDLINK)].link == "usr/bin/tool"
    assert index[("usr/bin/tool3", HARDLINK)].sha256 == sha(b"#!/bin/sh\n")
    assert index[("usr/bin/sh", SYMLINK)].link == "tool"
    assert index[("usr/lib/libx.so", FILE)].size == 4000
    assert ("var/cache", WHITEOUT) in index
    assert ("tmp/gone", WHITEOUT) in index
    assert ("tmp/gone", FILE) not in index
    assert ("opt", OPAQUE) in index
    assert ("opt", DIRECTORY) in index
    assert ("srv/d", FILE) in index
    assert ("srv/d/f", FILE) not in index
    assert index[("home/a", DIRECTORY)].mode == 0o750
    assert index[("big", FILE)].sha256 == sha((dest / "big").read_bytes())
    assert index[("empty", FILE)].sha256 == sha(b"")


def test_hardlink_target_replaced_or_removed(tmp_path: Path, kit: Kit, fmt: WhiteoutFormat) -> None:
    entries = [
        kit.file("a", b"old content"),
        kit.hardlink("b", "a"),
        kit.hardlink("c", "a"),
        kit.file("a", b"new content"),  # b and c keep the old file
        kit.whiteout("b"),  # c is now its only name
        kit.file("z", b"zz"),
        kit.hardlink("y", "z"),  # y sorts first: the walk names it the file, z its link
    ]
    records, _ = applied(tmp_path, fmt, kit.tar(entries))
    index = by_path(records)
    assert index[("a", FILE)].sha256 == sha(b"new content")
    assert index[("c", FILE)].sha256 == sha(b"old content")
    assert index[("y", FILE)].sha256 == sha(b"zz")
    assert index[("z", HARDLINK)].link == "y"


def test_deleted_directory_and_rewritten_tree(
    tmp_path: Path, kit: Kit, fmt: WhiteoutFormat
) -> None:
    entries = [
        kit.dir("d"),
        kit.dir("d/e"),
        kit.file("d/e/f", b"f"),
        kit.symlink("d/l", "e"),
        kit.file("d/l/g", b"through the link"),
        kit.whiteout("d"),  # the whole directory goes
        kit.file("d/h", b"written again below the whiteout"),
        kit.opaque("k"),
        kit.whiteout("k/x"),
        kit.dir("k/x"),  # deleted, then made: a new directory hiding the lower one
        kit.file("k/x/y", b"y"),
    ]
    records, _ = applied(tmp_path, fmt, kit.tar(entries))
    paths = {r.path for r in records}
    assert "d/e/f" not in paths
    assert "d/e" not in paths
    assert "d/h" in paths
    assert ("k/x", OPAQUE) in by_path(records)


def test_devices_when_root(tmp_path: Path, kit: Kit, fmt: WhiteoutFormat) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes need root")
    entries = [kit.char("dev/null", 1, 3), kit.block("dev/loop9", 7, 9), kit.fifo("dev/f")]
    records, _ = applied(tmp_path, fmt, kit.tar(entries))
    assert {r.kind for r in records if r.path.startswith("dev/")} == {"c", "b", "p"}


def test_index_off_gives_none(tmp_path: Path, kit: Kit, fmt: WhiteoutFormat) -> None:
    dest = tmp_path / "fs"
    dest.mkdir()
    data = kit.tar([kit.file("a", b"a")])
    result = apply_layer(io.BytesIO(data), dest, whiteouts=fmt, index=False)
    assert result.files is None
    assert (dest / "a").read_bytes() == b"a"


def test_refused_layer_gives_no_index(tmp_path: Path, kit: Kit, fmt: WhiteoutFormat) -> None:
    dest = tmp_path / "fs"
    dest.mkdir()
    data = kit.tar([kit.file("a", b"a"), kit.hardlink("b", "nowhere")])
    with pytest.raises(LayerError):
        apply_layer(io.BytesIO(data), dest, whiteouts=fmt)


def test_records_file_round_trip(tmp_path: Path) -> None:
    records = [
        FileRecord("a/b\nc\udcff", FILE, 0o644, 1, 2, 3, sha(b"x")),
        FileRecord("l", SYMLINK, 0o777, link="a\tb"),
        FileRecord("w", WHITEOUT),
    ]
    write_records(tmp_path / "index", records)
    assert read_records(tmp_path / "index") == records


def test_an_unprivileged_unpack_records_the_owner_on_disk(tmp_path: Path, kit: Kit) -> None:
    fmt = OciWhiteouts()
    dest = tmp_path / "fs"
    dest.mkdir()
    data = kit.tar(
        [
            kit.dir("d", uid=5, gid=6),
            kit.file("d/f", b"f", uid=12, gid=34),
            kit.symlink("d/l", "f", uid=12, gid=34),
        ]
    )
    result = apply_layer(io.BytesIO(data), dest, whiteouts=fmt, privileged=False)
    assert result.files is not None
    assert list(result.files) == list(walk_snapshot(dest, fmt))
    owner = (os.geteuid(), os.getegid())
    assert {(r.uid, r.gid) for r in result.files} == {owner}


def random_layer(kit: Kit, rng: random.Random) -> list[Spec]:
    """Entries over a small namespace, so that later ones replace, delete, link to and write
    under earlier ones in every order (the directories a, b and c are mostly directories, so
    that most layers apply)."""
    tops = ["a", "b", "c"]
    leaves = ["a/x", "a/y", "b/x", "c/z", "a/x/q", "d", "e"]
    entries: list[Spec] = []
    files: list[str] = []
    for _ in range(rng.randint(3, 25)):
        if rng.random() < 0.2:
            name = rng.choice(tops)
            pick = rng.random()
            if pick < 0.5:
                entries.append(kit.dir(name, mode=rng.choice([0o755, 0o700, 0o2775])))
            elif pick < 0.75:
                entries.append(kit.opaque(name))
            elif pick < 0.9:
                entries.append(kit.whiteout(name))
            else:
                entries.append(kit.symlink(name, rng.choice(tops)))
            continue
        name = rng.choice(leaves)
        pick = rng.random()
        if pick < 0.4:
            entries.append(kit.file(name, rng.randbytes(rng.randint(0, 3000)), mode=0o640))
            files.append(name)
        elif pick < 0.5:
            entries.append(kit.dir(name))
        elif pick < 0.6:
            entries.append(kit.symlink(name, rng.choice(["../b", "x", "nowhere"])))
        elif pick < 0.75 and files:
            entries.append(kit.hardlink(name, rng.choice(files)))
        elif pick < 0.92:
            entries.append(kit.whiteout(name))
        else:
            entries.append(kit.fifo(name))
    return entries


@pytest.mark.parametrize("seed", range(60))
def test_random_layers_index_as_walked(
    tmp_path: Path, kit: Kit, fmt: WhiteoutFormat, seed: int
) -> None:
    entries = random_layer(kit, random.Random(seed))
    dest = tmp_path / "fs"
    dest.mkdir()
    try:
        result = apply_layer(io.BytesIO(kit.tar(entries)), dest, whiteouts=fmt)
    except LayerError:
        return  # refused (a hardlink to nothing, a path through a file): nothing to index
    assert result.files is not None
    assert list(result.files) == list(walk_snapshot(dest, fmt)), [(e.kind, e.name) for e in entries]
