"""The store on disk as an attacker and an unlucky machine see it.

- Nothing under a root-owned store is reachable by another local user: the store's directories
  are 0700 and a snapshot's tree sits in ``snapshots/<hex>/fs`` below a directory no layer sets
  the mode of (a layer's root is nearly always 0755).
- A store of the old layout (version 1, ``snapshots/<hex>/`` is the tree) is migrated in place,
  resumably, or refused with the command that migrates it.
- Walks and removals are iterative (a legal layer can be thousands of directories deep), and
  never cross into a mount point: a leftover mount under ``tmp/`` is unmounted or left whole,
  never emptied through.
- Writes stop with StoreFull below the store's reserve and on a real ENOSPC, leaving nothing.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerhub.engine import fsutil, fswriter, mounts, snapshots
from layerhub.engine.apply import ApplyLimits, ApplyResult, apply_layer
from layerhub.engine.digest import sha256_bytes
from layerhub.engine.errors import StoreFull, StoreLayoutError
from layerhub.engine.store import (
    MIGRATE_COMMAND,
    PRIVATE_DIRS,
    STORE_VERSION,
    Store,
    StoreReserve,
    migrate_store,
)
from tests.engine.layerkit import Kit
from tests.support.blobs import local_blobs

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (setpriv, mknod, mount)")
NOBODY = 65534
DEPTH = 1_100  # past Python's recursion limit


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as an unprivileged user with no supplementary groups.

    The unprivileged shell looks the program up and executes it, as a local user would:
    setpriv's own exec of a path it was given is not the check we want.
    """
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "util-linux setpriv is needed"
    drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*drop, "/bin/sh", "-c", 'exec "$0" "$@"', *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700, which would hide the
    store whatever its own modes are)."""
    base = Path(tempfile.mkdtemp(prefix="layerhub-open-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def oci_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", whiteouts="oci")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- item: the store does not hand out root -------------------------------------------------


def test_store_directories_are_private_and_tightened_on_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root, whiteouts="oci")
    for rel in PRIVATE_DIRS:
        assert mode(root / rel if rel else root) == 0o700, rel
    for rel in PRIVATE_DIRS:  # an older layerhub (or a careless admin) opened them
        os.chmod(root / rel if rel else root, 0o755)
    Store(root)
    for rel in PRIVATE_DIRS:
        assert mode(root / rel if rel else root) == 0o700, rel


@needs_root
def test_an_unprivileged_user_cannot_reach_what_a_layer_holds(open_base: Path, kit: Kit) -> None:
    id_bin = Path(shutil.which("id") or "/usr/bin/id").read_bytes()
    layer = kit.tar(
        [
            kit.dir(".", mode=0o755),
            kit.dir("bin", mode=0o755),
            kit.file("bin/rootid", id_bin, mode=0o4755),
            kit.char("dev/null-twin", 1, 3, mode=0o666),
            kit.file("etc/shadow", b"root:secret\n", mode=0o600, uid=NOBODY),
            kit.file("etc/motd", b"hello\n", mode=0o644),
        ]
    )
    store = Store(open_base / "store", whiteouts="oci")
    cid = sha256_bytes(layer)
    tree = store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid).path
    # the layer's root mode is where a container sees it: on the tree, not on the store's dirs
    assert mode(tree) == 0o755
    container = store.containers / "c1" / "upper"
    container.mkdir(parents=True)
    (container / "notes").write_text("mine\n")
    os.chmod(container, 0o755)
    # the harness itself works: nobody reads an open file in an open directory
    (open_base / "open.txt").write_text("ok\n")
    assert as_nobody("cat", str(open_base / "open.txt")).stdout == "ok\n"

    ran = as_nobody(str(tree / "bin" / "rootid"), "-u")
    assert ran.stdout == "", "a setuid binary of a layer ran"
    assert ran.returncode != 0
    assert "Permission denied" in ran.stderr
    for target in (tree / "dev" / "null-twin", tree / "etc" / "shadow", tree / "etc" / "motd"):
        read = as_nobody("cat", str(target))
        assert read.returncode != 0, target
        assert "Permission denied" in read.stderr, target
    listed = as_nobody("ls", str(container))
    assert listed.returncode != 0
    assert "Permission denied" in listed.stderr
    assert as_nobody("ls", str(store.root / "snapshots")).returncode != 0
    assert mode(tree.parent) == 0o700  # the store's own directory above the tree


# -- the store format and its migration ------------------------------------------------------


def make_v1_store(root: Path, trees: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """A store as the first layout kept it: ``snapshots/<hex>/`` is the tree, mode 0755."""
    for rel in PRIVATE_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "store.json").write_text(json.dumps({"version": 1, "whiteouts": "oci"}) + "\n")
    ids = {}
    for name, files in trees.items():
        hex_id = sha256_bytes(name.encode())[7:]
        tree = root / "snapshots" / hex_id
        tree.mkdir(mode=0o755)
        os.chmod(tree, 0o755)
        for rel, data in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
        ids[name] = f"sha256:{hex_id}"
    return ids


TREES = {
    "base": {"etc/os-release": b"base\n", "fs/inside": b"a layer may hold /fs itself\n"},
    "app": {"app/run": b"#!/bin/sh\n"},
    "third": {"x": b"x"},
}


def assert_migrated(store: Store, ids: dict[str, str]) -> None:
    assert json.loads((store.root / "store.json").read_text()) == {
        "version": STORE_VERSION,
        "whiteouts": "oci",
    }
    assert sorted(store.snapshots.chain_ids()) == sorted(ids.values())
    for name, cid in ids.items():
        assert mode(store.snapshots.outer(cid)) == 0o700
        assert mode(store.snapshots.path(cid)) == 0o755
        for rel, data in TREES[name].items():
            assert (store.snapshots.get(cid) / rel).read_bytes() == data
    assert sorted(os.listdir(store.root)) == [
        "blobs",
        "containers",
        "locks",
        "snapshots",
        "store.json",
        "tmp",
    ]


def test_an_old_store_is_migrated_when_opened(tmp_path: Path) -> None:
    ids = make_v1_store(tmp_path / "store", TREES)
    store = Store(tmp_path / "store")
    assert_migrated(store, ids)
    assert migrate_store(store.root) == 0  # already current: nothing to do
    assert_migrated(Store(tmp_path / "store"), ids)


def test_an_old_store_is_refused_with_the_command_that_migrates_it(tmp_path: Path) -> None:
    ids = make_v1_store(tmp_path / "store", TREES)
    with pytest.raises(StoreLayoutError, match="layout version 1") as caught:
        Store(tmp_path / "store", migrate=False)
    assert MIGRATE_COMMAND in str(caught.value)
    assert migrate_store(tmp_path / "store") == len(TREES)
    assert_migrated(Store(tmp_path / "store", migrate=False), ids)


def test_a_store_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root, whiteouts="oci")
    (root / "store.json").write_text(json.dumps({"version": 99, "whiteouts": "oci"}))
    with pytest.raises(StoreLayoutError, match="newer"):
        Store(root)


@pytest.mark.parametrize("moved_before_crash", [0, 1, 3])
def test_an_interrupted_migration_is_finished_by_the_next_open(
    tmp_path: Path, moved_before_crash: int
) -> None:
    root = tmp_path / "store"
    ids = make_v1_store(root, TREES)
    # what a migration killed after moving some trees leaves: recorded, partly moved
    staging = root / "snapshots.migrating"
    staging.mkdir(mode=0o700)
    meta = {"version": 1, "whiteouts": "oci", "migration": STORE_VERSION}
    (root / "store.json").write_text(json.dumps(meta))
    for cid in sorted(ids.values())[:moved_before_crash]:
        (staging / cid[7:]).mkdir(mode=0o700)
        os.rename(root / "snapshots" / cid[7:], staging / cid[7:] / "fs")
    if moved_before_crash == len(ids):
        # ... and, further on, one killed between the final rename and store.json
        os.rename(staging, root / "snapshots")
    assert_migrated(Store(root), ids)


def test_a_migration_killed_before_it_was_recorded_starts_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids = make_v1_store(root, TREES)
    (root / "snapshots.migrating").mkdir(mode=0o700)  # made, store.json not yet written
    assert_migrated(Store(root), ids)


# -- deep trees: no recursion ------------------------------------------------------------------


def deep_tar(kit: Kit, depth: int) -> bytes:
    entries = []
    path = ""
    for _ in range(depth):
        path = f"{path}dd/"  # the 100-byte ustar field never ends in "/"
        entries.append(kit.dir(path.rstrip("/")))
    entries.append(kit.file(path + "bottom", b"deep"))
    return kit.tar(entries)


def deep_dir(base: Path, depth: int) -> Path:
    path = os.fspath(base)
    os.mkdir(path)
    for _ in range(depth):
        path = os.path.join(path, "d")
        os.mkdir(path)
    Path(path, "bottom").write_bytes(b"deep")
    return Path(path)


def test_a_deep_snapshot_is_measured_removed_and_swept(oci_store: Store, kit: Kit) -> None:
    # what unpacking a legal 1,100-deep layer leaves (made directly: the walks are under test)
    cid = sha256_bytes(b"deep")

    def fill(tree: Path) -> ApplyResult:
        result = apply_layer(io.BytesIO(kit.tar([])), tree, whiteouts=oci_store.whiteouts)
        deep_dir(tree / "dd", DEPTH)
        return result

    oci_store.snapshots.build(cid, fill)
    usage = oci_store.usage()
    assert (usage.snapshot_count, usage.snapshot_bytes) == (1, 4)
    assert fsutil.tree_usage(oci_store.snapshots.path(cid)) == (4, 1)
    assert oci_store.snapshots.remove(cid)
    assert not oci_store.snapshots.exists(cid)
    assert os.listdir(oci_store.tmp) == []
    # a crashed unpack of the same tree, left in tmp/
    deep_dir(oci_store.tmp / "unpack-crashed", DEPTH)
    assert oci_store.sweep_tmp() == 1
    assert os.listdir(oci_store.tmp) == []


def test_a_deep_layer_unpacks_and_is_measured(oci_store: Store, kit: Kit) -> None:
    layer = deep_tar(kit, 300)  # through the layer reader, shallower to stay quick
    cid = sha256_bytes(layer)
    oci_store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert fsutil.tree_usage(oci_store.snapshots.path(cid)) == (4, 1)
    assert oci_store.snapshots.remove(cid)


def test_a_tree_deeper_than_path_max_is_removed(tmp_path: Path) -> None:
    # a container can build one with relative paths; the store must still be able to delete it
    top = tmp_path / "upper"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    name = "n" * 200
    try:
        for _ in range(40):  # 8,000 bytes of path, twice PATH_MAX
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    assert fsutil.tree_usage(top) == (0, 1)
    fsutil.remove_path(top)
    assert not top.exists()


def test_usage_counts_a_hardlinked_inode_once_and_follows_no_symlink(
    oci_store: Store, kit: Kit
) -> None:
    layer = kit.tar(
        [
            kit.file("a", b"x" * 1000),
            kit.hardlink("b", "a"),
            kit.symlink("up", "/"),
            kit.symlink("loop", "."),
        ]
    )
    cid = sha256_bytes(layer)
    oci_store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert fsutil.tree_usage(oci_store.snapshots.path(cid)) == (1000, 4)
    assert oci_store.usage().snapshot_bytes == 1000


# -- mounts: never emptied through ----------------------------------------------------------


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def mounts_below(path: Path) -> list[str]:
    base = os.path.realpath(path) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(base)), key=len, reverse=True)


def unmount_all(path: Path) -> None:
    for point in mounts_below(path):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture
def mount_guard(tmp_path: Path) -> Iterator[Path]:
    if not ROOT:
        pytest.skip("mounting needs root")
    try:
        yield tmp_path
    finally:
        unmount_all(tmp_path)


def test_the_sweep_unmounts_a_leftover_overlay_and_keeps_the_container(
    mount_guard: Path, kit: Kit
) -> None:
    store = Store(mount_guard / "store", whiteouts="overlay")
    layer = kit.tar([kit.file("bin/sh", b"shell"), kit.file("etc/os-release", b"os")])
    cid = sha256_bytes(layer)
    lower = store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid).path
    upper = store.containers / "c1" / "upper"
    upper.mkdir(parents=True)
    (upper / "greeting").write_bytes(b"hello")
    # what an exec killed with SIGKILL leaves: its overlay mounted under tmp/
    leftover = store.tmp / "exec-killed"
    (leftover / "work").mkdir(parents=True)
    (leftover / "merged").mkdir()
    mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={upper},workdir={leftover / 'work'}",
        str(leftover / "merged"),
    )
    assert (leftover / "merged" / "greeting").read_bytes() == b"hello"

    report = store.sweep()
    assert sorted(os.listdir(upper)) == ["greeting"]  # nothing deleted, no whiteout made
    assert (upper / "greeting").read_bytes() == b"hello"
    assert sorted(os.listdir(lower)) == ["bin", "etc"]
    assert mounts_below(store.root) == []
    assert not leftover.exists()
    assert report.removed == 1
    assert report.left == []
    assert report.unmounted == [str(leftover / "merged")]


def test_a_mount_that_will_not_come_off_is_left_and_reported(
    mount_guard: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(mount_guard / "store", whiteouts="oci")
    kept = store.containers / "c1" / "upper"
    kept.mkdir(parents=True)
    (kept / "precious").write_bytes(b"keep me")
    leftover = store.tmp / "exec-live"
    (leftover / "merged").mkdir(parents=True)
    (leftover / "scratch").write_bytes(b"x")
    mount("--bind", str(kept), str(leftover / "merged"))

    def refuse(target: str, flags: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), target)

    monkeypatch.setattr(mounts, "_umount2", refuse)
    report = store.sweep()
    assert report.removed == 0
    assert report.left == [f"{leftover}: a live mount (Operation not permitted)"]
    assert (leftover / "merged" / "precious").read_bytes() == b"keep me"
    assert (kept / "precious").read_bytes() == b"keep me"


def test_remove_path_never_goes_through_a_bind_mount(mount_guard: Path) -> None:
    # a bind mount of the same file system: st_dev alone would not see it
    outside = mount_guard / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    doomed = mount_guard / "doomed"
    (doomed / "a" / "b").mkdir(parents=True)
    (doomed / "a" / "file").write_bytes(b"x")
    mount("--bind", str(outside), str(doomed / "a" / "b"))
    with pytest.raises(OSError, match="a live mount is in the way") as caught:
        fsutil.remove_path(doomed)
    assert (outside / "precious").read_bytes() == b"keep me"
    assert isinstance(caught.value, fsutil.MountInTheWay)
    assert caught.value.mount_points == [str(doomed / "a" / "b")]
    assert not (doomed / "a" / "file").exists()  # everything around the mount went
    with pytest.raises(fsutil.MountInTheWay):
        fsutil.remove_path(doomed / "a" / "b")  # nor is a mount root itself emptied


def test_walks_do_not_enter_another_file_system(mount_guard: Path) -> None:
    tree = mount_guard / "tree"
    (tree / "mnt").mkdir(parents=True)
    (tree / "own").write_bytes(b"12345")
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tree / "mnt"))
    (tree / "mnt" / "other").write_bytes(b"y" * 1000)
    assert fsutil.tree_usage(tree) == (5, 1)


# -- the reserve and a full disk ---------------------------------------------------------------


def test_a_reserve_resolves_to_bytes(tmp_path: Path) -> None:
    total = fsutil.total_bytes(tmp_path)
    assert StoreReserve(bytes=10, percent=0).resolve(total) == 10
    assert StoreReserve(percent=50).resolve(1000) == 500
    assert StoreReserve(bytes=600, percent=50).resolve(1000) == 600
    store = Store(tmp_path / "store", whiteouts="oci", reserve=StoreReserve(percent=1))
    assert store.reserve == -(-total // 100)
    assert Store(tmp_path / "other", whiteouts="oci", reserve=4096).reserve == 4096


def test_nothing_is_written_below_the_reserve(tmp_path: Path, kit: Kit) -> None:
    store = Store(tmp_path / "store", whiteouts="oci", reserve=1 << 62)
    with pytest.raises(StoreFull, match=r"bytes free, below the reserve of \d+ bytes"):
        store.blobs.put_bytes(b"config")
    layer = kit.tar([kit.file("a", b"a")])
    cid = sha256_bytes(layer)
    with pytest.raises(StoreFull):
        store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert not store.snapshots.exists(cid)
    assert os.listdir(store.tmp) == []
    assert os.listdir(local_blobs(store).root) == []


class Shrinking(io.RawIOBase):
    """A stream of zeros that makes the disk "fill up" once ``after`` bytes were read."""

    def __init__(self, size: int, after: int, free: list[int]) -> None:
        self.left, self.after, self.free = size, after, free

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.left, 1 << 20)
        buf[:n] = bytes(n)
        self.left -= n
        self.after -= n
        if self.after <= 0:
            self.free[0] = 0
        return n


def test_a_blob_stops_when_free_space_falls_below_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = [1 << 40]
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: free[0])
    store = Store(tmp_path / "store", whiteouts="oci", reserve=1 << 20)
    stream = Shrinking(size=64 << 20, after=4 << 20, free=free)
    with pytest.raises(StoreFull, match="0 bytes free, below the reserve of 1048576 bytes"):
        store.blobs.ingest(stream)  # type: ignore[arg-type]
    assert stream.left > 40 << 20, "the writer kept writing long after the disk filled"
    assert os.listdir(store.tmp) == []
    assert os.listdir(local_blobs(store).root) == []


def test_unpacks_pass_the_reserve_to_the_layer_reader(
    tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ApplyLimits] = []
    real = apply_layer

    def spy(*args: object, limits: ApplyLimits, **kw: object) -> ApplyResult:
        seen.append(limits)
        return real(*args, limits=limits, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots, "apply_layer", spy)
    store = Store(tmp_path / "store", whiteouts="oci", reserve=12345)
    layer = kit.tar([kit.file("a", b"a")])
    store.snapshots.unpack(sha256_bytes(layer), io.BytesIO(layer))
    store.snapshots.unpack(
        sha256_bytes(layer + b"\0" * 512),
        io.BytesIO(layer + b"\0" * 512),
        limits=ApplyLimits(min_free=1 << 30),
    )
    assert [limit.min_free for limit in seen] == [12345, 1 << 30]


@pytest.fixture
def small_fs(mount_guard: Path) -> Path:
    """An 8 MiB file system: a real ENOSPC."""
    where = mount_guard / "small"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where))
    return where


def test_a_full_disk_is_store_full_and_leaves_nothing(small_fs: Path, kit: Kit) -> None:
    store = Store(small_fs / "store", whiteouts="oci")
    with pytest.raises(StoreFull, match=r"is full: no space left \(\d+ bytes free\)"):
        store.blobs.ingest(io.BytesIO(os.urandom(16 << 20)))
    assert os.listdir(store.tmp) == []
    assert os.listdir(local_blobs(store).root) == []
    layer = kit.tar([kit.file("small", b"s"), kit.file("big", os.urandom(16 << 20))])
    cid = sha256_bytes(layer)
    with pytest.raises(StoreFull, match="no space left"):
        store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert not store.snapshots.exists(cid)
    assert os.listdir(store.tmp) == []
    assert os.listdir(store.root / "snapshots") == []
    # and the store goes on working once the big writes are gone
    assert store.blobs.read_bytes(store.blobs.put_bytes(b"fits").digest) == b"fits"


def test_a_disk_filling_under_the_writer_child_is_store_full(
    small_fs: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of small files: their calls go to the unpack's writer child, which meets the
    full disk; the unpack stops with StoreFull and keeps nothing."""
    started: list[bool] = []
    start = fswriter.FileWriter._start

    def spy(self: fswriter.FileWriter) -> bool:
        started.append(start(self))
        return started[-1]

    monkeypatch.setattr(fswriter.FileWriter, "_start", spy)
    store = Store(small_fs / "store", whiteouts="oci")
    layer = kit.tar([kit.file(f"d{i % 7}/f{i}", os.urandom(4096)) for i in range(3000)])
    cid = sha256_bytes(layer)
    with pytest.raises(StoreFull, match="no space left"):
        store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert started == [True], "the calls never reached the writer child"
    assert not store.snapshots.exists(cid)
    assert os.listdir(store.tmp) == []
    assert os.listdir(store.root / "snapshots") == []
