"""An image's installed packages, recorded when its unpack ends, searched by name and version in
each ecosystem's order, for the images a user may see; ``manage.py packages``.

The images are built here (busybox-static as the base, package databases in layers above it),
imported through the real services and unpacked into a real store.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from layerhub.accounts.models import Membership, Role, Team
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, Package, PackageScan
from layerhub.images.package_search import (
    InvalidPackageQuery,
    package_query,
    package_search,
)
from layerhub.images.services import image_import
from layerhub.images.services.packages import image_packages_record
from layerhub.jobs.models import Job
from tests.support.busybox import busybox_layer
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, Tree, make_layer, write_layout
from tests.support.teams import default_team
from workers.celery import app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]

SITE = "usr/lib/python3/dist-packages"
STATUS = b"""Package: openssl
Status: install ok installed
Architecture: amd64
Version: 3.0.14-1~deb12u2

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u7
"""
NEWER_STATUS = STATUS.replace(b"3.0.14-1~deb12u2", b"3.0.15-1~deb12u1")


def metadata(name: str, version: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n".encode()


PACKAGES_TREE: Tree = {
    "var": None,
    "var/lib": None,
    "var/lib/dpkg": None,
    "var/lib/dpkg/status": STATUS,
    "lib": None,
    "lib/apk": None,
    "lib/apk/db": None,
    "lib/apk/db/installed": b"P:libssl3\nV:3.1.4-r5\nA:x86_64\no:openssl\n\nP:musl\nV:1.2.4-r2\n",
    "usr/lib": None,
    "usr/lib/python3": None,
    SITE: None,
    f"{SITE}/requests-2.31.0.dist-info": None,
    f"{SITE}/requests-2.31.0.dist-info/METADATA": metadata("requests", "2.31.0"),
    f"{SITE}/Old_Lib-1.0.dist-info": None,
    f"{SITE}/Old_Lib-1.0.dist-info/METADATA": metadata("Old_Lib", "1.0"),
    # hostile: huge, binary, and a link out of the image to the host's shadow file
    f"{SITE}/huge-1.dist-info": None,
    f"{SITE}/huge-1.dist-info/METADATA": b"Name: huge\nVersion: 1\n" + b"x" * (3 << 20),
    f"{SITE}/binary-1.dist-info": None,
    f"{SITE}/binary-1.dist-info/METADATA": b"Name: binary\x00\nVersion: 1\n",
    f"{SITE}/shadow-1.dist-info": None,
    f"{SITE}/shadow-1.dist-info/METADATA": ("symlink", "/../../../../etc/shadow"),
}
REMOVAL_TREE: Tree = {
    "usr": None,
    "usr/lib": None,
    "usr/lib/python3": None,
    SITE: None,
    f"{SITE}/Old_Lib-1.0.dist-info": "whiteout",  # pip uninstall in a later layer
}


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place (the import queues the unpacks)."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


def base_layer() -> LayerBlob:
    raw = busybox_layer()
    return LayerBlob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress(raw, mtime=0),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )


def import_images(tmp_path: Path, tagged: dict[str, list[Tree]], team: Team | None = None) -> None:
    layout = write_layout(
        tmp_path / f"layout-{len(list(tmp_path.iterdir()))}",
        {ref: OciImage([base_layer(), *map(make_layer, trees)]) for ref, trees in tagged.items()},
    )
    job = image_import(team=team or default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error


@pytest.fixture
def images(tmp_path: Path, layerhub_store: Path) -> dict[str, Image]:
    import_images(
        tmp_path,
        {
            "localhost/app:old": [PACKAGES_TREE, REMOVAL_TREE],
            "localhost/app:new": [{**PACKAGES_TREE, "var/lib/dpkg/status": NEWER_STATUS}],
        },
    )
    return {tag: image_lookup(f"localhost/app:{tag}") for tag in ("old", "new")}


def packages_of(image: Image) -> set[tuple[str, str, str]]:
    return set(Package.objects.filter(image=image).values_list("ecosystem", "name", "version"))


def test_unpack_records_the_final_trees_packages(images: dict[str, Image]) -> None:
    old = images["old"]
    assert packages_of(old) == {
        ("deb", "openssl", "3.0.14-1~deb12u2"),
        ("deb", "libc6", "2.36-9+deb12u7"),
        ("apk", "libssl3", "3.1.4-r5"),
        ("apk", "musl", "1.2.4-r2"),
        ("python", "requests", "2.31.0"),
    }
    # removed by a later layer: only in the image without that layer
    assert ("python", "Old_Lib", "1.0") in packages_of(images["new"])
    scan = PackageScan.objects.get(image=old)
    assert scan.count == 5
    notes = "\n".join(scan.notes)
    assert "huge-1.dist-info/METADATA" in notes
    assert "binary content" in notes
    assert "shadow-1.dist-info/METADATA: no such file" in notes
    row = Package.objects.get(image=old, name="requests")
    assert row.source_path == f"/{SITE}/requests-2.31.0.dist-info/METADATA"
    assert Package.objects.get(image=images["new"], name="Old_Lib").name_key == "old-lib"


def test_rescan_replaces_the_list(images: dict[str, Image]) -> None:
    old = images["old"]
    Package.objects.filter(image=old, name="openssl").update(version="0.0.1")
    Package.objects.create(
        image=old, ecosystem="deb", name="ghost", name_key="ghost", version="1", source_path="/x"
    )
    image_packages_record(image=old)
    assert ("deb", "openssl", "3.0.14-1~deb12u2") in packages_of(old)
    assert not Package.objects.filter(image=old, name="ghost").exists()


def search(
    user: object,
    name: str,
    ecosystem: str | None = None,
    op: str | None = None,
    version: str | None = None,
) -> set[tuple[int, str, str]]:
    query = package_query(name=name, ecosystem=ecosystem, op=op, version=version)
    return {(p.image_id, p.name, p.version) for p in package_search(user=user, query=query)}


def test_search_compares_in_each_ecosystems_order(images: dict[str, Image]) -> None:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    old, new = images["old"].pk, images["new"].pk
    assert search(admin, "openssl", "deb", "<", "3.0.15") == {(old, "openssl", "3.0.14-1~deb12u2")}
    # 3.0.15-1~deb12u1 is above 3.0.15~ and below 3.0.15: the tilde rule, not text order
    assert search(admin, "openssl", op=">", version="3.0.15~") == {
        (new, "openssl", "3.0.15-1~deb12u1")
    }
    assert search(admin, "openssl") == {
        (old, "openssl", "3.0.14-1~deb12u2"),
        (new, "openssl", "3.0.15-1~deb12u1"),
    }
    assert search(admin, "libssl3", "apk", ">=", "3.1.4") == {
        (old, "libssl3", "3.1.4-r5"),
        (new, "libssl3", "3.1.4-r5"),
    }
    # -r5 is a revision of 3.1.4: above it, below the patch release 3.1.4_p1
    assert search(admin, "libssl3", "apk", "<", "3.1.4") == set()
    assert len(search(admin, "libssl3", "apk", "<", "3.1.4_p1")) == 2
    # a Python name in any spelling PEP 503 folds together
    assert search(admin, "old.lib", "python", "=", "1.0") == {(new, "Old_Lib", "1.0")}
    assert search(admin, "REQUESTS", op="<", version="2.32") == {
        (old, "requests", "2.31.0"),
        (new, "requests", "2.31.0"),
    }
    with pytest.raises(InvalidPackageQuery):
        package_query(name="openssl", op="<", version=None)
    with pytest.raises(InvalidPackageQuery):
        package_query(name="openssl", ecosystem="cargo", op=None, version=None)
    with pytest.raises(InvalidPackageQuery):
        package_query(name=" ", op=None, version=None)


def test_search_sees_only_visible_images(images: dict[str, Image], tmp_path: Path) -> None:
    other = Team.objects.create(name="other")
    outsider = User.objects.create_user("outsider", password="pw")
    Membership.objects.create(team=other, user=outsider, role=Role.VIEWER)
    assert search(outsider, "openssl") == set()
    import_images(tmp_path, {"localhost/other/app:1": [PACKAGES_TREE]}, team=other)
    mine = image_lookup("localhost/other/app:1")
    assert search(outsider, "openssl") == {(mine.pk, "openssl", "3.0.14-1~deb12u2")}
    member = User.objects.create_user("member", password="pw")
    Membership.objects.create(team=default_team(), user=member, role=Role.VIEWER)
    assert {p[0] for p in search(member, "openssl")} == {images["old"].pk, images["new"].pk}


def run(*args: str) -> str:
    out = StringIO()
    call_command("packages", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_command_scans_and_searches(images: dict[str, Image]) -> None:
    old = images["old"]
    PackageScan.objects.filter(image=old).delete()
    Package.objects.filter(image=old).delete()
    # without --reindex: only the image never scanned
    output = run()
    assert f"{old.image_id}: 5 packages, 3 skipped" in output
    assert images["new"].image_id not in output
    assert packages_of(old)
    assert images["new"].image_id in run("--reindex")
    assert "6 packages" in run("localhost/app:new")

    found = run("--search", "openssl", "--below", "3.0.15")
    lines = found.splitlines()
    assert lines[0].split() == ["IMAGE", "ECOSYSTEM", "PACKAGE", "VERSION", "FILE"]
    assert len(lines) == 2
    assert lines[1].split()[:4] == ["localhost/app:old", "deb", "openssl", "3.0.14-1~deb12u2"]
    assert len(run("--search", "openssl", "--at-least", "3.0.14").splitlines()) == 3
    with pytest.raises(CommandError, match=r"(?i)no such image"):
        run("localhost/nothing:here")
    with pytest.raises(CommandError, match="needs both an operator and a version"):
        run("--search", "openssl", "--below", "")


def test_api_searches_visible_images(images: dict[str, Image]) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    member = User.objects.create_user("member", password="pw")
    Membership.objects.create(team=default_team(), user=member, role=Role.VIEWER)
    client.force_authenticate(member)
    answer = client.get("/api/v1/packages/", {"name": "openssl", "op": "<", "version": "3.0.15"})
    assert answer.status_code == 200
    body = answer.json()
    assert [(r["image"], r["version"]) for r in body["results"]] == [
        (images["old"].pk, "3.0.14-1~deb12u2")
    ]
    listing = client.get("/api/v1/packages/", {"image": str(images["old"].pk), "ecosystem": "apk"})
    assert {r["name"] for r in listing.json()["results"]} == {"libssl3", "musl"}
    bad = client.get("/api/v1/packages/", {"name": "openssl", "op": "<"})
    assert bad.status_code == 400
    assert "operator and a version" in bad.content.decode()
    outsider = User.objects.create_user("outsider", password="pw")
    client.force_authenticate(outsider)
    assert client.get("/api/v1/packages/", {"name": "openssl"}).json()["count"] == 0


def test_pages_search_and_image_section(images: dict[str, Image]) -> None:
    from django.test import Client

    member = User.objects.create_user("member", password="pw")
    Membership.objects.create(team=default_team(), user=member, role=Role.VIEWER)
    client = Client()
    client.force_login(member)
    page = client.get("/images/packages/", {"name": "openssl", "op": "<", "version": "3.0.15"})
    assert page.status_code == 200
    html = page.content.decode()
    assert "localhost/app:old" in html
    assert "3.0.14-1~deb12u2" in html
    assert "localhost/app:new" not in html
    bad = client.get("/images/packages/", {"name": "openssl", "ecosystem": "cargo"})
    assert bad.status_code == 200
    assert "unknown ecosystem" in bad.content.decode()

    detail = client.get(f"/images/{images['old'].pk}/").content.decode()
    section_url = f"/images/{images['old'].pk}/packages/"
    assert section_url in detail
    section = client.get(section_url).content.decode()
    assert 'data-count="deb">2<' in section
    assert 'data-count="python">1<' in section
    assert "3 files skipped" in section
    assert "Old_Lib" not in section

    outsider = User.objects.create_user("outsider", password="pw")
    client.force_login(outsider)
    assert client.get(section_url).status_code == 404
    assert (
        "localhost/app" not in client.get("/images/packages/", {"name": "openssl"}).content.decode()
    )


def test_an_image_without_layers_records_no_packages(layerhub_store: Path) -> None:
    image = Image.objects.create(
        manifest_digest="sha256:" + "1" * 64,
        media_type="m",
        config_digest="sha256:" + "2" * 64,
        config={},
    )
    scan = image_packages_record(image=image)
    assert scan is not None
    assert (scan.count, scan.notes) == (0, [])
