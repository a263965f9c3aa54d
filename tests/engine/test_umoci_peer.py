"""layerhub against a real peer: umoci (the OCI reference unpacker) and the kernel's overlayfs.

The test builds a five-layer OCI image layout itself (GNU tar and Python's tarfile; nothing is
kept in git), has ``umoci unpack`` extract it, unpacks the same blobs into layerhub snapshots
and compares umoci's rootfs with layerhub's UnionView path by path: type, mode (setuid bits
included), owner, size, content, symlink target, mtime of regular files, device numbers, user
xattrs and which files are hardlinks of each other. It does so for both whiteout forms, mounts
the overlay-form snapshots with the kernel's overlayfs to compare that too, and round-trips a
commit: a layer made by ``diff_to_store`` is appended to the image and unpacked by umoci.

umoci 0.4.7 refuses ``tar+zstd`` layers ("blob is not correct mediatype"), so the layout holds
two manifests of the same layers: ``gzip`` (every layer gzip; what umoci unpacks) and ``mixed``
(layer 4 zstd; what layerhub unpacks). Both give the same DiffIDs, so the trees must be equal.
The zstd blobs themselves are read by a peer that can: GNU tar with ``--zstd``, layer by layer.

Without umoci, GNU tar, zstd or root these tests are skipped; in CI they fail instead.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from layerhub.engine.diff import diff_to_store
from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.store import Store
from layerhub.engine.union import UnionView
from layerhub.engine.whiteouts import overlay_supported
from tests.support.blobs import local_blobs
from tests.support.peers import require, require_gnu_tar, require_peer, require_root


@pytest.fixture(autouse=True, scope="module")
def _peers() -> None:
    """umoci, GNU tar and zstd, and root: skipped without them, failed in CI."""
    require_peer("umoci")
    require_gnu_tar()
    require_peer("zstd")
    # Owners, setuid bits and device nodes are only reproduced by a root unpack, on both sides.
    require_root("a peer comparison with owners")


MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"

T0 = 1_700_000_000  # the base layer's mtimes
NS = 1_000_000_000


def _rand(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- building layers ---------------------------------------------------------------------------


class StagedTree:
    """A directory on disk whose GNU tar is a layer: files keep the metadata given here.

    Every parent must be declared with ``dir`` first, because GNU tar records each parent as an
    entry and its mode and owner then overwrite the lower layers' directory.
    """

    def __init__(self, root: Path, mtime_ns: int) -> None:
        self.root = root
        self.mtime_ns = mtime_ns
        self._dirs: list[tuple[Path, int, int, int]] = []
        root.mkdir(parents=True)
        self.dir(".")

    def _path(self, rel: str) -> Path:
        path = self.root / rel
        assert path.parent.is_dir(), f"declare {path.parent} before {rel}"
        return path

    def _finish(
        self, path: Path, mode: int | None, uid: int, gid: int, mtime_ns: int | None
    ) -> None:
        os.chown(path, uid, gid, follow_symlinks=False)
        if mode is not None:
            os.chmod(path, mode)  # after chown, which clears setuid bits
        ns = self.mtime_ns if mtime_ns is None else mtime_ns
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def dir(self, rel: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        path = self.root / rel
        path.mkdir(exist_ok=True)
        self._dirs.append((path, mode, uid, gid))

    def file(
        self,
        rel: str,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime_ns: int | None = None,
    ) -> None:
        path = self._path(rel)
        path.write_bytes(data)
        self._finish(path, mode, uid, gid, mtime_ns)

    def whiteout(self, rel: str) -> None:
        parent, _, name = rel.rpartition("/")
        self.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")

    def opaque(self, rel: str) -> None:
        self.file(f"{rel}/.wh..wh..opq")

    def symlink(self, rel: str, target: str, uid: int = 0, gid: int = 0) -> None:
        path = self._path(rel)
        os.symlink(target, path)
        self._finish(path, None, uid, gid, None)

    def hardlink(self, rel: str, target: str) -> None:
        os.link(self.root / target, self._path(rel))

    def device(self, rel: str, major: int, minor: int, mode: int = 0o666) -> None:
        path = self._path(rel)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        self._finish(path, mode, 0, 0, None)

    def fifo(self, rel: str, mode: int = 0o600) -> None:
        path = self._path(rel)
        os.mkfifo(path)
        self._finish(path, mode, 0, 0, None)

    def tar(self, fmt: str) -> bytes:
        """The layer, made by GNU tar (``gnu`` or ``posix`` format), names sorted."""
        # deepest first, so setting a child's metadata does not undo its parent's mtime
        for path, mode, uid, gid in sorted(self._dirs, key=lambda d: len(d[0].parts), reverse=True):
            self._finish(path, mode, uid, gid, None)
        out = self.root.with_suffix(".tar")
        cmd = ["tar", "--create", f"--file={out}", f"--directory={self.root}", "--sort=name"]
        cmd.append(f"--format={fmt}")
        if fmt == "posix":
            cmd.append("--pax-option=delete=atime,delete=ctime")
        subprocess.run([*cmd, "."], check=True, capture_output=True)
        return out.read_bytes()


class TarLayer:
    """A layer written entry by entry with Python's tarfile (PAX), as some builders do."""

    def __init__(self, mtime: float) -> None:
        self.mtime = mtime
        self._entries: list[tuple[tarfile.TarInfo, bytes]] = []

    def _add(self, name: str, kind: bytes, data: bytes = b"", **attrs: Any) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mtime = attrs.pop("mtime", self.mtime)
        info.mode = attrs.pop("mode", 0o644)
        info.size = len(data)
        for key, value in attrs.items():
            setattr(info, key, value)
        self._entries.append((info, data))

    def dir(self, name: str, mode: int = 0o755, **attrs: Any) -> None:
        self._add(name + "/", tarfile.DIRTYPE, mode=mode, **attrs)

    def file(self, name: str, data: bytes, mode: int = 0o644, **attrs: Any) -> None:
        self._add(name, tarfile.REGTYPE, data, mode=mode, **attrs)

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        self._add(f"{parent}/.wh.{base}", tarfile.REGTYPE, mode=0o600)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, tarfile.SYMTYPE, mode=0o777, linkname=target)

    def hardlink(self, name: str, target: str) -> None:
        self._add(name, tarfile.LNKTYPE, linkname=target)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, data in self._entries:
                tf.addfile(info, io.BytesIO(data) if data else None)
        return buf.getvalue()


def build_layers(work: Path) -> list[bytes]:
    """The five uncompressed layer tars, bottom first."""
    layers: list[bytes] = []

    # 1: a realistic small root filesystem (GNU tar, gnu format: long names as ././@LongLink)
    base = StagedTree(work / "l1", T0 * NS)
    for d in ("bin", "dev", "etc", "etc/alternatives", "etc/ssl", "home", "opt", "opt/app"):
        base.dir(d)
    for d in ("opt/app/plugins", "run", "srv", "srv/www", "srv/www/static", "usr", "usr/bin"):
        base.dir(d)
    for d in ("usr/lib", "usr/share", "usr/share/doc", "usr/share/doc/café", "var", "var/cache"):
        base.dir(d)
    for d in ("var/cache/apt", "var/lib", "var/log", "var/log/app", "var/log/app/old"):
        base.dir(d)
    base.dir("etc/ssl/private", 0o700)
    base.dir("home/user", 0o700, uid=1000, gid=1000)
    base.dir("home/user/.ssh", 0o700, uid=1000, gid=1000)  # stays empty
    base.dir("tmp", 0o1777)
    base.dir("var/empty", 0o711)  # stays empty
    base.file("bin/sh", b"#!/bin/sh\necho sh\n" * 30, 0o755)
    base.file("bin/su", _rand(1, 9_000), 0o4755)
    base.file("bin/wall", _rand(2, 7_000), 0o2755, gid=5)
    base.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:\n")
    base.file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640, gid=42)
    base.file("etc/hostname", b"peer\n")
    base.file("etc/motd", b"welcome\n")
    base.file("etc/os-release", b'ID=layerhub\nNAME="Layerhub Test"\n')
    base.file("etc/empty.conf")
    base.file("etc/with space.conf", b"a = 1\n")
    base.file("etc/ssl/private/key.pem", _rand(3, 1_700), 0o600)
    base.symlink("etc/alternatives/editor", "/usr/bin/vim")
    base.file("usr/bin/vim", _rand(4, 50_000), 0o755)
    base.hardlink("usr/bin/view", "usr/bin/vim")
    base.hardlink("usr/bin/rview", "usr/bin/vim")
    base.symlink("usr/bin/vi", "vim")
    base.file("usr/lib/libz.so.1.2.13", _rand(5, 20_000), 0o755)
    base.symlink("usr/lib/libz.so.1", "libz.so.1.2.13")
    base.symlink("usr/lib/libz.so", "../lib/libz.so.1")
    base.file("usr/share/doc/café/README", "Ünïcödé docs\n".encode())
    base.file("usr/share/doc/naïve-日本語.txt", "日本語\n".encode())
    deep = "usr/share/doc/" + "/".join(f"level-{i:02d}-of-a-long-path" for i in range(5))
    parts = deep.split("/")
    for i in range(4, len(parts) + 1):
        base.dir("/".join(parts[:i]))
    base.file(f"{deep}/file-with-a-name-past-one-hundred-bytes.txt", b"deep\n")
    base.file("usr/share/big.bin", _rand(6, 300_000))
    base.file("home/user/.bashrc", b"export PS1='$ '\n", uid=1000, gid=1000)
    base.file("home/user/notes.txt", b"secret notes\n", 0o600, uid=1000, gid=1000)
    base.file("var/cache/apt/pkgcache.bin", _rand(7, 4_000))
    for name in ("app/a.log", "app/b.log", "app/old/c.log"):
        base.file(f"var/log/{name}", f"{name}\n".encode() * 20, 0o640)
    base.symlink("var/lib/dangling", "/nonexistent/target")
    base.file("opt/app/config.yml", b"debug: false\n")
    base.file("opt/app/plugins/x.so", _rand(8, 3_000), 0o755)
    base.file("opt/app/plugins/y.so", _rand(9, 3_000), 0o755)
    base.file("srv/data", b"a file that becomes a directory\n")
    base.file("srv/www/index.html", b"<h1>hi</h1>\n")
    base.file("srv/www/static/app.js", b"console.log(1)\n")
    base.device("dev/null", 1, 3)
    base.device("dev/zero", 1, 5)
    base.fifo("run/initctl")
    layers.append(base.tar("gnu"))

    # 2: modify, chmod, chown, delete a file and a hardlink, add a setuid file (tarfile, PAX)
    two = TarLayer(T0 + 100.25)
    for d in ("bin", "etc", "usr", "usr/bin", "usr/local", "usr/local/bin"):
        two.dir(d)
    two.dir("usr/share")
    two.dir("usr/share/doc")
    two.file("bin/sh", b"#!/bin/sh\necho sh\n" * 30, 0o700)  # same bytes, new mode
    two.file("etc/hostname", b"peer\n", 0o664, uid=1000, gid=1000)  # new owner
    two.file("etc/motd", b"welcome, layer 2\n")
    two.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:\n")
    two.whiteout("etc/os-release")
    two.whiteout("usr/bin/view")  # one name of a hardlinked file; vim and rview stay
    two.symlink("usr/bin/vi", "/usr/bin/vim")  # relative becomes absolute
    tool = {"pax_headers": {"SCHILY.xattr.user.comment": "built by layer 2"}}
    two.file("usr/local/bin/tool", _rand(10, 12_000), 0o4750, gid=50, **tool)
    two.hardlink("usr/local/bin/tool-alias", "usr/local/bin/tool")
    two.file("usr/share/doc/naïve-日本語.txt", "日本語, layer 2\n".encode(), mtime=T0 + 150)
    layers.append(two.tar())

    # 3: delete a directory, make one opaque with new children, nanosecond mtimes (GNU posix)
    three = StagedTree(work / "l3", (T0 + 200) * NS + 123_456_789)
    for d in ("etc", "opt", "opt/app", "opt/app/plugins", "usr", "usr/share", "usr/share/doc"):
        three.dir(d)
    for d in ("usr/share/doc/café", "var", "var/lib", "var/lib/new-empty", "var/log"):
        three.dir(d)
    three.dir("home")
    three.dir("home/user", 0o700, uid=1000, gid=1000)
    three.whiteout("var/log/app")
    three.opaque("opt/app")
    three.file("opt/app/new.yml", b"debug: true\n")
    three.file("opt/app/plugins/z.so", _rand(11, 2_000), 0o755)
    three.file("etc/motd", b"welcome, layer 3\n", mtime_ns=(T0 + 201) * NS + 987_654_321)
    three.file("home/user/notes.txt", b"newer notes\n", 0o600, uid=1000, gid=1000)
    three.file("usr/share/doc/café/README", "Ünïcödé docs, layer 3\n".encode())
    layers.append(three.tar("posix"))

    # 4: a file becomes a directory and a directory a file (tarfile; zstd for layerhub)
    four = TarLayer(T0 + 300)
    for d in ("etc", "etc/ssl", "srv", "srv/data", "usr", "usr/share", "var"):
        four.dir(d)
    four.dir("etc/ssl/private", 0o700)
    four.dir("var/empty", 0o700)  # a directory's mode changes
    four.file("srv/data/inner.txt", b"now a directory\n")
    four.file("srv/www", b"now a file\n")
    four.file("usr/share/big.bin", _rand(12, 310_000))
    four.file("etc/ssl/private/key.pem", _rand(13, 1_800), 0o600)
    layers.append(four.tar())

    # 5: delete and re-create in one layer, delete across layers (GNU tar, gnu format)
    five = StagedTree(work / "l5", (T0 + 400) * NS)
    for d in ("etc", "etc/alternatives", "opt", "opt/app", "srv", "usr", "usr/bin", "var"):
        five.dir(d)
    five.dir("var/cache")
    five.whiteout("var/cache/apt")  # deleted, then a new directory of the same name
    five.dir("var/cache/apt", 0o750)
    five.file("var/cache/apt/fresh.bin", _rand(14, 2_500))
    five.whiteout("etc/motd")  # present in layers 1, 2 and 3
    five.whiteout("opt/app/new.yml")  # added by the opaque layer
    five.whiteout("srv/www")  # a file in layer 4, a directory in layer 1: both go
    five.file("usr/bin/view", b"a new file where a deleted hardlink was\n", 0o755)
    five.file("etc/alternatives/editor", b"a file where a symlink was\n")
    layers.append(five.tar("gnu"))
    return layers


# -- the OCI image layout ----------------------------------------------------------------------


def compress(data: bytes, how: str, work: Path) -> bytes:
    """gzip with Python, zstd with the zstd command line tool."""
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    src = work / "zstd-input.tar"
    src.write_bytes(data)
    subprocess.run(["zstd", "-q", "-f", "-19", str(src), "-o", f"{src}.zst"], check=True)
    return Path(f"{src}.zst").read_bytes()


@dataclass
class Layout:
    """An OCI image layout on disk (image-spec v1.0: blobs/, index.json, oci-layout)."""

    path: Path

    def blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256_bytes(data)
        self.blob(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def _json(self, path: Path) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(path.read_bytes())
        return document

    def index(self) -> dict[str, Any]:
        return self._json(self.path / "index.json")

    def manifest(self, tag: str) -> dict[str, Any]:
        for desc in self.index()["manifests"]:
            if desc["annotations"][REF_NAME] == tag:
                return self._json(self.blob(desc["digest"]))
        raise KeyError(tag)

    def config(self, tag: str) -> dict[str, Any]:
        return self._json(self.blob(self.manifest(tag)["config"]["digest"]))

    def tag(self, tag: str, layers: list[dict[str, Any]], diff_ids: list[str]) -> None:
        """Write a config and manifest for ``layers`` and name the manifest ``tag``."""
        config = {
            "created": "2023-11-14T22:13:20Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i + 1}"} for i in range(len(layers))],
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": self.put(json.dumps(config).encode(), MT_CONFIG),
            "layers": layers,
        }
        desc = self.put(json.dumps(manifest).encode(), MT_MANIFEST)
        desc["annotations"] = {REF_NAME: tag}
        index_path = self.path / "index.json"
        index: dict[str, Any] = (
            self.index() if index_path.exists() else {"schemaVersion": 2, "manifests": []}
        )
        index["mediaType"] = MT_INDEX
        index["manifests"] = [
            m for m in index["manifests"] if m["annotations"][REF_NAME] != tag
        ] + [desc]
        index_path.write_text(json.dumps(index))

    @classmethod
    def create(cls, path: Path) -> Layout:
        (path / "blobs" / "sha256").mkdir(parents=True)
        (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        return cls(path)


@dataclass
class Image:
    layout: Layout
    diff_ids: list[str]


ZSTD_LAYER = 3  # index of the layer layerhub reads zstd-compressed


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """Tags ``gzip`` (every layer gzip) and ``mixed`` (layer 4 zstd) of the same five layers."""
    work = tmp_path_factory.mktemp("peer-build")
    tars = build_layers(work)
    layout = Layout.create(work / "layout")
    diff_ids = [sha256_bytes(t) for t in tars]
    gz = [layout.put(compress(t, "gzip", work), MT_LAYER["gzip"]) for t in tars]
    mixed = list(gz)
    mixed[ZSTD_LAYER] = layout.put(compress(tars[ZSTD_LAYER], "zstd", work), MT_LAYER["zstd"])
    layout.tag("gzip", gz, diff_ids)
    layout.tag("mixed", mixed, diff_ids)
    return Image(layout, diff_ids)


class UmociRefused(Exception):
    """umoci exited non-zero; the message is its stderr."""


def umoci_unpack(layout: Layout, tag: str, bundle: Path) -> Path:
    """``umoci unpack`` the tag into a new bundle; its rootfs."""
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout.path}:{tag}", str(bundle)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise UmociRefused(proc.stderr.strip())
    return bundle / "rootfs"


@pytest.fixture(scope="module")
def umoci_rootfs(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return umoci_unpack(image.layout, "gzip", tmp_path_factory.mktemp("umoci") / "bundle")


def layerhub_unpack(store: Store, layout: Layout, tag: str) -> list[Path]:
    """Ingest the tag's layer blobs into the store and unpack each as the snapshot of its
    ChainID; the snapshot paths, bottom first."""
    layers = layout.manifest(tag)["layers"]
    diff_ids = layout.config(tag)["rootfs"]["diff_ids"]
    paths = []
    for layer, diff_id, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
        with open(layout.blob(layer["digest"]), "rb") as f:
            store.blobs.ingest(f, layer["digest"], layer["size"])
        with store.blobs.open(layer["digest"]) as f:
            result = store.snapshots.unpack(chain, f, diff_id=diff_id)
        assert result.applied is not None
        expected = "zstd" if layer["mediaType"].endswith("+zstd") else "gzip"
        assert result.applied.compression == expected
        assert result.applied.diff_id == diff_id
        paths.append(result.path)
    return paths


FORMS = ["oci", "overlay"]


def make_store(root: Path, form: str) -> Store:
    root.mkdir(parents=True, exist_ok=True)
    if form == "overlay":
        require(
            overlay_supported(root),
            "this filesystem cannot hold overlay whiteouts (mknod 0:0, trusted xattrs)",
        )
    return Store(root / "store", whiteouts=form)


# -- describing a tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """What must agree about one path between two unpackers."""

    kind: str
    mode: int  # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    size: int | None  # regular files and symlinks (a directory's size is the filesystem's)
    sha256: str | None
    target: str | None
    mtime_ns: int | None  # regular files
    rdev: tuple[int, int] | None
    xattrs: tuple[tuple[str, bytes], ...]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "char" if stat.S_ISCHR(mode) else "block" if stat.S_ISBLK(mode) else "fifo"


def _user_xattrs(host: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(
        (n, os.getxattr(host, n, follow_symlinks=False)) for n in sorted(names) if n[:5] == "user."
    )


def _node(st: os.stat_result, host: Path, content: bytes | None, target: str | None) -> Node:
    kind = _kind(st.st_mode)
    return Node(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size if kind in ("file", "symlink") else None,
        sha256=hashlib.sha256(content).hexdigest() if content is not None else None,
        target=target,
        mtime_ns=st.st_mtime_ns if kind == "file" else None,
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else None,
        xattrs=_user_xattrs(host),
    )


@dataclass
class TreeDesc:
    nodes: dict[str, Node]
    hardlinks: set[frozenset[str]]  # groups of paths sharing an inode


def _groups(inodes: dict[str, tuple[int, int]]) -> set[frozenset[str]]:
    by_inode: dict[tuple[int, int], set[str]] = {}
    for path, key in inodes.items():
        by_inode.setdefault(key, set()).add(path)
    return {frozenset(g) for g in by_inode.values() if len(g) > 1}


def describe_dir(root: Path) -> TreeDesc:
    """A real directory tree (umoci's rootfs, a kernel overlay mount), root excluded."""
    nodes: dict[str, Node] = {}
    inodes: dict[str, tuple[int, int]] = {}

    def walk(directory: Path, prefix: str) -> None:
        for entry in os.scandir(directory):
            path, host = f"{prefix}/{entry.name}", Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            content = host.read_bytes() if stat.S_ISREG(st.st_mode) else None
            target = os.readlink(host) if stat.S_ISLNK(st.st_mode) else None
            nodes[path] = _node(st, host, content, target)
            if stat.S_ISREG(st.st_mode):
                inodes[path] = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                walk(host, path)

    walk(root, "")
    return TreeDesc(nodes, _groups(inodes))


def describe_view(view: UnionView) -> TreeDesc:
    """layerhub's merged tree, through the UnionView API."""
    nodes: dict[str, Node] = {}
    inodes: dict[str, tuple[int, int]] = {}
    for entry in view.walk():
        st = entry.st
        assert view.lstat(entry.path).host_path == entry.host_path
        content = view.read_bytes(entry.path) if stat.S_ISREG(st.st_mode) else None
        target = view.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else None
        nodes[entry.path] = _node(st, entry.host_path, content, target)
        if stat.S_ISREG(st.st_mode):
            inodes[entry.path] = (st.st_dev, st.st_ino)
    return TreeDesc(nodes, _groups(inodes))


def tree_differences(left: TreeDesc, right: TreeDesc) -> list[str]:
    """Each path that differs, with only the fields that differ."""
    problems = [f"{p}: only in the first" for p in sorted(left.nodes.keys() - right.nodes.keys())]
    problems += [f"{p}: only in the second" for p in sorted(right.nodes.keys() - left.nodes.keys())]
    for path in sorted(left.nodes.keys() & right.nodes.keys()):
        a, b = left.nodes[path], right.nodes[path]
        for f in fields(Node):
            if getattr(a, f.name) != getattr(b, f.name):
                problems.append(
                    f"{path}: {f.name} {getattr(a, f.name)!r} != {getattr(b, f.name)!r}"
                )
    if left.hardlinks != right.hardlinks:
        problems.append(f"hardlink groups {left.hardlinks} != {right.hardlinks}")
    return problems


def assert_same_tree(left: TreeDesc, right: TreeDesc, what: str) -> None:
    problems = tree_differences(left, right)
    assert not problems, f"{what} differ:\n  " + "\n  ".join(problems)


def check_image_content(tree: TreeDesc) -> None:
    """Spot checks that the image holds what its layers meant, so two unpackers cannot agree
    on a wrong tree by accident of how the layout was built."""
    nodes = tree.nodes
    assert nodes["/bin/su"].mode == 0o4755
    assert nodes["/usr/local/bin/tool"].mode == 0o4750
    assert nodes["/usr/local/bin/tool"].xattrs == (("user.comment", b"built by layer 2"),)
    assert nodes["/tmp"].mode == 0o1777
    assert (nodes["/home/user/notes.txt"].uid, nodes["/home/user/notes.txt"].mode) == (1000, 0o600)
    assert nodes["/usr/lib/libz.so"].target == "../lib/libz.so.1"
    assert nodes["/var/lib/dangling"].target == "/nonexistent/target"
    assert nodes["/dev/null"].rdev == (1, 3)
    assert nodes["/run/initctl"].kind == "fifo"
    assert nodes["/srv/data"].kind == "dir"
    assert nodes["/usr/bin/view"].kind == "file"
    assert nodes["/etc/alternatives/editor"].kind == "file"
    assert nodes["/var/cache/apt"].mode == 0o750
    assert nodes["/var/empty"].mode == 0o700
    assert nodes["/home/user/.ssh"].kind == "dir"
    assert nodes["/var/lib/new-empty"].kind == "dir"
    for gone in (
        "/etc/motd",
        "/etc/os-release",
        "/var/log/app",
        "/opt/app/config.yml",
        "/opt/app/plugins/x.so",
        "/opt/app/new.yml",
        "/srv/www",
        "/var/cache/apt/pkgcache.bin",
    ):
        assert gone not in nodes, f"{gone} should be deleted"
    assert sorted(p for p in nodes if p.startswith("/opt/")) == [
        "/opt/app",
        "/opt/app/plugins",
        "/opt/app/plugins/z.so",
    ]
    assert {frozenset({"/usr/bin/vim", "/usr/bin/rview"})} <= tree.hardlinks
    assert any(len(p.encode()) > 150 for p in nodes)
    assert not any("/.wh." in p for p in nodes)


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_layerhub_unpacks_what_umoci_unpacks(
    form: str, image: Image, umoci_rootfs: Path, tmp_path: Path
) -> None:
    store = make_store(tmp_path, form)
    snapshots = layerhub_unpack(store, image.layout, "mixed")
    peer = describe_dir(umoci_rootfs)
    check_image_content(peer)
    assert_same_tree(peer, describe_view(UnionView(snapshots, store.whiteouts)), "umoci, layerhub")


@pytest.fixture
def overlay_mount(tmp_path: Path) -> Iterator[Callable[[list[Path]], Path]]:
    """A function that mounts lower directories (bottom first) read-only; unmounted after."""
    mounted: list[Path] = []

    def mount(lowers: list[Path]) -> Path:
        merged = tmp_path / f"merged-{len(mounted)}"
        merged.mkdir()
        lowerdir = ":".join(str(p) for p in reversed(lowers))
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", str(merged)],
            capture_output=True,
            text=True,
        )
        require(proc.returncode == 0, f"the kernel refused an overlay mount: {proc.stderr.strip()}")
        mounted.append(merged)
        return merged

    yield mount
    for merged in reversed(mounted):
        subprocess.run(["umount", str(merged)], check=True)


def test_kernel_overlay_of_snapshots_matches_umoci_and_union_view(
    image: Image,
    umoci_rootfs: Path,
    tmp_path: Path,
    overlay_mount: Callable[[list[Path]], Path],
) -> None:
    store = make_store(tmp_path, "overlay")
    snapshots = layerhub_unpack(store, image.layout, "mixed")
    kernel = describe_dir(overlay_mount(snapshots))
    view = describe_view(UnionView(snapshots, store.whiteouts))
    problems = [f"umoci, kernel: {p}" for p in tree_differences(describe_dir(umoci_rootfs), kernel)]
    problems += [f"kernel, layerhub: {p}" for p in tree_differences(kernel, view)]
    assert not problems, "\n".join(problems)


def copy_up(base: Path, upper: Path, rel: str, *, with_file: bool = False) -> Path:
    """Make ``rel``'s parents (and ``rel`` itself with ``with_file``) in ``upper`` as overlayfs
    copy-up does: same mode, owner and mtime as in ``base``."""
    parts = rel.split("/")
    for i in range(1, len(parts) + (1 if with_file else 0)):
        src, dst = base.joinpath(*parts[:i]), upper.joinpath(*parts[:i])
        if i == len(parts):
            shutil.copy2(src, dst, follow_symlinks=False)
        elif not dst.is_dir():
            dst.mkdir()
        else:
            continue
        st = os.lstat(src)
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return upper / rel


@pytest.mark.parametrize("form", FORMS)
def test_commit_round_trips_through_umoci(
    form: str, image: Image, umoci_rootfs: Path, tmp_path: Path
) -> None:
    store = make_store(tmp_path, form)
    snapshots = layerhub_unpack(store, image.layout, "gzip")
    base, upper = umoci_rootfs, tmp_path / "upper"
    upper.mkdir()
    now = T0 + 500

    passwd = copy_up(base, upper, "etc/passwd", with_file=True)
    passwd.write_bytes(passwd.read_bytes() + b"committer:x:1001:1001::/:\n")
    os.utime(passwd, (now, now))
    copy_up(base, upper, "etc/hostname")
    store.whiteouts.write_whiteout(upper / "etc", "hostname")
    copy_up(base, upper, "srv/data")
    store.whiteouts.write_whiteout(upper / "srv", "data")  # a directory
    su = copy_up(base, upper, "bin/su", with_file=True)
    os.chmod(su, 0o755)  # setuid dropped, content unchanged
    (upper / "etc/layerhub").mkdir(0o750)
    new_conf = upper / "etc/layerhub/committed.conf"
    new_conf.write_bytes(b"committed = true\n")
    todo = copy_up(base, upper, "home/user/todo.txt")
    todo.write_bytes(b"- ship it\n")
    os.chown(todo, 1000, 1000)
    doc = copy_up(base, upper, "usr/share/doc/ONLY.txt").parent
    store.whiteouts.write_opaque(doc)
    (doc / "ONLY.txt").write_bytes(b"the only doc left\n")
    os.symlink("/etc/alternatives/editor", copy_up(base, upper, "usr/bin/editor"))
    for path in (new_conf, new_conf.parent, todo, doc / "ONLY.txt"):
        os.utime(path, (now, now))

    layer = diff_to_store(upper, store.whiteouts, store.blobs)

    committed = Layout(tmp_path / "layout")
    shutil.copytree(image.layout.path, committed.path)
    shutil.copyfile(local_blobs(store).path(layer.digest), committed.blob(layer.digest))
    gz = committed.manifest("gzip")["layers"]
    desc = {"mediaType": MT_LAYER["gzip"], "digest": layer.digest, "size": layer.size}
    committed.tag("committed", [*gz, desc], [*image.diff_ids, layer.diff_id])
    rootfs = umoci_unpack(committed, "committed", tmp_path / "bundle")

    before, after = describe_dir(base), describe_dir(rootfs)
    assert (rootfs / "etc/passwd").read_bytes().endswith(b"committer:x:1001:1001::/:\n")
    assert not os.path.lexists(rootfs / "etc/hostname")
    assert not os.path.lexists(rootfs / "srv/data")
    assert after.nodes["/bin/su"].mode == 0o755
    assert after.nodes["/bin/su"].sha256 == before.nodes["/bin/su"].sha256
    assert after.nodes["/etc/layerhub"].mode == 0o750
    assert (rootfs / "etc/layerhub/committed.conf").read_bytes() == b"committed = true\n"
    assert after.nodes["/home/user/todo.txt"].uid == 1000
    assert os.listdir(rootfs / "usr/share/doc") == ["ONLY.txt"]
    assert os.readlink(rootfs / "usr/bin/editor") == "/etc/alternatives/editor"
    changed = {
        p
        for p in before.nodes.keys() | after.nodes.keys()
        if before.nodes.get(p) != after.nodes.get(p)
    }
    old_docs = {p for p in before.nodes if p.startswith("/usr/share/doc/")}
    assert changed == {
        "/etc/passwd",
        "/etc/hostname",
        "/srv/data",
        "/srv/data/inner.txt",
        "/bin/su",
        "/etc/layerhub",
        "/etc/layerhub/committed.conf",
        "/home/user/todo.txt",
        "/usr/share/doc/ONLY.txt",
        "/usr/bin/editor",
        *old_docs,
    }

    # layerhub's own stack with the committed layer on top agrees with umoci everywhere
    chain = chain_ids([*image.diff_ids, layer.diff_id])[-1]
    with store.blobs.open(layer.digest) as f:
        top = store.snapshots.unpack(chain, f, diff_id=layer.diff_id)
    view = UnionView([*snapshots, top.path], store.whiteouts)
    assert_same_tree(after, describe_view(view), "umoci, layerhub after commit")


def gnu_tar_extract_zstd(blob: Path, dest: Path) -> Path:
    """GNU tar's own reading of a tar+zstd blob (``tar --zstd -x``), as root: owners, modes,
    device nodes and user xattrs as the headers say; OCI whiteout markers stay plain files."""
    dest.mkdir()
    subprocess.run(
        [
            "tar",
            "--zstd",
            "-x",
            "-f",
            str(blob),
            "-C",
            str(dest),
            "--numeric-owner",
            "--same-permissions",
            "--same-owner",
            "--xattrs",
            "--xattrs-include=user.*",
        ],
        check=True,
        capture_output=True,
    )
    return dest


def split_markers(tree: TreeDesc) -> tuple[TreeDesc, set[str]]:
    """The tree without OCI whiteout markers, and the markers' paths. A marker's own mode and
    mtime mean nothing (only its name does), so layerhub writes its own."""
    markers = {p for p in tree.nodes if p.rsplit("/", 1)[-1].startswith(".wh.")}
    rest = {p: n for p, n in tree.nodes.items() if p not in markers}
    return TreeDesc(rest, tree.hardlinks), markers


@pytest.mark.parametrize("index", range(5))
def test_gnu_tar_reads_each_zstd_layer_as_layerhub_does(
    index: int, image: Image, tmp_path: Path
) -> None:
    """Debian's umoci cannot read tar+zstd, so the zstd peer is GNU tar: each layer's zstd
    blob (layer 4's is the image's own), extracted by ``tar --zstd`` and applied by layerhub
    in the OCI form (markers kept as files), gives the same tree and the same DiffID."""
    layer = image.layout.manifest("mixed")["layers"][index]
    raw = image.layout.blob(layer["digest"]).read_bytes()
    if layer["mediaType"] != MT_LAYER["zstd"]:
        raw = compress(gzip.decompress(raw), "zstd", tmp_path)
    assert raw[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame: this is the zstd route
    blob = tmp_path / "layer.tar.zst"
    blob.write_bytes(raw)
    diff_id = image.diff_ids[index]
    plain = subprocess.run(["zstd", "-d", "-c", str(blob)], capture_output=True, check=True)
    assert sha256_bytes(plain.stdout) == diff_id

    peer, peer_markers = split_markers(describe_dir(gnu_tar_extract_zstd(blob, tmp_path / "tar")))
    store = make_store(tmp_path / "lh", "oci")
    result = store.snapshots.unpack(diff_id, io.BytesIO(raw), diff_id=diff_id)
    assert result.applied is not None
    assert (result.applied.compression, result.applied.diff_id) == ("zstd", diff_id)
    ours, our_markers = split_markers(describe_dir(result.path))
    assert_same_tree(peer, ours, "GNU tar --zstd, layerhub")
    # The one marker layerhub adds: a directory this layer deletes and then makes again hides
    # the lower one's children, which is an opaque directory (as Docker and umoci read it).
    remade = {
        f"{p}/.wh..wh..opq"
        for p, node in ours.nodes.items()
        if node.kind == "dir" and f"{p.rsplit('/', 1)[0]}/.wh.{p.rsplit('/', 1)[1]}" in peer_markers
    }
    assert our_markers == peer_markers | remade
