"""Peers and host abilities the tests need, and the one rule for when they are missing.

Outside CI a test whose peer (umoci, skopeo, GNU tar, the CNCF registry, Redis...) or host
ability (root, overlayfs) is missing is skipped, so a laptop without them still runs the rest.
In CI nothing is skipped: CI installs every peer and runs as root, so a missing one is a broken
CI and the test fails, saying what is missing. ``.ci/run`` exports ``CI=true``; this module is
the only place that reads it.

Loaded as a pytest plugin (``-p tests.support.peers`` in pyproject.toml's addopts), it also
turns any other skip into a failure when in CI, so a skip site that forgets this module cannot
hide a test there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator
from functools import cache
from typing import NoReturn

import pytest

CI_VARIABLE = "CI"
_FALSE = ("", "0", "false", "no", "off")


def in_ci() -> bool:
    """Whether this run is CI (``CI`` set to anything but empty, 0, false, no or off)."""
    return os.environ.get(CI_VARIABLE, "").strip().lower() not in _FALSE


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test outside CI; fail it in CI, where every peer is installed."""
    if in_ci():
        pytest.fail(f"CI cannot skip this test: {reason}", pytrace=False)
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """Go on when ``condition`` holds, else :func:`skip_or_fail` with ``reason``."""
    if not condition:
        skip_or_fail(reason)


def require_peer(name: str, *, package: str | None = None) -> str:
    """The path of the command ``name``; skips (outside CI) or fails (in CI) without it."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (Debian package {package or name})")
    return path


def require_root(why: str) -> None:
    """Skips (outside CI) or fails (in CI, which runs as root) unless this process is root."""
    require(os.geteuid() == 0, f"needs root: {why}")


@cache
def gnu_tar_version() -> str | None:
    """``tar --version``'s first line when ``tar`` is GNU tar, else None."""
    try:
        out = subprocess.run(["tar", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first if "GNU tar" in first else None


def require_gnu_tar() -> str:
    """``tar`` when it is GNU tar; skips (outside CI) or fails (in CI) otherwise."""
    require(gnu_tar_version(), "GNU tar is not installed (Debian package tar)")
    return "tar"


# -- the plugin: in CI a skip is a failure, wherever it comes from ------------------------------


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"CI cannot skip ({CI_VARIABLE}={os.environ[CI_VARIABLE]}): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI, a skipped test (not an expected failure) is reported as failed, with its reason."""
    report = yield
    _fail_skip_in_ci(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """In CI, a module skipped while collected (``allow_module_level``) fails the same way."""
    report = yield
    _fail_skip_in_ci(report)
    return report
