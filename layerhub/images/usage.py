"""What the store holds beside blobs and snapshots, measured on demand: containers'
writable layers and ``tmp/``. These change with every file a container writes and every
chunk a download lands, so they are walked when asked (``df``, the containers list, the
verify job), never summed into the recorded physical total.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from layerhub.core.store import get_store
from layerhub.engine.fsutil import tree_usage


def container_layer_bytes(container_id: str) -> int:
    """Bytes of the regular files in a container's writable layer (``containers/<id>/``,
    a hardlinked file once); 0 once the container's directory is gone."""
    try:
        return tree_usage(get_store().containers / container_id)[0]
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class TmpEntry:
    """One entry of ``tmp/``: its size, and whether a live process holds it (an in-flight
    download, unpack or removal) or it is a leftover the next sweep removes."""

    name: str
    size: int
    live: bool


def held_by_a_process(path: Path) -> bool:
    """Whether a live process holds the entry's lock (see fsutil.TempEntry). Never blocks:
    the lock is tried and let go at once."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of a lock taken here
    return False


def tmp_entries() -> list[TmpEntry]:
    """Every entry of ``tmp/`` with its size (files, or trees measured iteratively)."""
    tmp = get_store().tmp
    found = []
    for entry in sorted(os.scandir(tmp), key=lambda e: e.name):
        path = Path(entry.path)
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                size = tree_usage(path)[0]
            else:
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        except FileNotFoundError:  # finished (renamed away) while we looked
            continue
        found.append(TmpEntry(entry.name, size, held_by_a_process(path)))
    return found
