"""The OpenAPI schema's shared parts: the one error shape, documented on every operation."""

from __future__ import annotations

from typing import Any

ERROR_COMPONENT = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error answer: a code, a message for people, and, for a request that "
    "did not validate, each field's messages.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "example": "image_not_found"},
                "message": {"type": "string", "example": "no such image: debian:13"},
                "fields": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "per field, its messages (400 only)",
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
ERROR_STATUSES = {
    "400": "the request is invalid (its message says why)",
    "401": "no credentials, or a token that is unknown or revoked",
    "403": "signed in, but not allowed to do this",
    "404": "no such object, or not one you may see",
    "405": "this method is not allowed here",
    "406": "a response format other than JSON was asked for",
    "409": "a conflict: a name in use, an object in use, a job already ended",
    "413": "the request body is too large",
    "415": "a request body of a type this endpoint does not take",
    "503": "a service layerhub needs (the broker, a registry) does not answer",
}


def document_errors(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the error shape as a component, and as the answer
    of every operation for each error status it may give."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    body = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in ("get", "put", "patch", "post", "delete"):
                continue
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_STATUSES.items():
                responses.setdefault(code, {"description": description, "content": body})
    return result
