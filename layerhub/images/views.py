"""The images pages: the ``docker images`` list and an image's page with its actions.

Views read through layerhub.images.listing / sizes / selectors and act through the image
services; a user error from a service is shown as a message on the page it came from.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST, require_safe

from layerhub.accounts.models import Team
from layerhub.core.permissions import (
    CHANGE,
    DELETE,
    PULL,
    VIEW,
    named_by,
    named_ids,
    restrict,
    team_choose,
    teams_for,
)
from layerhub.engine.errors import LayerhubError
from layerhub.images import sizes
from layerhub.images.forms import DEFAULT_PER_PAGE, ImageListQuery, PushForm, SaveForm
from layerhub.images.listing import (
    familiar_repository,
    image_layers,
    image_pull_reference,
    image_short_digest,
    image_table,
    normalize_sort,
    table_rows,
)
from layerhub.images.models import Image
from layerhub.images.selectors import image_history
from layerhub.images.services import image_pull
from layerhub.images.services.retry import image_unpack_retry
from layerhub.images.services.transfer import (
    image_push,
    image_remove,
    image_remove_plan,
    image_save,
)
from layerhub.jobs.models import Job
from layerhub.jobs.services import export_dir

# the list's columns: (label, sort key or None); labels speak `docker images`' language
COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("REPOSITORY", "repository"),
    ("TAG", "tag"),
    ("IMAGE ID", None),
    ("CREATED", "created"),
    ("SIZE", "size"),
    ("SHARED SIZE", "shared"),
    ("UNIQUE SIZE", "unique"),
    ("COMPRESSED", "compressed"),
    ("LAYERS", "layers"),
)
# sizes and dates read best largest / newest first
DESCENDING_FIRST = {"created", "size", "shared", "unique", "compressed", "layers"}


def wants_fragment(request: HttpRequest) -> bool:
    """An htmx request that swaps part of the page (not a boosted link, not a history
    restore, which both want the whole page)."""
    htmx: Any = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def _list_url(params: dict[str, Any]) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"?{query}" if query else "?"


@require_safe
def image_list(request: HttpRequest) -> HttpResponse:
    """``docker images`` in the browser: search, sort by any size column, pages."""
    form = ImageListQuery(request.GET)
    form.is_valid()  # a bad value falls back to its default, never an error page
    query = form.cleaned_data
    search = str(query.get("q") or "")
    sort = normalize_sort(query.get("sort"))
    per_page = int(query.get("per_page") or form.clean_per_page())
    images = restrict(Image.objects.all(), request.user)
    repositories = named_by(request.user)
    rows = image_table(
        images,
        search=search,
        sort=sort,
        repositories=repositories,
        names=named_ids(request.user),
    )
    paginator = Paginator(rows, per_page)
    page = paginator.get_page(query.get("page") or 1)
    page_rows = table_rows(list(page.object_list), repositories)

    # the default page size stays out of the links, as the search form leaves it out
    per_page_param = per_page if per_page != DEFAULT_PER_PAGE else None
    base = {"q": search, "per_page": per_page_param}
    descending = sort.startswith("-")
    columns = []
    for label, key in COLUMNS:
        if key is None:
            columns.append({"label": label})
            continue
        current = sort.lstrip("-") == key
        if current:
            next_sort = key if descending else f"-{key}"
            direction = "descending" if descending else "ascending"
        else:
            next_sort = f"-{key}" if key in DESCENDING_FIRST else key
            direction = ""
        columns.append(
            {
                "label": label,
                "key": key,
                "url": _list_url({**base, "sort": next_sort}),
                "current": direction,
            }
        )
    context = {
        "rows": page_rows,
        "page": page,
        "columns": columns,
        "search": search,
        "sort": sort,
        "per_page": per_page_param,
        "page_urls": {
            "previous": _list_url({**base, "sort": sort, "page": page.number - 1}),
            "next": _list_url({**base, "sort": sort, "page": page.number + 1}),
        },
        "catalog_empty": not search and paginator.count == 0,
    }
    template = "images/htmx/table.html" if wants_fragment(request) else "images/list.html"
    return render(request, template, context)


def _image(request: HttpRequest, pk: int, action: str) -> Image:
    """The image ``pk`` if the user may ``action`` it, with its sizes; else 404."""
    images = restrict(Image.objects.all(), request.user, action)
    image: Image = get_object_or_404(sizes.images_with_sizes(images), pk=pk)
    return image


def _history(image: Image) -> list[dict[str, Any]]:
    rows = []
    for row in image_history(image):
        try:
            created = parse_datetime(row.created) if row.created else None
        except ValueError:  # the config's own text, shown as it is (a registry wrote it)
            created = None
        rows.append({"row": row, "created": created})
    return rows


def _delete_plan(request: HttpRequest, image: Image) -> sizes.DeletePlan | None:
    """What the delete button does for this user (the image, or only their teams' names
    of it when other teams name it too); None when they may do neither."""
    if restrict(Image.objects.filter(pk=image.pk), request.user, DELETE).exists():
        return sizes.image_delete_plan(image)
    try:
        return image_remove_plan(image=image.manifest_digest, force=True, user=request.user)
    except PermissionDenied:
        return None


def _layers(request: HttpRequest, image: Image) -> list[Any]:
    """The image's layer rows: the others sharing each named from what the user sees, and
    counted apart from those they cannot see (none for a user who sees every image)."""
    repositories = named_by(request.user)
    visible = None if repositories is None else restrict(Image.objects.all(), request.user)
    return image_layers(image, visible, repositories)


def _detail_context(request: HttpRequest, image: Any) -> dict[str, Any]:
    visible_tags = restrict(image.tags.all(), request.user)
    tags = list(visible_tags.select_related("repository").order_by("repository", "name")[:50])
    reference = f"{tags[0].repository}:{tags[0].name}" if tags else image_pull_reference(image)
    names = [
        f"{familiar_repository(t.repository.registry, t.repository.name)}:{t.name}" for t in tags
    ]
    unpack_job = (
        restrict(Job.objects.all(), request.user)
        .filter(image=image, kind=Job.Kind.UNPACK)
        .order_by("-created_at", "-id")
        .first()
    )
    export_job = (
        restrict(Job.objects.all(), request.user)
        .filter(image=image, kind=Job.Kind.EXPORT, state=Job.State.SUCCEEDED)
        .order_by("-finished_at", "-id")
        .first()
    )
    size = int(image.size)
    shared_percent = 100.0 * image.shared_size / size if size else 0.0
    return {
        "image": image,
        "tags": tags,
        "names": names,
        "reference": reference,
        "manifest_short": image_short_digest(image.manifest_digest),
        "layers": _layers(request, image),
        "history": _history(image),
        "unpack_job": unpack_job,
        "export_job": export_job,
        "unpack_failed": bool(
            image.pending_layers and unpack_job and unpack_job.state == Job.State.FAILED
        ),
        "unpacking": bool(unpack_job and unpack_job.state in (Job.State.QUEUED, Job.State.RUNNING)),
        "shared_percent": shared_percent,
        "unique_percent": 100.0 - shared_percent if size else 0.0,
        "containers": restrict(image.containers.all(), request.user).count(),
        "delete_plan": _delete_plan(request, image),
        "push_form": PushForm(initial={"reference": reference if tags else ""}, user=request.user),
        "save_form": SaveForm(),
    }


@require_safe
def image_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One image: references, sizes, history, layers and what can be done with it."""
    image = _image(request, pk, VIEW)
    return render(request, "images/detail.html", _detail_context(request, image))


def _job_started(job: Job, what: str, request: HttpRequest) -> HttpResponseRedirect:
    messages.success(request, f"{what}: job {job.pk} queued")
    return redirect("jobs:detail", pk=job.pk)


def _acting_team(request: HttpRequest, image: Image, action: str) -> Team:
    """The team a button on an image's page acts for: the first of the user's teams (where
    they may ``action``) that names the image, else their only such team."""
    allowed = teams_for(request.user, action)
    named = allowed.filter(repositories__images=image).order_by("name").first()
    return named or team_choose(request.user, None, action)


def _failed(request: HttpRequest, image: Image, exc: LayerhubError) -> HttpResponseRedirect:
    messages.error(request, str(exc))
    return redirect("images:detail", pk=image.pk)


@require_POST
def image_repull(request: HttpRequest, pk: int) -> HttpResponse:
    """Pull the image's reference again (a moved tag brings the new image)."""
    image = _image(request, pk, VIEW)
    reference = image_pull_reference(image)
    if reference is None:
        messages.error(request, "this image has no reference to pull it from (it was imported)")
        return redirect("images:detail", pk=image.pk)
    try:
        job = image_pull(
            reference=reference,
            user=request.user,  # type: ignore[arg-type]
            team=_acting_team(request, image, PULL),
        )
    except LayerhubError as exc:
        return _failed(request, image, exc)
    return _job_started(job, f"Pulling {reference}", request)


@require_POST
def image_push_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Push the image to the reference the form names."""
    image = _image(request, pk, VIEW)
    form = PushForm(request.POST, user=request.user)
    if not form.is_valid():
        context = _detail_context(request, image)
        context["push_form"] = form
        return render(request, "images/detail.html", context, status=400)
    target = form.cleaned_data["reference"]
    try:
        job = image_push(
            image=image.manifest_digest,
            reference=target,
            user=request.user,
            team=form.cleaned_data["team"],
        )
    except LayerhubError as exc:
        return _failed(request, image, exc)
    return _job_started(job, f"Pushing to {target}", request)


def _archive_name(image: Image, reference: str | None, format: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", (reference or "image").rsplit("/", 1)[-1])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S")
    kind = "-oci" if format == "oci" else ""
    return f"{stem[:60]}-{image.image_id}-{stamp}{kind}.tar"


@require_POST
def image_save_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Write the image to an archive in the exports folder; the job's page offers it."""
    image = _image(request, pk, VIEW)
    form = SaveForm(request.POST)
    format = form.cleaned_data["format"] if form.is_valid() else "docker"
    reference = image_pull_reference(image)
    path = export_dir() / _archive_name(image, reference, format)
    try:
        job = image_save(
            images=[image.manifest_digest],
            path=str(path),
            format=format,
            user=request.user,
            team=_acting_team(request, image, VIEW),
        )
    except LayerhubError as exc:
        return _failed(request, image, exc)
    return _job_started(job, f"Saving {reference or image.image_id}", request)


@require_POST
def image_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete the image and every tag of it (``rmi --force``), freeing what only it used."""
    image = _image(request, pk, VIEW)
    plan = _delete_plan(request, image)
    if plan is None:
        raise PermissionDenied("you need the maintainer role in a team that names this image")
    frees = plan.frees_bytes
    try:
        lines = image_remove(image=image.manifest_digest, force=True, user=request.user)
    except LayerhubError as exc:
        return _failed(request, image, exc)
    untagged = sum(1 for line in lines if line.startswith("Untagged:"))
    messages.success(
        request,
        f"Deleted image {image.image_id}"
        + (f" and {untagged} tag{'s' if untagged != 1 else ''}" if untagged else "")
        + f": freed {frees:,} bytes",
    )
    return redirect("images:list")


@require_POST
def image_retry_unpack(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue the image's unpack again after it failed."""
    image = _image(request, pk, CHANGE)
    try:
        job = image_unpack_retry(image=image, user=request.user)
    except LayerhubError as exc:
        return _failed(request, image, exc)
    return _job_started(job, f"Unpacking {image.image_id} again", request)
