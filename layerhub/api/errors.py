"""One error shape for every API answer that is not a success:

    {"error": {"code": "image_not_found", "message": "no such image: debian:13"}}

with ``"fields"`` added for a request that did not validate (each field's messages, as DRF
gives them). An error a user can cause (a LayerhubError, a refused permission, something not
found, a bad body) is a 4xx with its message; only a bug is a 500.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from layerhub.core.middleware import user_error_status
from layerhub.engine.errors import LayerhubError


class PayloadTooLarge(exceptions.APIException):
    """A request body past what the endpoint takes."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the request body is too large"
    default_code = "too_large"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(code: str, message: str, fields: Any = None) -> dict[str, Any]:
    """The JSON of an error answer."""
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def _first_message(detail: Any) -> str:
    """The first message of DRF's nested error detail, prefixed with its field's name."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _first_message(value)
            return inner if key == "non_field_errors" else f"{key}: {inner}"
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else "invalid"
    return str(detail)


def _validation_detail(exc: DjangoValidationError) -> Any:
    if hasattr(exc, "error_dict"):
        return {
            key if key != "__all__" else "non_field_errors": value
            for key, value in exc.message_dict.items()
        }
    return exc.messages


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler, answering every error in the one shape; None (a 500) only for
    what no request should be able to cause."""
    if isinstance(exc, LayerhubError):
        return Response(
            error_body(_snake(type(exc).__name__), str(exc)), status=user_error_status(exc)
        )
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(
            f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes: "
            "upload big files with multipart/form-data"
        )
    elif isinstance(exc, SuspiciousOperation):  # too many fields or files, a bad multipart
        exc = exceptions.ParseError(str(exc) or None)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_validation_detail(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("invalid", _first_message(detail), detail)
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        response.data = error_body(str(code), _first_message(exc.detail))
    return response
