"""The container runtime: run a command non-interactively in a container, as ``docker exec``.

A container is a writable directory over an image's snapshots. A command runs in it under runc
on a kernel overlayfs mount of that stack, so the store must keep whiteouts in overlayfs' own
form and the process must be root; ``runtime_unavailable_reason`` says when that is not so.

- ``overlay``: mounting a snapshot chain, and unmounting it for sure
- ``bundle``: the OCI ``config.json`` (Docker's defaults, the image config's Env/User/WorkingDir)
- ``run``: the run itself: scratch layout, runc, output, timeout, clean-up
"""

from __future__ import annotations

from .run import ExecResult, run_in_container, runtime_unavailable_reason

__all__ = ["ExecResult", "run_in_container", "runtime_unavailable_reason"]
