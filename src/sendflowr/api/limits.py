"""Request body caps, enforced while the body streams in.

A pure ASGI middleware (no per-request task): a declared Content-Length over the route's cap
is refused before a byte is read, and a body without one (chunked) is counted as it arrives
and refused the moment it passes the cap, so no request can make the service buffer an
unbounded body. The answer is 413 with the usual error shape naming the cap.

Caps are sized from what each route accepts:

| route | cap | why |
|---|---|---|
| /api/webhook/* | 5 MiB | Klaviyo's own payload ceiling |
| POST /timing/decide/batch | 100,000 recipients x 256 B = 25.6 MB | the schema's recipient limit |
| POST /api/intents/{id}/schedule | 2,000,000 recipients x 80 B = 160 MB | the audience limit |
| POST /api/events | 10,000 events x 2 KiB = 20 MiB | the batch limit |
| /ui/* (the dashboard's sign-in and sign-out forms) | 16 KiB | a form with one key |
| everything else | 1 MiB | small JSON documents |

A body sent with a Content-Type other than JSON (or none; the webhook receivers accept none)
is 422 naming the body, like any other unusable body; only the dashboard's own forms under
/ui/ may also send application/x-www-form-urlencoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIB: Final = 1024 * 1024
WEBHOOK_PREFIX: Final = "/api/webhook/"
WEBHOOK_MAX_BODY: Final = 5 * MIB
BATCH_DECIDE_MAX_BODY: Final = 100_000 * 256
SCHEDULE_MAX_BODY: Final = 2_000_000 * 80
EVENTS_MAX_BODY: Final = 10_000 * 2048
DEFAULT_MAX_BODY: Final = 1 * MIB
FORM_PREFIX: Final = "/ui/"
FORM_MAX_BODY: Final = 16 * 1024

# (method or None for any, path pattern, cap); the first match wins.
CAPS: Final[tuple[tuple[str | None, re.Pattern[str], int], ...]] = (
    (None, re.compile("^" + WEBHOOK_PREFIX), WEBHOOK_MAX_BODY),
    (None, re.compile("^" + FORM_PREFIX), FORM_MAX_BODY),
    ("POST", re.compile(r"^/timing/decide/batch/?$"), BATCH_DECIDE_MAX_BODY),
    ("POST", re.compile(r"^/api/intents/[^/]+/schedule/?$"), SCHEDULE_MAX_BODY),
    ("POST", re.compile(r"^/api/events/?$"), EVENTS_MAX_BODY),
)
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyTooLargeError(HTTPException):
    """Raised from `receive` once the body passes the cap. An HTTPException so that FastAPI's
    body parsing lets it through (it turns any other error into a 400); errors.py answers it
    with its detail list."""

    def __init__(self, message: str) -> None:
        super().__init__(413, detail=[{"loc": ["body"], "msg": message, "type": "too_large"}])  # type: ignore[arg-type]
        self.message = message


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    msg: str
    kind: str


def cap_for(method: str, path: str) -> int:
    """The most bytes a request body to `path` may have."""
    for m, pattern, cap in CAPS:
        if (m is None or m == method) and pattern.match(path):
            return cap
    return DEFAULT_MAX_BODY


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n} bytes"


def _too_large(cap: int) -> str:
    return f"the request body exceeds this route's cap of {_size(cap)} ({cap} bytes)"


def is_json(content_type: str) -> bool:
    """A JSON media type: application/json or application/*+json (parameters ignored)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and "+json" in media)


def _check_headers(
    method: str, path: str, headers: dict[bytes, bytes], cap: int
) -> _Refusal | None:
    declared = headers.get(b"content-length")
    if declared is not None:
        text = declared.decode("latin-1").strip()
        if not text.isdigit():
            return _Refusal(400, "Content-Length is not a number of bytes", "value_error")
        if int(text) > cap:
            return _Refusal(413, _too_large(cap), "too_large")
    has_body = (declared is not None and declared.strip() not in (b"", b"0")) or (
        b"transfer-encoding" in headers
    )
    if method not in BODY_METHODS or not has_body:
        return None
    raw_type = headers.get(b"content-type")
    content_type = raw_type.decode("latin-1") if raw_type is not None else None
    if content_type is None and path.startswith(WEBHOOK_PREFIX):
        return None  # the receivers read raw bytes (the signature covers them), JSON or not
    if (
        content_type is not None
        and path.startswith(FORM_PREFIX)
        and content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"
    ):
        return None
    if content_type is None or not is_json(content_type):
        given = "no Content-Type" if content_type is None else f"Content-Type {content_type!r}"
        # 422 like any other unusable body (the API's contract: a 422 naming the field).
        return _Refusal(
            422, f"{given}: send the body as application/json", "unsupported_media_type"
        )
    return None


async def _refuse(send: Send, refusal: _Refusal) -> None:
    body = orjson.dumps({"detail": [{"loc": ["body"], "msg": refusal.msg, "type": refusal.kind}]})
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuse bodies over the route's cap (413) or not JSON (422), without buffering them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", "GET"))
        path = str(scope.get("path", ""))
        cap = cap_for(method, path)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = _check_headers(method, path, headers, cap)
        if refusal is not None:
            await _refuse(send, refusal)
            return

        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    # The app's error handler maps this to 413; the rest is never read.
                    raise BodyTooLargeError(_too_large(cap))
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLargeError as exc:
            # Raised outside the app's handlers (e.g. read by another middleware).
            if started:
                raise
            await _refuse(send, _Refusal(413, exc.message, "too_large"))
