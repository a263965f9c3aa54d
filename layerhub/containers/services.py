"""Containers: create one over an image, change its files, run commands in it, diff and
commit it. The only code that ties the engine's container, runtime and commit to the rows."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from layerhub.accounts.models import Team
from layerhub.accounts.services import audit
from layerhub.containers.models import Container
from layerhub.core.permissions import CHANGE, VIEW, require, restrict
from layerhub.core.store import get_store
from layerhub.engine import fsutil
from layerhub.engine.commit import apply_change, commit_container
from layerhub.engine.container import Change, ContainerFS, container_changes, container_lock
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import Conflict, ContainerNotFound, ImageNotFound, LayerhubError
from layerhub.engine.manifest import ImageManifest, parse_config, parse_manifest
from layerhub.engine.reference import parse_reference
from layerhub.engine.runtime import ExecResult, run_in_container
from layerhub.engine.runtime.overlay import mounts_under
from layerhub.engine.runtime.signals import shielded
from layerhub.engine.union import UnionView
from layerhub.hosts.calls import decode_bytes, encode_bytes, host_call, host_operation
from layerhub.hosts.models import current_host
from layerhub.hosts.routing import HostUnavailable
from layerhub.images.leases import job_lease, job_leaser
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, Layer
from layerhub.images.services import (
    StoredImage,
    image_layer_descriptors,
    image_record,
    image_snapshots_ensure,
    layer_mark_unpacked,
)
from layerhub.images.services.file_index import layer_index_record
from layerhub.jobs.models import Job
from layerhub.jobs.services import acting_user, cancel_watch, job_run, job_start

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
# a file written into a container on another host travels in one message
MAX_REMOTE_WRITE = 64 << 20


def container_dir(container: Container) -> Path:
    """``containers/<id>/`` in the store."""
    return get_store().containers / container.container_id


def container_lookup(text: str, *, user: Any = None, action: str = VIEW) -> Container:
    """A container by name, full ID or ID prefix (as ``docker`` accepts them); with ``user``,
    only one they may ``action`` (another team's is "no such container")."""
    containers = Container.objects.select_related("image", "team")
    if user is not None:
        containers = restrict(containers, user, action)
    found = containers.filter(name=text).first()
    if found is None and re.fullmatch(r"[a-f0-9]{3,64}", text):
        matches = list(containers.filter(container_id__startswith=text)[:2])
        if len(matches) > 1:
            raise ContainerNotFound(f"{text}: more than one container has this ID prefix")
        found = matches[0] if matches else None
    if found is None:
        raise ContainerNotFound(f"no such container: {text}")
    return found


def image_lowers(image: Image) -> list[Path]:
    """The image's snapshots on this host, bottom first: those this host lacks are unpacked
    here from the image's blobs first (``image_snapshots_ensure``). Pages read an image's
    files on a host that holds them instead (``layerhub.images.snapshot_files``)."""
    return image_snapshots_ensure(image=image)


def container_create(
    *,
    image: str,
    team: Team,
    name: str | None = None,
    user: Any = None,
    host: str | None = None,
) -> Container:
    """A container of ``team`` over ``image`` (a reference, image ID or digest, which the
    user must see), on ``host`` (this one by default), whose worker unpacks the image's
    snapshots it lacks and makes the writable layer. Copies nothing. Needs the developer
    role in the team."""
    if user is not None:
        require(user, CHANGE, team)
    found = image_lookup(image, user=user, team=team)
    host = host or current_host()
    container_id = secrets.token_hex(32)
    if name is None:
        name = f"layerhub_{container_id[:8]}"
    elif not _NAME.fullmatch(name):
        raise Conflict(f"invalid container name {name!r}: letters, digits, '_', '.', '-'")
    taken = f"the container name {name!r} is already in use"
    gone = f"{image}: the image was deleted meanwhile"
    if Container.objects.filter(name=name).exists():
        raise Conflict(taken)
    host_call(host, "container.prepare", container=container_id, image=found.pk)
    try:
        try:
            with transaction.atomic():
                # the image's row locked, as rmi locks it before planning: the image is still
                # there and stays until this container is recorded (which rmi then sees)
                if not Image.objects.select_for_update().filter(pk=found.pk).exists():
                    raise ImageNotFound(gone)
                container = Container.objects.create(
                    container_id=container_id,
                    name=name,
                    image=found,
                    team=team,
                    created_by=acting_user(user),
                    host=host,
                )
                audit(actor=user, action="container.create", team=team, target=name)
        except IntegrityError as exc:
            # a container of the same name created since the check above, or (SQLite, which
            # checks the image's key only at commit) the image deleted meanwhile
            if Container.objects.filter(name=name).exists():
                raise Conflict(taken) from exc
            if not Image.objects.filter(pk=found.pk).exists():
                raise ImageNotFound(gone) from exc
            raise
        return container
    except Exception:
        with contextlib.suppress(LayerhubError):
            host_call(host, "container.discard", container=container_id)
        raise


@host_operation("container.prepare")
def _container_prepare(*, container: str, image: int) -> None:
    """On the container's host: the image's snapshots (unpacked here if missing) and the
    empty writable layer."""
    found = Image.objects.filter(pk=image).first()
    if found is None:
        raise ImageNotFound("the image of this container was deleted meanwhile")
    image_lowers(found)
    root = get_store().containers / container
    (root / "upper").mkdir(parents=True)
    (root / "work").mkdir()


@host_operation("container.discard")
def _container_discard(*, container: str) -> None:
    """On the container's host: remove a writable layer no container row names (a create
    that failed after ``container.prepare``)."""
    if not Container.objects.filter(container_id=container).exists():
        fsutil.remove_path(get_store().containers / container)


@contextlib.contextmanager
def container_busy(container: Container, *, wait: float | None = 0.0) -> Iterator[None]:
    """The container's lock, held while a command runs, files change, a commit reads the
    writable layer or the container is removed; Conflict when another holds it past ``wait``
    seconds (None: wait as long as it takes)."""
    with container_lock(get_store().locks, container.container_id, name=container.name, wait=wait):
        yield


def container_fs(container: Container) -> ContainerFS:
    """The container's files: its writable layer over the image's snapshots."""
    store = get_store()
    return ContainerFS(
        container_dir(container) / "upper", image_lowers(container.image), store.whiteouts
    )


def container_here(container_id: str) -> Container:
    """A container row by its full ID, for an operation its host runs."""
    if not re.fullmatch(r"[0-9a-f]{64}", container_id):
        raise ContainerNotFound(f"no such container: {container_id[:80]!r}")
    found = Container.objects.select_related("image").filter(container_id=container_id).first()
    if found is None:
        raise ContainerNotFound("the container no longer exists")
    if found.host != current_host():
        raise HostUnavailable(f"container {found.name} is on host {found.host}, not this one")
    return found


def _files_change(
    container: Container, op: str, change: Callable[[ContainerFS], None], **params: Any
) -> None:
    """Apply ``change`` to the container's files under its lock when the container lives on
    this host; else ask its host to run ``op`` (registered with ``host_operation``, which comes
    back here on that host) with ``params``."""
    if container.host == current_host():
        with container_busy(container):
            change(container_fs(container))
        return
    host_call(container.host, op, container=container.container_id, **params)


def container_write_file(
    *, container: Container, path: str, data: bytes | BinaryIO, mode: int = 0o644
) -> None:
    """Create or replace a file in the container (on its host)."""
    if container.host == current_host():
        with container_busy(container):
            container_fs(container).write_file(path, data, mode=mode)
        return
    if not isinstance(data, bytes):
        data = data.read(MAX_REMOTE_WRITE + 1)
    if len(data) > MAX_REMOTE_WRITE:
        raise LayerhubError(
            f"a file written on another host is at most {MAX_REMOTE_WRITE // (1 << 20)} MiB"
        )
    host_call(
        container.host,
        "container.write_file",
        container=container.container_id,
        path=path,
        data=encode_bytes(data),
        mode=mode,
    )


@host_operation("container.write_file")
def _write_file_here(*, container: str, path: str, data: str, mode: int) -> None:
    container_write_file(
        container=container_here(container), path=path, data=decode_bytes(data), mode=mode
    )


def container_mkdir(*, container: Container, path: str, parents: bool = False) -> None:
    """Make a directory in the container."""
    _files_change(
        container,
        "container.mkdir",
        lambda fs: fs.mkdir(path, parents=parents),
        path=path,
        parents=parents,
    )


@host_operation("container.mkdir")
def _mkdir_here(*, container: str, path: str, parents: bool) -> None:
    container_mkdir(container=container_here(container), path=path, parents=parents)


def container_remove_path(*, container: Container, path: str, recursive: bool = False) -> None:
    """Delete a path in the container (a whiteout hides what the image has there)."""
    _files_change(
        container,
        "container.remove_path",
        lambda fs: fs.remove(path, recursive=recursive),
        path=path,
        recursive=recursive,
    )


@host_operation("container.remove_path")
def _remove_path_here(*, container: str, path: str, recursive: bool) -> None:
    container_remove_path(container=container_here(container), path=path, recursive=recursive)


def container_chmod(*, container: Container, path: str, mode: int) -> None:
    """Change a path's mode (copying it up first)."""
    _files_change(
        container, "container.chmod", lambda fs: fs.chmod(path, mode), path=path, mode=mode
    )


@host_operation("container.chmod")
def _chmod_here(*, container: str, path: str, mode: int) -> None:
    container_chmod(container=container_here(container), path=path, mode=mode)


def container_rename(*, container: Container, src: str, dst: str) -> None:
    """Move a path inside the container."""
    _files_change(container, "container.rename", lambda fs: fs.rename(src, dst), src=src, dst=dst)


@host_operation("container.rename")
def _rename_here(*, container: str, src: str, dst: str) -> None:
    container_rename(container=container_here(container), src=src, dst=dst)


def container_diff(*, container: Container) -> list[Change]:
    """``docker diff``: added, changed and deleted paths, from the writable layer alone."""
    if container.host == current_host():
        store = get_store()
        lower = UnionView(image_lowers(container.image), store.whiteouts)
        return container_changes(container_dir(container) / "upper", store.whiteouts, lower)
    rows = host_call(container.host, "container.diff", container=container.container_id)
    return [Change(kind, path) for kind, path in rows]


@host_operation("container.diff")
def _diff_here(*, container: str) -> list[list[str]]:
    return [[c.kind, c.path] for c in container_diff(container=container_here(container))]


def container_exec(
    *,
    container: Container,
    argv: Sequence[str],
    timeout: float = 60.0,
    network: bool = False,
) -> ExecResult:
    """Run a command in the container and wait for it (``docker exec``, non-interactive), on
    the container's host."""
    if not argv:
        raise LayerhubError("exec needs a command")
    if container.host != current_host():
        done = host_call(
            container.host,
            "container.exec",
            extra_timeout=timeout,
            container=container.container_id,
            argv=list(argv),
            timeout=timeout,
            network=network,
        )
        return ExecResult(
            exit_code=int(done["exit_code"]),
            stdout=decode_bytes(done["stdout"]),
            stderr=decode_bytes(done["stderr"]),
            duration=float(done["duration"]),
        )
    store = get_store()
    root = container_dir(container)
    lowers = image_lowers(container.image)
    # A refused exec (another holds the lock) leaves the state alone: it is the running
    # command's. The state is for people to see; a crashed run that left it at "running"
    # blocks nothing, the lock is what keeps commands apart.
    with container_busy(container):
        Container.objects.filter(pk=container.pk).update(state=Container.State.RUNNING)
        scratch = fsutil.TempEntry(store.tmp, f"exec-{container.short_id}-", directory=True)
        try:
            result = run_in_container(
                lowers=lowers,
                upper=root / "upper",
                work=root / "work",
                scratch=scratch.path,
                image_config=container.image.config.get("config") or {},
                argv=list(argv),
                timeout=timeout,
                network=network,
                whiteouts=store.whiteouts,
            )
        finally:
            with shielded():
                # never empty a directory through a mount left behind (the image's files)
                scratch.close(remove=not mounts_under(scratch.path))
                Container.objects.filter(pk=container.pk).update(
                    state=Container.State.CREATED, last_command=list(argv)
                )
        Container.objects.filter(pk=container.pk).update(last_exit_code=result.exit_code)
    return result


@host_operation("container.exec")
def _exec_here(*, container: str, argv: list[str], timeout: float, network: bool) -> dict[str, Any]:
    done = container_exec(
        container=container_here(container), argv=argv, timeout=timeout, network=network
    )
    return {
        "exit_code": done.exit_code,
        "stdout": encode_bytes(done.stdout),
        "stderr": encode_bytes(done.stderr),
        "duration": done.duration,
    }


def container_rm(*, container: Container, user: Any = None) -> None:
    """Delete the container and its writable layer (the image stays), on its host; a
    container whose host is gone cannot be removed (its files would stay behind)."""
    if container.host != current_host():
        actor = acting_user(user)
        host_call(
            container.host,
            "container.rm",
            container=container.container_id,
            user=actor.pk if actor is not None else None,
        )
        return
    store = get_store()
    root = container_dir(container)
    with container_busy(container), transaction.atomic():
        container.delete()
        audit(actor=user, action="container.delete", team=container.team, target=container.name)
        if root.exists():
            doomed = fsutil.TempEntry(store.tmp, "rm-", directory=True)
            os.rename(root, doomed.path / "container")
            transaction.on_commit(lambda: doomed.close(remove=True))


@host_operation("container.rm")
def _rm_here(*, container: str, user: int | None) -> None:
    actor = get_user_model().objects.filter(pk=user).first() if user is not None else None
    container_rm(container=container_here(container), user=actor)


# -- commit ------------------------------------------------------------------------------------


def container_commit(
    *,
    container: Container,
    repository: str | None = None,
    message: str = "",
    author: str = "",
    changes: Sequence[str] = (),
    user: Any = None,
) -> Job:
    """Queue a commit of the container as a new image (tagged ``repository`` if given)."""
    ref = parse_reference(repository) if repository else None
    for change in changes:
        apply_change({}, change)  # refuse a bad instruction now, not in the worker
    if user is not None:
        require(user, CHANGE, container.team)
    with transaction.atomic():
        job = job_start(
            kind=Job.Kind.COMMIT,
            user=user,
            team=container.team,
            host=container.host,  # its writable layer is on that host's disk
            reference=str(ref) if ref else "",
            params={
                "container": container.container_id,
                "message": message,
                "author": author,
                "changes": list(changes),
            },
        )
        audit(
            actor=user,
            action="container.commit",
            team=container.team,
            target=container.name,
            reference=str(ref) if ref else "",
            job=job.pk,
        )
    return job


def container_commit_run(*, job_id: int) -> None:
    """The commit job: diff, store and unpack the layer, write config and manifest, record."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return

    def work() -> None:
        container = (
            Container.objects.select_related("image")
            .filter(container_id=job.params["container"])
            .first()
        )
        if container is None:
            raise ContainerNotFound("the container to commit no longer exists")
        if container.host != current_host():
            # sent to the container's host queue; a job moved by hand lands here
            raise HostUnavailable(
                f"container {container.name} is on host {container.host}, not {current_host()}"
            )
        store = get_store()
        parent = container.image
        # the parent stays while the container stands on it; leased all the same, as every
        # job leases what the image it records will name
        parent_descriptors, parent_diff_ids = image_layer_descriptors(image=parent)
        job_lease(
            job=job,
            keys=[
                parent.manifest_digest,
                parent.config_digest,
                *(d.digest for d in parent_descriptors),
                *chain_ids(parent_diff_ids),
            ],
        )
        parent_manifest = parse_manifest(store.blobs.read_bytes(parent.manifest_digest))
        if not isinstance(parent_manifest, ImageManifest):
            raise ImageNotFound(f"image {parent.image_id} has no image manifest in the store")
        # a command still writing (or a file change half made) must not be captured: wait
        # for it, as long as a command may run
        with container_busy(container, wait=None):
            try:
                container.refresh_from_db()  # the command that ran meanwhile, say
            except Container.DoesNotExist:
                raise ContainerNotFound("the container to commit was removed") from None
            created_by = " ".join(container.last_command) or "layerhub commit"
            # its one layer is the commit's stop point: a cancel that came while it waited
            # for the container stops it before anything is written
            cancel_watch(job).check(force=True)
            result = commit_container(
                store,
                container_dir(container) / "upper",
                store.whiteouts,
                parent_manifest=parent_manifest,
                parent_config=store.blobs.read_bytes(parent.config_digest),
                created_by=created_by,
                author=job.params.get("author", ""),
                comment=job.params.get("message", ""),
                changes=job.params.get("changes", []),
                lease=job_leaser(job),
            )
        refs = [parse_reference(job.reference)] if job.reference else []
        committed = StoredImage(
            result.manifest_digest,
            result.manifest,
            None,
            result.config_digest,
            parse_config(result.config_bytes),
        )
        image = image_record(refs=refs, resolved=committed, team=container.team)
        if result.chain_id is not None:
            row = Layer.objects.get(chain_id=result.chain_id)
            # made now, or it existed (the same change committed) without a recorded size
            here = row.snapshots.filter(host=current_host()).exists()
            if result.unpacked is not None or not here:
                layer_mark_unpacked(row)
            if result.unpacked is not None and result.unpacked.files is not None:
                layer_index_record(layer=row, records=result.unpacked.files)
        # the parent's layers are unpacked already (the container stands on them)
        job.image = image
        job.save(update_fields=["image"])

    job_run(job, work)
