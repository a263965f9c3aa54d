"""Forms of the jobs pages: the list's filter, and pull, push and import.

References and platforms are checked as the CLI checks them (``parse_reference``,
``parse_platform``), so a mistake is a message next to its field before any job exists.
"""

from __future__ import annotations

import re
import tarfile
from typing import Any

from django import forms
from django.conf import settings

from layerhub.accounts.forms import TeamFormMixin
from layerhub.core.humanize import human_size
from layerhub.core.permissions import CHANGE, PULL
from layerhub.engine.errors import LayerhubError
from layerhub.engine.manifest import parse_platform
from layerhub.engine.reference import parse_reference
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image
from layerhub.jobs.models import Job

PAGE_SIZES = (25, 50, 100)
_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{4,64}")


class JobFilterForm(forms.Form):
    """The jobs list's filter: kind and state (empty: any), and the page size."""

    kind = forms.ChoiceField(
        required=False, choices=[("", "any kind"), *Job.Kind.choices], label="Kind"
    )
    state = forms.ChoiceField(
        required=False, choices=[("", "any state"), *Job.State.choices], label="State"
    )

    def page_size(self, raw: str | None) -> int:
        """The page size asked for, clamped to the sizes offered."""
        try:
            wanted = int(raw or PAGE_SIZES[0])
        except ValueError:
            return PAGE_SIZES[0]
        return min(max(wanted, PAGE_SIZES[0]), PAGE_SIZES[-1])


def _reference(text: str) -> str:
    try:
        return str(parse_reference(text.strip()))
    except LayerhubError as exc:
        raise forms.ValidationError(str(exc)) from None


def _platform(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    try:
        return str(parse_platform(text))
    except LayerhubError as exc:
        raise forms.ValidationError(str(exc)) from None


class PullForm(TeamFormMixin, forms.Form):
    """``docker pull [--platform P] REFERENCE``, into a team's catalog."""

    team_action = PULL

    reference = forms.CharField(
        max_length=512,
        label="Image reference",
        help_text="As docker pull takes it: debian:bookworm, registry:5000/team/app:1, "
        "repo@sha256:…",
        widget=forms.TextInput(attrs={"placeholder": "debian:bookworm", "autofocus": True}),
    )
    platform = forms.CharField(
        max_length=64,
        required=False,
        label="Platform",
        help_text="os/arch[/variant], e.g. linux/arm64/v8; empty: linux/amd64 from a "
        "multi-platform image, any single-platform image as it is",
        widget=forms.TextInput(attrs={"placeholder": "linux/amd64"}),
    )

    def clean_reference(self) -> str:
        return _reference(self.cleaned_data["reference"])

    def clean_platform(self) -> str:
        return _platform(self.cleaned_data.get("platform") or "")


class PushForm(TeamFormMixin, forms.Form):
    """``docker push``: an image of the catalog, to its own or another reference, with a
    team's registry login."""

    team_action = CHANGE

    image = forms.CharField(
        max_length=512,
        label="Image",
        help_text="A reference, an image ID or a digest the catalog knows",
    )
    reference = forms.CharField(
        max_length=512,
        required=False,
        label="Push to",
        help_text="registry/repository:tag; empty: the image's own reference",
    )

    def clean_image(self) -> Image:
        text = self.cleaned_data["image"].strip()
        try:
            return image_lookup(text, user=self._user)
        except LayerhubError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_reference(self) -> str:
        text = (self.cleaned_data.get("reference") or "").strip()
        if not text:
            return ""
        try:
            ref = parse_reference(text)
        except LayerhubError as exc:
            raise forms.ValidationError(str(exc)) from None
        if ref.tag is None and ref.digest is None:
            raise forms.ValidationError(f"push needs a tag: {text}")
        return str(ref)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.errors or cleaned.get("reference"):
            return cleaned
        # no target: the image's own reference, which an image ID or digest is not (it would
        # read as a repository named after the ID)
        if _IMAGE_ID.fullmatch(str(self.data.get("image", "")).strip()):
            self.add_error(
                "reference",
                "the image is given by its ID: say where to push it (registry/repository:tag)",
            )
        return cleaned


class ImportForm(TeamFormMixin, forms.Form):
    """``docker load``: a ``docker save`` archive or an OCI layout, as a tar."""

    archive = forms.FileField(
        label="Archive",
        help_text="A tar written by docker save, skopeo copy docker-archive: or "
        "oci-archive:, or layerhub save",
    )
    platform = forms.CharField(
        max_length=64,
        required=False,
        label="Platform",
        help_text="Picks the image of a multi-platform OCI layout; empty: linux/amd64",
        widget=forms.TextInput(attrs={"placeholder": "linux/amd64"}),
    )

    def clean_archive(self) -> Any:
        upload = self.cleaned_data["archive"]
        path = getattr(upload, "path", None)
        if path is None:  # not written where the workers can read it: refused earlier
            raise forms.ValidationError("the upload was not received")
        try:
            is_tar = tarfile.is_tarfile(path)
        except OSError:
            is_tar = False
        if not is_tar:
            raise forms.ValidationError(
                "not a tar archive: upload what docker save (or skopeo copy to "
                "docker-archive: or oci-archive:) writes"
            )
        return upload

    def clean_platform(self) -> str:
        return _platform(self.cleaned_data.get("platform") or "")


def upload_limit_text() -> str:
    """The upload cap, as people read sizes."""
    return human_size(settings.LAYERHUB_UPLOAD_MAX_BYTES)
