"""Layers every other tar reader agrees on, and hostile numbers and names: read as Go's
archive/tar and GNU tar read them, or refused with a typed error that leaves nothing behind.

Headers that tarfile will not write are built field by field with ``RawTar``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from layerhub.engine import apply as apply_module
from layerhub.engine import fswriter
from layerhub.engine.apply import ApplyLimits, ApplyResult, apply_layer
from layerhub.engine.errors import (
    CorruptArchive,
    HardlinkEscape,
    LayerError,
    StoreFull,
)
from layerhub.engine.whiteouts import format_named
from tests.engine.layerkit import RawTar as R

pytestmark = pytest.mark.usefixtures("writes")

if TYPE_CHECKING:
    from layerhub.engine.store import Store
    from tests.engine.layerkit import Kit

OCI = format_named("oci")
ROOT = os.geteuid() == 0


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def apply(data: bytes, dest: Path, **kw: Any) -> ApplyResult:
    dest.mkdir(exist_ok=True)
    return apply_layer(io.BytesIO(data), dest, whiteouts=OCI, **kw)


def files(root: Path) -> dict[str, str | bytes]:
    """Every path below ``root``: a file's bytes, ``dir``, or ``-> target`` for a symlink."""
    out: dict[str, str | bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out


def assert_nothing_kept(store: Store) -> None:
    assert os.listdir(store.root / "snapshots") == [], "a snapshot was left behind"
    assert os.listdir(store.tmp) == [], "tmp/ was left dirty"


# -- 1. the type comes from the full name ------------------------------------------------------

SMUGGLED = R.entry("etc/passwd", b"0", b"root::0:0:evil\n") + R.END


@pytest.mark.parametrize("long_name", ["pax", "gnu"])
@pytest.mark.parametrize("flag", [b"\0", b"0"])
def test_a_file_whose_ustar_name_ends_in_a_slash_is_a_file(
    tmp_path: Path, long_name: str, flag: bytes
) -> None:
    """The ustar name ``foo/`` is a decoy: the entry is ``readme.txt``, and its contents (a tar
    of their own) are a file's bytes, never more entries."""
    override = (
        R.pax({"path": "readme.txt"}) if long_name == "pax" else R.gnu_long(b"L", "readme.txt")
    )
    layer = (
        override
        + R.entry("foo/", flag, SMUGGLED)
        + R.entry("etc/passwd", b"0", b"root:x:0:0\n")
        + R.END
    )
    apply(layer, tmp_path / "out")
    assert files(tmp_path / "out") == {
        "readme.txt": SMUGGLED,
        "etc": "dir",
        "etc/passwd": b"root:x:0:0\n",
    }


@pytest.mark.parametrize("tar_format", ["gnu", "pax"])
def test_a_long_path_with_a_slash_as_its_100th_byte(
    tmp_path: Path, kit: Kit, tar_format: str
) -> None:
    name = "d" * 99 + "/" + "f" * 30
    assert name.encode()[99:100] == b"/"
    layer = kit.tar([kit.dir("d" * 99), kit.file(name, b"content")], tar_format)
    apply(layer, tmp_path / "out")
    assert (tmp_path / "out" / name).read_bytes() == b"content"


def test_the_old_type_flag_with_a_slash_is_a_directory_whose_contents_are_skipped(
    tmp_path: Path,
) -> None:
    """Go's rule: ``\\0`` and a final ``/`` make a directory, and the bytes its size field
    announces are skipped as a file's would be (GNU tar would read them as entries)."""
    layer = (
        R.pax({"path": "dir/"})
        + R.entry("decoy", b"\0", SMUGGLED)
        + R.entry("after", b"0", b"a")
        + R.END
    )
    apply(layer, tmp_path / "out")
    assert files(tmp_path / "out") == {"dir": "dir", "after": b"a"}


def test_a_regular_flag_with_a_trailing_slash_is_a_file(tmp_path: Path) -> None:
    """Go keeps type ``0`` a file whatever the name; Docker writes it at the cleaned name."""
    apply(R.entry("x/", b"0", b"hello") + R.END, tmp_path / "out")
    assert files(tmp_path / "out") == {"x": b"hello"}


def test_a_directory_size_field_is_ignored(tmp_path: Path) -> None:
    """Only files carry contents: a directory header announcing bytes is followed by the next
    header, as in Go's reader."""
    header = R.header("d", b"5", 5000)  # no contents follow
    apply(header + R.entry("d/f", b"0", b"f") + R.END, tmp_path / "out")
    assert files(tmp_path / "out") == {"d": "dir", "d/f": b"f"}


def test_a_global_pax_header_is_ignored(tmp_path: Path) -> None:
    """Docker ignores global PAX headers; GNU tar would name both files ``glob``."""
    layer = (
        R.pax({"path": "glob", "uid": "5"}, typeflag=b"g")
        + R.entry("one", b"0", b"1")
        + R.entry("two", b"0", b"2")
        + R.END
    )
    apply(layer, tmp_path / "out")
    assert files(tmp_path / "out") == {"one": b"1", "two": b"2"}


@pytest.mark.parametrize("kind", [b"L", b"K"])
def test_differing_pax_and_gnu_long_names_are_refused(tmp_path: Path, kind: bytes) -> None:
    """Go takes the GNU long name, GNU tar the PAX one: no answer both agree on."""
    key = "path" if kind == b"L" else "linkpath"
    layer = R.pax({key: "from-pax"}) + R.gnu_long(kind, "from-gnu")
    layer += R.entry("ustar", b"2", linkname="t", magic=R.GNU) + R.END
    with pytest.raises(CorruptArchive, match="two different"):
        apply(layer, tmp_path / "out")
    same = R.pax({key: "same"}) + R.gnu_long(kind, "same")
    apply(same + R.entry("ustar", b"2", linkname="t", magic=R.GNU) + R.END, tmp_path / "ok")


@pytest.mark.parametrize("flag", [b"V", b"M", b"N", b"Z"])
def test_odd_type_flags_are_refused(tmp_path: Path, flag: bytes) -> None:
    layer = R.entry("q", flag, b"") + R.entry("y", b"0", b"y") + R.END
    with pytest.raises(LayerError, match="unsupported type"):
        apply(layer, tmp_path / "out")


# -- 2. symlink resolution never goes stale ----------------------------------------------------


def test_a_replaced_symlink_is_not_followed_any_more(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("etc"),
            kit.dir("tmp"),
            kit.symlink("x", "etc"),
            kit.file("x/motd", b"motd"),
            kit.symlink("x", "tmp"),
            kit.file("x/passwd", b"passwd"),
        ]
    )
    apply(layer, tmp_path / "out")
    assert files(tmp_path / "out") == {
        "etc": "dir",
        "etc/motd": b"motd",
        "tmp": "dir",
        "tmp/passwd": b"passwd",
        "x": "-> tmp",
    }


def test_a_symlink_replaced_by_a_directory_is_not_followed(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("etc"),
            kit.symlink("x", "etc"),
            kit.file("x/a", b"a"),
            kit.dir("x"),
            kit.file("x/b", b"b"),
        ]
    )
    apply(layer, tmp_path / "out")
    assert files(tmp_path / "out") == {"etc": "dir", "etc/a": b"a", "x": "dir", "x/b": b"b"}


def test_a_symlink_removed_by_a_whiteout_is_not_followed(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("etc"),
            kit.symlink("x", "etc"),
            kit.file("x/a", b"a"),
            kit.whiteout("x"),
            kit.file("x/b", b"b"),
        ]
    )
    apply(layer, tmp_path / "out")
    tree = files(tmp_path / "out")
    assert tree["x"] == "dir"
    assert tree["x/b"] == b"b"
    assert "etc/b" not in tree


def test_a_removed_directory_is_made_again_below(tmp_path: Path, kit: Kit) -> None:
    """A cached ``d/sub`` must not outlive ``d``: the file below is written in a new ``d/sub``."""
    layer = kit.tar(
        [
            kit.dir("d", mode=0o700),
            kit.dir("d/sub", mode=0o700),
            kit.file("d/sub/a", b"a"),
            kit.file("d", b"now a file"),
            kit.file("d/sub/b", b"b"),
        ]
    )
    with pytest.raises(LayerError, match="not a directory"):
        apply(layer, tmp_path / "refused")
    layer = kit.tar(
        [
            kit.dir("d", mode=0o700),
            kit.dir("d/sub", mode=0o700),
            kit.file("d/sub/a", b"a"),
            kit.symlink("d", "e"),
            kit.dir("e"),
            kit.file("d/sub/b", b"b"),
        ]
    )
    apply(layer, tmp_path / "out")
    assert files(tmp_path / "out") == {"d": "-> e", "e": "dir", "e/sub": "dir", "e/sub/b": b"b"}
    # the removed directories' modes were not applied to the new ones
    assert (tmp_path / "out/e/sub").stat().st_mode & 0o777 == 0o755


def test_writing_through_a_dangling_symlink_is_refused(tmp_path: Path, kit: Kit) -> None:
    """GNU tar and Docker fail here; creating the target would be a third answer."""
    layer = kit.tar([kit.symlink("x", "nowhere"), kit.file("x/f", b"f")])
    with pytest.raises(LayerError, match="does not exist"):
        apply(layer, tmp_path / "out")


def test_a_hardlink_to_itself_is_refused(tmp_path: Path, kit: Kit) -> None:
    layer = kit.tar([kit.file("f", b"f"), kit.hardlink("f", "f")])
    with pytest.raises(HardlinkEscape):
        apply(layer, tmp_path / "out")


# -- 4. a layer without its end blocks ---------------------------------------------------------


def test_a_layer_ending_between_entries_unpacks(store: Store, kit: Kit) -> None:
    """What ``umoci insert`` writes: no end-of-archive blocks. The DiffID is of these bytes."""
    cut = kit.tar([kit.dir("d"), kit.file("d/f", b"x" * 700)], end=False)
    assert len(cut) % 512 == 0
    assert cut[-512:] != bytes(512)
    result = store.snapshots.unpack(sha(cut), io.BytesIO(cut), diff_id=sha(cut))
    assert result.applied is not None
    assert result.applied.diff_id == sha(cut)
    assert result.applied.tar_size == len(cut)
    assert (result.path / "d/f").read_bytes() == b"x" * 700


@pytest.mark.parametrize("cut", [512 + 100, 512 + 1024 + 100, 512 + 1024 + 512 + 300])
def test_a_layer_ending_inside_an_entry_is_refused(store: Store, kit: Kit, cut: int) -> None:
    whole = kit.tar([kit.file("f", b"x" * 1000), kit.file("g", b"y" * 1000)], end=False)
    data = whole[:cut]
    with pytest.raises(CorruptArchive):
        store.snapshots.unpack(sha(data), io.BytesIO(data), diff_id=sha(data))
    assert_nothing_kept(store)


# -- 5. hostile numbers and names ----------------------------------------------------------------


def base256(value: int, width: int) -> bytes:
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def pax_file(records: dict[str, str]) -> bytes:
    return R.pax(records) + R.entry("f", b"0", b"x") + R.END


HOSTILE: dict[str, bytes] = {
    "pax-uid-superscript-digit": pax_file({"uid": "\u00b2"}),
    "pax-uid-arabic-indic-digits": pax_file({"uid": "\u0661\u0662"}),
    "pax-gid-past-32-bits": pax_file({"gid": str(1 << 32)}),
    "pax-uid-huge": pax_file({"uid": "9" * 40}),
    "pax-size-unicode": pax_file({"size": "\u0661"}),
    "pax-size-huge": pax_file({"size": "9" * 30}),
    "pax-size-past-int64": pax_file({"size": str(1 << 63)}),
    "pax-mtime-huge": pax_file({"mtime": "9" * 19}),
    "pax-mtime-unicode": pax_file({"mtime": "\u0661\u0667\u0660\u0660"}),
    "pax-mtime-double-minus": pax_file({"mtime": "--5"}),
    "pax-length-unicode": R.header("P", b"x", 16) + R.pad(b"\xd9\xa1\xd9\xa6 uid=0\n") + R.END,
    "base256-mtime-huge": R.entry("f", b"0", b"x", fields={136: base256(1 << 80, 12)}) + R.END,
    "base256-uid-huge": R.entry("f", b"0", b"x", fields={108: base256(1 << 40, 8)}) + R.END,
    "base256-devmajor-2-40": R.entry("c", b"3", fields={329: base256(1 << 40, 8)}) + R.END,
    "base256-devminor-2-40": R.entry("c", b"3", fields={337: base256(1 << 40, 8)}) + R.END,
    "nul-in-xattr-name": R.pax({"SCHILY.xattr.user.a\0b": "v"}) + R.entry("f") + R.END,
    "name-component-over-255-bytes": R.pax({"path": "d/" + "n" * 256}) + R.entry("f") + R.END,
    "symlink-target-over-path-max": R.pax({"linkpath": "t/" * 2100}) + R.entry("l", b"2") + R.END,
    "empty-xattr-name": R.pax({"SCHILY.xattr.security.": "v"}) + R.entry("f") + R.END,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_numbers_and_names_are_typed_errors(store: Store, name: str) -> None:
    if name == "empty-xattr-name" and not ROOT:
        pytest.skip("an unprivileged unpack skips security.* xattrs it cannot set, as Docker")
    data = HOSTILE[name]
    with pytest.raises(LayerError):
        store.snapshots.unpack(sha(data), io.BytesIO(data), diff_id=sha(data))
    assert_nothing_kept(store)


def test_enospc_while_writing_is_store_full(
    store: Store, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if len(data) >= 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    # the patch reaches this process only: the calls stay here (the writer child meets a real
    # full disk in test_store_safety)
    monkeypatch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", sys.maxsize)
    layer = kit.tar([kit.file("small", b"s"), kit.file("big", bytes(10_000))])
    with pytest.raises(StoreFull, match="full"):
        store.snapshots.unpack(sha(layer), io.BytesIO(layer), diff_id=sha(layer), durable=False)
    assert_nothing_kept(store)


# -- the writer child ---------------------------------------------------------------------------


def writer_children() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if fswriter.__name__ in " ".join(child.cmdline())
    ]


def test_a_call_refused_in_the_writer_child_is_the_entry_s_typed_error(
    store: Store, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", 8)
    files = [kit.file(f"d/f{i}", b"x" * i) for i in range(200)]
    too_long = "n" * 300  # over NAME_MAX: the kernel refuses it, not the reader
    layer = kit.tar([kit.dir("d"), *files, kit.file(f"d/{too_long}", b"late"), *files[:5]])
    with pytest.raises(LayerError, match=f"tar entry 'd/{too_long}': the file system refused"):
        store.snapshots.unpack(sha(layer), io.BytesIO(layer), diff_id=sha(layer), durable=False)
    assert_nothing_kept(store)
    assert writer_children() == []


def test_a_layer_failing_after_its_calls_went_to_the_child_leaves_no_child_writing(
    store: Store, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", 8)
    layer = kit.tar([kit.file(f"f{i}", os.urandom(3000)) for i in range(400)])
    cut = layer[: len(layer) * 3 // 4]  # truncated inside the files
    with pytest.raises(LayerError, match="truncated"):
        store.snapshots.unpack(sha(layer), io.BytesIO(cut), diff_id=sha(layer), durable=False)
    assert_nothing_kept(store)
    assert writer_children() == []


def test_a_stretch_that_waits_often_goes_back_inline_and_a_quiet_one_to_the_child(
    tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hardlinks make the reader wait for the queue: in such a stretch the calls are made in
    the reader's process, and the child takes them again after it."""
    monkeypatch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", 0)
    monkeypatch.setattr(fswriter, "WINDOW", 16)
    moves: list[str] = []
    for name in ("_start", "_stop"):
        real = getattr(fswriter.FileWriter, name)

        def spy(self: fswriter.FileWriter, real: Any = real, name: str = name) -> Any:
            moves.append(name)
            return real(self)

        monkeypatch.setattr(fswriter.FileWriter, name, spy)
    entries = [kit.file(f"quiet{i}", b"q" * i) for i in range(40)]
    for i in range(60):
        entries += [kit.file(f"f{i}", b"f" * i), kit.hardlink(f"h{i}", f"f{i}")]
    entries += [kit.file(f"after{i}", b"a" * i) for i in range(80)]
    layer = kit.tar(entries)
    dest = tmp_path / "dest"
    dest.mkdir()
    result = apply_layer(io.BytesIO(layer), dest, whiteouts=format_named("oci"))
    assert moves[:3] == ["_start", "_stop", "_start"], moves
    assert result.files is not None
    assert len(result.files) == 40 + 120 + 80
    for i in range(60):
        assert os.stat(dest / f"h{i}").st_ino == os.stat(dest / f"f{i}").st_ino
        assert (dest / f"h{i}").read_bytes() == b"f" * i
    assert (dest / "after79").read_bytes() == b"a" * 79
    assert writer_children() == []


def test_the_writer_child_starts_only_once_a_core_is_spare(
    tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unpack told whether a core is spare asks at every window and starts its child
    only on a yes; one never told so starts it as before."""
    monkeypatch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", 0)
    monkeypatch.setattr(fswriter, "WINDOW", 16)
    starts: list[int] = []
    real_start = fswriter.FileWriter._start

    def spy(self: fswriter.FileWriter) -> None:
        starts.append(self._entries)
        real_start(self)

    monkeypatch.setattr(fswriter.FileWriter, "_start", spy)
    layer = kit.tar([kit.file(f"f{i}", b"x" * i) for i in range(100)])
    asked: list[int] = []

    def never() -> bool:
        asked.append(1)
        return False

    def after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    trees = {}
    for name, spare in (("never", never), ("later", after_three), ("untold", None)):
        dest = tmp_path / name
        dest.mkdir()
        asked.clear()
        starts.clear()
        apply_layer(io.BytesIO(layer), dest, whiteouts=format_named("oci"), spare=spare)
        trees[name] = kit.tree(dest)
        if name == "never":
            assert starts == []  # never a child
            assert len(asked) == 100 // 16  # asked once a window
        elif name == "later":
            assert starts == [4 * 16]  # the first window after the yes
        else:
            assert starts == [1]  # at once, as PROCESS_AFTER_ENTRIES says
    assert trees["never"] == trees["later"] == trees["untold"]
    assert writer_children() == []


def test_the_writer_child_makes_what_the_reader_would(tmp_path: Path, kit: Kit) -> None:
    """The same layer applied with every call in this process and with every call in the
    child: the same tree, owners, modes, times and index."""
    entries = [kit.dir("a", mode=0o750), kit.dir("a/b")]
    for i in range(300):
        entries.append(kit.file(f"a/b/f{i}", os.urandom(i * 7), mode=0o600 + i % 0o100))
    entries += [kit.symlink("a/link", "b/f1"), kit.file("a/big", os.urandom(3 << 20))]
    entries += [kit.file("a/b/f5", b"replaced"), kit.dir("a/b/f7"), kit.hardlink("a/h", "a/big")]
    layer = kit.tar(entries, "pax")
    results = {}
    for mode, after in (("inline", sys.maxsize), ("child", 0)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", after)
            dest = tmp_path / mode
            dest.mkdir()
            results[mode] = apply_layer(io.BytesIO(layer), dest, whiteouts=format_named("oci"))
    assert results["inline"] == results["child"]
    assert results["child"].files is not None
    assert len(results["child"].files) == 305
    assert kit.tree(tmp_path / "inline") == kit.tree(tmp_path / "child")

    def attributes(root: Path) -> dict[str, tuple[int, ...]]:
        return {
            path: (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink)
            for path in kit.tree(root)
            if (st := os.lstat(root / path))
        }

    assert attributes(tmp_path / "inline") == attributes(tmp_path / "child")


# -- 6. linear time --------------------------------------------------------------------------------


def fast_scratch(tmp_path: Path) -> Path:
    """A directory on tmpfs where there is one: these tests measure the engine, not how long a
    busy disk takes to rmdir (about 0.5 ms on a loaded VM's ext4)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="layerhub-test-", dir=shm))
    path = tmp_path / "scratch"
    path.mkdir()
    return path


def dirs_then_whiteouts(kit: Kit, n: int, replace: bool) -> bytes:
    entries = [kit.dir(f"d{i}") for i in range(n)]
    for i in range(n):
        entries.append(kit.symlink(f"d{i}", "elsewhere") if replace else kit.whiteout(f"d{i}"))
    return kit.tar(entries, "ustar")


def engine_steps(data: bytes, dest: Path) -> int:
    """Lines of engine code run while applying ``data``: a count of work, not of time."""
    engine = os.path.dirname(apply_module.__file__)
    steps = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal steps
        steps += 1
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code.co_filename.startswith(engine) else None

    sys.settrace(tracer)
    try:
        apply(data, dest)
    finally:
        sys.settrace(None)
    return steps


@pytest.mark.parametrize("replace", [False, True], ids=["whiteouts", "replacements"])
def test_whiteouts_and_replacements_take_linear_work(
    tmp_path: Path, kit: Kit, replace: bool
) -> None:
    """Twice the directories, twice the work (give or take): a quadratic cache costs 4x."""
    n = 400
    scratch = fast_scratch(tmp_path)
    try:
        small = engine_steps(dirs_then_whiteouts(kit, n, replace), scratch / "small")
        large = engine_steps(dirs_then_whiteouts(kit, 2 * n, replace), scratch / "large")
    finally:
        shutil.rmtree(scratch)
    assert large < 2.3 * small, f"{n} dirs: {small} steps; {2 * n} dirs: {large} steps"


@pytest.mark.slow
@pytest.mark.parametrize("replace", [False, True], ids=["whiteouts", "replacements"])
def test_200k_whiteouts_apply_in_well_under_a_minute(
    tmp_path: Path, kit: Kit, replace: bool
) -> None:
    layer = dirs_then_whiteouts(kit, 200_000, replace)
    scratch = fast_scratch(tmp_path)
    try:
        started = time.monotonic()
        result = apply(layer, scratch / "out")
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(scratch)
    assert result.entry_count == 200_000 * (2 if replace else 1)
    assert elapsed < 45, f"took {elapsed:.1f} s"


# -- 11. the free-space reserve ----------------------------------------------------------------


def test_below_the_reserve_the_unpack_stops_and_keeps_nothing(store: Store, kit: Kit) -> None:
    layer = kit.tar([kit.file("f", b"x" * 1000)])
    free = apply_module.free_bytes(str(store.tmp))
    with pytest.raises(StoreFull, match="below the reserve") as exc:
        store.snapshots.unpack(
            sha(layer), io.BytesIO(layer), diff_id=sha(layer), limits=ApplyLimits(min_free=free * 4)
        )
    assert exc.value.reserve == free * 4
    assert_nothing_kept(store)


@pytest.mark.parametrize("file_size", [1 << 20, 64 << 20], ids=["many-files", "one-file"])
def test_a_zstd_bomb_overshoots_the_reserve_by_a_few_mib_at_most(
    tmp_path: Path, kit: Kit, monkeypatch: pytest.MonkeyPatch, file_size: int
) -> None:
    """The file system is asked often enough: with 24 MiB above the reserve, a bomb of zeros
    stops before writing more than a few MiB past it. Free space is simulated (what was
    written so far, subtracted from a fixed amount), so other writers on the disk do not count.
    """
    dest = tmp_path / "out"
    reserve = 1 << 30
    headroom = 24 << 20

    def written() -> int:
        return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())

    monkeypatch.setattr(apply_module, "free_bytes", lambda path: reserve + headroom - written())
    count = (128 << 20) // file_size
    plain = kit.tar([kit.file(f"z{i}", bytes(file_size)) for i in range(count)])
    layer = kit.zstd(plain)
    assert len(layer) * 1000 < len(plain)
    with pytest.raises(StoreFull):
        apply(layer, dest, limits=ApplyLimits(min_free=reserve))
    assert written() <= headroom + (4 << 20)


def test_the_header_checksum_is_the_exact_byte_sum(tmp_path: Path) -> None:
    """The reader sums a header's bytes through Adler-32 halves: exact for every header,
    including all-0xff halves (65,280 each), and never modulo Adler's 65,521."""
    from layerhub.engine.tarstream import _byte_sum

    blocks = [bytes(512), b"\xff" * 512, bytes(range(256)) * 2, b"\xff" * 256 + bytes(256)]
    blocks += [os.urandom(512) for _ in range(2000)]
    for block in blocks:
        assert _byte_sum(block) == sum(block)
    # a checksum field 65,521 above the header's true sum is refused
    entry = R.entry("f", b"0", b"x")
    header = bytearray(entry[:512])
    stored = int(bytes(header[148:154]), 8)
    assert stored == sum(header[:148]) + 256 + sum(header[156:])
    header[148:156] = b"%06o\0 " % (stored + 65521)
    with pytest.raises(CorruptArchive, match=r"is corrupt \(bad checksum\)"):
        apply_layer(
            io.BytesIO(bytes(header) + entry[512:] + R.END), tmp_path, whiteouts=format_named("oci")
        )
