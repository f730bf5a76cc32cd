"""Faults on demand: the next N matching responses fail in a chosen way.

kinds: `5xx` (an error status, 503 by default), `timeout` (wait `delay_seconds`, default 30,
then 504), `slow` (wait, then answer normally), `truncate` (half the body under the full
Content-Length, so the connection ends early), `429_storm` (429 with Retry-After =
`delay_seconds`, default 1).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sendflowr.klaviyo_sim.errors import ApiError

KINDS: Final = ("5xx", "timeout", "slow", "truncate", "429_storm")
_DEFAULT_DELAY: Final = {"timeout": 30.0, "slow": 2.0, "429_storm": 1.0}


class InjectedTruncation(RuntimeError):
    """The server refusing a body shorter than its Content-Length: what `truncate` wants."""


class _QuietTruncations(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InjectedTruncation)


def quiet_truncations(logger_name: str = "uvicorn.error") -> None:
    """Keep the server's log free of tracebacks for deliberately truncated responses."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _QuietTruncations) for f in logger.filters):
        logger.addFilter(_QuietTruncations())


@dataclass(slots=True)
class Fault:
    kind: str
    remaining: int
    path_prefix: str
    delay_seconds: float
    status: int
    method: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "remaining": self.remaining,
            "path_prefix": self.path_prefix,
            "delay_seconds": self.delay_seconds,
            "status": self.status,
            "method": self.method,
        }


class Faults:
    def __init__(self) -> None:
        self._pending: list[Fault] = []

    def add(
        self,
        kind: str,
        count: int = 1,
        path_prefix: str = "/api/",
        delay_seconds: float | None = None,
        status: int | None = None,
        method: str | None = None,
    ) -> Fault:
        if kind not in KINDS:
            raise ValueError(f"kind: one of {', '.join(KINDS)}")
        if count < 1:
            raise ValueError("count: at least 1")
        if status is not None and not 500 <= status <= 599:
            raise ValueError("status: a 5xx status")
        delay = _DEFAULT_DELAY.get(kind, 0.0) if delay_seconds is None else delay_seconds
        if delay < 0:
            raise ValueError("delay_seconds: not negative")
        fault = Fault(
            kind,
            count,
            path_prefix,
            float(delay),
            status or 503,
            method.upper() if method else None,
        )
        self._pending.append(fault)
        return fault

    def clear(self) -> int:
        n = len(self._pending)
        self._pending.clear()
        return n

    def pending(self) -> list[dict[str, Any]]:
        return [f.as_dict() for f in self._pending]

    def take(self, method: str, path: str) -> Fault | None:
        for fault in self._pending:
            if path.startswith(fault.path_prefix) and fault.method in (None, method):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._pending.remove(fault)
                return fault
        return None


async def _send_error(send: Send, error: ApiError) -> None:
    response = error.response()
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def apply_fault(
    fault: Fault, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one request the way `fault` says."""
    if fault.kind == "5xx":
        await _send_error(send, ApiError(fault.status, "Injected server error (simulator fault)."))
    elif fault.kind == "429_storm":
        retry = max(1, math.ceil(fault.delay_seconds))
        await _send_error(
            send,
            ApiError(
                429,
                f"Request was throttled. Expected available in {retry} second(s).",
                headers={"Retry-After": str(retry)},
            ),
        )
    elif fault.kind == "timeout":
        await asyncio.sleep(fault.delay_seconds)
        await _send_error(send, ApiError(504, "Injected timeout (simulator fault)."))
    elif fault.kind == "slow":
        await asyncio.sleep(fault.delay_seconds)
        await app(scope, receive, send)
    else:  # truncate
        messages: list[Message] = []

        async def collect(message: Message) -> None:
            messages.append(message)

        await app(scope, receive, collect)
        start = next(m for m in messages if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        # Less than Content-Length promised: a real server refuses to finish the response and
        # drops the connection (in-process transports just hand over the short body).
        try:
            await send({"type": "http.response.body", "body": body[: len(body) // 2]})
        except Exception as exc:
            raise InjectedTruncation(str(exc)) from exc
