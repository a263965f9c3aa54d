"""Which images contain a file: the final view of images built here (added then deleted, a
directory removed, an opaque directory, a replaced file, a parent replaced by a symlink,
hardlinks, symlinks not followed), globs, prefixes and hashes, teams kept apart, the API,
the page and ``manage.py files``.

The images are built as layer tars, imported through the real services and unpacked into a
real store; each layer is then indexed from its snapshot (``layer_files_from_snapshot``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from layerhub.accounts.models import Membership, Role, Team
from layerhub.core.store import get_store
from layerhub.images.file_index import layer_files_from_snapshot
from layerhub.images.file_search import (
    MAX_PATTERN,
    InvalidFileQuery,
    file_query,
    file_search,
)
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, ImageLayer
from layerhub.images.services import image_import
from layerhub.jobs.models import Job
from tests.support.oci import LAYER_MEDIA, MTIME, LayerBlob, sha, write_layout
from tests.support.oci import Image as OciImage
from tests.support.teams import default_team
from workers.celery import app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]

LIB = "usr/lib/x86_64-linux-gnu"
# an entry: (path, value) with value bytes (a file), None (a directory), ("symlink", target),
# ("hardlink", path), "whiteout" or "opaque" (the directory's .wh..wh..opq marker)
Entry = tuple[str, "bytes | tuple[str, str] | str | None"]

BASE: list[Entry] = [
    ("etc", None),
    ("etc/os-release", b"PRETTY_NAME=Debian\n"),
    ("usr", None),
    ("usr/lib", None),
    (LIB, None),
    (f"{LIB}/libssl.so.3", b"ssl 3.0.14"),
    (f"{LIB}/libcrypto.so.3", b"crypto 3.0.14"),
    ("sbin", ("symlink", LIB)),
    ("opt", None),
    ("opt/app", None),
    ("opt/app/old.conf", b"old"),
    ("srv", None),
    ("srv/data", None),
    ("srv/data/keep", b"keep"),
    ("var", None),
    ("var/cache", None),
    ("var/cache/x", b"cached"),
    ("tmp", None),
    ("tmp/added", b"temporary"),
    ("bin", None),
    ("bin/tool", b"the tool"),
    ("bin/tool-alias", ("hardlink", "bin/tool")),
]
CHANGES: list[Entry] = [
    ("tmp", None),
    ("tmp/added", "whiteout"),  # added by the layer below, deleted here
    ("srv", None),
    ("srv/data", "whiteout"),  # a directory removed with what it held
    ("opt", None),
    ("opt/app", None),
    ("opt/app", "opaque"),  # rm -rf opt/app && mkdir opt/app in one RUN
    ("opt/app/new.conf", b"new"),
    ("usr", None),
    ("usr/lib", None),
    (LIB, None),
    (f"{LIB}/libssl.so.3", b"ssl 3.0.15"),  # replaced by an upgrade
    ("var", None),
    ("var/cache", ("symlink", "/tmp")),  # a directory replaced by a symlink
]
TOUCH: list[Entry] = [
    ("etc", None),
    ("etc/os-release", b"PRETTY_NAME=Debian\n"),  # the same bytes again
]


def layer_blob(entries: list[Entry]) -> LayerBlob:
    """A gzip layer of ``entries``, in their order (OCI whiteout files for deletions)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, value in entries:
            name = path
            if value in ("whiteout", "opaque"):
                parent, _, base = path.rpartition("/")
                if value == "opaque":
                    name = f"{path}/.wh..wh..opq"
                else:
                    name = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
                value = b""
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(value, tuple):
                kind, target = value
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname, info.mode = target, 0o777 if kind == "symlink" else 0o755
                tf.addfile(info)
            else:
                assert isinstance(value, bytes)
                info.size, info.mode = len(value), 0o644
                tf.addfile(info, io.BytesIO(value))
    raw = buf.getvalue()
    return LayerBlob(LAYER_MEDIA["gzip"], gzip.compress(raw, mtime=0), sha(raw))


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place (the import queues the unpacks)."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


def index_image(image: Image) -> None:
    store = get_store()
    for row in ImageLayer.objects.filter(image=image).select_related("layer"):
        tree = store.snapshots.path(row.layer.chain_id)
        layer_files_from_snapshot(row.layer, tree, store.whiteouts)


def import_images(
    tmp_path: Path, tagged: dict[str, list[list[Entry]]], team: Team | None = None
) -> dict[str, Image]:
    layout = write_layout(
        tmp_path / f"layout-{len(list(tmp_path.iterdir()))}",
        {ref: OciImage([layer_blob(e) for e in layers]) for ref, layers in tagged.items()},
    )
    job = image_import(team=team or default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    images = {ref: image_lookup(ref) for ref in tagged}
    for image in images.values():
        index_image(image)
    return images


@pytest.fixture
def images(tmp_path: Path, layerhub_store: Path) -> dict[str, Image]:
    return import_images(
        tmp_path,
        {
            "localhost/fs:base": [BASE],
            "localhost/fs:final": [BASE, CHANGES, TOUCH],
        },
    )


@pytest.fixture
def admin() -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw")


def found(user: object, pattern: str = "", sha256: str = "") -> set[tuple[str, str, int]]:
    """(image tag, path, position of the providing layer) of every row."""
    result = file_search(user=user, query=file_query(pattern=pattern, sha256=sha256))
    return {(result.names[m.image_id][0], m.path, m.layer_position) for m in result.matches}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BASE_TAG, FINAL_TAG = "localhost/fs:base", "localhost/fs:final"


def test_final_view_deletions(images: dict[str, Image], admin: User) -> None:
    # added, then deleted by a whiteout in a later layer
    assert found(admin, "/tmp/added") == {(BASE_TAG, "/tmp/added", 0)}
    # a directory removed: what it held is gone too
    assert found(admin, "/srv/data/keep") == {(BASE_TAG, "/srv/data/keep", 0)}
    assert found(admin, "/srv/") == {(BASE_TAG, "/srv/data", 0), (BASE_TAG, "/srv/data/keep", 0)}
    # an opaque directory hides the lower layers' children, not its own layer's
    assert found(admin, "/opt/app/old.conf") == {(BASE_TAG, "/opt/app/old.conf", 0)}
    assert found(admin, "/opt/") == {
        (BASE_TAG, "/opt/app", 0),
        (BASE_TAG, "/opt/app/old.conf", 0),
        (FINAL_TAG, "/opt/app", 1),
        (FINAL_TAG, "/opt/app/new.conf", 1),
    }
    # a parent directory replaced by a symlink: the files under it are gone
    assert found(admin, "/var/cache/x") == {(BASE_TAG, "/var/cache/x", 0)}
    assert found(admin, "var/cache") == {(BASE_TAG, "/var/cache", 0), (FINAL_TAG, "/var/cache", 1)}


def test_replaced_files_are_provided_by_the_later_layer(
    images: dict[str, Image], admin: User
) -> None:
    assert found(admin, "/etc/os-release") == {
        (BASE_TAG, "/etc/os-release", 0),
        (FINAL_TAG, "/etc/os-release", 2),
    }
    # the same content again: the later copy matches, and provides it
    assert found(admin, sha256=digest(b"PRETTY_NAME=Debian\n")) == {
        (BASE_TAG, "/etc/os-release", 0),
        (FINAL_TAG, "/etc/os-release", 2),
    }
    # upgraded: the old content is no more in the final image, the new one is, from layer 1
    old = hashlib.sha256(b"ssl 3.0.14").hexdigest()
    assert found(admin, sha256=old) == {(BASE_TAG, f"/{LIB}/libssl.so.3", 0)}
    assert found(admin, sha256=digest(b"ssl 3.0.15").upper().replace("SHA256:", "sha256:")) == {
        (FINAL_TAG, f"/{LIB}/libssl.so.3", 1)
    }
    result = file_search(user=admin, query=file_query(sha256=digest(b"ssl 3.0.15")))
    (match,) = result.matches
    assert (match.kind, match.size, match.sha256) == ("f", 10, digest(b"ssl 3.0.15"))
    assert result.layer_digests[match.layer_id].startswith("sha256:")


def test_hardlinks_and_symlinks(images: dict[str, Image], admin: User) -> None:
    # both names of a hardlinked file have its content
    assert found(admin, sha256=digest(b"the tool")) == {
        (tag, path, 0) for tag in (BASE_TAG, FINAL_TAG) for path in ("/bin/tool", "/bin/tool-alias")
    }
    # a symlink is an entry of its own; what it points to is not searched through it
    assert found(admin, "/sbin") == {(BASE_TAG, "/sbin", 0), (FINAL_TAG, "/sbin", 0)}
    assert found(admin, "/sbin/libssl.so.3") == set()
    assert {path for _, path, _ in found(admin, "*/libssl.so.3")} == {f"/{LIB}/libssl.so.3"}


def test_globs_and_prefixes(images: dict[str, Image], admin: User) -> None:
    libssl = {(BASE_TAG, f"/{LIB}/libssl.so.3", 0), (FINAL_TAG, f"/{LIB}/libssl.so.3", 1)}
    assert found(admin, "*/libssl.so.3") == libssl
    assert found(admin, "libssl.so.?") == libssl  # no "/": the name, as find -name
    assert found(admin, "libssl.so.[0-9]") == libssl
    assert found(admin, "libssl.so.[!3]") == set()
    # a name by its end (PostgreSQL: through the index of reversed names)
    assert {p for _, p, _ in found(admin, "*.so.3")} == {
        f"/{LIB}/libssl.so.3",
        f"/{LIB}/libcrypto.so.3",
    }
    assert found(admin, "*.SO.3") == set()
    assert found(admin, "/usr/lib/*/libcrypto*") == {
        (BASE_TAG, f"/{LIB}/libcrypto.so.3", 0),
        (FINAL_TAG, f"/{LIB}/libcrypto.so.3", 0),
    }
    # the last component is one name: "*" does not reach into directories there
    assert found(admin, "/e*") == {(BASE_TAG, "/etc", 0), (FINAL_TAG, "/etc", 2)}
    assert {p for _, p, _ in found(admin, "/usr/lib/*")} == {f"/{LIB}"}
    assert {p for _, p, _ in found(admin, "usr/lib/*/*")} == {
        f"/{LIB}/libssl.so.3",
        f"/{LIB}/libcrypto.so.3",
    }
    assert {p for _, p, _ in found(admin, "usr/*/*.so.3")} == {
        f"/{LIB}/libssl.so.3",
        f"/{LIB}/libcrypto.so.3",
    }
    # case matters, as in the file system; a dot is a dot
    assert found(admin, "*/LIBSSL.so.3") == set()
    assert found(admin, "*/libssl.so3") == set()
    assert found(admin, "/usr/lib/x86_64-linux-gnu/libssl.so.3") == libssl
    assert found(admin, "/USR/") == set()
    assert {p for _, p, _ in found(admin, "/usr/lib/")} == {
        f"/{LIB}",
        f"/{LIB}/libssl.so.3",
        f"/{LIB}/libcrypto.so.3",
    }


def test_results_are_newest_first_and_limited(images: dict[str, Image], admin: User) -> None:
    Image.objects.filter(pk=images[BASE_TAG].pk).update(added_at=images[FINAL_TAG].added_at)
    newest, older = sorted(images.values(), key=lambda i: i.pk, reverse=True)
    result = file_search(user=admin, query=file_query(pattern="/bin/tool*"))
    assert [m.image_id for m in result.matches] == [newest.pk] * 2 + [older.pk] * 2
    assert [m.path for m in result.matches][:2] == ["/bin/tool", "/bin/tool-alias"]
    assert not result.truncated
    limited = file_search(user=admin, query=file_query(pattern="/bin/tool*"), limit=3)
    assert len(limited.matches) == 3
    assert limited.truncated


def test_broad_searches_walk_images(
    images: dict[str, Image], admin: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the candidate cap, the images are walked newest first, a page of paths at a
    time: the same rows."""
    from layerhub.images import file_search as module

    patterns = ["/opt/", "/etc/os-release", "*/libssl.so.3", "/usr/lib/", "/srv/", "t*", "/*/*"]
    expected = {p: found(admin, p) for p in patterns}
    monkeypatch.setattr(module, "CANDIDATE_CAP", 1)
    monkeypatch.setattr(module, "PATH_PAGE", 1)
    for pattern in patterns:
        assert found(admin, pattern) == expected[pattern], pattern
    assert expected["/opt/"]


def test_bad_queries_are_refused() -> None:
    for pattern, message in [
        ("", "give a path"),
        ("   ", "give a path"),
        ("/", "every file"),
        ("x" * (MAX_PATTERN + 1), f"at most {MAX_PATTERN} characters"),
        ("usr/\x00lib", "NUL"),
        ("*", "more than"),
        ("usr//lib", "empty component"),
        ("lib[a\\b]", "bracket"),
        ("a?" * 33, "at most 32 wildcards"),
    ]:
        with pytest.raises(InvalidFileQuery, match=message):
            file_query(pattern=pattern)
    for bad in ("abc", "sha256:" + "g" * 64, "sha512:" + "a" * 64, "a" * 63):
        with pytest.raises(InvalidFileQuery, match="not a sha256"):
            file_query(sha256=bad)
    with pytest.raises(InvalidFileQuery, match="not both"):
        file_query(pattern="/etc", sha256="a" * 64)
    assert file_query(sha256="SHA256:" + "A" * 64).digest == b"\xaa" * 32


def test_teams_see_only_their_images(images: dict[str, Image], tmp_path: Path) -> None:
    other = Team.objects.create(name="other")
    outsider = User.objects.create_user("outsider", password="pw")
    Membership.objects.create(team=other, user=outsider, role=Role.VIEWER)
    member = User.objects.create_user("member", password="pw")
    Membership.objects.create(team=default_team(), user=member, role=Role.VIEWER)
    assert found(outsider, "*/libssl.so.3") == set()
    assert found(outsider, sha256=digest(b"ssl 3.0.15")) == set()
    private = import_images(
        tmp_path,
        {"localhost/other/app:1": [BASE, [("etc", None), ("etc/team", b"other")]]},
        team=other,
    )
    mine = private["localhost/other/app:1"]
    # the same layer as the default team's base: each team sees its own image through it
    result = file_search(user=outsider, query=file_query(pattern="*/libssl.so.3"))
    assert {m.image_id for m in result.matches} == {mine.pk}
    assert result.names == {mine.pk: ["localhost/other/app:1"]}
    theirs = file_search(user=member, query=file_query(pattern="*/libssl.so.3"))
    assert mine.pk not in {m.image_id for m in theirs.matches}
    assert {m.image_id for m in theirs.matches} == {i.pk for i in images.values()}
    assert all("other" not in n for names in theirs.names.values() for n in names)
    # no user at all (signed out): nothing
    from django.contrib.auth.models import AnonymousUser

    assert file_search(user=AnonymousUser(), query=file_query(pattern="/etc/")).matches == []


def test_api_searches_visible_images(images: dict[str, Image]) -> None:
    client = APIClient()
    member = User.objects.create_user("member", password="pw")
    Membership.objects.create(team=default_team(), user=member, role=Role.VIEWER)
    client.force_authenticate(member)
    answer = client.get("/api/v1/files/", {"pattern": "*/libssl.so.3", "limit": "1"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == 2
    (row,) = body["results"]
    assert row["image"] == images[FINAL_TAG].pk  # newest first
    assert row["image_names"] == [FINAL_TAG]
    assert row["path"] == f"/{LIB}/libssl.so.3"
    assert (row["type"], row["mode"], row["size"]) == ("file", "0644", 10)
    assert row["sha256"] == digest(b"ssl 3.0.15")
    assert row["layer_position"] == 1
    layer = ImageLayer.objects.get(image=images[FINAL_TAG], position=1).layer
    assert row["layer"] == layer.digest
    by_hash = client.get("/api/v1/files/", {"sha256": digest(b"the tool")}).json()
    assert {r["type"] for r in by_hash["results"]} == {"file", "hardlink"}
    for params, message in [
        ({}, "give a path"),
        ({"sha256": "nope"}, "not a sha256"),
        ({"pattern": "x" * (MAX_PATTERN + 1)}, "at most"),
    ]:
        bad = client.get("/api/v1/files/", params)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["message"].find(message) >= 0
    outsider = User.objects.create_user("outsider", password="pw")
    client.force_authenticate(outsider)
    assert client.get("/api/v1/files/", {"pattern": "*/libssl.so.3"}).json()["count"] == 0
    client.force_authenticate(None)
    assert client.get("/api/v1/files/", {"pattern": "*/libssl.so.3"}).status_code in (401, 403)


def test_search_page(images: dict[str, Image]) -> None:
    member = User.objects.create_user("member", password="pw")
    Membership.objects.create(team=default_team(), user=member, role=Role.VIEWER)
    client = Client()
    client.force_login(member)
    home = client.get("/").content.decode()
    assert 'href="/images/search/"' in home
    page = client.get("/images/search/", {"q": "/tmp/added"})
    assert page.status_code == 200
    html = page.content.decode()
    assert BASE_TAG in html
    assert FINAL_TAG not in html
    assert "1 match" in html
    by_hash = client.get("/images/search/", {"by": "sha256", "q": digest(b"ssl 3.0.15")})
    html = by_hash.content.decode()
    assert FINAL_TAG in html
    assert f"/{LIB}/libssl.so.3" in html
    bad = client.get("/images/search/", {"by": "sha256", "q": "123"})
    assert bad.status_code == 200
    assert "not a sha256" in bad.content.decode()
    # the packages tab is the same page
    packages = client.get("/images/search/", {"mode": "packages"}).content.decode()
    assert 'id="package-search"' in packages
    assert 'href="/images/search/"' in packages

    outsider = User.objects.create_user("outsider", password="pw")
    client.force_login(outsider)
    assert "localhost/fs" not in client.get("/images/search/", {"q": "/etc/"}).content.decode()


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("files", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_command_prints_a_table(images: dict[str, Image]) -> None:
    out, _ = run("*/libssl.so.3")
    lines = out.splitlines()
    assert lines[0].split() == ["IMAGE", "PATH", "TYPE", "SIZE", "LAYER"]
    assert lines[1].split()[:4] == [FINAL_TAG, f"/{LIB}/libssl.so.3", "file", "10B"]
    assert lines[1].endswith("(2)")
    assert lines[2].split()[0] == BASE_TAG
    out, _ = run("--sha256", digest(b"the tool"), "--limit", "1")
    assert len(out.splitlines()) == 2
    out, err = run("/nothing/here")
    assert len(out.splitlines()) == 1
    assert "no image you can see has /nothing/here" in err
    with pytest.raises(CommandError, match="not a sha256"):
        run("--sha256", "xyz")
    with pytest.raises(CommandError, match="give a path"):
        run()


def test_recorded_index_reads_back_exactly(layerhub_store: Path) -> None:
    """What ``layer_files_record`` writes (COPY on PostgreSQL, inserts elsewhere) reads back
    the same, hostile names included."""
    from layerhub.engine.file_index import FileRecord
    from layerhub.images.file_index import layer_files, layer_files_record
    from layerhub.images.models import Layer

    layer = Layer.objects.create(
        chain_id="sha256:" + "c" * 64,
        digest="sha256:" + "d" * 64,
        diff_id="sha256:" + "e" * 64,
        media_type=LAYER_MEDIA["gzip"],
        size=1,
    )
    records = [
        FileRecord("etc", "d", 0o755),
        FileRecord("etc/a\tb\\n\nc", "f", 0o4755, 1000, 1000, 3, b"\x00\\\n" * 10 + b"xy", ""),
        FileRecord("etc/ünïcödé \\N", "l", 0o777, link="../\\N\t"),
        FileRecord("etc/hard", "h", 0o644, size=3, sha256=b"\xff" * 32, link="etc/a\tb\\n\nc"),
        FileRecord("etc/gone", "w"),
        FileRecord("etc", "o"),
    ]
    summary = layer_files_record(layer, records)
    assert (summary.entry_count, summary.content_bytes) == (6, 3)
    assert layer_files([layer.pk]) == {layer.pk: records}
    # recording again replaces, all of it
    layer_files_record(layer, records[:1])
    assert layer_files([layer.pk]) == {layer.pk: records[:1]}


def test_seed_demo_indexes_layers(admin: User) -> None:
    from layerhub.images.models import FileEntry, LayerFiles

    out = StringIO()
    call_command("seed_demo", "--images", "60", "--file-layers", "12", "--files", "400", stdout=out)
    assert "indexed 12 layers" in out.getvalue()
    counts = list(LayerFiles.objects.values_list("entry_count", flat=True))
    assert len(counts) == 12
    assert all(300 <= n <= 400 for n in counts), counts
    assert FileEntry.objects.count() == sum(counts)
    # paths repeat across a family's layers, contents across near-twins
    from django.db.models import Count

    shared_paths = FileEntry.objects.values("path").annotate(n=Count("id")).filter(n__gt=1)
    assert shared_paths.count() > 100
    shared = FileEntry.objects.filter(kind="f").values("sha256").annotate(n=Count("id"))
    assert shared.filter(n__gt=1).count() > 50
    # the landmarks are there to be found, in the images on those layers
    result = file_search(user=admin, query=file_query(pattern="*/libssl.so.3"))
    assert result.matches
    with pytest.raises(CommandError, match="--files must be between"):
        call_command("seed_demo", "--force", "--files", "0", stdout=StringIO())


def test_hostile_names_do_not_stall_a_glob(images: dict[str, Image], admin: User) -> None:
    """A layer may hold a 4,000-character name; a glob with many stars against it is a
    bounded match (no backtracking regular expression runs over it here)."""
    from layerhub.engine.file_index import FileRecord
    from layerhub.images.file_index import layer_files_record

    top = ImageLayer.objects.filter(image=images[FINAL_TAG]).order_by("-position").first()
    assert top is not None
    long_name = "a" * 4000
    layer_files_record(
        top.layer,
        [FileRecord("etc", "d", 0o755), FileRecord(f"etc/{long_name}", "f", 0o644, size=1)],
    )
    pattern = "etc/" + "*a" * 15 + "*b"
    assert found(admin, pattern) == set()
    assert found(admin, "etc/" + "*a" * 15 + "*") == {(FINAL_TAG, f"/etc/{long_name}", 2)}
