"""Import images without a registry: ``docker save`` archives and OCI image layouts.

An OCI layout (a directory, or a tar of one) holds the same manifests and blobs a registry
serves, so importing it gives the very image a pull gives. A ``docker save`` archive holds the
config and uncompressed layer tars but no manifest: the import writes a Docker schema 2
manifest for them, so the image has the same image ID (config digest) and the same layers
(ChainIDs, snapshots) as when pulled, under its own manifest digest.

Every blob is verified against its digest on the way into the store; a file named in an
archive that is missing, escapes the archive, or does not match gives a clear error.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from .cancel import StopFn, never, stop_point
from .digest import chain_ids, digest_hex, sha256_bytes, validate_digest
from .errors import ArchiveError, InvalidDigest, InvalidManifest, LayerhubError
from .manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Platform,
    parse_config,
    parse_manifest,
    select_platform,
)
from .pull import blob_lock
from .reference import Reference, parse_reference
from .store import Store

REF_ANNOTATION = "org.opencontainers.image.ref.name"
# containerd's (and docker's, and layerhub's export's) full name; ref.name is often a bare tag
CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class ImportedImage:
    """An image whose blobs are now all in the store, and the names it came with."""

    manifest_digest: str
    manifest: ImageManifest
    manifest_bytes: bytes
    index_digest: str | None
    config_digest: str
    config: ImageConfig
    references: tuple[Reference, ...]


MAX_LINK_HOPS = 40  # the kernel's limit before ELOOP


class _Source:
    """Files of an archive: a directory or a tar (read by member name).

    A symbolic link inside the archive (``docker save`` links a layer stored twice) is
    followed only within it: one that points outside the archive, at something the archive
    does not hold, or in a loop is refused with ArchiveError, whether it is the file itself
    or any directory above it (``blobs/`` pointing elsewhere). A directory source is then
    opened component by component without following links, so a link swapped in meanwhile
    is refused rather than followed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._links: dict[str, str] = {}
        if path.is_dir():
            return
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(
                f"{path.name}: not a docker save archive or an OCI layout "
                "(neither a tar file nor a directory)"
            ) from exc
        for member in self._tar.getmembers():
            name = posixpath.normpath(member.name.lstrip("./") or ".")
            # a later entry of the same name replaces an earlier one, as when extracting
            self._members.pop(name, None)
            self._links.pop(name, None)
            if member.issym():
                self._links[name] = member.linkname
            elif member.isreg() or member.islnk():
                self._members[name] = member

    def _clean(self, name: str) -> str:
        clean = posixpath.normpath(name.lstrip("/"))
        if clean.startswith("..") or posixpath.isabs(name):
            raise ArchiveError(f"archive names a path outside itself: {name!r}")
        return clean

    def _link(self, name: str) -> str | None:
        """The target of ``name`` if it is a symbolic link in the archive."""
        if self._tar is not None:
            return self._links.get(name)
        path = self.path / name
        return os.readlink(path) if path.is_symlink() else None

    def _resolve(self, name: str) -> str:
        """``name`` with every symbolic link on its way replaced by its target, all inside
        the archive; ArchiveError for a link that leaves it."""
        clean = self._clean(name)
        todo = [] if clean == "." else clean.split("/")
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            here = "/".join([*done, part])
            target = self._link(here)
            if target is None:
                done.append(part)
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise ArchiveError(f"{name!r}: too many levels of symbolic links in the archive")
            joined = posixpath.normpath(posixpath.join("/".join(done), target))
            if posixpath.isabs(target) or joined == ".." or joined.startswith("../"):
                raise ArchiveError(
                    f"{here!r} in the archive is a symbolic link to {target!r}, outside the"
                    " archive: refused"
                )
            todo = ([] if joined == "." else joined.split("/")) + todo
            done = []
        return "/".join(done) or "."

    def exists(self, name: str) -> bool:
        try:
            clean = self._resolve(name)
        except ArchiveError:
            return False
        if self._tar is None:
            return (self.path / clean).is_file()
        return clean in self._members

    def _open_file(self, clean: str, name: str) -> IO[bytes]:
        """Open ``clean`` below the directory, never following a symbolic link."""
        parts = clean.split("/")
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    next_fd = os.open(
                        part,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=fd,
                    )
                except (NotADirectoryError, FileNotFoundError):
                    raise ArchiveError(f"archive has no file {name!r}") from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise ArchiveError(f"{name!r}: a symbolic link in its path") from None
                    raise
                os.close(fd)
                fd = next_fd
            try:
                file_fd = os.open(
                    parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd
                )
            except FileNotFoundError:
                raise ArchiveError(f"archive has no file {name!r}") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ArchiveError(f"{name!r} is a symbolic link") from None
                raise
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            os.close(file_fd)
            raise ArchiveError(f"archive entry {name!r} is not a regular file")
        os.set_blocking(file_fd, True)
        return os.fdopen(file_fd, "rb")

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        clean = self._resolve(name)
        if self._tar is None:
            with self._open_file(clean, name) as f:
                yield f
            return
        member = self._members.get(clean)
        if member is None:
            raise ArchiveError(f"archive has no file {name!r}")
        member_file = self._tar.extractfile(member)
        if member_file is None:
            raise ArchiveError(f"archive entry {name!r} is not a file")
        with member_file:
            yield member_file

    def read(self, name: str, limit: int = 16 * 2**20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"{name!r} is too large for a manifest or config")
        return data

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None


LeaseFn = Callable[[Sequence[str]], None]
KnownLayerFn = Callable[[str], Descriptor | None]


def _no_lease(keys: Sequence[str]) -> None:
    pass


class _Intake:
    """Blobs going into the store for one import: each leased before the store is asked
    whether it has it (under the blob's lock), and each this import added remembered, so a
    failed import can take back what nothing references."""

    def __init__(self, store: Store, lease: LeaseFn, should_stop: StopFn = never) -> None:
        self.store = store
        self.lease = lease
        self.should_stop = should_stop
        self.added: list[str] = []

    def ingest(self, source: _Source, name: str, digest: str, size: int | None) -> None:
        stop_point(self.should_stop, "import")
        self.lease([digest])
        with blob_lock(self.store, digest):
            if self.store.blobs.has(digest):
                return
            with source.open(name) as f:
                stopping = _Stopping(f, self.should_stop)
                self.store.blobs.ingest(cast(BinaryIO, stopping), digest, size)
            self.added.append(digest)

    def put(self, data: bytes, digest: str | None = None) -> str:
        stop_point(self.should_stop, "import")
        digest = digest or sha256_bytes(data)
        self.lease([digest])
        with blob_lock(self.store, digest):
            if not self.store.blobs.has(digest):
                self.store.blobs.put_bytes(data, digest)
                self.added.append(digest)
        return digest

    def reuse(self, candidate: Descriptor) -> bool:
        """Lease ``candidate`` and say whether the store (still) holds it."""
        self.lease([candidate.digest])
        with blob_lock(self.store, candidate.digest):
            return self.store.blobs.has(candidate.digest)

    def take_back(
        self,
        in_use: Callable[[str], bool],
        guard: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        """Delete the blobs this import added, but what another job now holds (each judged
        and deleted under its lock and ``guard``)."""
        for digest in reversed(self.added):
            with blob_lock(self.store, digest), guard():
                if not in_use(digest):
                    self.store.blobs.delete(digest)


class _Stopping:
    """A file read chunk by chunk that asks ``should_stop`` before each chunk (a cancelled
    import stops at its next chunk; the blob writer it feeds discards what it had)."""

    def __init__(self, f: IO[bytes], should_stop: StopFn) -> None:
        self._f = f
        self._should_stop = should_stop

    def read(self, n: int = -1, /) -> bytes:
        stop_point(self._should_stop, "import")
        return self._f.read(n)


def _oci_blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest_hex(digest)}"


def _import_oci(source: _Source, intake: _Intake, platform: Platform) -> list[ImportedImage]:
    index = _json(source.read("index.json"), "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ArchiveError("index.json has no manifests list")
    images: list[ImportedImage] = []
    for entry in index["manifests"]:
        try:
            desc = Descriptor(
                entry.get("mediaType", ""), validate_digest(entry["digest"]), int(entry["size"])
            )
        except (KeyError, TypeError, ValueError, InvalidDigest) as exc:
            raise ArchiveError(f"index.json has a malformed entry: {exc}") from None
        refs: tuple[Reference, ...] = ()
        annotations = entry.get("annotations") or {}
        name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_ANNOTATION)
        if name and ("/" in name or ":" in name or "@" in name):
            refs = (parse_reference(name),)
        images.append(_import_oci_manifest(source, intake, desc, platform, refs))
    return images


def _import_oci_manifest(
    source: _Source,
    intake: _Intake,
    desc: Descriptor,
    platform: Platform,
    refs: tuple[Reference, ...],
) -> ImportedImage:
    data = source.read(_oci_blob_name(desc.digest))
    if sha256_bytes(data) != desc.digest:
        raise ArchiveError(f"manifest {desc.digest} does not match its digest")
    parsed = parse_manifest(data, desc.media_type)
    index_digest = None
    if isinstance(parsed, Index):
        intake.put(data, desc.digest)
        index_digest = desc.digest
        chosen = select_platform(parsed, platform)
        data = source.read(_oci_blob_name(chosen.digest))
        if sha256_bytes(data) != chosen.digest:
            raise ArchiveError(f"manifest {chosen.digest} does not match its digest")
        parsed = parse_manifest(data, chosen.media_type)
        desc = chosen
        if not isinstance(parsed, ImageManifest):
            raise InvalidManifest(f"index entry {chosen.digest} is not an image manifest")
    config_desc = parsed.config
    intake.ingest(source, _oci_blob_name(config_desc.digest), config_desc.digest, config_desc.size)
    config = parse_config(intake.store.blobs.read_bytes(parsed.config.digest))
    if len(config.diff_ids) != len(parsed.layers):
        raise InvalidManifest("manifest and config disagree on the number of layers")
    intake.lease(chain_ids(config.diff_ids))  # the snapshots its unpack will look for
    for blob in parsed.layers:
        intake.ingest(source, _oci_blob_name(blob.digest), blob.digest, blob.size)
    intake.put(data, desc.digest)
    return ImportedImage(
        desc.digest, parsed, data, index_digest, parsed.config.digest, config, refs
    )


def _import_docker(
    source: _Source, intake: _Intake, known_layer: KnownLayerFn | None
) -> list[ImportedImage]:
    manifest = _json(source.read("manifest.json"), "manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ArchiveError("manifest.json lists no images")
    images: list[ImportedImage] = []
    for i, item in enumerate(manifest):
        if not isinstance(item, dict) or not isinstance(item.get("Layers"), list):
            raise ArchiveError(f"manifest.json entry {i} has no Layers list")
        config_name = str(item.get("Config", ""))
        config_bytes = source.read(config_name)
        config_digest = sha256_bytes(config_bytes)
        config = parse_config(config_bytes)
        if len(config.diff_ids) != len(item["Layers"]):
            raise ArchiveError(
                f"{config_name}: {len(config.diff_ids)} DiffIDs for {len(item['Layers'])} layers"
            )
        intake.put(config_bytes, config_digest)
        intake.lease(chain_ids(config.diff_ids))  # the snapshots its unpack will look for
        layers = []
        for name, diff_id in zip(item["Layers"], config.diff_ids, strict=True):
            # A layer the store holds already (pulled, compressed) is named as it is: the
            # DiffID in the config says which layer this is, whatever form it is kept in.
            # Storing the archive's uncompressed copy too would keep it twice, and nothing
            # would ever delete the copy.
            candidate = known_layer(diff_id) if known_layer is not None else None
            if candidate is not None and intake.reuse(candidate):
                layers.append(candidate)
                continue
            # docker save keeps layers uncompressed: the blob is the tar, its digest the DiffID
            intake.ingest(source, str(name), diff_id, None)
            layers.append(Descriptor(DOCKER_LAYER, diff_id, intake.store.blobs.size(diff_id)))
        config_desc = Descriptor(DOCKER_CONFIG, config_digest, len(config_bytes))
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        data = json.dumps(doc, indent=3).encode()
        digest = intake.put(data)
        refs = tuple(parse_reference(str(tag)) for tag in item.get("RepoTags") or [])
        image_manifest = ImageManifest(DOCKER_MANIFEST, config_desc, tuple(layers))
        images.append(
            ImportedImage(digest, image_manifest, data, None, config_digest, config, refs)
        )
    return images


def import_archive(
    path: Path,
    store: Store,
    *,
    platform: Platform | None = None,
    known_layer: KnownLayerFn | None = None,
    lease: LeaseFn = _no_lease,
    in_use: Callable[[str], bool] | None = None,
    delete_guard: Callable[[], AbstractContextManager[None]] = nullcontext,
    should_stop: StopFn = never,
) -> list[ImportedImage]:
    """Import every image of a ``docker save`` archive or an OCI layout (directory or tar).

    ``known_layer(diff_id)`` may name a blob the store already holds for a layer (a pulled,
    compressed one): a ``docker save`` layer with that DiffID is then not stored again.
    ``lease`` is called with each digest and ChainID before the store is asked whether it
    holds it (see pull.py). When the import fails, the blobs it added are deleted again,
    except those ``in_use`` says another job now holds, each judged and deleted under
    ``delete_guard`` (blobs shared by several hosts: see layerhub.images.leases).
    ``should_stop`` is asked at every chunk: True raises Cancelled, and the import is taken
    back as for a failure.
    """
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"{path}: no such file or directory")
    source = _Source(path)
    intake = _Intake(store, lease, should_stop)
    try:
        if source.exists("manifest.json"):
            return _import_docker(source, intake, known_layer)
        if source.exists("index.json") and source.exists("oci-layout"):
            return _import_oci(source, intake, platform or Platform())
        raise ArchiveError(
            f"{path.name} is neither a docker save archive (manifest.json) "
            "nor an OCI image layout (oci-layout, index.json)"
        )
    except BaseException as exc:
        intake.take_back(in_use or (lambda digest: False), delete_guard)
        if isinstance(exc, (tarfile.TarError, OSError)) and not isinstance(exc, LayerhubError):
            raise ArchiveError(f"{path.name}: cannot read the archive: {exc}") from None
        raise
    finally:
        source.close()
