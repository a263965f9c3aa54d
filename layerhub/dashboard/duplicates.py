"""Files stored twice: the duplicates report (``layerhub.images.dedup``) as a page, and the
staff button that starts a dedup (a dry run first, as garbage collection's does)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from layerhub.core.permissions import is_staff, named_by, restrict
from layerhub.images.dedup import duplicates_report
from layerhub.images.models import Image
from layerhub.images.services.dedup import store_dedup_running, store_dedup_start
from layerhub.images.sizes import store_totals

IMAGES_SHOWN = 100


@require_safe
def duplicates_page(request: HttpRequest) -> HttpResponse:
    """Files whose content another snapshot holds too: per image (the user's), the pairs of
    images holding the same files in different layers, and, for staff, the store's figures
    and the dedup button."""
    images = restrict(Image.objects.all(), request.user)
    report = duplicates_report(images, named_by(request.user))
    staff = is_staff(request.user)
    context = {
        "report": report,
        "images": report.images[:IMAGES_SHOWN],
        "staff": staff,
        "totals": store_totals() if staff else None,
        "dedup_job": store_dedup_running() if staff else None,
    }
    return render(request, "dashboard/duplicates.html", context)


@require_POST
def store_dedup_view(request: HttpRequest) -> HttpResponse:
    """Start a dedup (staff only) and show its job: a dry run when the form says so (the
    button on the sizes pages), whose report offers the real one."""
    if not request.user.is_staff:
        raise PermissionDenied("only staff may dedup the store")
    job = store_dedup_start(dry_run=request.POST.get("dry_run") == "1", user=request.user)
    return redirect("jobs:detail", pk=job.pk)
