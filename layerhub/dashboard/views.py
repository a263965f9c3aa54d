"""Dashboard views: read, then render; no business logic here."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from layerhub.containers.models import Container
from layerhub.core.permissions import restrict
from layerhub.dashboard.selectors import images_with_most_unique_bytes, most_shared_layers
from layerhub.images.models import Image
from layerhub.images.sizes import store_totals
from layerhub.jobs.models import Job

ACTIVE_STATES = (Job.State.QUEUED, Job.State.RUNNING)
JOBS_SHOWN = 8


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """The catalog at a glance: counts, what sharing saves, the most shared layers, the
    images with the most bytes of their own, and the jobs. Everything comes from the
    database (recorded sizes), never from walking the store."""
    images = restrict(Image.objects.all(), request.user)
    jobs = restrict(Job.objects.all(), request.user)
    totals = store_totals()
    active_jobs = list(
        jobs.filter(state__in=ACTIVE_STATES).order_by("-created_at", "-id")[:JOBS_SHOWN]
    )
    recent_jobs = list(
        jobs.exclude(state__in=ACTIVE_STATES).order_by("-created_at", "-id")[:JOBS_SHOWN]
    )
    logical = totals.logical_bytes

    def share(part: int) -> float:
        # of the logical total, for the bars; a store holding more than its images need
        # (orphans) draws a full bar rather than one past the frame
        return min(100.0 * part / logical, 100.0) if logical else 0.0

    context = {
        "totals": totals,
        "containers": restrict(Container.objects.all(), request.user).count(),
        "running_jobs": jobs.filter(state=Job.State.RUNNING).count(),
        "physical_percent": share(totals.physical_bytes),
        "blob_percent": share(totals.physical_blob_bytes),
        "snapshot_percent": share(totals.physical_snapshot_bytes),
        "shared_layers": most_shared_layers(images),
        "unique_images": images_with_most_unique_bytes(images),
        "active_jobs": active_jobs,
        "recent_jobs": recent_jobs,
    }
    return render(request, "dashboard/home.html", context)
