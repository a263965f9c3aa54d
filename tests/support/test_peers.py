"""CI never skips: a missing peer or host ability fails the test when CI is set, and every
check reads CI the same way (tests/support/peers.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import peers

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import pytest
from tests.support.peers import require_peer, require_root

def test_missing_peer():
    require_peer("layerhub-no-such-peer")

def test_plain_skip():
    pytest.skip("the host lacks something")

@pytest.mark.skipif(True, reason="a skipif mark")
def test_marked():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    raise AssertionError

@pytest.mark.slow
def test_scale():
    pass

def test_runs():
    pass
"""


def run_probe(tmp_path: Path, ci: str | None, *args: str) -> str:
    """pytest on PROBE with the project's configuration; its summary line and outcomes."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(REPO / "pyproject.toml"),
            "--rootdir",
            str(REPO),
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp_path / 'bt'}",
            "-rA",
            "-q",
            *args,
            str(probe),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.stdout + proc.stderr


def outcomes(output: str) -> dict[str, str]:
    found = re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL)\S* .*?::(\w+)", output, re.M)
    return {name: outcome for outcome, name in found}


def test_outside_ci_missing_peers_are_skipped(tmp_path: Path) -> None:
    output = run_probe(tmp_path, None)
    summary = output.strip().splitlines()[-1]
    # slow tests are left out by default
    assert summary.startswith("1 passed, 3 skipped, 1 deselected, 1 xfailed in "), output


def test_in_ci_every_skip_fails(tmp_path: Path) -> None:
    output = run_probe(tmp_path, "true")
    got = outcomes(output)
    assert got["test_missing_peer"] == "FAILED", output
    assert got["test_plain_skip"] == "FAILED", output
    assert got["test_marked"] == "ERROR", output  # skipif is judged in setup
    assert got["test_expected_failure"] == "XFAIL", output
    assert got["test_runs"] == "PASSED", output
    assert "CI cannot skip this test: layerhub-no-such-peer is not installed" in output
    summary = output.strip().splitlines()[-1]
    assert summary.startswith("2 failed, 1 passed, 1 deselected, 1 xfailed, 1 error in "), output


def test_slow_tests_run_on_demand(tmp_path: Path) -> None:
    output = run_probe(tmp_path, None, "-m", "slow")
    assert outcomes(output) == {"test_scale": "PASSED"}, output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("True", True),
        ("", False),
        ("false", False),
        ("0", False),
        (None, False),
    ],
)
def test_in_ci_reads_the_variable_one_way(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert peers.in_ci() is expected


def test_ci_script_sets_ci_itself() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^export CI=true$", script, re.M), "the CI script must export CI=true"


# Skip sites still reading CI (or skipping) on their own; converted to tests/support/peers.py
# where their owners change them. Only ever shrinks.
NOT_YET_CONVERTED = {
    "tests/conftest.py",
}


def test_only_the_peers_module_reads_ci() -> None:
    readers = set()
    for path in sorted((REPO / "tests").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel == "tests/support/peers.py" or path == Path(__file__):
            continue
        if re.search(r"""environ(\.get\(|\[)\s*["']CI["']""", path.read_text()):
            readers.add(rel)
    assert readers <= NOT_YET_CONVERTED, (
        f"read CI through tests.support.peers.in_ci(): {sorted(readers - NOT_YET_CONVERTED)}"
    )
