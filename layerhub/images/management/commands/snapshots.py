"""``python manage.py snapshots [--evict [--to SIZE]] [--dry-run]``: this host's snapshot
cache, least recently used first, and what eviction would leave and why; with ``--evict``,
evict down to LAYERHUB_SNAPSHOT_CACHE_MAX (or ``--to``), as the worker does by itself."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.utils import timezone
from django.utils.timesince import timesince

from layerhub.core.humanize import human_size
from layerhub.env import parse_size
from layerhub.hosts.models import current_host
from layerhub.images.snapshot_cache import snapshot_cache_evict, snapshot_cache_list
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = (
        "List this host's snapshot cache (least recently used first, and what eviction "
        "leaves: snapshots of containers here, of running jobs, used lately or without a "
        "blob); --evict removes the least recently used that may go until the cache is under "
        "LAYERHUB_SNAPSHOT_CACHE_MAX. An evicted layer is unpacked again from its blob when "
        "something here needs it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--evict",
            action="store_true",
            help="evict the least recently used snapshots that may go, down to the limit",
        )
        parser.add_argument(
            "--to",
            metavar="SIZE",
            help="evict down to SIZE (50G, 500MiB; 0: all that may go) instead of "
            "LAYERHUB_SNAPSHOT_CACHE_MAX",
        )
        parser.add_argument(
            "-n",
            "--dry-run",
            action="store_true",
            help="print what --evict would evict and the bytes that frees; evict nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limit = self.limit(options["to"])
        if options["evict"] or options["dry_run"] or options["to"] is not None:
            if limit is None:
                raise CommandError(
                    f"the snapshot cache of host {current_host()} has no limit "
                    "(LAYERHUB_SNAPSHOT_CACHE_MAX is 0): set one, or say how far to evict "
                    "with --to SIZE"
                )
            report = snapshot_cache_evict(limit=limit, dry_run=options["dry_run"])
            for line in report.lines():
                self.stdout.write(line)
            return
        self.listing(limit)

    def limit(self, text: str | None) -> int | None:
        """The bytes to evict down to: ``--to``, else the setting; None without either."""
        if text is None:
            return settings.LAYERHUB_SNAPSHOT_CACHE_MAX or None
        try:
            return parse_size(text)
        except ValueError:
            raise CommandError(
                f"--to {text!r} is not a size: use bytes (1073741824) or a unit (500M, 50G)"
            ) from None

    def listing(self, limit: int | None) -> None:
        now = timezone.now()
        cached = snapshot_cache_list(now=now)
        total = sum(item.size for item in cached)
        bound = f"of its {human_size(limit)}" if limit else "no limit"
        self.stdout.write(
            f"Host {current_host()}: {len(cached)} snapshot{'s' if len(cached) != 1 else ''}, "
            f"{human_size(total)} ({bound}; LAYERHUB_SNAPSHOT_CACHE_MAX)"
        )
        if not cached:
            return
        rows = [["CHAIN ID", "SIZE", "LAST USED", "EVICTION"]]
        for item in cached:
            rows.append(
                [
                    item.chain_id,
                    human_size(item.size),
                    f"{timesince(item.used_at, now).split(',')[0]} ago",
                    f"kept: {item.kept}" if item.kept else "may go",
                ]
            )
        self.stdout.write("")
        self.table(rows)
