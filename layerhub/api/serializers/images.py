"""Images, their layers and history, what deleting one frees, and the requests that start
pulls, pushes, saves and imports.

Names of images, tags and repositories are only ever those the user sees: a viewset prefetches
the visible tags (``visible_tags``) and repositories (``visible_repositories``) of each image.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from layerhub.api.serializers.common import TeamActSerializer, api_url
from layerhub.core.permissions import PULL
from layerhub.images.models import Image, Layer


def image_references(image: Image) -> list[str]:
    """``registry/repository:tag`` of each visible tag of ``image``."""
    tags = getattr(image, "visible_tags", None)
    if tags is None:
        return []
    return [f"{tag.repository}:{tag.name}" for tag in tags]


class ImageBriefSerializer(serializers.ModelSerializer[Image]):
    """An image as other objects name it."""

    url = serializers.SerializerMethodField()
    image_id = serializers.CharField(read_only=True, help_text="docker images' IMAGE ID")
    platform = serializers.CharField(read_only=True)
    references = serializers.SerializerMethodField()

    class Meta:
        model = Image
        fields = ["id", "url", "image_id", "manifest_digest", "platform", "references"]
        read_only_fields = fields

    def get_url(self, image: Image) -> str:
        return api_url(self.context, "image-detail", image.pk)

    def get_references(self, image: Image) -> list[str]:
        return image_references(image)


class ImageSerializer(ImageBriefSerializer):
    """An image in the catalog, its sizes as ``docker system df -v`` gives them: SIZE
    (unpacked), SHARED SIZE (in layers other images use too, whoever sees them) and UNIQUE
    SIZE; the compressed download size beside them."""

    repositories = serializers.SerializerMethodField()
    size = serializers.IntegerField(read_only=True)
    shared_size = serializers.IntegerField(read_only=True)
    unique_size = serializers.IntegerField(read_only=True)
    download_size = serializers.IntegerField(read_only=True)
    layer_count = serializers.IntegerField(read_only=True)
    pending_layers = serializers.IntegerField(
        read_only=True, help_text="layers not unpacked yet: their bytes are not in size"
    )

    class Meta(ImageBriefSerializer.Meta):
        fields = [
            *ImageBriefSerializer.Meta.fields,
            "config_digest",
            "repositories",
            "created",
            "added_at",
            "size",
            "shared_size",
            "unique_size",
            "download_size",
            "layer_count",
            "pending_layers",
        ]
        read_only_fields = fields

    def get_repositories(self, image: Image) -> list[str]:
        repositories = getattr(image, "visible_repositories", None) or []
        return [str(repository) for repository in repositories]


class SharingSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Who uses a layer, told without naming what the user may not see."""

    your_images = serializers.IntegerField(help_text="images you see that use this layer")
    other_images = serializers.BooleanField(help_text="whether images you do not see use it too")
    text = serializers.CharField(help_text="'used by 3 of your images and others'")


class LayerSerializer(serializers.ModelSerializer[Layer]):
    """A layer by ChainID: its compressed blob, its DiffID, its sizes and how widely it is
    shared."""

    url = serializers.SerializerMethodField()
    parent_chain_id: serializers.SlugRelatedField[Layer] = serializers.SlugRelatedField(
        source="parent",
        slug_field="chain_id",
        read_only=True,
        allow_null=True,
        help_text="the layer below (null for a bottom layer)",
    )
    sharing = serializers.SerializerMethodField()

    class Meta:
        model = Layer
        fields = [
            "url",
            "chain_id",
            "digest",
            "diff_id",
            "media_type",
            "size",
            "unpacked_size",
            "file_count",
            "unpacked_at",
            "parent_chain_id",
            "sharing",
        ]
        read_only_fields = fields

    def get_url(self, layer: Layer) -> str:
        return api_url(self.context, "layer-detail", layer.chain_id.removeprefix("sha256:"))

    @extend_schema_field(SharingSerializer)
    def get_sharing(self, layer: Layer) -> dict[str, Any]:
        sharing = self.context["sharing"][layer.pk]
        return {"your_images": sharing.yours, "other_images": sharing.others, "text": sharing.text}


class ImageLayerSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A layer in its place in an image, bottom (0) first."""

    position = serializers.IntegerField()
    layer = LayerSerializer()


class HistorySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One line of ``docker history``, newest first."""

    image = serializers.CharField(help_text="the image ID on the top line, <missing> below")
    created = serializers.CharField(allow_null=True)
    created_by = serializers.CharField()
    size = serializers.IntegerField()
    comment = serializers.CharField()
    empty_layer = serializers.BooleanField()
    author = serializers.CharField()


class DeletePlanSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What deleting the image frees at once, to the byte, and what stands in its way."""

    allowed = serializers.BooleanField(help_text="whether you may delete it")
    image_stays = serializers.BooleanField(
        help_text="other teams name it too: only your teams' names of it go, freeing nothing"
    )
    frees_bytes = serializers.IntegerField()
    frees_by_host = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="each host's bytes of the snapshots that go (blobs are shared by all)",
    )
    held_bytes = serializers.IntegerField(
        help_text="bytes only a running job's lease keeps: garbage collection frees them later"
    )
    blobs = serializers.IntegerField(help_text="blobs deleted")
    snapshots = serializers.IntegerField(help_text="snapshots deleted")
    untagged = serializers.ListField(child=serializers.CharField())
    blocked = serializers.BooleanField(help_text="containers use the image: remove them first")
    containers = serializers.ListField(
        child=serializers.CharField(), help_text="the containers in the way that you see"
    )


class ImageDetailSerializer(ImageSerializer):
    """An image with its run settings, layers, history and what deleting it frees."""

    config = serializers.SerializerMethodField()
    layers = serializers.SerializerMethodField()
    history = serializers.SerializerMethodField()
    delete_plan = serializers.SerializerMethodField()

    class Meta(ImageSerializer.Meta):
        fields = [
            *ImageSerializer.Meta.fields,
            "media_type",
            "index_digest",
            "os",
            "architecture",
            "variant",
            "config",
            "layers",
            "history",
            "delete_plan",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField())
    def get_config(self, image: Image) -> dict[str, Any]:
        run = image.config.get("config") if isinstance(image.config, dict) else None
        return run if isinstance(run, dict) else {}

    @extend_schema_field(ImageLayerSerializer(many=True))
    def get_layers(self, image: Image) -> Any:
        return ImageLayerSerializer(self.context["layers"], many=True, context=self.context).data

    @extend_schema_field(HistorySerializer(many=True))
    def get_history(self, image: Image) -> Any:
        return HistorySerializer(self.context["history"], many=True).data

    @extend_schema_field(DeletePlanSerializer)
    def get_delete_plan(self, image: Image) -> Any:
        return DeletePlanSerializer(self.context["delete_plan"]).data


class PullSerializer(TeamActSerializer):
    """``docker pull``: a reference, and a platform for a multi-platform image."""

    team_action = PULL

    reference = serializers.CharField(max_length=512, help_text="e.g. debian:bookworm")
    platform = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="e.g. linux/arm64"
    )


class PushSerializer(TeamActSerializer):
    """``docker push``: where to (default: the image's own reference), with the team's
    registry login."""

    reference = serializers.CharField(
        max_length=512, required=False, allow_blank=True, help_text="e.g. ghcr.io/acme/app:2"
    )


class SaveSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``docker save``: the archive's format; download it from the job once it is done."""

    format = serializers.ChoiceField(choices=["docker", "oci"], default="docker")


class ImportSerializer(TeamActSerializer):
    """``docker load``: a ``docker save`` archive or an OCI layout tar, uploaded."""

    archive = serializers.FileField()
    platform = serializers.CharField(max_length=64, required=False, allow_blank=True)
