"""``python manage.py df [-v]``: the store's disk use, as ``docker system df [-v]`` shows it.

Images' sizes come from the database (recorded when blobs and snapshots are written);
containers' writable layers and ``tmp/`` are measured now (they change with every write).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.timesince import timesince

from layerhub.containers.models import Container
from layerhub.core.humanize import human_size
from layerhub.engine.reference import Reference
from layerhub.hosts.models import Host
from layerhub.images.models import Image, Tag
from layerhub.images.selectors import image_display_name
from layerhub.images.sizes import images_delete_plan, images_with_sizes, store_totals
from layerhub.images.usage import container_layer_bytes, tmp_entries
from layerhub.jobs.cli import LayerhubCommand


def _percent(part: int, whole: int) -> str:
    return f"{human_size(part)} ({round(100 * part / whole) if whole else 0}%)"


def _ago(when: Any, now: Any) -> str:
    return f"{timesince(when, now).split(',')[0]} ago" if when else "N/A"


class Command(LayerhubCommand):
    help = "Show the store's disk use: images, containers and temporary files (-v: per item)."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # ``-v`` means verbose here, as in ``docker system df -v``; Django's verbosity keeps
        # its long name
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-v", "--verbose", action="store_true", dest="detail", help="per image and container"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        totals = store_totals()
        containers = list(Container.objects.select_related("image").order_by("-created_at", "-pk"))
        layer_bytes = {c.pk: container_layer_bytes(c.container_id) for c in containers}
        in_use = {c.image_id for c in containers}
        # what deleting every image no container stands on would free, to the byte
        idle = images_delete_plan(Image.objects.exclude(pk__in=in_use))
        running = [c for c in containers if c.state == Container.State.RUNNING]
        idle_layers = sum(layer_bytes[c.pk] for c in containers if c not in running)
        tmp = tmp_entries()
        tmp_live = [e for e in tmp if e.live]
        self.table(
            [
                ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
                [
                    "Images",
                    str(totals.images),
                    str(len(in_use)),
                    human_size(totals.physical_bytes),
                    _percent(idle.frees_bytes, totals.physical_bytes),
                ],
                [
                    "Containers",
                    str(len(containers)),
                    str(len(running)),
                    human_size(sum(layer_bytes.values())),
                    _percent(idle_layers, sum(layer_bytes.values())),
                ],
                [
                    "Temporary files",
                    str(len(tmp)),
                    str(len(tmp_live)),
                    human_size(sum(e.size for e in tmp)),
                    _percent(sum(e.size for e in tmp if not e.live), sum(e.size for e in tmp)),
                ],
            ]
        )
        if totals.dedup_bytes:
            # SIZE above is physical: a file dedup linked into several layers counts once
            self.stdout.write(
                f"\nIdentical files of different layers stored once (dedup): "
                f"{human_size(totals.dedup_bytes)} saved"
            )
        hosts = list(Host.objects.order_by("name"))
        if len(hosts) > 1:
            # each host's snapshot cache, and what deleting the idle images frees there
            self.stdout.write("")
            rows = [["HOST", "SNAPSHOTS", "SIZE", "LIMIT", "RECLAIMABLE"]]
            for host in hosts:
                reclaimable = idle.host_snapshots.get(host.name, 0)
                rows.append(
                    [
                        host.name + ("" if host.available else " (unavailable)"),
                        str(host.snapshot_count),
                        human_size(host.snapshot_bytes),
                        human_size(host.snapshot_cache_max) if host.snapshot_cache_max else "none",
                        _percent(reclaimable, host.snapshot_bytes),
                    ]
                )
            self.table(rows)
        if options["detail"]:
            self.images_detail()
            self.containers_detail(containers, layer_bytes)

    def images_detail(self) -> None:
        now = timezone.now()
        users = (
            Container.objects.filter(image=OuterRef("pk"))
            .values("image")
            .annotate(n=Count("pk"))
            .values("n")
        )
        images = images_with_sizes(
            Image.objects.annotate(
                container_count=Coalesce(Subquery(users, output_field=IntegerField()), Value(0))
            )
        ).prefetch_related(
            "repositories",
            Prefetch("tags", queryset=Tag.objects.select_related("repository").order_by("pk")),
        )
        rows = [
            [
                "REPOSITORY",
                "TAG",
                "IMAGE ID",
                "CREATED",
                "SIZE",
                "SHARED SIZE",
                "UNIQUE SIZE",
                "CONTAINERS",
            ]
        ]
        image: Any  # annotated by images_with_sizes and above
        for image in images:
            names = [
                (Reference(t.repository.registry, t.repository.name, None, None).familiar, t.name)
                for t in image.tags.all()
            ] or [
                (Reference(r.registry, r.name, None, None).familiar, "<none>")
                for r in image.repositories.all()
            ]
            size = human_size(image.size)
            if image.pending_layers:
                size += f" ({image.pending_layers} layer(s) not unpacked)"
            for repository, tag in names or [("<none>", "<none>")]:
                rows.append(
                    [
                        repository,
                        tag,
                        image.image_id,
                        _ago(image.created, now),
                        size,
                        human_size(image.shared_size),
                        human_size(image.unique_size),
                        str(image.container_count),
                    ]
                )
        self.stdout.write("\nImages space usage:\n")
        self.table(rows)

    def containers_detail(self, containers: list[Container], layer_bytes: dict[int, int]) -> None:
        now = timezone.now()
        rows = [["CONTAINER ID", "IMAGE", "COMMAND", "SIZE", "CREATED", "STATUS", "NAMES"]]
        for c in containers:
            command = " ".join(c.last_command)
            status = c.state if c.last_exit_code is None else f"exited ({c.last_exit_code})"
            rows.append(
                [
                    c.short_id,
                    image_display_name(c.image),
                    f'"{command[:20]}"' if command else '""',
                    human_size(layer_bytes[c.pk]),
                    _ago(c.created_at, now),
                    status,
                    c.name,
                ]
            )
        self.stdout.write("\nContainers space usage:\n")
        self.table(rows)
