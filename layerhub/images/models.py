"""The image catalog: what pulls and imports put in the store, and how it is named."""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.utils import timezone

from layerhub.engine.digest import short_id

if TYPE_CHECKING:
    from cryptography.fernet import Fernet


def _fernet() -> Fernet:
    # imported here: only logins use it, and every process that loads the models (each
    # command at start-up) would otherwise pay cryptography's import
    from cryptography.fernet import Fernet

    key = hashlib.sha256(b"layerhub registry credentials:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


class RegistryCredential(models.Model):
    """A team's login for one registry host. The password is stored encrypted with a key
    derived from SECRET_KEY and is never shown back in a page or an API response; a pull or
    push for a team uses that team's login alone."""

    team = models.ForeignKey(
        "accounts.Team", on_delete=models.CASCADE, related_name="registry_logins"
    )
    host = models.CharField(max_length=255)  # "ghcr.io", "127.0.0.1:5000"
    username = models.CharField(max_length=255, blank=True)
    password_encrypted = models.BinaryField(blank=True, editable=False)
    insecure = models.BooleanField(
        default=False, help_text="talk plain HTTP (loopback registries always may)"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "host"], name="unique_team_registry_login")
        ]
        ordering = ["team", "host"]

    def __str__(self) -> str:
        return f"{self.username or 'anonymous'}@{self.host}"

    def set_password(self, password: str) -> None:
        """Encrypt and keep ``password``."""
        self.password_encrypted = _fernet().encrypt(password.encode())

    def get_password(self) -> str | None:
        """The password, decrypted: empty if none was stored, None if it can no longer be
        decrypted (SECRET_KEY changed since it was stored)."""
        if not self.password_encrypted:
            return ""
        from cryptography.fernet import InvalidToken

        try:
            return _fernet().decrypt(bytes(self.password_encrypted)).decode()
        except InvalidToken:
            return None


class Repository(models.Model):
    """``docker.io/library/debian`` in one team's catalog: a registry host and a repository
    path. The same upstream repository pulled by two teams is two rows naming the same
    images (stored once)."""

    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="repositories")
    registry = models.CharField(max_length=255)
    name = models.CharField(max_length=255)
    # visible to every signed-in user, not only the team's members
    public = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "registry", "name"], name="unique_repository")
        ]
        ordering = ["registry", "name", "team"]
        verbose_name_plural = "repositories"

    def __str__(self) -> str:
        return f"{self.registry}/{self.name}"


class Layer(models.Model):
    """One layer in its place in a stack: keyed by ChainID, as its snapshot is.

    The compressed blob (``digest``) may be shared by layers over different bases; the
    snapshot belongs to the ChainID. ``unpacked_at`` is set once a snapshot was first made on
    any host (its size is known from then on); which hosts hold one now is its Snapshot rows.

    ``image_count`` is how many images use it (its ImageLayer rows), recorded so the overview
    reads the most shared layers and the layers one image alone holds without counting every
    image-layer row. Whatever adds or deletes ImageLayer rows keeps it exact, in the same
    transaction, through ``layerhub.images.layer_counts``; ``store_verify`` compares it with
    the rows.
    """

    chain_id = models.CharField(max_length=71, unique=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )
    digest = models.CharField(max_length=71, db_index=True)
    diff_id = models.CharField(max_length=71)
    media_type = models.CharField(max_length=255)
    size = models.BigIntegerField(help_text="compressed bytes, as in the manifest")
    unpacked_size = models.BigIntegerField(null=True, blank=True)
    file_count = models.BigIntegerField(null=True, blank=True)
    unpacked_at = models.DateTimeField(null=True, blank=True)
    # a signed field: a count that drifted (rows deleted behind the code's back) is reported
    # by store_verify, never turned into a failed delete by a CHECK constraint
    image_count = models.IntegerField(default=0, help_text="images using this layer")

    class Meta:
        # the most shared layers are the top of this index; SQLite finds the layers one image
        # alone uses through it instead of reading every image-layer row
        indexes = [models.Index(fields=["image_count"], name="layer_image_count")]

    def __str__(self) -> str:
        return short_id(self.digest)


class Snapshot(models.Model):
    """A layer unpacked on one host: each host (LAYERHUB_HOST) keeps its own cache of
    snapshots, made from the shared blobs when a job there needs them. Removing one host's
    snapshot removes its row alone. ``size`` is measured on that host's disk (regular files'
    bytes, a hardlinked file once), as ``Layer.unpacked_size``.

    ``used_at`` is when something on that host last stood on it (a container, a command, a
    page, a scan), recorded at most about once a minute (``snapshots_use``): the cache evicts
    the snapshots used least recently first (``layerhub.images.snapshot_cache``)."""

    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="snapshots")
    host = models.CharField(max_length=100)
    size = models.BigIntegerField()
    file_count = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["layer", "host"], name="unique_snapshot_host")
        ]
        indexes = [
            models.Index(fields=["host", "layer"], name="snapshot_host_layer"),
            # a host's cache, least recently used first
            models.Index(fields=["host", "used_at"], name="snapshot_host_used"),
        ]

    def __str__(self) -> str:
        return f"{self.layer} on {self.host}"


class Blob(models.Model):
    """A file in ``blobs/``: its digest, its length and what it is, recorded when the catalog
    records an image whose blobs are in the store and removed when the file is deleted.

    One row per digest however many images or ChainIDs name it, so the store's physical blob
    bytes are a sum over these rows. A blob kept only by a running job's lease keeps its row
    (the file is still there) until garbage collection removes both.
    """

    class Kind(models.TextChoices):
        LAYER = "layer", "layer"
        CONFIG = "config", "config"
        MANIFEST = "manifest", "manifest"
        INDEX = "index", "index"

    digest = models.CharField(max_length=71, unique=True)
    size = models.BigIntegerField(help_text="the file's length in bytes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    recorded_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.kind} {short_id(self.digest)}"


class Image(models.Model):
    """One platform image: a manifest, its config (the image ID) and its layers."""

    manifest_digest = models.CharField(max_length=71, unique=True)
    media_type = models.CharField(max_length=255)
    config_digest = models.CharField(max_length=71, db_index=True)
    index_digest = models.CharField(max_length=71, blank=True)
    os = models.CharField(max_length=32, default="linux")
    architecture = models.CharField(max_length=32, default="amd64")
    variant = models.CharField(max_length=32, blank=True)
    created = models.DateTimeField(null=True, blank=True)
    # a bounded summary of the config (engine.manifest.config_summary: run settings, labels,
    # ports, volumes, history); the config itself is the blob ``config_digest``
    config = models.JSONField(help_text="summary of the image config; the config is a blob")
    layers = models.ManyToManyField(Layer, through="ImageLayer", related_name="images")
    # where it was pulled from or pushed to; an untagged image still shows its repository
    repositories = models.ManyToManyField(Repository, related_name="images", blank=True)
    added_at = models.DateTimeField(default=timezone.now)
    # bytes of its own manifest, config and index blobs (their Blob rows' sizes), kept here so
    # the logical total (every image as if stored alone) is one sum, not three lookups an image
    own_blob_bytes = models.BigIntegerField(default=0)
    # the team whose pull, import or commit first brought it in: its members see the image
    # even when no repository of theirs names it (an untagged import or commit)
    team = models.ForeignKey(
        "accounts.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-added_at", "-id"]
        # newest first, a page at a time, reads this index and computes sizes for that page
        # alone instead of for every image before sorting
        indexes = [models.Index(fields=["added_at", "id"], name="image_added_order")]

    def __str__(self) -> str:
        return short_id(self.config_digest)

    @property
    def image_id(self) -> str:
        """``docker images``' IMAGE ID: the config digest, shortened."""
        return short_id(self.config_digest)

    @property
    def platform(self) -> str:
        """``linux/amd64`` or ``linux/arm64/v8``."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class ImageLayer(models.Model):
    """A layer's position in an image, bottom (0) first."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="image_layers")
    layer = models.ForeignKey(Layer, on_delete=models.PROTECT, related_name="image_layers")
    position = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["image", "position"], name="unique_layer_position")
        ]
        # the column, not the relation: ordering by "image" would follow Image's own ordering
        # and join images into every query and GROUP BY over these rows
        ordering = ["image_id", "position"]

    def __str__(self) -> str:
        return f"{self.image} #{self.position}"


class Tag(models.Model):
    """``debian:bookworm``: a name in a repository pointing at one image; it moves on re-pull."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=128)
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="tags")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "name"], name="unique_tag")]
        ordering = ["repository", "name"]

    def __str__(self) -> str:
        return f"{self.repository}:{self.name}"


class Package(models.Model):
    """A package installed in an image, read from its final file tree (dpkg's status, apk's
    installed database, rpm's sqlite database, a Python ``*.dist-info``): never run, only read."""

    class Ecosystem(models.TextChoices):
        DEB = "deb", "Debian (dpkg)"
        APK = "apk", "Alpine (apk)"
        RPM = "rpm", "Red Hat (rpm)"
        PYTHON = "python", "Python"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="packages")
    ecosystem = models.CharField(max_length=16, choices=Ecosystem.choices)
    name = models.CharField(max_length=255)
    # the name as searched: lower case, and PEP 503-normalized for Python ("foo-bar")
    name_key = models.CharField(max_length=255)
    version = models.CharField(max_length=255)
    arch = models.CharField(max_length=64, blank=True)
    # the source package it was built from (dpkg's Source, apk's origin, rpm's source rpm)
    origin = models.CharField(max_length=255, blank=True)
    # the file of the image it was read from
    source_path = models.CharField(max_length=1024)

    class Meta:
        ordering = ["ecosystem", "name_key", "version", "id"]
        # "which images have openssl": one index range by name, then versions compared in Python
        indexes = [
            models.Index(fields=["name_key", "ecosystem"], name="package_name_search"),
            models.Index(fields=["image", "ecosystem", "name_key"], name="package_image_list"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.ecosystem})"


class PackageScan(models.Model):
    """When an image's packages were last read, how many, and what the scan skipped (a file
    too big, binary, unreadable): an image without one has not been scanned yet."""

    image = models.OneToOneField(Image, on_delete=models.CASCADE, related_name="package_scan")
    scanned_at = models.DateTimeField(default=timezone.now)
    count = models.PositiveIntegerField(default=0)
    notes = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"packages of {self.image}: {self.count}"


class LayerFiles(models.Model):
    """A layer's file index is recorded: when, and how many entries (a layer without one has
    not been indexed yet; its FileEntry rows are written in the same transaction)."""

    layer = models.OneToOneField(Layer, on_delete=models.CASCADE, related_name="file_index")
    indexed_at = models.DateTimeField(default=timezone.now)
    entry_count = models.PositiveIntegerField(default=0)
    # regular-file content bytes the index describes (hardlinks counted once)
    content_bytes = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"file index of {self.layer}: {self.entry_count} entries"


class FileEntry(models.Model):
    """One entry of a layer's own changes (see ``layerhub.engine.file_index``)."""

    # no index of its own: (layer, path) below serves every lookup by layer
    layer = models.ForeignKey(
        Layer, on_delete=models.CASCADE, related_name="file_entries", db_index=False
    )
    path = models.TextField()  # relative to the layer's root: "usr/lib/libssl.so.3"
    name = models.TextField()  # the last component, for "*/libssl.so.3"
    kind = models.CharField(max_length=1)
    mode = models.IntegerField(default=0)
    uid = models.BigIntegerField(default=0)
    gid = models.BigIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    sha256 = models.BinaryField(max_length=32, null=True, blank=True)
    link = models.TextField(blank=True)

    class Meta:
        # What the searches need (``layerhub.images.file_search``), and no more: the index's
        # bytes are part of what it costs. On PostgreSQL the path and name indexes use the
        # pattern operator class, so one index serves both ``=`` and ``LIKE 'prefix%'``
        # whatever the database's collation (other databases ignore ``opclasses``).
        indexes = [
            # one layer's entries, and "what do the layers above say about this path" (also
            # a prefix in a few layers: the broad searches walk an image at a time)
            models.Index(
                fields=["layer", "path"],
                name="fileentry_layer_path",
                opclasses=["int8_ops", "text_pattern_ops"],
            ),
            # a path exactly, or under a prefix, in any layer; with the kind, so "which layers
            # delete or replace this parent directory" skips the many that only have it
            models.Index(
                fields=["path", "kind"],
                name="fileentry_path",
                opclasses=["text_pattern_ops", "varchar_pattern_ops"],
            ),
            # "*/libssl.so.3": a name exactly, or starting with a prefix
            models.Index(fields=["name"], name="fileentry_name", opclasses=["text_pattern_ops"]),
            # only content has a hash: directories, links and whiteouts stay out of it
            models.Index(
                fields=["sha256"],
                name="fileentry_sha256",
                condition=models.Q(sha256__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


class DedupInode(models.Model):
    """One inode ``dedup`` made several snapshots share (a file's bytes stored once): its size
    and content. Its links are the DedupLink rows, one per snapshot; a snapshot's own size
    still counts it (an image's SIZE is logical), the store's physical total counts it once."""

    size = models.BigIntegerField()
    sha256 = models.BinaryField(max_length=32)
    linked_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"shared inode of {self.size} bytes"


class DedupLink(models.Model):
    """A path of one layer's snapshot that is a link of a shared inode (``dedup``); goes with
    its layer row, as the snapshot does."""

    inode = models.ForeignKey(DedupInode, on_delete=models.CASCADE, related_name="links")
    layer = models.ForeignKey(Layer, on_delete=models.CASCADE, related_name="dedup_links")
    path = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["layer", "path"], name="deduplink_layer_path"),
            models.UniqueConstraint(fields=["inode", "layer"], name="deduplink_inode_layer"),
        ]

    def __str__(self) -> str:
        return f"{self.layer} {self.path}"
