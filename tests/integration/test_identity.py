"""Identity resolution through the pipeline and the API, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, ESP_PREFIX, Identifier
from sendflowr.people import features_for
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import HASH_KEY
from tests.factories import T0

KEY = HASH_KEY.encode()
_n = 0


def ev(tenant: str = "acme", **ids: Any) -> CanonicalEvent:
    global _n
    _n += 1
    email = ids.pop("email", None)
    if email is not None:
        ids["email_hash"] = hash_email(KEY, email)
    from datetime import timedelta

    return CanonicalEvent(
        tenant=tenant,
        esp="klaviyo",
        esp_event_id=f"id-{_n}",
        event_type=EventType.OPENED,
        occurred_at=T0 + timedelta(minutes=_n),
        identifiers=Identifiers(**ids),
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def rt(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Iterator[Runtime]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        settings = settings.model_copy(update={"metadata_url": url})
    runtime = Runtime.open(settings)
    for t in ("acme", "beta"):
        runtime.metadata.ensure_tenant(Tenant(t, t, "UTC"))
    try:
        yield runtime
    finally:
        runtime.events._command(f"DROP DATABASE IF EXISTS `{runtime.events.database}`")
        runtime.close()


def email_owner(rt: Runtime, email: str, tenant: str = "acme") -> str | None:
    return rt.identity.owner(tenant, Identifier(EMAIL, hash_email(KEY, email)))


def test_two_identifiers_on_one_event_link_and_the_older_id_survives(rt: Runtime) -> None:
    rt.pipeline.process([ev(email="ann@x.test"), ev(email="ann@x.test")])
    rt.pipeline.process([ev(esp_profile_id="K1")])
    older = email_owner(rt, "ann@x.test")
    younger = rt.identity.owner("acme", Identifier(ESP_PREFIX + "klaviyo", "K1"))
    assert older is not None
    assert younger is not None
    assert older != younger
    rt.pipeline.process([ev(email="ann@x.test", esp_profile_id="K1")])
    assert rt.identity.owner("acme", Identifier(ESP_PREFIX + "klaviyo", "K1")) == older
    assert rt.identity.root("acme", younger) == older
    person = rt.identity.profile("acme", younger)
    assert person.universal_id == older
    assert person.aliases == [younger]
    assert {i.kind for i in person.identifiers} == {"email", "esp:klaviyo"}
    merges = rt.identity.merge_log("acme", status="merged")
    assert [(m.survivor, m.merged) for m in merges] == [(older, younger)]
    # Both histories are the person's, from the next read on.
    stored = rt.events.profile_events("acme", rt.identity.aliases("acme", older))
    assert len(stored) == 4
    feats = features_for("acme", older, rt.events, rt.features, rt.identity)
    assert feats.count("opened") == 4


def test_limits_refuse_merges_and_log_them(rt: Runtime) -> None:
    rt.pipeline.process([ev(email="a@x.test", esp_profile_id="K1")])
    rt.pipeline.process([ev(email="b@x.test", esp_profile_id="K2")])
    rt.pipeline.process([ev(email="a@x.test", esp_profile_id="K2")] * 1)
    a, b = email_owner(rt, "a@x.test"), email_owner(rt, "b@x.test")
    assert a != b  # two Klaviyo ids cannot be one person
    refused = rt.identity.merge_log("acme", status="refused")
    assert len(refused) == 1
    assert "esp:klaviyo" in refused[0].reason
    assert refused[0].merged == b
    assert rt.identity.merge_log("acme", status="merged") == []


def test_one_shared_address_cannot_collapse_people(rt: Runtime) -> None:
    people = [ev(email=f"p{i}@x.test", esp_profile_id=f"K{i}") for i in range(30)]
    rt.pipeline.process(people)
    shared = [ev(email="info@shared.test", esp_profile_id=f"K{i}") for i in range(30)]
    rt.pipeline.process(shared)
    owners = {email_owner(rt, f"p{i}@x.test") for i in range(30)}
    assert len(owners) == 30
    # The address joined at most the one person it was first seen with...
    holder = email_owner(rt, "info@shared.test")
    assert holder in owners
    # ... every other attempt is refused, logged once and counted.
    refused = rt.identity.merge_log("acme", status="refused")
    assert refused
    assert sum(r.occurrences for r in refused) == 29


def test_blocked_values_never_link(rt: Runtime) -> None:
    rt.pipeline.process([ev(email="c@x.test", anonymous_id="undefined")])
    rt.pipeline.process([ev(email="d@x.test", anonymous_id="undefined")])
    rt.pipeline.process([ev(email="e@x.test", external_ids={"shopify": "0000"})])
    rt.pipeline.process([ev(email="f@x.test", external_ids={"shopify": "0000"})])
    owners = {email_owner(rt, f"{x}@x.test") for x in "cdef"}
    assert len(owners) == 4
    assert rt.identity.owner("acme", Identifier("anon", "undefined")) is None


def test_tenants_are_separate_people(rt: Runtime) -> None:
    rt.pipeline.process([ev(email="same@x.test"), ev("beta", email="same@x.test")])
    a, b = email_owner(rt, "same@x.test"), email_owner(rt, "same@x.test", "beta")
    assert a is not None
    assert b is not None
    assert a != b
    with pytest.raises(Exception, match="no person"):
        rt.identity.profile("beta", a)


def test_split_restores_the_person_and_moves_their_events(rt: Runtime) -> None:
    rt.pipeline.process([ev(email="g@x.test")])
    rt.pipeline.process([ev(esp_profile_id="KG")])
    g = email_owner(rt, "g@x.test")
    k = rt.identity.owner("acme", Identifier("esp:klaviyo", "KG"))
    rt.pipeline.process([ev(email="g@x.test", esp_profile_id="KG")])
    # After the merge, a Klaviyo-only event is stored under the survivor.
    rt.pipeline.process([ev(esp_profile_id="KG"), ev(esp_profile_id="KG")])
    assert g is not None
    assert k is not None
    assert len(rt.events.profile_events("acme", [g])) == 4
    merge = rt.identity.merge_log("acme", status="merged")[0]
    from sendflowr.people import split_merge

    out = split_merge("acme", merge.id, "ops@brand.test", rt.events, rt.features, rt.identity)
    assert out.split.restored == k
    assert out.split.moved_back == [Identifier("esp:klaviyo", "KG")]
    assert rt.identity.root("acme", k) == k
    assert rt.identity.owner("acme", Identifier("esp:klaviyo", "KG")) == k
    # The two Klaviyo-only events (and the linking one, whose top identifier is the email,
    # stays with g): g keeps its own 2 events, k gets back its 1 + the 2 after the merge.
    assert out.events_moved == 2
    assert len(rt.events.profile_events("acme", [g])) == 2
    assert len(rt.events.profile_events("acme", [k])) == 3
    assert rt.identity.merge_log("acme", status="split")[0].id == merge.id
    # Re-linking merges them again, the older id surviving: split then re-link is stable.
    rt.pipeline.process([ev(email="g@x.test", esp_profile_id="KG")])
    assert rt.identity.root("acme", k) == g


def test_identity_api(client: TestClient, runtime: Runtime) -> None:
    client.post("/api/tenants", json={"id": "acme", "name": "Acme"})
    runtime.pipeline.process(
        [ev(email="Zoe@X.test ", phone="+48601234567"), ev(esp_profile_id="KZ")]
    )
    runtime.pipeline.process([ev(email="zoe@x.test", esp_profile_id="KZ")])
    r = client.get(
        "/api/identity/resolve", params={"tenant": "acme", "type": "email", "value": " ZOE@x.test"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    uid = body["universal_id"]
    assert {i["type"] for i in body["identifiers"]} == {"email", "phone", "esp:klaviyo"}
    assert len(body["aliases"]) == 1
    assert body["recent_merges"][0]["status"] == "merged"
    for params in [
        {"type": "klaviyo_id", "value": "KZ"},
        {"type": "phone", "value": "+48 601 234 567"},
        {"type": "universal_id", "value": body["aliases"][0]},
    ]:
        got = client.get("/api/identity/resolve", params={"tenant": "acme", **params})
        assert got.status_code == 200, got.text
        assert got.json()["universal_id"] == uid
    assert (
        client.get(f"/api/identity/{uid}", params={"tenant": "acme"}).json()["universal_id"] == uid
    )
    assert (
        client.get(f"/api/identity/{body['aliases'][0]}", params={"tenant": "acme"}).json()[
            "universal_id"
        ]
        == uid
    )
    bad = {
        ("fax", "123"): "type",
        ("email", "not-an-address"): "value",
        ("phone", "12"): "value",
        ("anonymous", "null"): "value",
    }
    for (t, v), field in bad.items():
        r = client.get("/api/identity/resolve", params={"tenant": "acme", "type": t, "value": v})
        assert r.status_code == 422, (t, v, r.text)
        assert r.json()["detail"][0]["loc"][-1] == field
    missing = client.get(
        "/api/identity/resolve", params={"tenant": "acme", "type": "email", "value": "no@x.test"}
    )
    assert missing.status_code == 404
    assert (
        client.get("/api/identity/sf_0000000000000000", params={"tenant": "acme"}).status_code
        == 404
    )
    assert client.get("/api/identity/not-a-uid", params={"tenant": "acme"}).status_code == 422
    log = client.get("/api/identity/merges", params={"tenant": "acme"}).json()
    assert [m["status"] for m in log] == ["merged"]
    split = client.post(
        f"/api/identity/merges/{log[0]['id']}/split",
        params={"tenant": "acme"},
        json={"operator": "ops@acme.test"},
    )
    assert split.status_code == 200, split.text
    assert split.json()["merge"]["status"] == "split"
    again = client.post(
        f"/api/identity/merges/{log[0]['id']}/split",
        params={"tenant": "acme"},
        json={"operator": "ops@acme.test"},
    )
    assert again.status_code == 409
    assert (
        client.post(
            "/api/identity/merges/999/split", params={"tenant": "acme"}, json={"operator": "x"}
        ).status_code
        == 404
    )
    assert (
        client.post("/api/identity/merges/1/split", params={"tenant": "acme"}, json={}).status_code
        == 422
    )


def test_guardrails_come_from_settings(settings: Settings) -> None:
    custom = settings.model_copy(
        update={
            "identity_blocked_values": ["guest"],
            "identity_blocked_patterns": [r"^test[-_]"],
            "identity_limits": {"email": 1, "ext:shopify": 2},
        }
    )
    runtime = Runtime.open(custom)
    try:
        runtime.metadata.ensure_tenant(Tenant("acme", "acme", "UTC"))
        ident = runtime.identity
        assert ident.blocklist.blocks("Guest")
        assert ident.blocklist.blocks("test-123")
        assert ident.limits.limit("email") == 1
        assert ident.limits.limit("ext:shopify") == 2
        assert ident.limits.limit("esp:klaviyo") == 1
        runtime.pipeline.process([ev(email="one@x.test", esp_profile_id="Q1")])
        runtime.pipeline.process([ev(email="two@x.test", esp_profile_id="Q1")])
        assert runtime.identity.merge_log("acme", status="refused")  # a second email: refused
    finally:
        runtime.events._command(f"DROP DATABASE IF EXISTS `{runtime.events.database}`")
        runtime.close()


def test_owner_root_aliases_is_root_then_aliases_from_any_identifier(rt: Runtime) -> None:
    """The single decision's lookup: one query giving what root(owner()) and aliases() give."""
    rt.pipeline.process([ev(email="ann@x.test")])
    rt.pipeline.process([ev(esp_profile_id="K1")])
    rt.pipeline.process([ev(phone="+15550100200")])
    k1 = Identifier(ESP_PREFIX + "klaviyo", "K1")
    alone = rt.identity.owner("acme", k1)
    assert alone is not None
    assert rt.identity.owner_root_aliases("acme", k1) == [alone]  # no merge yet: no alias
    rt.pipeline.process([ev(email="ann@x.test", esp_profile_id="K1", phone="+15550100200")])
    root = email_owner(rt, "ann@x.test")
    assert root is not None
    expected = rt.identity.aliases("acme", root)
    assert len(expected) == 3  # the root, then the two ids merged into it
    email = Identifier(EMAIL, hash_email(KEY, "ann@x.test"))
    for ident in (email, k1, Identifier("phone", "+15550100200")):
        assert rt.identity.owner_root_aliases("acme", ident) == expected
    assert rt.identity.owner_root_aliases("acme", Identifier(ESP_PREFIX + "klaviyo", "K9")) is None
    assert rt.identity.owner_root_aliases("beta", k1) is None  # another tenant's person
