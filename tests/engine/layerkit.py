"""Helpers for the engine tests, handed to tests by the ``kit`` fixture (see conftest.py).

Layer tars are made in memory with Python's tarfile (ustar, GNU and PAX formats) or with GNU tar
from a directory on disk; whiteouts and opaque markers are written by hand in either on-disk
form, never through the engine's own adapter, so the tests do not check the engine against
itself.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import signal
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.store import Store

MTIME = 1_600_000_000  # a fixed mtime for every entry that does not ask for another
OPAQUE_XATTR = "trusted.overlay.opaque"
TAR_FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
}


class EngineHung(AssertionError):
    """The engine did not return within the test's deadline."""


@dataclass
class Spec:
    """One tar entry to write."""

    name: str
    kind: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)

    def tarinfo(self) -> tarfile.TarInfo:
        """The tarfile header of this entry."""
        info = tarfile.TarInfo(self.name)
        info.type = _TYPES[self.kind]
        info.mode = self.mode
        info.uid, info.gid = self.uid, self.gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.linkname = self.linkname
        info.devmajor, info.devminor = self.devmajor, self.devminor
        info.size = len(self.data) if self.kind == "file" else 0
        info.pax_headers = dict(self.pax)
        return info


@dataclass(frozen=True)
class Node:
    """What a path is, for comparing trees: kind, permission bits and content or target."""

    kind: str
    mode: int
    content: bytes | str | None = None  # file bytes, symlink target, (major, minor) as text


class HandLayer:
    """A layer directory written by hand, whiteouts in the given on-disk form.

    Paths are relative and ``/``-separated; missing parents are created (mode 0755).
    """

    def __init__(self, root: Path, form: str) -> None:
        self.root = root
        self.form = form
        root.mkdir(parents=True, exist_ok=True)

    def _parent(self, path: str) -> Path:
        parent = (self.root / path).parent
        parent.mkdir(parents=True, exist_ok=True)
        return parent

    def file(self, path: str, data: bytes = b"", mode: int = 0o644) -> HandLayer:
        self._parent(path)
        (self.root / path).write_bytes(data)
        os.chmod(self.root / path, mode)
        return self

    def dir(self, path: str, mode: int = 0o755) -> HandLayer:
        (self.root / path).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / path, mode)
        return self

    def symlink(self, path: str, target: str) -> HandLayer:
        self._parent(path)
        os.symlink(target, self.root / path)
        return self

    def hardlink(self, path: str, target: str) -> HandLayer:
        self._parent(path)
        os.link(self.root / target, self.root / path)
        return self

    def whiteout(self, path: str) -> HandLayer:
        Kit.make_whiteout(self.form, self._parent(path), path.rpartition("/")[2])
        return self

    def opaque(self, path: str) -> HandLayer:
        self.dir(path)
        Kit.make_opaque(self.form, self.root / path)
        return self

    def set_mtimes(self, mtime: int = MTIME) -> HandLayer:
        """Give every entry (the root included) the same mtime, deepest first."""
        paths = [Path(d) / n for d, ds, fs in os.walk(self.root) for n in ds + fs]
        for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
            os.utime(path, (mtime, mtime), follow_symlinks=False)
        os.utime(self.root, (mtime, mtime))
        return self


class Kit:
    """Builders and inspectors for layers, trees and stores."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._n = 0

    # -- tar entries -------------------------------------------------------------------------

    @staticmethod
    def file(name: str, data: bytes = b"", *, mode: int = 0o644, **kw: Any) -> Spec:
        return Spec(name, "file", data, mode=mode, **kw)

    @staticmethod
    def dir(name: str, *, mode: int = 0o755, **kw: Any) -> Spec:
        return Spec(name.rstrip("/") + "/", "dir", mode=mode, **kw)

    @staticmethod
    def symlink(name: str, target: str, **kw: Any) -> Spec:
        return Spec(name, "symlink", mode=kw.pop("mode", 0o777), linkname=target, **kw)

    @staticmethod
    def hardlink(name: str, target: str, **kw: Any) -> Spec:
        return Spec(name, "hardlink", linkname=target, **kw)

    @staticmethod
    def fifo(name: str, *, mode: int = 0o600, **kw: Any) -> Spec:
        return Spec(name, "fifo", mode=mode, **kw)

    @staticmethod
    def char(name: str, major: int, minor: int, *, mode: int = 0o666, **kw: Any) -> Spec:
        return Spec(name, "char", mode=mode, devmajor=major, devminor=minor, **kw)

    @staticmethod
    def block(name: str, major: int, minor: int, *, mode: int = 0o660, **kw: Any) -> Spec:
        return Spec(name, "block", mode=mode, devmajor=major, devminor=minor, **kw)

    @staticmethod
    def whiteout(path: str) -> Spec:
        """``dir/.wh.name``: ``path`` is deleted from the layers below."""
        parent, _, name = path.rpartition("/")
        return Spec(f"{parent}/.wh.{name}" if parent else f".wh.{name}", "file", mode=0o600)

    @staticmethod
    def opaque(directory: str) -> Spec:
        """``dir/.wh..wh..opq``: the directory hides its children in the layers below."""
        return Spec(f"{directory.rstrip('/')}/.wh..wh..opq", "file", mode=0o600)

    # -- whole layers ------------------------------------------------------------------------

    @staticmethod
    def tar(entries: Iterable[Spec], fmt: str = "pax", *, end: bool = True) -> bytes:
        """A tar of ``entries`` in ``ustar``, ``gnu`` or ``pax`` format.

        ``end=False`` leaves out the end-of-archive blocks: the stream stops right after the
        last entry, at a header boundary.
        """
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=TAR_FORMATS[fmt], encoding="utf-8") as tf:
            for spec in entries:
                tf.addfile(spec.tarinfo(), io.BytesIO(spec.data) if spec.kind == "file" else None)
            if not end:
                return buf.getvalue()[: tf.offset]  # taken before close() adds the end
        return buf.getvalue()

    def gnu_tar(self, src: Path, fmt: str = "gnu", *extra: str) -> bytes:
        """GNU tar's archive of the directory ``src`` (``tar -cf - -C src .``)."""
        cmd = ["tar", f"--format={fmt}", "--sort=name", *extra, "-cf", "-", "-C", str(src), "."]
        return subprocess.run(cmd, check=True, capture_output=True).stdout

    def hand(self, root: Path, form: str) -> HandLayer:
        """A layer directory at ``root`` to fill by hand, whiteouts in ``form``."""
        return HandLayer(root, form)

    def scratch(self, name: str = "dir") -> Path:
        """A new empty directory outside the test's ``tmp_path``."""
        self._n += 1
        path = self.work / f"{name}-{self._n}"
        path.mkdir(parents=True)
        return path

    @staticmethod
    def gzip(data: bytes) -> bytes:
        return gzip.compress(data, mtime=0)

    @staticmethod
    def zstd(data: bytes) -> bytes:
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)

    @staticmethod
    def bzip2(data: bytes) -> bytes:
        return bz2.compress(data)

    @staticmethod
    def xz(data: bytes) -> bytes:
        return lzma.compress(data)

    @staticmethod
    def members(data: bytes) -> list[tarfile.TarInfo]:
        """The entries of a tar (plain or gzip), as Python's tarfile reads them."""
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            return tf.getmembers()

    @staticmethod
    def contents(data: bytes) -> dict[str, bytes]:
        """Regular files' contents in a tar, by entry name."""
        out: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for member in tf:
                f = tf.extractfile(member) if member.isreg() else None
                if f is not None:
                    out[member.name] = f.read()
        return out

    # -- stores ------------------------------------------------------------------------------

    @staticmethod
    def stack(store: Store, tars: list[bytes]) -> list[Path]:
        """Unpack uncompressed layer tars (bottom first) as snapshots; their directories."""
        diff_ids = [sha256_bytes(t) for t in tars]
        paths = []
        for cid, did, data in zip(chain_ids(diff_ids), diff_ids, tars, strict=True):
            paths.append(store.snapshots.unpack(cid, io.BytesIO(data), diff_id=did).path)
        return paths

    # -- hand-made whiteouts -----------------------------------------------------------------

    @staticmethod
    def make_whiteout(form: str, directory: Path, name: str) -> None:
        """Record ``directory/name`` as deleted, in the on-disk ``form``."""
        if form == "oci":
            (directory / f".wh.{name}").write_bytes(b"")
        else:
            os.mknod(directory / name, 0o600 | stat.S_IFCHR, os.makedev(0, 0))

    @staticmethod
    def make_opaque(form: str, directory: Path) -> None:
        """Mark ``directory`` opaque, in the on-disk ``form``."""
        if form == "oci":
            (directory / ".wh..wh..opq").write_bytes(b"")
        else:
            os.setxattr(directory, OPAQUE_XATTR, b"y")

    # -- inspecting trees --------------------------------------------------------------------

    @staticmethod
    def state(root: Path) -> dict[str, tuple[Any, ...]]:
        """Everything about every path under ``root`` (itself included): to prove it untouched."""
        out: dict[str, tuple[Any, ...]] = {}

        def visit(path: Path, rel: str) -> None:
            st = os.lstat(path)
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            try:
                xattrs = sorted(
                    (n, os.getxattr(path, n, follow_symlinks=False))
                    for n in os.listxattr(path, follow_symlinks=False)
                )
            except OSError:
                xattrs = []
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_nlink,
                st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                st.st_mtime_ns,
                st.st_rdev,
                content,
                tuple(xattrs),
            )
            if stat.S_ISDIR(st.st_mode):
                for child in sorted(os.listdir(path)):
                    visit(path / child, f"{rel}/{child}" if rel != "." else child)

        visit(root, ".")
        return out

    @staticmethod
    def node(path: Path) -> Node:
        """The kind, mode and content of one path on disk (not following symlinks)."""
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            return Node("file", mode, path.read_bytes())
        if stat.S_ISDIR(st.st_mode):
            return Node("dir", mode)
        if stat.S_ISLNK(st.st_mode):
            return Node("symlink", mode, os.readlink(path))
        if stat.S_ISFIFO(st.st_mode):
            return Node("fifo", mode)
        kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
        return Node(kind, mode, f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}")

    def tree(self, root: Path) -> dict[str, Node]:
        """Every path below ``root`` (relative, ``/``-separated) and what it is."""
        out: dict[str, Node] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                out[path.relative_to(root).as_posix()] = self.node(path)
        return out

    # -- guarding against hangs --------------------------------------------------------------

    @staticmethod
    @contextmanager
    def deadline(seconds: float) -> Iterator[None]:
        """Fail with EngineHung instead of hanging the suite when the block takes too long."""

        def expired(signum: int, frame: object) -> None:
            raise EngineHung(f"the engine did not return within {seconds} s")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class RawTar:
    """Tar headers written field by field, for what tarfile will not write: a ustar name that
    disagrees with the PAX or GNU long name, odd type flags, sizes on links, no end blocks.

    Each method returns bytes; concatenate them and add ``END`` to make an archive.
    """

    END = bytes(1024)
    USTAR = b"ustar\x0000"
    GNU = b"ustar  \x00"

    @staticmethod
    def octal(value: int, width: int) -> bytes:
        return b"%0*o\0" % (width - 1, value)

    @classmethod
    def header(
        cls,
        name: str | bytes,
        typeflag: bytes = b"0",
        size: int = 0,
        *,
        linkname: str | bytes = b"",
        prefix: bytes = b"",
        mode: int = 0o644,
        magic: bytes = USTAR,
        mtime: int = MTIME,
        fields: dict[int, bytes] | None = None,
    ) -> bytes:
        """One 512-byte header; ``fields`` overwrites raw bytes at the given offsets."""
        raw_name = name.encode() if isinstance(name, str) else name
        raw_link = linkname.encode() if isinstance(linkname, str) else linkname
        h = bytearray(512)
        h[0 : len(raw_name[:100])] = raw_name[:100]
        h[100:108] = cls.octal(mode, 8)
        h[108:116] = cls.octal(0, 8)
        h[116:124] = cls.octal(0, 8)
        h[124:136] = cls.octal(size, 12)
        h[136:148] = cls.octal(mtime, 12)
        h[156:157] = typeflag
        h[157 : 157 + len(raw_link[:100])] = raw_link[:100]
        h[257:265] = magic
        h[345 : 345 + len(prefix)] = prefix
        for offset, value in (fields or {}).items():
            h[offset : offset + len(value)] = value
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)

    @staticmethod
    def pad(data: bytes) -> bytes:
        return data + bytes(-len(data) % 512)

    @classmethod
    def entry(
        cls, name: str | bytes, typeflag: bytes = b"0", data: bytes = b"", **kw: Any
    ) -> bytes:
        """A header and its (padded) contents; the size field is ``len(data)``."""
        return cls.header(name, typeflag, len(data), **kw) + cls.pad(data)

    @classmethod
    def pax(cls, records: dict[str, str], *, typeflag: bytes = b"x") -> bytes:
        """A PAX extended header (``x``, or ``g`` for a global one) holding ``records``."""
        body = b""
        for key, value in records.items():
            record = b" " + key.encode() + b"=" + value.encode() + b"\n"
            length = len(record) + 1
            while len(str(length)) + len(record) != length:
                length += 1
            body += str(length).encode() + record
        return cls.header("PaxHeaders/entry", typeflag, len(body)) + cls.pad(body)

    @classmethod
    def gnu_long(cls, kind: bytes, value: str) -> bytes:
        """A GNU long name (``L``) or long link (``K``) header with its contents."""
        data = value.encode() + b"\0"
        return cls.header("././@LongLink", kind, len(data), magic=cls.GNU) + cls.pad(data)
