"""The catalog's side of the registry client: the settings it is built with, stored logins,
what an image row keeps of a config, and --platform through a pull job."""

from __future__ import annotations

import json

import pytest
from pytest_django import Settings

from layerhub.engine.errors import RegistryAuthError
from layerhub.engine.manifest import (
    MAX_HISTORY_ENTRIES,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    parse_config,
)
from layerhub.engine.reference import parse_reference
from layerhub.images.models import RegistryCredential
from layerhub.images.selectors import image_history
from layerhub.images.services import image_pull
from layerhub.images.services.pull import StoredImage, image_record, registry_client_for
from layerhub.jobs.models import Job
from tests.support.hostile import sha256
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_client_takes_its_timings_from_settings(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_TIMEOUT = 2.5
    settings.LAYERHUB_REGISTRY_DEADLINE = 1.5
    settings.LAYERHUB_REGISTRY_STALL_TIMEOUT = 0.75
    with registry_client_for(team=default_team(), registry="127.0.0.1:5999") as client:
        assert (client.timeout, client.deadline, client.stall_timeout) == (2.5, 1.5, 0.75)


def test_a_login_that_no_longer_decrypts_asks_to_log_in_again(settings: Settings) -> None:
    saved = RegistryCredential(team=default_team(), host="127.0.0.1:5999", username="alice")
    saved.set_password("s3cret")
    saved.save()
    settings.SECRET_KEY = "another key: every stored login is now unreadable"
    with pytest.raises(RegistryAuthError, match=r"log in to 127\.0\.0\.1:5999 again"):
        registry_client_for(team=default_team(), registry="127.0.0.1:5999")


def test_an_image_row_keeps_a_bounded_summary_of_a_big_config() -> None:
    diff_id = sha256(b"layer")
    run = {
        "Cmd": ["/bin/sh", "-c", "exec app"],
        "Env": ["PATH=/usr/bin:/bin", "LONG=" + "v" * 10_000],
        "WorkingDir": "/srv",
        "User": "app",
    }
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            **run,
            "Labels": {f"label{i}": "l" * 500 for i in range(5_000)},
            "ExposedPorts": {f"{p}/tcp": {} for p in range(1, 2_000)},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "x" * 300, "empty_layer": True} for _ in range(15_000)]
        + [{"created_by": "RUN make"}],
        "unknown": ["y" * 1000] * 500,
    }
    raw = json.dumps(doc).encode()
    assert len(raw) > 5 * 2**20
    config = parse_config(raw)
    layer = Descriptor(OCI_LAYER_GZIP, sha256(b"blob"), 10)
    manifest = ImageManifest(OCI_MANIFEST, Descriptor("", sha256(raw), len(raw)), (layer,))
    stored = StoredImage(sha256(b"manifest"), manifest, None, sha256(raw), config)

    image = image_record(
        team=default_team(), refs=[parse_reference("127.0.0.1:5999/team/big:v1")], resolved=stored
    )
    image.refresh_from_db()

    assert len(json.dumps(image.config)) < 512 * 1024
    kept = image.config["config"]
    assert {k: kept[k] for k in run} == run  # what running a container needs, exactly
    assert len(kept["Labels"]) == 256
    assert len(kept["ExposedPorts"]) == 256
    assert len(image.config["history"]) == MAX_HISTORY_ENTRIES
    assert "unknown" not in image.config
    assert image.config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    # the entry that made the layer is kept, and docker history matches it with the layer
    top = image_history(image)[0]
    assert (top.created_by, top.size, top.empty_layer) == ("RUN make", 10, False)


@pytest.mark.usefixtures("eager")
def test_pulling_a_platform_the_image_does_not_offer_names_what_it_offers(
    registry: Registry, settings: Settings
) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01
    job = image_pull(
        team=default_team(), reference=f"{registry.host}/team/app:v1", platform="linux/arm64"
    )
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "no image for platform linux/arm64 (the image offers only linux/amd64)" in job.error

    job = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
