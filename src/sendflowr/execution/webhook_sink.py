"""A reference receiver for the webhook ESP (tests, the demo, and an integrator's model).

`POST /sendflowr` verifies the signature (401 when it does not check out), checks the body
and the Idempotency-Key (400), deduplicates sends by `decision_id` and counts them. Faults can
be injected from Python: the next N requests answer 429 with Retry-After, 500, or any status.
`GET /stats` shows the counters.

    sink = WebhookSink(secret)
    url = sink.start()          # http://127.0.0.1:<free port>/sendflowr
    ...
    sink.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sendflowr.execution.webhook_esp import (
    DEFAULT_TOLERANCE_SECONDS,
    IDEMPOTENCY_HEADER,
    PAYLOAD_TYPE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    idempotency_key,
    verify,
)

PATH = "/sendflowr"


@dataclass(frozen=True, slots=True)
class Fault:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(slots=True)
class SinkStats:
    requests: int = 0  # every POST, faults and refusals included
    deliveries: int = 0  # POSTs accepted (2xx)
    received: int = 0  # sends in accepted POSTs
    unique: int = 0  # distinct decision ids
    duplicates: int = 0  # sends whose decision id was seen before
    bad_signature: int = 0  # 401s
    bad_body: int = 0  # 400s
    faults: int = 0  # injected answers


class WebhookSink:
    """Receives signed deliveries; thread-safe counters readable while it serves."""

    def __init__(
        self,
        secret: str,
        *,
        tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._tolerance = tolerance_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._stats = SinkStats()
        self._faults: list[Fault] = []
        self.seen: dict[str, dict[str, Any]] = {}  # decision id -> first send item
        self.payloads: list[dict[str, Any]] = []  # accepted bodies, in order
        self.idempotency_keys: list[str] = []
        self.app = Starlette(
            routes=[
                Route(PATH, self._receive, methods=["POST"]),
                Route("/stats", self._stats_endpoint, methods=["GET"]),
            ]
        )
        self._stop: Callable[[], None] | None = None
        self.url: str | None = None  # set while serving

    # -- Python controls ----------------------------------------------------------------------
    @property
    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(**asdict(self._stats))

    def inject(
        self,
        status: int,
        *,
        count: int = 1,
        headers: Mapping[str, str] | None = None,
        body: str = "",
    ) -> None:
        """The next `count` POSTs answer `status` (before any check)."""
        with self._lock:
            self._faults.extend([Fault(status, dict(headers or {}), body)] * count)

    def fail_with_429(self, count: int = 1, retry_after: float = 1) -> None:
        self.inject(429, count=count, headers={"Retry-After": f"{retry_after:g}"}, body="slow down")

    def fail_with_500(self, count: int = 1) -> None:
        self.inject(500, count=count, body="receiver failure")

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- HTTP ---------------------------------------------------------------------------------
    async def _stats_endpoint(self, _: Request) -> Response:
        return JSONResponse(asdict(self.stats))

    def _refuse(self, status: int, reason: str) -> Response:
        with self._lock:
            if status == 401:
                self._stats.bad_signature += 1
            else:
                self._stats.bad_body += 1
        return JSONResponse({"error": reason}, status_code=status)

    async def _receive(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self._stats.requests += 1
            fault = self._faults.pop(0) if self._faults else None
            if fault is not None:
                self._stats.faults += 1
        if fault is not None:
            return Response(fault.body, status_code=fault.status, headers=dict(fault.headers))
        try:
            verify(
                self._secret,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                body,
                now=self._clock(),
                tolerance_seconds=self._tolerance,
            )
        except SignatureError as exc:
            return self._refuse(401, exc.reason)
        problem, data = _check_body(body)
        if problem is not None:
            return self._refuse(400, problem)
        ids = [item["decision_id"] for item in data["sends"]]
        if request.headers.get(IDEMPOTENCY_HEADER) != idempotency_key(ids):
            return self._refuse(400, f"{IDEMPOTENCY_HEADER} does not match the decision ids")
        duplicates = 0
        with self._lock:
            self._stats.deliveries += 1
            self.payloads.append(data)
            self.idempotency_keys.append(request.headers[IDEMPOTENCY_HEADER])
            for item in data["sends"]:
                self._stats.received += 1
                if item["decision_id"] in self.seen:
                    self._stats.duplicates += 1
                    duplicates += 1
                else:
                    self._stats.unique += 1
                    self.seen[item["decision_id"]] = item
        return JSONResponse({"accepted": len(ids) - duplicates, "duplicates": duplicates})

    # -- serving ------------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on a free 127.0.0.1 port in a background thread; returns the delivery URL."""
        import uvicorn

        if self._stop is not None:
            raise RuntimeError("the sink is running already")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise RuntimeError("the webhook sink did not start")
            time.sleep(0.01)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()

        self._stop = stop
        self.url = f"http://127.0.0.1:{port}{PATH}"
        return self.url

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
            self.url = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _check_body(body: bytes) -> tuple[str | None, dict[str, Any]]:
    """(None, payload) for a well-formed delivery, else (the reason, {})."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "the body is not JSON", {}
    if not isinstance(data, dict):
        return "the body is not a JSON object", {}
    if data.get("type") != PAYLOAD_TYPE:
        return f"type is not {PAYLOAD_TYPE!r}", {}
    for key in ("tenant", "intent_id", "event"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"{key} is not a non-empty string", {}
    sends = data.get("sends")
    if not isinstance(sends, list) or not sends:
        return "sends is not a non-empty list", {}
    for i, item in enumerate(sends):
        if not isinstance(item, dict) or not isinstance(item.get("decision_id"), str):
            return f"sends[{i}].decision_id is not a string", {}
        recipient = item.get("recipient")
        if not isinstance(recipient, dict) or not isinstance(recipient.get("value"), str):
            return f"sends[{i}].recipient is not an object with a value", {}
    return None, data


__all__ = ["PATH", "Fault", "SinkStats", "WebhookSink"]
