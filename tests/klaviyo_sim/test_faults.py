"""Faults on demand through /_sim/faults, and the counts /_sim/stats keeps."""

from __future__ import annotations

import json
import time

import pytest
from starlette.testclient import TestClient

from tests.klaviyo_sim.conftest import HEADERS


def fault(c: TestClient, **body: object) -> None:
    r = c.post("/_sim/faults", json=body)
    assert r.status_code == 201, r.text


def test_5xx_hits_the_next_n_matching_requests(client: TestClient) -> None:
    fault(client, kind="5xx", count=2, path_prefix="/api/events", status=502)
    assert client.get("/api/metrics", headers=HEADERS).status_code == 200  # other path
    codes = [client.get("/api/events", headers=HEADERS).status_code for _ in range(3)]
    assert codes == [502, 502, 200]
    stats = client.get("/_sim/stats").json()["operations"]["GET /api/events"]
    assert (stats["requests"], stats["5xx"], stats["2xx"]) == (3, 2, 1)


def test_method_filter_and_clearing(client: TestClient) -> None:
    fault(client, kind="5xx", count=5, method="POST")
    assert client.get("/api/events", headers=HEADERS).status_code == 200
    assert len(client.get("/_sim/faults").json()["pending"]) == 1
    assert client.delete("/_sim/faults").json() == {"cleared": 1}
    assert client.get("/_sim/faults").json()["pending"] == []


def test_429_storm(client: TestClient) -> None:
    fault(client, kind="429_storm", count=3, delay_seconds=7)
    for _ in range(3):
        r = client.get("/api/events", headers=HEADERS)
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "7"
        assert r.json()["errors"][0]["code"] == "throttled"
    assert client.get("/api/events", headers=HEADERS).status_code == 200
    assert client.get("/_sim/stats").json()["operations"]["GET /api/events"]["429"] == 3


def test_timeout_waits_then_504(client: TestClient) -> None:
    fault(client, kind="timeout", delay_seconds=0.2)
    began = time.perf_counter()
    r = client.get("/api/events", headers=HEADERS)
    assert time.perf_counter() - began >= 0.2
    assert r.status_code == 504


def test_slow_answers_normally_after_the_delay(client: TestClient) -> None:
    fault(client, kind="slow", delay_seconds=0.2)
    began = time.perf_counter()
    r = client.get("/api/events", params={"page[size]": "3"}, headers=HEADERS)
    assert time.perf_counter() - began >= 0.2
    assert r.status_code == 200
    assert len(r.json()["data"]) == 3


def test_truncate_cuts_the_body_under_the_promised_length(client: TestClient) -> None:
    fault(client, kind="truncate")
    r = client.get("/api/events", params={"page[size]": "20"}, headers=HEADERS)
    assert len(r.content) < int(r.headers["content-length"])
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)


@pytest.mark.parametrize(
    "body",
    [{"kind": "meteor"}, {"kind": "5xx", "count": 0}, {"kind": "5xx", "status": 404}, []],
)
def test_bad_fault_requests(client: TestClient, body: object) -> None:
    assert client.post("/_sim/faults", json=body).status_code == 400


def test_controls_answer_loopback_only(make_client: object) -> None:
    from sendflowr.klaviyo_sim.control import allowed
    from sendflowr.klaviyo_sim.state import Ctx

    class _Client:
        def __init__(self, host: str) -> None:
            self.host = host

    class _Request:
        def __init__(self, host: str) -> None:
            self.client = _Client(host)

    class _Config:
        allow_remote_control = False

    class _State:
        config = _Config()

    def ctx(host: str) -> Ctx:
        return Ctx(_Request(host), _State(), {}, ("GET", "/_sim/stats"))  # type: ignore[arg-type]  # duck-typed stand-ins

    assert allowed(ctx("127.0.0.1"))
    assert allowed(ctx("::1"))
    assert not allowed(ctx("10.1.2.3"))


def test_stats_reset(client: TestClient) -> None:
    client.get("/api/events", headers=HEADERS)
    assert client.get("/_sim/stats").json()["events_served"] == 200
    assert client.delete("/_sim/stats").status_code == 204
    assert client.get("/_sim/stats").json()["operations"] == {}
