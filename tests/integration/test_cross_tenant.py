"""The cross-tenant suite: tenant A's admin key against every route of the app, aimed at tenant
B's name and B's objects (people, merges, intents, schedules, explanations, keys).

The routes are enumerated from `app.routes`, so a route added without tenant scoping fails
here (and a route with a request body fails until it has a sample body below). For each route:

- with tenant "b" wherever a tenant goes (path, query, body): 403 for an authenticated route
  (never 2xx; for a tenant in the body the exact 403 also proves the sample body was valid,
  since a body-tenant check runs after validation; a path or query tenant is checked before the
  body is read, tests/integration/test_auth_before_body.py);
- with A's own tenant but B's object ids: 404 (an id of another tenant is unknown);
- in every answer: none of B's data (markers that appear nowhere in the request).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from cryptography.fernet import Fernet
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.api import create_app
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.hashing import hash_email
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.catalog import CatalogItem
from tests.conftest import ADMIN_HEADERS, HASH_KEY

B_NAME = "Bravo Secret Brand"
B_INTENT_NAME = "bravo secret intent"
B_HOOK = "https://bravo-hooks.example.com/in"
B_BREAKER = "bravo secret breaker reason"
B_EMAIL = "bravo.person@bravo.test"
B_CAMPAIGN = "bravo secret campaign"

# Routes no key guards (docs/security.md): their answers are still checked for B's data.
OPEN = {"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
# The dashboard's page shells and sign-in: HTML without data (the pages fetch it through the
# API routes tested here), so open to anyone or a redirect to the sign-in form.
OPEN |= {"/", "/favicon.ico", "/ui", "/ui/", "/ui/login", "/ui/logout", "/ui/{slug}"}
OPEN_PREFIXES = ("/api/webhook/klaviyo/", "/api/connector/oauth/callback")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "secret_key": SecretStr(Fernet.generate_key().decode()),
            "executor": False,
            "backfill_worker": False,
        }
    )


def _events(tenant: str, n0: int) -> list[CanonicalEvent]:
    key = HASH_KEY.encode()
    now = datetime.now(UTC)

    def ev(i: int, **ids: Any) -> CanonicalEvent:
        return CanonicalEvent(
            tenant=tenant,
            esp="klaviyo",
            esp_event_id=f"x-{tenant}-{n0 + i}",
            event_type=EventType.OPENED,
            occurred_at=now - timedelta(days=2, minutes=i),
            identifiers=Identifiers(**ids),
        )

    email = hash_email(key, B_EMAIL if tenant == "b" else "alpha.person@alpha.test")
    return [
        ev(1, email_hash=email),
        ev(2, esp_profile_id=f"K-{tenant}"),
        ev(3, email_hash=email, esp_profile_id=f"K-{tenant}"),  # merges the two
    ]


def _seed(api: TestClient, rt: Runtime, tenant: str, name: str) -> dict[str, str]:
    """A tenant with people, a merge, an ESP account, an intent, a schedule, a decision with
    its explanation, policies, a tripped breaker and a key; returns the ids."""
    assert api.post("/api/tenants", json={"id": tenant, "name": name}).status_code == 201
    rt.pipeline.process(_events(tenant, 0))
    campaign = B_CAMPAIGN if tenant == "b" else "alpha campaign"
    rt.catalog.upsert(tenant, "klaviyo", [CatalogItem("campaign", f"C-{tenant}", campaign)])
    hook = B_HOOK if tenant == "b" else "https://alpha-hooks.example.com/in"
    r = api.put(f"/api/tenants/{tenant}/accounts/webhook", json={"url": hook})
    assert r.status_code == 200, r.text
    intent_name = B_INTENT_NAME if tenant == "b" else "alpha intent"
    r = api.post(
        f"/api/tenants/{tenant}/intents",
        json={
            "intent_id": f"{tenant}-welcome",
            "name": intent_name,
            "binding": {"esp": "webhook", "event": "welcome"},
        },
    )
    assert r.status_code == 201, r.text
    email = B_EMAIL if tenant == "b" else "alpha.person@alpha.test"
    r = api.post(
        f"/api/intents/{tenant}-welcome/schedule",
        json={"tenant": tenant, "audience": {"recipients": [{"type": "email", "value": email}]}},
    )
    assert r.status_code == 201, r.text
    schedule_id = r.json()["schedule_id"]
    uid = api.get(
        "/api/identity/resolve", params={"tenant": tenant, "type": "email", "value": email}
    ).json()["universal_id"]
    d = api.post(
        "/timing/decide",
        json={"tenant": tenant, "identifier": {"type": "universal_id", "value": uid}},
    )
    assert d.status_code == 200, d.text
    merges = api.get("/api/identity/merges", params={"tenant": tenant}).json()
    assert merges, "the seed events merge two ids"
    r = api.put(f"/api/tenants/{tenant}/policy", json={"quiet_hours": None})
    assert r.status_code == 200, r.text
    if tenant == "b":
        r = api.post(f"/api/tenants/{tenant}/breaker", json={"reason": B_BREAKER})
        assert r.status_code == 200, r.text
    key = api.post(f"/api/tenants/{tenant}/keys", json={"name": "k", "scopes": ["admin"]})
    assert key.status_code == 201, key.text
    return {
        "tenant": tenant,
        "uid": uid,
        "schedule_id": schedule_id,
        "intent_id": f"{tenant}-welcome",
        "ref": d.json()["explanation_ref"],
        "decision_id": d.json()["decision_id"],
        "merge_id": str(merges[0]["id"]),
        "key_id": key.json()["id"],
        "key": key.json()["key"],
    }


@pytest.fixture
def world(runtime: Runtime) -> Iterator[tuple[TestClient, TestClient, dict[str, str]]]:
    app = create_app(runtime.settings, runtime=runtime)
    with TestClient(app, headers=ADMIN_HEADERS) as operator:
        _seed(operator, runtime, "a", "Alpha Brand")
        b = _seed(operator, runtime, "b", B_NAME)
        a_key = operator.post("/api/tenants/a/keys", json={"name": "a", "scopes": ["admin"]})
        headers = {"Authorization": f"Bearer {a_key.json()['key']}"}
        with TestClient(app, headers=headers) as alice:
            yield operator, alice, b


def _path(template: str, tenant: str, b: dict[str, str]) -> str:
    values = {
        "tenant": tenant,
        "intent_id": b["intent_id"],
        "schedule_id": b["schedule_id"],
        "ref": b["ref"],
        "universal_id": b["uid"],
        "merge_id": b["merge_id"],
        "key_id": b["key_id"],
        "slug": "data",  # a dashboard page
    }

    def sub(m: re.Match[str]) -> str:
        name = m.group(1).split(":")[0]
        assert name in values, f"{template}: no sample value for path parameter {name!r}"
        return values[name]

    return re.sub(r"\{([^}]+)\}", sub, template)


def _body(method: str, template: str, tenant: str, b: dict[str, str]) -> Any:
    """A valid body for each route that takes one, aimed at `tenant` and B's objects."""
    uid = {"type": "universal_id", "value": b["uid"]}
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/api/tenants"): {"id": tenant, "name": "x"},
        ("PATCH", "/api/tenants/{tenant}"): {"name": "renamed"},
        ("POST", "/api/tenants/{tenant}/keys"): {"name": "x", "scopes": ["admin"]},
        ("POST", "/api/operator-keys"): {"name": "x", "scopes": ["admin"]},
        ("PUT", "/api/tenants/{tenant}/accounts/klaviyo"): {"api_key": "pk_" + "a" * 34},
        ("POST", "/api/tenants/{tenant}/accounts/klaviyo/webhook-secret"): {"secret": "s" * 32},
        ("POST", "/api/tenants/{tenant}/accounts/klaviyo/flow-webhook-secret"): {
            "secret": "s" * 32
        },
        ("PUT", "/api/tenants/{tenant}/accounts/webhook"): {"url": "https://evil.example/in"},
        ("POST", "/api/events"): {
            "events": [
                {
                    "tenant": tenant,
                    "esp": "klaviyo",
                    "esp_event_id": "evil-1",
                    "event_type": "opened",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "identifiers": {"esp_profile_id": "evil"},
                }
            ]
        },
        ("POST", "/api/identity/merges/{merge_id}/split"): {"operator": "evil"},
        ("POST", "/timing/decide"): {"tenant": tenant, "identifier": uid, "include_curve": True},
        ("POST", "/timing-decision"): {"tenant": tenant, "klaviyo_id": "K-b"},
        ("POST", "/timing/decide/batch"): {"tenant": tenant, "recipients": [uid]},
        ("POST", "/api/intents/{intent_id}/schedule"): {
            "tenant": tenant,
            "audience": {"recipients": [{"type": "email", "value": B_EMAIL}]},
        },
        ("POST", "/api/schedules/{schedule_id}/cancel"): {"tenant": tenant},
        ("POST", "/api/schedules/{schedule_id}/reschedule"): {
            "tenant": tenant,
            "send_after": soon,
        },
        ("POST", "/api/tenants/{tenant}/intents"): {
            "intent_id": "evil",
            "name": "evil",
            "binding": {"esp": "webhook", "event": "evil"},
        },
        ("PUT", "/api/tenants/{tenant}/intents/{intent_id}"): {
            "name": "evil",
            "binding": {"esp": "webhook", "event": "evil"},
        },
        ("PUT", "/api/tenants/{tenant}/policy"): {"quiet_hours": None},
        ("POST", "/api/tenants/{tenant}/breaker"): {"reason": "evil"},
    }
    key = (method, template)
    assert key in bodies, f"{method} {template}: add a sample body to the cross-tenant suite"
    return bodies[key]


# Query parameters a route needs besides `tenant` (aimed at B's objects).
QUERY: dict[str, dict[str, str]] = {
    "/api/identity/resolve": {"type": "universal_id", "value": "{uid}"},
    "/api/tenants/{tenant}/catalog": {"kind": "campaign"},
}
# Routes whose only input is the caller's own tenant list (no tenant, no id): 2xx is fine.
UNTARGETED = {
    ("GET", "/api/tenants"),
    ("GET", "/api/connector/backfill/status"),
    ("POST", "/api/connector/backfill/start-all"),
}
# Operator-only routes (no tenant anywhere): a tenant's key is 403 whatever it names, B's key
# id included (an operator key cannot be reached by id from a tenant key, not even as a 404).
OPERATOR_ONLY = {
    ("GET", "/api/operator-keys"),
    ("POST", "/api/operator-keys"),
    ("DELETE", "/api/operator-keys/{key_id}"),
}
# Body routes where B's objects can be named under A's own tenant.
BODY_IDS = {
    ("POST", "/timing/decide"),
    ("POST", "/timing/decide/batch"),
    ("POST", "/api/intents/{intent_id}/schedule"),
    ("POST", "/api/schedules/{schedule_id}/cancel"),
    ("POST", "/api/schedules/{schedule_id}/reschedule"),
}


def _markers(operator: TestClient, b: dict[str, str]) -> list[str]:
    return [
        B_NAME,
        B_INTENT_NAME,
        "bravo-hooks.example.com",
        B_BREAKER,
        B_CAMPAIGN,
        b["uid"],
        b["ref"],
        b["decision_id"],
        b["schedule_id"],
        b["intent_id"],
        b["key_id"],
        b["key"],
    ]


def test_no_route_lets_a_tenant_key_reach_another_tenant(
    world: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    operator, alice, b = world
    markers = _markers(operator, b)
    tried = 0
    seen: set[tuple[str, str]] = set()
    for context in iter_route_contexts(alice.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        for method in sorted((context.methods or set()) - {"HEAD", "OPTIONS"}):
            template = str(context.path)
            params = re.findall(r"\{([^}:]+)", template)
            has_tenant_query = isinstance(route, APIRoute) and any(
                p.name == "tenant" for p in route.dependant.query_params
            )
            has_body = (
                isinstance(route, APIRoute)
                and route.body_field is not None
                and not template.startswith("/ui/")  # the sign-in forms take form fields
            )
            open_route = template in OPEN or template.startswith(OPEN_PREFIXES)
            variants = ["b"]
            ids = [p for p in params if p != "tenant"]
            if ids or (method, template) in BODY_IDS:
                variants.append("a")
            for tenant in variants:
                if (method, template) in UNTARGETED and tenant == "a":
                    continue
                path = _path(template, tenant, b)
                query = {k: v.format(**b) for k, v in QUERY.get(template, {}).items()}
                if has_tenant_query:
                    query["tenant"] = tenant
                body = _body(method, template, tenant, b) if has_body else None
                r = alice.request(method, path, params=query, json=body)
                tried += 1
                seen.add((method, template))
                what = f"{method} {path} {query} {body} -> {r.status_code} {r.text[:300]}"
                request_text = f"{path} {query} {body}"
                for marker in markers:
                    if marker not in request_text:
                        assert marker not in r.text, f"B's data leaked: {marker!r} in {what}"
                if open_route or template == "/metrics":
                    if template in OPEN:
                        continue
                    assert not 200 <= r.status_code < 300, what
                    continue
                if (method, template) in UNTARGETED:
                    assert r.status_code < 300, what  # lists only A's tenants
                    continue
                expected = 403 if tenant == "b" or (method, template) in OPERATOR_ONLY else 404
                assert r.status_code == expected, what
    assert tried > 60
    assert seen >= OPERATOR_ONLY
    # B's data is all still there after A's attempts, B's key included.
    bob = {"Authorization": f"Bearer {b['key']}"}
    assert alice.get("/api/tenants/b", headers=bob).status_code == 200
    assert operator.get("/api/tenants/b").json()["name"] == B_NAME
    assert operator.get(f"/api/tenants/b/intents/{b['intent_id']}").status_code == 200
    sched = operator.get(f"/api/schedules/{b['schedule_id']}", params={"tenant": "b"})
    assert sched.json()["status"] == "planned" or sched.json()["triggers"].get("scheduled")
    breaker = operator.get("/api/tenants/b/breaker").json()
    assert breaker["tenant_breaker"]["reason"] == B_BREAKER
    assert operator.get(f"/api/identity/{b['uid']}", params={"tenant": "b"}).status_code == 200


def test_untargeted_lists_show_only_the_callers_tenant(
    world: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    operator, alice, b = world
    assert [t["id"] for t in alice.get("/api/tenants").json()] == ["a"]
    assert {t["id"] for t in operator.get("/api/tenants").json()} == {"a", "b"}
    status = alice.get("/api/connector/backfill/status")
    assert status.status_code == 200
    assert all(row["tenant"] == "a" for row in status.json())
    # B's own key works on B and nowhere else.
    bob = {"Authorization": f"Bearer {b['key']}"}
    assert alice.get("/api/tenants/b/policy", headers=bob).status_code == 200
    assert alice.get("/api/tenants/a/policy", headers=bob).status_code == 403


def test_data_views_and_exports_show_only_the_tenants_own_rows(
    world: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    operator, alice, b = world
    markers = _markers(operator, b)
    # B's decision is there to leak: the operator finds it under B
    assert b["ref"] in operator.get("/api/tenants/b/decisions.csv").text
    assert b["ref"] in operator.get("/api/tenants/b/decisions").text
    for path in (
        "/api/tenants/a/decisions",
        "/api/tenants/a/decisions.csv",
        "/api/connector/backfill/data/a/top",
        "/api/connector/backfill/data/a/orders.csv",
    ):
        r = alice.get(path)
        assert r.status_code == 200, f"{path} -> {r.status_code} {r.text[:300]}"
        for marker in markers:
            assert marker not in r.text, f"B's data leaked: {marker!r} in {path}"
    assert alice.get("/api/tenants/a/decisions").json()["total"] >= 1  # the seed decided


def _spoil(value: Any) -> Any:
    """`value` with every field but `tenant` given a value of the wrong type, and an unknown
    field added to every object: invalid everywhere except where it names its tenant."""
    if isinstance(value, dict):
        out = {k: v if k == "tenant" else _spoil(v) for k, v in value.items()}
        out["zz_unknown_field"] = [1]
        return out
    if isinstance(value, list):
        return [_spoil(v) for v in value] or [{"zz": 1}]
    if isinstance(value, str):
        return 12345
    if value is None:
        return {"zz": 1}
    return "spoiled"  # numbers and booleans


def test_another_tenants_key_and_an_invalid_body_is_403_on_every_route(
    world: tuple[TestClient, TestClient, dict[str, str]],
) -> None:
    """A's key with a body that names B but is otherwise invalid: 403, the same answer as with
    a valid body, wherever B is named (path, query or body), so A learns nothing of a route's
    validation for B. With A's own tenant the same spoiled body is a 422: it is invalid."""
    operator, alice, b = world
    body_tenant = 0
    for context in iter_route_contexts(alice.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        template = str(context.path)
        if not isinstance(route, APIRoute) or route.body_field is None:
            continue
        if template in OPEN or template.startswith((*OPEN_PREFIXES, "/ui/")):
            continue
        has_tenant_query = any(p.name == "tenant" for p in route.dependant.query_params)
        for method in sorted((context.methods or set()) - {"HEAD", "OPTIONS"}):
            for tenant, expected in (("b", {403}), ("a", {400, 422})):
                operator_route = (method, template) in OPERATOR_ONLY | {("POST", "/api/tenants")}
                if operator_route and tenant == "a":
                    continue  # A's key may not call it at all
                valid = _body(method, template, tenant, b)
                named = "tenant" in orjson.dumps(valid).decode()
                body_tenant += named and tenant == "b"
                query = {k: v.format(**b) for k, v in QUERY.get(template, {}).items()}
                if has_tenant_query:
                    query["tenant"] = tenant
                path = _path(template, tenant, b)
                variants = [_spoil(valid)]
                if isinstance(valid, dict) and "tenant" in valid:
                    variants.append({"tenant": tenant, "zz_unknown_field": [1]})
                for spoiled in variants:
                    r = alice.request(method, path, params=query, json=spoiled)
                    what = f"{method} {path} {query} {spoiled} -> {r.status_code} {r.text[:300]}"
                    assert r.status_code in expected, what
                    if tenant == "b":
                        assert r.json()["detail"][0]["type"] == "forbidden", what
    assert body_tenant >= 7  # decide, batch, legacy, events, schedule, cancel, reschedule
    # Nothing was written for B meanwhile (its one schedule, intact).
    got = operator.get("/api/schedules", params={"tenant": "b"}).json()
    assert [s["schedule_id"] for s in got] == [b["schedule_id"]]
