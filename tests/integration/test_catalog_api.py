"""The catalogue route the intents page fills its binding choices from: stored campaigns and
flows, the account's metrics asked of the Klaviyo simulator over loopback, and its refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.klaviyo_sim import SimServerConfig, run_in_thread
from sendflowr.klaviyo_sim.brand import TRIGGER_METRIC
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.catalog import CatalogItem
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS, keyed_settings

pytestmark = pytest.mark.network

API_KEY = "pk_sim_catalog_test"
TENANT = "brand"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    config = SimServerConfig(
        tenant="simbrand", profiles=50, days=3, api_keys=(API_KEY,), rate_limits=False
    )
    base_url, stop = run_in_thread(config)
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture
def rt(settings: Settings, sim_url: str) -> Iterator[Runtime]:
    keyed = keyed_settings(settings)
    runtime = Runtime.open(keyed)
    try:
        runtime.metadata.create_tenant(Tenant(TENANT, "Brand", "UTC"))
        runtime.metadata.create_tenant(Tenant("bare", "No ESP", "UTC"))
        runtime.metadata.create_tenant(Tenant("refused", "Wrong key", "UTC"))
        runtime.metadata.create_tenant(Tenant("down", "Unreachable", "UTC"))
        runtime.accounts.connect(
            TENANT, "klaviyo", "api_key", {"api_key": API_KEY}, api_url=sim_url
        )
        runtime.accounts.connect(
            "refused", "klaviyo", "api_key", {"api_key": "pk_not_this_one"}, api_url=sim_url
        )
        # nothing listens on the discard port: Klaviyo "cannot be reached"
        runtime.accounts.connect(
            "down", "klaviyo", "api_key", {"api_key": API_KEY}, api_url="http://127.0.0.1:9"
        )
        yield runtime
    finally:
        drop = getattr(runtime.events, "drop_database", None)
        if drop is not None:
            drop()
        runtime.close()


@pytest.fixture
def api(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt.settings, runtime=rt), headers=ADMIN_HEADERS) as c:
        yield c


def test_stored_campaigns_and_flows_sorted_and_limited(api: TestClient, rt: Runtime) -> None:
    rt.catalog.upsert(
        TENANT,
        "klaviyo",
        [
            CatalogItem("campaign", "C2", "Spring sale", status="Sent", channel="email"),
            CatalogItem("campaign", "C1", "Autumn letter", status="Draft", channel="email"),
            CatalogItem("campaign", "C3", "Winter news", status="Sent", channel="email"),
            CatalogItem("flow", "F1", "Welcome series", status="live"),
        ],
    )
    rt.catalog.upsert("bare", "klaviyo", [CatalogItem("campaign", "X9", "Other tenant's")])
    resp = api.get(f"/api/tenants/{TENANT}/catalog", params={"kind": "campaign"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "stored"
    assert body["esp"] == "klaviyo"
    assert [(i["id"], i["name"], i["status"]) for i in body["items"]] == [
        ("C1", "Autumn letter", "Draft"),
        ("C2", "Spring sale", "Sent"),
        ("C3", "Winter news", "Sent"),
    ]
    assert body["truncated"] is False
    two = api.get(f"/api/tenants/{TENANT}/catalog", params={"kind": "campaign", "limit": 2})
    assert [i["id"] for i in two.json()["items"]] == ["C1", "C2"]
    assert two.json()["truncated"] is True
    flows = api.get(f"/api/tenants/{TENANT}/catalog", params={"kind": "flow"}).json()
    assert [i["name"] for i in flows["items"]] == ["Welcome series"]


def test_metrics_are_asked_of_klaviyo_and_include_the_trigger_metric(api: TestClient) -> None:
    resp = api.get(f"/api/tenants/{TENANT}/catalog", params={"kind": "metric"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "esp"
    names = [i["name"] for i in body["items"]]
    assert TRIGGER_METRIC in names  # not an engagement metric: the backfill never stores it
    assert "Opened Email" in names
    assert names == sorted(names)
    assert all(i["id"] for i in body["items"])


def test_unreachable_klaviyo_falls_back_to_the_stored_metrics(api: TestClient, rt: Runtime) -> None:
    rt.catalog.upsert("down", "klaviyo", [CatalogItem("metric", "M1", "Opened Email")])
    resp = api.get("/api/tenants/down/catalog", params={"kind": "metric"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["source"] == "stored"
    assert [i["name"] for i in body["items"]] == ["Opened Email"]
    assert "could not be asked" in body["note"]


@pytest.mark.parametrize(
    ("tenant", "params", "status", "loc", "words"),
    [
        ("bare", {"kind": "metric"}, 409, ["esp"], "has not connected Klaviyo"),
        ("refused", {"kind": "metric"}, 409, ["esp"], "refused the tenant's credentials"),
        ("nobody", {"kind": "campaign"}, 404, None, "nobody"),
        (TENANT, {"kind": "template"}, 422, ["query", "kind"], "campaign"),
        (TENANT, {}, 422, ["query", "kind"], "required"),
        (TENANT, {"kind": "flow", "limit": 0}, 422, ["query", "limit"], "greater than"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(
    api: TestClient,
    tenant: str,
    params: dict[str, object],
    status: int,
    loc: list[str] | None,
    words: str,
) -> None:
    resp = api.get(f"/api/tenants/{tenant}/catalog", params=params)
    assert resp.status_code == status, resp.text
    errors = resp.json()["detail"]
    assert any((loc is None or e["loc"] == loc) and words in e["msg"] for e in errors), errors


def test_a_tenant_key_sees_only_its_own_catalog(api: TestClient) -> None:
    key = api.post("/api/tenants/bare/keys", json={"name": "k", "scopes": ["read"]})
    assert key.status_code == 201, key.text
    headers = {"Authorization": f"Bearer {key.json()['key']}"}
    own = api.get("/api/tenants/bare/catalog", params={"kind": "campaign"}, headers=headers)
    assert own.status_code == 200, own.text
    other = api.get(f"/api/tenants/{TENANT}/catalog", params={"kind": "metric"}, headers=headers)
    assert other.status_code == 403
    assert api.get(f"/api/tenants/{TENANT}/catalog", params={"kind": "flow"}).status_code == 200
    anonymous = api.get(
        f"/api/tenants/{TENANT}/catalog", params={"kind": "flow"}, headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401


def test_intent_options_list_what_the_intent_fields_accept(api: TestClient) -> None:
    resp = api.get(f"/api/tenants/{TENANT}/intent-options")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "site_visit" in body["event_types"]
    assert "unsubscribed" in body["suppression_sources"]
    assert {e["esp"]: e["connected"] for e in body["esps"]} == {
        "klaviyo": True,
        "webhook": False,
    }
    bare = api.get("/api/tenants/bare/intent-options").json()
    assert not any(e["connected"] for e in bare["esps"])
    # every choice offered is accepted by the intents API (and only those)
    intent = {
        "intent_id": "opts",
        "name": "Options",
        "window_seconds": body["max_window_seconds"],
        "hot_path_signals": [
            {"event_type": t, "within_seconds": body["max_hot_path_seconds"]}
            for t in body["event_types"]
        ],
        "suppression_sources": body["suppression_sources"],
        "binding": {"esp": "klaviyo", "metric_name": TRIGGER_METRIC},
    }
    created = api.post(f"/api/tenants/{TENANT}/intents", json=intent)
    assert created.status_code == 201, created.text
    too_long = {**intent, "intent_id": "opts2", "window_seconds": body["max_window_seconds"] + 1}
    assert api.post(f"/api/tenants/{TENANT}/intents", json=too_long).status_code == 422
    assert api.get("/api/tenants/nobody/intent-options").status_code == 404
