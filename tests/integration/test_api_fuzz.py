"""Whatever JSON a client sends, the API answers 2xx or 4xx with field-level messages."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import payload

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
# Events that are mostly right, with one field replaced by anything.
mutated_events = st.builds(
    lambda n, key, value: {**payload(n), key: value},
    st.integers(0, 50),
    st.sampled_from([*sorted(payload(0)), "extra", "event_id", "properties"]),
    json_values,
)


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert detail
        assert all(isinstance(d["loc"], list) and d["msg"] for d in detail)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values)
def test_any_json_body(client: TestClient, body: Any) -> None:
    _check(client.post("/api/events", json=body))
    _check(client.post("/api/tenants", json=body))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=st.lists(mutated_events, min_size=1, max_size=5))
def test_nearly_valid_events(client: TestClient, events: list[dict[str, Any]]) -> None:
    client.post("/api/tenants", json={"id": "acme", "name": "Acme"})
    _check(client.post("/api/events", json={"events": events}))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_any_bytes(client: TestClient, raw: bytes) -> None:
    _check(client.post("/api/events", content=raw, headers={"content-type": "application/json"}))
