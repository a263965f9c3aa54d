"""The containers pages: the list, create, and a container's page (its layer stack, ``docker
diff``, its files, a command, commit, remove). Reads go through the models and the engine's
views; every change goes through the container services, which take the container's lock and
raise typed errors that are shown as messages."""

from __future__ import annotations

import stat
from typing import Any, BinaryIO, cast

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import (
    Count,
    F,
    IntegerField,
    OuterRef,
    Prefetch,
    QuerySet,
    Subquery,
    Window,
)
from django.db.models.functions import RowNumber
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from layerhub.containers.files import ContainerFiles, container_files
from layerhub.containers.forms import (
    MAX_EDIT_BYTES,
    MAX_UPLOAD_BYTES,
    CommitForm,
    ContainerCreateForm,
    DeletePathForm,
    ExecForm,
    MkdirForm,
    UploadForm,
    WriteFileForm,
    first_error,
)
from layerhub.containers.models import Container
from layerhub.containers.services import (
    container_commit,
    container_create,
    container_diff,
    container_exec,
    container_lookup,
    container_mkdir,
    container_remove_path,
    container_rm,
    container_write_file,
)
from layerhub.core.permissions import CHANGE, DELETE, named_by, restrict
from layerhub.core.store import get_store
from layerhub.engine import fsutil
from layerhub.engine.errors import ContainerNotFound, ImageNotFound, LayerhubError
from layerhub.hosts.models import current_host
from layerhub.hosts.routing import HostUnavailable
from layerhub.images.browse import clean_path
from layerhub.images.listing import readable_tags
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, ImageLayer
from layerhub.images.views_layers import (
    browse_context,
    display_name,
    download_response,
    download_url,
    parent_path,
    with_tags,
)

PAGE_SIZES = (10, 25, 50, 100)
DEFAULT_PAGE_SIZE = 25
DIFF_CAP = 1000  # diff lines a page lists (the counts cover them all)
OUTPUT_CAP = 64 * 1024  # bytes of each stream kept for the page after a command
EXEC_SESSION_KEY = "containers:exec:{pk}"
UPLOAD_OVERHEAD = 64 * 1024  # the multipart framing and the form's other fields


def _page_size(raw: str | None) -> int:
    try:
        asked = int(raw or DEFAULT_PAGE_SIZE)
    except ValueError:
        return DEFAULT_PAGE_SIZE
    return min(max(asked, PAGE_SIZES[0]), PAGE_SIZES[-1])


def _container(request: HttpRequest, ref: str, action: str = "view") -> Container:
    """The container named ``ref`` (name, ID or ID prefix) if the user may ``action`` it,
    else a 404 (one outside what the user may see does not exist for them)."""
    try:
        found = container_lookup(ref)
    except ContainerNotFound as exc:
        raise Http404(str(exc)) from None
    allowed = restrict(Container.objects.select_related("image"), request.user, action)
    container = allowed.filter(pk=found.pk).first()
    if container is None:
        raise Http404(f"no such container: {ref}")
    return container


def _detail_url(container: Container, path: str | None = None, anchor: str = "") -> str:
    url = reverse("containers:detail", args=[container.name])
    if path and path != "/":
        url += "?" + urlencode({"path": path})
    return url + (f"#{anchor}" if anchor else "")


def _file_url(container: Container, path: str) -> str:
    return reverse("containers:file", args=[container.name]) + "?" + urlencode({"path": path})


# -- list and create ---------------------------------------------------------------------------


def container_list(request: HttpRequest) -> HttpResponse:
    """``docker ps -a``: every container, newest first, with its writable layer's size."""
    # the image's names only from repositories the user sees, never another team's
    tags = readable_tags(named_by(request.user))
    containers = restrict(
        Container.objects.select_related("image").prefetch_related(
            Prefetch("image__tags", queryset=tags)
        ),
        request.user,
    ).order_by("-created_at", "-pk")
    per_page = _page_size(request.GET.get("per_page"))
    page = Paginator(containers, per_page).get_page(request.GET.get("page"))
    root = get_store().containers
    here = current_host()
    rows = []
    for container in page:
        upper = root / container.container_id / "upper"
        # one walk per listed container: bounded by the page size, not the catalog; another
        # host's writable layer is not on this disk
        size = fsutil.tree_usage(upper)[0] if container.host == here and upper.is_dir() else None
        rows.append(
            {
                "c": container,
                "image_name": display_name(container.image),
                "size": size,
                "elsewhere": container.host != here,
            }
        )
    context = {
        "page": page,
        "rows": rows,
        "per_page": per_page,
        "form": ContainerCreateForm(
            initial={"image": request.GET.get("image", "")}, user=request.user
        ),
    }
    return render(request, "containers/list.html", context)


def create(request: HttpRequest) -> HttpResponse:
    """``docker create``: GET shows the form (``?image=`` fills it), POST creates and goes to
    the new container's page."""
    if request.method != "POST":
        form = ContainerCreateForm(
            initial={"image": request.GET.get("image", "")}, user=request.user
        )
        return render(request, "containers/create.html", {"form": form})
    form = ContainerCreateForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            image = _image_for(request, form.cleaned_data["image"])
            container = container_create(
                image=image.manifest_digest,
                name=form.cleaned_data["name"],
                user=request.user,
                team=form.cleaned_data["team"],
            )
        except LayerhubError as exc:
            form.add_error("image" if isinstance(exc, ImageNotFound) else None, str(exc))
        else:
            messages.success(request, f"Created container {container.name}.")
            return redirect(_detail_url(container))
    return render(request, "containers/create.html", {"form": form}, status=400)


def _image_for(request: HttpRequest, text: str) -> Image:
    """The image a create form names: the catalog's number, a reference, an ID or a digest,
    as far as the user may see it."""
    text = text.strip()
    allowed = restrict(Image.objects.all(), request.user)
    if text.isdigit() and len(text) < 10:
        found = allowed.filter(pk=int(text)).first()
        if found is not None:
            return found
    image = image_lookup(text, user=request.user)
    if not allowed.filter(pk=image.pk).exists():
        raise ImageNotFound(f"no such image: {text}")
    return image


# -- a container's page ------------------------------------------------------------------------


SHARERS_SHOWN = 3  # other images named under each layer of the stack; the layer page has all


def _sharers(container: Container, user: Any, layer_ids: list[int]) -> dict[int, list[Image]]:
    """Up to SHARERS_SHOWN other images (newest first) using each layer, in one query (and one
    for their tags) whatever the number of images: a window numbers them per layer."""
    rows = (
        ImageLayer.objects.filter(
            layer_id__in=layer_ids, image__in=restrict(Image.objects.all(), user)
        )
        .exclude(image_id=container.image_id)
        .annotate(
            rank=Window(RowNumber(), partition_by=F("layer_id"), order_by=[F("image_id").desc()])
        )
        .filter(rank__lte=SHARERS_SHOWN)
        .order_by("layer_id", "rank")
    )
    pairs = list(rows.values_list("layer_id", "image_id"))
    chosen = Image.objects.filter(pk__in={p[1] for p in pairs})
    images = {i.pk: i for i in with_tags(chosen, named_by(user))}
    found: dict[int, list[Image]] = {}
    for layer_id, image_id in pairs:
        found.setdefault(layer_id, []).append(images[image_id])
    return found


def _stack(container: Container, user: Any) -> list[dict[str, Any]]:
    """The image's layers, top first, each with how many images use it and a few of the
    others."""
    users = Subquery(
        ImageLayer.objects.filter(layer=OuterRef("layer"))
        .values("layer")
        .annotate(n=Count("pk"))
        .values("n"),
        output_field=IntegerField(),
    )
    rows: QuerySet[ImageLayer] = (
        ImageLayer.objects.filter(image=container.image)
        .select_related("layer")
        .annotate(users=users)
        .order_by("-position")
    )
    stack = []
    rows_list = list(rows)
    biggest = max((r.layer.unpacked_size or 0 for r in rows_list), default=0) or 1
    sharers = _sharers(container, user, [r.layer_id for r in rows_list])
    for row in rows_list:
        layer = row.layer
        others = [(i.pk, display_name(i)) for i in sharers.get(layer.pk, [])]
        stack.append(
            {
                "position": row.position,
                "layer": layer,
                "chain_hex": layer.chain_id.split(":", 1)[1],
                "users": getattr(row, "users", 0) or 0,
                "others": others,
                "size": layer.unpacked_size,
                # the bar under each block: its bytes against the biggest layer's
                "pct": max(2, round(100 * (layer.unpacked_size or 0) / biggest)),
            }
        )
    return stack


def _detail_context(
    request: HttpRequest,
    container: Container,
    path: str,
    fs: ContainerFiles | None = None,
    **forms: Any,
) -> dict[str, Any]:
    changes = container_diff(container=container)
    counts = dict.fromkeys("ACD", 0)
    for change in changes:
        counts[change.kind] += 1
    stack = _stack(container, request.user)
    image_bytes = sum(item["size"] or 0 for item in stack)
    fs = fs or container_files(container)
    writable_bytes, writable_files = fs.writable_bytes, fs.writable_files
    # entries the writable layer holds (added or copied up) are marked as the container's own
    browse = browse_context(fs.view, path, own_layer=fs.own_layer)
    reason = fs.runtime_reason
    exec_result = request.session.pop(EXEC_SESSION_KEY.format(pk=container.pk), None)
    context: dict[str, Any] = {
        "container": container,
        "elsewhere": container.host != current_host(),
        "image_name": display_name(
            with_tags(Image.objects.filter(pk=container.image_id), named_by(request.user)).get()
        ),
        "stack": stack,
        "image_bytes": image_bytes,
        "writable_bytes": writable_bytes,
        "writable_files": writable_files,
        "counts": counts,
        "changes": changes[:DIFF_CAP],
        "changes_total": len(changes),
        "runtime_reason": reason,
        "exec_result": exec_result,
        "browse": browse,
        "write_form": forms.get("write_form") or WriteFileForm(initial={"path": _join(path, "")}),
        "upload_form": forms.get("upload_form") or UploadForm(initial={"directory": path}),
        "mkdir_form": forms.get("mkdir_form") or MkdirForm(initial={"path": _join(path, "")}),
        "exec_form": forms.get("exec_form") or ExecForm(),
        "commit_form": forms.get("commit_form") or CommitForm(),
    }
    return context


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def detail(request: HttpRequest, ref: str) -> HttpResponse:
    """A container's page; ``?path=`` is the directory its file browser shows (a file's path
    goes to the file page)."""
    container = _container(request, ref)
    path = clean_path(request.GET.get("path"))
    try:
        fs = container_files(container)
    except HostUnavailable as exc:
        return _host_unavailable(request, container, exc)
    if not fs.view.lstat(path).is_dir:
        return redirect(_file_url(container, path))
    context = _detail_context(request, container, path, fs)
    return render(request, "containers/detail.html", context)


def _host_unavailable(
    request: HttpRequest, container: Container, exc: HostUnavailable
) -> HttpResponse:
    """The container's page while its host is gone: what the catalog knows, and why its
    files and commands cannot be reached."""
    image_name = display_name(
        with_tags(Image.objects.filter(pk=container.image_id), named_by(request.user)).get()
    )
    context = {"container": container, "image_name": image_name, "problem": str(exc)}
    return render(request, "containers/unavailable.html", context, status=503)


def _rerender(
    request: HttpRequest, container: Container, directory: str, **forms: Any
) -> HttpResponse:
    """The container's page again with a form's errors (the browser at ``directory``)."""
    context = _detail_context(request, container, directory, **forms)
    return render(request, "containers/detail.html", context, status=400)


def file_page(request: HttpRequest, ref: str) -> HttpResponseBase:
    """One path of the container: a text file's content in an editor (capped), a binary
    file's download link, a symlink's target; ``?download=1`` streams a regular file."""
    container = _container(request, ref)
    path = clean_path(request.GET.get("path"))
    if path == "/":
        return redirect(_detail_url(container))
    view = container_files(container).view
    if request.GET.get("download"):
        return download_response(view, path)
    browse = browse_context(view, path)
    if browse["is_dir"]:
        return redirect(_detail_url(container, path, "files"))
    content = browse.get("content")
    text = content.text if content is not None and not content.truncated else None
    editable = text is not None
    form = WriteFileForm(initial={"path": path, "content": text or ""})
    context = {
        "container": container,
        "browse": browse,
        "path": path,
        "directory": parent_path(path) or "/",
        "editable": editable,
        "write_form": form,
        "delete_form": DeletePathForm(initial={"path": path}),
        "max_edit": MAX_EDIT_BYTES,
        "download_url": download_url(reverse("containers:file", args=[container.name]), path),
    }
    return render(request, "containers/file.html", context)


# -- changes -----------------------------------------------------------------------------------


def _dir_of(path: str, container: Container) -> str:
    """The directory to show after a change to ``path``: its parent, or the nearest one above
    that exists (a write into a missing directory fails, and its page would be a 404)."""
    try:
        current = parent_path(clean_path(path)) or "/"
        view = container_files(container).view
        while current != "/":
            found = view.lookup(current)
            if found is not None and stat.S_ISDIR(found.st.st_mode):
                break
            current = parent_path(current) or "/"
    except LayerhubError:
        return "/"
    return current


@require_POST
def write_file(request: HttpRequest, ref: str) -> HttpResponse:
    """Create or replace a text file from the editor."""
    container = _container(request, ref, CHANGE)
    form = WriteFileForm(request.POST)
    if not form.is_valid():
        return _rerender(
            request, container, _dir_of(request.POST.get("path", "/"), container), write_form=form
        )
    path = form.cleaned_data["path"]
    try:
        current = container_files(container).view.lookup(clean_path(path))
        mode = (
            stat.S_IMODE(current.st.st_mode)
            if current and stat.S_ISREG(current.st.st_mode)
            else 0o644
        )
        container_write_file(
            container=container, path=path, data=form.cleaned_data["content"].encode(), mode=mode
        )
    except LayerhubError as exc:
        messages.error(request, str(exc))
        return redirect(_detail_url(container, _dir_of(path, container), "files"))
    messages.success(request, f"Wrote {path}.")
    return redirect(_file_url(container, clean_path(path)))


# A multipart body is parsed (and a file spooled to disk) as soon as anything reads
# request.POST, the CSRF check included: a body past the cap is refused before that, and the
# CSRF check runs after it, as Django's docs show for custom upload handling.
@csrf_exempt
@require_POST
def upload(request: HttpRequest, ref: str) -> HttpResponse:
    """Upload a file into a directory of the container (at most MAX_UPLOAD_BYTES)."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_UPLOAD_BYTES + UPLOAD_OVERHEAD:
        container = _container(request, ref, CHANGE)
        messages.error(
            request, f"the upload is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
        )
        return redirect(_detail_url(container, anchor="files"))
    return _upload(request, ref)


@csrf_protect
def _upload(request: HttpRequest, ref: str) -> HttpResponse:
    container = _container(request, ref, CHANGE)
    form = UploadForm(request.POST, request.FILES)
    directory = request.POST.get("directory", "/")
    if not form.is_valid():
        return _rerender(request, container, _safe_dir(directory), upload_form=form)
    path = form.target_path()
    try:
        with form.cleaned_data["file"].open("rb") as data:
            container_write_file(container=container, path=path, data=cast(BinaryIO, data))
    except LayerhubError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Uploaded {path}.")
    return redirect(_detail_url(container, _safe_dir(directory), "files"))


def _safe_dir(raw: str) -> str:
    try:
        return clean_path(raw)
    except LayerhubError:
        return "/"


@require_POST
def mkdir(request: HttpRequest, ref: str) -> HttpResponse:
    """Make a directory."""
    container = _container(request, ref, CHANGE)
    form = MkdirForm(request.POST)
    if not form.is_valid():
        return _rerender(
            request, container, _dir_of(request.POST.get("path", "/"), container), mkdir_form=form
        )
    path = form.cleaned_data["path"]
    try:
        container_mkdir(container=container, path=path, parents=form.cleaned_data["parents"])
    except LayerhubError as exc:
        messages.error(request, str(exc))
        return redirect(_detail_url(container, _dir_of(path, container), "files"))
    messages.success(request, f"Made directory {path}.")
    return redirect(_detail_url(container, clean_path(path), "files"))


@require_POST
def delete_path(request: HttpRequest, ref: str) -> HttpResponse:
    """Delete a path (recursively if asked)."""
    container = _container(request, ref, CHANGE)
    form = DeletePathForm(request.POST)
    if not form.is_valid():
        messages.error(request, first_error(form))
        return redirect(_detail_url(container, anchor="files"))
    path = form.cleaned_data["path"]
    try:
        container_remove_path(
            container=container, path=path, recursive=form.cleaned_data["recursive"]
        )
    except LayerhubError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Deleted {path}.")
    return redirect(_detail_url(container, _dir_of(path, container), "files"))


# -- run, commit, remove -----------------------------------------------------------------------


def _cut(data: bytes) -> tuple[str, bool]:
    return data[:OUTPUT_CAP].decode("utf-8", errors="replace"), len(data) > OUTPUT_CAP


@require_POST
def exec_command(request: HttpRequest, ref: str) -> HttpResponse:
    """``docker exec``: run the command and show its output and exit code (in place for an
    htmx request, else on the container's page after a redirect)."""
    container = _container(request, ref, CHANGE)
    form = ExecForm(request.POST)
    result: dict[str, Any] | None = None
    error = ""
    if not form.is_valid():
        error = first_error(form)
    else:
        argv = form.cleaned_data["command"]
        try:
            done = container_exec(
                container=container,
                argv=argv,
                timeout=float(form.cleaned_data["timeout"]),
                network=form.cleaned_data["network"],
            )
        except LayerhubError as exc:
            error = str(exc)
        else:
            stdout, stdout_cut = _cut(done.stdout)
            stderr, stderr_cut = _cut(done.stderr)
            result = {
                "argv": argv,
                "exit_code": done.exit_code,
                "stdout": stdout,
                "stderr": stderr,
                "stdout_cut": stdout_cut,
                "stderr_cut": stderr_cut,
                "duration": round(done.duration, 2),
            }
    htmx = getattr(request, "htmx", None)
    if htmx and not htmx.boosted:
        return render(
            request,
            "containers/htmx/exec_result.html",
            {"exec_result": result, "exec_error": error},
        )
    if error:
        messages.error(request, error)
    else:
        request.session[EXEC_SESSION_KEY.format(pk=container.pk)] = result
    return redirect(_detail_url(container, anchor="exec"))


@require_POST
def commit(request: HttpRequest, ref: str) -> HttpResponse:
    """``docker commit``: start a commit job and go to its page."""
    container = _container(request, ref, CHANGE)
    form = CommitForm(request.POST)
    if not form.is_valid():
        return _rerender(request, container, "/", commit_form=form)
    try:
        job = container_commit(
            container=container,
            repository=form.cleaned_data["repository"],
            message=form.cleaned_data["message"],
            author=form.cleaned_data["author"],
            changes=form.cleaned_data["changes"],
            user=request.user,
        )
    except LayerhubError as exc:
        form.add_error(None, str(exc))
        return _rerender(request, container, "/", commit_form=form)
    messages.success(request, f"Committing {container.name}: job {job.pk} started.")
    return redirect("jobs:detail", pk=job.pk)


@require_POST
def remove(request: HttpRequest, ref: str) -> HttpResponse:
    """``docker rm``: the container and its writable layer go; the image stays."""
    container = _container(request, ref, DELETE)
    name = container.name
    try:
        container_rm(container=container)
    except LayerhubError as exc:
        messages.error(request, str(exc))
        return redirect(_detail_url(container))
    messages.success(request, f"Removed container {name}.")
    return redirect("containers:list")
