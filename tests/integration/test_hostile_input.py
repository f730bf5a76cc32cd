"""Hostile input: forged, replayed, stale and oversized webhooks; malformed JSON and wrong
content types on every JSON route; injection strings in every identifier field; unicode and
overlong emails; timestamps far in the past and future.

Each is answered with a 4xx whose detail names the field, and nothing is written: every test
compares a snapshot of every store (each metadata table's row count, the event store's count,
the files under the data directory: raw archive, dead letters) before and after.

test_webhooks.py covers the plain cases (a bad signature, a stale timestamp, one replay, a body
over 5 MB with Content-Length); test_api_fuzz.py throws random JSON at two routes. This suite
adds the attacker's variants and the no-partial-write check on every route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sendflowr.api.limits import WEBHOOK_MAX_BODY
from sendflowr.connectors.klaviyo.webhooks import sign
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, keyed_settings, klaviyo_webhook_tenant, open_runtime
from tests.factories import email_hash, klaviyo_webhook_item

SECRET = "whsec_hostile_0123456789abcdef"
OTHER_SECRET = "whsec_other_0123456789abcdef"
FLOW_SECRET = "flow_hostile_0123456789abcdef"
TENANT = "acme"
HOOK = f"/api/webhook/klaviyo/{TENANT}"

INJECTIONS = [
    "'; DROP TABLE events;--",
    "' OR '1'='1",
    '{"$ne":null}',
    '{"$gt":""}',
    "\u0000",
    "a\u0000b",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "<script>alert(1)</script>",
    "${jndi:ldap://x/a}",
    "\u202eevil",
    "x" * 5000,
]


@pytest.fixture
def hostile(settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    from sendflowr.api import create_app

    keyed = keyed_settings(settings)
    with open_runtime(keyed) as rt:
        klaviyo_webhook_tenant(rt, TENANT, "Acme", SECRET, flow_secret=FLOW_SECRET)
        klaviyo_webhook_tenant(rt, "other", "Other", OTHER_SECRET, api_key="pk_other")
        app = create_app(keyed, runtime=rt)
        with TestClient(app, headers=ADMIN_HEADERS) as client:
            yield client, rt


def snapshot(rt: Runtime) -> dict[str, int]:
    """Row counts of every metadata table, the event store's count, and the files under the
    data directory (raw archive...): equal before and after means nothing was written."""
    engine = rt.metadata.engine
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            if table in ("alembic_version", "api_keys"):
                continue  # api_keys: last_used_at touches are reads' bookkeeping
            counts[table] = int(
                conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar_one()
            )
    counts["events"] = rt.events.count_events()
    data_dir = Path(rt.settings.data_dir)
    counts["files"] = sum(1 for p in data_dir.rglob("*") if p.is_file()) if data_dir.exists() else 0
    return counts


def assert_4xx_naming(r: Any, *names: str) -> None:
    """A 4xx whose detail is a list of {loc, msg, type}, mentioning one of `names`."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, list), r.text
    assert detail, r.text
    assert all(isinstance(d["loc"], list) and d["msg"] and d["type"] for d in detail), r.text
    if names:
        text = json.dumps(detail)
        assert any(n in text for n in names), (names, r.text)


# -- webhooks ----------------------------------------------------------------------------------


def _item(n: int) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(minutes=5)
    uuid = f"00000000-0000-0000-0000-{n:012d}"
    return klaviyo_webhook_item(f"evt{n}", "prof1", {"email": "p1@example.com"}, at, uuid=uuid)


def _body(*ns: int) -> bytes:
    return orjson.dumps({"data": [_item(n) for n in ns], "meta": {}})


def _post_hook(
    client: TestClient,
    raw: bytes | Iterator[bytes],
    *,
    timestamp: str,
    signature: str,
    url: str = HOOK,
) -> Any:
    return client.post(
        url,
        content=raw,
        headers={
            "Klaviyo-Timestamp": timestamp,
            "Klaviyo-Signature": signature,
            "Klaviyo-Webhook-Id": "wh-hostile",
            "Content-Type": "application/json",
        },
    )


def test_forged_webhooks_are_401_and_write_nothing(hostile: tuple[TestClient, Runtime]) -> None:
    client, rt = hostile
    before = snapshot(rt)
    raw = _body(1, 2)
    ts = str(int(time.time()))
    forged = {
        "another tenant's secret": sign(OTHER_SECRET, raw, ts),
        "a guessed secret": sign("whsec_guess", raw, ts),
        "signed for another body": sign(SECRET, _body(3), ts),
        "signed for another timestamp": sign(SECRET, raw, str(int(ts) - 1)),
        "not hex": "zz" * 32,
        "empty": "",
        "sql in the header": "'; DROP TABLE events;--",
    }
    for why, signature in forged.items():
        r = _post_hook(client, raw, timestamp=ts, signature=signature)
        assert r.status_code == 401, (why, r.text)
        assert_4xx_naming(r)
    # The right signature on the wrong tenant's receiver.
    r = _post_hook(
        client, raw, timestamp=ts, signature=sign(SECRET, raw, ts), url="/api/webhook/klaviyo/other"
    )
    assert r.status_code == 401, r.text
    # Flow actions: a missing, wrong or other tenant's secret.
    for secret in (None, "wrong", OTHER_SECRET, "\u0000"):
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-SendFlowr-Flow-Secret"] = secret
        try:
            r = client.post(f"{HOOK}/flow", content=b'{"email": "a@example.com"}', headers=headers)
        except Exception:  # httpx refuses a NUL in a header before sending: nothing sent
            continue
        assert r.status_code == 401, r.text
    assert snapshot(rt) == before


def test_a_replayed_webhook_is_409_and_counted_once(hostile: tuple[TestClient, Runtime]) -> None:
    client, rt = hostile
    raw = _body(10, 11, 12)
    ts = str(int(time.time()))
    sig = sign(SECRET, raw, ts)
    first = _post_hook(client, raw, timestamp=ts, signature=sig)
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 3
    after_first = snapshot(rt)
    assert after_first["events"] == 3
    for _ in range(3):
        again = _post_hook(client, raw, timestamp=ts, signature=sig.upper())
        assert again.status_code == 409, again.text
        assert_4xx_naming(again, "received already")
    assert snapshot(rt) == after_first


@pytest.mark.parametrize(
    "timestamp",
    [
        "stale",  # 10 minutes old (tolerance 5)
        "future",  # 10 minutes ahead
        "0",
        "-62135596800",  # year 1
        "253402300799",  # 9999-12-31
        "99999999999999999999999999",  # overflows every datetime
        "1e308",
        "NaN",
        "",
        "2026-11-22T00:00:00Z",
    ],
)
def test_stale_future_and_absurd_timestamps_are_401(
    hostile: tuple[TestClient, Runtime], timestamp: str
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    now = int(time.time())
    ts = {"stale": str(now - 600), "future": str(now + 600)}.get(timestamp, timestamp)
    raw = _body(20)
    r = _post_hook(client, raw, timestamp=ts, signature=sign(SECRET, raw, ts))
    assert r.status_code == 401, r.text
    assert_4xx_naming(r)
    assert snapshot(rt) == before


def test_oversized_webhooks_are_413_even_without_content_length(
    hostile: tuple[TestClient, Runtime],
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    ts = str(int(time.time()))
    big = b'{"data": [' + b" " * WEBHOOK_MAX_BODY + b"]}"
    sig = sign(SECRET, big, ts)
    # Declared length over the cap: refused before the body is read.
    r = _post_hook(client, big, timestamp=ts, signature=sig)
    assert r.status_code == 413, r.text
    assert_4xx_naming(r, "body")

    # Chunked (no Content-Length): counted as it streams and cut off at the cap.
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for i in range(0, len(big), 256 * 1024):
            sent += 1
            yield big[i : i + 256 * 1024]

    r = _post_hook(client, chunks(), timestamp=ts, signature=sig)
    assert r.status_code == 413, r.text
    assert "5.0 MiB" in r.text
    r = _post_hook(client, chunks(), timestamp=ts, signature=sig, url=f"{HOOK}/flow")
    assert r.status_code == 413, r.text
    assert snapshot(rt) == before


def test_body_caps_on_json_routes(hostile: tuple[TestClient, Runtime]) -> None:
    client, rt = hostile
    before = snapshot(rt)
    filler = "x" * (2 * 1024 * 1024)
    # 2 MiB: over the 1 MiB default, under the batch and events caps.
    r = client.post("/api/tenants", json={"id": "big", "name": filler})
    assert r.status_code == 413, r.text
    assert_4xx_naming(r, "1.0 MiB")
    r = client.post(
        "/timing/decide/batch",
        json={"tenant": TENANT, "recipients": [{"type": "email", "value": filler}]},
    )
    assert r.status_code == 422, r.text  # under the batch cap: validated (value too long)
    r = client.post(
        "/api/events",
        content=b"[" * (EVENTS_CAP + 1),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    # A lying Content-Length is refused, not trusted.
    r = client.post(
        "/api/tenants",
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": "x"},
    )
    assert 400 <= r.status_code < 500, r.text
    assert snapshot(rt) == before


EVENTS_CAP = 10_000 * 2048


# -- malformed JSON and wrong content types on every JSON route -------------------------------


def _json_operations(client: TestClient) -> list[tuple[str, str]]:
    doc = client.get("/openapi.json").json()
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                filled = (
                    path.replace("{tenant}", TENANT)
                    .replace("{intent_id}", "promo")
                    .replace("{universal_id}", "sf_0000000000000000")
                    .replace("{schedule_id}", "s1")
                    .replace("{merge_id}", "1")
                    .replace("{key_id}", "k1")
                )
                out.append((method.upper(), filled))
    return out


MALFORMED = [
    b"{",
    b'{"tenant": ',
    b"[1, 2",
    b'{"a": 1,}',
    b"\xff\xfe\x00",
    b"[]",
    b'"just a string"',
    b"1e999999",
    b'{"a": ' * 10_000,
]


def test_malformed_json_on_every_json_route_is_4xx(hostile: tuple[TestClient, Runtime]) -> None:
    client, rt = hostile
    ops = _json_operations(client)
    assert len(ops) >= 15, ops  # the document lists them: not a vacuous loop
    before = snapshot(rt)
    for method, path in ops:
        for raw in MALFORMED:
            r = client.request(
                method, path, content=raw, headers={"Content-Type": "application/json"}
            )
            assert_4xx_naming(r, "body")
    assert snapshot(rt) == before


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/html; charset=utf-8",
        None,
    ],
)
def test_wrong_content_types_on_every_json_route_are_422(
    hostile: tuple[TestClient, Runtime], content_type: str | None
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    body = orjson.dumps({"tenant": TENANT, "id": "x", "name": "X"})
    for method, path in _json_operations(client):
        if path.startswith("/api/webhook/") and content_type is None:
            continue  # the receivers read raw signed bytes; an unsigned body is 401 anyway
        headers = {} if content_type is None else {"Content-Type": content_type}
        r = client.request(method, path, content=body, headers=headers)
        if path.startswith("/api/webhook/"):
            assert r.status_code in (401, 422), (path, r.text)
            continue
        assert r.status_code == 422, (method, path, r.text)
        assert_4xx_naming(r, "application/json")
    assert snapshot(rt) == before


# -- injection strings in every identifier field -----------------------------------------------


def _q(value: str) -> str:
    return quote(value, safe="")


def _decide(**body: Any) -> dict[str, Any]:
    return {"json": {"tenant": TENANT, "identifier": OK_ID, **body}}


def _who(kind: str, value: str) -> dict[str, Any]:
    return _decide(identifier={"type": kind, "value": value})


def _batch(**body: Any) -> dict[str, Any]:
    return {"json": {"tenant": TENANT, "recipients": [OK_ID], **body}}


def _schedule(recipients: list[dict[str, str]] | None = None, **body: Any) -> dict[str, Any]:
    audience = {"recipients": recipients or [OK_ID]}
    return {"json": {"tenant": TENANT, "audience": audience, **body}}


def _legacy(**body: Any) -> dict[str, Any]:
    return {"json": {"tenant": TENANT, "email": "a@b.co", **body}}


def _resolve(**params: str) -> dict[str, Any]:
    return {"params": {"tenant": TENANT, "type": "email", "value": "a@b.co", **params}}


OK_ID = {"type": "email", "value": "person@example.com"}
SCHEDULE = "/api/intents/promo/schedule"
INTENTS = f"/api/tenants/{TENANT}/intents"


def _identifier_requests(bad: str) -> list[tuple[str, str, dict[str, Any], tuple[str, ...]]]:
    """(method, url, kwargs, names the error must mention) for every identifier field."""
    email = [{"type": "email", "value": bad}]
    external = [{"type": "external_id", "value": bad}]
    binding = {"esp": "klaviyo", "metric_name": "Placed Order"}
    return [
        # tenant: path, query and body
        ("GET", f"/api/events/{_q(bad)}/counts", {}, ("tenant",)),
        ("GET", f"/api/tenants/{_q(bad)}", {}, ("tenant",)),
        ("GET", f"/api/tenants/{_q(bad)}/policy", {}, ("tenant",)),
        ("GET", "/api/identity/resolve", _resolve(tenant=bad), ("tenant",)),
        ("POST", "/timing/decide", _decide(tenant=bad), ("tenant",)),
        ("POST", "/timing/decide/batch", _batch(tenant=bad), ("tenant",)),
        ("POST", "/timing-decision", _legacy(tenant=bad), ("tenant",)),
        ("POST", "/api/tenants", {"json": {"id": bad, "name": "X"}}, ("id",)),
        ("POST", SCHEDULE, _schedule(tenant=bad), ("tenant",)),
        ("POST", "/api/events", {"json": {"events": [_event(tenant=bad)]}}, ("tenant",)),
        # email
        ("POST", "/timing/decide", _who("email", bad), ("value",)),
        ("POST", "/timing-decision", _legacy(email=bad), ("email",)),
        ("POST", "/timing/decide/batch", _batch(recipients=email), ("value",)),
        ("GET", "/api/identity/resolve", _resolve(value=bad), ("value",)),
        ("POST", SCHEDULE, _schedule(email), ("value", "intent")),
        # klaviyo_id
        ("POST", "/timing/decide", _who("klaviyo_id", bad), ("value",)),
        ("POST", "/timing-decision", _legacy(klaviyo_id=bad), ("klaviyo_id",)),
        ("GET", "/api/identity/resolve", _resolve(type="klaviyo_id", value=bad), ("value",)),
        # universal id
        ("GET", f"/api/identity/{_q(bad)}", {"params": {"tenant": TENANT}}, ("universal_id",)),
        ("DELETE", f"/api/identity/{_q(bad)}", {"params": {"tenant": TENANT}}, ("universal_id",)),
        ("POST", "/timing/decide", _who("universal_id", bad), ("value",)),
        # intent id
        ("POST", "/timing/decide", _decide(intent_id=bad), ("intent_id",)),
        ("POST", "/timing/decide/batch", _batch(intent_id=bad), ("intent_id",)),
        ("POST", f"/api/intents/{_q(bad)}/schedule", _schedule(), ("intent",)),
        ("GET", f"{INTENTS}/{_q(bad)}", {}, ("intent",)),
        ("POST", INTENTS, {"json": {"intent_id": bad, "name": "n", "binding": binding}},
         ("intent_id",)),
        # external and ESP ids
        ("POST", "/timing/decide", _who("external:crm", bad), ("value",)),
        ("POST", "/timing/decide", _who("esp:klaviyo", bad), ("value",)),
        ("POST", SCHEDULE, _schedule(external), ("value", "intent")),
        ("POST", "/timing/decide", _who(bad, "x"), ("type",)),
    ]  # fmt: skip


def _event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "tenant": TENANT,
        "esp": "klaviyo",
        "esp_event_id": "evt-1",
        "event_type": "opened",
        "occurred_at": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "identifiers": {"email_hash": email_hash(1)},
    }
    event.update(overrides)
    return event


@pytest.mark.parametrize("bad", INJECTIONS, ids=lambda s: repr(s)[:24])
def test_injection_strings_in_identifier_fields_are_4xx(
    hostile: tuple[TestClient, Runtime], bad: str
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    for method, url, kwargs, names in _identifier_requests(bad):
        r = client.request(method, url, **kwargs)
        assert 400 <= r.status_code < 500, (method, url, kwargs, r.status_code, r.text)
        assert_4xx_naming(r)
        if r.status_code == 422:
            assert_4xx_naming(r, *names)
    assert snapshot(rt) == before
    # The store is intact and still answers.
    assert client.get(f"/api/events/{TENANT}/counts").status_code == 200


@pytest.mark.parametrize("bad", ["\u0000", "a\u0000b", "\u202eevil", "x\u200by", "\x7f"])
def test_invisible_characters_in_event_ids_are_422(
    hostile: tuple[TestClient, Runtime], bad: str
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    cases = [
        (_event(esp_event_id=bad), "esp_event_id"),
        (_event(identifiers={"external_ids": {"crm": bad}}), "external_ids"),
        (_event(identifiers={"esp_profile_id": bad}), "esp_profile_id"),
        (_event(identifiers={"email_hash": email_hash(1), "anonymous_id": bad}), "anonymous_id"),
        (_event(campaign_id=bad), "campaign_id"),
    ]
    for event, field in cases:
        # One good event beside the bad one: the batch is refused whole.
        r = client.post("/api/events", json={"events": [_event(esp_event_id="good-1"), event]})
        assert r.status_code == 422, r.text
        assert_4xx_naming(r, field)
    assert snapshot(rt) == before


def test_sql_looking_event_ids_are_data_not_code(hostile: tuple[TestClient, Runtime]) -> None:
    """Canonical event ids are opaque strings (events.py): printable ones, however they look,
    are stored verbatim as one event each (parameterised queries), never executed."""
    client, rt = hostile
    printable = [s for s in INJECTIONS if s.isprintable() and len(s) < 500]
    events = [_event(esp_event_id=s, identifiers={"external_ids": {"crm": s}}) for s in printable]
    r = client.post("/api/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert rt.events.count_events(TENANT) == len(printable)
    assert client.get(f"/api/events/{TENANT}/counts").json()["total"] == len(printable)


# -- unicode and overlong emails ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "words"),
    [
        ("a" * 65 + "@example.com", "64"),
        ("a@" + "b" * 250 + ".com", "254"),
        ("x" * 400, "320"),
        ("a\u202eb@example.com", "invisible"),
        ("a\u200b@example.com", "invisible"),
        ("a\u0000@example.com", "control"),
        ("a b@example.com", "not an email"),
        ("@example.com", "not an email"),
        ("a@b@example.com", "not an email"),
        ("", "at least 1"),
    ],
)
def test_bad_emails_are_422_naming_the_value(
    hostile: tuple[TestClient, Runtime], email: str, words: str
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    r = client.post(
        "/timing/decide", json={"tenant": TENANT, "identifier": {"type": "email", "value": email}}
    )
    assert r.status_code == 422, r.text
    assert_4xx_naming(r, "value")
    assert words in r.text, r.text
    r = client.post("/timing-decision", json={"tenant": TENANT, "email": email})
    if email:  # an empty legacy email means "not given"
        assert r.status_code == 422, r.text
        assert_4xx_naming(r, "email")
    assert snapshot(rt)["events"] == before["events"]


def test_a_valid_internationalised_email_is_accepted(hostile: tuple[TestClient, Runtime]) -> None:
    """RFC 6531 addresses are real addresses: decided like any other, one person each."""
    client, _ = hostile
    first = client.post(
        "/timing/decide",
        json={"tenant": TENANT, "identifier": {"type": "email", "value": "jürgen@exämple.de"}},
    )
    assert first.status_code == 200, first.text
    again = client.post(
        "/timing/decide",
        json={"tenant": TENANT, "identifier": {"type": "email", "value": "jürgen@exämple.de"}},
    )
    assert again.json()["universal_id"] == first.json()["universal_id"]


# -- timestamps far in the past and future ----------------------------------------------------

ABSURD_TIMES: list[Any] = [
    "0001-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-13-45T99:99:99Z",
    10**20,
    -(10**20),
    1e308,
    "not a time",
]


@pytest.mark.parametrize("when", ABSURD_TIMES, ids=lambda v: repr(v)[:24])
def test_absurd_timestamps_are_422_naming_the_field(
    hostile: tuple[TestClient, Runtime], when: Any
) -> None:
    client, rt = hostile
    before = snapshot(rt)
    events = [_event(esp_event_id="good"), _event(occurred_at=when)]
    cases = [
        ("/api/events", {"json": {"events": events}}, "occurred_at"),
        ("/timing/decide", _decide(send_after=when), "send_after"),
        ("/timing/decide", _decide(send_before=when), "send_before"),
        ("/timing/decide/batch", _batch(send_after=when), "send_after"),
        ("/timing-decision", _legacy(send_before=when), "send_before"),
        (SCHEDULE, _schedule(send_after=when), "send_after"),
    ]  # fmt: skip
    for url, kwargs, field in cases:
        r = client.post(url, **kwargs)
        assert r.status_code == 422, (url, r.text)
        assert_4xx_naming(r, field)
    assert snapshot(rt) == before
