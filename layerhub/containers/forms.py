"""Forms of the containers pages: create, change files, run a command, commit."""

from __future__ import annotations

import shlex
from typing import Any

from django import forms
from django.core.files.uploadedfile import UploadedFile

from layerhub.accounts.forms import TeamFormMixin

# an upload goes through Django's temporary file and then into the writable layer; past this it
# is refused rather than filling the store from a browser tab
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# what the textarea edits: a text file up to this size (the viewer shows the same cap)
MAX_EDIT_BYTES = 256 * 1024


class ContainerCreateForm(TeamFormMixin, forms.Form):
    """``docker create``: an image (reference, image ID or the catalog's number), a name and
    the team the container belongs to."""

    image = forms.CharField(
        max_length=512,
        help_text="a reference (debian:bookworm), an image ID, or a digest",
    )
    name = forms.CharField(max_length=128, required=False, help_text="optional; made up if empty")

    def clean_name(self) -> str | None:
        return self.cleaned_data["name"].strip() or None


class WriteFileForm(forms.Form):
    """Create or replace a text file."""

    path = forms.CharField(max_length=4096)
    content = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false"}),
    )

    def clean_content(self) -> str:
        content: str = self.cleaned_data["content"]
        if len(content.encode()) > MAX_EDIT_BYTES:
            raise forms.ValidationError(
                f"too long for the editor (at most {MAX_EDIT_BYTES // 1024} KiB): upload it instead"
            )
        # a browser sends CRLF line ends from a textarea; files in images use LF
        return content.replace("\r\n", "\n")


class UploadForm(forms.Form):
    """Upload a file into a directory of the container."""

    directory = forms.CharField(max_length=4096)
    file = forms.FileField()
    name = forms.CharField(max_length=255, required=False, help_text="default: the file's name")

    def clean_file(self) -> UploadedFile[bytes]:
        upload: UploadedFile[bytes] = self.cleaned_data["file"]
        if (upload.size or 0) > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
            )
        return upload

    def target_path(self) -> str:
        """The absolute path the upload is written to."""
        name = self.cleaned_data["name"].strip() or (self.cleaned_data["file"].name or "upload")
        return f"{self.cleaned_data['directory'].rstrip('/')}/{name}"


class MkdirForm(forms.Form):
    """Make a directory (``mkdir -p`` with parents)."""

    path = forms.CharField(max_length=4096)
    parents = forms.BooleanField(required=False, label="make parent directories as needed")


class DeletePathForm(forms.Form):
    """Delete a path (a directory with children needs ``recursive``)."""

    path = forms.CharField(max_length=4096)
    recursive = forms.BooleanField(required=False, label="recursive (a directory and its contents)")


class ExecForm(forms.Form):
    """``docker exec``: a command line split as a shell would, without running a shell."""

    command = forms.CharField(max_length=8192, help_text="e.g. sh -c 'echo hi > /tmp/x'")
    timeout = forms.IntegerField(min_value=1, max_value=600, initial=60, help_text="seconds")
    network = forms.BooleanField(required=False, label="network (default: loopback only)")

    def clean_command(self) -> list[str]:
        try:
            argv = shlex.split(self.cleaned_data["command"])
        except ValueError as exc:
            raise forms.ValidationError(f"cannot split the command line: {exc}") from None
        if not argv:
            raise forms.ValidationError("give a command to run")
        return argv


class CommitForm(forms.Form):
    """``docker commit -m -a -c`` and the repository:tag of the new image."""

    repository = forms.CharField(
        max_length=512, required=False, label="repository:tag", help_text="e.g. team/app:2"
    )
    message = forms.CharField(max_length=1024, required=False)
    author = forms.CharField(max_length=255, required=False)
    changes = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text='one Dockerfile instruction per line: ENV A=1, CMD ["sh"], WORKDIR /app',
    )

    def clean_changes(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["changes"].splitlines() if line.strip()]

    def clean_repository(self) -> str | None:
        return self.cleaned_data["repository"].strip() or None


def first_error(form: forms.Form) -> str:
    """The form's first error as one line, for a message when the form is not re-rendered."""
    errors: dict[str, Any] = form.errors
    for field, messages in errors.items():
        label = "" if field == "__all__" else f"{field}: "
        return f"{label}{messages[0]}"
    return "invalid form"
