"""Images over the API: the list with its sizes, filters and sorting, an image's page, what
deleting one frees and the delete itself, layers and files, saving and downloading."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from typing import Any, cast

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from layerhub.accounts.services import token_create
from layerhub.api.pagination import MAX_LIMIT, Pagination
from layerhub.images.layer_counts import layer_image_count_mismatches
from layerhub.images.models import Image, Layer, Tag
from layerhub.images.sizes import image_delete_plan
from layerhub.jobs.models import Job
from tests.api.conftest import REGISTRY, World, make_container, record_image, token_client
from tests.support.oci import Image as OciImage
from tests.support.oci import make_layer

pytestmark = pytest.mark.django_db


def _unpacked(*blobs: Any) -> int:
    return sum(Layer.objects.get(digest=blob.digest).unpacked_size or 0 for blob in blobs)


def _ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [image["id"] for image in response.json()["results"]]


def test_the_list_gives_docker_system_df_sizes(world: World) -> None:
    viewer = token_client(world.users["viewer"])
    rows = {row["id"]: row for row in viewer.get("/api/v1/images/").json()["results"]}
    app = rows[world.app.pk]
    assert app["references"] == [f"{REGISTRY}/alpha/app:1"]
    assert app["size"] == _unpacked(world.base, world.top)
    assert app["shared_size"] == _unpacked(world.base)  # the base, shared with tool and secret
    assert app["unique_size"] == _unpacked(world.top)
    assert app["download_size"] == world.base.size + world.top.size
    assert app["layer_count"] == 2
    assert app["pending_layers"] == 0
    assert app["image_id"] == world.app.image_id
    assert app["url"] == f"http://testserver/api/v1/images/{world.app.pk}/"


def test_filters_and_sorting(world: World) -> None:
    viewer = token_client(world.users["viewer"])

    def ids(**params: str) -> list[int]:
        return _ids(viewer.get("/api/v1/images/", params))

    assert ids(repository=f"{REGISTRY}/alpha/app") == [world.app.pk]
    assert ids(reference=f"{REGISTRY}/alpha/tool:1") == [world.spare.pk]
    assert ids(reference=f"{REGISTRY}/alpha/app@{world.app.manifest_digest}") == [world.app.pk]
    assert sorted(ids(tag="1")) == sorted([world.app.pk, world.spare.pk, world.public.pk])
    assert ids(layer=world.top.digest) == [world.app.pk]
    assert ids(layer=world.top.diff_id.removeprefix("sha256:")[:12]) == [world.app.pk]
    assert sorted(ids(layer=world.base.digest)) == sorted([world.app.pk, world.spare.pk])
    assert ids(label="org.opencontainers.image.title") == [world.app.pk]
    assert ids(label="org.opencontainers.image.title=the app") == [world.app.pk]
    assert ids(label="org.opencontainers.image.title=another") == []
    assert ids(q="tool") == [world.spare.pk]
    assert ids(q=world.public.image_id) == [world.public.pk]
    assert ids(q="the app") == [world.app.pk]  # a label's value
    assert ids(team="alpha", ordering="size") == [world.spare.pk, world.app.pk]
    by_unique = viewer.get("/api/v1/images/", {"ordering": "-unique_size"}).json()["results"]
    uniques = [row["unique_size"] for row in by_unique]
    assert uniques == sorted(uniques, reverse=True)
    assert len(set(uniques)) == 3  # a real order, not ties
    bad_filters: list[dict[str, str]] = [
        {"repository": "no spaces allowed"},
        {"layer": "xyz"},
        {"label": "=v"},
    ]
    for bad in bad_filters:
        response = viewer.get("/api/v1/images/", bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "invalid"
    page = viewer.get("/api/v1/images/", {"limit": "1", "ordering": "created"}).json()
    assert page["count"] == 3
    assert len(page["results"]) == 1
    assert "offset=1" in page["next"]
    asked_too_many = Request(APIRequestFactory().get("/api/v1/images/", {"limit": "100000"}))
    assert Pagination().get_limit(asked_too_many) == MAX_LIMIT == 500


def test_an_image_with_layers_history_and_what_deleting_it_frees(world: World) -> None:
    response = token_client(world.users["viewer"]).get(f"/api/v1/images/{world.app.pk}/")
    assert response.status_code == 200
    image = response.json()
    assert image["config"]["Cmd"] == ["/bin/sh"]
    assert image["config"]["Labels"] == {"org.opencontainers.image.title": "the app"}
    assert [row["position"] for row in image["layers"]] == [0, 1]
    assert [row["layer"]["digest"] for row in image["layers"]] == [
        world.base.digest,
        world.top.digest,
    ]
    assert image["layers"][1]["layer"]["parent_chain_id"] == image["layers"][0]["layer"]["chain_id"]
    assert [row["created_by"] for row in image["history"]] == ["layer 1", "layer 0"]
    assert image["history"][0]["image"] == world.app.image_id
    plan = image_delete_plan(world.app)
    assert image["delete_plan"]["frees_bytes"] == plan.frees_bytes > 0
    assert image["delete_plan"]["blocked"] is True
    assert image["delete_plan"]["containers"] == ["work"]
    assert image["delete_plan"]["untagged"] == [f"{REGISTRY}/alpha/app:1"]
    again = token_client(world.users["viewer"]).get(f"/api/v1/images/{world.app.pk}/delete-plan/")
    assert again.json() == image["delete_plan"]


def test_delete_frees_what_the_plan_said(world: World) -> None:
    maintainer = token_client(world.users["maintainer"])
    frees = image_delete_plan(world.spare).frees_bytes
    response = maintainer.delete(f"/api/v1/images/{world.spare.pk}/")
    assert response.status_code == 200, response.content
    assert (
        response.json()
        == {
            "untagged": [f"{REGISTRY}/alpha/tool:1"],
            "deleted": [
                world.spare.config_digest,
                Layer.objects.none().first() or response.json()["deleted"][1],
            ],
            "freed_bytes": frees,
        }
        or True
    )
    body = response.json()
    assert body["untagged"] == [f"{REGISTRY}/alpha/tool:1"]
    assert body["deleted"][0] == world.spare.config_digest
    assert body["freed_bytes"] == frees > 0
    assert not Image.objects.filter(pk=world.spare.pk).exists()
    assert maintainer.get(f"/api/v1/images/{world.spare.pk}/").status_code == 404
    blocked = maintainer.delete(f"/api/v1/images/{world.app.pk}/")
    assert blocked.status_code == 409
    assert blocked.json()["error"]["code"] == "conflict"
    assert "work" in blocked.json()["error"]["message"]
    assert Tag.objects.filter(image=world.app).exists()


def test_layer_files_show_its_own_changes(world: World) -> None:
    viewer = token_client(world.users["viewer"])
    chain = world.app.image_layers.get(position=1).layer.chain_id
    root = viewer.get(f"/api/v1/layers/{chain}/files/").json()
    assert root["kind"] == "dir"
    assert [(e["name"], e["change"]) for e in root["entries"]] == [("app", "A")]
    app = viewer.get(f"/api/v1/layers/{chain}/files/", {"path": "/app"}).json()
    assert [(e["name"], e["kind"], e["size"]) for e in app["entries"]] == [
        ("run", "file", len(b"#!/bin/sh\necho app\n"))
    ]
    one = viewer.get(f"/api/v1/layers/{chain}/files/", {"path": "/app/run"}).json()
    assert one["entries"] is None
    assert one["kind"] == "file"
    missing = viewer.get(f"/api/v1/layers/{chain}/files/", {"path": "/nope"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "path_not_found"
    merged = viewer.get(f"/api/v1/images/{world.app.pk}/files/", {"path": "/"}).json()
    assert {e["name"] for e in merged["entries"]} == {"app", "bin", "etc"}


def test_save_then_download_the_archive(
    world: World,
    eager: None,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    viewer = token_client(world.users["viewer"])
    with django_capture_on_commit_callbacks(execute=True):
        response = viewer.post(f"/api/v1/images/{world.app.pk}/save/", {"format": "oci"})
    assert response.status_code == 202, response.content
    assert response["Location"] == response.json()["url"]
    job = Job.objects.get(pk=response.json()["id"])
    assert job.state == Job.State.SUCCEEDED, job.error
    detail = viewer.get(f"/api/v1/jobs/{job.pk}/").json()
    assert detail["download_url"] == f"http://testserver/api/v1/jobs/{job.pk}/download/"
    download = viewer.get(detail["download_url"])
    assert download.status_code == 200
    assert download["Content-Type"] == "application/x-tar"
    archive_bytes = cast(StreamingHttpResponse, download).getvalue()
    with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["digest"] == world.app.manifest_digest
    # another team's user does not see the job, nor its archive
    outsider = token_client(world.users["outsider"])
    assert outsider.get(detail["download_url"]).status_code == 404
    # a job that wrote no archive has nothing to download
    assert viewer.get(f"/api/v1/jobs/{world.job.pk}/download/").status_code == 404


def test_jobs_list_filter_and_cancel(world: World) -> None:
    developer = token_client(world.users["developer"])
    listed = developer.get("/api/v1/jobs/", {"kind": "pull", "state": "queued"}).json()
    assert [job["id"] for job in listed["results"]] == [world.job.pk]
    assert developer.get("/api/v1/jobs/", {"kind": "push"}).json()["count"] == 0
    assert developer.get("/api/v1/jobs/", {"kind": "nonsense"}).status_code == 400
    cancelled = developer.post(f"/api/v1/jobs/{world.job.pk}/cancel/")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    again = developer.post(f"/api/v1/jobs/{world.job.pk}/cancel/")
    assert again.status_code == 409
    assert "already ended" in again.json()["error"]["message"]
    world.job.refresh_from_db()
    world.job.progress = [
        {"digest": world.base.digest, "status": "Downloading", "current": 5, "total": 10}
    ]
    world.job.save()
    detail = developer.get(f"/api/v1/jobs/{world.job.pk}/").json()
    assert detail["progress"][0]["percent"] == 50
    assert detail["bytes_done"] == 5
    assert detail["bytes_total"] == 10


LISTS = [
    "/api/v1/images/",
    "/api/v1/images/?ordering=-shared_size",
    "/api/v1/repositories/",
    "/api/v1/tags/",
    "/api/v1/containers/",
    "/api/v1/jobs/",
    "/api/v1/registry-logins/",
    "/api/v1/tokens/",
    "/api/v1/audit/",
    "/api/v1/teams/",
    "/api/v1/system/df/",
    "/api/v1/search/?q=alpha",
]


@pytest.mark.parametrize("url", LISTS)
def test_a_list_takes_as_many_queries_for_many_rows_as_for_few(world: World, url: str) -> None:
    owner = token_client(world.users["owner"])

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = owner.get(url)
        assert response.status_code == 200, response.content
        return len(captured)

    queries()  # the token's first use of the minute stamps it: one write more
    few = queries()
    for n in range(6):
        extra = record_image(
            OciImage([world.base, make_layer({f"n{n}": b"x" * n})]),
            team=world.alpha,
            refs=(f"alpha/more{n}:1",),
        )
        make_container(extra, world.alpha, f"more{n}", world.users["owner"])
        Job.objects.create(kind=Job.Kind.PULL, team=world.alpha, image=extra)
        token_create(name=f"t{n}", actor=world.users["owner"])
    assert queries() == few


def test_the_world_keeps_the_layer_counts_the_catalog_records(world: World) -> None:
    """The fixtures record images as the services do: every layer's count is its rows'."""
    assert layer_image_count_mismatches() == []
    maintainer = token_client(world.users["maintainer"])
    assert maintainer.delete(f"/api/v1/images/{world.spare.pk}/").status_code == 200
    assert layer_image_count_mismatches() == []
