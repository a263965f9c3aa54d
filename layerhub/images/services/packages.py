"""Recording an image's installed packages, read from its merged file tree after its unpack.

The tree is read on a host that holds the image's snapshots (``snapshots_host``): this one
when it has them, else a live host that does; when none does, this host unpacks them from the
blobs first, as any job that stands on an image does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from django.db import transaction
from django.utils import timezone

from layerhub.core.store import get_store
from layerhub.engine.errors import ImageNotFound, LayerhubError, SnapshotNotFound
from layerhub.engine.packages import PackageScan as ScanResult
from layerhub.engine.packages import scan_packages
from layerhub.engine.packages.scan import FoundPackage, package_key
from layerhub.engine.union import UnionView
from layerhub.hosts.calls import host_call, host_operation
from layerhub.hosts.models import current_host
from layerhub.hosts.routing import HostUnavailable
from layerhub.images.models import Image, Package, PackageScan
from layerhub.images.snapshot_files import image_chains, snapshots_host

log = logging.getLogger(__name__)

# what a scan on another host may take beyond a host call's timeout (it reads every package
# database of the tree)
SCAN_EXTRA_TIMEOUT = 300.0


@host_operation("image.packages")
def _scan_here(*, image: int) -> dict[str, Any]:
    """Scan ``image``'s tree on this host (unpacking the snapshots it lacks first)."""
    # containers.services imports this app's modules: imported here, not at the top
    from layerhub.containers.services import image_lowers

    found = Image.objects.filter(pk=int(image)).first()
    if found is None:
        raise ImageNotFound(f"image {image} was deleted")
    lowers = image_lowers(found)
    # no layers: an image of nothing, or one whose rows a removal deleted meanwhile (then
    # the recording finds it gone)
    scan = scan_packages(UnionView(lowers, get_store().whiteouts)) if lowers else ScanResult()
    return {"packages": [asdict(p) for p in scan.packages], "notes": scan.notes}


def _scan_host(image: Image) -> str:
    """This host when it holds ``image``'s snapshots; else a live host that does; else this
    host, which unpacks them."""
    chains = image_chains(image)
    if not chains:
        return current_host()
    try:
        return snapshots_host(chains, what=f"image {image.image_id}")
    except (SnapshotNotFound, HostUnavailable):
        return current_host()


def image_packages_scan(*, image: Image) -> PackageScan:
    """Read ``image``'s installed packages from its union view (on ``_scan_host``) and
    replace what is recorded for it, in one transaction (a reader sees the old list or the
    new one, never half). Raises a LayerhubError when its tree cannot be read."""
    found = host_call(
        _scan_host(image), "image.packages", extra_timeout=SCAN_EXTRA_TIMEOUT, image=image.pk
    )
    scan = ScanResult(
        packages=[FoundPackage(**p) for p in found["packages"]],
        notes=[str(note) for note in found["notes"]],
    )
    rows = [
        Package(
            image=image,
            ecosystem=p.ecosystem,
            name=p.name,
            name_key=package_key(p.ecosystem, p.name),
            version=p.version,
            arch=p.arch[:64],
            origin=p.origin,
            source_path=p.source_path[:1024],
        )
        for p in scan.packages
    ]
    with transaction.atomic():
        # the image may have been deleted while its tree was read: nothing to record then
        if not Image.objects.select_for_update().filter(pk=image.pk).exists():
            raise LayerhubError(f"image {image.image_id} was deleted")
        Package.objects.filter(image=image).delete()
        Package.objects.bulk_create(rows, batch_size=1000)
        record, _ = PackageScan.objects.update_or_create(
            image=image,
            defaults={"scanned_at": timezone.now(), "count": len(rows), "notes": scan.notes},
        )
    if scan.notes:
        log.info("packages of %s: %d skipped: %s", image.image_id, len(scan.notes), scan.notes[:5])
    return record


def image_packages_record(*, image: Image) -> PackageScan | None:
    """The unpack job's hook: record ``image``'s packages (``image_packages_scan``), and never
    fail the unpack over them: a scan that cannot finish is logged and returns None
    (``manage.py packages`` runs it again)."""
    try:
        return image_packages_scan(image=image)
    except (LayerhubError, OSError) as e:
        log.warning("packages of %s not recorded: %s", image.image_id, e)
        return None
