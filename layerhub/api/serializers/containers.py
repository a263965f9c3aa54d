"""Containers: create, their files, a command's result, ``docker diff`` and commit."""

from __future__ import annotations

import base64
import binascii
import shlex
from typing import Any

from rest_framework import serializers

from layerhub.accounts.models import Team
from layerhub.api.serializers.common import TeamActSerializer, VisiblePrimaryKeyField, api_url
from layerhub.api.serializers.images import ImageBriefSerializer
from layerhub.containers.forms import MAX_UPLOAD_BYTES
from layerhub.containers.models import Container
from layerhub.images.models import Image

# what an exec answer carries of each stream; the rest is cut (and said to be)
OUTPUT_CAP = 64 * 1024
# a file in a JSON body (the body itself is at most DATA_UPLOAD_MAX_MEMORY_SIZE, base64 included);
# an upload takes up to MAX_UPLOAD_BYTES
MAX_WRITE_BYTES = 1024 * 1024


class ContainerSerializer(serializers.ModelSerializer[Container]):
    """A writable layer over an image, as ``docker ps -a`` lists it."""

    url = serializers.SerializerMethodField()
    id = serializers.CharField(source="container_id", read_only=True)
    image = ImageBriefSerializer(read_only=True)
    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Container
        fields = [
            "name",
            "id",
            "short_id",
            "url",
            "image",
            "team",
            "host",
            "state",
            "last_command",
            "last_exit_code",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_url(self, container: Container) -> str:
        return api_url(self.context, "container-detail", container.name)


class ContainerCreateSerializer(TeamActSerializer):
    """``docker create``: an image (its id in the catalog) and an optional name."""

    image = VisiblePrimaryKeyField(queryset=Image.objects.all(), help_text="the image's id")
    name = serializers.CharField(
        max_length=128, required=False, allow_blank=True, help_text="default: made up"
    )
    host = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$",
        required=False,
        allow_blank=True,
        help_text="the host (LAYERHUB_HOST) whose disk holds it; default: the API server's",
    )


class FileEntrySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One path of a directory listing."""

    name = serializers.CharField()
    path = serializers.CharField()
    kind = serializers.CharField(help_text="file, dir, symlink, char, block, fifo, socket")
    size = serializers.IntegerField(allow_null=True, help_text="bytes, for a regular file")
    mode = serializers.CharField(help_text="as ls -l prints it")
    target = serializers.CharField(help_text="a symlink's target")
    change = serializers.CharField(
        help_text="A, C or D in a layer's own changes; W for a container's own entry"
    )


class PathSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A path of an image, layer or container: a directory's entries (capped), or the entry."""

    path = serializers.CharField()
    kind = serializers.CharField()
    size = serializers.IntegerField(allow_null=True)
    mode = serializers.CharField()
    target = serializers.CharField()
    entries = FileEntrySerializer(many=True, allow_null=True, help_text="null: not a directory")
    total = serializers.IntegerField(help_text="entries in the directory, listed or not")
    capped = serializers.BooleanField(help_text="more entries than listed")


class FileWriteSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Create or replace a file: its content as text, or base64 for any bytes."""

    path = serializers.CharField(max_length=4096)
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    encoding = serializers.ChoiceField(choices=["utf-8", "base64"], default="utf-8")
    mode = serializers.IntegerField(
        min_value=0, max_value=0o7777, default=0o644, help_text="permission bits (420 = 0644)"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["encoding"] == "base64":
            try:
                data = base64.b64decode(attrs["content"], validate=True)
            except (binascii.Error, ValueError):
                raise serializers.ValidationError({"content": "not valid base64"}) from None
        else:
            data = attrs["content"].encode()
        if len(data) > MAX_WRITE_BYTES:
            raise serializers.ValidationError(
                {"content": f"more than {MAX_WRITE_BYTES} bytes: upload the file instead"}
            )
        attrs["data"] = data
        return attrs


class UploadSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Upload a file (multipart/form-data) to ``path`` in the container."""

    path = serializers.CharField(max_length=4096, help_text="where the file goes")
    file = serializers.FileField(help_text=f"at most {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB")

    def validate_file(self, upload: Any) -> Any:
        if (upload.size or 0) > MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
            )
        return upload


class ExecSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``docker exec``: a command (argv, or a line split as a shell would), a time limit."""

    command = serializers.ListField(
        child=serializers.CharField(max_length=8192, trim_whitespace=False),
        min_length=1,
        max_length=256,
        required=False,
        help_text='argv: ["sh", "-c", "echo hi"]',
    )
    command_line = serializers.CharField(
        max_length=8192, required=False, help_text="or one line: sh -c 'echo hi'"
    )
    timeout = serializers.IntegerField(min_value=1, max_value=600, default=60, help_text="seconds")
    network = serializers.BooleanField(default=False, help_text="default: loopback only")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        argv = attrs.get("command")
        if argv is None and attrs.get("command_line"):
            try:
                argv = shlex.split(attrs["command_line"])
            except ValueError as exc:
                raise serializers.ValidationError({"command_line": str(exc)}) from None
        if not argv:
            raise serializers.ValidationError({"command": "give a command to run"})
        attrs["argv"] = argv
        return attrs


class ExecResultSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What the command left: its exit code and output (each stream cut at 64 KiB)."""

    exit_code = serializers.IntegerField()
    stdout = serializers.CharField()
    stderr = serializers.CharField()
    stdout_truncated = serializers.BooleanField()
    stderr_truncated = serializers.BooleanField()
    duration = serializers.FloatField(help_text="seconds")


class ChangeSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One line of ``docker diff``."""

    kind = serializers.ChoiceField(choices=["A", "C", "D"])
    path = serializers.CharField()


class CommitSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """``docker commit -m -a -c`` and the reference to tag the new image with."""

    repository = serializers.CharField(
        max_length=512, required=False, allow_blank=True, help_text="e.g. team/app:2"
    )
    message = serializers.CharField(max_length=1024, required=False, allow_blank=True)
    author = serializers.CharField(max_length=255, required=False, allow_blank=True)
    changes = serializers.ListField(
        child=serializers.CharField(max_length=8192),
        max_length=100,
        required=False,
        help_text='Dockerfile instructions: ["ENV A=1", "CMD [\\"sh\\"]"]',
    )
