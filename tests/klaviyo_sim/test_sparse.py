"""Sparse fieldsets on GET /api/events: only the listed attributes, responses still valid for
Klaviyo's spec, bad names a 400 naming the parameter."""

from __future__ import annotations

import pytest

from sendflowr.klaviyo_sim import Brand
from sendflowr.klaviyo_sim.sparse import EVENT_FIELDS
from tests.klaviyo.spec import load_spec
from tests.klaviyo_sim.conftest import HEADERS, MakeClient
from tests.klaviyo_sim.contract import validate


def test_the_allowed_names_are_the_specs() -> None:
    for path in ("/api/events", "/api/events/{id}"):
        params = load_spec()["paths"][path]["get"]["parameters"]
        spec = {
            p["name"]: frozenset(p["schema"]["items"]["enum"])
            for p in params
            if p.get("name", "").startswith("fields[")
        }
        assert spec == {f"fields[{kind}]": names for kind, names in EVENT_FIELDS.items()}


def test_only_the_listed_attributes_and_the_rest_of_each_resource(
    make_client: MakeClient, brand: Brand
) -> None:
    c = make_client()
    whole = c.get(
        "/api/events", params={"page[size]": "20", "include": "profile,metric"}, headers=HEADERS
    )
    params = {
        "page[size]": "20",
        "include": "profile,metric",
        "fields[event]": "datetime,event_properties",
        "fields[profile]": "email,location.timezone,id",
        "fields[metric]": "name",
    }
    sparse = c.get("/api/events", params=params, headers=HEADERS)
    assert sparse.status_code == 200, sparse.text
    validate(sparse)
    w, s = whole.json(), sparse.json()
    assert len(s["data"]) == len(w["data"]) == 20
    for we, se in zip(w["data"], s["data"], strict=True):
        assert se["attributes"] == {
            "event_properties": we["attributes"]["event_properties"],
            "datetime": we["attributes"]["datetime"],
        }
        assert {k: v for k, v in se.items() if k != "attributes"} == {
            k: v for k, v in we.items() if k != "attributes"
        }
    by_id = {(r["type"], r["id"]): r for r in w["included"]}
    assert [(r["type"], r["id"]) for r in s["included"]] == list(by_id)
    for r in s["included"]:
        full = by_id[(r["type"], r["id"])]
        if r["type"] == "profile":
            assert r["attributes"] == {
                "email": full["attributes"]["email"],
                "location": {"timezone": full["attributes"]["location"]["timezone"]},
            }
            assert r["relationships"] == full["relationships"]
        else:
            assert r["attributes"] == {"name": full["attributes"]["name"]}
    # The next page keeps the fieldsets.
    nxt = c.get(s["links"]["next"], headers=HEADERS)
    assert nxt.status_code == 200
    validate(nxt)
    assert set(nxt.json()["data"][0]["attributes"]) == {"datetime", "event_properties"}
    # One event, too.
    one = c.get(
        f"/api/events/{brand.events.ids[0]}",
        params={"include": "profile", "fields[profile]": "email", "fields[event]": "timestamp"},
        headers=HEADERS,
    )
    assert one.status_code == 200
    validate(one)
    assert set(one.json()["data"]["attributes"]) == {"timestamp"}
    assert set(one.json()["included"][0]["attributes"]) == {"email"}


def test_every_attribute_listed_is_the_whole_resource(make_client: MakeClient) -> None:
    c = make_client()
    base = {"page[size]": "5", "include": "profile"}
    whole = c.get("/api/events", params=base, headers=HEADERS).json()
    every = {
        **base,
        "fields[event]": "datetime,event_properties,id,timestamp,uuid",
        "fields[profile]": ",".join(sorted(EVENT_FIELDS["profile"])),
    }
    listed = c.get("/api/events", params=every, headers=HEADERS).json()
    assert listed["data"] == whole["data"]
    assert listed["included"] == whole["included"]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("fields[profile]", "email,anonymous_id"),
        ("fields[event]", "metric"),
        ("fields[metric]", ""),
        ("fields[attribution]", "name"),
    ],
)
def test_an_unknown_field_is_a_400_naming_the_parameter(
    make_client: MakeClient, param: str, value: str
) -> None:
    c = make_client()
    r = c.get("/api/events", params={"include": "profile", param: value}, headers=HEADERS)
    assert r.status_code == 400
    validate(r)
    err = r.json()["errors"][0]
    assert err["source"] == {"parameter": param}
