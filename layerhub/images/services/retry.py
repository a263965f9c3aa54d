"""Starting an image's unpack again, after it failed or its worker went away."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from layerhub.engine.errors import Conflict
from layerhub.images.listing import image_reference_text
from layerhub.images.models import Image
from layerhub.jobs.models import Job
from layerhub.jobs.services import job_start


def image_unpack_retry(*, image: Image, user: Any = None) -> Job:
    """Queue a new unpack of ``image``'s layers (``image_unpack_run``): the layers already
    unpacked are found in the store and skipped, the rest are made.

    Raises Conflict when every layer is unpacked already, or when an unpack of this image is
    queued or running (a second one would only wait on the first's locks)."""
    with transaction.atomic():
        # the image row, locked: two retries clicked at once queue one job
        locked = Image.objects.select_for_update().get(pk=image.pk)
        if not locked.layers.filter(unpacked_at__isnull=True).exists():
            raise Conflict(f"every layer of image {locked.image_id} is unpacked already")
        busy = Job.objects.filter(
            image=locked,
            kind=Job.Kind.UNPACK,
            state__in=(Job.State.QUEUED, Job.State.RUNNING),
        ).first()
        if busy is not None:
            raise Conflict(
                f"image {locked.image_id} is being unpacked already (job {busy.pk}, {busy.state})"
            )
        return job_start(
            kind=Job.Kind.UNPACK,
            user=user,
            reference=image_reference_text(locked),
            image=locked,
        )
