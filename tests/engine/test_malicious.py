"""Malicious and broken layers: each is refused with its own typed error and changes nothing.

Every layer goes through ``Store.snapshots.unpack`` (or ``build`` with an unprivileged apply),
so the whole path is covered: the temporary unpack directory, the DiffID check, the rename.
Next to the store lies a sentinel directory; escapes aim at it, and afterwards it must be
byte for byte, mode for mode and mtime for mtime what it was. The store must hold no
snapshot, nothing in ``tmp/``, no blob.

The unpack directory is ``<tmp_path>/store/tmp/unpack-*/``, so ``../../../sentinel`` from
inside a layer is the sentinel.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from layerhub.engine.apply import ApplyLimits, apply_layer
from layerhub.engine.errors import (
    CorruptArchive,
    DeviceNotPermitted,
    DigestMismatch,
    HardlinkEscape,
    LayerError,
    LimitExceeded,
    PathTraversal,
    SymlinkEscape,
    UnsafeEntry,
)
from layerhub.engine.union import UnionView
from tests.support.blobs import local_blobs

if TYPE_CHECKING:
    from layerhub.engine.store import Store
    from tests.engine.layerkit import Kit

UP = "../../../"  # from the unpack directory up to tmp_path
STORE_LAYOUT = ["blobs", "containers", "locks", "snapshots", "store.json", "tmp"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Case:
    """A bad layer, what it must raise and how it is applied."""

    data: bytes
    error: type[Exception] | tuple[type[Exception], ...]
    entry: str | None = None  # the name an UnsafeEntry must report
    diff_id: str | None = None  # what the manifest announces; the intact tar's by default
    limits: ApplyLimits | None = None
    privileged: bool = True
    seconds: float = 5.0  # a refusal is quick; longer means the engine hangs


def rechecksum(header: bytearray) -> bytearray:
    """Recompute a tar header's checksum after editing it."""
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return header


def with_header(tar: bytes, index: int, edit: Callable[[bytearray], None]) -> bytes:
    """``tar`` with its ``index``-th 512-byte block edited and re-checksummed."""
    start = index * 512
    block = bytearray(tar[start : start + 512])
    edit(block)
    return tar[:start] + bytes(rechecksum(block)) + tar[start + 512 :]


def sparse_tar(kit: Kit, tar_format: str) -> bytes:
    src = kit.scratch("sparse")
    with open(src / "holes", "wb") as f:
        f.truncate(1 << 20)
        f.seek(1 << 19)
        f.write(b"data in the middle")
    return kit.gnu_tar(src, tar_format, "--sparse")


def three_files(kit: Kit) -> bytes:
    return kit.tar(
        [kit.file("one", b"1" * 1000), kit.file("two", b"2" * 1000), kit.file("three", b"3")],
        "ustar",
    )


BOMB_SECONDS = 30.0  # decompressing up to the limit takes a moment


def bomb(compress: Callable[[bytes], bytes], payload: bytes) -> bytes:
    data = compress(payload)
    assert len(data) * 100 < len(payload), "not a bomb: it barely compresses"
    return data


def bomb_case(compress: Callable[[bytes], bytes], plain: bytes) -> Case:
    """A small compressed layer that unpacks far past the limit."""
    return Case(
        bomb(compress, plain),
        LimitExceeded,
        diff_id=sha(plain),
        limits=SMALL_LIMIT,
        seconds=BOMB_SECONDS,
    )


BIG = 64 << 20
SMALL_LIMIT = ApplyLimits(max_bytes=8 << 20)


def _cases() -> dict[str, Callable[[Kit, Path], Case]]:
    cases: dict[str, Callable[[Kit, Path], Case]] = {}

    def case(name: str) -> Callable[[Callable[[Kit, Path], Case]], Callable[[Kit, Path], Case]]:
        def register(f: Callable[[Kit, Path], Case]) -> Callable[[Kit, Path], Case]:
            cases[name] = f
            return f

        return register

    # -- paths climbing out ------------------------------------------------------------------

    @case("dotdot")
    def _(kit: Kit, s: Path) -> Case:
        name = f"{UP}sentinel/pwned"
        return Case(kit.tar([kit.file(name, b"x")]), PathTraversal, name)

    @case("dotdot-nested")
    def _(kit: Kit, s: Path) -> Case:
        name = f"a/../{UP}sentinel/pwned"  # a/../../ climbs out right after a/
        return Case(kit.tar([kit.dir("a"), kit.file(name, b"x")]), PathTraversal, name)

    @case("dotdot-directory")
    def _(kit: Kit, s: Path) -> Case:
        name = f"a/b/../../{UP}sentinel/newdir"
        return Case(kit.tar([kit.dir(name)]), PathTraversal, name + "/")

    @case("absolute")
    def _(kit: Kit, s: Path) -> Case:
        name = f"{s}/pwned"
        return Case(kit.tar([kit.file(name, b"x")]), PathTraversal, name)

    @case("whiteout-of-dotdot")
    def _(kit: Kit, s: Path) -> Case:
        return Case(kit.tar([kit.file("d/.wh..", b"")]), PathTraversal, "d/.wh..")

    # -- symlinks pointing out ---------------------------------------------------------------

    @case("symlink-absolute")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.symlink("evil", str(s)), kit.file("evil/pwned", b"x")])
        return Case(layer, SymlinkEscape, "evil/pwned")

    @case("symlink-relative")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.symlink("up", "../../.."), kit.file("up/sentinel/pwned", b"x")])
        return Case(layer, SymlinkEscape, "up/sentinel/pwned")

    @case("symlink-chain")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar(
            [
                kit.dir("sub"),
                kit.symlink("l1", "l2"),
                kit.symlink("l2", "sub/l3"),
                kit.symlink("sub/l3", "../../../.."),
                kit.file("l1/sentinel/pwned", b"x"),
            ]
        )
        return Case(layer, SymlinkEscape, "l1/sentinel/pwned")

    @case("symlink-in-subdir")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar(
            [kit.dir("d"), kit.symlink("d/up", "../../../.."), kit.file("d/up/sentinel/x", b"")]
        )
        return Case(layer, SymlinkEscape, "d/up/sentinel/x")

    @case("symlink-loop")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.symlink("a", "b"), kit.symlink("b", "a"), kit.file("a/x", b"")])
        return Case(layer, SymlinkEscape, "a/x")

    @case("symlink-then-directory")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.symlink("evil", str(s)), kit.dir("evil/newdir")])
        return Case(layer, SymlinkEscape, "evil/newdir/")

    @case("symlink-then-whiteout")
    def _(kit: Kit, s: Path) -> Case:
        # would delete the sentinel's file
        layer = kit.tar([kit.symlink("evil", str(s)), kit.whiteout("evil/secret")])
        return Case(layer, SymlinkEscape, "evil/.wh.secret")

    @case("symlink-then-opaque")
    def _(kit: Kit, s: Path) -> Case:
        # would mark the sentinel opaque (a marker file or a trusted xattr)
        layer = kit.tar([kit.symlink("evil", "../../../sentinel"), kit.opaque("evil")])
        return Case(layer, SymlinkEscape, "evil/.wh..wh..opq")

    # -- hardlinks ---------------------------------------------------------------------------

    @case("hardlink-relative-outside")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.hardlink("h", f"{UP}sentinel/secret")])
        return Case(layer, HardlinkEscape, "h")

    @case("hardlink-absolute-outside")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.hardlink("h", f"{s}/secret")])
        return Case(layer, HardlinkEscape, "h")

    @case("hardlink-through-symlink")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.symlink("evil", str(s)), kit.hardlink("h", "evil/secret")])
        return Case(layer, HardlinkEscape, "h")

    @case("hardlink-missing-target")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("a", b"a"), kit.hardlink("h", "not-yet-written")])
        return Case(layer, HardlinkEscape, "h")

    @case("hardlink-to-directory")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.dir("d"), kit.hardlink("h", "d")])
        return Case(layer, HardlinkEscape, "h")

    # -- privilege -----------------------------------------------------------------------------

    @case("char-device-unprivileged")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.char("dev/mem", 1, 1)])
        return Case(layer, DeviceNotPermitted, "dev/mem", privileged=False)

    @case("block-device-unprivileged")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.block("dev/sda", 8, 0)])
        return Case(layer, DeviceNotPermitted, "dev/sda", privileged=False)

    # -- bombs -----------------------------------------------------------------------------------

    @case("too-many-entries")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file(f"f{i}", b"") for i in range(50)])
        return Case(layer, LimitExceeded, limits=ApplyLimits(max_entries=10))

    @case("too-many-bytes")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("big", bytes(2 << 20))])
        return Case(layer, LimitExceeded, limits=ApplyLimits(max_bytes=1 << 20))

    @case("gzip-bomb-file")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("zeros", bytes(BIG))])
        return bomb_case(kit.gzip, plain)

    @case("gzip-bomb-after-end")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("tiny", b"x")]) + bytes(BIG)
        return bomb_case(kit.gzip, plain)

    @case("zstd-bomb-file")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("zeros", bytes(BIG))])
        return bomb_case(kit.zstd, plain)

    # -- truncated and corrupt -----------------------------------------------------------------

    @case("truncated-mid-file")
    def _(kit: Kit, s: Path) -> Case:
        plain = three_files(kit)
        return Case(plain[: 512 + 600], CorruptArchive, diff_id=sha(plain))

    @case("truncated-in-padding")
    def _(kit: Kit, s: Path) -> Case:
        plain = three_files(kit)
        return Case(plain[: 512 + 1010], CorruptArchive, diff_id=sha(plain))

    @case("truncated-mid-header")
    def _(kit: Kit, s: Path) -> Case:
        plain = three_files(kit)
        return Case(plain[: 512 + 1024 + 100], CorruptArchive, diff_id=sha(plain))

    @case("truncated-at-header-boundary")
    def _(kit: Kit, s: Path) -> Case:
        # Without its end blocks the tar reads as whole (as Go reads it), but its DiffID covers
        # exactly the bytes given: it is not the intact tar's, so the unpack is refused.
        entries = [kit.file("one", b"1" * 1000), kit.file("two", b"2")]
        cut = kit.tar(entries, end=False)
        assert len(cut) % 512 == 0
        assert cut[-512:] != bytes(512)
        return Case(cut, DigestMismatch, diff_id=sha(kit.tar(entries)))

    @case("truncated-after-extended-header")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("f", b"x", pax={"path": "renamed"})])
        return Case(plain[:1024], CorruptArchive, diff_id=sha(plain))

    @case("bad-checksum-in-the-middle")
    def _(kit: Kit, s: Path) -> Case:
        plain = three_files(kit)
        second = 512 + 1024  # the header of "two"
        assert plain[second : second + 3] == b"two"
        broken = plain[:second] + b"TWO" + plain[second + 3 :]
        return Case(broken, CorruptArchive, diff_id=sha(plain))

    @case("truncated-gzip")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("random", os.urandom(100_000))])
        gz = kit.gzip(plain)
        return Case(gz[: len(gz) // 2], CorruptArchive, diff_id=sha(plain))

    @case("gzip-without-its-trailer")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("random", os.urandom(10_000))])
        return Case(kit.gzip(plain)[:-8], CorruptArchive, diff_id=sha(plain))

    @case("gzip-with-trailing-garbage")
    def _(kit: Kit, s: Path) -> Case:
        plain = kit.tar([kit.file("f", b"x")])
        return Case(kit.gzip(plain) + b"garbage!", CorruptArchive, diff_id=sha(plain))

    @case("truncated-zstd")
    def _(kit: Kit, s: Path) -> Case:
        # the frame stops before its checksum: the stream is cut short, even if the tar inside
        # happens to be whole
        plain = kit.tar([kit.file("random", os.urandom(100_000))])
        return Case(kit.zstd(plain)[:-3], CorruptArchive, diff_id=sha(plain))

    @case("not-a-tar")
    def _(kit: Kit, s: Path) -> Case:
        return Case(b"this is not a tar file\n" * 100, CorruptArchive)

    @case("short-garbage")
    def _(kit: Kit, s: Path) -> Case:
        return Case(b"<html>404</html>", CorruptArchive)

    @case("empty-stream")
    def _(kit: Kit, s: Path) -> Case:
        return Case(b"", CorruptArchive)

    @case("wrong-diff-id")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("f", b"real content")])
        announced = sha(kit.tar([kit.file("f", b"other content")]))
        return Case(layer, DigestMismatch, diff_id=announced)

    @case("wrong-diff-id-gzip")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.gzip(kit.tar([kit.file("f", b"real content")]))
        return Case(layer, DigestMismatch, diff_id=sha(layer))  # the blob's digest, not DiffID

    # -- refused or malformed entries ----------------------------------------------------------

    @case("sparse-gnu")
    def _(kit: Kit, s: Path) -> Case:
        return Case(sparse_tar(kit, "gnu"), UnsafeEntry)

    @case("sparse-posix")
    def _(kit: Kit, s: Path) -> Case:
        return Case(sparse_tar(kit, "posix"), UnsafeEntry)

    @case("negative-size-pax")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("f", b"", pax={"size": "-1"}), kit.file("g", b"g")])
        return Case(layer, CorruptArchive)

    @case("negative-size-base256")
    def _(kit: Kit, s: Path) -> Case:
        good = kit.tar([kit.file("f", b"abc"), kit.file("g", b"g")], "gnu")

        def minus_one(header: bytearray) -> None:
            header[124:136] = b"\xff" * 12  # GNU base-256: -1

        return Case(with_header(good, 0, minus_one), CorruptArchive)

    @case("non-numeric-pax-uid")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("f", b"x", pax={"uid": "root"})])
        return Case(layer, CorruptArchive)

    @case("non-numeric-pax-mtime")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("f", b"x", pax={"mtime": "yesterday"})])
        return Case(layer, CorruptArchive)

    @case("nul-in-pax-path")
    def _(kit: Kit, s: Path) -> Case:
        layer = kit.tar([kit.file("f", b"x", pax={"path": "a\x00b"})])
        return Case(layer, (UnsafeEntry, CorruptArchive))

    return cases


CASES = _cases()


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 12


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A directory next to the store that no layer may touch."""
    s = tmp_path / "sentinel"
    (s / "sub").mkdir(parents=True)
    (s / "secret").write_bytes(b"top secret\n")
    (s / "sub" / "file").write_bytes(b"inner\n")
    os.chmod(s / "secret", 0o600)
    for p in [s / "secret", s / "sub" / "file", s / "sub", s]:
        os.utime(p, (1_500_000_000, 1_500_000_000))
    return s


def unpack(store: Store, case: Case) -> None:
    chain_id = sha(case.data)
    diff_id = case.diff_id or sha(case.data)
    if case.privileged:
        store.snapshots.unpack(chain_id, io.BytesIO(case.data), diff_id=diff_id, limits=case.limits)
    else:
        store.snapshots.build(
            chain_id,
            lambda d: apply_layer(
                io.BytesIO(case.data),
                d,
                whiteouts=store.whiteouts,
                limits=case.limits,
                privileged=False,
            ),
        )


def assert_untouched(
    tmp_path: Path, store: Store, sentinel: Path, before: object, kit: Kit
) -> None:
    assert sorted(os.listdir(tmp_path)) == ["sentinel", "store"]
    assert kit.state(sentinel) == before, "something outside the store was changed"
    assert sorted(os.listdir(store.root)) == STORE_LAYOUT
    assert os.listdir(store.root / "snapshots") == [], "a snapshot was left behind"
    assert os.listdir(store.tmp) == [], "tmp/ was left dirty"
    assert os.listdir(local_blobs(store).root) == []
    assert os.listdir(store.containers) == []


@pytest.mark.parametrize("name", list(CASES))
def test_malicious_layer_is_refused_and_changes_nothing(
    tmp_path: Path, store: Store, kit: Kit, sentinel: Path, name: str
) -> None:
    case = CASES[name](kit, sentinel)
    before = kit.state(sentinel)
    with kit.deadline(case.seconds), pytest.raises(case.error) as exc:
        unpack(store, case)
    if case.entry is not None:
        assert isinstance(exc.value, UnsafeEntry)
        assert exc.value.name == case.entry
    assert_untouched(tmp_path, store, sentinel, before, kit)


def test_a_directory_replaced_by_a_symlink_does_not_touch_its_target(
    tmp_path: Path, store: Store, kit: Kit, sentinel: Path
) -> None:
    """A directory's mode and mtime are set at the end: never through what replaced it.

    Replacing an earlier entry is legal tar, so the layer may apply (``d`` is then the
    symlink) or be refused; either way the file the symlink names must stay as it was.
    """
    layer = kit.tar(
        [
            kit.dir("d", mode=0o777, mtime=1234),
            kit.symlink("d", str(sentinel / "secret")),
            kit.dir("e", mode=0o777, mtime=1234),
            kit.symlink("e", f"{UP}sentinel/sub"),
        ]
    )
    before = kit.state(sentinel)
    try:
        with kit.deadline(5):
            result = store.snapshots.unpack(sha(layer), io.BytesIO(layer), diff_id=sha(layer))
    except LayerError:
        assert_untouched(tmp_path, store, sentinel, before, kit)
    else:
        assert os.readlink(result.path / "d") == str(sentinel / "secret")
        assert kit.state(sentinel) == before, "the symlink's target was chmod'ed or touched"


def test_pax_xattrs_cannot_forge_overlay_opaque(store: Store, kit: Kit) -> None:
    """An xattr record must not turn a directory into an opaque one behind the layer's back."""
    lower = kit.tar([kit.dir("etc"), kit.file("etc/passwd", b"root:x:0:0")])
    forged = kit.tar(
        [kit.dir("etc", pax={"SCHILY.xattr.trusted.overlay.opaque": "y"})],
        "pax",
    )
    paths = kit.stack(store, [lower, forged])
    assert UnionView(paths, store.whiteouts).read_bytes("/etc/passwd") == b"root:x:0:0"
    with tarfile.open(fileobj=io.BytesIO(forged)) as tf:
        assert "SCHILY.xattr.trusted.overlay.opaque" in tf.getmembers()[0].pax_headers
