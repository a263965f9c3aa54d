"""The container's writable layer: copy-up, whiteouts, symlinked parents, ``docker diff``.

The image's lower snapshots are unpacked by the engine from small tars; every test runs once per
whiteout form. The lowers must never change, nothing may be written outside the upper directory,
a commit of the upper directory must give back the container's view, and (as root, where the
kernel allows) a real overlayfs mount doing the same changes must agree with all of it.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from layerhub.engine.container import Change, ContainerFS, container_changes
from layerhub.engine.diff import diff_to_store
from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.errors import ContainerPathError, InvalidPath, PathNotFound
from layerhub.engine.store import Store
from layerhub.engine.union import UnionView
from layerhub.engine.whiteouts import WhiteoutFormat, overlay_supported
from tests.engine.layerkit import MTIME, Kit
from tests.support.peers import require, require_root, skip_or_fail

COMMENT = {"SCHILY.xattr.user.comment": "built by layer 0"}


def image_tars(kit: Kit) -> list[bytes]:
    """A small image of two layers; the second replaces, deletes and makes a directory opaque."""
    base = [
        kit.dir("etc"),
        kit.file("etc/hostname", b"base\n"),
        kit.file("etc/motd", b"hello\n"),
        kit.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        kit.dir("etc/ssl", mode=0o700),
        kit.file("etc/ssl/key", b"secret", mode=0o600),
        kit.dir("home"),
        kit.dir("home/user", mode=0o750, uid=1000, gid=1000),
        kit.file("home/user/notes.txt", b"notes", mode=0o600, uid=1000, gid=1000),
        kit.dir("usr"),
        kit.dir("usr/bin"),
        kit.file("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755, pax=COMMENT),
        kit.dir("usr/lib"),
        kit.file("usr/lib/libc.so", b"libc"),
        kit.dir("var"),
        kit.dir("var/log"),
        kit.file("var/log/syslog", b"boot\n"),
        kit.dir("var/log/apt"),
        kit.file("var/log/apt/history.log", b"install\n"),
        kit.dir("srv"),
        kit.dir("srv/data", mode=0o750),
        kit.file("srv/data/a.txt", b"alpha"),
        kit.hardlink("srv/data/hard", "srv/data/a.txt"),
        kit.symlink("srv/data/link", "a.txt"),
        kit.dir("srv/data/sub"),
        kit.file("srv/data/sub/b.txt", b"beta", mode=0o640),
        kit.dir("opt"),
        kit.dir("opt/app"),
        kit.file("opt/app/old.conf", b"old"),
        kit.dir("empty", mode=0o700),
        kit.dir("tmp", mode=0o1777),
        kit.dir("run"),
        kit.fifo("run/initctl", mode=0o600),
        kit.symlink("lib", "usr/lib"),
        kit.symlink("bin", "usr/bin"),
        kit.symlink("etclink", "/etc"),
        kit.symlink("escape", "../../.."),
        kit.symlink("abs", "/"),
        kit.symlink("loop1", "loop2"),
        kit.symlink("loop2", "/loop1"),
        kit.symlink("dangling", "/nowhere/at/all"),
    ]
    top = [
        kit.file("etc/hostname", b"layer1\n"),
        kit.whiteout("var/log/syslog"),
        kit.dir("opt/app"),
        kit.opaque("opt/app"),
        kit.file("opt/app/new.conf", b"new"),
        kit.file("usr/lib/libz.so", b"libz"),
    ]
    return [kit.tar(base), kit.tar(top)]


@dataclass
class Image:
    store: Store
    lowers: list[Path]
    diff_ids: list[str]

    @property
    def fmt(self) -> WhiteoutFormat:
        return self.store.whiteouts

    def lower_view(self) -> UnionView:
        return UnionView(self.lowers, self.fmt)


def build_image(store: Store, kit: Kit) -> Image:
    tars = image_tars(kit)
    return Image(store, kit.stack(store, tars), [sha256_bytes(t) for t in tars])


@pytest.fixture
def image(store: Store, kit: Kit) -> Image:
    return build_image(store, kit)


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    return tmp_path / "box" / "upper"


@pytest.fixture
def cfs(image: Image, upper: Path) -> ContainerFS:
    return ContainerFS(upper, image.lowers, image.fmt)


# -- describing trees ----------------------------------------------------------------------------


def _node(st: os.stat_result, host: Path) -> tuple[Any, ...]:
    content: Any = None
    if stat.S_ISREG(st.st_mode):
        content = hashlib.sha256(host.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(host)
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError:
        names = []
    xattrs = tuple(
        (n, os.getxattr(host, n, follow_symlinks=False)) for n in sorted(names) if n[:5] == "user."
    )
    return (
        stat.S_IFMT(st.st_mode),
        stat.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        content,
        xattrs,
    )


def describe(view: UnionView) -> dict[str, tuple[Any, ...]]:
    """Path -> (type, mode, owner, content or target, user xattrs) of a merged view."""
    return {e.path: _node(e.st, e.host_path) for e in view.walk()}


def describe_dir(root: Path) -> dict[str, tuple[Any, ...]]:
    """The same for a real tree (a kernel overlay mount), never following symlinks."""
    out: dict[str, tuple[Any, ...]] = {}

    def walk(directory: Path, prefix: str) -> None:
        for entry in os.scandir(directory):
            host = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            out[f"{prefix}/{entry.name}"] = _node(st, host)
            if stat.S_ISDIR(st.st_mode):
                walk(host, f"{prefix}/{entry.name}")

    walk(root, "")
    return out


def whiteouts_in(fmt: WhiteoutFormat, directory: Path) -> set[str]:
    """Names the upper directory ``directory`` records as deleted."""
    return {
        t
        for e in os.scandir(directory)
        if (t := fmt.whiteout_target(e.name, e.stat(follow_symlinks=False))) is not None
    }


def real_names(fmt: WhiteoutFormat, directory: Path) -> set[str]:
    """Entries of an upper directory that are neither whiteouts nor markers."""
    return {
        e.name
        for e in os.scandir(directory)
        if fmt.whiteout_target(e.name, e.stat(follow_symlinks=False)) is None
        and not fmt.is_marker(e.name)
    }


def lower_state(image: Image) -> list[dict[str, tuple[Any, ...]]]:
    return [Kit.state(p) for p in image.lowers]


def long_sequence(cfs: ContainerFS) -> None:
    """A container's life: writes, deletes, a re-created directory, renames, chmods, links."""
    cfs.write_file("/etc/hostname", b"box\n")
    cfs.mkdir("/etc/app", mode=0o750)
    cfs.write_file("/etc/app/app.conf", b"x=1\n", mode=0o640, uid=1000, gid=1000)
    cfs.remove("/etc/motd")
    cfs.remove("/var/log", recursive=True)
    cfs.mkdir("/var/log")
    cfs.write_file("/var/log/fresh.log", b"new\n")
    cfs.chmod("/usr/bin/tool", 0o4750)
    cfs.chmod("/srv/data/sub", 0o700)
    cfs.write_file("/srv/data/new.txt", b"added before the move")
    cfs.remove("/srv/data/sub/b.txt")
    cfs.rename("/srv/data", "/srv/moved")
    cfs.rename("/etc/passwd", "/etc/passwd.old")
    cfs.write_file("/lib/libzz.so", io.BytesIO(b"z" * 300_000))
    cfs.symlink("/etc/libc-link", "../usr/lib/libc.so")
    cfs.write_file("/tmp/scratch", b"t")
    cfs.remove("/tmp/scratch")
    cfs.remove("/empty")
    cfs.mkdir("/srv/new/deep", parents=True)
    cfs.write_file("/abs/home/user/todo", b"through /abs", uid=1000, gid=1000)
    cfs.write_file("/escape/top.txt", b"through /escape")
    cfs.rename("/opt/app", "/opt/app2")
    cfs.mkdir("/opt/app")
    cfs.write_file("/etclink", b"no longer a link")
    cfs.rename("/lib", "/lib64")
    cfs.write_file("/var/log/fresh.log", b"rewritten\n", mode=0o600)
    cfs.chmod("/run/initctl", 0o620)  # a FIFO copies up as a FIFO
    cfs.rename("/run", "/run2")


# -- writing files -------------------------------------------------------------------------------


def test_a_fresh_container_sees_the_image(cfs: ContainerFS, image: Image, upper: Path) -> None:
    assert describe(cfs.view) == describe(image.lower_view())
    assert cfs.view.read_bytes("/etc/hostname") == b"layer1\n"
    assert os.listdir(upper) == []
    assert container_changes(upper, image.fmt, image.lower_view()) == []


def test_write_file_replaces_a_lower_file_and_copies_up_parents(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.write_file("/etc/hostname", b"box\n", mode=0o600, uid=7, gid=8)
    entry = cfs.view.lstat("/etc/hostname")
    assert entry.host_path == upper / "etc/hostname"
    assert cfs.view.read_bytes("/etc/hostname") == b"box\n"
    assert (stat.S_IMODE(entry.st.st_mode), entry.st.st_uid, entry.st.st_gid) == (0o600, 7, 8)
    assert image.lower_view().read_bytes("/etc/hostname") == b"layer1\n"
    # only the parent directory is copied up: its metadata, none of its other children
    assert os.listdir(upper / "etc") == ["hostname"]
    assert cfs.view.read_bytes("/etc/passwd").startswith(b"root:")


def test_copy_up_keeps_parents_mode_owner_and_mtime(cfs: ContainerFS, upper: Path) -> None:
    cfs.write_file("/home/user/new.txt", b"hi", uid=1000, gid=1000)
    home, user = os.lstat(upper / "home"), os.lstat(upper / "home/user")
    assert (stat.S_IMODE(home.st_mode), home.st_uid, home.st_mtime) == (0o755, 0, MTIME)
    assert (stat.S_IMODE(user.st_mode), user.st_uid, user.st_gid) == (0o750, 1000, 1000)
    assert user.st_mtime > MTIME  # the directory written into is modified, as in overlayfs
    assert sorted(e.path for e in cfs.view.listdir("/home/user")) == [
        "/home/user/new.txt",
        "/home/user/notes.txt",
    ]


def test_write_file_from_a_stream(cfs: ContainerFS) -> None:
    data = os.urandom(3 << 20)
    cfs.write_file("/srv/blob.bin", io.BytesIO(data), mode=0o4755)
    assert cfs.view.read_bytes("/srv/blob.bin") == data
    assert stat.S_IMODE(cfs.view.lstat("/srv/blob.bin").st.st_mode) == 0o4755


def test_write_file_replaces_a_symlink_instead_of_following_it(cfs: ContainerFS) -> None:
    cfs.write_file("/etclink", b"a file now")
    assert cfs.view.lstat("/etclink").kind == "file"
    assert cfs.view.read_bytes("/etc/hostname") == b"layer1\n"
    cfs.write_file("/srv/data/link", b"not a link")
    assert cfs.view.read_bytes("/srv/data/a.txt") == b"alpha"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/nope/file", ContainerPathError),  # no such directory
        ("/etc/passwd/file", ContainerPathError),  # parent is a file
        ("/etc", ContainerPathError),  # a directory is there
        ("/", ContainerPathError),
        ("/dangling/x", ContainerPathError),
        ("/loop1/x", ContainerPathError),  # too many levels of symlinks
        ("etc/relative", InvalidPath),
        ("/etc/../etc/x", InvalidPath),
        ("/etc/.wh.motd", InvalidPath),
        ("/etc/.wh..wh..opq", InvalidPath),
    ],
)
def test_write_file_refuses(
    cfs: ContainerFS, image: Image, kit: Kit, path: str, error: type[Exception]
) -> None:
    with kit.deadline(10), pytest.raises(error):  # a symlink loop must fail, not hang
        cfs.write_file(path, b"x")
    assert describe(cfs.view) == describe(image.lower_view())


# -- symlinked parents ---------------------------------------------------------------------------


def test_writes_through_symlinked_parents_land_at_the_target_inside_upper(
    cfs: ContainerFS, upper: Path, tmp_path: Path
) -> None:
    def outside() -> dict[str, tuple[Any, ...]]:
        state = Kit.state(tmp_path)
        return {
            k: v for k, v in state.items() if k != "box/upper" and not k.startswith("box/upper/")
        }

    before = outside()
    cfs.write_file("/lib/x.so", b"x")
    cfs.write_file("/escape/esc.txt", b"e")
    cfs.write_file("/abs/etc/abs.txt", b"a")
    cfs.write_file("/etclink/via-link", b"l")
    cfs.mkdir("/escape/made", mode=0o700)
    cfs.mkdir("/abs/deep/er/est", parents=True)
    cfs.mkdir("/lib/p/q", parents=True)
    cfs.symlink("/up", "../../../../../..")
    cfs.write_file("/up/up.txt", b"u")
    cfs.symlink("/escape/sl", "/etc")
    cfs.rename("/etc/passwd", "/escape/pw")
    cfs.remove("/abs/etc/motd")
    cfs.chmod("/bin/tool", 0o700)  # chmod follows /bin -> usr/bin and the last component
    assert outside() == before
    for rel in ("usr/lib/x.so", "esc.txt", "etc/abs.txt", "etc/via-link", "up.txt", "pw"):
        assert (upper / rel).is_file(), rel
    for rel in ("made", "deep/er/est", "usr/lib/p/q"):
        assert (upper / rel).is_dir(), rel
    assert os.readlink(upper / "sl") == "/etc"
    assert cfs.view.read_bytes("/usr/lib/x.so") == b"x"
    assert cfs.view.lstat("/lib").kind == "symlink"  # the parent symlink itself is unchanged
    assert not cfs.view.exists("/etc/motd")
    assert stat.S_IMODE(cfs.view.lstat("/usr/bin/tool").st.st_mode) == 0o700


def test_symlink_hops_are_limited_to_forty(cfs: ContainerFS, kit: Kit) -> None:
    cfs.symlink("/s40", "/etc")
    for i in range(39, -1, -1):
        cfs.symlink(f"/s{i}", f"s{i + 1}")
    cfs.write_file("/s1/forty.txt", b"40 hops")  # s1 .. s40: forty symlinks
    assert cfs.view.read_bytes("/etc/forty.txt") == b"40 hops"
    with pytest.raises(ContainerPathError, match="too many levels"):
        cfs.write_file("/s0/forty-one.txt", b"41 hops")
    with kit.deadline(10), pytest.raises(ContainerPathError, match="too many levels"):
        cfs.chmod("/loop1", 0o700)


# -- directories ---------------------------------------------------------------------------------


def test_mkdir(cfs: ContainerFS, upper: Path) -> None:
    cfs.mkdir("/srv/www", mode=0o2750)
    entry = cfs.view.lstat("/srv/www")
    assert entry.is_dir
    assert stat.S_IMODE(entry.st.st_mode) == 0o2750
    assert entry.host_path == upper / "srv/www"
    for path in ("/srv/www", "/etc", "/etc/passwd", "/lib", "/"):
        with pytest.raises(ContainerPathError):
            cfs.mkdir(path)
    with pytest.raises(ContainerPathError, match="no such directory"):
        cfs.mkdir("/srv/a/b")
    with pytest.raises(InvalidPath):
        cfs.mkdir("/srv/../x")


def test_mkdir_parents(cfs: ContainerFS, upper: Path) -> None:
    cfs.mkdir("/srv/a/b/c", mode=0o700, parents=True)
    assert stat.S_IMODE(cfs.view.lstat("/srv/a").st.st_mode) == 0o755
    assert stat.S_IMODE(cfs.view.lstat("/srv/a/b/c").st.st_mode) == 0o700
    cfs.mkdir("/srv/a/b/c", parents=True)  # existing: fine, unchanged
    cfs.mkdir("/etc", parents=True)
    cfs.mkdir("/", parents=True)
    assert not (upper / "etc").exists()
    cfs.mkdir("/lib/plugins", parents=True)  # through a symlink to a directory
    assert (upper / "usr/lib/plugins").is_dir()
    cfs.mkdir("/etclink", parents=True)  # a symlink to a directory is a directory to mkdir -p
    for bad in ("/etc/passwd/x", "/etc/passwd", "/dangling/x"):
        with pytest.raises(ContainerPathError):
            cfs.mkdir(bad, parents=True)


def test_a_directory_made_where_one_was_deleted_is_opaque(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.remove("/var/log", recursive=True)
    assert whiteouts_in(image.fmt, upper / "var") == {"log"}
    cfs.mkdir("/var/log", mode=0o750)
    assert image.fmt.is_opaque(upper / "var/log")
    assert whiteouts_in(image.fmt, upper / "var") == set()
    assert cfs.view.listdir("/var/log") == []
    cfs.write_file("/var/log/new", b"n")
    assert [e.path for e in cfs.view.walk("/var")] == ["/var/log", "/var/log/new"]
    # a directory made where nothing was deleted merges with nothing and needs no marker
    cfs.mkdir("/var/cache")
    assert not image.fmt.is_opaque(upper / "var/cache")


# -- removing ------------------------------------------------------------------------------------


def test_remove_a_lower_file_writes_a_whiteout(cfs: ContainerFS, image: Image, upper: Path) -> None:
    cfs.remove("/etc/motd")
    assert not cfs.view.exists("/etc/motd")
    assert whiteouts_in(image.fmt, upper / "etc") == {"motd"}
    assert real_names(image.fmt, upper / "etc") == set()
    assert image.lower_view().exists("/etc/motd")


def test_remove_a_changed_lower_file_drops_the_copy_and_whites_out(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.write_file("/etc/hostname", b"mine")
    cfs.remove("/etc/hostname")
    assert not cfs.view.exists("/etc/hostname")
    assert whiteouts_in(image.fmt, upper / "etc") == {"hostname"}
    assert real_names(image.fmt, upper / "etc") == set()


def test_remove_an_upper_only_path_leaves_no_trace(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.write_file("/new.txt", b"n")
    cfs.mkdir("/newdir")
    cfs.write_file("/newdir/f", b"f")
    cfs.remove("/new.txt")
    cfs.remove("/newdir", recursive=True)
    assert os.listdir(upper) == []
    assert describe(cfs.view) == describe(image.lower_view())


def test_remove_directories(cfs: ContainerFS, image: Image, upper: Path) -> None:
    with pytest.raises(ContainerPathError, match="not empty"):
        cfs.remove("/srv/data")
    cfs.remove("/empty")  # empty in the merged view: no recursive needed
    cfs.remove("/var/log/apt/history.log")
    cfs.remove("/var/log/apt")  # emptied by the container
    cfs.remove("/srv/data", recursive=True)
    assert whiteouts_in(image.fmt, upper / "srv") == {"data"}
    assert real_names(image.fmt, upper / "srv") == set()
    assert not cfs.view.exists("/srv/data/sub/b.txt")
    cfs.remove("/opt", recursive=True)
    assert not cfs.view.exists("/opt")
    assert whiteouts_in(image.fmt, upper) == {"empty", "opt"}


def test_remove_a_symlink_removes_the_link(cfs: ContainerFS) -> None:
    cfs.remove("/lib")
    assert not cfs.view.exists("/lib")
    assert cfs.view.read_bytes("/usr/lib/libc.so") == b"libc"


def test_remove_a_recreated_directory_hides_the_lower_one_again(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.remove("/opt/app", recursive=True)
    cfs.mkdir("/opt/app")
    cfs.write_file("/opt/app/mine", b"m")
    cfs.remove("/opt/app", recursive=True)
    assert not cfs.view.exists("/opt/app")
    assert whiteouts_in(image.fmt, upper / "opt") == {"app"}
    assert real_names(image.fmt, upper / "opt") == set()


def test_remove_refuses(cfs: ContainerFS, image: Image) -> None:
    with pytest.raises(ContainerPathError, match="refusing"):
        cfs.remove("/")
    with pytest.raises(ContainerPathError, match="refusing"):
        cfs.remove("/", recursive=True)
    for missing in ("/nope", "/nope/deeper", "/var/log/syslog", "/etc/passwd/x"):
        with pytest.raises(PathNotFound):
            cfs.remove(missing)
    with pytest.raises(InvalidPath):
        cfs.remove("relative")
    assert describe(cfs.view) == describe(image.lower_view())


# -- chmod ---------------------------------------------------------------------------------------


def test_chmod_copies_a_lower_file_up_whole(cfs: ContainerFS, image: Image, upper: Path) -> None:
    lower = image.lower_view().lstat("/usr/bin/tool")
    cfs.chmod("/usr/bin/tool", 0o4750)
    copy = os.lstat(upper / "usr/bin/tool")
    assert stat.S_IMODE(copy.st_mode) == 0o4750
    assert (upper / "usr/bin/tool").read_bytes() == lower.host_path.read_bytes()
    assert (copy.st_uid, copy.st_gid, copy.st_mtime_ns) == (
        lower.st.st_uid,
        lower.st.st_gid,
        lower.st.st_mtime_ns,
    )
    assert os.getxattr(upper / "usr/bin/tool", "user.comment") == b"built by layer 0"
    assert stat.S_IMODE(os.lstat(lower.host_path).st_mode) == 0o755
    # a copy-up alone does not modify the parents: they keep the lower times
    for parent in ("usr", "usr/bin"):
        lower_ns = image.lower_view().lstat(f"/{parent}").st.st_mtime_ns
        assert os.lstat(upper / parent).st_mtime_ns == lower_ns, parent


def test_chmod_a_directory_copies_only_the_directory(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.chmod("/srv/data", 0o700)
    assert os.listdir(upper / "srv/data") == []
    assert stat.S_IMODE(cfs.view.lstat("/srv/data").st.st_mode) == 0o700
    assert [e.path for e in cfs.view.listdir("/srv/data")] == [
        "/srv/data/a.txt",
        "/srv/data/hard",
        "/srv/data/link",
        "/srv/data/sub",
    ]


def test_chmod_follows_a_symlink_and_refuses_missing_paths(cfs: ContainerFS) -> None:
    cfs.write_file("/srv/mine", b"m")
    cfs.chmod("/srv/mine", 0o600)
    assert stat.S_IMODE(cfs.view.lstat("/srv/mine").st.st_mode) == 0o600
    cfs.chmod("/srv/data/link", 0o604)
    assert stat.S_IMODE(cfs.view.lstat("/srv/data/a.txt").st.st_mode) == 0o604
    assert cfs.view.lstat("/srv/data/link").kind == "symlink"
    for missing in ("/nope", "/dangling", "/etc/nope"):
        with pytest.raises(PathNotFound):
            cfs.chmod(missing, 0o644)
    with pytest.raises(ContainerPathError, match="invalid mode"):
        cfs.chmod("/etc/passwd", 0o10644)


# -- rename --------------------------------------------------------------------------------------


def test_rename_a_lower_file(cfs: ContainerFS, image: Image, upper: Path) -> None:
    before = image.lower_view().lstat("/etc/passwd")
    cfs.rename("/etc/passwd", "/etc/passwd.old")
    moved = cfs.view.lstat("/etc/passwd.old")
    assert cfs.view.read_bytes("/etc/passwd.old").startswith(b"root:")
    assert (moved.st.st_mode, moved.st.st_mtime_ns) == (before.st.st_mode, before.st.st_mtime_ns)
    assert not cfs.view.exists("/etc/passwd")
    assert whiteouts_in(image.fmt, upper / "etc") == {"passwd"}


def test_rename_an_upper_file_moves_it(cfs: ContainerFS, image: Image, upper: Path) -> None:
    cfs.write_file("/srv/one", b"1")
    inode = os.lstat(upper / "srv/one").st_ino
    cfs.rename("/srv/one", "/srv/two")
    assert os.lstat(upper / "srv/two").st_ino == inode
    assert os.listdir(upper / "srv") == ["two"]
    cfs.write_file("/etc/motd", b"changed")
    cfs.rename("/etc/motd", "/etc/motd2")
    assert whiteouts_in(image.fmt, upper / "etc") == {"motd"}
    assert cfs.view.read_bytes("/etc/motd2") == b"changed"


def test_rename_a_lower_directory_copies_the_merged_tree(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.write_file("/srv/data/new.txt", b"new")
    cfs.remove("/srv/data/sub/b.txt")

    def tree(root: str) -> dict[str, tuple[Any, ...]]:
        entries = [cfs.view.lstat(root), *cfs.view.walk(root)]
        return {
            e.path.replace(root, "", 1): (*_node(e.st, e.host_path), e.st.st_mtime_ns)
            for e in entries
        }

    expected = tree("/srv/data")  # contents, modes, owners and mtimes, as mv keeps them
    cfs.rename("/srv/data", "/srv/moved")
    assert tree("/srv/moved") == expected
    assert not cfs.view.exists("/srv/data")
    assert whiteouts_in(image.fmt, upper / "srv") == {"data"}
    moved = upper / "srv/moved"
    assert os.lstat(moved / "a.txt").st_ino == os.lstat(moved / "hard").st_ino


def test_rename_a_directory_onto_a_deleted_one_is_opaque(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.remove("/var/log", recursive=True)
    cfs.rename("/opt/app", "/var/log")
    assert image.fmt.is_opaque(upper / "var/log")
    assert [e.path for e in cfs.view.walk("/var")] == ["/var/log", "/var/log/new.conf"]


def test_rename_symlinks_and_through_symlinks(cfs: ContainerFS, upper: Path) -> None:
    cfs.rename("/lib", "/lib64")
    assert cfs.view.readlink("/lib64") == "usr/lib"
    assert not cfs.view.exists("/lib")
    cfs.rename("/lib64/libc.so", "/lib64/libc.so.6")
    assert (upper / "usr/lib/libc.so.6").read_bytes() == b"libc"


def test_rename_refuses(cfs: ContainerFS, image: Image) -> None:
    with pytest.raises(ContainerPathError, match="exists"):
        cfs.rename("/etc/motd", "/etc/passwd")
    with pytest.raises(ContainerPathError, match="exists"):
        cfs.rename("/etc/motd", "/srv/data")
    with pytest.raises(ContainerPathError, match="no such directory"):
        cfs.rename("/etc/motd", "/nope/motd")
    with pytest.raises(ContainerPathError, match="into itself"):
        cfs.rename("/srv", "/srv/data/srv")
    with pytest.raises(ContainerPathError):
        cfs.rename("/", "/root")
    with pytest.raises(ContainerPathError):
        cfs.rename("/etc/motd", "/")
    with pytest.raises(PathNotFound):
        cfs.rename("/nope", "/nope2")
    with pytest.raises(PathNotFound):
        cfs.rename("/var/log/syslog", "/var/log/syslog.1")
    with pytest.raises(InvalidPath):
        cfs.rename("/etc/motd", "/etc/.wh.motd")
    assert describe(cfs.view) == describe(image.lower_view())


# -- symlink -------------------------------------------------------------------------------------


def test_symlink(cfs: ContainerFS, upper: Path) -> None:
    cfs.symlink("/srv/to-etc", "/etc")
    assert cfs.view.readlink("/srv/to-etc") == "/etc"
    cfs.symlink("/etc/motd", "hostname")  # replaces a lower file
    assert cfs.view.readlink("/etc/motd") == "hostname"
    cfs.symlink("/srv/dangling", "../no/such/place")
    assert cfs.view.readlink("/srv/dangling") == "../no/such/place"
    with pytest.raises(ContainerPathError, match="is a directory"):
        cfs.symlink("/srv/data", "x")
    with pytest.raises(ContainerPathError, match="no such directory"):
        cfs.symlink("/nope/link", "x")
    with pytest.raises(InvalidPath):
        cfs.symlink("/srv/empty-target", "")


# -- what never changes --------------------------------------------------------------------------


def test_lower_snapshots_are_never_modified(cfs: ContainerFS, image: Image) -> None:
    before = lower_state(image)
    long_sequence(cfs)
    for path in ("/etc/hostname", "/home/user/notes.txt", "/srv/moved", "/usr/lib/libc.so"):
        cfs.chmod(path, 0o700)
    cfs.remove("/usr", recursive=True)
    cfs.rename("/home", "/home2")
    cfs.remove("/home2", recursive=True)
    assert lower_state(image) == before


# -- docker diff ---------------------------------------------------------------------------------


def test_container_changes_after_a_realistic_sequence(
    cfs: ContainerFS, image: Image, upper: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfs.write_file("/etc/hostname", b"box\n")
    cfs.mkdir("/etc/app", mode=0o750)
    cfs.write_file("/etc/app/app.conf", b"x=1\n")
    cfs.remove("/etc/motd")
    cfs.remove("/var/log", recursive=True)
    cfs.mkdir("/var/log")
    cfs.write_file("/var/log/fresh.log", b"new\n")
    cfs.chmod("/usr/bin/tool", 0o700)
    cfs.rename("/srv/data", "/srv/moved")
    cfs.write_file("/lib/libzz.so", b"zz")
    cfs.write_file("/tmp/scratch", b"t")
    cfs.remove("/tmp/scratch")
    lower = image.lower_view()

    def no_walks(*args: object) -> None:
        raise AssertionError("container_changes must not walk the image")

    monkeypatch.setattr(lower, "walk", no_walks)
    changes = container_changes(upper, image.fmt, lower)
    assert [str(c) for c in changes] == [
        "C /etc",
        "A /etc/app",
        "A /etc/app/app.conf",
        "C /etc/hostname",
        "D /etc/motd",
        "C /srv",
        "D /srv/data",
        "A /srv/moved",
        "A /srv/moved/a.txt",
        "A /srv/moved/hard",
        "A /srv/moved/link",
        "A /srv/moved/sub",
        "A /srv/moved/sub/b.txt",
        "C /tmp",
        "C /usr",
        "C /usr/bin",
        "C /usr/bin/tool",
        "C /usr/lib",
        "A /usr/lib/libzz.so",
        "C /var",
        "C /var/log",
        "D /var/log/apt",  # the opaque directory hides it; syslog was already gone below
        "A /var/log/fresh.log",
    ]
    assert changes[0] == Change("C", "/etc")
    without_image = container_changes(upper, image.fmt, None)
    assert {c.path: c.kind for c in without_image} == {
        c.path: ("D" if c.kind == "D" else "A")
        for c in changes
        if c.path != "/var/log/apt"  # an opaque directory's lost children need the image
    }


def test_container_changes_of_an_opaque_directory_refilled(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    cfs.remove("/srv/data", recursive=True)
    cfs.mkdir("/srv/data")
    cfs.write_file("/srv/data/a.txt", b"again")
    cfs.symlink("/srv/data/link", "b")
    changes = container_changes(upper, image.fmt, image.lower_view())
    assert [str(c) for c in changes] == [
        "C /srv",
        "C /srv/data",
        "C /srv/data/a.txt",
        "D /srv/data/hard",
        "C /srv/data/link",
        "D /srv/data/sub",
    ]


# -- commit round trip ---------------------------------------------------------------------------


def test_committed_upper_unpacks_to_the_container_view(
    cfs: ContainerFS, image: Image, upper: Path
) -> None:
    long_sequence(cfs)
    layer = diff_to_store(upper, image.fmt, image.store.blobs)
    chain = chain_ids([*image.diff_ids, layer.diff_id])[-1]
    with image.store.blobs.open(layer.digest) as f:
        top = image.store.snapshots.unpack(chain, f, diff_id=layer.diff_id)
    committed = UnionView([*image.lowers, top.path], image.fmt)
    assert describe(committed) == describe(cfs.view)
    assert describe(cfs.view) != describe(image.lower_view())
    # the same changes listed from the upper directory and from the committed snapshot
    assert container_changes(top.path, image.fmt, image.lower_view()) == container_changes(
        upper, image.fmt, image.lower_view()
    )


# -- the kernel's overlayfs as the reference -----------------------------------------------------

KERNEL_SCRIPT = """
umask 022
printf 'kernel\\n' > etc/hostname
mkdir -m 750 etc/app
printf 'x=1\\n' > etc/app/app.conf
rm etc/motd
rm -r var/log
mkdir var/log
printf 'new\\n' > var/log/fresh.log
chmod 4750 usr/bin/tool
chmod 700 srv/data/sub
chmod 620 run/initctl
printf n > srv/data/new.txt
rm srv/data/sub/b.txt
mv srv/data srv/moved
mv etc/passwd etc/passwd.old
printf zz > lib/libzz.so
ln -s ../usr/lib/libc.so etc/libc-link
printf t > tmp/scratch
rm tmp/scratch
rmdir empty
mkdir -p srv/new/deep
mv opt/app opt/app2
mkdir opt/app
rm etclink
printf f > etclink
mv lib lib64
rm -r opt/app2
mkdir -m 711 opt/app2
"""


def kernel_sequence(c: ContainerFS) -> None:
    """What KERNEL_SCRIPT does, through ContainerFS."""
    c.write_file("/etc/hostname", b"kernel\n")
    c.mkdir("/etc/app", mode=0o750)
    c.write_file("/etc/app/app.conf", b"x=1\n")
    c.remove("/etc/motd")
    c.remove("/var/log", recursive=True)
    c.mkdir("/var/log")
    c.write_file("/var/log/fresh.log", b"new\n")
    c.chmod("/usr/bin/tool", 0o4750)
    c.chmod("/srv/data/sub", 0o700)
    c.chmod("/run/initctl", 0o620)
    c.write_file("/srv/data/new.txt", b"n")
    c.remove("/srv/data/sub/b.txt")
    c.rename("/srv/data", "/srv/moved")
    c.rename("/etc/passwd", "/etc/passwd.old")
    c.write_file("/lib/libzz.so", b"zz")
    c.symlink("/etc/libc-link", "../usr/lib/libc.so")
    c.write_file("/tmp/scratch", b"t")
    c.remove("/tmp/scratch")
    c.remove("/empty")
    c.mkdir("/srv/new/deep", parents=True)
    c.rename("/opt/app", "/opt/app2")
    c.mkdir("/opt/app")
    c.write_file("/etclink", b"f")
    c.rename("/lib", "/lib64")
    c.remove("/opt/app2", recursive=True)
    c.mkdir("/opt/app2", mode=0o711)


@pytest.fixture
def overlay_mount(tmp_path: Path) -> Iterator[Callable[[list[Path], Path], Path]]:
    """Mounts lowers (bottom first) under a writable upper directory; unmounted after."""
    mounted: list[Path] = []

    def mount(lowers: list[Path], upper: Path) -> Path:
        merged, work = tmp_path / "merged", tmp_path / "work"
        for d in (merged, work, upper):
            d.mkdir(parents=True, exist_ok=True)
        lowerdir = ":".join(str(p) for p in reversed(lowers))
        # no redirect_dir: renaming a lower directory is EXDEV and mv copies, as ContainerFS;
        # no metacopy: chmod copies the whole file up, so the upper directory is a full layer
        options = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
        options += ",redirect_dir=off,metacopy=off,index=off"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            skip_or_fail(f"the kernel refused an overlay mount: {proc.stderr.strip()}")
        mounted.append(merged)
        return merged

    yield mount
    for merged in mounted:
        subprocess.run(["umount", str(merged)], check=False, capture_output=True)


def test_kernel_overlayfs_agrees(
    tmp_path: Path, kit: Kit, overlay_mount: Callable[[list[Path], Path], Path]
) -> None:
    require_root("mounting overlayfs")
    require(overlay_supported(tmp_path), "this filesystem cannot hold overlay whiteouts")
    image = build_image(Store(tmp_path / "store", whiteouts="overlay"), kit)
    before = lower_state(image)
    kernel_upper = tmp_path / "kernel-upper"
    merged = overlay_mount(image.lowers, kernel_upper)
    cfs = ContainerFS(tmp_path / "box" / "upper", image.lowers, image.fmt)
    proc = subprocess.run(["sh", "-exc", KERNEL_SCRIPT], cwd=merged, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    kernel_sequence(cfs)
    kernel = describe_dir(merged)
    assert describe(cfs.view) == kernel
    assert describe(UnionView([*image.lowers, kernel_upper], image.fmt)) == kernel
    lower = image.lower_view()
    ours = container_changes(cfs.upper, image.fmt, lower)
    assert container_changes(kernel_upper, image.fmt, lower) == ours
    assert Change("D", "/srv/data") in ours
    assert Change("A", "/opt/app2") in ours
    assert Change("C", "/opt/app") in ours
    assert lower_state(image) == before
