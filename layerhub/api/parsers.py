"""Request bodies. DRF reads a JSON body whole through Django's ``request.body``, which refuses
one past DATA_UPLOAD_MAX_MEMORY_SIZE (a 413, see errors.py); what is left to guard here is
what Python's parser does with hostile JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class BoundedJSONParser(JSONParser):
    """JSON, refusing what Python's parser would raise on other than ValueError: nesting past
    the recursion limit (``[[[[...``), and NaN or Infinity, which JSON has not."""

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        encoding = (parser_context or {}).get("encoding") or "utf-8"
        try:
            return json.loads(stream.read().decode(encoding), parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad UTF-8 and bad JSON
            raise ParseError(f"the body is not valid JSON: {_short(exc)}") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"
