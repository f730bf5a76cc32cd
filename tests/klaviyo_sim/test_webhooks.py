"""Webhook subscriptions, live events, and signed deliveries as Klaviyo sends them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from sendflowr.klaviyo_sim import create_sim_app, sign_webhook
from tests.klaviyo_sim.conftest import HEADERS, small_config
from tests.klaviyo_sim.contract import validate_document
from tests.klaviyo_sim.helpers import webhook_body

JSON_API = {"Content-Type": "application/vnd.api+json"}


def test_sign_webhook_is_hmac_sha256_of_body_then_timestamp() -> None:
    body, ts = b'{"data":[]}', "1700000000"
    expected = hmac.new(b"k3y", body + ts.encode(), hashlib.sha256).hexdigest()
    assert sign_webhook("k3y", body, ts) == expected
    assert sign_webhook("k3y", body, "1700000001") != expected
    assert len(expected) == 64


@dataclass
class Receiver:
    """An in-process endpoint recording what it is sent."""

    status: int = 200
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        self.calls.append((dict(request.headers), await request.body()))
        await Response(status_code=self.status)(scope, receive, send)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def sim(receiver: Receiver) -> Iterator[TestClient]:
    cfg = small_config(profiles=60, days=7)
    app = create_sim_app(cfg, webhook_transport=httpx.ASGITransport(receiver))
    with TestClient(app, base_url="http://sim.test") as c:
        yield c


def _subscribe(c: TestClient, url: str, topics: tuple[str, ...] = ()) -> str:
    r = c.post(
        "/api/webhooks", content=webhook_body(url, topics=topics), headers={**HEADERS, **JSON_API}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["id"])


def test_webhook_crud_and_topics(sim: TestClient) -> None:
    topics = [t["id"] for t in sim.get("/api/webhook-topics", headers=HEADERS).json()["data"]]
    assert "event:klaviyo.opened_email" in topics
    assert "event:klaviyo.unsubscribed_from_email_marketing" in topics
    hook = _subscribe(sim, "https://hooks.test/a")
    listed = sim.get("/api/webhooks", params={"include": "webhook-topics"}, headers=HEADERS).json()
    assert [h["id"] for h in listed["data"]] == [hook]
    assert "secret_key" not in listed["data"][0]["attributes"]
    assert {i["id"] for i in listed["included"]} == {
        "event:klaviyo.opened_email", "event:klaviyo.clicked_email",
    }  # fmt: skip
    assert sim.delete(f"/api/webhooks/{hook}", headers=HEADERS).status_code == 204
    assert sim.get(f"/api/webhooks/{hook}", headers=HEADERS).status_code == 404
    bad = webhook_body("https://hooks.test/a", topics=("event:klaviyo.nonsense",))
    r = sim.post("/api/webhooks", content=bad, headers={**HEADERS, **JSON_API})
    assert r.status_code == 400
    assert r.json()["errors"][0]["source"]["pointer"].endswith("/0/id")


def test_live_events_join_the_brand_and_are_delivered_signed(
    sim: TestClient, receiver: Receiver
) -> None:
    everything = tuple(
        t["id"] for t in sim.get("/api/webhook-topics", headers=HEADERS).json()["data"]
    )
    hook = _subscribe(sim, "https://hooks.test/all", everything)
    before = sim.get("/_sim/brand").json()
    r = sim.post("/_sim/live", json={"events": 30})
    assert r.status_code == 201
    created = r.json()["created"]
    assert len(created) == len(set(created)) == 30
    after = sim.get("/_sim/brand").json()
    assert after["events"] == before["events"] + 30
    assert after["live_events"] == 30
    # The API sees them: newest first, every id present.
    newest = sim.get(
        "/api/events", params={"sort": "-datetime", "page[size]": "30"}, headers=HEADERS
    ).json()
    assert {e["id"] for e in newest["data"]} == set(created)

    delivered: list[str] = []
    for headers, body in receiver.calls:
        ts = headers["klaviyo-timestamp"]
        assert headers["klaviyo-signature"] == sign_webhook("s3cret", body, ts)
        assert headers["klaviyo-webhook-id"] == hook
        doc = orjson.loads(body)
        assert doc["meta"]["klaviyo_webhook_id"] == hook
        assert doc["meta"]["klaviyo_account_id"] == before["account_id"]
        for item in doc["data"]:
            delivered.append(item["external_id"])
            assert item["topic"].startswith("event:")
            payload = orjson.dumps(item["payload"])
            validate_document("get", f"/api/events/{item['external_id']}", 200, payload)
            same = sim.get(
                f"/api/events/{item['external_id']}",
                params={"include": "profile,metric"},
                headers=HEADERS,
            ).json()
            assert item["payload"]["data"] == same["data"]
            assert item["payload"]["included"] == same["included"]
    assert sorted(delivered) == sorted(created)
    stats = sim.get("/_sim/stats").json()["webhook_deliveries"][hook]
    assert stats["events_delivered"] == 30
    assert stats["failed"] == 0


def test_only_subscribed_topics_are_delivered(sim: TestClient, receiver: Receiver) -> None:
    _subscribe(sim, "https://hooks.test/opens", ("event:klaviyo.opened_email",))
    created = sim.post("/_sim/live", json={"events": 40}).json()["created"]
    got = [item for _, body in receiver.calls for item in orjson.loads(body)["data"]]
    opened = [
        e for e in created
        if sim.get(f"/api/events/{e}", params={"include": "metric"}, headers=HEADERS).json()[
            "included"
        ][0]["attributes"]["name"] == "Opened Email"
    ]  # fmt: skip
    assert sorted(i["external_id"] for i in got) == sorted(opened)
    assert {i["topic"] for i in got} <= {"event:klaviyo.opened_email"}
    for item in got:
        props = item["payload"]["data"]["attributes"]["event_properties"]
        assert isinstance(props["machine_open"], bool)


def test_failed_deliveries_are_recorded(sim: TestClient, receiver: Receiver) -> None:
    receiver.status = 500
    everything = tuple(
        t["id"] for t in sim.get("/api/webhook-topics", headers=HEADERS).json()["data"]
    )
    hook = _subscribe(sim, "https://hooks.test/down", everything)
    outcome = sim.post("/_sim/live", json={"events": 5}).json()["deliveries"]
    assert [d["status"] for d in outcome] == [500]
    stats = sim.get("/_sim/stats").json()["webhook_deliveries"][hook]
    assert (stats["attempts"], stats["failed"], stats["last_error"]) == (1, 1, "HTTP 500")
