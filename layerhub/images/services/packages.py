"""Recording an image's installed packages, read from its merged file tree after its unpack."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from layerhub.core.store import get_store
from layerhub.engine.errors import LayerhubError
from layerhub.engine.packages import PackageScan as EmptyScan
from layerhub.engine.packages import scan_packages
from layerhub.engine.packages.scan import package_key
from layerhub.engine.union import UnionView
from layerhub.images.models import Image, Package, PackageScan

log = logging.getLogger(__name__)


def image_packages_scan(*, image: Image) -> PackageScan:
    """Read ``image``'s installed packages from its union view and replace what is recorded
    for it, in one transaction (a reader sees the old list or the new one, never half).
    Raises ImageNotFound while the image's layers are not all unpacked."""
    # containers.services imports this app's modules: imported here, not at the top
    from layerhub.containers.services import image_lowers

    lowers = image_lowers(image)
    # no layers: an image of nothing, or one whose rows a removal deleted meanwhile (then the
    # transaction below finds it gone)
    scan = scan_packages(UnionView(lowers, get_store().whiteouts)) if lowers else EmptyScan()
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
