"""Filters of the API's lists. Every filter that matches names (tags, repositories) matches
only those the user sees, so a filter never tells whether another team's private name exists."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import django_filters
from django import forms
from django.db.models import CharField, Exists, OuterRef, Q, QuerySet, TextField, Value
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Concat
from django.db.models.lookups import IContains
from rest_framework.exceptions import ValidationError

from layerhub.accounts.models import AuditEntry, Token
from layerhub.containers.models import Container
from layerhub.core.permissions import VIEW, restrict, teams_for
from layerhub.engine.errors import InvalidReference
from layerhub.engine.reference import parse_reference
from layerhub.images.models import Image, ImageLayer, RegistryCredential, Repository, Tag
from layerhub.jobs.models import Job

_HEX = re.compile(r"(?:sha256:)?([a-f0-9]{6,64})")


class IdFilter(django_filters.NumberFilter):
    """An object's id: a whole number a database column holds (not a decimal, not 1e150)."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


def _user(filterset: django_filters.FilterSet) -> Any:
    return getattr(filterset.request, "user", None)


def _repository_name(text: str) -> tuple[str, str]:
    """``(registry, repository)`` of ``debian`` or ``127.0.0.1:5000/team/app``."""
    try:
        ref = parse_reference(text)
    except InvalidReference as exc:
        raise ValidationError({"repository": str(exc)}) from None
    return ref.registry, ref.repository


def labels_of(field: str = "config") -> KeyTransform:
    """The image config's ``Labels`` object (in the catalog's summary)."""
    return KeyTransform("Labels", KeyTransform("config", field))


class ImageOrdering(django_filters.OrderingFilter):
    """Sort by a size column or a date; ties broken by newest first."""

    def filter(self, qs: QuerySet[Any], value: Any) -> QuerySet[Any]:
        qs = super().filter(qs, value)
        if value:
            return qs.order_by(*qs.query.order_by, "-pk")
        return qs


class ImageFilter(django_filters.FilterSet):
    """``docker images`` filters: repository, tag, reference, layer, label, a search."""

    repository = django_filters.CharFilter(
        method="filter_repository", help_text="debian, or 127.0.0.1:5000/team/app"
    )
    tag = django_filters.CharFilter(method="filter_tag", help_text="a tag name: bookworm")
    reference = django_filters.CharFilter(
        method="filter_reference", help_text="debian:bookworm, or repository@sha256:..."
    )
    layer = django_filters.CharFilter(
        method="filter_layer",
        help_text="a layer's digest, DiffID or ChainID (sha256:..., or 6+ hex digits of it)",
    )
    label = django_filters.CharFilter(
        method="filter_label", help_text="a label's key, or key=value"
    )
    team = django_filters.CharFilter(method="filter_team", help_text="images named in this team")
    q = django_filters.CharFilter(
        method="filter_search", help_text="part of a reference, or the start of an image ID"
    )
    ordering = ImageOrdering(
        fields=(
            ("size", "size"),
            ("shared_size", "shared_size"),
            ("unique_size", "unique_size"),
            ("download_size", "download_size"),
            ("layer_count", "layer_count"),
            ("created", "created"),
            ("added_at", "added_at"),
        ),
        help_text="a size column or date; '-' first for descending (default: -added_at)",
    )

    class Meta:
        model = Image
        fields: list[str] = []

    def _visible_tags(self) -> QuerySet[Tag]:
        return restrict(Tag.objects.all(), _user(self), VIEW)

    def _named(self, tags: QuerySet[Tag], repositories: QuerySet[Repository]) -> Q:
        """Images a visible tag among ``tags`` or visible repository among ``repositories``
        names."""
        visible_repositories = restrict(Repository.objects.all(), _user(self), VIEW)
        through = Image.repositories.through.objects.filter(
            image_id=OuterRef("pk"), repository__in=repositories & visible_repositories
        )
        return Exists(tags.filter(image_id=OuterRef("pk"))) | Exists(through)

    def filter_repository(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        registry, repository = _repository_name(value)
        tags = self._visible_tags().filter(
            repository__registry=registry, repository__name=repository
        )
        repositories = Repository.objects.filter(registry=registry, name=repository)
        return qs.filter(self._named(tags, repositories))

    def filter_tag(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        return qs.filter(Exists(self._visible_tags().filter(image_id=OuterRef("pk"), name=value)))

    def filter_reference(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        try:
            ref = parse_reference(value)
        except InvalidReference as exc:
            raise ValidationError({"reference": str(exc)}) from None
        if ref.digest:
            repositories = Repository.objects.filter(registry=ref.registry, name=ref.repository)
            return qs.filter(
                self._named(Tag.objects.none(), repositories), manifest_digest=ref.digest
            )
        tags = self._visible_tags().filter(
            repository__registry=ref.registry, repository__name=ref.repository, name=ref.tag
        )
        return qs.filter(Exists(tags.filter(image_id=OuterRef("pk"))))

    def filter_layer(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        match = _HEX.fullmatch(value.strip().lower())
        if match is None:
            raise ValidationError({"layer": "give a digest: sha256:<hex>, or 6 to 64 hex digits"})
        return qs.filter(_layer_prefix(f"sha256:{match.group(1)}"))

    def filter_label(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        key, has_value, wanted = value.partition("=")
        key = key.strip()
        if not key:
            raise ValidationError({"label": "give a label's key, or key=value"})
        # as text: compared as JSON, a value would have to be valid JSON itself
        text = Cast(KeyTextTransform(key, labels_of()), output_field=TextField())
        if has_value:
            return qs.alias(label_value=text).filter(label_value=wanted)
        return qs.alias(label_value=text).filter(label_value__isnull=False)

    def filter_team(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        # only a team the user sees: which team brought an image in is no one else's business
        if not teams_for(_user(self), VIEW).filter(name=value).exists():
            return qs.none()
        repositories = Repository.objects.filter(team__name=value)
        tags = self._visible_tags().filter(repository__team__name=value)
        return qs.filter(self._named(tags, repositories) | Q(team__name=value))

    def filter_search(self, qs: QuerySet[Image], name: str, value: str) -> QuerySet[Image]:
        return qs.filter(search_condition(value, _user(self)))


def _layer_prefix(prefix: str) -> Exists:
    """Whether one of the outer image's layers has a digest, DiffID or ChainID starting
    with ``prefix``."""
    return Exists(
        ImageLayer.objects.filter(image_id=OuterRef("pk")).filter(
            Q(layer__digest__startswith=prefix)
            | Q(layer__diff_id__startswith=prefix)
            | Q(layer__chain_id__startswith=prefix)
        )
    )


def search_condition(text: str, user: Any) -> Q:
    """Images one of whose visible references (``registry/repository:tag``) contains
    ``text``, one of whose labels (key or value) contains it, or, for hex text, whose image
    ID, manifest digest or a layer's digest starts with it."""
    text = text.strip()
    if not text:
        return Q()
    references = (
        restrict(Tag.objects.all(), user, VIEW)
        .filter(image_id=OuterRef("pk"))
        .annotate(
            reference=Concat(
                "repository__registry",
                Value("/"),
                "repository__name",
                Value(":"),
                "name",
                output_field=CharField(),
            )
        )
        .filter(reference__icontains=text)
    )
    condition = Q(Exists(references)) | Q(IContains(Cast(labels_of(), TextField()), text))
    match = _HEX.fullmatch(text.lower())
    if match:
        prefix = f"sha256:{match.group(1)}"
        condition |= Q(config_digest__startswith=prefix) | Q(manifest_digest__startswith=prefix)
        condition |= Q(_layer_prefix(prefix))
    return condition


class RepositoryFilter(django_filters.FilterSet):
    """Repositories by team, registry, name, visibility."""

    team = django_filters.CharFilter(field_name="team__name")
    registry = django_filters.CharFilter()
    name = django_filters.CharFilter(lookup_expr="icontains")
    public = django_filters.BooleanFilter()

    class Meta:
        model = Repository
        fields: list[str] = []


class TagFilter(django_filters.FilterSet):
    """Tags by repository (its id), image (its id), name, team."""

    repository = IdFilter(field_name="repository_id")
    image = IdFilter(field_name="image_id")
    name = django_filters.CharFilter()
    team = django_filters.CharFilter(field_name="repository__team__name")

    class Meta:
        model = Tag
        fields: list[str] = []


class ContainerFilter(django_filters.FilterSet):
    """Containers by team, image (its id), state."""

    team = django_filters.CharFilter(field_name="team__name")
    image = IdFilter(field_name="image_id")
    state = django_filters.ChoiceFilter(choices=Container.State.choices)

    class Meta:
        model = Container
        fields: list[str] = []


class JobFilter(django_filters.FilterSet):
    """Jobs by kind, state, team, image (its id)."""

    kind = django_filters.ChoiceFilter(choices=Job.Kind.choices)
    state = django_filters.ChoiceFilter(choices=Job.State.choices)
    team = django_filters.CharFilter(field_name="team__name")
    image = IdFilter(field_name="image_id")

    class Meta:
        model = Job
        fields: list[str] = []


class RegistryLoginFilter(django_filters.FilterSet):
    """Registry logins by team and host."""

    team = django_filters.CharFilter(field_name="team__name")
    host = django_filters.CharFilter()

    class Meta:
        model = RegistryCredential
        fields: list[str] = []


class TokenFilter(django_filters.FilterSet):
    """Tokens by kind, team, and whether revoked."""

    kind = django_filters.ChoiceFilter(choices=Token.Kind.choices)
    team = django_filters.CharFilter(field_name="team__name")
    revoked = django_filters.BooleanFilter(
        field_name="revoked_at", lookup_expr="isnull", exclude=True
    )

    class Meta:
        model = Token
        fields: list[str] = []


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time compared in UTC: an offset the database cannot take (PostgreSQL
    refuses displacements past 15:59, and ISO 8601 allows up to 23:59) never reaches it, and a
    time that UTC cannot hold (the year 1 at +05:00) is a 400."""

    def filter(self, qs: Any, value: Any) -> Any:
        if value is not None:
            try:
                value = value.astimezone(UTC)
            except (OverflowError, ValueError):
                raise ValidationError({self.field_name: "a time out of range"}) from None
        return super().filter(qs, value)


class AuditFilter(django_filters.FilterSet):
    """The audit log by team, action (``image.pull``, or ``image`` for every image action),
    actor, and time."""

    team = django_filters.CharFilter(field_name="team__name")
    action = django_filters.CharFilter(method="filter_action")
    actor = django_filters.CharFilter(field_name="actor_name")
    since = UtcDateTimeFilter(field_name="at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="at", lookup_expr="lt")

    class Meta:
        model = AuditEntry
        fields: list[str] = []

    def filter_action(
        self, qs: QuerySet[AuditEntry], name: str, value: str
    ) -> QuerySet[AuditEntry]:
        if "." in value:
            return qs.filter(action=value)
        return qs.filter(action__startswith=f"{value}.")
