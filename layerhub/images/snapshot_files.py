"""An image's or a layer's files, read on a host that holds their snapshots.

Each host keeps its own snapshots (its Snapshot rows); the web server may hold none. Pages and
the API read an image's merged tree, or a layer's own changes, through ``SnapshotFiles``: each
read is a host operation (layerhub.hosts.calls) answered by a host holding every snapshot it
needs. That is this host when they are all on its disk (the call then runs in-process,
through the same JSON: one code path), else a host whose Snapshot rows cover them and whose
worker is alive, the freshest heartbeat first. The host opens its own snapshot directories,
named by ChainID, through a union view that refuses ``..`` and never follows a symlink: a
caller names ChainIDs and an image path, never a directory of the host.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from layerhub.core.store import get_store
from layerhub.engine.digest import short_id
from layerhub.engine.errors import SnapshotNotFound
from layerhub.engine.union import UnionView
from layerhub.hosts.calls import host_call, host_operation
from layerhub.hosts.models import Host, current_host
from layerhub.hosts.remote_file import chunk_decode, chunk_encode, remote_reader
from layerhub.hosts.routing import HostUnavailable, host_unavailable_message
from layerhub.images.browse import Browse, layer_browse, tree_browse
from layerhub.images.models import Image, ImageLayer, Layer, Snapshot
from layerhub.images.snapshots import snapshots_use_chains


def image_chains(image: Image) -> list[str]:
    """The ChainIDs of ``image``'s layers, bottom first."""
    return list(image.image_layers.order_by("position").values_list("layer__chain_id", flat=True))


def layers_below(layer: Layer) -> list[str] | None:
    """The ChainIDs under ``layer``, bottom first (one image holding it tells them, in one
    query rather than a walk up the parent links); None if no image holds it."""
    place = ImageLayer.objects.filter(layer=layer).order_by("pk").first()
    if place is None:
        return [] if layer.parent_id is None else None
    return list(
        ImageLayer.objects.filter(image_id=place.image_id, position__lt=place.position)
        .order_by("position")
        .values_list("layer__chain_id", flat=True)
    )


def snapshots_host(chains: Sequence[str], *, also: Sequence[str] = (), what: str) -> str:
    """The host to read the snapshots ``chains`` on: this one when they are all on its disk,
    else a live host whose Snapshot rows hold them all; among those, one that also holds
    ``also`` (a layer's layers below it), then this host, then the freshest heartbeat.

    Raises SnapshotNotFound when no host holds them all, HostUnavailable (with each
    holder's reason) when every host that does is down. ``what`` names them in the messages
    (``image 3f4e1a2b9c0d``)."""
    store = get_store()
    here = current_host()
    wanted, preferred = set(chains), set(also)
    on_disk = {chain for chain in wanted | preferred if store.snapshots.exists(chain)}
    if on_disk == wanted | preferred:
        return here  # no query: the common case of a host browsing what it unpacked
    held: dict[str, set[str]] = {}
    rows = Snapshot.objects.filter(layer__chain_id__in=wanted | preferred).exclude(host=here)
    for host, chain in rows.values_list("host", "layer__chain_id"):
        held.setdefault(host, set()).add(chain)
    if wanted <= on_disk:
        held[here] = on_disk
    holders = sorted(host for host, got in held.items() if wanted <= got)
    if not holders:
        if Layer.objects.filter(chain_id__in=wanted, unpacked_at__isnull=False).exists():
            raise SnapshotNotFound(
                f"{what} is not unpacked on any host now: the snapshot caches let its layers "
                "go; opening a container from it unpacks them again"
            )
        raise SnapshotNotFound(
            f"{what} is not unpacked on any host yet: its unpack has not finished, or it "
            "failed (see the image's jobs)"
        )
    beats = {
        row.name: row.heartbeat_at.timestamp()
        for row in Host.objects.filter(name__in=holders)
        if row.available
    }
    live = [host for host in holders if host == here or host in beats]
    if not live:
        reasons = "; ".join(filter(None, (host_unavailable_message(h) for h in holders)))
        reasons = reasons or f"{', '.join(holders)} stopped answering"
        raise HostUnavailable(f"no host that holds the snapshots of {what} is up: {reasons}")
    return min(live, key=lambda h: (not preferred <= held[h], h != here, -beats.get(h, 0.0)))


@dataclass(frozen=True)
class SnapshotFiles:
    """The stacked snapshots ``chains`` (bottom first), read on ``host``: an image's merged
    tree, or (``layer``) the top layer's own changes over the layers ``below`` it (None:
    not known, so a changed path shows as added)."""

    host: str
    chains: tuple[str, ...]
    layer: bool = False
    below: tuple[str, ...] | None = None

    def browse(self, path: str, *, content: bool = True) -> Browse:
        """``path`` as a file browser shows it (``content``: a regular file's first
        TEXT_CAP bytes too)."""
        if self.layer:
            below = None if self.below is None else list(self.below)
            found = host_call(
                self.host,
                "snapshots.layer",
                chain=self.chains[-1],
                below=below,
                path=path,
                content=content,
            )
        else:
            found = host_call(
                self.host, "snapshots.tree", chains=list(self.chains), path=path, content=content
            )
        return Browse.from_json(found)

    def _read(self, path: str, offset: int, length: int) -> bytes:
        text = host_call(
            self.host,
            "snapshots.read",
            chains=list(self.chains),
            path=path,
            offset=offset,
            length=length,
        )
        return chunk_decode(text)

    def open(self, path: str, size: int) -> BinaryIO:
        """The regular file at ``path`` (``size`` bytes, as its entry said): on this host
        the file itself (once open, it stays readable if the snapshot cache lets the
        snapshot go); on another, read from it a chunk per call as it is consumed."""
        if self.host == current_host():
            with _snapshots_kept():
                return _view_here(list(self.chains)).open(path)
        return remote_reader(partial(self._read, path), size)


def image_snapshot_files(image: Image) -> SnapshotFiles:
    """``image``'s merged files, on a host that holds all its layers (``snapshots_host``)."""
    chains = image_chains(image)
    what = f"image {image.image_id}"
    if not chains:
        raise SnapshotNotFound(f"{what} has no layers: it has no files")
    return SnapshotFiles(snapshots_host(chains, what=what), tuple(chains))


def layer_snapshot_files(layer: Layer) -> SnapshotFiles:
    """``layer``'s own files and changes, on a host that holds its snapshot, and the layers
    below it when one does (else its changes show as added, ``lower_unknown``)."""
    below = layers_below(layer)
    host = snapshots_host(
        [layer.chain_id], also=below or (), what=f"layer {short_id(layer.digest)}"
    )
    return SnapshotFiles(
        host, (layer.chain_id,), layer=True, below=None if below is None else tuple(below)
    )


# -- what a host holding the snapshots answers ------------------------------------------------


def _view_here(chains: Any) -> UnionView:
    """This host's snapshots of ``chains`` (ChainIDs, bottom first), merged; SnapshotNotFound
    when one is not here, InvalidDigest for a name that is not a ChainID."""
    if not isinstance(chains, list) or not chains:
        raise SnapshotNotFound("no layers named: nothing to read")
    store = get_store()
    paths = []
    for chain in chains:
        path = store.snapshots.path(str(chain))  # validates it: sha256:<64 hex> only
        if not path.is_dir():
            raise SnapshotNotFound(
                f"layer {short_id(str(chain))} is not unpacked on host {current_host()}"
            )
        paths.append(path)
    # a page reading them is a use: the snapshot cache evicts the least recently used
    snapshots_use_chains(str(chain) for chain in chains)
    return UnionView(paths, store.whiteouts)


@contextmanager
def _snapshots_kept() -> Iterator[None]:
    """A snapshot removed while it is read (rmi, garbage collection) is a SnapshotNotFound
    the page shows, not an internal error."""
    try:
        yield
    except FileNotFoundError:
        raise SnapshotNotFound(
            f"a snapshot was removed from host {current_host()} while it was read: try again"
        ) from None


@host_operation("snapshots.tree")
def _tree_here(*, chains: Any, path: str, content: bool = True) -> dict[str, Any]:
    with _snapshots_kept():
        return tree_browse(_view_here(chains), str(path), content=bool(content)).to_json()


@host_operation("snapshots.layer")
def _layer_here(*, chain: str, below: Any, path: str, content: bool = True) -> dict[str, Any]:
    with _snapshots_kept():
        snapshot = _view_here([chain])
        lower: UnionView | None = None
        unknown = below is None
        if below:
            try:
                lower = _view_here(below)
            except SnapshotNotFound:
                unknown = True  # this host lacks a layer below: changes show as added
        found = layer_browse(
            snapshot, lower, str(path), lower_unknown=unknown, content=bool(content)
        )
        return found.to_json()


@host_operation("snapshots.read")
def _read_here(*, chains: Any, path: str, offset: int, length: int) -> str:
    with _snapshots_kept(), _view_here(chains).open(str(path)) as f:
        return chunk_encode(f, offset, length)
