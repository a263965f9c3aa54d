"""Containers over the API: files (list, read, write, upload, delete), docker diff, exec's
refusals, and what a read-only robot token may not do."""

from __future__ import annotations

import base64
from typing import cast

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import StreamingHttpResponse

from layerhub.accounts.models import Token
from layerhub.accounts.services import token_create
from layerhub.containers.models import Container
from layerhub.images.models import Image, Tag
from layerhub.jobs.models import Job
from tests.api.conftest import REGISTRY, World, bearer, token_client

pytestmark = pytest.mark.django_db

FILES = "/api/v1/containers/work/files/"
COMMIT = "/api/v1/containers/work/commit/"


def test_write_read_list_and_diff(world: World) -> None:
    developer = token_client(world.users["developer"])
    listed = developer.get("/api/v1/containers/").json()["results"]
    assert [(c["name"], c["image"]["references"]) for c in listed] == [
        ("work", [f"{REGISTRY}/alpha/app:1"])
    ]
    text = developer.post(FILES, {"path": "/etc/motd", "content": "hello\n"})
    assert text.status_code == 201, text.content
    assert text.json()["kind"] == "file"
    assert text.json()["mode"] == "-rw-r--r--"
    raw = bytes(range(256))
    binary = developer.post(
        FILES,
        {
            "path": "/bin/blob",
            "content": base64.b64encode(raw).decode(),
            "encoding": "base64",
            "mode": 0o755,
        },
    )
    assert binary.status_code == 201
    assert binary.json()["mode"] == "-rwxr-xr-x"
    read = developer.get(f"{FILES}content/", {"path": "/bin/blob"})
    assert read.status_code == 200
    assert cast(StreamingHttpResponse, read).getvalue() == raw
    upload = developer.post(
        f"{FILES}upload/",
        {"path": "/etc/uploaded", "file": SimpleUploadedFile("x", b"uploaded")},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    assert upload.json()["size"] == len(b"uploaded")
    listing = developer.get(FILES, {"path": "/etc"}).json()
    entries = {e["name"]: e["change"] for e in listing["entries"]}
    assert entries == {"motd": "W", "os-release": "", "uploaded": "W"}
    gone = developer.delete(FILES + "?path=/etc/os-release")
    assert gone.status_code == 204
    diff = developer.get("/api/v1/containers/work/diff/").json()
    assert diff["count"] == 6
    assert [(c["kind"], c["path"]) for c in diff["results"]] == [
        ("C", "/bin"),
        ("A", "/bin/blob"),
        ("C", "/etc"),
        ("A", "/etc/motd"),
        ("D", "/etc/os-release"),
        ("A", "/etc/uploaded"),
    ]
    one = developer.get("/api/v1/containers/work/diff/", {"limit": 1, "offset": 4}).json()
    assert one["results"] == [{"kind": "D", "path": "/etc/os-release"}]


@pytest.mark.parametrize(
    ("method", "url", "body", "code"),
    [
        ("get", FILES, {"path": "etc"}, "invalid_path"),
        ("get", FILES, {"path": "/etc/../.."}, "invalid_path"),
        ("get", FILES, {"path": "/nope"}, "path_not_found"),
        ("get", f"{FILES}content/", {"path": "/etc"}, "invalid_path"),
        ("post", FILES, {"path": "/no/such/dir/file", "content": ""}, "container_path_error"),
        ("post", FILES, {"path": "/etc/x", "content": "!", "encoding": "base64"}, "invalid"),
        ("post", FILES, {"path": "/etc/x", "content": "", "mode": 99999}, "invalid"),
        ("delete", FILES + "?path=/etc", None, "container_path_error"),
        ("delete", FILES + "?path=/", None, "container_path_error"),
        ("post", "/api/v1/containers/work/exec/", {}, "invalid"),
        ("post", "/api/v1/containers/work/exec/", {"command": []}, "invalid"),
        ("post", "/api/v1/containers/work/exec/", {"command_line": "sh -c 'x"}, "invalid"),
        ("post", "/api/v1/containers/work/exec/", {"command": ["x"], "timeout": 0}, "invalid"),
        (
            "post",
            "/api/v1/containers/work/commit/",
            {"changes": ["RUN rm -rf /"]},
            "invalid_change",
        ),
        ("post", "/api/v1/containers/work/commit/", {"repository": "A B"}, "invalid_reference"),
    ],
)
def test_bad_requests_are_4xx_with_their_message(
    world: World, method: str, url: str, body: dict[str, object] | None, code: str
) -> None:
    developer = token_client(world.users["developer"])
    send = getattr(developer, method)
    response = send(url, body) if body is not None else send(url)
    assert 400 <= response.status_code < 500, response.content
    assert response.json()["error"]["code"] == code, response.json()
    assert not Job.objects.filter(kind=Job.Kind.COMMIT).exists()


def test_a_read_only_robot_cannot_push_delete_or_commit(world: World) -> None:
    _, secret = token_create(
        name="reader", actor=world.users["owner"], scope=Token.Scope.READ, team=world.alpha
    )
    robot = bearer(secret)
    assert robot.get(f"/api/v1/images/{world.app.pk}/").status_code == 200
    assert robot.get(f"{FILES}content/", {"path": "/etc/os-release"}).status_code == 200
    refused = [
        robot.post(
            f"/api/v1/images/{world.app.pk}/push/",
            {"reference": f"{REGISTRY}/alpha/app:2", "team": "alpha"},
        ),
        robot.delete(f"/api/v1/images/{world.spare.pk}/"),
        robot.delete(f"/api/v1/tags/{world.app_tag.pk}/"),
        robot.post("/api/v1/containers/work/commit/", {"repository": f"{REGISTRY}/alpha/x:1"}),
        robot.post(FILES, {"path": "/etc/x", "content": "x"}),
        robot.delete("/api/v1/containers/work/"),
        robot.post("/api/v1/containers/", {"image": world.app.pk, "team": "alpha"}),
        robot.post("/api/v1/tokens/", {"name": "more", "scope": "read-write"}),
    ]
    for response in refused:
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "permission_denied"
    assert Image.objects.filter(pk=world.spare.pk).exists()
    assert Tag.objects.filter(pk=world.app_tag.pk).exists()
    assert Container.objects.filter(name="work").exists()
    assert not Job.objects.exclude(pk=world.job.pk).exists()


def test_a_read_write_robot_acts_as_a_developer_of_its_team(world: World) -> None:
    _, secret = token_create(
        name="writer", actor=world.users["owner"], scope=Token.Scope.READ_WRITE, team=world.alpha
    )
    robot = bearer(secret)
    assert robot.post(FILES, {"path": "/etc/x", "content": "x"}).status_code == 201
    commit = robot.post("/api/v1/containers/work/commit/", {"repository": f"{REGISTRY}/alpha/x:1"})
    assert commit.status_code == 202
    assert commit.json()["created_by"] == "robot$alpha+writer"
    assert robot.delete(f"/api/v1/tags/{world.app_tag.pk}/").status_code == 403
    assert robot.get(f"/api/v1/images/{world.secret.pk}/").status_code == 404
