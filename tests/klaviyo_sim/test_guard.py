"""Credentials, the revision header, media types and rate limits."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from sendflowr.connectors.klaviyo.constants import RATE_LIMITS, RateLimit
from sendflowr.klaviyo_sim.ratelimit import RateLimiter
from tests.klaviyo_sim.conftest import API_KEY, HEADERS, FakeClock, MakeClient
from tests.klaviyo_sim.contract import validate

AUTH = {"Authorization": f"Klaviyo-API-Key {API_KEY}"}


@pytest.mark.parametrize(
    "headers",
    [
        {"revision": "2026-07-15"},
        {"revision": "2026-07-15", "Authorization": "Klaviyo-API-Key pk_wrong"},
        {"revision": "2026-07-15", "Authorization": f"Token {API_KEY}"},
        {"revision": "2026-07-15", "Authorization": "Bearer not-a-token"},
    ],
)
def test_missing_or_invalid_credentials_are_401(
    client: TestClient, headers: dict[str, str]
) -> None:
    r = client.get("/api/metrics", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/vnd.api+json"
    assert r.json()["errors"][0]["code"] == "not_authenticated"
    validate(r)


@pytest.mark.parametrize(
    ("revision", "ok"),
    [
        (None, False),
        ("2026-07-15", True),
        ("2024-10-15", True),
        ("2024-02-15.pre", True),
        ("2026-07-16", False),
        ("2026-13-01", False),
        ("latest", False),
    ],
)
def test_revision_header(client: TestClient, revision: str | None, ok: bool) -> None:
    headers = dict(AUTH)
    if revision is not None:
        headers["revision"] = revision
    r = client.get("/api/metrics", headers=headers)
    assert r.status_code == (200 if ok else 400), r.text
    if not ok:
        assert r.json()["errors"][0]["source"] == {"parameter": "revision"}


def test_body_media_type_is_checked(client: TestClient) -> None:
    r = client.post("/api/events", content=b"{}", headers={**HEADERS, "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["errors"][0]["code"] == "unsupported_media_type"


def test_every_api_response_reports_rate_limits(client: TestClient) -> None:
    r = client.get("/api/events", headers=HEADERS)
    assert r.headers["RateLimit-Limit"] == "3500"
    assert int(r.headers["RateLimit-Remaining"]) == 3500
    for path in ("/api/events/nope", "/api/flows", "/api/metrics"):
        assert "RateLimit-Limit" in client.get(path, headers=HEADERS).headers


def test_burst_limit_gives_429_with_retry_after(make_client: MakeClient) -> None:
    clock = FakeClock()
    # Scaled 1/100: GET /api/events allows 4 a second (3.5 rounded to even) and 35 a minute.
    c = make_client(rate_limits=True, rate_limit_scale=0.01, clock=clock)
    codes = [c.get("/api/events", headers=HEADERS).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 200, 429]
    r = c.get("/api/events", headers=HEADERS)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert r.headers["RateLimit-Remaining"] == "0"
    assert r.json()["errors"][0]["code"] == "throttled"
    # Another operation and another credential have their own windows.
    assert c.get("/api/metrics", headers=HEADERS).status_code == 200
    clock.advance(1.0)
    assert c.get("/api/events", headers=HEADERS).status_code == 200


def test_steady_limit_per_minute(make_client: MakeClient) -> None:
    clock = FakeClock()
    c = make_client(rate_limits=True, rate_limit_scale=0.01, clock=clock)
    ok = 0
    for _ in range(40):
        r = c.get("/api/events", headers=HEADERS)
        if r.status_code == 200:
            ok += 1
        else:
            assert int(r.headers["Retry-After"]) >= 1
        clock.advance(0.5)  # 2 a second: under the burst, over the minute
    assert ok == 35
    clock.advance(60)
    assert c.get("/api/events", headers=HEADERS).status_code == 200


def test_rate_limits_can_be_switched_off_at_run_time(make_client: MakeClient) -> None:
    c = make_client(rate_limits=True, rate_limit_scale=0.001)
    assert c.get("/api/accounts", headers=HEADERS).status_code == 200
    assert c.get("/api/accounts", headers=HEADERS).status_code == 429
    c.post("/_sim/settings", json={"rate_limits": False})
    assert c.get("/api/accounts", headers=HEADERS).status_code == 200


def test_limiter_defaults_are_klaviyos_published_limits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RATE_LIMITS, clock)
    op = ("GET", "/api/events")
    assert limiter.limits(op) == (350, 3500)
    decisions = [limiter.hit("k", op) for _ in range(351)]
    assert all(d is not None and d.allowed for d in decisions[:350])
    last = decisions[-1]
    assert last is not None
    assert not last.allowed
    assert last.retry_after == 1
    one = RateLimiter({op: RateLimit(1, 2)}, clock)
    assert one.hit("k", op) is not None
    assert limiter.hit("k", ("GET", "/not/limited")) is None


def test_per_minute_window_slides(make_client: MakeClient) -> None:
    clock = FakeClock()
    limiter = RateLimiter({("GET", "/x"): RateLimit(10, 3)}, clock)
    for _ in range(3):
        d = limiter.hit("k", ("GET", "/x"))
        assert d is not None
        assert d.allowed
        clock.advance(10)
    d = limiter.hit("k", ("GET", "/x"))
    assert d is not None
    assert not d.allowed
    assert d.retry_after == 30  # the first request leaves the window at t=60
    clock.advance(30)
    d = limiter.hit("k", ("GET", "/x"))
    assert d is not None
    assert d.allowed
