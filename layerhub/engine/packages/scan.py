"""Find the packages installed in an image's merged file tree.

Read, never run: dpkg's status (and distroless' ``status.d``), apk's installed database, rpm's
sqlite database, and Python distributions' ``*.dist-info/METADATA`` under any ``site-packages`` or
``dist-packages`` directory. What cannot be read is a note in the scan and the rest goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from packaging.utils import canonicalize_name

from ..errors import LayerhubError
from ..union import UnionView
from .tree import UnreadableFile, decode_text, list_dir, read_entry, read_file, read_text, resolve
from .versions import APK, DEB, PYTHON, RPM

ECOSYSTEMS = (DEB, APK, RPM, PYTHON)

# caps: a real dpkg status of a big image is a few MB; the caps leave room and stop a hostile one
DB_LIMIT = 64 * 1024 * 1024
STATUS_D_LIMIT = 1024 * 1024
METADATA_LIMIT = 1024 * 1024
RPMDB_LIMIT = 512 * 1024 * 1024
MAX_PACKAGES = 100_000
MAX_NOTES = 100
FIELD_LIMIT = 255
# the search for site-packages: how deep and how many directories before it gives up
WALK_MAX_DEPTH = 12
WALK_MAX_DIRS = 50_000
# directories no Python distribution lives in (or that are not files at all)
WALK_SKIP = frozenset(
    {
        "/proc",
        "/sys",
        "/dev",
        "/var/lib/dpkg",
        "/var/cache",
        "/usr/share/doc",
        "/usr/share/man",
        "/usr/share/locale",
        "/usr/share/zoneinfo",
        "/usr/share/i18n",
        "/usr/include",
        "/usr/src",
    }
)
WALK_SKIP_NAMES = frozenset({"__pycache__", "node_modules", ".git"})
PYTHON_DIRS = ("site-packages", "dist-packages")

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_STATUS_D = "/var/lib/dpkg/status.d"
APK_INSTALLED = "/lib/apk/db/installed"
RPMDB_SQLITE = "/var/lib/rpm/rpmdb.sqlite"

# a package name or version worth keeping: printable, no spaces, not absurdly long
_TOKEN = re.compile(rf"[^\s\x00-\x1f\x7f]{{1,{FIELD_LIMIT}}}")


@dataclass(frozen=True)
class FoundPackage:
    """One installed package: its ecosystem, name and version as the database states them,
    its architecture and origin (the source package) when known, and the file it was read from."""

    ecosystem: str
    name: str
    version: str
    arch: str = ""
    origin: str = ""
    source_path: str = ""


@dataclass
class PackageScan:
    """What a scan found, and notes on what it skipped and why."""

    packages: list[FoundPackage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Record a skipped file or entry (the first MAX_NOTES of them)."""
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text[:500])

    def add(self, package: FoundPackage) -> bool:
        """Keep ``package``; False once the scan holds MAX_PACKAGES."""
        if len(self.packages) >= MAX_PACKAGES:
            return False
        self.packages.append(package)
        return True


# a parser of one database file: its text, its path in the image, the scan to add to
_Parser = Callable[[str, str, "PackageScan"], None]


def _clean(value: str) -> str | None:
    value = value.strip()
    return value if _TOKEN.fullmatch(value) else None


def _short(value: str) -> str:
    return value.strip()[:FIELD_LIMIT]


# -- dpkg -------------------------------------------------------------------------------------


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs: ``Field: value`` lines, continuation lines (leading blank) joined,
    a blank line between paragraphs. Field names are case-insensitive."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                fields[last] = (fields[last] + "\n" + line.strip())[:4096]
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        last = name.strip().lower()
        fields[last] = value.strip()
    if fields:
        yield fields


def parse_dpkg_status(text: str, source_path: str, scan: PackageScan) -> None:
    """The installed packages of a dpkg status file (``Status: ... installed``); a paragraph
    without a Status field (distroless' ``status.d`` files) counts as installed."""
    for fields in _stanzas(text):
        status = fields.get("status")
        if status is not None and status.split()[-1:] != ["installed"]:
            continue
        name = _clean(fields.get("package", ""))
        version = _clean(fields.get("version", ""))
        if name is None or version is None:
            scan.note(f"{source_path}: skipped a paragraph without a valid Package and Version")
            continue
        origin = fields.get("source", "").split(" ")[0]
        found = FoundPackage(
            DEB,
            name,
            version,
            _short(fields.get("architecture", "")),
            _short(origin),
            source_path,
        )
        if not scan.add(found):
            return


def read_dpkg(view: UnionView, scan: PackageScan) -> None:
    """dpkg's status file and every ``status.d`` file (distroless keeps one per package)."""
    with contextlib.suppress(UnreadableFile):
        if resolve(view, DPKG_STATUS) is not None:
            _read_into(view, DPKG_STATUS, DB_LIMIT, parse_dpkg_status, scan)
    for entry in list_dir(view, DPKG_STATUS_D):
        # distroless writes "<name>" and "<name>.md5sums": only the former are status files
        if entry.path.endswith(".md5sums"):
            continue
        _read_into(view, entry.path, STATUS_D_LIMIT, parse_dpkg_status, scan)


def _read_into(
    view: UnionView,
    path: str,
    limit: int,
    parse: _Parser,
    scan: PackageScan,
) -> None:
    try:
        text = read_text(view, path, limit=limit)
    except UnreadableFile as e:
        scan.note(str(e))
        return
    parse(text, path, scan)


# -- apk --------------------------------------------------------------------------------------


def parse_apk_installed(text: str, source_path: str, scan: PackageScan) -> None:
    """apk's installed database: one paragraph a package, ``P:`` name, ``V:`` version, ``A:``
    architecture, ``o:`` origin."""
    fields: dict[str, str] = {}

    def flush() -> bool:
        if not fields:
            return True
        name, version = _clean(fields.get("P", "")), _clean(fields.get("V", ""))
        if name is None or version is None:
            scan.note(f"{source_path}: skipped an entry without a valid P: and V:")
            return True
        return scan.add(
            FoundPackage(
                APK,
                name,
                version,
                _short(fields.get("A", "")),
                _short(fields.get("o", "")),
                source_path,
            )
        )

    for line in text.splitlines():
        if not line.strip():
            if not flush():
                return
            fields = {}
            continue
        if len(line) >= 2 and line[1] == ":" and line[0] in "PVAo":
            fields[line[0]] = line[2:]
    flush()


def read_apk(view: UnionView, scan: PackageScan) -> None:
    """apk's installed database, when the image has one."""
    with contextlib.suppress(UnreadableFile):
        if resolve(view, APK_INSTALLED) is None:
            return
    _read_into(view, APK_INSTALLED, DB_LIMIT, parse_apk_installed, scan)


# -- rpm --------------------------------------------------------------------------------------

_RPMTAG_NAME, _RPMTAG_VERSION, _RPMTAG_RELEASE, _RPMTAG_EPOCH = 1000, 1001, 1002, 1003
_RPMTAG_ARCH, _RPMTAG_SOURCERPM = 1022, 1044
_RPM_WANTED = {
    _RPMTAG_NAME,
    _RPMTAG_VERSION,
    _RPMTAG_RELEASE,
    _RPMTAG_EPOCH,
    _RPMTAG_ARCH,
    _RPMTAG_SOURCERPM,
}
_RPM_INT32, _RPM_STRING = 4, 6
_RPM_HEADER_MAGIC = b"\x8e\xad\xe8\x01\x00\x00\x00\x00"


class BadRpmHeader(ValueError):
    """An rpm header blob that does not hold together."""


def parse_rpm_header(blob: bytes) -> dict[int, str | int]:
    """The name, version, release, epoch, arch and source rpm tags of one rpm header blob (as
    rpm's sqlite backend stores it: index count, data length, index entries, data)."""
    if blob.startswith(_RPM_HEADER_MAGIC):
        blob = blob[len(_RPM_HEADER_MAGIC) :]
    if len(blob) < 8:
        raise BadRpmHeader("too short")
    count, data_length = struct.unpack(">II", blob[:8])
    index_end = 8 + 16 * count
    if count > 100_000 or index_end + data_length > len(blob):
        raise BadRpmHeader("index or data past the end of the blob")
    data = blob[index_end : index_end + data_length]
    tags: dict[int, str | int] = {}
    for i in range(count):
        tag, kind, offset, n = struct.unpack(">iIiI", blob[8 + 16 * i : 24 + 16 * i])
        if tag not in _RPM_WANTED or offset < 0 or offset >= len(data):
            continue
        if kind == _RPM_STRING:
            end = data.find(b"\x00", offset, offset + 4096)
            if end < 0:
                raise BadRpmHeader(f"unterminated string for tag {tag}")
            tags[tag] = data[offset:end].decode("utf-8", "replace")
        elif kind == _RPM_INT32 and n >= 1 and offset + 4 <= len(data):
            tags[tag] = struct.unpack(">i", data[offset : offset + 4])[0]
    return tags


def read_rpm(view: UnionView, scan: PackageScan) -> None:
    """rpm's sqlite database (Fedora 33+, RHEL 9+): read from a private copy, read-only, with
    the schema untrusted; the older Berkeley DB and ndb forms are not read."""
    try:
        if resolve(view, RPMDB_SQLITE) is None:
            return
        data = read_file(view, RPMDB_SQLITE, limit=RPMDB_LIMIT)
    except UnreadableFile as e:
        scan.note(str(e))
        return
    # sqlite reads a file, so the copy is private to this scan and removed after it
    fd, copy = tempfile.mkstemp(prefix="layerhub-rpmdb-", suffix=".sqlite")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        del data
        _read_rpm_copy(copy, scan)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(copy)


def _read_rpm_copy(copy: str, scan: PackageScan) -> None:
    try:
        conn = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as e:
        scan.note(f"{RPMDB_SQLITE}: not a readable sqlite database ({e})")
        return
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        rows = conn.execute("SELECT blob FROM Packages LIMIT ?", (MAX_PACKAGES,))
        for (blob,) in rows:
            if not isinstance(blob, bytes):
                scan.note(f"{RPMDB_SQLITE}: skipped a row that is not a header blob")
                continue
            try:
                tags = parse_rpm_header(blob)
            except BadRpmHeader as e:
                scan.note(f"{RPMDB_SQLITE}: skipped a bad header ({e})")
                continue
            name = _clean(str(tags.get(_RPMTAG_NAME, "")))
            version = str(tags.get(_RPMTAG_VERSION, ""))
            release = str(tags.get(_RPMTAG_RELEASE, ""))
            epoch = tags.get(_RPMTAG_EPOCH)
            evr = (f"{epoch}:" if isinstance(epoch, int) else "") + version
            evr = _clean(evr + (f"-{release}" if release else "")) or ""
            if name is None or not version or not evr:
                scan.note(f"{RPMDB_SQLITE}: skipped a header without a valid name and version")
                continue
            # "openssl-3.0.7-27.el9.src.rpm": the source package is its name before the version
            source_rpm = str(tags.get(_RPMTAG_SOURCERPM, ""))
            origin = source_rpm.rsplit("-", 2)[0] if source_rpm.count("-") >= 2 else ""
            arch = str(tags.get(_RPMTAG_ARCH, ""))
            if not scan.add(
                FoundPackage(RPM, name, evr, _short(arch), _short(origin), RPMDB_SQLITE)
            ):
                return
    except sqlite3.Error as e:
        scan.note(f"{RPMDB_SQLITE}: not a readable rpm database ({e})")
    finally:
        conn.close()


# -- Python -----------------------------------------------------------------------------------


def parse_metadata(text: str) -> tuple[str, str] | None:
    """Name and Version from a core metadata file's header (up to its first blank line)."""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "name" and name is None:
            name = _clean(value)
        elif key == "version" and version is None:
            version = _clean(value)
    if name is None or version is None:
        return None
    return name, version


def _python_dirs(view: UnionView, scan: PackageScan) -> Iterator[str]:
    """Every ``site-packages`` or ``dist-packages`` directory of the image, found by a bounded
    walk that follows no symlink (a linked directory is seen where its target lies)."""
    stack: list[tuple[str, int]] = [("/", 0)]
    visited = 0
    while stack:
        path, depth = stack.pop()
        visited += 1
        if visited > WALK_MAX_DIRS:
            scan.note(f"stopped looking for Python packages after {WALK_MAX_DIRS} directories")
            return
        try:
            children = view.listdir(path)
        except (LayerhubError, OSError):
            # a directory the view cannot list is skipped, not the scan
            continue
        for child in reversed(children):
            if not child.is_dir:
                continue
            name = child.path.rsplit("/", 1)[-1]
            if name in PYTHON_DIRS:
                yield child.path
            elif (
                depth + 1 < WALK_MAX_DEPTH
                and child.path not in WALK_SKIP
                and name not in WALK_SKIP_NAMES
                and not name.endswith((".dist-info", ".egg-info"))
            ):
                stack.append((child.path, depth + 1))


def read_python(view: UnionView, scan: PackageScan) -> None:
    """Every ``*.dist-info/METADATA`` directly under a site-packages or dist-packages dir."""
    for directory in _python_dirs(view, scan):
        for child in list_dir(view, directory):
            if not child.is_dir or not child.path.endswith(".dist-info"):
                continue
            path = child.path + "/METADATA"
            try:
                entry = resolve(view, path)
                if entry is None:
                    scan.note(f"{path}: no such file")
                    continue
                text = decode_text(read_entry(entry, limit=METADATA_LIMIT, shown=path), path)
            except UnreadableFile as e:
                scan.note(str(e))
                continue
            found = parse_metadata(text)
            if found is None:
                scan.note(f"{path}: no valid Name and Version")
                continue
            name, version = found
            if not scan.add(FoundPackage(PYTHON, name, version, source_path=path)):
                return


def python_key(name: str) -> str:
    """A Python distribution's name as PEP 503 normalizes it (``Foo_Bar`` -> ``foo-bar``)."""
    return str(canonicalize_name(name))


def package_key(ecosystem: str, name: str) -> str:
    """The form a package name is searched by: PEP 503's for Python, lower case elsewhere."""
    return python_key(name) if ecosystem == PYTHON else name.lower()


def scan_packages(view: UnionView) -> PackageScan:
    """Every package installed in the image ``view`` shows, with notes on what was skipped."""
    scan = PackageScan()
    for reader in (read_dpkg, read_apk, read_rpm, read_python):
        if len(scan.packages) >= MAX_PACKAGES:
            scan.note(f"stopped at {MAX_PACKAGES} packages")
            break
        try:
            reader(view, scan)
        except UnreadableFile as e:
            scan.note(str(e))
    return scan
