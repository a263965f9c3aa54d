"""How ``dedup``'s hardlinks count in sizes, and the rows that record them.

A snapshot's recorded size (``Layer.unpacked_size``), and so an image's SIZE, stays logical:
every file of the snapshot, a file dedup hardlinked to another snapshot's included. The
store's physical snapshot bytes are the recorded sizes minus ``dedup_saved_bytes`` (each
shared inode's size times its links beyond the first), and a delete frees a shared inode's
bytes only with its last link (``dedup_freed_delta``). The rows are DedupInode (one per shared
inode) and DedupLink (one per snapshot path linked to it), written by ``dedup_links_record``
after the links are made; a layer's links go with its row, as its snapshot does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from django.db import transaction
from django.db.models import Count, F, IntegerField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from .models import DedupInode, DedupLink


def dedup_saved_bytes() -> int:
    """What dedup's hardlinks save in ``snapshots/``: each shared inode's size times its links
    beyond the first (one aggregate query)."""
    links = (
        DedupLink.objects.filter(inode=OuterRef("pk"), layer__unpacked_at__isnull=False)
        .values("inode")
        .annotate(n=Count("pk"))
        .values("n")
    )
    saved = (
        DedupInode.objects.annotate(link_count=Subquery(links, output_field=IntegerField()))
        .filter(link_count__gt=1)
        .aggregate(total=Coalesce(Sum(F("size") * (F("link_count") - 1)), Value(0)))
    )
    return int(saved["total"])


def dedup_freed_delta(chain_ids: Sequence[str]) -> dict[str, int]:
    """What dedup's hardlinks change in the bytes that deleting the snapshots ``chain_ids``,
    in this order, frees (each ChainID to add to its recorded size, only those that change):
    a shared inode with a link left in a snapshot that stays frees nothing; one whose every
    link goes is freed once, by the last of its snapshots to go."""
    order = {chain: i for i, chain in enumerate(chain_ids)}
    if not order:
        return {}
    going = DedupLink.objects.filter(layer__chain_id__in=list(order)).values("inode_id")
    rows = DedupLink.objects.filter(inode_id__in=going).values_list(
        "inode_id", "layer__chain_id", "inode__size"
    )
    members: dict[int, list[str]] = defaultdict(list)
    sizes: dict[int, int] = {}
    for inode, chain, size in rows:
        members[inode].append(chain)
        sizes[inode] = size
    delta: dict[str, int] = defaultdict(int)
    for inode, chains in members.items():
        leaving = [c for c in chains if c in order]
        for chain in leaving:
            delta[chain] -= sizes[inode]
        if len(leaving) == len(chains):  # no link stays: its bytes go with the last one
            delta[max(leaving, key=order.__getitem__)] += sizes[inode]
    return {chain: d for chain, d in delta.items() if d}


def dedup_links_record(*, members: Sequence[tuple[int, str]], size: int, sha256: bytes) -> None:
    """Record that the files ``members`` ((layer id, path), one per layer) now share one
    inode of ``size`` bytes. The rows of an inode any of them was linked to before are folded
    into it: dedup replaces an inode only when every link of it was a member, so the links
    of those rows that are not members are links of the inode kept."""
    wanted = {(layer, path) for layer, path in members}
    layers = {layer for layer, _ in wanted}
    with transaction.atomic():
        before = list(
            DedupLink.objects.filter(layer_id__in=layers).values_list(
                "pk", "layer_id", "path", "inode_id"
            )
        )
        inodes = {inode for _, layer, path, inode in before if (layer, path) in wanted}
        # a member's old row, and a row of another path of a member layer in those inodes
        DedupLink.objects.filter(
            pk__in=[
                pk
                for pk, layer, path, inode in before
                if (layer, path) in wanted or inode in inodes
            ]
        ).delete()
        inode = DedupInode.objects.create(size=size, sha256=sha256)
        DedupLink.objects.filter(inode_id__in=inodes).exclude(layer_id__in=layers).update(
            inode=inode
        )
        DedupLink.objects.bulk_create(
            [DedupLink(inode=inode, layer_id=layer, path=path) for layer, path in sorted(wanted)]
        )
        DedupInode.objects.filter(pk__in=inodes).delete()
