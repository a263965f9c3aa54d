"""Forms of the images pages: the list's query, push and save."""

from __future__ import annotations

from django import forms

from layerhub.accounts.forms import TeamFormMixin
from layerhub.engine.errors import InvalidReference
from layerhub.engine.reference import parse_reference

DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100


class ImageListQuery(forms.Form):
    """What the images list was asked: search text, sort, page and page size (clamped)."""

    q = forms.CharField(required=False, max_length=200)
    sort = forms.CharField(required=False, max_length=20)
    page = forms.IntegerField(required=False, min_value=1)
    per_page = forms.IntegerField(required=False)

    def clean_per_page(self) -> int:
        value = self.cleaned_data.get("per_page")
        if value is None:
            return DEFAULT_PER_PAGE
        return max(1, min(int(value), MAX_PER_PAGE))


class PushForm(TeamFormMixin, forms.Form):
    """Where to push an image: a reference with a tag, checked as the CLI checks it, and
    the team whose registry login pushes it."""

    reference = forms.CharField(
        max_length=512,
        label="Target reference",
        help_text="registry/repository:tag, e.g. 127.0.0.1:5000/team/app:1",
    )

    def clean_reference(self) -> str:
        text = str(self.cleaned_data["reference"]).strip()
        try:
            ref = parse_reference(text)
        except InvalidReference as exc:
            raise forms.ValidationError(str(exc)) from None
        if ref.tag is None and ref.digest is None:
            raise forms.ValidationError(f"push needs a tag: {text}")
        return text


class SaveForm(forms.Form):
    """The archive format to save an image as."""

    format = forms.ChoiceField(
        choices=[("docker", "docker save archive"), ("oci", "OCI layout tar")],
        initial="docker",
    )
