"""The data viewer's API beyond the summary: top campaigns and flows, the orders CSV, and the
decision listing and CSV (real chDB and SQLite, the app in process)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.api.routes import data as data_routes
from sendflowr.api.routes import decisions as decision_routes
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.events.base import EventStore
from sendflowr.storage.events.data_views import Cursor, order_cursor
from sendflowr.storage.events.rows import events_to_arrow
from sendflowr.storage.metadata.catalog import CatalogItem
from sendflowr.storage.metadata.store import Tenant
from sendflowr.timing.explanation import Explanation
from tests.conftest import ADMIN_HEADERS
from tests.factories import T0, email_hash
from tests.integration.test_event_store import new_store, store  # noqa: F401 (both backends)

TENANT = "acme"
DATA = f"/api/connector/backfill/data/{TENANT}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"executor": False, "backfill_worker": False})


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    runtime.metadata.create_tenant(Tenant(TENANT, "Acme", "UTC"))
    runtime.metadata.create_tenant(Tenant("other", "Other", "UTC"))
    with TestClient(create_app(runtime.settings, runtime=runtime), headers=ADMIN_HEADERS) as c:
        yield c


_n = iter(range(1_000_000))


def ev(
    event_type: EventType,
    *,
    tenant: str = TENANT,
    minutes: int = 0,
    person: int = 0,
    esp_event_id: str | None = None,
    **extra: Any,
) -> CanonicalEvent:
    return CanonicalEvent(
        tenant=tenant,
        esp="klaviyo",
        esp_event_id=esp_event_id or f"e-{next(_n)}",
        event_type=event_type,
        occurred_at=T0 + timedelta(minutes=minutes),
        identifiers=Identifiers(email_hash=email_hash(person)),
        **extra,
    )


def order(value: float, currency: str, minutes: int = 0, **extra: Any) -> CanonicalEvent:
    props = {"$value": value, "Currency": currency, "OrderId": f"o-{next(_n)}"}
    props.update(extra.pop("properties", {}))
    return ev(EventType.ORDERED, minutes=minutes, properties=props, **extra)


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# -- top campaigns and flows ---------------------------------------------------------------


def test_top_campaigns_and_flows_rank_by_revenue_then_clicks(
    api: TestClient, runtime: Runtime
) -> None:
    c1, c2, c3, c4 = "C1", "C2", "C3", "C4"
    duplicate = ev(EventType.CLICKED, campaign_id=c1)
    runtime.pipeline.process(
        [
            ev(EventType.RECEIVED, campaign_id=c1),
            ev(EventType.RECEIVED, campaign_id=c1, person=1),
            ev(EventType.OPENED, campaign_id=c1),
            ev(EventType.OPENED, campaign_id=c1, person=1, is_machine_open=True),
            duplicate,
            order(50.0, "USD", campaign_id=c1),
            ev(EventType.RECEIVED, campaign_id=c2),
            ev(EventType.CLICKED, campaign_id=c2),
            ev(EventType.CLICKED, campaign_id=c2, person=1),
            order(10.0, "USD", campaign_id=c3),
            order(5.0, "EUR", campaign_id=c3, person=1),
            ev(EventType.CLICKED, campaign_id=c4),
            order(20.0, "USD", flow_id="F1"),
            ev(EventType.OPENED),  # neither campaign nor flow
            order(999.0, "USD", tenant="other", campaign_id=c1),  # another tenant's
        ]
    )
    runtime.pipeline.process([duplicate])  # stored twice, counted once
    runtime.catalog.upsert(
        TENANT,
        "klaviyo",
        [
            CatalogItem("campaign", c1, "Spring Sale"),
            # Klaviyo's campaign events name the campaign's message, listed in its raw record
            CatalogItem(
                "campaign",
                "CMP-2",
                "Newsletter",
                raw={"relationships": {"campaign-messages": {"data": [{"id": c2}]}}},
            ),
            CatalogItem("flow", "F1", "Welcome Series"),
        ],
    )
    runtime.catalog.upsert("other", "klaviyo", [CatalogItem("campaign", c3, "Other's name")])

    r = api.get(f"{DATA}/top", params={"kind": "campaign"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant"] == TENANT
    assert body["kind"] == "campaign"
    assert [i["id"] for i in body["items"]] == [c1, c3, c2, c4]
    first, third, second, fourth = body["items"]
    assert first == {
        "id": c1,
        "name": "Spring Sale",
        "deliveries": 2,
        "opens": 1,  # the machine open is not a real open
        "clicks": 1,
        "orders": 1,
        "revenue": [{"currency": "USD", "revenue": 50.0}],
    }
    assert third["name"] is None  # another tenant's catalog names nothing here
    assert third["orders"] == 2
    assert third["revenue"] == [
        {"currency": "EUR", "revenue": 5.0},
        {"currency": "USD", "revenue": 10.0},
    ]
    assert (second["clicks"], fourth["clicks"]) == (2, 1)  # no revenue: more clicks first
    assert second["deliveries"] == 1
    assert second["revenue"] == []
    assert second["name"] == "Newsletter"
    assert fourth["name"] is None

    limited = api.get(f"{DATA}/top", params={"kind": "campaign", "limit": 2}).json()
    assert [i["id"] for i in limited["items"]] == [c1, c3]
    flows = api.get(f"{DATA}/top", params={"kind": "flow"}).json()
    assert flows["items"] == [
        {
            "id": "F1",
            "name": "Welcome Series",
            "deliveries": 0,
            "opens": 0,
            "clicks": 0,
            "orders": 1,
            "revenue": [{"currency": "USD", "revenue": 20.0}],
        }
    ]
    other = api.get("/api/connector/backfill/data/other/top").json()
    assert [(i["id"], i["revenue"]) for i in other["items"]] == [
        (c1, [{"currency": "USD", "revenue": 999.0}])
    ]


def test_top_rejects_bad_values_and_unknown_tenants(api: TestClient) -> None:
    assert api.get(f"{DATA}/top").json()["items"] == []  # no events yet
    for params, field in (
        ({"kind": "segment"}, "kind"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
    ):
        r = api.get(f"{DATA}/top", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", field]
    r = api.get("/api/connector/backfill/data/nobody/top")
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["tenant"]


# -- the orders CSV --------------------------------------------------------------------------


def test_orders_csv_streams_every_order_safely(
    api: TestClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_routes, "EXPORT_PAGE", 2)  # several pages for five orders
    hostile = '=HYPERLINK("http://evil.example","x")'
    runtime.pipeline.process(
        [
            order(
                12.5,
                "USD",
                minutes=0,
                campaign_id="C1",
                properties={
                    "DiscountCode": hostile,
                    "Items": [{"sku": "A"}, {"sku": "B"}],
                    "utm_source": "@mail",
                },
            ),
            # three at the same instant: pages must break the tie without losing a row
            order(1.0, "USD", minutes=60, esp_event_id="tie-a"),
            order(2.0, "USD", minutes=60, esp_event_id="tie-b"),
            order(3.0, "USD", minutes=60, esp_event_id="tie-c"),
            order(-4.0, "EUR", minutes=24 * 60, properties={"DiscountCode": "+SUM(A1)"}),
            order(7.0, "USD", tenant="other"),
        ]
    )
    r = api.get(f"{DATA}/orders.csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="{TENANT}-orders.csv"'
    rows = _csv(r.text)
    header, body = rows[0], rows[1:]
    assert tuple(header) == data_routes.ORDER_COLUMNS
    listed = api.get(f"{DATA}/orders", params={"limit": 100}).json()["orders"]
    assert len(body) == len(listed) == 5
    col = {name: i for i, name in enumerate(header)}
    assert sorted(row[col["esp_event_id"]] for row in body) == sorted(
        o["esp_event_id"] for o in listed
    )
    times = [datetime.fromisoformat(row[col["occurred_at"]]) for row in body]
    assert times == sorted(times, reverse=True)  # newest first
    by_id = {row[col["esp_event_id"]]: row for row in body}
    first = next(o for o in listed if o["campaign_id"] == "C1")
    row = by_id[first["esp_event_id"]]
    assert row[col["discount_code"]] == "'" + hostile  # not a formula in a spreadsheet
    assert row[col["value"]] == "12.5"
    assert row[col["currency"]] == "USD"
    assert row[col["item_count"]] == "2"
    assert row[col["items"]] == '[{"sku":"A"},{"sku":"B"}]'
    assert row[col["utm"]] == '{"utm_source":"@mail"}'  # JSON starts with {, left alone
    assert row[col["order_id"]] == first["order_id"]
    assert row[col["campaign_id"]] == "C1"
    assert row[col["flow_id"]] == ""
    refund = next(r for r in body if r[col["currency"]] == "EUR")
    assert refund[col["value"]] == "-4.0"  # a number we wrote is not a formula
    assert refund[col["discount_code"]] == "'+SUM(A1)"

    day = T0.date().isoformat()
    one_day = api.get(f"{DATA}/orders.csv", params={"date": day})
    assert one_day.headers["content-disposition"].endswith(f'-orders-{day}.csv"')
    # T0's day: the first order and the three ties, not the next day's refund
    assert {r[col["esp_event_id"]] for r in _csv(one_day.text)[1:]} == {
        first["esp_event_id"],
        "tie-a",
        "tie-b",
        "tie-c",
    }


def test_orders_csv_of_an_empty_tenant_has_its_header_and_bad_input_is_a_4xx(
    api: TestClient,
) -> None:
    r = api.get(f"{DATA}/orders.csv")
    assert r.status_code == 200
    assert _csv(r.text) == [list(data_routes.ORDER_COLUMNS)]
    for value in ("2024-13-01", "yesterday", "1999-12-31"):
        bad = api.get(f"{DATA}/orders.csv", params={"date": value})
        assert bad.status_code == 422, (value, bad.text)
        assert bad.json()["detail"][0]["loc"] == ["query", "date"]
    assert api.get("/api/connector/backfill/data/nobody/orders.csv").status_code == 404


# -- decisions -------------------------------------------------------------------------------


def _decide(api: TestClient, person: str, tenant: str = TENANT) -> dict[str, Any]:
    r = api.post(
        "/timing/decide",
        json={"tenant": tenant, "identifier": {"type": "email", "value": person}},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_decisions_list_newest_first_with_buffered_rows(api: TestClient, runtime: Runtime) -> None:
    # Buffered explanation rows wait an hour here: only the listing's flush can show them.
    runtime.events._explanations.max_delay_s = 3600.0
    made = [_decide(api, f"p{i}@example.test") for i in range(3)]
    other = _decide(api, "p0@example.test", tenant="other")
    assert runtime.events._explanations.pending() > 0
    r = api.get(f"/api/tenants/{TENANT}/decisions")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 3
    assert body["next_offset"] is None
    assert body["since"] is None
    refs = [d["explanation_ref"] for d in body["decisions"]]
    assert sorted(refs) == sorted(m["explanation_ref"] for m in made)
    assert other["explanation_ref"] not in refs
    created = [d["created_at"] for d in body["decisions"]]
    assert created == sorted(created, reverse=True)
    # each row says what the full explanation says
    for d in body["decisions"]:
        full = api.get(
            f"/timing/explanations/{d['explanation_ref']}", params={"tenant": TENANT}
        ).json()
        for key in (
            "decision_id",
            "universal_id",
            "intent_id",
            "target_minute_utc",
            "trigger_timestamp_utc",
            "fallback_level",
            "model_version",
            "exploration",
            "machine_opens_excluded",
            "policies",
            "suppressed",
        ):
            assert d[key] == full[key], key
        assert d["confidence_score"] == pytest.approx(full["confidence_score"], abs=1e-6)
        assert d["model_confidence"] == pytest.approx(full["model_confidence"], abs=1e-6)

    page = api.get(f"/api/tenants/{TENANT}/decisions", params={"limit": 2}).json()
    assert [d["explanation_ref"] for d in page["decisions"]] == refs[:2]
    assert page["next_offset"] == 2
    rest = api.get(f"/api/tenants/{TENANT}/decisions", params={"limit": 2, "offset": 2}).json()
    assert [d["explanation_ref"] for d in rest["decisions"]] == refs[2:]
    assert rest["next_offset"] is None

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = api.get(f"/api/tenants/{TENANT}/decisions", params={"since": future}).json()
    assert later["total"] == 0
    assert later["decisions"] == []
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert api.get(f"/api/tenants/{TENANT}/decisions", params={"since": past}).json()["total"] == 3


def test_suppressed_decisions_are_listed_as_such(api: TestClient) -> None:
    r = api.post(f"/api/tenants/{TENANT}/breaker", json={"reason": "bad list import"})
    assert r.status_code == 200, r.text
    _decide(api, "held@example.test")
    [d] = api.get(f"/api/tenants/{TENANT}/decisions").json()["decisions"]
    assert d["suppressed"] is True
    assert d["suppression_policy"] == "tenant_breaker"
    assert "bad list import" in d["suppression_reason"]
    assert d["target_minute_utc"] is None
    assert d["confidence_score"] is None
    assert d["model_confidence"] is None


def test_decisions_csv_pages_through_every_decision(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decision_routes, "EXPORT_PAGE", 2)
    made = {_decide(api, f"p{i}@example.test")["explanation_ref"] for i in range(5)}
    r = api.get(f"/api/tenants/{TENANT}/decisions.csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="{TENANT}-decisions.csv"'
    rows = _csv(r.text)
    assert tuple(rows[0]) == decision_routes.DECISION_COLUMNS
    col = {name: i for i, name in enumerate(rows[0])}
    assert {row[col["explanation_ref"]] for row in rows[1:]} == made
    assert len(rows) == 1 + 5
    listed = api.get(f"/api/tenants/{TENANT}/decisions").json()["decisions"]
    assert [row[col["explanation_ref"]] for row in rows[1:]] == [
        d["explanation_ref"] for d in listed
    ]
    assert rows[1][col["exploration"]] in ("true", "false")
    assert rows[1][col["fallback_level"]] == listed[0]["fallback_level"]
    assert float(rows[1][col["model_confidence"]]) == pytest.approx(
        listed[0]["model_confidence"], abs=1e-6
    )

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    empty = api.get(f"/api/tenants/{TENANT}/decisions.csv", params={"since": future})
    assert _csv(empty.text) == [list(decision_routes.DECISION_COLUMNS)]


@pytest.mark.parametrize("path", ["decisions", "decisions.csv"])
def test_decision_routes_reject_bad_values_and_unknown_tenants(api: TestClient, path: str) -> None:
    for since in ("2026-01-01T00:00:00", "soon", "1999-01-01T00:00:00Z"):
        r = api.get(f"/api/tenants/{TENANT}/{path}", params={"since": since})
        assert r.status_code == 422, (since, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "since"]
    if path == "decisions":
        for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
            r = api.get(f"/api/tenants/{TENANT}/{path}", params=params)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["detail"][0]["loc"] == ["query", next(iter(params))]
    r = api.get(f"/api/tenants/nobody/{path}")
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["tenant"]


# -- the event-store port itself, on every backend (test_event_store.py's fixtures) ----------


def _explanation(ref: str, at: datetime, **extra: Any) -> Explanation:
    fields: dict[str, Any] = {
        "tenant": TENANT,
        "explanation_ref": ref,
        "decision_id": "dec_" + ref,
        "universal_id": "sf_0123456789abcdef",
        "intent_id": "",
        "created_at": at,
        "model_version": "test-1",
        "target_minute_utc": at + timedelta(hours=1),
        "trigger_timestamp_utc": at + timedelta(minutes=50),
        "confidence_score": 0.5,
        "fallback_level": "global",
        "weight_personal": 0.0,
        "weight_audience": 0.0,
        "weight_global": 1.0,
        "machine_opens_excluded": 0,
    }
    fields.update(extra)
    return Explanation(**fields)


def test_store_views_on_every_backend(store: EventStore) -> None:  # noqa: F811
    events = [
        ev(EventType.RECEIVED, campaign_id="C1"),
        ev(EventType.OPENED, campaign_id="C1", is_machine_open=True),
        ev(EventType.OPENED, campaign_id="C1"),
        order(5.0, "USD", campaign_id="C1"),
        order(7.0, "EUR", campaign_id="C1"),
        ev(EventType.CLICKED, campaign_id="C2"),
        order(1.0, "USD", minutes=1, esp_event_id="o-b"),
        order(1.0, "USD", minutes=1, esp_event_id="o-a"),
    ]
    store.insert_events(events_to_arrow(events, ["sf_x"] * len(events)))
    c1, c2 = store.top_sources(TENANT, "campaign", 10)
    assert (c1.source_id, c1.deliveries, c1.opens, c1.orders) == ("C1", 1, 1, 2)
    assert c1.revenue == {"USD": 5.0, "EUR": 7.0}
    assert (c2.source_id, c2.clicks, c2.orders, c2.revenue) == ("C2", 1, 0, {})
    assert store.top_sources(TENANT, "flow", 10) == []

    pages = []
    after: Cursor | None = None
    while page := store.orders_page(TENANT, None, 2, after):
        pages.append([o["esp_event_id"] for o in page])
        after = order_cursor(page[-1])
    ids = [i for p in pages for i in p]
    assert ids[:2] == ["o-b", "o-a"]  # newest first, ties by id descending
    assert sorted(ids) == sorted(e.esp_event_id for e in events if e.event_type == "ordered")

    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    store.insert_explanations(
        [
            _explanation("exp_a", at),
            _explanation("exp_b", at),  # same instant: ties by ref descending
            _explanation(
                "exp_c",
                at + timedelta(seconds=1),
                policies=("tenant_breaker",),
                details={"suppressed": {"policy": "tenant_breaker", "reason": "paused"}},
            ),
        ]
    )
    store.buffer_explanations([_explanation("exp_d", at - timedelta(days=1))])
    assert store.count_decisions(TENANT) == 4  # the buffered row too
    assert store.count_decisions(TENANT, since=at) == 3
    assert store.count_decisions("other") == 0
    rows = store.decisions(TENANT, 10)
    assert [r.explanation_ref for r in rows] == ["exp_c", "exp_b", "exp_a", "exp_d"]
    held = rows[0]
    assert held.suppressed
    assert (held.suppression_policy, held.suppression_reason) == ("tenant_breaker", "paused")
    assert held.policies == ("tenant_breaker",)
    assert not rows[1].suppressed
    assert rows[1].suppression_policy is None
    assert rows[1].target_minute_utc == at + timedelta(hours=1)
    assert [r.explanation_ref for r in store.decisions(TENANT, 2, offset=1)] == ["exp_b", "exp_a"]
    after_b = store.decisions(TENANT, 10, after=rows[1].cursor)
    assert [r.explanation_ref for r in after_b] == ["exp_a", "exp_d"]
