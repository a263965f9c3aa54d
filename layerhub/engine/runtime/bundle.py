"""The OCI runtime bundle's ``config.json`` for one command, as ``docker run`` would set it up.

What a container gets by default is Docker's: the same capability set, masked and read-only
``/proc`` paths, device rules and mounts; a user named by the image is looked up in the image's
own ``/etc/passwd`` and ``/etc/group``. Two choices differ from Docker on purpose: no network
namespace is shared with the host unless asked, and ``no_new_privileges`` is on (a setuid
binary in an image cannot raise a command's privileges).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidPath, LayerhubError, PathNotFound
from ..union import UnionView

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Docker's default capability set (moby oci/caps/defaults.go)
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# mount points the container needs whether or not the image has them (see run.py's init layer)
MOUNT_POINT_DIRS = ("dev", "proc", "sys", "etc")
MOUNT_POINT_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


@dataclass(frozen=True)
class User:
    """Who the command runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def _table(view: UnionView, path: str) -> list[list[str]]:
    """The colon-separated rows of an image's ``/etc/passwd`` or ``/etc/group``."""
    try:
        text = view.read_bytes(path).decode("utf-8", errors="replace")
    except (PathNotFound, InvalidPath):  # missing, or not a regular file (a symlink is not read)
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str, view: UnionView) -> User:
    """``User`` from an image config (``name``, ``uid``, ``name:group``, ``uid:gid``...) as
    Docker resolves it against the image's own passwd and group files; empty means root."""
    name, _, group = (spec or "0").partition(":")
    passwd = [row for row in _table(view, "/etc/passwd") if len(row) >= 7 and row[2].isdigit()]
    if name.isdigit():
        uid = int(name)
        entry = next((row for row in passwd if int(row[2]) == uid), None)
    else:
        entry = next((row for row in passwd if row[0] == name), None)
        if entry is None:
            raise LayerhubError(f"unable to find user {name}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and entry[5] else "/"
    groups = [row for row in _table(view, "/etc/group") if len(row) >= 4 and row[2].isdigit()]
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((row for row in groups if row[0] == group), None)
            if found is None:
                raise LayerhubError(
                    f"unable to find group {group}: no matching entries in group file"
                )
            gid = int(found[2])
    username = entry[0] if entry is not None else None
    extra = sorted(
        {int(row[2]) for row in groups if username and username in row[3].split(",")} - {gid}
    )
    return User(uid, gid, tuple(extra), home)


def process_env(
    image_env: Sequence[str], env: Mapping[str, str], *, hostname: str, home: str
) -> list[str]:
    """The image's ``Env``, then ``env`` over it (as ``docker run -e``), with the variables
    Docker adds when missing: PATH, HOSTNAME, HOME."""
    merged: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for item in image_env:
        key, sep, value = item.partition("=")
        if key and sep:
            merged[key] = value
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise LayerhubError(f"invalid environment variable name or value: {key!r}")
        merged[key] = value
    merged.setdefault("HOME", home)
    return [f"{key}={value}" for key, value in merged.items()]


def working_dir(image_config: Mapping[str, Any]) -> str:
    """The image's ``WorkingDir`` as a clean absolute path, ``/`` if unset."""
    return posixpath.normpath(posixpath.join("/", str(image_config.get("WorkingDir") or "/")))


def bundle_config(
    *,
    rootfs: str,
    argv: Sequence[str],
    env: Sequence[str],
    cwd: str,
    user: User,
    hostname: str,
    network: bool,
    bind_files: Mapping[str, str],
) -> dict[str, Any]:
    """``config.json`` for ``runc run``: ``bind_files`` maps container paths (``/etc/hosts``)
    to host files mounted over them."""
    caps = list(DEFAULT_CAPABILITIES)
    # like Docker since 23.0: a non-root user gets the bounding set only, nothing effective
    held = caps if user.uid == 0 else []
    namespaces = ["pid", "ipc", "uts", "mount"] + ([] if network else ["network"])
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]  # fmt: skip
    for destination, source in bind_files.items():
        mounts.append(
            {"destination": destination, "type": "bind", "source": source,
             "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]}
        )  # fmt: skip
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                **({"additionalGids": list(user.additional_gids)} if user.additional_gids else {}),
            },
            "args": list(argv),
            "env": list(env),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": held,
                "permitted": held,
                "inheritable": [],
                "ambient": [],
            },
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            # devices: deny all but the defaults runc always allows (null, zero, tty...)
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": ns} for ns in namespaces],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
