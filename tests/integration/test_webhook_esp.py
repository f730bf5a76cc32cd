"""The webhook ESP: signatures, validation, the dispatcher against the reference sink over
loopback (outcomes, idempotency, pacing, no secret anywhere), and the account routes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import socket
import time
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr import __version__
from sendflowr.errors import InvalidInputError
from sendflowr.execution.base import Dispatcher, Send, SendResult
from sendflowr.execution.webhook_esp import (
    DEFAULT_MAX_BATCH,
    ESP,
    SignatureError,
    WebhookDispatcher,
    idempotency_key,
    parse_retry_after,
    sign,
    validate_binding,
    validate_credentials,
    verify,
)
from sendflowr.execution.webhook_sink import WebhookSink
from sendflowr.runtime import Runtime
from sendflowr.secrets import SecretBox, generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.accounts import AccountStore
from sendflowr.storage.metadata.tables import esp_accounts
from tests.conftest import ADMIN_HEADERS

SECRET = "whsec-" + "s3cr3t-0123456789abcdefghijklmnop"  # 38 characters
OTHER_SECRET = "other-" + "x" * 40
BINDING = {"event": "sendflowr.due", "max_batch": 100}
T0 = datetime(2025, 3, 3, 14, 5, tzinfo=UTC)
NOW = 1_741_010_700

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def make_send(i: int, *, intent_id: str = "spring-sale", tenant: str = "acme") -> Send:
    return Send(
        decision_id=f"00000000-0000-4000-8000-{i:012d}",
        tenant=tenant,
        intent_id=intent_id,
        universal_id=f"u_{i:04d}",
        recipient_type="email",
        recipient_value=f"person{i}@example.com",
        target_at=T0 + timedelta(minutes=i),
        trigger_at=T0 + timedelta(minutes=i) - timedelta(seconds=90, microseconds=5),
        explanation_ref=f"expl_{i}",
    )


def creds(url: str, **extra: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, **extra}


def dispatch(
    url: str,
    sends: list[Send],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tenant: str = "acme",
    binding: dict[str, Any] | None = None,
    **credentials: Any,
) -> list[SendResult]:
    async def go() -> list[SendResult]:
        dispatcher = WebhookDispatcher(transport=transport)
        try:
            return await dispatcher.send(
                tenant, binding or BINDING, creds(url, **credentials), sends
            )
        finally:
            await dispatcher.aclose()

    return run(go())


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    s = WebhookSink(SECRET)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def sink_url(sink: WebhookSink) -> str:
    assert sink.url is not None
    return sink.url


# -- signatures ------------------------------------------------------------------------------
def test_sign_is_v1_hex_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, body) == f"v1={expected}"
    assert sign(SECRET, 1_700_000_001, body) != sign(SECRET, 1_700_000_000, body)
    assert sign(OTHER_SECRET, 1_700_000_000, body) != sign(SECRET, 1_700_000_000, body)


def test_verify_accepts_a_fresh_signature_and_rotation_values() -> None:
    body = b'{"type":"sendflowr.sends"}'
    good = sign(SECRET, NOW, body)
    verify(SECRET, str(NOW), good, body, now=NOW)
    verify(SECRET, str(NOW), good, body, now=NOW + 299)  # within the tolerance
    verify(SECRET, str(NOW), good, body, now=NOW - 299)
    old = sign(OTHER_SECRET, NOW, body)
    # A sender rotating secrets signs with both; either order verifies.
    verify(SECRET, str(NOW), f"{old},{good}", body, now=NOW)
    verify(SECRET, str(NOW), f"{good}, {old}", body, now=NOW)
    # Values of versions we do not know are ignored.
    verify(SECRET, str(NOW), f"v2=abc,{good}", body, now=NOW)


BODY = b'{"sends":[]}'
GOOD = sign(SECRET, NOW, BODY)


@pytest.mark.parametrize(
    ("timestamp", "signature", "body", "now", "reason"),
    [
        (None, GOOD, BODY, NOW, "missing X-SendFlowr-Timestamp"),
        ("  ", GOOD, BODY, NOW, "missing X-SendFlowr-Timestamp"),
        ("yesterday", GOOD, BODY, NOW, "malformed X-SendFlowr-Timestamp"),
        ("-5", GOOD, BODY, NOW, "malformed X-SendFlowr-Timestamp"),
        (str(NOW), None, BODY, NOW, "missing X-SendFlowr-Signature"),
        (str(NOW), "", BODY, NOW, "missing X-SendFlowr-Signature"),
        (str(NOW), GOOD[3:], BODY, NOW, "malformed X-SendFlowr-Signature"),
        (str(NOW), "v1=abc", BODY, NOW, "malformed X-SendFlowr-Signature"),
        (str(NOW), "v2=" + GOOD[3:], BODY, NOW, "no v1= value"),
        (str(NOW), GOOD, BODY, NOW + 301, "timestamp too old"),
        (str(NOW), GOOD, BODY, NOW - 301, "timestamp too new"),
        (str(NOW), sign(OTHER_SECRET, NOW, BODY), BODY, NOW, "signature mismatch"),
        (str(NOW), GOOD, BODY + b" ", NOW, "signature mismatch"),
        (str(NOW + 1), sign(SECRET, NOW, BODY), BODY, NOW, "signature mismatch"),
    ],
)
def test_verify_refuses_with_the_reason(
    timestamp: str | None, signature: str | None, body: bytes, now: int, reason: str
) -> None:
    with pytest.raises(SignatureError) as info:
        verify(SECRET, timestamp, signature, body, now=now)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)
    assert SECRET not in str(info.value)


def test_verify_tolerance_is_configurable() -> None:
    verify(SECRET, str(NOW), GOOD, BODY, now=NOW + 3000, tolerance_seconds=3600)
    with pytest.raises(SignatureError, match="too old"):
        verify(SECRET, str(NOW), GOOD, BODY, now=NOW + 11, tolerance_seconds=10)


# -- validation ------------------------------------------------------------------------------
def test_credentials_are_normalised_with_defaults() -> None:
    assert validate_credentials({"url": "https://hooks.example.com/in?x=1", "secret": SECRET}) == {
        "url": "https://hooks.example.com/in?x=1",
        "secret": SECRET,
        "requests_per_minute": 600,
        "timeout_seconds": 10,
    }
    full = validate_credentials(
        {
            "url": "http://127.0.0.1:8080/x",
            "secret": SECRET,
            "requests_per_minute": 100_000,
            "timeout_seconds": 2.5,
        }
    )
    assert (full["requests_per_minute"], full["timeout_seconds"]) == (100_000, 2.5)


@pytest.mark.parametrize(
    ("change", "field", "kind"),
    [
        ({"url": None}, "url", "missing"),
        ({"url": 5}, "url", "string_type"),
        ({"url": "ftp://example.com/x"}, "url", "invalid_url"),
        ({"url": "/relative/path"}, "url", "invalid_url"),
        ({"url": "https://user:pw@example.com/x"}, "url", "invalid_url"),
        ({"url": "https://example.com/" + "a" * 481}, "url", "invalid_url"),
        ({"url": "https://example.com:99999/x"}, "url", "invalid_url"),
        ({"url": "https://exa mple.com/x"}, "url", "invalid_url"),
        ({"secret": None}, "secret", "missing"),
        ({"secret": "x" * 31}, "secret", "invalid_secret"),
        ({"secret": "x" * 257}, "secret", "invalid_secret"),
        ({"secret": "x" * 31 + " y"}, "secret", "invalid_secret"),
        ({"requests_per_minute": 0}, "requests_per_minute", "out_of_range"),
        ({"requests_per_minute": 100_001}, "requests_per_minute", "out_of_range"),
        ({"requests_per_minute": 1.5}, "requests_per_minute", "int_type"),
        ({"requests_per_minute": True}, "requests_per_minute", "int_type"),
        ({"timeout_seconds": 0.5}, "timeout_seconds", "out_of_range"),
        ({"timeout_seconds": 61}, "timeout_seconds", "out_of_range"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds", "out_of_range"),
        ({"timeout_seconds": "10"}, "timeout_seconds", "float_type"),
        ({"api_key": "pk_x"}, "api_key", "extra_forbidden"),
    ],
)
def test_bad_credentials_name_the_field(change: dict[str, Any], field: str, kind: str) -> None:
    raw = {k: v for k, v in {**creds("https://example.com/in"), **change}.items() if v is not None}
    with pytest.raises(InvalidInputError) as info:
        validate_credentials(raw, loc=("body",))
    assert [(e["loc"], e["type"]) for e in info.value.errors] == [(["body", field], kind)]
    assert info.value.errors[0]["msg"]
    assert SECRET not in info.value.message
    assert info.value.status == 422


def test_every_bad_credential_is_listed_at_once() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_credentials({"url": "nope", "secret": "short", "requests_per_minute": 0})
    assert [e["loc"] for e in info.value.errors] == [["url"], ["secret"], ["requests_per_minute"]]


def test_binding_is_normalised_and_bad_fields_are_named() -> None:
    assert validate_binding({"event": "due.send:v1-a_b"}) == {
        "event": "due.send:v1-a_b",
        "max_batch": DEFAULT_MAX_BATCH,
    }
    assert validate_binding({"event": "e", "max_batch": 1000})["max_batch"] == 1000
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "event", "missing"),
        ({"event": ""}, "event", "invalid_event"),
        ({"event": "x" * 101}, "event", "invalid_event"),
        ({"event": "has space"}, "event", "invalid_event"),
        ({"event": "slash/no"}, "event", "invalid_event"),
        ({"event": 3}, "event", "string_type"),
        ({"event": "e", "max_batch": 0}, "max_batch", "out_of_range"),
        ({"event": "e", "max_batch": 1001}, "max_batch", "out_of_range"),
        ({"event": "e", "max_batch": "10"}, "max_batch", "int_type"),
        ({"event": "e", "metric_id": "X"}, "metric_id", "extra_forbidden"),
    ]
    for raw, field, kind in cases:
        with pytest.raises(InvalidInputError) as info:
            validate_binding(raw, loc=("body", "binding"))
        assert [(e["loc"], e["type"]) for e in info.value.errors] == [
            (["body", "binding", field], kind)
        ], raw


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Mon, 03 Mar 2025 14:05:30 GMT", now=NOW) == 30.0


# -- the dispatcher, without sockets ---------------------------------------------------------
def test_the_dispatcher_implements_the_port() -> None:
    async def go() -> None:
        d: Dispatcher = WebhookDispatcher()
        assert d.esp == ESP == "webhook"
        assert d.max_batch({"event": "e", "max_batch": 7}) == 7
        assert d.max_batch({"event": "e"}) == DEFAULT_MAX_BATCH
        await d.aclose()

    run(go())


def test_the_post_carries_the_documented_payload_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    sends = [make_send(2), make_send(1)]
    results = dispatch(
        "https://hooks.example.com/in", sends, transport=httpx.MockTransport(handler)
    )
    assert results == [SendResult(s.decision_id, ok=True) for s in sends]
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://hooks.example.com/in"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"SendFlowr/{__version__}"
    ids = sorted(s.decision_id for s in sends)
    assert request.headers["Idempotency-Key"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert request.headers["Idempotency-Key"] == idempotency_key([s.decision_id for s in sends])
    timestamp = request.headers["X-SendFlowr-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    verify(
        SECRET,
        timestamp,
        request.headers["X-SendFlowr-Signature"],
        request.content,
        now=time.time(),
    )
    assert orjson.loads(request.content) == {
        "type": "sendflowr.sends",
        "tenant": "acme",
        "intent_id": "spring-sale",
        "event": "sendflowr.due",
        "sends": [
            {
                "decision_id": "00000000-0000-4000-8000-000000000002",
                "universal_id": "u_0002",
                "recipient": {"type": "email", "value": "person2@example.com"},
                "target_minute_utc": "2025-03-03T14:07:00Z",
                "trigger_timestamp_utc": "2025-03-03T14:05:29Z",
                "explanation_ref": "expl_2",
            },
            {
                "decision_id": "00000000-0000-4000-8000-000000000001",
                "universal_id": "u_0001",
                "recipient": {"type": "email", "value": "person1@example.com"},
                "target_minute_utc": "2025-03-03T14:06:00Z",
                "trigger_timestamp_utc": "2025-03-03T14:04:29Z",
                "explanation_ref": "expl_1",
            },
        ],
    }
    assert SECRET.encode() not in request.content
    assert all(SECRET not in v for v in request.headers.values())


def test_batches_beyond_max_batch_and_mixed_intents_go_as_several_posts() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return httpx.Response(200)

    sends = [make_send(i) for i in range(5)] + [make_send(9, intent_id="other")]
    results = dispatch(
        "https://hooks.example.com/in",
        sends,
        transport=httpx.MockTransport(handler),
        binding={"event": "e", "max_batch": 2},
    )
    assert [r.decision_id for r in results] == [s.decision_id for s in sends]
    assert all(r.ok for r in results)
    assert [(b["intent_id"], len(b["sends"])) for b in bodies] == [
        ("spring-sale", 2),
        ("spring-sale", 2),
        ("spring-sale", 1),
        ("other", 1),
    ]


def test_invalid_configuration_fails_every_send_without_a_request() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    sends = [make_send(1)]
    transport = httpx.MockTransport(handler)
    (bad_binding,) = dispatch("https://h.example/x", sends, transport=transport, binding={"x": 1})
    assert not bad_binding.ok
    assert not bad_binding.retryable
    assert "binding" in (bad_binding.error or "")
    (bad_url,) = dispatch("ftp://h.example/x", sends, transport=transport)
    assert not bad_url.ok
    assert "url" in (bad_url.error or "")
    assert SECRET not in (bad_url.error or "")
    assert calls == []
    assert dispatch("https://h.example/x", [], transport=transport) == []


def test_a_receiver_slower_than_the_timeout_is_retryable() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    began = time.monotonic()
    (result,) = dispatch(
        "https://slow.example/x",
        [make_send(1)],
        transport=httpx.MockTransport(handler),
        timeout_seconds=1,
    )
    assert time.monotonic() - began < 3
    assert not result.ok
    assert result.retryable
    assert "timeout" in (result.error or "")


def test_a_transport_timeout_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    (result,) = dispatch(
        "https://slow.example/x", [make_send(1)], transport=httpx.MockTransport(handler)
    )
    assert (result.ok, result.retryable) == (False, True)
    assert result.error == "timeout (ReadTimeout)"


def test_requests_are_paced_per_tenant_and_url() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async def go() -> tuple[float, float]:
        dispatcher = WebhookDispatcher(transport=httpx.MockTransport(handler))
        slow = creds("https://a.example/x", requests_per_minute=600)  # 10 a second
        try:
            began = time.monotonic()
            for i in range(15):
                await dispatcher.send("acme", BINDING, slow, [make_send(i)])
            paced = time.monotonic() - began
            # Another tenant, and another URL, have their own budgets.
            began = time.monotonic()
            for i in range(10):
                await dispatcher.send("other", BINDING, slow, [make_send(i, tenant="other")])
                await dispatcher.send("acme", BINDING, creds("https://b.example/x"), [make_send(i)])
            free = time.monotonic() - began
        finally:
            await dispatcher.aclose()
        return paced, free

    paced, free = run(go())
    assert paced >= 0.4  # 15 requests at 10/s with a 10-request burst: about 0.5 s
    assert free < 0.3


# -- the dispatcher against the reference sink -----------------------------------------------
@pytest.mark.network
def test_ok_deliveries_are_verified_and_counted_by_the_sink(
    sink: WebhookSink, sink_url: str
) -> None:
    sends = [make_send(i) for i in range(3)]
    results = dispatch(sink_url, sends)
    assert results == [SendResult(s.decision_id, ok=True) for s in sends]
    stats = sink.stats
    assert (stats.requests, stats.deliveries, stats.received, stats.unique) == (1, 1, 3, 3)
    assert (stats.duplicates, stats.bad_signature, stats.bad_body) == (0, 0, 0)
    assert set(sink.seen) == {s.decision_id for s in sends}
    assert sink.payloads[0]["event"] == "sendflowr.due"
    assert sink.idempotency_keys == [idempotency_key([s.decision_id for s in sends])]


@pytest.mark.network
def test_the_same_batch_twice_is_counted_once_as_unique(sink: WebhookSink, sink_url: str) -> None:
    sends = [make_send(i) for i in range(4)]
    assert all(r.ok for r in dispatch(sink_url, sends))
    assert all(r.ok for r in dispatch(sink_url, sends))  # a retry after a crash
    assert all(r.ok for r in dispatch(sink_url, sends[:2]))  # a partial retry
    stats = sink.stats
    assert (stats.deliveries, stats.received, stats.unique, stats.duplicates) == (3, 10, 4, 6)
    assert sink.idempotency_keys[0] == sink.idempotency_keys[1] != sink.idempotency_keys[2]


@pytest.mark.network
def test_429_with_retry_after_is_retryable(sink: WebhookSink, sink_url: str) -> None:
    sink.fail_with_429(retry_after=7)
    sends = [make_send(1), make_send(2)]
    results = dispatch(sink_url, sends)
    assert [r.decision_id for r in results] == [s.decision_id for s in sends]
    for r in results:
        assert (r.ok, r.retryable, r.retry_after) == (False, True, 7.0)
        assert r.error == "HTTP 429: slow down"
    assert sink.stats.unique == 0
    # The fault was for one request only: the retry lands.
    assert all(r.ok for r in dispatch(sink_url, sends))
    assert sink.stats.unique == 2


@pytest.mark.network
def test_500_is_retryable_without_retry_after(sink: WebhookSink, sink_url: str) -> None:
    sink.fail_with_500(count=2)
    for _ in range(2):
        (r,) = dispatch(sink_url, [make_send(1)])
        assert (r.ok, r.retryable, r.retry_after) == (False, True, None)
        assert r.error == "HTTP 500: receiver failure"
    sink.inject(503, headers={"Retry-After": "12"})
    (r,) = dispatch(sink_url, [make_send(1)])
    assert (r.retryable, r.retry_after) == (True, 12.0)
    assert sink.stats.faults == 3


@pytest.mark.network
def test_400_fails_for_good_with_the_start_of_the_body(sink: WebhookSink, sink_url: str) -> None:
    sink.inject(400, body="bad recipient " + "z" * 500)
    (r,) = dispatch(sink_url, [make_send(1)])
    assert (r.ok, r.retryable, r.retry_after) == (False, False, None)
    assert r.error == "HTTP 400: " + ("bad recipient " + "z" * 500)[:200]


@pytest.mark.network
def test_a_wrong_secret_is_refused_by_the_sink_with_401_not_retryable(
    sink: WebhookSink, sink_url: str
) -> None:
    async def go() -> list[SendResult]:
        d = WebhookDispatcher()
        try:
            return await d.send(
                "acme", BINDING, {"url": sink_url, "secret": OTHER_SECRET}, [make_send(1)]
            )
        finally:
            await d.aclose()

    (r,) = run(go())
    assert (r.ok, r.retryable) == (False, False)
    assert (r.error or "").startswith("HTTP 401: ")
    assert "signature mismatch" in (r.error or "")
    assert OTHER_SECRET not in (r.error or "")
    assert (sink.stats.bad_signature, sink.stats.unique) == (1, 0)


@pytest.mark.network
def test_the_sink_refuses_bad_bodies_and_unsigned_posts(sink: WebhookSink, sink_url: str) -> None:
    def post(body: bytes, **headers: str) -> httpx.Response:
        now = int(time.time())
        signed = {
            "X-SendFlowr-Timestamp": str(now),
            "X-SendFlowr-Signature": sign(SECRET, now, body),
            **headers,
        }
        return httpx.post(sink_url, content=body, headers=signed)

    assert post(b"not json").status_code == 400
    assert post(b'{"type":"other"}').status_code == 400
    good = orjson.dumps(
        {"type": "sendflowr.sends", "tenant": "t", "intent_id": "i", "event": "e", "sends": []}
    )
    assert post(good).status_code == 400  # no sends
    one = orjson.dumps(
        {
            "type": "sendflowr.sends",
            "tenant": "t",
            "intent_id": "i",
            "event": "e",
            "sends": [{"decision_id": "d1", "recipient": {"type": "email", "value": "a@b.c"}}],
        }
    )
    assert post(one).status_code == 400  # no Idempotency-Key
    assert post(one, **{"Idempotency-Key": idempotency_key(["d1"])}).status_code == 200
    unsigned = httpx.post(sink_url, content=one, headers={"Idempotency-Key": "x"})
    assert unsigned.status_code == 401
    assert "missing X-SendFlowr-Timestamp" in unsigned.text
    stats = httpx.get(sink_url.rsplit("/", 1)[0] + "/stats").json()
    assert stats["bad_body"] == 4
    assert stats["bad_signature"] == 1
    assert stats["unique"] == 1


@pytest.mark.network
def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (r,) = dispatch(f"http://127.0.0.1:{port}/x", [make_send(1)])
    assert (r.ok, r.retryable) == (False, True)
    assert r.error == "transport error (ConnectError)"


@pytest.mark.network
def test_a_redirect_is_not_followed_and_fails_for_good(sink: WebhookSink, sink_url: str) -> None:
    sink.inject(307, headers={"Location": sink_url})  # following it would deliver
    (r,) = dispatch(sink_url, [make_send(1)])
    assert (r.ok, r.retryable) == (False, False)
    assert (r.error or "").startswith("HTTP 307")
    assert (sink.stats.requests, sink.stats.unique) == (1, 0)


@pytest.mark.network
def test_the_secret_is_in_no_result_and_no_log_line(
    sink: WebhookSink, sink_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink.fail_with_429()
    sink.fail_with_500()
    sink.inject(400, body=f"you sent {SECRET}")  # even a receiver echoing it
    results: list[SendResult] = []
    for i in range(4):
        results += dispatch(sink_url, [make_send(i)])
    assert [r.ok for r in results] == [False, False, False, True]
    assert "[redacted]" in (results[2].error or "")
    text = repr(results) + caplog.text
    assert SECRET not in text
    assert SECRET[6:20] not in text
    assert "webhook" in caplog.text  # the dispatcher did log


# -- the account routes ----------------------------------------------------------------------
KEY = generate_key()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"secret_key": SecretStr(KEY), "backfill_worker": False})


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    from sendflowr.api import create_app

    with TestClient(create_app(runtime.settings, runtime=runtime), headers=ADMIN_HEADERS) as c:
        yield c


def _tenant(client: TestClient, tenant: str = "acme") -> None:
    r = client.post("/api/tenants", json={"id": tenant, "name": tenant.title()})
    assert r.status_code == 201, r.text


PATH = "/api/tenants/acme/accounts/webhook"


def test_put_without_a_secret_generates_one_and_shows_it_once(
    client: TestClient, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _tenant(client)
    r = client.put(PATH, json={"url": "https://hooks.example.com/sendflowr"})
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    secret = body["secret"]
    assert isinstance(secret, str)
    assert len(secret) >= 32
    assert body["url"] == "https://hooks.example.com/sendflowr"
    assert (body["esp"], body["auth_kind"], body["status"]) == ("webhook", "hmac", "connected")
    assert (body["requests_per_minute"], body["timeout_seconds"]) == (600, 10)
    stored = runtime.accounts.credentials("acme", "webhook")
    assert stored == {
        "url": "https://hooks.example.com/sendflowr",
        "secret": secret,
        "requests_per_minute": 600,
        "timeout_seconds": 10,
    }
    got = client.get(PATH)
    assert got.status_code == 200
    assert got.headers["Cache-Control"] == "no-store"
    assert "secret" not in got.json()
    assert got.json()["url"] == "https://hooks.example.com/sendflowr"
    assert {k: v for k, v in body.items() if k != "secret"} == got.json()
    for text in (got.text, client.get("/openapi.json").text, caplog.text):
        assert secret not in text
    with runtime.metadata.engine.connect() as conn:
        raw = conn.execute(sa.select(esp_accounts.c.credentials)).scalar()
    assert raw is not None
    assert secret not in raw

    # Another PUT without a secret rotates it.
    again = client.put(PATH, json={"url": "https://hooks.example.com/sendflowr"}).json()
    assert again["secret"] != secret
    assert again["created_at"] == body["created_at"]


def test_put_with_a_secret_never_shows_it(
    client: TestClient, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _tenant(client)
    r = client.put(
        PATH,
        json={
            "url": "http://127.0.0.1:9/in",
            "secret": SECRET,
            "requests_per_minute": 60,
            "timeout_seconds": 2.5,
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    assert r.json()["secret"] is None
    assert (r.json()["requests_per_minute"], r.json()["timeout_seconds"]) == (60, 2.5)
    assert runtime.accounts.credentials("acme", ESP)["secret"] == SECRET
    for text in (r.text, client.get(PATH).text, client.get("/api/tenants/acme").text, caplog.text):
        assert SECRET not in text


def test_delete_forgets_the_account(client: TestClient, runtime: Runtime) -> None:
    _tenant(client)
    assert client.put(PATH, json={"url": "https://h.example/x"}).status_code == 200
    r = client.delete(PATH)
    assert r.status_code == 204
    assert r.headers["Cache-Control"] == "no-store"
    assert runtime.accounts.find("acme", ESP) is None
    assert client.get(PATH).status_code == 404
    assert client.delete(PATH).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": "ftp://h.example/x"}, "url"),
        ({"url": "https://u:p@h.example/x"}, "url"),
        ({"url": "https://h.example/" + "a" * 500}, "url"),
        ({"url": 7}, "url"),
        ({"url": "https://h.example/x", "secret": "short"}, "secret"),
        ({"url": "https://h.example/x", "secret": "a b" * 20}, "secret"),
        ({"url": "https://h.example/x", "requests_per_minute": 0}, "requests_per_minute"),
        ({"url": "https://h.example/x", "requests_per_minute": 100_001}, "requests_per_minute"),
        ({"url": "https://h.example/x", "requests_per_minute": "many"}, "requests_per_minute"),
        ({"url": "https://h.example/x", "timeout_seconds": 0}, "timeout_seconds"),
        ({"url": "https://h.example/x", "timeout_seconds": 61}, "timeout_seconds"),
        ({"url": "https://h.example/x", "api_key": "pk_x"}, "api_key"),
    ],
)
def test_a_bad_field_is_422_naming_it(
    client: TestClient, runtime: Runtime, body: dict[str, Any], field: str
) -> None:
    _tenant(client)
    r = client.put(PATH, json=body)
    assert r.status_code == 422, r.text
    assert [d["loc"] for d in r.json()["detail"]] == [["body", field]]
    assert runtime.accounts.find("acme", ESP) is None
    if "secret" in body:
        assert body["secret"] not in r.text


def test_unknown_tenant_is_404(client: TestClient) -> None:
    ghost = "/api/tenants/ghost/accounts/webhook"
    r = client.put(ghost, json={"url": "https://h.example/x"})
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["tenant"]
    assert client.get(ghost).status_code == 404
    assert client.delete(ghost).status_code == 404


def test_without_a_secret_key_nothing_is_stored_409(runtime: Runtime) -> None:
    from sendflowr.api import create_app

    box = SecretBox(None)
    keyless = dataclasses.replace(runtime, box=box, accounts=AccountStore(runtime.metadata, box))
    with TestClient(create_app(keyless.settings, runtime=keyless), headers=ADMIN_HEADERS) as client:
        _tenant(client)
        r = client.put(PATH, json={"url": "https://h.example/x", "secret": SECRET})
        assert r.status_code == 409, r.text
        detail = r.json()["detail"][0]
        assert detail["type"] == "secret_key_missing"
        assert "SENDFLOWR_SECRET_KEY" in detail["msg"]
        assert SECRET not in r.text
        assert client.get(PATH).status_code == 404


# -- portability: the stored account drives the dispatcher ------------------------------------
@pytest.mark.network
def test_a_connected_account_delivers_to_its_receiver(client: TestClient, runtime: Runtime) -> None:
    _tenant(client)
    sink = WebhookSink(SECRET)
    url = sink.start()
    try:
        r = client.put(PATH, json={"url": url, "secret": SECRET})
        assert r.status_code == 200, r.text

        async def go() -> list[SendResult]:
            d = WebhookDispatcher()
            try:
                stored = runtime.accounts.credentials("acme", ESP)
                return await d.send("acme", {"event": "due"}, stored, [make_send(1)])
            finally:
                await d.aclose()

        (result,) = run(go())
        assert result.ok, result
        assert sink.stats.unique == 1
        assert sink.payloads[0]["tenant"] == "acme"
    finally:
        sink.stop()
