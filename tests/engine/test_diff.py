"""Diff: a container's writable directory becomes a layer tar, deterministic in both forms.

The writable (upper) directories are written by hand as overlayfs' copy-up leaves them:
changed and added files, whiteouts for deletions, opaque directories for replaced ones.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from layerhub.engine.diff import diff_to_store, write_diff_tar
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import LayerhubError
from layerhub.engine.union import UnionView
from layerhub.engine.whiteouts import format_named, overlay_supported

if TYPE_CHECKING:
    from layerhub.engine.store import Store
    from layerhub.engine.whiteouts import WhiteoutFormat
    from tests.engine.layerkit import HandLayer, Kit

T = 1_650_000_000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def typical_upper(hand: HandLayer) -> HandLayer:
    """Added, changed and deleted files, a deleted directory, a replaced directory."""
    hand.dir("etc")
    hand.file("etc/new.conf", b"added\n")
    hand.file("etc/hosts", b"127.0.0.1 changed\n", mode=0o644)
    hand.whiteout("etc/old.conf")
    hand.opaque("opt")
    hand.file("opt/app", b"replaced tree\n", mode=0o755)
    hand.dir("usr/bin")
    hand.file("usr/bin/tool", b"\x7fELF", mode=0o4755)
    hand.symlink("usr/bin/t", "tool")
    hand.whiteout("gone")
    return hand.set_mtimes(T)


EXPECTED_ORDER = [
    ".wh.gone",
    "etc/",
    "etc/.wh.old.conf",
    "etc/hosts",
    "etc/new.conf",
    "opt/",
    "opt/.wh..wh..opq",
    "opt/app",
    "usr/",
    "usr/bin/",
    "usr/bin/t",
    "usr/bin/tool",
]


def tar_of(upper: Path, fmt: WhiteoutFormat) -> tuple[bytes, int]:
    out = io.BytesIO()
    count = write_diff_tar(upper, fmt, out)
    return out.getvalue(), count


def test_diff_tar_entries(
    tmp_path: Path, kit: Kit, whiteout_form: str, fmt: WhiteoutFormat
) -> None:
    upper = typical_upper(kit.hand(tmp_path / "upper", whiteout_form)).root
    data, count = tar_of(upper, fmt)
    members = kit.members(data)
    # tarfile drops a directory's trailing slash when reading; the raw names keep it
    assert [m.name + ("/" if m.isdir() else "") for m in members] == EXPECTED_ORDER
    assert count == len(EXPECTED_ORDER)
    by_name = {m.name: m for m in members}
    for marker in [".wh.gone", "etc/.wh.old.conf", "opt/.wh..wh..opq"]:
        assert by_name[marker].isreg(), marker
        assert by_name[marker].size == 0, marker
    assert by_name["usr/bin/t"].issym()
    assert by_name["usr/bin/t"].linkname == "tool"
    assert by_name["usr/bin/tool"].mode == 0o4755
    assert by_name["opt/app"].mode == 0o755
    assert all(by_name[d].isdir() for d in ["etc", "opt", "usr", "usr/bin"])
    contents = kit.contents(data)
    assert contents["etc/new.conf"] == b"added\n"
    assert contents["etc/hosts"] == b"127.0.0.1 changed\n"
    assert contents["opt/app"] == b"replaced tree\n"
    for m in members:
        if not m.name.rsplit("/", 1)[-1].startswith(".wh."):
            assert m.mtime == T, m.name
        assert (m.uname, m.gname) == ("", ""), m.name
        assert not {"atime", "ctime"} & set(m.pax_headers), m.name


def test_diff_to_store(store: Store, kit: Kit, tmp_path: Path) -> None:
    upper = typical_upper(kit.hand(tmp_path / "upper", store.whiteouts.name)).root
    layer = diff_to_store(upper, store.whiteouts, store.blobs)
    blob = store.blobs.read_bytes(layer.digest)
    assert layer.digest == sha(blob)
    assert layer.size == len(blob)
    plain = gzip.decompress(blob)
    assert layer.diff_id == sha(plain)
    assert layer.tar_size == len(plain)
    assert layer.entry_count == len(EXPECTED_ORDER)
    assert plain == tar_of(upper, store.whiteouts)[0]
    # deterministic gzip: no file name, no timestamp
    assert blob[:3] == b"\x1f\x8b\x08"
    assert blob[3] & 0x08 == 0, "the gzip header carries a file name"
    assert blob[4:8] == b"\0\0\0\0", "the gzip header carries a timestamp"
    assert os.listdir(store.tmp) == []


def test_diff_is_deterministic(tmp_path: Path, kit: Kit, store: Store) -> None:
    form = store.whiteouts.name
    first = typical_upper(kit.hand(tmp_path / "one", form)).root
    a = diff_to_store(first, store.whiteouts, store.blobs)
    time.sleep(0.01)
    for path in first.rglob("*"):  # reading changes atimes: they must not matter
        if path.is_file() and not path.is_symlink():
            path.read_bytes()
    b = diff_to_store(first, store.whiteouts, store.blobs)
    assert a == b

    # the same change made again elsewhere, in another order, later
    second = kit.hand(tmp_path / "two", form)
    second.whiteout("gone")
    second.symlink("usr/bin/t", "tool")
    second.file("usr/bin/tool", b"\x7fELF", mode=0o4755)
    second.opaque("opt")
    second.file("opt/app", b"replaced tree\n", mode=0o755)
    second.whiteout("etc/old.conf")
    second.file("etc/hosts", b"127.0.0.1 changed\n")
    second.file("etc/new.conf", b"added\n")
    second.set_mtimes(T)
    c = diff_to_store(second.root, store.whiteouts, store.blobs)
    assert (c.digest, c.diff_id, c.size) == (a.digest, a.diff_id, a.size)


def test_one_change_gives_one_diff_id_in_both_forms(tmp_path: Path, kit: Kit) -> None:
    if not overlay_supported(tmp_path):
        pytest.skip("overlay whiteouts need root (mknod, trusted.* xattrs)")
    diffs = {}
    for form in ["oci", "overlay"]:
        upper = typical_upper(kit.hand(tmp_path / form, form)).root
        data, _ = tar_of(upper, format_named(form))
        diffs[form] = sha(data)
    assert diffs["oci"] == diffs["overlay"]


def test_hardlinks_become_one_file_and_links(
    tmp_path: Path, kit: Kit, store: Store, whiteout_form: str
) -> None:
    hand = kit.hand(tmp_path / "upper", whiteout_form)
    hand.file("b/first", b"shared content", mode=0o640)
    hand.hardlink("a-link", "b/first")
    hand.hardlink("c/third", "b/first")
    hand.file("single", b"alone")
    hand.set_mtimes(T)
    data, _ = tar_of(hand.root, store.whiteouts)
    members = {m.name: m for m in kit.members(data)}
    regular = [n for n, m in members.items() if m.isreg()]
    links = {n: m.linkname for n, m in members.items() if m.islnk()}
    # the first in tar order carries the content; the others link to it
    assert sorted(regular) == ["a-link", "single"]
    assert links == {"b/first": "a-link", "c/third": "a-link"}
    assert all(members[n].size == 0 for n in links)
    assert kit.contents(data)["a-link"] == b"shared content"

    snapshot = kit.stack(store, [data])[0]
    inodes = {os.lstat(snapshot / p).st_ino for p in ["a-link", "b/first", "c/third"]}
    assert len(inodes) == 1
    assert (snapshot / "c/third").read_bytes() == b"shared content"
    assert os.lstat(snapshot / "b/first").st_nlink == 3


def test_xattrs_are_recorded_except_overlay_ones(
    tmp_path: Path, kit: Kit, whiteout_form: str, fmt: WhiteoutFormat
) -> None:
    hand = kit.hand(tmp_path / "upper", whiteout_form)
    hand.file("f", b"x")
    os.setxattr(hand.root / "f", "user.zz", b"last")
    os.setxattr(hand.root / "f", "user.aa", b"first")
    hand.opaque("d")
    os.setxattr(hand.root / "d", "user.overlay.opaque", b"y")
    data, _ = tar_of(hand.root, fmt)
    members = {m.name: m for m in kit.members(data)}
    f_keys = [k for k in members["f"].pax_headers if k.startswith("SCHILY.xattr.")]
    assert f_keys == ["SCHILY.xattr.user.aa", "SCHILY.xattr.user.zz"]  # sorted
    assert members["f"].pax_headers["SCHILY.xattr.user.zz"] == "last"
    assert not [k for k in members["d"].pax_headers if "overlay" in k]
    assert "d/.wh..wh..opq" in members


def test_clamp_mtime(tmp_path: Path, kit: Kit, whiteout_form: str, fmt: WhiteoutFormat) -> None:
    hand = kit.hand(tmp_path / "upper", whiteout_form)
    hand.file("new", b"n").file("old", b"o").set_mtimes(T)
    os.utime(hand.root / "old", (T - 500, T - 500))
    out = io.BytesIO()
    write_diff_tar(hand.root, fmt, out, clamp_mtime=T - 100)
    mtimes = {m.name: m.mtime for m in kit.members(out.getvalue())}
    assert mtimes == {"new": T - 100, "old": T - 500}


def test_a_diff_applied_over_its_base_gives_the_changed_tree(
    tmp_path: Path, kit: Kit, store: Store
) -> None:
    base = kit.tar(
        [
            kit.dir("etc"),
            kit.file("etc/hosts", b"127.0.0.1 localhost\n"),
            kit.file("etc/old.conf", b"old"),
            kit.dir("opt"),
            kit.dir("opt/legacy"),
            kit.file("opt/legacy/lib", b"legacy"),
            kit.dir("usr"),
            kit.dir("usr/bin"),
            kit.file("usr/bin/keep", b"keep", mode=0o755),
            kit.dir("gone"),
            kit.file("gone/file", b"g"),
        ]
    )
    [base_path] = kit.stack(store, [base])
    upper = typical_upper(kit.hand(tmp_path / "upper", store.whiteouts.name)).root
    layer = diff_to_store(upper, store.whiteouts, store.blobs)
    [_, chain] = chain_ids([sha(base), layer.diff_id])
    with store.blobs.open(layer.digest) as blob:
        top = store.snapshots.unpack(chain, blob, diff_id=layer.diff_id).path
    view = UnionView([base_path, top], store.whiteouts)
    assert [e.path for e in view.walk("/")] == [
        "/etc",
        "/etc/hosts",
        "/etc/new.conf",
        "/opt",
        "/opt/app",
        "/usr",
        "/usr/bin",
        "/usr/bin/keep",
        "/usr/bin/t",
        "/usr/bin/tool",
    ]
    assert view.read_bytes("/etc/hosts") == b"127.0.0.1 changed\n"
    assert view.readlink("/usr/bin/t") == "tool"
    assert view.read_bytes("/usr/bin/keep") == b"keep"
    assert view.lstat("/usr/bin/tool").st.st_mode & 0o7777 == 0o4755


def test_a_socket_in_the_upper_is_skipped_or_refused_with_a_typed_error(
    tmp_path: Path, kit: Kit, fmt: WhiteoutFormat
) -> None:
    """A container that left a socket behind (``/run/app.sock``) can still be committed.

    Docker leaves sockets out of a layer; refusing is acceptable too, but as a LayerhubError
    the UI and API can show, never as a bare exception.
    """
    hand = kit.hand(tmp_path / "u", fmt.name)
    hand.file("run/keep", b"k")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(hand.root / "run/app.sock"))
        try:
            data, _ = tar_of(hand.root, fmt)
        except LayerhubError:
            return
    finally:
        sock.close()
    assert [m.name for m in kit.members(data)] == ["run", "run/keep"]


def test_tar_is_pax_and_readable_by_tarfile(tmp_path: Path, kit: Kit, fmt: WhiteoutFormat) -> None:
    hand = kit.hand(tmp_path / "u", fmt.name)
    long = "l" * 120 + "/" + "日本" * 30
    hand.file(long, b"long and non-ascii")
    hand.set_mtimes(T)
    data, _ = tar_of(hand.root, fmt)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.getmember(long).size == len(b"long and non-ascii")
    assert len(data) % 512 == 0
