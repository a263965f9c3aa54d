"""A small Debian-like base image without the internet: Debian's static busybox in one layer.

``apt-get install busybox-static`` gives ``/bin/busybox``, a static binary that needs nothing
else in the image; every applet it has becomes a symlink where busybox would install it
(``/bin/sh``, ``/usr/bin/id``, ``/sbin/ip``...). Add ``/etc/passwd`` and ``/etc/group`` with root,
a user ``app`` (1000, also in ``staff``) and ``nobody``, ``/etc/os-release``, ``/tmp`` and
``/root``, and commands run in it as in a minimal Debian container.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from functools import cache
from pathlib import Path

from tests.support.peers import require

BUSYBOX = Path("/bin/busybox")
MTIME = 1_700_000_000
OS_RELEASE = b'ID=debian-like\nNAME="layerhub test base"\n'
PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"app:x:1000:1000:app:/home/app:/bin/sh\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = b"root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"


def require_busybox() -> Path:
    """``/bin/busybox``; skips the test when busybox-static is not installed (fails in CI)."""
    require(
        BUSYBOX.is_file(),
        "needs Debian's busybox-static (apt-get install busybox-static) for a base image",
    )
    return BUSYBOX


@cache
def _applets() -> tuple[str, ...]:
    listing = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, check=True, text=True
    ).stdout
    # applets installed at the root (linuxrc) are not wanted in an image
    return tuple(sorted(line for line in listing.split() if "/" in line))


@cache
def busybox_layer() -> bytes:
    """An uncompressed layer tar of the base image (deterministic for one busybox binary)."""
    binary = require_busybox().read_bytes()
    entries: dict[str, tuple[str, int, bytes | str]] = {}  # path -> (kind, mode, data/target)
    for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "home", "home/app"):
        entries[directory] = ("dir", 0o755, b"")
    entries["tmp"] = ("dir", 0o1777, b"")
    entries["root"] = ("dir", 0o700, b"")
    entries["bin/busybox"] = ("file", 0o755, binary)
    for applet in _applets():
        if applet != "bin/busybox":
            entries[applet] = ("symlink", 0o777, "/bin/busybox")
    entries["etc/os-release"] = ("file", 0o644, OS_RELEASE)
    entries["etc/passwd"] = ("file", 0o644, PASSWD)
    entries["etc/group"] = ("file", 0o644, GROUP)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(entries):
            kind, mode, payload = entries[path]
            info = tarfile.TarInfo(path)
            info.mtime, info.mode = MTIME, mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                if path == "home/app":
                    info.uid = info.gid = 1000
                tf.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
                tf.addfile(info)
            else:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()
