"""Pushing, saving (exporting) and removing images."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from django.core.exceptions import PermissionDenied
from django.db import transaction

from layerhub.accounts.models import Team
from layerhub.accounts.services import audit
from layerhub.core.permissions import CHANGE, DELETE, require, restrict, teams_for
from layerhub.core.store import get_store
from layerhub.engine.errors import ArchiveError, Conflict, ImageNotFound, InvalidReference
from layerhub.engine.export import ExportImage, write_docker_archive, write_oci_layout
from layerhub.engine.manifest import ImageManifest, parse_config, parse_manifest
from layerhub.engine.push import push_image
from layerhub.engine.reference import parse_reference
from layerhub.images.leases import job_lease, lease_barrier
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, Repository, Tag
from layerhub.images.removal import (
    images_delete_rows,
    plan_files_delete,
    snapshots_collect_elsewhere,
)
from layerhub.images.services.pull import StoredImage, image_record, registry_client_for
from layerhub.images.sizes import (
    DeletePlan,
    image_delete_plan,
    tag_delete_plan,
    tag_delete_plan_many,
)
from layerhub.jobs.models import Job
from layerhub.jobs.services import JobProgress, cancel_watch, job_run, job_start


def _image_blobs(image: Image) -> tuple[bytes, ImageManifest]:
    data = get_store().blobs.read_bytes(image.manifest_digest)
    manifest = parse_manifest(data)
    if not isinstance(manifest, ImageManifest):
        raise ImageNotFound(f"image {image.image_id} has no image manifest in the store")
    return data, manifest


def image_push(*, image: str, team: Team, reference: str | None = None, user: Any = None) -> Job:
    """Queue a push of ``image`` to ``reference`` (default: the image's own reference) with
    ``team``'s registry login; the pushed name joins the team's catalog."""
    if user is not None:
        require(user, CHANGE, team)
    found = image_lookup(image, user=user, team=team)
    target = parse_reference(reference or image)
    if target.tag is None and target.digest is None:
        raise InvalidReference(f"push needs a tag: {reference or image}")
    with transaction.atomic():
        job = job_start(
            kind=Job.Kind.PUSH,
            user=user,
            team=team,
            reference=str(target),
            image=found,
            params={"manifest": found.manifest_digest},
        )
        audit(actor=user, action="image.push", team=team, target=str(target), job=job.pk)
    return job


def _mount_sources(
    image: Image, registry: str, repository: str, team: Team | None
) -> dict[str, str]:
    """For each layer, another repository of the team on the same registry known to hold it
    (never another team's: its names are not this team's to send)."""
    sources: dict[str, str] = {}
    if team is None:
        return sources
    for row in image.image_layers.select_related("layer"):
        other = (
            Repository.objects.filter(
                team=team,
                registry=registry,
                images__image_layers__layer__digest=row.layer.digest,
            )
            .exclude(name=repository)
            .first()
        )
        if other is not None:
            sources[row.layer.digest] = other.name
    return sources


def image_push_run(*, job_id: int) -> None:
    """The push job: blobs the registry lacks (mounted when it can), then the manifest."""
    job = Job.objects.select_related("image").get(pk=job_id)
    if not job.claim():
        return
    progress = JobProgress(job)

    def work() -> None:
        image = job.image
        if image is None:
            raise ImageNotFound("the image to push was deleted")
        job_lease(job=job, keys=_image_blob_keys(image))  # an rmi meanwhile leaves them
        ref = parse_reference(job.reference)
        data, manifest = _image_blobs(image)
        client = registry_client_for(registry=ref.registry, team=job.team)
        try:
            push_image(
                client,
                ref.repository,
                ref.tag or ref.digest or "latest",
                data,
                manifest.media_type,
                [manifest.config, *manifest.layers],
                get_store(),
                mount_from=_mount_sources(image, ref.registry, ref.repository, job.team),
                progress=progress.reporter(),
                heartbeat=progress.flush,  # saves progress and looks for a cancel
                should_stop=cancel_watch(job).requested,  # asked per chunk: the flag
            )
        finally:
            progress.flush(force=True)
            client.close()
        config = parse_config(get_store().blobs.read_bytes(image.config_digest))
        stored = StoredImage(
            image.manifest_digest, manifest, image.index_digest or None, image.config_digest, config
        )
        image_record(refs=[ref], resolved=stored, team=job.team)

    job_run(job, work)


def _check_save_target(target: Path) -> None:
    """Refuse a target that is there and is not a regular file: saving replaces the target
    by renaming a new file over it, which would replace a device node, a symlink (not what it
    points to) or a FIFO; a directory cannot be replaced at all."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a directory"
            if stat.S_ISDIR(st.st_mode)
            else "a symbolic link"
            if stat.S_ISLNK(st.st_mode)
            else "a device, socket or FIFO"
        )
        raise ArchiveError(
            f"{target} is {kind}, not a regular file: save writes only to a new or a regular "
            "file (use -o - to write the archive to standard output)"
        )


def _save_target(path: str) -> Path:
    """The absolute path to write: its directory resolved, the name itself not followed."""
    given = Path(path)
    if not given.name or given.name in (".", ".."):
        raise ArchiveError(f"{path}: not a file name")
    parent = given.parent.resolve()
    if not parent.is_dir():
        raise ArchiveError(f"{parent}: no such directory")
    target = parent / given.name
    _check_save_target(target)
    return target


def image_save(
    *,
    images: Sequence[str],
    path: str,
    format: str = "docker",
    user: Any = None,
    team: Team | None = None,
) -> Job:
    """Queue an export of ``images`` to ``path``: a ``docker save`` archive or an OCI layout tar.

    ``path`` must be new or a regular file (ArchiveError otherwise)."""
    if format not in ("docker", "oci"):
        raise ArchiveError(f"unknown export format {format!r}: docker or oci")
    if not images:
        raise ImageNotFound("save needs at least one image")
    found = [image_lookup(text, user=user, team=team) for text in images]
    target = _save_target(path)
    return job_start(
        kind=Job.Kind.EXPORT,
        user=user,
        team=team,
        reference=str(target),
        image=found[0],
        params={"images": images, "path": str(target), "format": format},
    )


def image_save_stream(
    *,
    images: Sequence[str],
    out: BinaryIO,
    format: str = "docker",
    user: Any = None,
    team: Team | None = None,
) -> None:
    """Write the export of ``images`` to ``out`` now, in this process (``save -o -``): the
    same bytes the export job writes to a file."""
    if format not in ("docker", "oci"):
        raise ArchiveError(f"unknown export format {format!r}: docker or oci")
    if not images:
        raise ImageNotFound("save needs at least one image")
    exports = [_export_image(text, user=user, team=team) for text in images]
    _write_export(out, exports, format)


def _write_export(
    out: BinaryIO,
    exports: Sequence[ExportImage],
    format: str,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    stop = should_stop or (lambda: False)
    if format == "oci":
        write_oci_layout(out, exports, get_store(), should_stop=stop)
    else:
        write_docker_archive(out, exports, get_store(), should_stop=stop)


def _image_blob_keys(image: Image) -> list[str]:
    """The blobs an image names: manifest, config and layers (for a job's leases)."""
    layers = image.image_layers.values_list("layer__digest", flat=True)
    return [image.manifest_digest, image.config_digest, *layers]


def _export_image(
    text: str, job: Job | None = None, *, user: Any = None, team: Team | None = None
) -> ExportImage:
    if job is not None:
        user, team = job.created_by, job.team
    image = image_lookup(text, user=user, team=team)
    if job is not None:
        job_lease(job=job, keys=_image_blob_keys(image))  # an rmi meanwhile leaves them
    data, manifest = _image_blobs(image)
    refs = []
    try:
        ref = parse_reference(text)
        if ref.tag:
            refs.append(str(ref))
    except InvalidReference:
        pass
    if not refs:
        tags = image.tags.select_related("repository")
        if user is not None:
            tags = restrict(tags, user)  # another team's names of the image stay theirs
        refs = [f"{t.repository}:{t.name}" for t in tags]
    config = parse_config(get_store().blobs.read_bytes(image.config_digest))
    return ExportImage(
        references=tuple(refs),
        manifest_bytes=data,
        media_type=manifest.media_type,
        config=manifest.config,
        layers=manifest.layers,
        diff_ids=config.diff_ids,
    )


def image_save_run(*, job_id: int) -> None:
    """The export job: write next to the target, then rename, so no half file is left."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return

    def work() -> None:
        exports = [_export_image(text, job) for text in job.params["images"]]
        target = Path(job.params["path"])
        partial = target.with_name(f".{target.name}.{job.pk}.partial")
        _check_save_target(target)  # what was there when queued may have changed since
        try:
            partial.unlink(missing_ok=True)  # left by a killed run; "x": never follow a link
            with open(partial, "xb") as out:
                # asked per chunk from this thread: a query at most once a second
                _write_export(out, exports, job.params["format"], cancel_watch(job).poll)
                out.flush()
                os.fsync(out.fileno())
            _check_save_target(target)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    job_run(job, work)


def _named_tags(found: Image, image: str) -> tuple[list[Tag], list[Tag]]:
    """The image's tags, and those of them ``image`` names (``repository:tag``)."""
    tags = list(found.tags.select_related("repository").order_by("pk"))
    try:
        ref = parse_reference(image)
    except InvalidReference:
        ref = None
    named = [
        t
        for t in tags
        if ref is not None
        and ref.tag
        and t.name == ref.tag
        and t.repository.registry == ref.registry
        and t.repository.name == ref.repository
    ]
    return tags, named


def _team_part(found: Image, user: Any) -> tuple[list[Tag], list[Repository]] | None:
    """None when ``user`` may delete ``found`` outright (every repository naming it is in a
    team where they may delete); else the tags and repositories of their teams that name
    it, which an ``rmi`` removes while the image stays for the other teams. Raises
    PermissionDenied when they may remove neither."""
    if user is None or restrict(Image.objects.filter(pk=found.pk), user, DELETE).exists():
        return None
    teams = teams_for(user, DELETE)
    repositories = list(found.repositories.filter(team__in=teams))
    tags = list(found.tags.select_related("repository").filter(repository__team__in=teams))
    if not repositories and not tags:
        raise PermissionDenied("you need the maintainer role in a team that names this image")
    return tags, repositories


def image_remove_plan(*, image: str, force: bool = False, user: Any = None) -> DeletePlan:
    """What ``rmi`` (``image_remove``) with the same arguments would do, and the exact bytes
    it would free; nothing is changed."""
    found = image_lookup(image, user=user)
    part = _team_part(found, user)
    if part is not None:
        return tag_delete_plan_many(part[0])
    tags, named = _named_tags(found, image)
    if named and len(tags) > 1 and not force:
        return tag_delete_plan(named[0])
    return image_delete_plan(found)


def _blocked(found: Image, plan: DeletePlan) -> Conflict:
    names = ", ".join(plan.containers[:5])
    return Conflict(f"image {found.image_id} is used by container(s): {names}; remove them first")


@transaction.atomic
def image_remove(*, image: str, force: bool = False, user: Any = None) -> list[str]:
    """``docker rmi``: untag, and delete the image (and layers no other image uses) once no
    tag is left. Returns the lines Docker prints (Untagged: / Deleted:).

    What goes is exactly ``image_delete_plan``'s list, so the bytes it frees are the plan's
    ``frees_bytes``: rows first (in this transaction), files once it commits, each left if a
    running job has leased it or a row names it again by then (see ``layerhub.images.removal``).
    """
    found = image_lookup(image, user=user)
    part = _team_part(found, user)
    if part is not None:
        # other teams name it too: this team's names go, the image stays theirs
        own_tags, own_repositories = part
        for tag in own_tags:
            tag.delete()
        found.repositories.remove(*own_repositories)
        for repository in own_repositories:
            audit(actor=user, action="image.untag", team=repository.team, target=str(found))
        return [f"Untagged: {tag.repository}:{tag.name}" for tag in own_tags]
    tags, named = _named_tags(found, image)
    if named and len(tags) > 1 and not force:
        named[0].delete()
        audit(
            actor=user,
            action="tag.delete",
            team=named[0].repository.team,
            target=f"{named[0].repository}:{named[0].name}",
        )
        return [f"Untagged: {named[0].repository}:{named[0].name}"]
    # the plan reads the live leases and the rows go in this transaction: no lease may come
    # between (a job that leased a layer row after the read would record an image on it)
    lease_barrier(exclusive=True)
    # the image's row locked before the plan reads its containers: a container created on
    # it (which locks the row too) is either in the plan, or finds the image gone
    Image.objects.select_for_update().filter(pk=found.pk).exists()
    plan = image_delete_plan(found)
    if plan.blocked:
        raise _blocked(found, plan)
    teams: list[Team | None] = [
        repository.team for repository in found.repositories.select_related("team")
    ]
    hosts = list(plan.host_snapshots)  # read before the rows go
    lines = images_delete_rows(images=[found], plan=plan)
    for team in dict.fromkeys(teams or [None]):
        audit(
            actor=user,
            action="image.delete",
            team=team,
            target=found.config_digest,
            frees_bytes=plan.frees_bytes,
        )
    # What a running job has leased stays (its rows are gone; the job's own records bring
    # them back). The lease is checked under the lock the job judges "already there" under,
    # so either the job sees the file gone, or this sees its lease.
    transaction.on_commit(
        functools.partial(plan_files_delete, blobs=plan.blobs, snapshots=plan.snapshots)
    )
    # the other hosts' snapshots of these layers go on those hosts
    transaction.on_commit(
        functools.partial(
            snapshots_collect_elsewhere,
            hosts=hosts,
            chain_ids=[chain for chain, _ in plan.snapshots],
        )
    )
    return lines
