"""What a garbage collection deleted, or would: its items, the bytes, what it kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from layerhub.core.humanize import human_size

# items kept in a report stored on a job row (the count and the bytes are always exact)
MAX_STORED_ITEMS = 500


@dataclass(frozen=True)
class Garbage:
    """One thing a collection deletes (or would): what it is, its key, the bytes its removal
    frees (0 for a row) and why it goes."""

    # in the order a report lists them: image, snapshot, blob, multipart (an object store's
    # upload left pending), container, tmp, export, upload, job
    what: str
    # an image ID, digest, ChainID, s3://...?uploadId=..., container ID, path, or job number
    key: str
    size: int
    why: str

    def line(self, *, dry_run: bool) -> str:
        """The item as one line for people: ``Deleted blob sha256:… (1234 bytes): why``,
        ``Aborted multipart upload s3://…?uploadId=… (1234 bytes): why``."""
        if self.what == "multipart":
            verb, what = ("Would abort" if dry_run else "Aborted"), "multipart upload"
        else:
            verb, what = ("Would delete" if dry_run else "Deleted"), self.what
        size = f" ({self.size} bytes)" if self.what not in ("image", "job") else ""
        return f"{verb} {what} {self.key}{size}: {self.why}"


@dataclass
class GCReport:
    """What a collection deleted (a dry run: would delete), what it left because a running
    job or process holds it, and what it could not remove (a live mount in the way)."""

    dry_run: bool
    items: list[Garbage] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    # set when items were cut for storage on a job row
    item_count: int | None = None
    stored_bytes: int | None = None
    # the collection was asked to stop and did, between two items
    stopped: bool = False

    @property
    def freed_bytes(self) -> int:
        """The bytes freed (would be freed), to the byte."""
        if self.stored_bytes is not None:
            return self.stored_bytes
        return sum(item.size for item in self.items)

    @property
    def count(self) -> int:
        """How many things were (would be) deleted, even once the list is cut."""
        return len(self.items) if self.item_count is None else self.item_count

    def total_line(self) -> str:
        """Docker's last line of a prune: ``Total reclaimed space: 1.2GB``."""
        what = "reclaimable" if self.dry_run else "reclaimed"
        return f"Total {what} space: {human_size(self.freed_bytes)} ({self.freed_bytes} bytes)"

    def summary(self) -> str:
        """One line: how many things, how many bytes."""
        verb = "would delete" if self.dry_run else "deleted"
        return f"{verb} {self.count} item(s), {human_size(self.freed_bytes)}"

    def to_json(self) -> dict[str, Any]:
        """A bounded form to keep on a job row."""
        data = asdict(self)
        data["items"] = data["items"][:MAX_STORED_ITEMS]
        data["held"] = data["held"][:MAX_STORED_ITEMS]
        data["left"] = data["left"][:MAX_STORED_ITEMS]
        data["item_count"] = self.count
        data["stored_bytes"] = self.freed_bytes
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GCReport:
        """The report ``to_json`` stored."""
        return cls(
            dry_run=bool(data.get("dry_run")),
            items=[Garbage(**item) for item in data.get("items", [])],
            held=[str(key) for key in data.get("held", [])],
            left=[str(key) for key in data.get("left", [])],
            item_count=data.get("item_count"),
            stored_bytes=data.get("stored_bytes"),
            stopped=bool(data.get("stopped")),
        )
