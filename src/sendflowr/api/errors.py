"""Every error becomes a JSON response here, and only here.

Bad input is a 4xx naming the field and the reason; an infrastructure fault is a 503 with
Retry-After; nothing ever shows a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from sendflowr.errors import SendFlowrError, UnavailableError
from sendflowr.storage.events.base import EventStoreError

log = logging.getLogger("sendflowr.api")


def _clean(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {
            "loc": list(err.get("loc", [])),
            "msg": str(err.get("msg", "")),
            "type": err.get("type", ""),
        }
        item["msg"] = item["msg"].removeprefix("Value error, ")
        if item["type"] == "json_invalid":
            item["msg"] = f"malformed JSON: {err.get('ctx', {}).get('error', 'cannot be parsed')}"
        out.append(item)
    return out


def _unavailable(msg: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": [], "msg": msg, "type": "unavailable"}]},
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _internal() -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": [], "msg": "internal error", "type": "internal_error"}]},
        status_code=500,
    )


ERROR_SCHEMA: dict[str, Any] = {
    "title": "ErrorOut",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        }
    },
}
_REASONS = {
    400: "malformed body (not JSON, or not the shape the receiver needs): names the field",
    401: "no credentials, or wrong ones (API key, webhook signature or secret)",
    403: "the key lacks the scope or the tenant",
    404: "no such tenant or object (or not the caller's)",
    409: "conflicts with the current state (duplicate, stale version, replayed delivery)",
    413: "the body exceeds this route's size cap (api/limits.py)",
    422: "a field is invalid: each error names it (loc) and says why (msg)",
    429: "the key's rate limit; retry after Retry-After seconds",
    502: "the ESP answered with an error",
    503: "a backend is unavailable; retry after Retry-After seconds",
}


# Routes that need no API key (app.py mounts them outside the authenticated routers).
OPEN_PATHS = ("/health", "/api/connector/oauth/callback", "/api/webhook/")


def _error_codes(path: str, method: str, op: dict[str, Any]) -> list[int]:
    """The 4xx/503 answers an operation can give, from what it takes and what guards it."""
    codes = {413, 503}  # every route: the body cap middleware; a backend down
    takes_body = "requestBody" in op or path.startswith("/api/webhook/")
    if op.get("parameters") or takes_body:
        codes |= {404, 422}
    if takes_body:
        codes |= {400, 409}
    if method != "get" or op.get("parameters"):
        codes |= {404, 409}  # a missing object; a state that forbids it (no backfill yet...)
    if not path.startswith(OPEN_PATHS):
        codes |= {401, 403, 429}
    if path.startswith("/api/webhook/"):
        codes |= {401}
    if "/oauth/" in path or "/accounts/klaviyo" in path or "/sync/" in path:
        codes |= {400, 409, 502}
    return sorted(codes)


def document_errors(app: FastAPI) -> None:
    """Put the error answers in the OpenAPI document (one `ErrorOut` shape, as produced here),
    so clients and schemathesis know every status a route can return."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()
        if "ErrorOut" in doc.get("components", {}).get("schemas", {}):
            return doc  # FastAPI caches the document; this one is done
        doc.setdefault("components", {}).setdefault("schemas", {})["ErrorOut"] = ERROR_SCHEMA
        ref = {"$ref": "#/components/schemas/ErrorOut"}
        for path, ops in doc.get("paths", {}).items():
            for method, op in ops.items():
                responses = op.setdefault("responses", {})
                for code in _error_codes(path, method, op):
                    responses.setdefault(
                        str(code),
                        {
                            "description": _REASONS[code],
                            "content": {"application/json": {"schema": ref}},
                        },
                    )
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SendFlowrError)
    async def _domain(_: Request, exc: SendFlowrError) -> JSONResponse:
        headers: dict[str, str] = dict(getattr(exc, "headers", None) or {})  # 401, 429 (auth)
        if isinstance(exc, UnavailableError):
            headers["Retry-After"] = str(exc.retry_after_seconds)
        # Every item has loc, msg and type (the documented ErrorOut), whoever built it.
        detail = [
            {"loc": [], "msg": exc.message, "type": exc.code, **item} for item in exc.detail()
        ]
        return JSONResponse({"detail": detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": jsonable_encoder(_clean(list(exc.errors())))}, status_code=422
        )

    @app.exception_handler(EventStoreError)
    async def _store(_: Request, exc: EventStoreError) -> JSONResponse:
        log.error("event store error: %s", exc)
        return JSONResponse(
            {
                "detail": [
                    {"loc": [], "msg": "the event store is unavailable", "type": "unavailable"}
                ]
            },
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(sa_exc.DBAPIError)
    async def _database(_: Request, exc: sa_exc.DBAPIError) -> JSONResponse:
        # Most metadata calls turn a lost connection into UnavailableError themselves; this
        # catches one that escaped (a dropped PostgreSQL connection, a database refusing them).
        if isinstance(exc, sa_exc.OperationalError) or exc.connection_invalidated:
            log.error("metadata store unavailable: %s", str(exc.orig).strip().splitlines()[:1])
            return _unavailable("the metadata store is unavailable")
        log.exception("database error")
        return _internal()

    @app.exception_handler(psycopg.OperationalError)
    async def _psycopg(_: Request, exc: psycopg.OperationalError) -> JSONResponse:
        log.error("metadata store unavailable: %s", str(exc).strip().splitlines()[:1])
        return _unavailable("the metadata store is unavailable")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {
                "detail": exc.detail  # already [{loc, msg, type}] (api/limits.py)
                if isinstance(exc.detail, list)
                else [{"loc": [], "msg": str(exc.detail), "type": "http_error"}]
            },
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"detail": [{"loc": [], "msg": "internal error", "type": "internal_error"}]},
            status_code=500,
        )
