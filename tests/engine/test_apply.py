"""Applying one layer tar: every entry type and attribute, every tar dialect, whiteouts.

Layers come from Python's tarfile (ustar, GNU, PAX) and from GNU tar run on a directory; the
expected tree is what the test wrote, never what the engine reports.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from layerhub.engine.apply import ApplyResult, apply_layer
from layerhub.engine.errors import UnsupportedCompression
from layerhub.engine.union import UnionView
from layerhub.engine.whiteouts import WhiteoutFormat, format_named

pytestmark = pytest.mark.usefixtures("writes")

if TYPE_CHECKING:
    from layerhub.engine.store import Store
    from tests.engine.layerkit import Kit

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="ownership and device nodes need root")
OCI = format_named("oci")
T = 1_600_000_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def apply(data: bytes, dest: Path, fmt: WhiteoutFormat = OCI, **kw: object) -> ApplyResult:
    dest.mkdir(exist_ok=True)
    return apply_layer(io.BytesIO(data), dest, whiteouts=fmt, **kw)  # type: ignore[arg-type]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- entry types and attributes ---------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("tar_format", ["ustar", "gnu", "pax"])
def test_every_entry_type(tmp_path: Path, kit: Kit, tar_format: str) -> None:
    content = b"hello, layer\n" * 100
    layer = kit.tar(
        [
            kit.dir("d"),
            kit.file("d/file", content, mode=0o640),
            kit.symlink("d/sym", "file"),
            kit.symlink("d/dangling", "/no/such/target"),
            kit.hardlink("d/hard", "d/file"),
            kit.fifo("d/pipe", mode=0o620),
            kit.char("d/null", 1, 3, mode=0o666),
            kit.block("d/loop", 7, 200, mode=0o660),
            kit.file("d/empty", b""),
        ],
        tar_format,
    )
    dest = tmp_path / "layer"
    result = apply(layer, dest)
    d = dest / "d"
    assert kit.node(d / "file").content == content
    assert mode_of(d / "file") == 0o640
    assert os.readlink(d / "sym") == "file"
    assert os.readlink(d / "dangling") == "/no/such/target"
    file_st, hard_st = os.lstat(d / "file"), os.lstat(d / "hard")
    assert (file_st.st_ino, file_st.st_nlink) == (hard_st.st_ino, 2)
    assert stat.S_ISFIFO(os.lstat(d / "pipe").st_mode)
    assert mode_of(d / "pipe") == 0o620
    null = os.lstat(d / "null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = os.lstat(d / "loop")
    assert stat.S_ISBLK(loop.st_mode)
    assert (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 200)
    assert (d / "empty").read_bytes() == b""
    assert sorted(os.listdir(d)) == sorted(
        ["file", "sym", "dangling", "hard", "pipe", "null", "loop", "empty"]
    )
    assert result.diff_id == sha(layer)
    assert result.tar_size == len(layer)
    assert result.unpacked_size == len(content)  # the hardlink adds no content
    assert result.entry_count == 9
    assert result.file_count == 8  # all but the directory
    assert result.compression == "none"


def test_modes_including_special_bits_and_read_only_dirs(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("bin", mode=0o555),  # read-only, yet its children are written
            kit.file("bin/su", b"#!", mode=0o4755),
            kit.file("bin/wall", b"#!", mode=0o2755),
            kit.file("bin/both", b"#!", mode=0o6711),
            kit.dir("bin/sub", mode=0o500),
            kit.file("bin/sub/deep", b"x", mode=0o400),
            kit.dir("tmp", mode=0o1777),
            kit.dir("shared", mode=0o2775),
            kit.file("secret", b"s", mode=0o000),
            kit.file("exec", b"e", mode=0o777),
        ]
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    expected = {
        "bin": 0o555,
        "bin/su": 0o4755,
        "bin/wall": 0o2755,
        "bin/both": 0o6711,
        "bin/sub": 0o500,
        "bin/sub/deep": 0o400,
        "tmp": 0o1777,
        "shared": 0o2775,
        "secret": 0o000,
        "exec": 0o777,
    }
    assert {path: mode_of(dest / path) for path in expected} == expected
    assert (dest / "bin/sub/deep").read_bytes() == b"x"


def test_mtimes_of_files_dirs_symlinks_and_fifos(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("a", mtime=T + 1),
            kit.dir("a/b", mtime=T + 2),
            kit.file("a/b/f", b"data", mtime=T + 3),  # written after a/b: must not bump it
            kit.symlink("a/link", "b/f", mtime=T + 4),
            kit.fifo("a/pipe", mtime=T + 5),
            kit.file("a/late", b"written last into a", mtime=T + 6),
        ]
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    mtimes = {p: os.lstat(dest / p).st_mtime_ns for p in ["a", "a/b", "a/b/f", "a/link", "a/pipe"]}
    assert mtimes == {
        "a": (T + 1) * 10**9,
        "a/b": (T + 2) * 10**9,
        "a/b/f": (T + 3) * 10**9,
        "a/link": (T + 4) * 10**9,
        "a/pipe": (T + 5) * 10**9,
    }


def test_pax_sub_second_mtimes(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar([kit.dir("d", mtime=T + 0.25), kit.file("d/f", b"x", mtime=T + 0.5)], "pax")
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert os.lstat(dest / "d/f").st_mtime_ns == T * 10**9 + 500_000_000
    assert os.lstat(dest / "d").st_mtime_ns == T * 10**9 + 250_000_000


@needs_root
@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_ownership_is_applied_as_root(tmp_path: Path, kit: Kit, tar_format: str) -> None:
    big = 3_000_000  # past the 7 octal digits of ustar: GNU base-256 or a PAX record
    layer = kit.tar(
        [
            kit.dir("home", uid=1000, gid=1000),
            kit.dir("home/user", uid=1234, gid=5678, mode=0o700),
            kit.file("home/user/f", b"x", uid=1234, gid=5678),
            kit.symlink("home/user/l", "f", uid=4321, gid=8765),
            kit.fifo("home/user/p", uid=99, gid=98),
            kit.char("home/user/c", 1, 3, uid=7, gid=8),
            kit.file("home/user/big", b"x", uid=big, gid=big + 1),
        ],
        tar_format,
    )
    dest = tmp_path / "layer"
    apply(layer, dest, privileged=True)
    owners = {
        p: (os.lstat(dest / p).st_uid, os.lstat(dest / p).st_gid)
        for p in ["home", "home/user", "home/user/f", "home/user/l", "home/user/p"]
    }
    assert owners == {
        "home": (1000, 1000),
        "home/user": (1234, 5678),
        "home/user/f": (1234, 5678),
        "home/user/l": (4321, 8765),
        "home/user/p": (99, 98),
    }
    c = os.lstat(dest / "home/user/c")
    assert (c.st_uid, c.st_gid) == (7, 8)
    b = os.lstat(dest / "home/user/big")
    assert (b.st_uid, b.st_gid) == (big, big + 1)
    assert mode_of(dest / "home/user") == 0o700


def test_unprivileged_apply_keeps_our_own_ownership(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar([kit.dir("d", uid=1234, gid=5678), kit.file("d/f", b"x", uid=1234, gid=5678)])
    dest = tmp_path / "layer"
    apply(layer, dest, privileged=False)
    me = (os.geteuid(), os.getegid())
    for p in ["d", "d/f"]:
        st = os.lstat(dest / p)
        assert (st.st_uid, st.st_gid) == me


def test_fifo_needs_no_privilege(tmp_path: Path, kit: Kit) -> None:
    dest = tmp_path / "layer"
    apply(kit.tar([kit.fifo("p")]), dest, privileged=False)
    assert stat.S_ISFIFO(os.lstat(dest / "p").st_mode)


def test_pax_xattrs(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("d", pax={"SCHILY.xattr.user.dir": "on a dir"}),
            kit.file(
                "d/f",
                b"x",
                pax={"SCHILY.xattr.user.comment": "hello", "SCHILY.xattr.user.empty": ""},
            ),
        ],
        "pax",
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert os.getxattr(dest / "d", "user.dir") == b"on a dir"
    assert os.getxattr(dest / "d/f", "user.comment") == b"hello"
    assert os.getxattr(dest / "d/f", "user.empty") == b""


@needs_root
def test_overlay_xattrs_in_a_tar_are_never_applied(
    tmp_path: Path, kit: Kit, whiteout_form: str, fmt: WhiteoutFormat
) -> None:
    """A layer must not forge overlayfs metadata (an opaque dir) through xattrs."""
    layer = kit.tar(
        [
            kit.dir(
                "d",
                pax={
                    "SCHILY.xattr.trusted.overlay.opaque": "y",
                    "SCHILY.xattr.user.overlay.opaque": "y",
                    "SCHILY.xattr.user.kept": "1",
                },
            ),
        ],
        "pax",
    )
    dest = tmp_path / "layer"
    apply(layer, dest, fmt)
    names = os.listxattr(dest / "d")
    assert "user.kept" in names
    assert "trusted.overlay.opaque" not in names
    assert "user.overlay.opaque" not in names
    assert not fmt.is_opaque(dest / "d")


# -- names ------------------------------------------------------------------------------------

LONG_DIR = "d" * 90 + "/" + "e" * 90
LONG_NAME = f"{LONG_DIR}/" + "f" * 120  # over 100 (name field) and 255 (ustar prefix + name)
LONG_TARGET = "../" * 5 + "t" * 150


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_long_names_and_link_targets(tmp_path: Path, kit: Kit, tar_format: str) -> None:
    assert len(LONG_NAME) > 255
    layer = kit.tar(
        [
            kit.dir("d" * 90),
            kit.dir(LONG_DIR),
            kit.file(LONG_NAME, b"long"),
            kit.symlink(f"{LONG_DIR}/s", LONG_TARGET),
            kit.hardlink(f"{LONG_DIR}/h", LONG_NAME),
        ],
        tar_format,
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert (dest / LONG_NAME).read_bytes() == b"long"
    assert os.readlink(dest / LONG_DIR / "s") == LONG_TARGET
    assert os.lstat(dest / LONG_DIR / "h").st_ino == os.lstat(dest / LONG_NAME).st_ino


def test_ustar_prefix_field(tmp_path: Path, kit: Kit) -> None:
    name = "p" * 120 + "/" + "n" * 90  # split by tarfile into the 155-byte prefix and the name
    layer = kit.tar([kit.file(name, b"prefixed")], "ustar")
    assert layer[345:350] == b"ppppp"  # really in the prefix field
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert (dest / name).read_bytes() == b"prefixed"


NON_ASCII = ["café", "naïve-日本語.txt", "Ωmega", "emoji-🐳"]


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_non_ascii_names(tmp_path: Path, kit: Kit, tar_format: str) -> None:
    layer = kit.tar(
        [
            kit.dir(NON_ASCII[0]),
            kit.file(f"{NON_ASCII[0]}/{NON_ASCII[1]}", "日本".encode()),
            kit.symlink(f"{NON_ASCII[0]}/{NON_ASCII[2]}", NON_ASCII[1]),
            kit.file(NON_ASCII[3], b"whale"),
        ],
        tar_format,
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert sorted(os.listdir(dest)) == sorted([NON_ASCII[0], NON_ASCII[3]])
    assert sorted(os.listdir(dest / NON_ASCII[0])) == sorted(NON_ASCII[1:3])
    assert (dest / NON_ASCII[0] / NON_ASCII[1]).read_bytes() == "日本".encode()
    assert os.readlink(dest / NON_ASCII[0] / NON_ASCII[2]) == NON_ASCII[1]


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_names_that_are_not_utf8_are_kept_byte_for_byte(
    tmp_path: Path, kit: Kit, tar_format: str
) -> None:
    src = kit.scratch("latin1")
    os.mkdir(os.path.join(bytes(src), b"r\xe9pertoire"))
    with open(os.path.join(bytes(src), b"r\xe9pertoire", b"caf\xe9"), "wb") as f:
        f.write(b"latin-1 name")
    dest = tmp_path / "layer"
    apply(kit.gnu_tar(src, tar_format), dest)
    assert os.listdir(bytes(dest)) == [b"r\xe9pertoire"]
    assert os.listdir(os.path.join(bytes(dest), b"r\xe9pertoire")) == [b"caf\xe9"]


# -- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compression_is_detected_from_the_bytes(tmp_path: Path, kit: Kit, compression: str) -> None:
    plain = kit.tar([kit.dir("etc"), kit.file("etc/os-release", b"ID=test\n" * 1000)])
    data = {"none": plain, "gzip": kit.gzip(plain), "zstd": kit.zstd(plain)}[compression]
    # a misleading file name changes nothing: only the magic number counts
    misleading = tmp_path / "layer.tar.bz2"
    misleading.write_bytes(data)
    dest = tmp_path / "layer"
    dest.mkdir()
    with open(misleading, "rb") as stream:
        result = apply_layer(stream, dest, whiteouts=OCI)
    assert result.compression == compression
    assert result.diff_id == sha(plain)  # always the uncompressed tar's digest
    assert result.tar_size == len(plain)
    assert (dest / "etc/os-release").read_bytes() == b"ID=test\n" * 1000


def test_zstd_with_several_frames(tmp_path: Path, kit: Kit) -> None:
    plain = kit.tar([kit.file(f"f{i}", bytes([i]) * 3000) for i in range(5)])
    cut = len(plain) // 2
    data = kit.zstd(plain[:cut]) + kit.zstd(plain[cut:])
    result = apply(data, tmp_path / "layer")
    assert (result.compression, result.diff_id) == ("zstd", sha(plain))
    assert (tmp_path / "layer" / "f4").read_bytes() == b"\x04" * 3000


@pytest.mark.parametrize("compression", ["bzip2", "xz", "lz4"])
def test_other_compressions_are_refused(
    tmp_path: Path, kit: Kit, store: Store, compression: str
) -> None:
    plain = kit.tar([kit.file("f", b"x")])
    data = {
        "bzip2": kit.bzip2(plain),
        "xz": kit.xz(plain),
        "lz4": b"\x04\x22\x4d\x18" + bytes(100),  # the lz4 frame magic
    }[compression]
    dest = tmp_path / "layer"
    with pytest.raises(UnsupportedCompression, match=compression):
        apply(data, dest)
    assert os.listdir(dest) == []
    with pytest.raises(UnsupportedCompression):
        store.snapshots.unpack(sha(plain), io.BytesIO(data))
    assert not store.snapshots.exists(sha(plain))
    assert os.listdir(store.tmp) == []


def test_diff_id_covers_the_whole_uncompressed_stream(tmp_path: Path, kit: Kit) -> None:
    content = b"abc" * 1000
    plain = kit.tar([kit.file("a", content), kit.hardlink("b", "a"), kit.symlink("c", "a")])
    padded = plain + bytes(8192)  # more zero blocks after the end: part of the DiffID
    result = apply(kit.gzip(padded), tmp_path / "layer")
    assert result.diff_id == sha(padded) != sha(plain)
    assert result.tar_size == len(padded)
    assert result.unpacked_size == len(content)  # the hardlink adds no content
    assert result.entry_count == 3
    assert result.file_count == 3


# -- GNU tar ----------------------------------------------------------------------------------


def make_source_tree(root: Path) -> None:
    """A directory with one of everything GNU tar can archive in a layer."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir()
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    os.symlink("usr/lib", root / "lib")
    os.symlink("../lib/libx.so.1", root / "usr/lib/libx.so")
    (root / "usr/lib/libx.so.1").write_bytes(b"lib")
    os.mkfifo(root / "fifo", 0o640)
    long_dir = root / ("x" * 80) / ("y" * 80)
    long_dir.mkdir(parents=True)
    (long_dir / ("z" * 110)).write_bytes(b"long name")
    (root / "données").mkdir()
    (root / "données/日本語.txt").write_text("texte")
    (root / "ro").mkdir()
    (root / "ro/inside").write_bytes(b"read-only parent")
    os.chmod(root / "ro", 0o555)
    os.chmod(root / "usr", 0o750)
    os.setxattr(root / "usr/lib/libx.so.1", "user.origin", b"builder")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (T, T), follow_symlinks=False)
    os.chmod(root, 0o751)
    os.utime(root, (T, T))


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_gnu_tar_layers(tmp_path: Path, kit: Kit, tar_format: str) -> None:
    src = kit.scratch("src")
    make_source_tree(src)
    extra = ("--xattrs",) if tar_format == "posix" else ()
    layer = kit.gnu_tar(src, tar_format, *extra)
    dest = tmp_path / "layer"
    result = apply(layer, dest)
    assert kit.tree(dest) == kit.tree(src)
    assert mode_of(dest) == 0o751  # GNU tar's "./" entry describes the layer's root
    for path in kit.tree(src):
        assert os.lstat(dest / path).st_mtime == T, path
    assert os.lstat(dest / "usr/bin/tool").st_ino == os.lstat(dest / "usr/bin/tool-alias").st_ino
    if tar_format == "posix":
        assert os.getxattr(dest / "usr/lib/libx.so.1", "user.origin") == b"builder"
    assert result.diff_id == sha(layer)


# -- whiteouts ----------------------------------------------------------------------------------


def test_whiteouts_in_the_store_form(
    tmp_path: Path, kit: Kit, whiteout_form: str, fmt: WhiteoutFormat
) -> None:
    layer = kit.tar(
        [
            kit.dir("etc"),
            kit.whiteout("etc/passwd"),
            kit.dir("opt"),
            kit.opaque("opt"),
            kit.file("opt/new", b"new"),
            kit.whiteout("gone-dir"),
        ]
    )
    dest = tmp_path / "layer"
    result = apply(layer, dest, fmt)
    assert result.entry_count == 3  # whiteouts are not entries
    assert (dest / "opt/new").read_bytes() == b"new"
    if whiteout_form == "oci":
        for marker in ["etc/.wh.passwd", ".wh.gone-dir", "opt/.wh..wh..opq"]:
            st = os.lstat(dest / marker)
            assert stat.S_ISREG(st.st_mode), marker
            assert st.st_size == 0, marker
        assert not (dest / "etc/passwd").exists()
        assert not (dest / "gone-dir").exists()
        assert "trusted.overlay.opaque" not in os.listxattr(dest / "opt")
    else:
        for deleted in ["etc/passwd", "gone-dir"]:
            st = os.lstat(dest / deleted)
            assert stat.S_ISCHR(st.st_mode), deleted
            assert st.st_rdev == os.makedev(0, 0), deleted
        assert os.getxattr(dest / "opt", "trusted.overlay.opaque") == b"y"
        names = [n for _, dirs, files in os.walk(dest) for n in dirs + files]
        assert not [n for n in names if n.startswith(".wh.")]
    assert sorted(os.listdir(dest / "opt")) == (
        [".wh..wh..opq", "new"] if whiteout_form == "oci" else ["new"]
    )


def test_a_directory_recreated_after_its_whiteout_hides_the_lower_one(
    store: Store, kit: Kit
) -> None:
    lower = kit.tar([kit.dir("d"), kit.file("d/old", b"old"), kit.file("d/old2", b"old2")])
    upper = kit.tar([kit.whiteout("d"), kit.dir("d"), kit.file("d/new", b"new")])
    view = UnionView(kit.stack(store, [lower, upper]), store.whiteouts)
    assert [e.path for e in view.walk("/")] == ["/d", "/d/new"]


def test_a_whiteout_after_a_directory_of_its_own_layer(store: Store, kit: Kit) -> None:
    """``d/`` then ``.wh.d`` in one layer: the lower ``d`` is hidden, and the layer applies.

    Docker removes what the same layer wrote before the whiteout (nothing is left); the OCI
    spec says a whiteout only hides lower layers (``d/tmp`` stays). Either is a valid reading,
    but the lower ``d/old`` must be gone, and the unpack must not fail.
    """
    lower = kit.tar([kit.dir("d"), kit.file("d/old", b"old")])
    upper = kit.tar([kit.dir("d"), kit.file("d/tmp", b"t"), kit.whiteout("d")])
    view = UnionView(kit.stack(store, [lower, upper]), store.whiteouts)
    assert [e.path for e in view.walk("/")] in ([], ["/d", "/d/tmp"])


def test_a_later_entry_replaces_an_earlier_one(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.file("f", b"first", mode=0o600),
            kit.file("f", b"second", mode=0o640),
            kit.symlink("s", "one"),
            kit.symlink("s", "two"),
            kit.file("to-dir", b"file"),
            kit.dir("to-dir", mode=0o711),
            kit.file("to-dir/child", b"c"),
        ]
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert (dest / "f").read_bytes() == b"second"
    assert mode_of(dest / "f") == 0o640
    assert os.readlink(dest / "s") == "two"
    assert mode_of(dest / "to-dir") == 0o711
    assert (dest / "to-dir/child").read_bytes() == b"c"


def test_a_directory_replaced_by_a_file_keeps_the_files_metadata(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("d", mode=0o755, mtime=T + 100),
            kit.file("d/child", b"c"),
            kit.file("d", b"now a file", mode=0o600, mtime=T + 7),
        ]
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert (dest / "d").read_bytes() == b"now a file"
    assert mode_of(dest / "d") == 0o600
    assert os.lstat(dest / "d").st_mtime == T + 7


# -- symlinks inside the layer ------------------------------------------------------------------


def test_symlinks_inside_the_layer_are_written_through(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("usr"),
            kit.dir("usr/lib"),
            kit.dir("usr/bin"),
            kit.symlink("lib", "usr/lib"),
            kit.file("lib/x", b"via lib"),
            kit.symlink("usr/bin/up", "../lib"),
            kit.file("usr/bin/up/y", b"via up"),
            kit.symlink("a", "b"),
            kit.symlink("b", "./usr/./"),
            kit.file("a/lib/z", b"via a chain"),
            kit.symlink("here", "."),
            kit.file("here/here/top", b"via dot"),
        ]
    )
    dest = tmp_path / "layer"
    apply(layer, dest)
    assert (dest / "usr/lib/x").read_bytes() == b"via lib"
    assert (dest / "usr/lib/y").read_bytes() == b"via up"
    assert (dest / "usr/lib/z").read_bytes() == b"via a chain"
    assert (dest / "top").read_bytes() == b"via dot"
    for link in ["lib", "usr/bin/up", "a", "b", "here"]:
        assert os.path.islink(dest / link), link
    assert sorted(os.listdir(dest / "usr/lib")) == ["x", "y", "z"]
