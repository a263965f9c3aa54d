"""Fixtures for the engine tests: a store and a whiteout adapter in each on-disk form, the kit.

Engine tests are pure: ``tmp_path`` only, no database. The layer reader's tests take
``writes`` and run twice: the unpack's calls made in its own process, then in the writer
child. Tests that depend on the whiteout form
take ``whiteout_form`` (or ``fmt`` or ``store``) and run once per form; the overlay form needs
mknod and trusted xattrs (root), and is skipped where the filesystem refuses them (failed in
CI, which runs as root).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from layerhub.engine import fswriter
from layerhub.engine.store import Store
from layerhub.engine.whiteouts import WhiteoutFormat, format_named, overlay_supported
from tests.engine.layerkit import Kit
from tests.support.peers import require

WHITEOUT_FORMS = ("oci", "overlay")


@pytest.fixture(params=WHITEOUT_FORMS)
def whiteout_form(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``oci`` or ``overlay``; overlay is skipped where this process cannot write it."""
    form: str = request.param
    if form == "overlay":
        require(
            overlay_supported(tmp_path), "overlay whiteouts need root (mknod, trusted.* xattrs)"
        )
    return form


@pytest.fixture
def fmt(whiteout_form: str) -> WhiteoutFormat:
    """The engine's adapter for the form under test."""
    return format_named(whiteout_form)


@pytest.fixture
def store(tmp_path: Path, whiteout_form: str) -> Store:
    """A fresh store at ``tmp_path/store`` keeping whiteouts in the form under test."""
    return Store(tmp_path / "store", whiteouts=whiteout_form)


@pytest.fixture
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """Layer builders and tree inspectors; scratch files go outside the test's ``tmp_path``."""
    return Kit(tmp_path_factory.mktemp("kit"))


@pytest.fixture(params=("inline", "child"), scope="module")
def writes(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where an unpack makes its create calls: ``inline`` in its own process (a small layer),
    ``child`` in the writer process (what a large layer gets) from the first call on."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "child":
            patch.setattr(fswriter, "PROCESS_AFTER_ENTRIES", 0)
        yield request.param
