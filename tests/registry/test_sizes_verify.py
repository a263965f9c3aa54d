"""store_verify (command and job) against a real store filled by real pulls."""

from __future__ import annotations

import io
import os

import pytest
from django.core.management import CommandError, call_command
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine.digest import chain_ids
from layerhub.engine.fsutil import TempEntry, tree_usage
from layerhub.images.models import Blob, Layer
from layerhub.images.services.verify import store_verify_report, store_verify_start
from layerhub.images.verify import Finding, VerifyReport, store_verify
from layerhub.jobs.models import Job, Lease
from tests.registry.conftest import Seed
from tests.support.blobs import corrupt_blob
from tests.support.pulls import pulled
from tests.support.registry import Registry

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def verify_command() -> tuple[str, str | None]:
    out = io.StringIO()
    try:
        call_command("store_verify", stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), None


def test_a_store_pulls_filled_verifies_clean(registry: Registry, seed: Seed) -> None:
    pulled(f"{registry.host}/team/app:v1")
    pulled(f"{registry.host}/team/other:other")
    report = store_verify()
    assert report.findings == []
    assert report.ok
    assert (report.blobs, report.snapshots) == (7, 3)  # 3 layers, 2 configs, 2 manifests
    out, error = verify_command()
    assert error is None
    assert out.strip().endswith("no problems")


def test_verify_reports_sizes_orphans_and_missing_files(registry: Registry, seed: Seed) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    store = get_store()
    base_chain, app_chain = chain_ids([seed.base.diff_id, seed.app.diff_id])
    # a blob grown where it is kept (a file, or an object), a snapshot file changed, a
    # snapshot gone
    grown = store.blobs.read_bytes(image.config_digest) + b"\n"
    corrupt_blob(store, image.config_digest, grown)
    (store.snapshots.path(base_chain) / "etc" / "motd").write_bytes(b"longer than before\n")
    os.rename(store.snapshots.outer(app_chain), store.root / "moved-away")
    # a blob no row knows, and one a running job has leased (about to record it)
    stray = store.blobs.put_bytes(b"nobody's").digest
    leased = store.blobs.put_bytes(b"a pull's").digest
    job = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    Lease.objects.create(job=job, key=leased)
    # a leftover in tmp/, and an entry a live process holds
    (store.tmp / "leftover").write_bytes(b"x" * 5)
    live = TempEntry(store.tmp, "pull-", directory=True)
    try:
        report = store_verify()
        out, error = verify_command()
    finally:
        live.close(remove=True)
    problems = {(f.problem, f.what, f.key) for f in report.findings}
    assert problems == {
        ("size", "blob", image.config_digest),
        ("size", "snapshot", base_chain),
        ("missing", "snapshot", app_chain),
        ("orphan", "blob", stray),
        ("orphan", "tmp", "tmp/leftover"),
    }
    assert set(report.held) == {leased, f"tmp/{live.path.name}"}
    assert error is not None
    assert "5 problem(s)" in error
    for finding in report.findings:
        assert finding.line() in out


def test_the_verify_job_keeps_its_report(registry: Registry, seed: Seed) -> None:
    pulled(f"{registry.host}/team/app:v1")
    clean = store_verify_start()
    clean.refresh_from_db()
    assert clean.kind == Job.Kind.VERIFY
    assert clean.state == Job.State.SUCCEEDED, clean.error
    report = store_verify_report(clean)
    assert report is not None
    assert report.ok

    store = get_store()
    stray = store.blobs.put_bytes(b"stray").digest
    found = store_verify_start()
    found.refresh_from_db()
    assert found.state == Job.State.FAILED
    assert f"orphan blob {stray}" in found.error
    assert "1 problem(s)" in found.error
    report = store_verify_report(found)
    assert report is not None
    assert report.findings == [Finding("orphan", "blob", stray, "5 bytes no row records")]


def test_a_cut_report_keeps_its_count() -> None:
    findings = [Finding("orphan", "tmp", f"tmp/{n}", "x") for n in range(600)]
    stored = VerifyReport(findings=findings).to_json()
    back = VerifyReport.from_json(stored)
    assert len(back.findings) == 500
    assert back.problems == 600
    assert not back.ok


def test_fix_sizes_records_the_disk_and_leaves_orphans(registry: Registry, seed: Seed) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    store = get_store()
    base_chain = chain_ids([seed.base.diff_id])[0]
    Layer.objects.filter(chain_id=base_chain).update(unpacked_size=1, file_count=1)
    Blob.objects.filter(digest=image.config_digest).delete()  # recorded before blobs had rows
    stray = store.blobs.put_bytes(b"stray").digest
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 problem"):
        call_command("store_verify", "--fix-sizes", stdout=out)
    text = out.getvalue()
    assert f"fixed snapshot {base_chain}" in text
    assert f"fixed blob {image.config_digest}" in text
    assert f"orphan blob {stray}" in text
    layer = Layer.objects.get(chain_id=base_chain)
    assert (layer.unpacked_size, layer.file_count) == tree_usage(store.snapshots.path(base_chain))
    config = Blob.objects.get(digest=image.config_digest)
    assert (config.size, config.kind) == (store.blobs.size(image.config_digest), "config")
    store.blobs.delete(stray)
    assert store_verify().ok
