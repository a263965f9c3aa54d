"""Jobs pages: the list, a job's live progress, cancel, the pull, push and import forms, and
the download of a saved archive. Views read through selectors and act through services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from layerhub.core.permissions import CHANGE, VIEW, restrict
from layerhub.engine.errors import LayerhubError
from layerhub.images.services import image_import, image_pull
from layerhub.images.services.dedup import store_dedup_report
from layerhub.images.services.gc import store_gc_report
from layerhub.images.services.transfer import image_push
from layerhub.images.services.verify import store_verify_report
from layerhub.jobs.forms import (
    ImportForm,
    JobFilterForm,
    PullForm,
    PushForm,
    upload_limit_text,
)
from layerhub.jobs.models import Job
from layerhub.jobs.selectors import (
    download_name,
    duration_text,
    export_file,
    job_duration,
    layer_lines,
    progress_bytes,
)
from layerhub.jobs.services import (
    BrokerUnavailable,
    acting_user,
    job_cancel,
    job_discard_upload,
)
from layerhub.jobs.uploads import ArchiveUploadHandler, StoredUpload


def _wants_fragment(request: HttpRequest) -> bool:
    """An htmx request that swaps a part of the page (not a boosted link, not a history
    restore, which want the whole page)."""
    htmx = getattr(request, "htmx", None)
    if not htmx:
        return False
    return not htmx.boosted and not htmx.history_restore_request


def _reap_if_running(jobs: list[Job]) -> bool:
    """Notice jobs whose worker died (re-queued or failed, as the CLI's follow does) before
    showing running jobs; True when a job moved."""
    if any(job.state == Job.State.RUNNING for job in jobs):
        return bool(Job.objects.reap_dead())
    return False


@require_safe
def job_list(request: HttpRequest) -> HttpResponse:
    """Every job, newest first, filtered by kind and state, a page at a time."""
    form = JobFilterForm(request.GET or None)
    jobs = restrict(Job.objects.all(), request.user, VIEW)
    if form.is_valid():
        if form.cleaned_data["kind"]:
            jobs = jobs.filter(kind=form.cleaned_data["kind"])
        if form.cleaned_data["state"]:
            jobs = jobs.filter(state=form.cleaned_data["state"])
    jobs = jobs.select_related("created_by").order_by("-created_at", "-id")
    per_page = JobFilterForm().page_size(request.GET.get("per_page"))
    page = Paginator(jobs, per_page).get_page(request.GET.get("page"))
    rows = list(page.object_list)
    if _reap_if_running(rows):
        page = Paginator(jobs, per_page).get_page(request.GET.get("page"))
        rows = list(page.object_list)
    now = timezone.now()
    table = [
        {
            "job": job,
            "bytes": progress_bytes(job),
            "duration": duration_text(job_duration(job, now)),
        }
        for job in rows
    ]
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "rows": table,
        "query": query.urlencode(),
        "filtered": bool(form.is_valid() and any(form.cleaned_data.values())),
        "live": any(job.live for job in rows),
    }
    template = "jobs/htmx/table.html" if _wants_fragment(request) else "jobs/list.html"
    return render(request, template, context)


def _panel_context(job: Job) -> dict[str, Any]:
    now = timezone.now()
    children = list(job.children.all())
    return {
        "job": job,
        "lines": layer_lines(job),
        "bytes": progress_bytes(job),
        "duration": duration_text(job_duration(job, now)),
        "children": [
            {
                "job": child,
                "lines": layer_lines(child),
                "duration": duration_text(job_duration(child, now)),
            }
            for child in children
        ],
        # the panel polls while this job or a job it started has not ended
        "live": job.live or any(child.live for child in children),
        "download": export_file(job) is not None,
        "heartbeat_age": int((now - job.heartbeat_at).total_seconds())
        if job.state == Job.State.RUNNING and job.heartbeat_at
        else None,
        "max_attempts": Job.max_attempts(),
        "verify_report": store_verify_report(job) if job.kind == Job.Kind.VERIFY else None,
        "gc_report": store_gc_report(job) if job.kind == Job.Kind.GC else None,
        "dedup_report": store_dedup_report(job) if job.kind == Job.Kind.DEDUP else None,
    }


@require_safe
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A job: per-layer progress bars that update while it runs, its outcome, its children.

    An htmx request gets the panel alone: with its polling trigger while the job (or a job
    it started) runs, and without one once they have all ended, so polling stops.
    """
    jobs = restrict(Job.objects.all(), request.user, VIEW).select_related("created_by", "image")
    children = Prefetch("children", queryset=Job.objects.order_by("id"))
    job = get_object_or_404(jobs.prefetch_related(children), pk=pk)
    if _reap_if_running([job, *job.children.all()]):
        job = get_object_or_404(jobs.prefetch_related(children), pk=pk)
    context = _panel_context(job)
    if _wants_fragment(request):
        return render(request, "jobs/htmx/panel.html", context)
    return render(request, "jobs/detail.html", context)


@require_POST
def job_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Cancel a queued or running job (and the jobs it started); back to its page."""
    job = get_object_or_404(restrict(Job.objects.all(), request.user, CHANGE), pk=pk)
    try:
        job_cancel(job=job, user=request.user)
    except LayerhubError as exc:
        messages.error(request, str(exc))
    else:
        if job.state == Job.State.CANCELLED:
            messages.success(request, f"{job.kind} job {job.pk} cancelled.")
        else:
            messages.info(request, f"{job.kind} job {job.pk} is stopping.")
    return redirect("jobs:detail", pk=job.pk)


def _started(request: HttpRequest, job: Job) -> HttpResponse:
    messages.success(request, f"{job.kind} job {job.pk} queued.")
    return redirect("jobs:detail", pk=job.pk)


def _refused(
    request: HttpRequest, template: str, form: Any, exc: LayerhubError, **extra: Any
) -> HttpResponse:
    """The form again with the service's message; 503 when the broker is down."""
    form.add_error(None, str(exc))
    status = 503 if isinstance(exc, BrokerUnavailable) else 400
    return render(request, template, {"form": form, **extra}, status=status)


@require_http_methods(["GET", "HEAD", "POST"])
def job_pull(request: HttpRequest) -> HttpResponse:
    """``docker pull`` from the browser: a reference and an optional platform."""
    if request.method != "POST":
        form = PullForm(initial={"reference": request.GET.get("reference", "")}, user=request.user)
        return render(request, "jobs/pull.html", {"form": form})
    form = PullForm(request.POST, user=request.user)
    if not form.is_valid():
        return render(request, "jobs/pull.html", {"form": form}, status=400)
    try:
        job = image_pull(
            reference=form.cleaned_data["reference"],
            platform=form.cleaned_data["platform"] or None,
            user=acting_user(request.user),
            team=form.cleaned_data["team"],
        )
    except LayerhubError as exc:
        return _refused(request, "jobs/pull.html", form, exc)
    return _started(request, job)


@require_http_methods(["GET", "HEAD", "POST"])
def job_push(request: HttpRequest) -> HttpResponse:
    """``docker push`` from the browser: an image of the catalog, to a reference."""
    if request.method != "POST":
        form = PushForm(initial={"image": request.GET.get("image", "")}, user=request.user)
        return render(request, "jobs/push.html", {"form": form})
    form = PushForm(request.POST, user=request.user)
    if not form.is_valid():
        return render(request, "jobs/push.html", {"form": form}, status=400)
    image = form.cleaned_data["image"]
    if not restrict(type(image).objects.filter(pk=image.pk), request.user, VIEW).exists():
        raise Http404("no such image")
    try:
        job = image_push(
            image=request.POST.get("image", "").strip(),
            reference=form.cleaned_data["reference"] or None,
            user=request.user,
            team=form.cleaned_data["team"],
        )
    except LayerhubError as exc:
        return _refused(request, "jobs/push.html", form, exc)
    return _started(request, job)


@csrf_exempt  # the CSRF check runs below, once the upload handler is in place
@require_http_methods(["GET", "HEAD", "POST"])
def job_import(request: HttpRequest) -> HttpResponse:
    """``docker load`` from the browser: an uploaded archive becomes an import job.

    The upload handler must be chosen before anything reads the body, which the CSRF
    middleware would do; the check is made by ``csrf_protect`` after it instead.
    """
    announced = int(request.META.get("CONTENT_LENGTH") or 0)
    # refused before a byte is read; the body is a little more than the file (the form's
    # boundaries and fields), and the handler stops at the limit whatever was announced
    if request.method == "POST" and announced > settings.LAYERHUB_UPLOAD_MAX_BYTES + 64 * 1024:
        return _too_big(request)
    handler = ArchiveUploadHandler(
        request, settings.LAYERHUB_UPLOAD_DIR, settings.LAYERHUB_UPLOAD_MAX_BYTES
    )
    request.upload_handlers = [handler]
    return _job_import(request, handler)


@csrf_protect
def _job_import(request: HttpRequest, handler: ArchiveUploadHandler) -> HttpResponse:
    extra = {"limit": upload_limit_text()}
    if request.method != "POST":
        return render(request, "jobs/import.html", {"form": ImportForm(user=request.user), **extra})
    form = ImportForm(request.POST, request.FILES, user=request.user)
    if handler.too_big:
        return _too_big(request)
    upload = request.FILES.get("archive")
    if not form.is_valid():
        if isinstance(upload, StoredUpload):
            upload.discard()
        return render(request, "jobs/import.html", {"form": form, **extra}, status=400)
    assert isinstance(upload, StoredUpload)
    try:
        job = image_import(
            path=str(upload.path),
            platform=form.cleaned_data["platform"] or None,
            user=request.user,
            team=form.cleaned_data["team"],
            upload=True,
        )
    except LayerhubError as exc:
        upload.discard()
        return _refused(request, "jobs/import.html", form, exc, **extra)
    if job.done:  # the job could not be queued (or ran here already): the file is spent
        job_discard_upload(job=job)
    return _started(request, job)


def _too_big(request: HttpRequest) -> HttpResponse:
    limit = upload_limit_text()
    refused = (
        f"the archive is larger than the upload limit ({limit}, LAYERHUB_UPLOAD_MAX): "
        "import it with `manage.py import PATH` on the server instead"
    )
    context = {"form": ImportForm(), "limit": limit, "refused": refused}
    return render(request, "jobs/import.html", context, status=413)


@require_safe
def job_download(request: HttpRequest, pk: int) -> HttpResponse | FileResponse:
    """The archive a finished export job saved, as a download; 404 before it is done or once
    the file is gone."""
    job = get_object_or_404(
        restrict(Job.objects.all(), request.user, VIEW), pk=pk, kind=Job.Kind.EXPORT
    )
    path = export_file(job)
    if path is None:
        raise Http404("this export has not finished, or its archive is gone")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - FileResponse closes it
    except FileNotFoundError:
        raise Http404("the archive is gone") from None
    return FileResponse(handle, as_attachment=True, filename=download_name(job))
