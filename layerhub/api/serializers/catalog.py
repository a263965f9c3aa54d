"""Repositories and tags: the names of the catalog."""

from __future__ import annotations

from rest_framework import serializers

from layerhub.accounts.models import Team
from layerhub.api.serializers.common import TeamActSerializer, VisiblePrimaryKeyField, api_url
from layerhub.images.models import Image, Repository, Tag


class RepositorySerializer(serializers.ModelSerializer[Repository]):
    """``docker.io/library/debian`` in one team's catalog."""

    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )
    reference = serializers.SerializerMethodField()
    tag_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Repository
        fields = ["id", "team", "registry", "name", "reference", "public", "tag_count"]
        read_only_fields = fields

    def get_reference(self, repository: Repository) -> str:
        return str(repository)


class TagSerializer(serializers.ModelSerializer[Tag]):
    """``registry/repository:tag`` pointing at one image."""

    reference = serializers.SerializerMethodField()
    team = serializers.SerializerMethodField()
    image_url = serializers.SerializerMethodField()

    class Meta:
        model = Tag
        fields = [
            "id",
            "reference",
            "name",
            "repository",
            "team",
            "image",
            "image_url",
            "updated_at",
        ]
        read_only_fields = fields

    def get_reference(self, tag: Tag) -> str:
        return f"{tag.repository}:{tag.name}"

    def get_team(self, tag: Tag) -> str:
        return tag.repository.team.name

    def get_image_url(self, tag: Tag) -> str:
        return api_url(self.context, "image-detail", tag.image_id)


class TagCreateSerializer(TeamActSerializer):
    """``docker tag``: name an image ``registry/repository:tag`` in a team's repository (a
    tag of that name already there moves to this image)."""

    image = VisiblePrimaryKeyField(queryset=Image.objects.all(), help_text="the image's id")
    reference = serializers.CharField(max_length=512, help_text="e.g. 127.0.0.1:5000/team/app:2")


class TagMoveSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Point the tag at another image."""

    image = VisiblePrimaryKeyField(queryset=Image.objects.all(), help_text="the image's id")
