"""Verify the store against the catalog: walk ``blobs/``, ``snapshots/``, ``containers/``
and ``tmp/`` and compare every recorded size with the disk.

Reported (``Finding``):
- ``size``: a Blob row's size is not its file's length, or a layer's recorded unpacked size
  (or file count) is not what its snapshot's tree holds now;
- ``orphan``: a file or directory no row knows (a blob, a snapshot, a container's layer, a
  leftover in ``tmp/``), unless a live lease holds it (a running job is about to record it)
  or, in ``tmp/``, a live process holds it (an in-flight download or unpack);
- ``missing``: a row whose file is gone (a Blob row, an unpacked layer, an image's manifest
  or config, a container's layer), and a blob an image names that has no size row;
- ``count``: a layer whose recorded count of images (what the overview reads) is not the
  number of images that use it;
- ``size`` of ``snapshots/`` as a whole: what the recorded snapshots hold with each
  hardlinked inode once (a file ``dedup`` linked into several snapshots counts once) is not
  what this host's Snapshot rows record less what dedup's links save, when every snapshot's
  own size matched and no other host holds snapshots.

Every walk is iterative, never follows a symlink and never enters a mount point (the
engine's ``tree_usage`` / ``walk_tree``); nothing is changed.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass, field
from typing import Any

from layerhub.containers.models import Container
from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.engine.errors import LayerhubError
from layerhub.engine.fsutil import tree_usage, tree_usage_over
from layerhub.hosts.models import current_host
from layerhub.images.dedup_links import dedup_saved_bytes
from layerhub.images.layer_counts import layer_image_count_mismatches, layer_image_counts_refresh
from layerhub.images.leases import LIVE_STATES
from layerhub.images.models import Blob, Image, Layer, Snapshot
from layerhub.images.sizes import own_blob_bytes_refresh
from layerhub.images.snapshots import host_snapshot_usage
from layerhub.images.usage import tmp_entries
from layerhub.jobs.models import Lease

_HEX = re.compile(r"[0-9a-f]{64}")
# findings kept in a report stored on a job row (the count is always exact)
MAX_STORED_FINDINGS = 500


@dataclass(frozen=True)
class Finding:
    """One difference between the catalog and the disk."""

    problem: str  # "size", "orphan", "missing" or "count"
    what: str  # "blob", "snapshot", "container", "tmp", "layer"
    key: str  # a digest, ChainID, container ID or path under the store
    detail: str

    def line(self) -> str:
        """The finding as one line for people."""
        return f"{self.problem} {self.what} {self.key}: {self.detail}"


@dataclass
class VerifyReport:
    """What a verify walk checked and found. ``held`` lists what was not judged an orphan
    because a live lease or process holds it."""

    blobs: int = 0
    snapshots: int = 0
    containers: int = 0
    tmp: int = 0
    findings: list[Finding] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    finding_count: int | None = None  # set when findings were cut for storage
    # the recorded snapshots on disk: each alone (logical) and together, a hardlinked inode
    # once (physical); the part dedup's hardlinks store once is the difference
    snapshot_bytes: int = 0
    snapshot_physical_bytes: int = 0

    @property
    def problems(self) -> int:
        """How many differences were found (all of them, even once the list is cut)."""
        return len(self.findings) if self.finding_count is None else self.finding_count

    @property
    def ok(self) -> bool:
        """Whether the store and the catalog agree."""
        return self.problems == 0

    def summary(self) -> str:
        """One line: what was checked and how many problems."""
        checked = (
            f"checked {self.blobs} blobs, {self.snapshots} snapshots, "
            f"{self.containers} containers, {self.tmp} tmp/ entries"
        )
        if self.snapshot_bytes != self.snapshot_physical_bytes:
            checked += (
                f"; snapshots hold {human_size(self.snapshot_physical_bytes)}, "
                f"{human_size(self.snapshot_bytes - self.snapshot_physical_bytes)} of their "
                f"{human_size(self.snapshot_bytes)} stored once by dedup"
            )
        if self.ok:
            return f"{checked}: no problems"
        return f"{checked}: {self.problems} problem(s)"

    def to_json(self) -> dict[str, Any]:
        """A bounded form to keep on a job row."""
        data = asdict(self)
        data["findings"] = data["findings"][:MAX_STORED_FINDINGS]
        data["held"] = data["held"][:MAX_STORED_FINDINGS]
        data["finding_count"] = self.problems
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyReport:
        """The report ``to_json`` stored."""
        return cls(
            blobs=int(data.get("blobs", 0)),
            snapshots=int(data.get("snapshots", 0)),
            containers=int(data.get("containers", 0)),
            tmp=int(data.get("tmp", 0)),
            findings=[Finding(**f) for f in data.get("findings", [])],
            held=list(data.get("held", [])),
            finding_count=data.get("finding_count"),
            snapshot_bytes=int(data.get("snapshot_bytes", 0)),
            snapshot_physical_bytes=int(data.get("snapshot_physical_bytes", 0)),
        )


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def store_verify() -> VerifyReport:
    """Walk the store and compare it with the catalog's rows (see the module docstring)."""
    store = get_store()
    report = VerifyReport()
    leased = set(Lease.objects.filter(job__state__in=LIVE_STATES).values_list("key", flat=True))

    def found(problem: str, what: str, key: str, detail: str) -> None:
        report.findings.append(Finding(problem, what, key, detail))

    # blobs/: every file against its row
    recorded = dict(Blob.objects.values_list("digest", "size"))
    on_disk: set[str] = set()
    for blob in store.blobs.list():
        digest = blob.digest
        if digest is None:
            found("orphan", "blob", store.blobs.where(blob.name), "not a blob file")
            continue
        report.blobs += 1
        on_disk.add(digest)
        size = recorded.get(digest)
        if size is None:
            if digest in leased:
                report.held.append(digest)
            else:
                found("orphan", "blob", digest, f"{blob.size} bytes no row records")
        elif size != blob.size:
            found("size", "blob", digest, f"recorded {size} bytes, the file has {blob.size}")
    for digest in sorted(set(recorded) - on_disk):
        found("missing", "blob", digest, "recorded, but the file is gone")
    named: dict[str, str] = {}
    for manifest, config, index in Image.objects.values_list(
        "manifest_digest", "config_digest", "index_digest"
    ).iterator(chunk_size=1000):
        named.setdefault(manifest, "manifest")
        named.setdefault(config, "config")
        if index:
            named.setdefault(index, "index")
    for digest in Layer.objects.values_list("digest", flat=True).distinct().iterator():
        named.setdefault(digest, "layer")
    for digest, kind in sorted(named.items()):
        if digest not in recorded and digest not in leased:
            gone = "" if digest in on_disk else " and its file is gone"
            found("missing", "blob", digest, f"the {kind} an image names has no size row{gone}")

    # snapshots/: every tree against its layer's recorded size
    layers = {
        chain: (unpacked_at is not None, size, files)
        for chain, unpacked_at, size, files in Layer.objects.values_list(
            "chain_id", "unpacked_at", "unpacked_size", "file_count"
        ).iterator(chunk_size=1000)
    }
    # the snapshots this host's rows say it holds (other hosts' are on their disks)
    here = set(
        Snapshot.objects.filter(host=current_host()).values_list("layer__chain_id", flat=True)
    )
    seen_snapshots: set[str] = set()
    shared: set[tuple[int, int]] = set()
    sizes_match = True
    with os.scandir(store.snapshots.root) as entries:
        for entry in entries:
            chain = f"sha256:{entry.name}"
            tree = store.snapshots.path(chain)
            if not _HEX.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                found("orphan", "snapshot", f"snapshots/{entry.name}", "not a snapshot")
                continue
            try:
                tree_is_dir = stat.S_ISDIR(os.lstat(tree).st_mode)
            except FileNotFoundError:
                tree_is_dir = False
            if not tree_is_dir:
                found("orphan", "snapshot", chain, "a snapshot directory without its fs/ tree")
                continue
            report.snapshots += 1
            seen_snapshots.add(chain)
            row = layers.get(chain)
            if row is None or not row[0] or chain not in here:
                if chain in leased:
                    report.held.append(chain)
                    continue
                if row is None:
                    why = "no layer row"
                elif not row[0]:
                    why = "its layer is not recorded as unpacked"
                else:
                    why = f"no row records it on this host ({current_host()})"
                found("orphan", "snapshot", chain, why)
                continue
            size, files, new = tree_usage_over(tree, shared)
            report.snapshot_bytes += size
            report.snapshot_physical_bytes += new
            if (size, files) != (row[1], row[2]):
                sizes_match = False
                found(
                    "size",
                    "snapshot",
                    chain,
                    f"recorded {row[1]} bytes in {row[2]} files, "
                    f"the tree holds {size} bytes in {files}",
                )
    # a snapshot is missing where this host's row says it holds one (another host's
    # snapshots are on that host's disk)
    for chain, (unpacked, _, _) in sorted(layers.items()):
        if unpacked and chain in here and chain not in seen_snapshots:
            sizes_match = False
            found("missing", "snapshot", chain, "recorded as unpacked, but the tree is gone")
    # this host's rows (its cache may have evicted layers the catalog still knows unpacked)
    # less dedup's links, which are recorded for the whole store: this host's disk only
    # while no other host holds snapshots
    recorded_physical = host_snapshot_usage()[1] - dedup_saved_bytes()
    alone = not Snapshot.objects.exclude(host=current_host()).exists()
    if sizes_match and alone and recorded_physical != report.snapshot_physical_bytes:
        found(
            "size",
            "store",
            "snapshots/",
            f"recorded {recorded_physical} bytes with hardlinked files once, the trees hold "
            f"{report.snapshot_physical_bytes} (a dedup run records the links it finds)",
        )

    # the catalog itself: each layer's recorded count of images against its image-layer rows
    for chain, counted, rows in layer_image_count_mismatches():
        found("count", "layer", chain, f"recorded as used by {_images(counted)}, not {rows}")

    # containers/: every writable layer against its container (this host's: another host's
    # containers are on that host's disk)
    ids = set(Container.objects.filter(host=current_host()).values_list("container_id", flat=True))
    with os.scandir(store.containers) as entries:
        names = {e.name for e in entries}
    report.containers = len(names)
    for name in sorted(names - ids):
        found("orphan", "container", name, "a container directory no container row knows")
    for name in sorted(ids - names):
        found("missing", "container", name, "the container's writable layer is gone")

    # tmp/: what no live process holds is a leftover
    for item in tmp_entries():
        report.tmp += 1
        if item.live:
            report.held.append(f"tmp/{item.name}")
        else:
            found("orphan", "tmp", f"tmp/{item.name}", f"{item.size} bytes no process holds")
    return report


def store_verify_fix_sizes(report: VerifyReport) -> list[str]:
    """Record the disk's sizes where ``report`` found them differ (a blob's length, a
    snapshot's bytes and file count, measured again now), add the size row of a blob an
    image names whose file is there, and count again the images of a layer whose count was
    off; returns a line per change. Orphans and missing files are left for people (and
    garbage collection) to judge."""
    store = get_store()
    changed: list[str] = []
    for finding in report.findings:
        if finding.problem == "size" and finding.what == "blob":
            try:
                size = store.blobs.size(finding.key)
            except LayerhubError:
                continue
            Blob.objects.filter(digest=finding.key).update(size=size)
            changed.append(f"blob {finding.key}: recorded {size} bytes")
        elif finding.problem == "size" and finding.what == "snapshot":
            try:
                size, files = tree_usage(store.snapshots.path(finding.key))
            except FileNotFoundError:
                continue
            Layer.objects.filter(chain_id=finding.key).update(unpacked_size=size, file_count=files)
            Snapshot.objects.filter(layer__chain_id=finding.key, host=current_host()).update(
                size=size, file_count=files
            )
            changed.append(f"snapshot {finding.key}: recorded {size} bytes in {files} files")
        elif (
            finding.problem == "missing"
            and finding.what == "blob"
            and "no size row" in (finding.detail)
        ):
            kind = finding.detail.split()[1]  # "the <kind> an image names ..."
            try:
                size = store.blobs.size(finding.key)
            except LayerhubError:
                continue
            Blob.objects.get_or_create(digest=finding.key, defaults={"size": size, "kind": kind})
            changed.append(f"blob {finding.key}: recorded {size} bytes ({kind})")
    miscounted = [f.key for f in report.findings if f.problem == "count" and f.what == "layer"]
    if miscounted:
        layers = Layer.objects.filter(chain_id__in=miscounted)
        layer_image_counts_refresh(layers)
        for chain, count in layers.order_by("chain_id").values_list("chain_id", "image_count"):
            changed.append(f"layer {chain}: counted {_images(count)}")
    if any(line.startswith("blob ") for line in changed):
        own_blob_bytes_refresh(Image.objects.all())  # images total their own blobs' sizes
    return changed
