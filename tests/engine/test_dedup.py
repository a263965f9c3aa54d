"""File-level dedup in the engine: what is linked, what never is, and what stays the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layerhub.engine.dedup import TEMP_PREFIX, Candidate, link_identical, remove_leftovers

MTIME = 1_700_000_000


def _file(tree: Path, path: str, data: bytes, mode: int = 0o644, mtime: int = MTIME) -> Path:
    target = tree / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    os.chmod(target, mode)
    os.utime(target, (mtime, mtime))
    return target


def _fix_dirs(tree: Path) -> dict[str, int]:
    for folder, _, _ in os.walk(tree):
        os.utime(folder, (MTIME, MTIME))
    return {f: os.lstat(f).st_mtime_ns for f, _, _ in os.walk(tree)}


def _snapshots(tmp_path: Path, n: int, files: dict[str, bytes]) -> list[Path]:
    trees = []
    for i in range(n):
        tree = tmp_path / f"s{i}"
        for path, data in files.items():
            _file(tree, path, data)
        trees.append(tree)
    return trees


def _ino(path: Path) -> int:
    return os.lstat(path).st_ino


def test_identical_files_of_two_snapshots_share_one_inode_and_dirs_keep_their_times(
    tmp_path: Path,
) -> None:
    a, b = _snapshots(tmp_path, 2, {"usr/lib/libx.so": b"x" * 5000})
    times = {**_fix_dirs(a), **_fix_dirs(b)}
    cands = [Candidate("a", a, "usr/lib/libx.so"), Candidate("b", b, "usr/lib/libx.so")]
    dry = link_identical(cands, dry_run=True)
    assert (dry.freed_bytes, dry.files_linked) == (5000, 1)
    assert _ino(a / "usr/lib/libx.so") != _ino(b / "usr/lib/libx.so")  # a dry run changes nothing
    result = link_identical(cands)
    assert (result.freed_bytes, result.files_linked) == (dry.freed_bytes, dry.files_linked)
    assert _ino(a / "usr/lib/libx.so") == _ino(b / "usr/lib/libx.so")
    assert (b / "usr/lib/libx.so").read_bytes() == b"x" * 5000
    assert {f: os.lstat(f).st_mtime_ns for t in (a, b) for f, _, _ in os.walk(t)} == times
    assert sorted(os.listdir(b / "usr/lib")) == ["libx.so"]  # no temporary name left
    [linked] = result.linked
    assert {c.key for c in linked} == {"a", "b"}
    # a second run finds nothing more to free
    again = link_identical(cands)
    assert (again.freed_bytes, again.files_linked) == (0, 0)
    assert len(again.linked) == 1


@pytest.mark.parametrize(
    "change",
    ["mode", "owner", "mtime", "xattr", "content"],
)
def test_files_differing_in_an_attribute_or_byte_are_not_linked(
    tmp_path: Path, change: str
) -> None:
    a, b = _snapshots(tmp_path, 2, {"f": b"same bytes" * 100})
    f = b / "f"
    if change == "mode":
        os.chmod(f, 0o755)
    elif change == "owner":
        if os.geteuid() != 0:
            pytest.skip("giving a file away needs root")
        os.chown(f, 1000, 1000)
    elif change == "mtime":
        os.utime(f, (MTIME + 1, MTIME + 1))
    elif change == "xattr":
        try:
            os.setxattr(f, "user.note", b"1")
        except OSError:
            pytest.skip("this file system keeps no user xattrs")
    else:  # the index says the same sha256, the disk disagrees: the disk decides
        f.write_bytes(b"same bytez" * 100)
        os.utime(f, (MTIME, MTIME))
    result = link_identical([Candidate("a", a, "f"), Candidate("b", b, "f")])
    assert (result.freed_bytes, result.files_linked, result.linked) == (0, 0, [])
    assert _ino(a / "f") != _ino(b / "f")


def test_two_paths_of_one_snapshot_are_never_linked(tmp_path: Path) -> None:
    a = tmp_path / "a"
    _file(a, "one", b"z" * 100)
    _file(a, "two", b"z" * 100)
    result = link_identical([Candidate("a", a, "one"), Candidate("a", a, "two")])
    assert result.files_linked == 0
    assert _ino(a / "one") != _ino(a / "two")


def test_a_file_the_layer_hardlinks_itself_keeps_its_link(tmp_path: Path) -> None:
    a, b = _snapshots(tmp_path, 2, {"f": b"q" * 300})
    os.link(b / "f", b / "g")  # the layer's own hardlink: f and g are one file in b
    result = link_identical([Candidate("b", b, "f"), Candidate("a", a, "f")])
    # b's inode has a link outside the group: it is the one kept, a's is replaced
    assert result.files_linked == 1
    assert result.freed_bytes == 300
    assert _ino(b / "f") == _ino(b / "g") == _ino(a / "f")
    c = _snapshots(tmp_path / "more", 1, {"f": b"q" * 300})[0]
    os.link(c / "f", c / "g")
    # two inodes that each have a link outside the group: neither is replaced
    result = link_identical([Candidate("c", c, "f"), Candidate("a", a, "f")])
    assert result.files_linked == 0
    assert _ino(c / "f") == _ino(c / "g") != _ino(a / "f")


def test_never_through_a_symlink_nor_outside_the_tree(tmp_path: Path) -> None:
    a, b = _snapshots(tmp_path, 2, {"real/f": b"s" * 100})
    outside = _file(tmp_path / "outside", "f", b"s" * 100)
    os.symlink(outside.parent, b / "via")
    (b / "link-f").symlink_to(outside)
    cands = [
        Candidate("a", a, "real/f"),
        Candidate("b", b, "via/f"),
    ]
    result = link_identical(cands)
    assert result.files_linked == 0
    assert any("via/f" in s for s in result.skipped)
    result = link_identical([Candidate("a", a, "real/f"), Candidate("b", b, "link-f")])
    assert result.files_linked == 0
    result = link_identical([Candidate("a", a, "real/f"), Candidate("b", b, "../outside/f")])
    assert result.files_linked == 0
    assert os.lstat(outside).st_nlink == 1


def test_the_inode_most_files_share_is_kept(tmp_path: Path) -> None:
    a, b, c = _snapshots(tmp_path, 3, {"f": b"m" * 1000})
    link_identical([Candidate("b", b, "f"), Candidate("c", c, "f")])
    kept = _ino(b / "f")
    result = link_identical([Candidate(k, t, "f") for k, t in (("a", a), ("b", b), ("c", c))])
    assert result.freed_bytes == 1000
    assert result.files_linked == 1
    assert _ino(a / "f") == _ino(c / "f") == kept


def test_a_temporary_link_a_killed_run_left_is_removed_and_a_layers_own_file_is_not(
    tmp_path: Path,
) -> None:
    a, b = _snapshots(tmp_path, 2, {"usr/f": b"k" * 100})
    times = _fix_dirs(b)
    leftover = b / "usr" / f"{TEMP_PREFIX}0123456789abcdef"
    os.link(a / "usr/f", leftover)  # killed between the link and the rename
    own = b / "usr" / f"{TEMP_PREFIX}fedcba9876543210"
    os.link(b / "usr/f", own)  # the layer's own file of that name (its tar had it)
    os.utime(b / "usr", (MTIME, MTIME))
    indexed = frozenset({f"usr/{TEMP_PREFIX}fedcba9876543210"})
    assert remove_leftovers(b, "usr", indexed=indexed) == 1
    assert not leftover.exists()
    assert own.exists()
    assert os.lstat(b / "usr").st_mtime_ns == times[str(b / "usr")]
    assert remove_leftovers(b, "usr/../..") == 0  # never outside the tree


def test_a_fifo_where_the_index_said_a_file_is_left_alone(
    tmp_path: Path,
) -> None:
    a = _snapshots(tmp_path, 1, {"f": b"d" * 10})[0]
    b = tmp_path / "b"
    b.mkdir()
    os.mkfifo(b / "f")
    result = link_identical([Candidate("a", a, "f"), Candidate("b", b, "f")])
    assert result.files_linked == 0
    assert any("not a regular file" in line for line in result.skipped)
