"""Files found in images, as the API shows them."""

from __future__ import annotations

from rest_framework import serializers


class FileMatchSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A path of an image's final view that matches a search, with the layer providing it."""

    image = serializers.IntegerField(help_text="the image's id")
    image_names = serializers.ListField(
        child=serializers.CharField(), help_text="its names you may read, as docker images shows"
    )
    path = serializers.CharField(help_text="absolute, as in the image")
    type = serializers.ChoiceField(
        choices=["file", "directory", "symlink", "hardlink", "char", "block", "fifo"]
    )
    mode = serializers.CharField(help_text="permission bits in octal, as '0644'")
    uid = serializers.IntegerField()
    gid = serializers.IntegerField()
    size = serializers.IntegerField(help_text="content bytes (0 for what is not a file)")
    sha256 = serializers.CharField(help_text="'sha256:<hex>' of the content, '' if none")
    link = serializers.CharField(help_text="a symlink's target, or a hardlink's other path")
    layer = serializers.CharField(help_text="digest of the layer providing it")
    layer_position = serializers.IntegerField(help_text="0: the image's bottom layer")
