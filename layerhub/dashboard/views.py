"""Dashboard views: read, then render; no business logic here."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from layerhub.accounts.models import Team
from layerhub.containers.models import Container
from layerhub.core.permissions import is_staff, named_by, restrict
from layerhub.dashboard.selectors import images_with_most_unique_bytes, most_shared_layers
from layerhub.hosts.selectors import HostHealth, hosts_health, object_store_health
from layerhub.images.models import Image
from layerhub.images.services.gc import store_gc_start
from layerhub.images.services.verify import store_verify_start
from layerhub.images.sizes import TeamUsage, store_totals, team_usage
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
    staff = is_staff(request.user)
    # the store-wide totals (physical bytes, savings) are staff's: a team sees its own
    # logical total and how much of it is shared
    totals = store_totals() if staff else None
    active_jobs = list(
        jobs.filter(state__in=ACTIVE_STATES).order_by("-created_at", "-id")[:JOBS_SHOWN]
    )
    recent_jobs = list(
        jobs.exclude(state__in=ACTIVE_STATES).order_by("-created_at", "-id")[:JOBS_SHOWN]
    )
    logical = totals.logical_bytes if totals is not None else 0

    def share(part: int) -> float:
        # of the logical total, for the bars; a store holding more than its images need
        # (orphans) draws a full bar rather than one past the frame
        return min(100.0 * part / logical, 100.0) if logical else 0.0

    containers = restrict(Container.objects.all(), request.user)
    context = {
        "totals": totals,
        "image_count": totals.images if totals is not None else images.count(),
        "containers": containers.count(),
        "running_jobs": jobs.filter(state=Job.State.RUNNING).count(),
        "physical_percent": share(totals.physical_bytes) if totals else 0.0,
        "blob_percent": share(totals.physical_blob_bytes) if totals else 0.0,
        "snapshot_percent": share(totals.physical_snapshot_bytes) if totals else 0.0,
        "team_usages": _team_usages(request),
        "shared_layers": most_shared_layers(images),
        "unique_images": images_with_most_unique_bytes(images, repositories=named_by(request.user)),
        "active_jobs": active_jobs,
        "recent_jobs": recent_jobs,
        # a running dedup's progress line, from the active jobs already read
        "dedup_job": next((j for j in active_jobs if j.kind == Job.Kind.DEDUP), None)
        if staff
        else None,
        **_measured_apart(containers, staff=staff),
        # each host of a fleet (shown once there is more than one, or one is gone)
        "hosts": _hosts_shown() if staff else [],
        # the shared object store's line, once blobs live in one
        "object_store": object_store_health() if staff else None,
    }
    return render(request, "dashboard/home.html", context)


def _hosts_shown() -> list[HostHealth]:
    hosts = hosts_health()
    return hosts if len(hosts) > 1 or any(h.problem for h in hosts) else []


TEAMS_SHOWN = 10  # teams of a user on the overview (the teams page has them all)


def _team_usages(request: HttpRequest) -> list[tuple[Team, TeamUsage]]:
    """The user's own teams (staff too, where they are members) with their logical totals,
    shared parts and quotas."""
    user: Any = request.user
    mine = restrict(Team.objects.filter(memberships__user=user), user)
    return [(team, team_usage(team)) for team in mine.order_by("name")[:TEAMS_SHOWN]]


def _measured_apart(containers: QuerySet[Container], *, staff: bool) -> dict[str, int | None]:
    """Container layers and tmp/, shown apart from the recorded physical total. They change
    with every file a container writes and every chunk a download lands, so they are measured
    (each container's writable layer and each tmp/ entry walked), not recorded. The user's
    containers only; tmp/, store-wide, for staff."""
    tmp = tmp_entries() if staff else []
    ids = containers.values_list("container_id", flat=True)
    return {
        "container_bytes": sum(container_layer_bytes(cid) for cid in ids),
        "tmp_bytes": sum(entry.size for entry in tmp) if staff else None,
        "tmp_count": len(tmp) if staff else None,
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
