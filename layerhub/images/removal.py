"""Deleting images, blobs and snapshots: rows first, files after, and never what is in use.

``rmi`` and garbage collection both delete through here. The rows go in the caller's
transaction (an image, its tags and the layer rows its ``DeletePlan`` lists); the files go once
it has committed, each under the lock jobs judge it "already there" under, and only if no live
lease and no row holds it then (``blob_in_use``, ``snapshot_in_use``). A crash between the two
leaves files no row names, which garbage collection frees later; never a row naming a file
that is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from layerhub.core.store import get_store
from layerhub.engine.pull import blob_lock
from layerhub.hosts.models import current_host
from layerhub.hosts.routing import host_queue
from layerhub.images.layer_counts import image_layers_release
from layerhub.images.leases import blob_delete_guard, blob_in_use, snapshot_in_use
from layerhub.images.models import Blob, Image, Layer
from layerhub.images.sizes import DeletePlan
from layerhub.images.snapshots import snapshot_forget

logger = logging.getLogger(__name__)


def images_delete_rows(*, images: Sequence[Image], plan: DeletePlan) -> list[str]:
    """Delete ``images`` with their tags, and the layer rows ``plan`` lists (top first: a
    layer goes only once nothing stands on it); the lines ``docker rmi`` prints.

    Call inside a transaction, and delete the files (``plan_files_delete``) once it has
    committed. Containers standing on an image make the delete fail (``plan.blocked``): the
    caller refuses first.
    """
    lines: list[str] = []
    for image in images:
        # the image's row first: a writer of rows naming it (a package scan recording its
        # result) locks it too, so the delete below collects what that writer added, or the
        # writer finds the image gone; never a row added between collecting and deleting
        Image.objects.select_for_update().filter(pk=image.pk).exists()
        for tag in image.tags.select_related("repository").order_by("pk"):
            lines.append(f"Untagged: {tag.repository}:{tag.name}")
            tag.delete()
        image_layers_release(image=image)  # its image-layer rows go with it
        image.delete()
        lines.append(f"Deleted: {image.config_digest}")
    for chain_id, _ in plan.snapshots:
        # locked first, as the image above: a host recording its snapshot of the layer (which
        # updates the layer's row before adding its Snapshot row) goes before or after, whole
        Layer.objects.select_for_update().filter(chain_id=chain_id).exists()
        Layer.objects.filter(chain_id=chain_id).delete()
        lines.append(f"Deleted: {chain_id}")
    return lines


def blob_remove_unused(digest: str) -> bool:
    """Delete the blob's file and size row unless a live lease or a row holds it, deciding
    under its lock; whether there was a file or a row to delete."""
    store = get_store()
    # the lock: this host's jobs; the guard: every host's, with blobs in an object store
    with blob_lock(store, digest), blob_delete_guard():
        if blob_in_use(digest):
            return False
        # the size row goes with the file, under its lock: a job that writes the blob again
        # records its row after this
        rows, _ = Blob.objects.filter(digest=digest).delete()
        return store.blobs.delete(digest) or rows > 0


def snapshot_remove_unused(chain_id: str) -> bool:
    """Delete this host's snapshot unless a live lease or a layer row holds it, deciding
    under its lock; whether it was there and is now gone. Other hosts' snapshots of the
    layer, and their rows, are theirs (``snapshots_collect_elsewhere``)."""
    removed = get_store().snapshots.remove(chain_id, keep=lambda: snapshot_in_use(chain_id))
    if removed:
        snapshot_forget(chain_id=chain_id)
    return removed


SNAPSHOTS_COLLECT_TASK = "layerhub.host_snapshots_collect"


def host_snapshots_collect(chain_ids: Sequence[str] | None = None) -> list[str]:
    """On this host: remove the snapshots (of ``chain_ids``, or every one here) that no layer
    row and no live lease holds, as an ``rmi`` or a garbage collection run on another host
    left them; the ChainIDs removed."""
    store = get_store()
    wanted = list(store.snapshots.chain_ids()) if chain_ids is None else list(chain_ids)
    return [chain for chain in wanted if snapshot_remove_unused(chain)]


def snapshots_collect_elsewhere(*, hosts: Sequence[str], chain_ids: Sequence[str] | None) -> int:
    """Ask each of ``hosts`` (other than this one) to remove its snapshots no row holds any
    more (``host_snapshots_collect``), through its queue: a host that is away does it when it
    comes back. Returns how many hosts were asked; a broker that is down is logged, not
    raised (the files stay for that host's next collection)."""
    from celery import current_app

    if current_app.conf.task_always_eager:
        return 0  # no other host's worker runs in this process
    here = current_host()
    asked = 0
    args = (None if chain_ids is None else list(chain_ids),)
    for host in sorted(set(hosts) - {here}):
        try:
            current_app.send_task(SNAPSHOTS_COLLECT_TASK, args=args, queue=host_queue(host))
        except Exception as exc:  # the broker: the delete itself has happened
            logger.warning("could not ask host %s to remove its snapshots: %s", host, exc)
            continue
        asked += 1
    return asked


@dataclass
class FilesRemoved:
    """What a file delete removed (digest or ChainID, bytes as planned), and what it left
    because a running job or a row holds it now."""

    blobs: list[tuple[str, int]] = field(default_factory=list)
    snapshots: list[tuple[str, int]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        """The bytes removed, by the plan's figures."""
        return sum(size for _, size in self.blobs) + sum(size for _, size in self.snapshots)


def plan_files_delete(
    *, blobs: Sequence[tuple[str, int]], snapshots: Sequence[tuple[str, int]]
) -> FilesRemoved:
    """Delete the snapshots, then the blobs, of a plan whose rows are gone (committed), each
    only if nothing holds it now."""
    removed = FilesRemoved()
    for chain_id, size in snapshots:
        if snapshot_remove_unused(chain_id):
            removed.snapshots.append((chain_id, size))
        elif snapshot_in_use(chain_id):
            removed.kept.append(chain_id)
    for digest, size in blobs:
        if blob_remove_unused(digest):
            removed.blobs.append((digest, size))
        elif blob_in_use(digest):
            removed.kept.append(digest)
    return removed
