"""``python manage.py files PATTERN`` or ``files --sha256 HEX``: which images contain a file."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.humanize import human_size
from layerhub.engine.digest import short_id
from layerhub.engine.errors import LayerhubError
from layerhub.engine.file_index import CONTENT_KINDS
from layerhub.images.file_search import file_query, file_search
from layerhub.images.models import Image
from layerhub.jobs.cli import LayerhubCommand

TYPES = {"f": "file", "d": "dir", "l": "symlink", "h": "hardlink", "c": "char", "b": "block"}


class Command(LayerhubCommand):
    acts_for_team = True
    help = (
        "Which images contain a file, in each image's final view, and the layer that provides "
        "it: PATTERN is a path (/etc/os-release), a prefix ending in / (/usr/lib/), or a glob "
        "(*/libssl.so.3, usr/lib/*/libcrypto*; without /, a name anywhere); or --sha256 HEX "
        "finds a content. The newest images first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pattern", nargs="?", help="a path, a prefix or a glob")
        parser.add_argument("--sha256", metavar="HEX", help="a content hash ('sha256:' optional)")
        parser.add_argument(
            "--limit", type=int, default=200, help="print at most this many rows (200)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = self.acting_user(options)
        limit = options["limit"]
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        try:
            query = file_query(pattern=options["pattern"], sha256=options["sha256"])
            result = file_search(user=user, query=query, limit=limit)
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        untagged = Image.objects.in_bulk(
            [m.image_id for m in result.matches if not result.names.get(m.image_id)]
        )
        table = [["IMAGE", "PATH", "TYPE", "SIZE", "LAYER"]]
        for m in result.matches:
            names = result.names.get(m.image_id) or [untagged[m.image_id].image_id]
            path = m.path + (f" -> {m.link}" if m.kind == "l" else "")
            size = human_size(m.size) if m.kind in CONTENT_KINDS else ""
            layer = f"{short_id(result.layer_digests.get(m.layer_id, ''))} ({m.layer_position + 1})"
            table.append([names[0], path, TYPES.get(m.kind, m.kind), size, layer])
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            self.stdout.write(
                "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
        if result.truncated:
            self.stderr.write(f"(the first {limit} rows: narrow the search, or raise --limit)")
        elif not result.matches:
            self.stderr.write(f"no image you can see has {query.describe()}")
