"""Installed packages read from a merged tree, and each ecosystem's version order.

Debian's order is checked against the real ``dpkg --compare-versions`` on generated pairs; apk's,
rpm's and Python's against the orders their own tools document. The trees are layer directories
written by hand (OCI whiteout markers) and read through the union view.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

import pytest

from layerhub.engine.packages import scan_packages
from layerhub.engine.packages.scan import (
    FoundPackage,
    PackageScan,
    parse_apk_installed,
    parse_dpkg_status,
    parse_rpm_header,
)
from layerhub.engine.packages.tree import UnreadableFile, read_file, resolve
from layerhub.engine.packages.versions import (
    IncomparableVersion,
    apk_compare,
    compare_versions,
    deb_compare,
    python_compare,
    rpm_compare,
    version_matches,
)
from layerhub.engine.union import UnionView
from layerhub.engine.whiteouts import format_named

DPKG_STATUS = """\
Package: openssl
Status: install ok installed
Priority: optional
Architecture: amd64
Source: openssl (3.0.14-1~deb12u2)
Version: 3.0.14-1~deb12u2
Description: Secure Sockets Layer toolkit
 a continuation line: not a field
 Version: 9.9.9

Package: libgone
Status: deinstall ok config-files
Version: 1.0-1

Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib
Version: 1:1.2.13.dfsg-1

Package: broken
Status: install ok installed
"""

APK_DB = """\
C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
o:musl

P:libssl3
V:3.1.4-r5
A:x86_64
o:openssl

P:noversion
"""


def metadata(name: str, version: str) -> bytes:
    return (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n"
        f"Version: 0.0.0 in the body is not a header\n"
    ).encode()


def write(root: Path, files: dict[str, bytes | str | None]) -> Path:
    """A layer directory: bytes a file, None a directory, ``->target`` a symlink, ``"wh"`` a
    whiteout marker."""
    root.mkdir(parents=True, exist_ok=True)
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            target.mkdir(exist_ok=True)
        elif content == "wh":
            (target.parent / (".wh." + target.name)).write_bytes(b"")
        elif isinstance(content, str):
            os.symlink(content.removeprefix("->"), target)
        else:
            target.write_bytes(content)
    return root


def view_of(*layers: Path) -> UnionView:
    return UnionView(list(layers), format_named("oci"))


def found(scan: PackageScan) -> set[tuple[str, str, str]]:
    return {(p.ecosystem, p.name, p.version) for p in scan.packages}


# -- versions ---------------------------------------------------------------------------------


def _deb_version(rnd: random.Random) -> str:
    alphabet = "0123456789abzAZ.+~"
    version = rnd.choice("0123456789") + "".join(
        rnd.choice(alphabet) for _ in range(rnd.randint(0, 6))
    )
    if rnd.random() < 0.5:
        version += "-" + "".join(rnd.choice("0123456789ab.+~") for _ in range(rnd.randint(1, 4)))
    if rnd.random() < 0.3:
        version = f"{rnd.randint(0, 2)}:{version}"
    return version


def test_debian_order_is_dpkgs_on_generated_pairs() -> None:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg is not installed")
    rnd = random.Random(20261115)
    pairs = []
    for _ in range(300):
        a = _deb_version(rnd)
        b = _deb_version(rnd) if rnd.random() < 0.7 else a + rnd.choice(["~", "0", ".0", "a", "~~"])
        pairs.append((a, b))
    pairs += [
        ("1.0~rc1", "1.0"),
        ("1.0", "1.0-0"),
        ("1:0.1", "2.0"),
        ("1.0~~", "1.0~"),
        ("1.0+", "1.0."),
    ]
    wrong = []
    for a, b in pairs:
        r = deb_compare(a, b)
        op = {-1: "lt", 0: "eq", 1: "gt"}[r]
        run = subprocess.run([dpkg, "--compare-versions", a, op, b], capture_output=True)
        if run.returncode != 0 or run.stderr:
            wrong.append((a, b, r, run.stderr))
    assert wrong == []


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0_alpha", "1.0_beta", -1),
        ("1.0_beta", "1.0_pre", -1),
        ("1.0_pre", "1.0_rc", -1),
        ("1.0_rc1", "1.0", -1),
        ("1.0", "1.0_p1", -1),
        ("1.0_p1", "1.0-r5", 1),
        ("1.0", "1.0-r1", -1),
        ("1.0-r1", "1.0-r10", -1),
        ("1.0a", "1.0", 1),
        ("1.0a", "1.0b", -1),
        ("1.2", "1.10", -1),
        ("1.01", "1.1", -1),  # a leading zero compares as text
        ("1.0_alpha1", "1.0_alpha2", -1),
        ("3.0.15-r0", "3.0.14-r5", 1),
        ("2.0", "2.0", 0),
        ("1.0~abc", "1.0", 1),
        ("1.0.1", "1.0_rc1", 1),
    ],
)
def test_apk_order(a: str, b: str, expected: int) -> None:
    assert apk_compare(a, b) == expected
    assert apk_compare(b, a) == -expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0-1", "1.0-2", -1),
        ("1.10-1", "1.9-1", 1),
        ("1:1.0-1", "2.0-1", 1),
        ("1.0~rc1-1", "1.0-1", -1),
        ("1.0^post-1", "1.0-1", 1),
        ("1.0a-1", "1.0-1", 1),
        ("1.0-1", "1.0-1", 0),
        ("3.0.7-27.el9", "3.0.7-27.el9_5", -1),
        ("1.001-1", "1.1-1", 0),
    ],
)
def test_rpm_order(a: str, b: str, expected: int) -> None:
    assert rpm_compare(a, b) == expected
    assert rpm_compare(b, a) == -expected


def test_python_order_and_invalid_versions() -> None:
    assert python_compare("1.0rc1", "1.0") == -1
    assert python_compare("1.0.post1", "1.0") == 1
    assert python_compare("2!0.1", "1.0") == 1
    assert python_compare("1.0", "1.0.0") == 0
    with pytest.raises(IncomparableVersion):
        python_compare("not a version", "1.0")
    assert not version_matches("python", "not a version", "<", "9")
    assert version_matches("deb", "3.0.14-1~deb12u2", "<", "3.0.15")
    assert not version_matches("deb", "3.0.15-1", "<", "3.0.15")
    assert version_matches("apk", "3.1.4-r5", ">=", "3.1.4")
    with pytest.raises(IncomparableVersion):
        compare_versions("cargo", "1", "2")


# -- parsers ----------------------------------------------------------------------------------


def test_dpkg_status_keeps_installed_packages_only() -> None:
    scan = PackageScan()
    parse_dpkg_status(DPKG_STATUS, "/var/lib/dpkg/status", scan)
    assert scan.packages == [
        FoundPackage(
            "deb", "openssl", "3.0.14-1~deb12u2", "amd64", "openssl", "/var/lib/dpkg/status"
        ),
        FoundPackage("deb", "zlib1g", "1:1.2.13.dfsg-1", "amd64", "zlib", "/var/lib/dpkg/status"),
    ]
    assert len(scan.notes) == 1  # "broken" has no version


def test_apk_installed() -> None:
    scan = PackageScan()
    parse_apk_installed(APK_DB, "/lib/apk/db/installed", scan)
    assert found(scan) == {("apk", "musl", "1.2.4-r2"), ("apk", "libssl3", "3.1.4-r5")}
    assert scan.packages[1].origin == "openssl"
    assert len(scan.notes) == 1


def rpm_header(tags: dict[int, str | int]) -> bytes:
    """An rpm header blob as rpm's sqlite backend stores it."""
    index, data = b"", b""
    for tag, value in tags.items():
        if isinstance(value, int):
            while len(data) % 4:
                data += b"\x00"
            index += struct.pack(">iIiI", tag, 4, len(data), 1)
            data += struct.pack(">i", value)
        else:
            index += struct.pack(">iIiI", tag, 6, len(data), 1)
            data += value.encode() + b"\x00"
    return struct.pack(">II", len(tags), len(data)) + index + data


def rpmdb(path: Path, headers: list[bytes | str]) -> bytes:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)"
    )
    conn.executemany("INSERT INTO Packages (blob) VALUES (?)", [(h,) for h in headers])
    conn.commit()
    conn.close()
    return path.read_bytes()


def test_rpm_header_parse_and_refusals() -> None:
    blob = rpm_header({1000: "openssl", 1001: "3.0.7", 1002: "27.el9", 1003: 1, 1022: "x86_64"})
    tags = parse_rpm_header(blob)
    assert tags[1000] == "openssl"
    assert tags[1003] == 1
    with pytest.raises(ValueError, match="past the end"):
        parse_rpm_header(blob[:-5])
    with pytest.raises(ValueError, match="too short"):
        parse_rpm_header(b"\x00\x00")


# -- whole trees ------------------------------------------------------------------------------


def test_scan_reads_every_ecosystem_from_the_merged_tree(tmp_path: Path) -> None:
    db = rpmdb(
        tmp_path / "rpmdb.sqlite",
        [
            rpm_header(
                {
                    1000: "openssl-libs",
                    1001: "3.0.7",
                    1002: "27.el9",
                    1003: 1,
                    1022: "x86_64",
                    1044: "openssl-3.0.7-27.el9.src.rpm",
                }
            ),
            rpm_header({1000: "bash", 1001: "5.1.8", 1002: "9.el9", 1022: "x86_64"}),
            b"\x00\x00\x00\x09garbage",
            "not a blob",
        ],
    )
    site = "usr/lib/python3.12/site-packages"
    bottom = write(
        tmp_path / "L0",
        {
            "var/lib/dpkg/status": DPKG_STATUS.encode(),
            "var/lib/dpkg/status.d/base-files": b"Package: base-files\nVersion: 12.4+deb12u5\n",
            "var/lib/dpkg/status.d/base-files.md5sums": b"d41d8cd98f00b204e9800998ecf8427e  x\n",
            "usr/lib/apk/db/installed": APK_DB.encode(),
            "lib": "->usr/lib",  # merged /usr: /lib/apk/db/installed is reached through a link
            "var/lib/rpm/rpmdb.sqlite": db,
            f"{site}/requests-2.31.0.dist-info/METADATA": metadata("requests", "2.31.0"),
            f"{site}/removed-1.0.dist-info/METADATA": metadata("removed", "1.0"),
            "opt/venv/lib/python3.11/dist-packages/Foo_Bar-0.1.dist-info/METADATA": metadata(
                "Foo_Bar", "0.1"
            ),
        },
    )
    top = write(
        tmp_path / "L1",
        {
            f"{site}/removed-1.0.dist-info": "wh",  # uninstalled by a later layer
            f"{site}/urllib3-2.0.0.dist-info/METADATA": metadata("urllib3", "2.0.0"),
        },
    )
    scan = scan_packages(view_of(bottom, top))
    assert found(scan) == {
        ("deb", "openssl", "3.0.14-1~deb12u2"),
        ("deb", "zlib1g", "1:1.2.13.dfsg-1"),
        ("deb", "base-files", "12.4+deb12u5"),
        ("apk", "musl", "1.2.4-r2"),
        ("apk", "libssl3", "3.1.4-r5"),
        ("rpm", "openssl-libs", "1:3.0.7-27.el9"),
        ("rpm", "bash", "5.1.8-9.el9"),
        ("python", "requests", "2.31.0"),
        ("python", "urllib3", "2.0.0"),
        ("python", "Foo_Bar", "0.1"),
    }
    rpm = next(p for p in scan.packages if p.name == "openssl-libs")
    assert (rpm.arch, rpm.origin) == ("x86_64", "openssl")
    apk = next(p for p in scan.packages if p.name == "musl")
    assert apk.source_path == "/lib/apk/db/installed"
    assert any("bad header" in n for n in scan.notes)
    assert any("not a header blob" in n for n in scan.notes)


def test_hostile_files_are_skipped_not_fatal(tmp_path: Path) -> None:
    site = "usr/lib/python3/dist-packages"
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"Package: leaked\nVersion: 6.6.6\n")
    layer = write(
        tmp_path / "L0",
        {
            # a link to the host's file, absolute: resolved in the image, where nothing is
            "var/lib/dpkg/status": "->" + str(secret),
            "var/lib/dpkg/status.d/binary": b"Package: bin\x00ary\nVersion: 1\n",
            "var/lib/dpkg/status.d/latin1": "Package: caf\xe9\nVersion: 1.0\n".encode("latin-1"),
            "var/lib/dpkg/status.d/loop": "->loop",
            "var/lib/dpkg/status.d/shadow": "->../../../../etc/shadow",
            "etc/shadow": b"Package: shadow-in-image\nVersion: 1\n",
            "lib/apk/db": None,
            "lib/apk/db/installed": b"x" * (1024 * 1024 + 10),
            f"{site}/huge-1.dist-info/METADATA": b"Name: huge\nVersion: 1\n" + b"y" * (2 << 20),
            f"{site}/escape-1.dist-info/METADATA": "->/../../../../../" + str(secret),
            f"{site}/nodata-1.dist-info": None,
        },
    )
    # a database bigger than the cap is refused without reading it all
    view = view_of(layer)
    with pytest.raises(UnreadableFile, match="more than"):
        read_file(view, "/lib/apk/db/installed", limit=1024)
    scan = scan_packages(view)
    names = {p.name for p in scan.packages}
    assert "leaked" not in names
    assert "bin\x00ary" not in names
    # the link to /etc/shadow is the image's own /etc/shadow, never the host's
    assert "shadow-in-image" in names
    assert "café".replace("é", "\ufffd") in names  # bad UTF-8 replaced, not a crash
    joined = "\n".join(scan.notes)
    assert "binary" in joined
    assert "symbolic links" in joined
    assert "huge-1.dist-info/METADATA" in joined
    assert "nodata-1.dist-info/METADATA: no such file" in joined
    assert resolve(view, "/var/lib/dpkg/status") is None


def test_symlink_escape_never_reads_the_host(tmp_path: Path) -> None:
    layer = write(tmp_path / "L0", {"etc": None, "a": "->../../../../../../etc/passwd"})
    view = view_of(layer)
    assert resolve(view, "/a") is None  # the image has no /etc/passwd
    with pytest.raises(UnreadableFile, match="no such file"):
        read_file(view, "/a", limit=1000)
