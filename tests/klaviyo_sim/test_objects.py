"""Accounts, metrics, profiles, campaigns, send jobs, flows, list and segment members."""

from __future__ import annotations

from starlette.testclient import TestClient

from sendflowr.klaviyo_sim import Brand
from tests.klaviyo_sim.conftest import HEADERS, FakeClock, MakeClient

EMAIL = {"filter": "equals(messages.channel,'email')"}


def test_account(client: TestClient, brand: Brand) -> None:
    doc = client.get("/api/accounts", headers=HEADERS).json()
    assert [a["id"] for a in doc["data"]] == [brand.account_id]
    assert doc["data"][0]["attributes"]["timezone"] == brand.config.brand_tz


def test_metrics_are_klaviyos_names_with_stable_ids(client: TestClient, brand: Brand) -> None:
    doc = client.get("/api/metrics", headers=HEADERS).json()
    names = {m["attributes"]["name"]: m["id"] for m in doc["data"]}
    assert set(names) == {
        "Received Email", "Opened Email", "Clicked Email", "Bounced Email",
        "Marked Email as Spam", "Unsubscribed from Email Marketing", "Placed Order",
        "Active on Site", "Viewed Product", "SendFlowr Send",
    }  # fmt: skip
    assert all(len(i) == 6 and i.isalnum() for i in names.values())
    api = client.get(
        "/api/metrics", params={"filter": "equals(integration.name,'API')"}, headers=HEADERS
    ).json()
    assert {m["attributes"]["name"] for m in api["data"]} == {
        "Placed Order", "Active on Site", "Viewed Product", "SendFlowr Send",
    }  # fmt: skip
    one = client.get(f"/api/metrics/{names['Opened Email']}", headers=HEADERS).json()
    assert one["data"]["attributes"]["integration"]["name"] == "Klaviyo"


def test_profiles_by_email_and_id_and_paging(client: TestClient, brand: Brand) -> None:
    p = brand.profiles[7]
    by_email = client.get(
        "/api/profiles", params={"filter": f'equals(email,"{p.email}")'}, headers=HEADERS
    ).json()
    assert [d["id"] for d in by_email["data"]] == [p.id]
    attrs = by_email["data"][0]["attributes"]
    assert attrs["location"]["timezone"] == p.tz
    assert attrs["email"] == p.email
    by_id = client.get(f"/api/profiles/{p.id}", headers=HEADERS).json()
    assert by_id["data"]["attributes"]["email"] == p.email
    seen: list[str] = []
    r = client.get("/api/profiles", params={"page[size]": "100"}, headers=HEADERS)
    while True:
        doc = r.json()
        assert len(doc["data"]) <= 100
        seen.extend(d["id"] for d in doc["data"])
        if "next" not in doc["links"]:
            break
        r = client.get(doc["links"]["next"], headers=HEADERS)
    assert sorted(seen) == seen == sorted(p.id for p in brand.profiles)
    assert len(client.get("/api/profiles", headers=HEADERS).json()["data"]) == 20
    assert (
        client.get("/api/profiles", params={"page[size]": "101"}, headers=HEADERS).status_code
        == 400
    )


def test_profiles_any_filter_and_sort(client: TestClient, brand: Brand) -> None:
    emails = [brand.profiles[i].email for i in (1, 2, 3)]
    listed = ",".join(f"'{e}'" for e in emails)
    doc = client.get(
        "/api/profiles",
        params={"filter": f"any(email,[{listed}])", "sort": "-email"},
        headers=HEADERS,
    ).json()
    assert [d["attributes"]["email"] for d in doc["data"]] == sorted(emails, reverse=True)


def test_campaigns_need_a_channel_filter(client: TestClient, brand: Brand) -> None:
    r = client.get("/api/campaigns", headers=HEADERS)
    assert r.status_code == 400
    assert r.json()["errors"][0]["source"] == {"parameter": "filter"}
    doc = client.get("/api/campaigns", params=EMAIL, headers=HEADERS).json()
    assert {c["id"] for c in doc["data"]} == {c.id for c in brand.campaigns}
    first = doc["data"][0]["attributes"]
    assert first["status"] == "Sent"
    assert first["send_time"] is not None
    sms = client.get(
        "/api/campaigns", params={"filter": "equals(messages.channel,'sms')"}, headers=HEADERS
    ).json()
    assert sms["data"] == []
    named = client.get(
        "/api/campaigns",
        params={
            "filter": f"equals(messages.channel,'email'),contains(name,'{brand.campaigns[0].name}')"
        },
        headers=HEADERS,
    ).json()
    assert [c["id"] for c in named["data"]] == [brand.campaigns[0].id]
    # Campaign messages are how an event's $message maps to its campaign.
    rel = doc["data"][0]["relationships"]["campaign-messages"]["data"]
    assert rel[0]["type"] == "campaign-message"


def test_campaign_send_job_progresses(make_client: MakeClient, brand: Brand) -> None:
    clock = FakeClock()
    c = make_client(clock=clock, send_job_seconds=30)
    ident = brand.campaigns[0].id
    body = {"data": {"type": "campaign-send-job", "id": ident}}
    h = {**HEADERS, "Content-Type": "application/vnd.api+json"}
    r = c.post("/api/campaign-send-jobs", json=body, headers=h)
    assert r.status_code == 202
    assert r.json()["data"]["attributes"]["status"] == "queued"
    status = c.get(f"/api/campaign-send-jobs/{ident}", headers=HEADERS).json()
    assert status["data"]["attributes"]["status"] == "processing"
    clock.advance(31)
    status = c.get(f"/api/campaign-send-jobs/{ident}", headers=HEADERS).json()
    assert status["data"]["attributes"]["status"] == "complete"
    assert c.post("/api/campaign-send-jobs", json=body, headers=h).status_code == 409
    missing = {"data": {"type": "campaign-send-job", "id": "nope"}}
    assert c.post("/api/campaign-send-jobs", json=missing, headers=h).status_code == 404
    assert c.get("/api/campaign-send-jobs/nope", headers=HEADERS).status_code == 404


def test_flows(client: TestClient, brand: Brand) -> None:
    doc = client.get("/api/flows", headers=HEADERS).json()
    flows = {f["id"]: f["attributes"] for f in doc["data"]}
    assert set(flows) == {f.id for f in brand.flows}
    assert {a["status"] for a in flows.values()} == {"live"}
    assert {a["trigger_type"] for a in flows.values()} == {"Added to List", "Metric"}
    assert client.get("/api/flows", params={"page[size]": "51"}, headers=HEADERS).status_code == 400
    one = client.get(f"/api/flows/{brand.flows[0].id}", headers=HEADERS).json()
    assert one["data"]["attributes"]["name"] == brand.flows[0].name


def test_list_and_segment_members(client: TestClient, brand: Brand) -> None:
    seen: list[str] = []
    r = client.get("/api/lists/SimList/profiles", params={"page[size]": "100"}, headers=HEADERS)
    while True:
        doc = r.json()
        seen.extend(d["id"] for d in doc["data"])
        assert all("joined_group_at" in d["attributes"] for d in doc["data"])
        if "next" not in doc["links"]:
            break
        r = client.get(doc["links"]["next"], headers=HEADERS)
    assert sorted(seen) == sorted(p.id for p in brand.profiles)
    seg = client.get(
        "/api/segments/SimEngaged/profiles",
        params={"page[size]": "100", "sort": "-joined_group_at"},
        headers=HEADERS,
    ).json()
    joined = [d["attributes"]["joined_group_at"] for d in seg["data"]]
    assert joined == sorted(joined, reverse=True)
    assert 0 < len(brand.segment_members) < len(brand.profiles)
    assert client.get("/api/segments/SimList/profiles", headers=HEADERS).status_code == 404
    too_big = client.get(
        "/api/lists/SimList/profiles", params={"page[size]": "101"}, headers=HEADERS
    )
    assert too_big.status_code == 400
