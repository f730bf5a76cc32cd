"""The sim over real sockets: uvicorn in a thread, webhooks to a real receiver, faults that
break connections, background live events, and the command's --help."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import typer
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from typer.testing import CliRunner

from sendflowr.klaviyo_sim import klaviyo_sim, run_in_thread, sign_webhook
from tests.klaviyo_sim.conftest import HEADERS, small_config
from tests.klaviyo_sim.helpers import webhook_body

pytestmark = pytest.mark.network
JSON_API = {"Content-Type": "application/vnd.api+json"}


class _Receiver:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        self.calls.append((dict(request.headers), await request.body()))
        await Response(status_code=204)(scope, receive, send)


@pytest.fixture
def receiver() -> Iterator[tuple[str, _Receiver]]:
    app = _Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook", app
    server.should_exit = True
    thread.join(5)
    sock.close()


def test_served_over_http_with_webhooks_and_faults(receiver: tuple[str, _Receiver]) -> None:
    url, app = receiver
    base, stop = run_in_thread(small_config(profiles=40, days=7))
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            r = c.get("/api/events", params={"page[size]": "5"}, headers=HEADERS)
            assert r.status_code == 200
            assert r.json()["links"]["next"].startswith(base + "/api/events?")
            topics = tuple(
                t["id"] for t in c.get("/api/webhook-topics", headers=HEADERS).json()["data"]
            )
            created = c.post(
                "/api/webhooks",
                content=webhook_body(url, "k", topics),
                headers={**HEADERS, **JSON_API},
            )
            assert created.status_code == 201
            live = c.post("/_sim/live", json={"events": 12}).json()
            assert [d["status"] for d in live["deliveries"]] == [204]
            headers, body = app.calls[0]
            assert headers["klaviyo-signature"] == sign_webhook(
                "k", body, headers["klaviyo-timestamp"]
            )
            assert len(orjson.loads(body)["data"]) == 12
            # A truncated body ends the connection early.
            c.post("/_sim/faults", json={"kind": "truncate", "count": 1})
            with pytest.raises(httpx.RemoteProtocolError):
                c.get("/api/events", params={"page[size]": "50"}, headers=HEADERS)
            # A timeout fault outlasts a client's timeout.
            c.post("/_sim/faults", json={"kind": "timeout", "delay_seconds": 1})
            with pytest.raises(httpx.ReadTimeout):
                c.get("/api/events", headers=HEADERS, timeout=0.3)
            assert c.get("/api/events", headers=HEADERS).status_code == 200
    finally:
        stop()


def test_background_live_events() -> None:
    base, stop = run_in_thread(small_config(profiles=40, days=7, live_events_per_minute=1200))
    try:
        deadline = time.monotonic() + 5
        live = 0
        while time.monotonic() < deadline and live == 0:
            time.sleep(0.3)
            live = httpx.get(base + "/_sim/brand").json()["live_events"]
        assert live > 0
    finally:
        stop()


def test_command_help_lists_the_options() -> None:
    app = typer.Typer()
    app.command()(klaviyo_sim)
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--port",
        "--profiles",
        "--days",
        "--seed",
        "--tenant",
        "--api-key",
        "--no-rate-limits",
    ):
        assert option in result.output
