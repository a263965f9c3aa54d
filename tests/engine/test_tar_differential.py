"""layerhub's apply against GNU tar: the same tree, or a typed refusal. Never a third answer.

For every layer in the malicious corpus and for layers generated header by header (long names
in PAX and GNU headers over decoy ustar names, ustar prefixes, odd type flags, trailing
slashes, sizes on header-only entries, symlinks replaced while paths go through them,
hardlinks, whiteout markers), either

- layerhub refuses the layer with a LayerError, or
- GNU tar extracts it without an error and both trees hold the same paths, each of the same
  type, size, symlink target and content hash.

Whiteouts are kept in the OCI form (markers as plain files), so the trees compare directly.
Python's tarfile is not a reference: it reads some of these headers differently from release
to release.

Where GNU tar and Go's archive/tar (what Docker and containerd read layers with) disagree,
layerhub follows Go; the reference is then GNU tar run on the layer with that one rule applied
beforehand (``go_rules``), each listed here:

G1. The old type flag ``\\0`` is a directory only when the *final* name (after PAX and GNU long
    names) ends in ``/``; ``0`` and ``7`` are files whatever the name. GNU tar takes a trailing
    slash as a directory for all three.
G2. Only file types carry contents. A directory, link, FIFO or device header's size field is
    ignored (Go's isHeaderOnlyType), and a ``\\0`` directory's contents are skipped as a file's
    would be; GNU tar reads those bytes as the next headers.
G3. Names and hardlink targets are cleaned lexically (``a/./b/`` is ``a/b``, ``a/../b`` is
    ``b``), as Docker's ``filepath.Clean``; GNU tar refuses ``..`` and keeps a trailing slash.
G4. A file, link or FIFO replacing a non-empty directory replaces it whole (Docker's
    ``os.RemoveAll``); GNU tar refuses ("File exists"). Its ``--recursive-unlink`` does what
    Docker does here but also empties a directory that a later entry merely declares again,
    so it is used only for the named layers of this rule; a generated layer on which plain
    GNU tar first reports "File exists" is discarded (``reject``).

G5. A global PAX header (``g``) is ignored, as Docker ignores it; GNU tar applies its path,
    size or owner to every later entry. The reference leaves such headers out.

Where GNU tar and Go pick different answers and neither is safe to follow, layerhub refuses:
an entry with both a PAX ``path`` and a GNU long name that differ (Go takes the GNU one, GNU
tar the PAX one) is refused, and so is a typeflag other than the POSIX and GNU ones.

And three things the generator leaves out because they are layer semantics, not tar:
a whiteout marker also deletes the path it names if this same layer wrote it (Docker's
UnpackLayer); a directory written over such a path is made opaque; and symlink targets that
are absolute or hold ``..``: GNU tar writes a placeholder file for those and makes the symlink
at the very end, for its own safety, so a later entry can neither go through it nor reliably
replace it (GNU tar puts the symlink back over a file written there when the file reuses the
placeholder's inode number). Whiteout markers therefore name paths nothing else in the layer
uses, and generated symlink targets are relative without ``..``; absolute ones are in the
malicious corpus, refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from layerhub.engine.apply import apply_layer
from layerhub.engine.compression import decompressed
from layerhub.engine.errors import LayerError
from layerhub.engine.whiteouts import format_named
from tests.engine.layerkit import Kit
from tests.engine.layerkit import RawTar as R

pytestmark = pytest.mark.usefixtures("writes")

if TYPE_CHECKING:
    from tests.engine.test_malicious import Case

OCI = format_named("oci")
ROOT = os.geteuid() == 0
FILE_FLAGS = (b"0", b"\0", b"7")

Tree = dict[str, tuple[str, int, str, str]]


def tree(root: Path) -> Tree:
    """path -> (type, size, symlink target, sha256) for everything below ``root``."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = os.lstat(path)
            rel = path.relative_to(root).as_posix()
            if stat.S_ISREG(st_.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", st_.st_size, "", digest)
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", 0, "", "")
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", 0, os.readlink(path), "")
            elif stat.S_ISFIFO(st_.st_mode):
                out[rel] = ("fifo", 0, "", "")
            else:
                out[rel] = ("device", 0, "", str(st_.st_rdev))
    return out


def gnu_tar(plain: bytes, work: Path, *, recursive_unlink: bool = False) -> Tree | str:
    """What GNU tar extracts from the uncompressed tar ``plain``, or its error message."""
    work.mkdir(parents=True)
    archive = work / "layer.tar"
    archive.write_bytes(plain)
    dest = work / "tar"
    dest.mkdir()
    cmd = ["tar", "-xf", str(archive), "-C", str(dest), "--no-same-owner"]
    if recursive_unlink:
        cmd.append("--recursive-unlink")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return done.stderr.strip() or f"exit {done.returncode}"
    return tree(dest)


def layerhub(data: bytes, work: Path, **kw: Any) -> Tree | LayerError:
    dest = work / "layerhub"
    dest.mkdir(parents=True)
    kw.setdefault("privileged", ROOT)
    try:
        apply_layer(io.BytesIO(data), dest, whiteouts=OCI, **kw)
    except LayerError as exc:
        return exc
    return tree(dest)


def replacing_a_directory(error: str) -> bool:
    """Whether GNU tar first failed on G4 (something in place of a non-empty directory); what
    it reports after that follows from the directory it left in place."""
    return error.splitlines()[0].endswith(": File exists")


def agree(
    data: bytes,
    reference: bytes | Callable[[], bytes],
    work: Path,
    *,
    recursive_unlink: bool = False,
    generated: bool = False,
    **kw: Any,
) -> bool:
    """Assert the property for one layer; True if layerhub applied it, False if it refused.

    ``reference`` is the uncompressed tar GNU tar extracts (``data`` with Go's rules applied),
    or what makes it.
    """
    ours = layerhub(data, work, **kw)
    if isinstance(ours, LayerError):
        return False
    plain = reference() if callable(reference) else reference
    theirs = gnu_tar(plain, work / "gnu", recursive_unlink=recursive_unlink)
    if generated and isinstance(theirs, str) and replacing_a_directory(theirs):
        reject()  # G4, checked by the named layers
    assert not isinstance(theirs, str), (
        f"layerhub applied a layer GNU tar fails on ({theirs}); layerhub's tree: {ours}"
    )
    assert ours == theirs
    return True


# -- the malicious corpus ------------------------------------------------------------------------


def corpus() -> dict[str, Callable[[Kit, Path], Case]]:
    from tests.engine.test_malicious import CASES

    return CASES


@pytest.mark.parametrize("name", list(corpus()))
def test_the_malicious_corpus(tmp_path: Path, kit: Kit, name: str) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    case = corpus()[name](kit, sentinel)
    kw: dict[str, Any] = {"limits": case.limits, "privileged": case.privileged and ROOT}
    if agree(case.data, lambda: _plain(case.data), tmp_path / "work", **kw):
        # the cases refused by the store for their DiffID are whole tars: GNU tar agrees
        assert name.startswith(("wrong-diff-id", "truncated-at-header-boundary")), name


def hostile() -> dict[str, bytes]:
    from tests.engine.test_tar_hardening import HOSTILE

    return HOSTILE


@pytest.mark.parametrize("name", list(hostile()))
def test_hostile_headers(tmp_path: Path, name: str) -> None:
    data = hostile()[name]
    assert not agree(data, data, tmp_path / "work"), f"{name} should be refused"


def _plain(data: bytes) -> bytes:
    stream, _ = decompressed(io.BytesIO(data))
    return stream.read()


# -- named layers: the cases behind each rule ------------------------------------------------------


SMUGGLED = R.entry("etc/passwd", b"0", b"root::0:0:evil\n") + R.END

NAMED: dict[str, tuple[bytes, bytes]] = {
    # (layer, reference for GNU tar): the same bytes unless a Go rule rewrites them
    "pax-path-over-a-decoy-directory-name": (
        R.pax({"path": "readme.txt"})
        + R.entry("foo/", b"\0", SMUGGLED)
        + R.entry("etc/passwd", b"0", b"root:x\n")
        + R.END,
    )
    * 2,
    "gnu-long-name-over-a-decoy-directory-name": (
        R.gnu_long(b"L", "readme.txt")
        + R.entry("foo/", b"\0", SMUGGLED, magic=R.GNU)
        + R.entry("etc/passwd", b"0", b"root:x\n")
        + R.END,
    )
    * 2,
    "slash-as-the-100th-byte": (
        R.pax({"path": "d" * 99 + "/f"}) + R.entry("d" * 99 + "/", b"0", b"content") + R.END,
    )
    * 2,
    "G1-file-flag-with-a-trailing-slash": (
        R.entry("x/", b"0", b"hello") + R.END,
        R.entry("x", b"0", b"hello") + R.END,
    ),
    "G2-old-flag-directory-with-contents": (
        R.entry("d/", b"\0", SMUGGLED) + R.entry("after", b"0", b"a") + R.END,
        R.entry("d/", b"5") + R.entry("after", b"0", b"a") + R.END,
    ),
    "G2-symlink-with-a-size": (
        R.header("l", b"2", 700, linkname="t") + R.entry("t", b"0", b"t") + R.END,
        R.header("l", b"2", 0, linkname="t") + R.entry("t", b"0", b"t") + R.END,
    ),
    "G3-dot-components": (
        R.entry("d/", b"5") + R.entry("./d/./x", b"0", b"x") + R.END,
        R.entry("d", b"5") + R.entry("d/x", b"0", b"x") + R.END,
    ),
    "G4-a-directory-replaced-by-a-file": (
        R.entry("d", b"5") + R.entry("d/f", b"0", b"f") + R.entry("d", b"0", b"file") + R.END,
    )
    * 2,
    "G4-a-directory-replaced-by-a-symlink": (
        R.entry("d/f", b"0", b"f") + R.entry("d", b"2", linkname="e") + R.END,
    )
    * 2,
    "G5-a-global-pax-path": (
        R.pax({"path": "glob"}, typeflag=b"g") + R.entry("one", b"0", b"1") + R.END,
        R.entry("one", b"0", b"1") + R.END,
    ),
    "symlink-swapped-between-two-writes": (
        R.entry("etc", b"5")
        + R.entry("tmp", b"5")
        + R.entry("x", b"2", linkname="etc")
        + R.entry("x/motd", b"0", b"m")
        + R.entry("x", b"2", linkname="tmp")
        + R.entry("x/passwd", b"0", b"p")
        + R.END,
    )
    * 2,
    "no-end-blocks": (R.entry("d", b"5") + R.entry("d/f", b"0", b"f"),) * 2,
    "whiteout-markers-as-files": (
        R.entry("d", b"5") + R.entry("d/.wh.gone", b"0") + R.entry("d/.wh..wh..opq", b"0") + R.END,
    )
    * 2,
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_layers(tmp_path: Path, name: str) -> None:
    layer, reference = NAMED[name]
    g4 = name.startswith("G4")
    assert agree(layer, reference, tmp_path, recursive_unlink=g4), f"{name} should apply"


# -- generated layers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One entry as written: its final name and how the name is carried."""

    name: str  # the final name (PAX or GNU long name if used), maybe with a trailing slash
    flag: bytes
    data: bytes = b""  # contents, for file flags (and \0 directories)
    link: str = ""
    carrier: str = "ustar"  # ustar | prefix | pax | gnu | both (PAX and GNU long names)
    decoy: str = ""  # the ustar name field under a PAX or GNU long name
    size_field: int = 0  # a header-only entry's size field (no contents follow)
    pax_name: str = ""  # with carrier "both": the PAX path, when not the GNU long name
    records: tuple[tuple[str, str], ...] = ()  # a global PAX header's (flag g)

    def raw(self) -> bytes:
        """The entry's headers and contents, exactly as the fields say."""
        content = self.data if self.flag in FILE_FLAGS else b""
        size = len(content) if self.flag in FILE_FLAGS else self.size_field
        out = b""
        kw: dict[str, Any] = {}
        records: dict[str, str] = {}
        name = self.name
        if self.carrier == "pax":
            records["path"] = self.name
            name = self.decoy
        elif self.carrier == "both":
            records["path"] = self.pax_name or self.name
            out += R.gnu_long(b"L", self.name)
            name, kw["magic"] = self.decoy, R.GNU
        elif self.carrier == "gnu":
            out += R.gnu_long(b"L", self.name)
            name, kw["magic"] = self.decoy, R.GNU
        elif self.carrier == "prefix":
            head, _, name = self.name.rpartition("/")
            kw["prefix"] = head.encode()
        link = self.link
        if len(link.encode()) > 100:
            if self.carrier in ("gnu", "both"):
                out += R.gnu_long(b"K", link)
            else:
                records["linkpath"] = link
            link = ""
        if records:
            out = R.pax(records) + out
        return out + R.header(name, self.flag, size, linkname=link, **kw) + R.pad(content)

    def go(self) -> Entry:
        """This entry with Go's rules applied (G1-G3), carried the same way."""
        flag, data = self.flag, self.data
        if flag == b"\0" and self.name.endswith("/"):
            flag, data = b"5", b""  # G1, G2
        elif flag in FILE_FLAGS:
            flag = b"0"  # G1
        cleaned = posixpath.normpath(self.name.lstrip("/")) if self.name else "."
        link = posixpath.normpath(self.link) if flag == b"1" and self.link else self.link
        carrier = self.carrier
        if carrier == "prefix" and "/" not in cleaned:
            carrier = "ustar"
        pax_name = posixpath.normpath(self.pax_name) if self.pax_name else ""
        return replace(
            self,
            name=cleaned,
            flag=flag,
            data=data,
            link=link,
            carrier=carrier,
            size_field=0,
            pax_name=pax_name,
        )


TOP = ["a", "b", "x", "etc"]
COMPONENTS = st.sampled_from(TOP)
LONG = "long-" + "n" * 90  # with a parent, the name no longer fits the 100-byte field


@st.composite
def paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from([*TOP, LONG]), min_size=1, max_size=3))
    path = "/".join(parts)
    if draw(st.integers(0, 9)) == 0:
        path = "./" + path.replace("/", "/./", 1)
    return path


@st.composite
def entries(draw: st.DrawFn, whiteouts: list[str]) -> Entry:
    kind = draw(
        st.sampled_from(
            [
                *("file", "file", "file", "dir", "dir", "symlink", "symlink"),
                *("hardlink", "fifo", "whiteout", "opaque", "odd"),
            ]
        )
    )
    name = draw(paths())
    size_field = 0
    link = ""
    data = b""
    if kind == "file":
        flag = draw(st.sampled_from(FILE_FLAGS))
        data = draw(st.binary(max_size=1100))
        if draw(st.integers(0, 7)) == 0:
            name += "/"  # G1: a file all the same (or a directory, for \0)
    elif kind == "dir":
        flag = draw(st.sampled_from([b"5", b"5", b"\0"]))
        name += "/" if flag == b"\0" or draw(st.booleans()) else ""
        if flag == b"\0":
            data = draw(st.binary(max_size=600))
        else:
            size_field = draw(st.sampled_from([0, 0, 0, 512, 1000]))
    elif kind == "symlink":
        flag = b"2"
        link = draw(st.sampled_from([*TOP, "a/b", "b/x", "a/", "nowhere", "a/" + LONG]))
        size_field = draw(st.sampled_from([0, 0, 0, 100]))
    elif kind == "hardlink":
        flag = b"1"
        link = draw(paths())
    elif kind == "fifo":
        flag = b"6"
    elif kind in ("whiteout", "opaque"):
        flag = b"0"
        parent = draw(st.sampled_from(["", *TOP]))
        marker = ".wh..wh..opq" if kind == "opaque" else ".wh." + draw(st.sampled_from(whiteouts))
        name = f"{parent}/{marker}" if parent else marker
    else:
        flag = draw(st.sampled_from([b"V", b"M", b"N", b"Z", b"S", b"g", b"9"]))
        if flag == b"g":  # a global PAX header (G5)
            records = draw(
                st.sampled_from([{}, {"comment": "git"}, {"path": "glob"}, {"uid": "5"}])
            )
            return Entry("pax-global", b"g", records=tuple(records.items()))
    fits = len(name.encode()) <= 100 and len(name.encode()) > 0
    carriers = ["pax", "gnu", "both"] + (["ustar", "ustar"] if fits else [])
    if "/" in name and not name.endswith("/") and len(name.rpartition("/")[2]) <= 100:
        head = name.rpartition("/")[0]
        if 0 < len(head.encode()) <= 155:
            carriers.append("prefix")
    carrier = draw(st.sampled_from(carriers))
    decoy = pax_name = ""
    if carrier in ("pax", "gnu", "both"):
        decoy = draw(st.sampled_from(["", "foo/", "etc/passwd", name[:100], name[:99] + "/"]))
    if carrier == "both":
        pax_name = draw(st.sampled_from(["", "", "other"]))  # "": the same name twice
    return Entry(name, flag, data, link, carrier, decoy, size_field, pax_name)


@st.composite
def layers(draw: st.DrawFn) -> list[Entry]:
    whiteouts = ["gone", "gone-" + "g" * 100]  # names no other entry uses (see the docstring)
    return draw(st.lists(entries(whiteouts), min_size=1, max_size=12))


def render(items: list[Entry], *, go: bool, end: bool) -> bytes:
    out = b""
    for item in items:
        if item.flag == b"g":
            out += b"" if go else R.pax(dict(item.records), typeflag=b"g")
        else:
            out += (item.go() if go else item).raw()
    return out + (R.END if end else b"")


def test_generated_layers(tmp_path_factory: pytest.TempPathFactory) -> None:
    outcomes = {"applied": 0, "refused": 0}

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(items=layers(), end=st.sampled_from([True, True, True, False]))
    def check(items: list[Entry], end: bool) -> None:
        work = tmp_path_factory.mktemp("gen")
        layer = render(items, go=False, end=end)
        reference = render(items, go=True, end=end)
        applied = agree(layer, reference, work, generated=True)
        outcomes["applied" if applied else "refused"] += 1

    check()
    # a generator whose layers are all refused would prove nothing
    assert outcomes["applied"] >= 30, outcomes
