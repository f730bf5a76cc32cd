"""Every error becomes a JSON response here, and only here.

Bad input is a 4xx naming the field and the reason; an infrastructure fault is a 503 with
Retry-After; nothing ever shows a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
        if item["type"] == "json_invalid":
            item["msg"] = f"malformed JSON: {err.get('ctx', {}).get('error', 'cannot be parsed')}"
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SendFlowrError)
    async def _domain(_: Request, exc: SendFlowrError) -> JSONResponse:
        headers = {}
        if isinstance(exc, UnavailableError):
            headers["Retry-After"] = str(exc.retry_after_seconds)
        return JSONResponse({"detail": exc.detail()}, status_code=exc.status, headers=headers)

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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": [], "msg": str(exc.detail), "type": "http_error"}]},
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
