"""Jobs: state, per-layer progress, outcome, and the jobs they started."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from layerhub.accounts.models import Team
from layerhub.api.serializers.common import api_url
from layerhub.jobs.models import Job
from layerhub.jobs.selectors import export_file, layer_lines, progress_bytes


class ProgressSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One layer's progress, as ``docker pull`` prints it."""

    digest = serializers.CharField()
    status = serializers.CharField()
    current = serializers.IntegerField(help_text="bytes done")
    total = serializers.IntegerField(help_text="bytes in all (0: not known yet)")
    percent = serializers.IntegerField()
    done = serializers.BooleanField()
    text = serializers.CharField(help_text="the CLI's line for this layer")


class JobBriefSerializer(serializers.ModelSerializer[Job]):
    """A job in a list: what, its state and its outcome."""

    url = serializers.SerializerMethodField()
    team: serializers.SlugRelatedField[Team] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True
    )
    created_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    bytes_done = serializers.SerializerMethodField()
    bytes_total = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "url",
            "kind",
            "state",
            "reference",
            "team",
            "created_by",
            "image",
            "parent",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "attempts",
            "bytes_done",
            "bytes_total",
        ]
        read_only_fields = fields

    def get_url(self, job: Job) -> str:
        return api_url(self.context, "job-detail", job.pk)

    def get_bytes_done(self, job: Job) -> int:
        return progress_bytes(job).done

    def get_bytes_total(self, job: Job) -> int:
        return progress_bytes(job).total


class JobSerializer(JobBriefSerializer):
    """A job: its per-layer progress, the jobs it started (an unpack after a pull), and
    where to download the archive a save wrote."""

    progress = serializers.SerializerMethodField()
    children = serializers.SerializerMethodField()
    download_url = serializers.SerializerMethodField()

    class Meta(JobBriefSerializer.Meta):
        fields = [*JobBriefSerializer.Meta.fields, "progress", "children", "download_url"]
        read_only_fields = fields

    @extend_schema_field(ProgressSerializer(many=True))
    def get_progress(self, job: Job) -> list[dict[str, Any]]:
        return [
            {
                "digest": line.digest,
                "status": line.status,
                "current": line.current,
                "total": line.total,
                "percent": line.percent,
                "done": line.done,
                "text": line.text,
            }
            for line in layer_lines(job)
        ]

    @extend_schema_field(JobBriefSerializer(many=True))
    def get_children(self, job: Job) -> Any:
        children = job.children.order_by("id")
        return JobBriefSerializer(children, many=True, context=self.context).data

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_download_url(self, job: Job) -> str | None:
        if export_file(job) is None:
            return None
        return api_url(self.context, "job-download", job.pk)
