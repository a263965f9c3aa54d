"""An image's wasted space and its file tree from the file index, as the API shows them."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from layerhub.images.wasted import Copy, ImageWasted, LayerRef, TreePage, TreeRow

WASTED_LIMIT = 20
WASTED_LIMIT_MAX = 1000


class LayerRefSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A layer of the image: its position (0: bottom) and digests."""

    position = serializers.IntegerField()
    chain_id = serializers.CharField()
    digest = serializers.CharField()


class WastedCopySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A copy of a file a layer stores and a later layer replaced or removed."""

    path = serializers.CharField()
    size = serializers.IntegerField()
    added_by = LayerRefSerializer()
    removed_by = LayerRefSerializer()
    reason = serializers.CharField(
        help_text="replaced, deleted, parent deleted, hidden by opaque directory, parent replaced"
    )
    links = serializers.IntegerField(help_text="hardlinked names sharing the copy")


class ImageWastedSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Wasted space as dive reports it, each superseded copy counted once; null figures while
    a layer has no file index yet (``index`` is ``pending``)."""

    index = serializers.ChoiceField(choices=["complete", "pending"])
    layer_count = serializers.IntegerField()
    pending_layers = LayerRefSerializer(many=True)
    total_bytes = serializers.IntegerField(allow_null=True, help_text="file bytes of all layers")
    wasted_bytes = serializers.IntegerField(allow_null=True)
    kept_bytes = serializers.IntegerField(allow_null=True, help_text="visible in the image")
    efficiency = serializers.FloatField(allow_null=True, help_text="kept / total, 0 to 1")
    duplicate_bytes = serializers.IntegerField(
        allow_null=True, help_text="in files whose content another snapshot stores too"
    )
    wasted_file_count = serializers.IntegerField(allow_null=True)
    wasted_files = WastedCopySerializer(many=True, help_text="the biggest first")


class TreeRowSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A path of the image's tree (or one a later layer removed: ``removed``)."""

    name = serializers.CharField()
    path = serializers.CharField()
    kind = serializers.CharField(
        help_text="file, hardlink, dir, symlink, char, block, fifo; '' if removed"
    )
    mode = serializers.CharField()
    uid = serializers.IntegerField(allow_null=True)
    gid = serializers.IntegerField(allow_null=True)
    size = serializers.IntegerField(allow_null=True)
    link = serializers.CharField()
    sha256 = serializers.CharField(help_text="hex, for a regular file")
    layer = LayerRefSerializer(allow_null=True, help_text="the layer providing it")
    removed = serializers.BooleanField()
    wasted_bytes = serializers.IntegerField(help_text="wasted copies at and under this path")
    superseded = WastedCopySerializer(many=True, help_text="wasted copies at this path")
    duplicated = serializers.BooleanField()


class ImageTreeSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A directory of the image's tree (a page of its entries), or one entry."""

    index = serializers.ChoiceField(choices=["complete", "pending"])
    pending_layers = LayerRefSerializer(many=True)
    path = serializers.CharField()
    entry = TreeRowSerializer(allow_null=True, help_text="null for / and while pending")
    entries = TreeRowSerializer(many=True, allow_null=True, help_text="null: not a directory")
    total = serializers.IntegerField()
    page = serializers.IntegerField()
    pages = serializers.IntegerField()


def layer_ref(ref: LayerRef) -> dict[str, Any]:
    return {"position": ref.position, "chain_id": ref.chain_id, "digest": ref.digest}


def wasted_copy(copy: Copy) -> dict[str, Any]:
    return {
        "path": copy.path,
        "size": copy.size,
        "added_by": layer_ref(copy.added_by),
        "removed_by": layer_ref(copy.removed_by),
        "reason": copy.reason,
        "links": copy.links,
    }


def image_wasted_body(wasted: ImageWasted, limit: int) -> dict[str, Any]:
    report = wasted.report
    return {
        "index": "complete" if report is not None else "pending",
        "layer_count": len(wasted.layers),
        "pending_layers": [layer_ref(r) for r in wasted.pending],
        "total_bytes": report.total if report else None,
        "wasted_bytes": report.wasted if report else None,
        "kept_bytes": report.kept if report else None,
        "efficiency": report.efficiency if report else None,
        "duplicate_bytes": wasted.duplicate_bytes if report else None,
        "wasted_file_count": len(report.copies) if report else None,
        "wasted_files": [wasted_copy(c) for c in wasted.top(limit)] if report else [],
    }


def tree_row(row: TreeRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "path": row.path,
        "kind": row.kind,
        "mode": row.mode,
        "uid": row.uid,
        "gid": row.gid,
        "size": row.size,
        "link": row.link,
        "sha256": row.sha256,
        "layer": layer_ref(row.layer) if row.layer else None,
        "removed": row.removed,
        "wasted_bytes": row.wasted_below,
        "superseded": [wasted_copy(c) for c in row.superseded],
        "duplicated": row.duplicated,
    }


def image_tree_body(wasted: ImageWasted, path: str, tree: TreePage | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "index": "complete" if tree is not None else "pending",
        "pending_layers": [layer_ref(r) for r in wasted.pending],
        "path": path,
        "entry": None,
        "entries": None,
        "total": 0,
        "page": 1,
        "pages": 1,
    }
    if tree is not None:
        body.update(
            entry=tree_row(tree.entry) if tree.entry else None,
            entries=[tree_row(r) for r in tree.rows] if tree.is_dir else None,
            total=tree.total,
            page=tree.page,
            pages=tree.pages,
        )
    return body
