"""Klaviyo's JSON:API error documents, and the exception handlers raise to produce one."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Final

import orjson
from starlette.responses import Response

from sendflowr.connectors.klaviyo.constants import JSON_API

# The (code, title) Klaviyo sends for each status.
_DEFAULTS: Final[dict[int, tuple[str, str]]] = {
    400: ("invalid", "Invalid input."),
    401: ("not_authenticated", "Authentication credentials were not provided."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    409: ("conflict", "Conflict."),
    413: ("payload_too_large", "Payload too large."),
    415: ("unsupported_media_type", "Unsupported media type."),
    429: ("throttled", "Request was throttled."),
    500: ("error", "A server error occurred."),
    502: ("error", "Bad gateway."),
    503: ("service_unavailable", "Service temporarily unavailable."),
    504: ("gateway_timeout", "Gateway timeout."),
}


class ApiError(Exception):
    """One JSON:API error; `parameter` or `pointer` says where the problem is."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        parameter: str | None = None,
        pointer: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        default_code, default_title = _DEFAULTS.get(status, ("error", "Error."))
        self.status = status
        self.detail = detail
        self.code = code or default_code
        self.title = title or default_title
        self.parameter = parameter
        self.pointer = pointer
        self.headers = dict(headers or {})

    def document(self) -> dict[str, object]:
        error: dict[str, object] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
        }
        if self.parameter is not None:
            error["source"] = {"parameter": self.parameter}
        elif self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        return {"errors": [error]}

    def response(self) -> Response:
        return Response(
            orjson.dumps(self.document()),
            status_code=self.status,
            media_type=JSON_API,
            headers=self.headers,
        )


def bad_parameter(parameter: str, detail: str) -> ApiError:
    return ApiError(400, detail, parameter=parameter)


def bad_body(pointer: str, detail: str) -> ApiError:
    return ApiError(400, detail, pointer=pointer)


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, f"A {kind} with id {ident!r} does not exist.")
