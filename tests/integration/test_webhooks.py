"""Signed Klaviyo webhooks and flow actions: signature, tolerance, replay, malformed bodies,
durability and harmless duplicates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.connectors.klaviyo.webhooks import (
    WebhookAuthError,
    parse_timestamp,
    sign,
    verify,
)
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, klaviyo_webhook_tenant, open_runtime

SECRET = "whsec_test_0123456789abcdef"
FLOW_SECRET = "flow_secret_0123456789abcdef"
URL = "/api/webhook/klaviyo/brand"


@pytest.fixture
def keyed_client(settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    from sendflowr.api import create_app

    keyed = settings.model_copy(
        update={"secret_key": SecretStr(generate_key()), "backfill_worker": False}
    )
    with open_runtime(keyed) as rt:
        klaviyo_webhook_tenant(rt, "brand", "Brand", SECRET, flow_secret=FLOW_SECRET)
        with TestClient(create_app(keyed, runtime=rt), headers=ADMIN_HEADERS) as client:
            yield client, rt


def _item(n: int, metric: str = "Opened Email", **props: Any) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(minutes=5)
    event = {
        "type": "event",
        "id": f"evt{n}",
        "attributes": {
            "timestamp": int(at.timestamp()),
            "datetime": at.isoformat(),
            "uuid": f"00000000-0000-0000-0000-{n:012d}",
            "event_properties": {"$message": "msg1", **props},
        },
        "relationships": {
            "profile": {"data": {"type": "profile", "id": f"prof{n % 3}"}},
            "metric": {"data": {"type": "metric", "id": "M1"}},
        },
    }
    included = [
        {
            "type": "profile",
            "id": f"prof{n % 3}",
            "attributes": {"email": f"person{n % 3}@example.com"},
        },
        {"type": "metric", "id": "M1", "attributes": {"name": metric}},
    ]
    return {
        "external_id": f"evt{n}",
        "topic": "event:klaviyo.opened_email",
        "payload": {"data": event, "included": included},
    }


def _deliver(
    client: TestClient,
    items: list[dict[str, Any]],
    *,
    secret: str = SECRET,
    timestamp: str | None = None,
    body: bytes | None = None,
    signature: str | None = None,
) -> Any:
    raw = body if body is not None else orjson.dumps({"data": items, "meta": {}})
    ts = timestamp or str(int(time.time()))
    headers = {
        "Klaviyo-Timestamp": ts,
        "Klaviyo-Signature": signature or sign(secret, raw, ts),
        "Klaviyo-Webhook-Id": "wh1",
        "Content-Type": "application/json",
    }
    return client.post(URL, content=raw, headers=headers)


def test_sign_and_verify() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    ts = str(int(now.timestamp()))
    sig = sign("k", b"{}", ts)
    verify(secret="k", body=b"{}", timestamp=ts, signature=sig, now=now, tolerance=timedelta(0))
    with pytest.raises(WebhookAuthError, match="does not match"):
        verify(
            secret="k", body=b"{ }", timestamp=ts, signature=sig, now=now, tolerance=timedelta(0)
        )
    with pytest.raises(WebhookAuthError, match="s from now"):
        verify(
            secret="k",
            body=b"{}",
            timestamp=ts,
            signature=sig,
            now=now + timedelta(minutes=6),
            tolerance=timedelta(minutes=5),
        )
    assert parse_timestamp("2026-11-22T12:00:00Z") == now
    assert parse_timestamp(str(int(now.timestamp()) * 1000)) == now


def test_a_signed_delivery_is_stored_before_2xx_and_duplicates_are_harmless(
    keyed_client: tuple[TestClient, Runtime],
) -> None:
    client, rt = keyed_client
    items = [_item(n) for n in range(5)]
    r = _deliver(client, items)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 5, "accepted": 5, "ignored": 0, "dead_lettered": 0}
    assert rt.events.count_events("brand") == 5  # durable when the 2xx is sent
    # Klaviyo retries with a new timestamp (a new signature): the same events, no duplicate.
    later = str(int(time.time()) + 1)
    assert _deliver(client, items, timestamp=later).status_code == 200
    assert rt.events.count_events("brand") == 5
    # Deleting the tenant deletes its events too.
    assert client.delete("/api/tenants/brand").status_code == 204
    assert rt.events.count_events("brand") == 0


def test_replayed_delivery_is_refused(keyed_client: tuple[TestClient, Runtime]) -> None:
    client, _ = keyed_client
    ts = str(int(time.time()))
    items = [_item(1)]
    assert _deliver(client, items, timestamp=ts).status_code == 200
    again = _deliver(client, items, timestamp=ts)
    assert again.status_code == 409
    assert "received already" in again.text


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"secret": "wrong-secret"}, "does not match"),
        ({"signature": "0" * 64}, "does not match"),
        ({"timestamp": str(int(time.time()) - 301)}, "s from now"),
        ({"timestamp": str(int(time.time()) + 3600)}, "s from now"),
        ({"timestamp": "yesterday"}, "neither unix"),
    ],
)
def test_bad_signature_or_stale_timestamp_is_401(
    keyed_client: tuple[TestClient, Runtime], kwargs: dict[str, Any], reason: str
) -> None:
    client, rt = keyed_client
    r = _deliver(client, [_item(1)], **kwargs)
    assert r.status_code == 401
    assert reason in r.text
    assert rt.events.count_events("brand") == 0


def test_missing_headers_and_unknown_tenant_are_401(
    keyed_client: tuple[TestClient, Runtime],
) -> None:
    client, _ = keyed_client
    r = client.post(URL, content=b'{"data": []}')
    assert r.status_code == 401
    assert "Klaviyo-Timestamp" in r.text
    r = client.post("/api/webhook/klaviyo/nobody", content=b'{"data": []}')
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b"{not json", []),
        (b"[1, 2]", []),
        (b'{"data": {}}', ["data"]),
        (b'{"data": [1]}', ["data", 0]),
        (b'{"data": [], "meta": {"klaviyo_webhook_id": "other"}}', ["meta", "klaviyo_webhook_id"]),
    ],
)
def test_malformed_body_is_400_naming_the_field(
    keyed_client: tuple[TestClient, Runtime], body: bytes, loc: list[Any]
) -> None:
    client, _ = keyed_client
    r = _deliver(client, [], body=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["body", *loc]


def test_unusable_items_are_kept_as_dead_letters_and_other_topics_ignored(
    keyed_client: tuple[TestClient, Runtime],
) -> None:
    client, rt = keyed_client
    broken = _item(2)
    broken["payload"]["data"]["attributes"]["datetime"] = "not a time"
    broken["payload"]["data"]["attributes"].pop("timestamp")
    sms = _item(3, metric="Received SMS")
    r = _deliver(client, [_item(1), broken, sms])
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 3, "accepted": 1, "ignored": 1, "dead_lettered": 1}
    [letter] = rt.metadata.list_dead_letters("brand")
    assert "data[1]" in letter.reason
    assert "datetime" in letter.reason


def test_oversized_body_is_413(keyed_client: tuple[TestClient, Runtime]) -> None:
    client, _ = keyed_client
    r = _deliver(client, [], body=b" " * (5 * 1024 * 1024 + 1))
    assert r.status_code == 413


def test_machine_opens_are_flagged(keyed_client: tuple[TestClient, Runtime]) -> None:
    client, _ = keyed_client
    assert _deliver(client, [_item(1, machine_open=True), _item(2)]).status_code == 200
    summary = client.get("/api/connector/backfill/data/brand/summary").json()
    assert summary["events_by_type"] == {"opened": 2}
    assert summary["machine_open_share"] == 0.5


def test_flow_action(keyed_client: tuple[TestClient, Runtime]) -> None:
    client, rt = keyed_client
    body = {
        "id": "flow-step-1-abc",
        "event": "Received Email",
        "profile": {"email": "Person@Example.com", "id": "prof1"},
        "flow_id": "F1",
    }
    url = f"{URL}/flow"
    assert client.post(url, json=body).status_code == 401
    assert (
        client.post(url, json=body, headers={"X-SendFlowr-Flow-Secret": "nope"}).status_code == 401
    )
    ok = client.post(url, json=body, headers={"X-SendFlowr-Flow-Secret": FLOW_SECRET})
    assert ok.status_code == 200, ok.text
    assert rt.events.count_by_type("brand") == {"received": 1}
    bad = client.post(
        url,
        json={**body, "event": "Teleported"},
        headers={"X-SendFlowr-Flow-Secret": FLOW_SECRET},
    )
    assert bad.status_code == 400
    assert bad.json()["detail"][0]["loc"] == ["body", "event"]
    naive = client.post(
        url,
        json={**body, "occurred_at": "2026-01-01T00:00:00"},
        headers={"X-SendFlowr-Flow-Secret": FLOW_SECRET},
    )
    assert naive.status_code == 400
    assert "time zone" in naive.text
