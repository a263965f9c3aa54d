"""What a command that only starts a job loads: a warm ``manage.py pull`` is mostly Python
start-up, so its path stays light. Checked in a real ``manage.py`` process (settings, apps,
the command's module and its parser), by the modules it holds afterwards, not by timing."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.conf import settings

from layerhub.engine import registry
from layerhub.images import services

ROOT = Path(__file__).resolve().parent.parent

# what running a pull or an import needs, and starting one does not
HEAVY = (
    "requests",  # the registry client's HTTP
    "urllib3",
    "layerhub.engine.registry.client",
    "layerhub.engine.registry.tls",  # the trust store, certificates
    "layerhub.engine.pull",
    "layerhub.engine.archive",
    "layerhub.engine.store",  # the settings need the store's reserve, not the store
    "truststore",
    "layerhub.images.services.pull",
    "layerhub.images.services.transfer",
    "workers.tasks",  # every task, and every service behind them
    "celery.worker.consumer",  # the worker's own machinery
    "celery.apps.worker",
    "cryptography.fernet",  # registry logins only
    "obstore",  # the S3 blob store's client, loaded when a store is opened with it
    "layerhub.engine.blobstore.s3",
)

# runs manage.py's main() as `manage.py COMMAND --help` does, then reports on the process
PROBE = """
import gc, json, sys
sys.argv = ["manage.py", sys.argv[1], "--help"]
import manage
try:
    manage.main()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print(json.dumps({
    "modules": sorted(sys.modules),
    "gc_enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
}))
"""


def probe(command: str) -> dict[str, Any]:
    """Run ``manage.py COMMAND --help`` in a fresh interpreter; its modules and GC state."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, command],
        cwd=ROOT,
        env={**os.environ, "LAYERHUB_STORE": str(settings.LAYERHUB_STORE)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


@pytest.mark.parametrize("command", ["pull", "import"])
def test_starting_a_job_loads_nothing_that_runs_one(command: str) -> None:
    modules = set(probe(command)["modules"])
    # the command was really found and loaded, and the app that sends its job
    assert f"layerhub.images.management.commands.{command}" in modules
    assert "workers.celery" in modules
    assert [name for name in HEAVY if name in modules] == []
    assert "layerhub.images.services.enqueue" in modules  # what starts the job


def test_manage_py_collects_garbage_once_the_command_is_found() -> None:
    report = probe("pull")
    # start-up's objects are frozen (no collection walks them again, the one at exit
    # included), and the command itself runs with the collector on
    assert report["frozen"] > 10_000
    assert report["gc_enabled"] is True


@pytest.mark.parametrize("package", [services, registry], ids=lambda p: p.__name__)
def test_lazy_packages_find_each_name_where_it_lives(package: ModuleType) -> None:
    homes: dict[str, str] = package._HOME
    assert sorted(homes) == sorted(package.__all__)
    for name in package.__all__:
        home = importlib.import_module(f"{package.__name__}.{homes[name]}")
        assert getattr(package, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        package.nothing_here  # noqa: B018
