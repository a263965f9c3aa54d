"""Dashboard views: read, then render; no business logic here."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from layerhub.containers.models import Container
from layerhub.core.permissions import restrict
from layerhub.dashboard.selectors import images_with_most_unique_bytes, most_shared_layers
from layerhub.images.models import Image
from layerhub.images.services.gc import store_gc_start
from layerhub.images.services.verify import store_verify_start
from layerhub.images.sizes import store_totals
from layerhub.images.usage import container_layer_bytes, tmp_entries
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
        **_measured_apart(),
    }
    return render(request, "dashboard/home.html", context)


def _measured_apart() -> dict[str, int]:
    """Container layers and tmp/, shown apart from the recorded physical total. They change
    with every file a container writes and every chunk a download lands, so they are measured
    (each container's writable layer and each tmp/ entry walked), not recorded."""
    tmp = tmp_entries()
    ids = Container.objects.values_list("container_id", flat=True)
    return {
        "container_bytes": sum(container_layer_bytes(cid) for cid in ids),
        "tmp_bytes": sum(entry.size for entry in tmp),
        "tmp_count": len(tmp),
    }


@require_POST
def store_verify_view(request: HttpRequest) -> HttpResponse:
    """Start a verify of the whole store (staff only) and show its job."""
    if not request.user.is_staff:
        raise PermissionDenied("only staff may verify the store")
    job = store_verify_start(user=request.user)
    return redirect("jobs:detail", pk=job.pk)


@require_POST
def store_gc_view(request: HttpRequest) -> HttpResponse:
    """Start a garbage collection (staff only) and show its job: a dry run when the form says
    so (the overview's button), which lists what would go and offers the real one."""
    if not request.user.is_staff:
        raise PermissionDenied("only staff may collect garbage")
    job = store_gc_start(dry_run=request.POST.get("dry_run") == "1", user=request.user)
    return redirect("jobs:detail", pk=job.pk)
