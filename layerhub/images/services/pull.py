"""Pulling images into the catalog: the only code that ties the engine's pull to the database.

``image_pull`` (enqueue.py) records a job and queues it; the worker's task calls
``image_pull_run``, which downloads and unpacks every layer in one pass through the engine and
then records the image and its snapshots; an unpack job follows only for a layer the pull
could not unpack (``image_unpack_run``: imports and retries use it too). Rows are written only
once what they name is in the store: an image row never points at a missing blob, a layer is
marked unpacked only once its snapshot exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from layerhub.accounts.models import Team
from layerhub.accounts.services import audit
from layerhub.core.humanize import human_size
from layerhub.core.permissions import MANAGE, require
from layerhub.core.store import get_store
from layerhub.engine import pull as engine_pull
from layerhub.engine.archive import import_archive
from layerhub.engine.cancel import Cancelled
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import (
    BlobNotFound,
    ImageNotFound,
    QuotaExceeded,
    RegistryAuthError,
)
from layerhub.engine.fsutil import tree_usage
from layerhub.engine.manifest import (
    Descriptor,
    ImageConfig,
    ImageManifest,
    parse_platform,
)
from layerhub.engine.reference import Reference, normalize_registry, parse_reference
from layerhub.engine.registry import Credentials, Mirror, RegistryClient, TLSConfig
from layerhub.hosts.models import current_host
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.leases import (
    blob_delete_guard,
    blob_in_use_by_other,
    job_lease,
    job_lease_copy,
    job_leaser,
    lease_barrier,
)
from layerhub.images.models import (
    Blob,
    Image,
    Layer,
    RegistryCredential,
    Repository,
    Snapshot,
    Tag,
)
from layerhub.images.selectors import registry_insecure
from layerhub.images.services.file_index import layers_index_record
from layerhub.images.services.packages import image_packages_record
from layerhub.images.sizes import logical_bytes, own_blob_bytes_refresh, team_images
from layerhub.images.snapshot_cache import snapshot_cache_trim
from layerhub.images.snapshots import layers_not_unpacked_here, snapshot_record, snapshots_use
from layerhub.jobs.models import Job
from layerhub.jobs.services import (
    JobProgress,
    cancel_watch,
    job_discard_upload,
    job_run,
    job_start,
)


def _client(
    registry: str,
    credentials: Credentials | None,
    insecure: bool,
    *,
    mirrors: Sequence[RegistryClient] = (),
    scheme: str | None = None,
    retries: int | None = None,
) -> RegistryClient:
    return RegistryClient(
        registry_api_host(registry),
        credentials=credentials,
        insecure=insecure or registry_insecure(registry),
        retries=settings.LAYERHUB_REGISTRY_RETRIES if retries is None else retries,
        backoff=settings.LAYERHUB_REGISTRY_BACKOFF,
        timeout=settings.LAYERHUB_REGISTRY_TIMEOUT,
        deadline=settings.LAYERHUB_REGISTRY_DEADLINE,
        stall_timeout=settings.LAYERHUB_REGISTRY_STALL_TIMEOUT,
        # certs.d is read afresh by each client (each job): a CA added is used at once
        tls=TLSConfig(settings.LAYERHUB_CERTS_DIR),
        proxies=settings.LAYERHUB_PROXIES,
        mirrors=mirrors,
        scheme=scheme,
    )


def _stored_login(
    registry: str, team: Team | None
) -> tuple[Credentials | None, RegistryCredential | None]:
    """``team``'s login for ``registry``, if any (never another team's; without a team,
    none). One stored under another SECRET_KEY
    cannot be decrypted: that is a RegistryAuthError asking to log in again, not an anonymous
    attempt the registry would answer "denied"."""
    saved = RegistryCredential.objects.filter(team=team, host=registry).first() if team else None
    if saved is None or not saved.username:
        return None, saved
    password = saved.get_password()
    if password is None:
        raise RegistryAuthError(
            f"the stored login for {registry} can no longer be read (SECRET_KEY changed?): "
            f"log in to {registry} again"
        )
    return Credentials(saved.username, password), saved


def _mirror_client(mirror: Mirror, team: Team | None) -> RegistryClient:
    """A client for a mirror: with the team's login for the mirror itself only (never its
    upstream's), one retry (the registry itself is the fallback), and the scheme its URL
    gives."""
    credentials, saved = _stored_login(mirror.host, team)
    return _client(
        mirror.host,
        credentials,
        registry_insecure(mirror.host, saved=saved),
        scheme="http" if mirror.scheme == "http" else None,
        retries=min(settings.LAYERHUB_REGISTRY_RETRIES, 1),
    )


def registry_client_for(
    *, registry: str, team: Team | None, mirrors: bool = False
) -> RegistryClient:
    """A client for ``registry`` with ``team``'s stored login for it, if it has one (never
    another team's); with ``mirrors``, the LAYERHUB_REGISTRY_MIRRORS of that registry are
    tried first (pulls)."""
    credentials, saved = _stored_login(registry, team)
    chosen = settings.LAYERHUB_REGISTRY_MIRRORS.get(registry, ()) if mirrors else ()
    return _client(
        registry,
        credentials,
        registry_insecure(registry, saved=saved),
        mirrors=[_mirror_client(m, team) for m in chosen],
    )


def registry_login(
    *,
    team: Team,
    host: str,
    username: str,
    password: str,
    insecure: bool = False,
    user: Any = None,
) -> RegistryCredential:
    """Check a login against the registry (``/v2/``), then store it as ``team``'s login for
    that host, for the team's later pulls and pushes."""
    if user is not None:
        require(user, MANAGE, team)
    registry = normalize_registry(host)
    client = _client(registry, Credentials(username, password), insecure)
    try:
        client.login()
    finally:
        client.close()
    with transaction.atomic():
        saved, _ = RegistryCredential.objects.get_or_create(team=team, host=registry)
        saved.username = username
        saved.insecure = insecure
        saved.set_password(password)
        saved.save()
        audit(actor=user, action="registry.login", team=team, target=registry, username=username)
    return saved


def registry_logout(*, login: RegistryCredential, user: Any = None) -> None:
    """Forget a team's stored login for a registry host."""
    if user is not None:
        require(user, MANAGE, login.team)
    with transaction.atomic():
        login.delete()
        audit(actor=user, action="registry.logout", team=login.team, target=login.host)


def registry_api_host(registry: str) -> str:
    """Where a registry's API answers (docker.io's is elsewhere)."""
    return Reference(registry, "x", None, None).api_host


def image_pull_run(*, job_id: int) -> None:
    """The pull job: fetch and unpack into the store, record the image and its snapshots
    (and queue an unpack job for a layer that could not be unpacked)."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return
    if job.attempts > 1:  # a run after a crash: clear what the dead run left in tmp/
        get_store().sweep_tmp()
    ref = parse_reference(job.reference)
    asked = job.params.get("platform")
    platform = parse_platform(asked) if asked else None
    progress = JobProgress(job)
    watch = cancel_watch(job)

    def work() -> None:
        client = registry_client_for(registry=ref.registry, team=job.team, mirrors=True)
        try:
            resolved = engine_pull.pull(
                client,
                ref,
                get_store(),
                platform=platform,
                progress=progress.reporter(),
                # with mirrors, each layer's line says which host served it
                source=progress.served_by if client.mirrors else None,
                heartbeat=progress.flush,
                lease=job_leaser(job),
                should_stop=watch.requested,  # asked per chunk: the flag, no query
            )
        finally:
            progress.flush(force=True)
            client.close()
        watch.check(force=True)  # cancelled at the last moment: no image, no unpack
        image = image_record(refs=[ref], resolved=resolved, team=job.team)
        job.image = image
        job.save(update_fields=["image"])
        # the pull unpacked on the way: record what it made; a layer it could not unpack
        # (its blob is here) goes to an unpack job, which retries it and says why
        store = get_store()
        for row in layers_not_unpacked_here(
            Layer.objects.filter(chain_id__in=[layer.chain_id for layer in resolved.layers])
        ):
            if store.snapshots.exists(row.chain_id):
                layer_mark_unpacked(row)
        layers_index_record(resolved.layers)  # the file index of each layer it made
        if layers_not_unpacked_here(image.layers.all()).exists():
            _queue_unpack(job, image)  # which records the packages once it has unpacked
        else:
            image_packages_record(image=image)  # what an unpack job would do at its end
        # while the job's leases keep what it made: the cache's least used go instead
        snapshot_cache_trim()

    job_run(job, work)


def _queue_unpack(job: Job, image: Image) -> Job:
    # the unpack holds what its parent leased from the moment it exists, before the parent
    # ends: nothing is deletable between the two
    with transaction.atomic():
        # before the child's row locks the image's: the order rmi and garbage collection
        # take the barrier and rows in, so neither waits on the other in a circle
        lease_barrier(exclusive=False)
        child = job_start(
            kind=Job.Kind.UNPACK,
            user=job.created_by,
            team=job.team,
            reference=job.reference,
            parent=job,
            image=image,
        )
        job_lease_copy(source=job, target=child)
    return child


def image_import_run(*, job_id: int) -> None:
    """The import job: verify every blob into the store, record the images, queue unpacks."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return
    watch = cancel_watch(job)

    def work() -> None:
        imported = import_archive(
            Path(job.params["path"]),
            get_store(),
            platform=parse_platform(job.params.get("platform") or "linux/amd64"),
            known_layer=_known_layer,
            lease=job_leaser(job),
            in_use=blob_in_use_by_other(job),
            delete_guard=blob_delete_guard,
            should_stop=watch.poll,  # this thread only: a query at most once a second
        )
        watch.check(force=True)  # cancelled at the last moment: no images recorded
        images = [
            image_record(refs=item.references, resolved=item, team=job.team) for item in imported
        ]
        job.image = images[0]
        job.save(update_fields=["image"])
        for image in images:
            _queue_unpack(job, image)

    try:
        job_run(job, work)
    finally:
        job_discard_upload(job=job)


def _known_layer(diff_id: str) -> Descriptor | None:
    """A blob the catalog already holds for the layer ``diff_id`` (compressed, as pulled),
    so an import names it instead of storing the archive's uncompressed copy again."""
    store = get_store()
    for layer in Layer.objects.filter(diff_id=diff_id).order_by("pk"):
        if store.blobs.has(layer.digest):
            return Descriptor(layer.media_type, layer.digest, layer.size)
    return None


def _created(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is None:
        return None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    try:
        # in UTC: PostgreSQL refuses offsets past 15:59, which ISO 8601 (and a config) may
        # carry; a time UTC cannot hold is no creation time
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


class FetchedImage(Protocol):
    """What a pull (ResolvedImage) and an import (ImportedImage) both give."""

    @property
    def manifest_digest(self) -> str: ...
    @property
    def manifest(self) -> ImageManifest: ...
    @property
    def index_digest(self) -> str | None: ...
    @property
    def config_digest(self) -> str: ...
    @property
    def config(self) -> ImageConfig: ...


@dataclass(frozen=True)
class StoredImage:
    """An image whose blobs are all in the store, as image_record takes it (for a commit's
    result, or an image the catalog has and pushes under a new name)."""

    manifest_digest: str
    manifest: ImageManifest
    index_digest: str | None
    config_digest: str
    config: ImageConfig


@transaction.atomic
def image_record(*, refs: Sequence[Reference], resolved: FetchedImage, team: Team | None) -> Image:
    """Write (or find) the rows for an image whose blobs are all in the store, and point the
    tags of ``refs`` in ``team``'s repositories at it (a tag that moved keeps the image it
    left). The row keeps a bounded summary of the config; the config itself is in the blob
    store. Raises QuotaExceeded, writing nothing, when a new image would take the team past
    its quota."""
    config = resolved.config
    if team is not None and team.quota_bytes is not None:
        quota_check(team=team, resolved=resolved)
    image, _ = Image.objects.get_or_create(
        manifest_digest=resolved.manifest_digest,
        defaults={
            "media_type": resolved.manifest.media_type,
            "config_digest": resolved.config_digest,
            "index_digest": resolved.index_digest or "",
            "os": config.platform.os,
            "architecture": config.platform.architecture,
            "variant": config.platform.variant or "",
            "created": _created(config.created),
            "config": config.summary,
            "team": team,
        },
    )
    if resolved.index_digest and not image.index_digest:
        # known by its manifest alone until now, pulled through an index this time: the
        # index blob just stored is the image's (recorded below, and kept by gc)
        Image.objects.filter(pk=image.pk, index_digest="").update(
            index_digest=resolved.index_digest
        )
        image.index_digest = resolved.index_digest
    if not image.image_layers.exists():
        parent: Layer | None = None
        stack: list[Layer] = []
        chains = chain_ids(config.diff_ids)
        for desc, diff_id, chain in zip(
            resolved.manifest.layers, config.diff_ids, chains, strict=True
        ):
            layer, _ = Layer.objects.get_or_create(
                chain_id=chain,
                defaults={
                    "parent": parent,
                    "digest": desc.digest,
                    "diff_id": diff_id,
                    "media_type": desc.media_type,
                    "size": desc.size,
                },
            )
            stack.append(layer)
            parent = layer
        image_layers_add(image=image, layers=stack)
    blob_record(image=image, layers=resolved.manifest.layers)
    for ref in refs:
        if team is None:
            raise ValueError("a named image needs the team whose catalog names it")
        repository, _ = Repository.objects.get_or_create(
            team=team, registry=ref.registry, name=ref.repository
        )
        image.repositories.add(repository)
        if ref.tag:
            Tag.objects.update_or_create(
                repository=repository,
                name=ref.tag,
                defaults={"image": image, "updated_at": timezone.now()},
            )
    return image


def quota_check(*, team: Team, resolved: FetchedImage) -> None:
    """Raise QuotaExceeded when recording ``resolved`` for ``team`` would take the logical
    bytes of the team's images past its quota. An image the team has already costs nothing;
    a new one costs its blobs and the snapshots of its layers known so far (the rest are
    counted once unpacked)."""
    if team.quota_bytes is None:
        return
    images = team_images(team)
    if images.filter(manifest_digest=resolved.manifest_digest).exists():
        return
    layers = resolved.manifest.layers
    chains = chain_ids(resolved.config.diff_ids)
    known = Layer.objects.filter(chain_id__in=chains).aggregate(
        total=Coalesce(Sum("unpacked_size"), Value(0))
    )["total"]
    store = get_store()
    own = sum(
        store.blobs.size(digest)
        for digest in (resolved.manifest_digest, resolved.config_digest)
        if store.blobs.has(digest)
    )
    cost = sum(desc.size for desc in layers) + int(known) + own
    used = logical_bytes(images)
    if used + cost > team.quota_bytes:
        raise QuotaExceeded(
            f"team {team.name} is limited to {human_size(team.quota_bytes)} of images; "
            f"its images take {human_size(used)} and this one would add {human_size(cost)}"
        )


def blob_record(*, image: Image, layers: Sequence[Descriptor]) -> None:
    """Write the Blob rows of an image's manifest, config, index and layer blobs, each with
    the length of its file in the store (a blob the store lacks gets no row)."""
    wanted = {
        image.manifest_digest: Blob.Kind.MANIFEST,
        image.config_digest: Blob.Kind.CONFIG,
        **({image.index_digest: Blob.Kind.INDEX} if image.index_digest else {}),
    }
    for desc in layers:
        wanted.setdefault(desc.digest, Blob.Kind.LAYER)
    known = set(Blob.objects.filter(digest__in=wanted).values_list("digest", flat=True))
    blobs = get_store().blobs
    rows = []
    for digest, kind in wanted.items():
        if digest in known:
            continue
        try:
            size = blobs.size(digest)
        except BlobNotFound:
            continue
        rows.append(Blob(digest=digest, size=size, kind=kind))
    Blob.objects.bulk_create(rows, ignore_conflicts=True)
    own_blob_bytes_refresh(Image.objects.filter(pk=image.pk))


def image_layer_descriptors(*, image: Image) -> tuple[list[Descriptor], list[str]]:
    """The image's layers as the engine wants them: descriptors and DiffIDs, bottom first."""
    rows = list(image.image_layers.select_related("layer").order_by("position"))
    descriptors = [
        Descriptor(row.layer.media_type, row.layer.digest, row.layer.size) for row in rows
    ]
    return descriptors, [row.layer.diff_id for row in rows]


def layer_mark_unpacked(layer: Layer) -> None:
    """Record that a layer's snapshot exists, with its size measured on disk.

    Measured rather than taken from the unpack's count: a tar may write one path twice, and
    only the last copy stays, so only the tree itself gives the bytes a delete frees (the sum
    of ``st_size`` of its regular files, a hardlinked file once).
    """
    unpacked_size, file_count = tree_usage(get_store().snapshots.path(layer.chain_id))
    with transaction.atomic():
        Layer.objects.filter(pk=layer.pk).update(
            unpacked_size=unpacked_size, file_count=file_count, unpacked_at=timezone.now()
        )
        snapshot_record(layer=layer, size=unpacked_size, file_count=file_count)


def image_unpack_run(*, job_id: int) -> None:
    """The unpack job: make every layer's snapshot, bottom up, and record sizes."""
    job = Job.objects.select_related("image").get(pk=job_id)
    if not job.claim():
        return
    progress = JobProgress(job)
    watch = cancel_watch(job)

    def work() -> None:
        if job.image is None:
            raise ImageNotFound("the image of this unpack job is gone")
        descriptors, diff_ids = image_layer_descriptors(image=job.image)
        # held already when queued by a pull or import; an unpack queued otherwise leases here
        job_lease(job=job, keys=[*(d.digest for d in descriptors), *chain_ids(diff_ids)])

        store = get_store()
        try:
            unpacked = engine_pull.unpack(
                store,
                descriptors,
                diff_ids,
                # reported from the unpacking threads, saved from this one (the database
                # is used from this thread only)
                progress=progress.reporter(),
                heartbeat=progress.flush,
                should_stop=watch.should_stop,  # between layers: a fresh look each time
            )
        except Cancelled:
            # the layers made before the stop are whole snapshots: record them as made
            for row in layers_not_unpacked_here(
                Layer.objects.filter(chain_id__in=chain_ids(diff_ids))
            ):
                if store.snapshots.exists(row.chain_id):
                    layer_mark_unpacked(row)
            raise
        finally:
            progress.flush(force=True)
        here = set(
            Snapshot.objects.filter(
                host=current_host(), layer__chain_id__in=[layer.chain_id for layer in unpacked]
            ).values_list("layer__chain_id", flat=True)
        )
        for layer in unpacked:
            row = Layer.objects.get(chain_id=layer.chain_id)
            # an existing snapshot unrecorded: made by a run whose worker died before recording
            if layer.created or layer.chain_id not in here or row.unpacked_at is None:
                layer_mark_unpacked(row)
        layers_index_record(unpacked)
        image_packages_record(image=job.image)
        snapshot_cache_trim()  # while the job's leases keep what it made

    job_run(job, work)


def image_snapshots_ensure(*, image: Image) -> list[Path]:
    """The image's snapshots on this host, bottom first: those this host lacks (the image was
    pulled or committed on another host, or this host's cache dropped them) are unpacked here
    from the image's layer blobs, and recorded as this host's.

    What a job on this host runs before it stands on the image (a container's create, exec,
    files, diff or commit). Records the use (for the cache's eviction order) before it looks
    at the trees. One query when every snapshot is here and was used lately."""
    here = Snapshot.objects.filter(layer=OuterRef("layer"), host=current_host())
    rows = list(
        image.image_layers.select_related("layer")
        .annotate(
            here_pk=Subquery(here.values("pk")[:1]), here_used=Subquery(here.values("used_at")[:1])
        )
        .order_by("position")
    )
    store = get_store()
    chains = [row.layer.chain_id for row in rows]
    recorded = {row.layer.chain_id for row in rows if row.here_pk is not None}
    if not snapshots_use((row.here_pk, row.here_used) for row in rows if row.here_pk is not None):
        # the cache evicted one since: what is recorded now, and unpack what went
        recorded = set(
            Snapshot.objects.filter(host=current_host(), layer__chain_id__in=chains).values_list(
                "layer__chain_id", flat=True
            )
        )
    if all(chain in recorded and store.snapshots.exists(chain) for chain in chains):
        return [store.snapshots.path(chain) for chain in chains]
    descriptors = [
        Descriptor(row.layer.media_type, row.layer.digest, row.layer.size) for row in rows
    ]
    unpacked = engine_pull.unpack(store, descriptors, [row.layer.diff_id for row in rows])
    made = {layer.chain_id: layer.created for layer in unpacked}
    for row in rows:
        if made.get(row.layer.chain_id) or row.layer.chain_id not in recorded:
            layer_mark_unpacked(row.layer)
    return [store.snapshots.path(chain) for chain in chains]
