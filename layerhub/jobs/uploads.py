"""Archives uploaded for import: streamed straight to LAYERHUB_UPLOAD_DIR, capped in size.

Django would first spool an upload into the system's temporary directory and then hand it
over; this handler writes each chunk to its final file as it arrives and stops taking the
body once it passes LAYERHUB_UPLOAD_MAX_BYTES, so a huge upload never fills a disk.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers, StopUpload
from django.http import HttpRequest


class StoredUpload(UploadedFile):  # type: ignore[type-arg]
    """An uploaded archive already in its file under the upload directory (``path``)."""

    def __init__(self, path: Path, name: str, size: int) -> None:
        super().__init__(file=None, name=name, size=size)
        self.path = path

    def discard(self) -> None:
        """Delete the file (the form was refused, or no job took it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ArchiveUploadHandler(FileUploadHandler):
    """Writes the uploaded file to ``directory/<random>.tar``; past ``limit`` bytes it
    deletes what it wrote and stops reading (``too_big`` then says so)."""

    def __init__(self, request: HttpRequest, directory: Path, limit: int) -> None:
        super().__init__(request)
        self.directory = Path(directory)
        self.limit = limit
        self.too_big = False
        self.path: Path | None = None
        self._file: Any = None
        self._size = 0

    def new_file(self, field_name: str, file_name: str, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.directory / f"{uuid.uuid4().hex}.tar"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "wb")
        self._size = 0
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._size += len(raw_data)
        if self._size > self.limit:
            self.too_big = True
            self._abandon()
            raise StopUpload(connection_reset=False)
        self._file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> StoredUpload | None:
        if self._file is None or self.path is None:
            return None
        self._file.close()
        self._file = None
        return StoredUpload(self.path, self.file_name or "archive.tar", self._size)

    def upload_interrupted(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
