"""Operator keys over the API (/api/operator-keys), on SQLite and PostgreSQL: created once and
stored hashed, listed without secrets, revoked at once (in every process), only for an admin
operator key, and never the last admin operator key by itself."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sendflowr.api import create_app
from sendflowr.errors import ConflictError
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.keys import KeyStore
from sendflowr.storage.metadata.tables import api_keys
from tests.conftest import ADMIN_HEADERS, open_runtime

BASE = "/api/operator-keys"


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _settings(
    request: pytest.FixtureRequest, settings: Settings, *, bootstrap_key: bool
) -> Settings:
    update: dict[str, object] = {"executor": False, "backfill_worker": False}
    if not bootstrap_key:
        update["admin_api_key"] = None
    if request.param == "postgresql":
        update["metadata_url"] = request.getfixturevalue("postgres_url")
    return settings.model_copy(update=update)


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def rt(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    """With the settings key (SENDFLOWR_ADMIN_API_KEY) configured, as `sendflowr run` has."""
    with open_runtime(_settings(request, settings, bootstrap_key=True)) as runtime:
        yield runtime


@pytest.fixture(params=BACKENDS)
def bare_rt(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Runtime]:
    """Without a settings key: stored operator keys (`sendflowr keys create --all-tenants`) only."""
    with open_runtime(_settings(request, settings, bootstrap_key=False)) as runtime:
        yield runtime


def _create(c: TestClient, headers: dict[str, str], name: str, *scopes: str) -> dict[str, Any]:
    r = c.post(BASE, json={"name": name, "scopes": list(scopes)}, headers=headers)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


def test_operator_key_lifecycle(rt: Runtime) -> None:
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        r = c.post("/api/tenants", json={"id": "acme", "name": "A"}, headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text
        r = c.post(BASE, json={"name": "grafana", "scopes": ["read"]}, headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text
        assert r.headers["Cache-Control"] == "no-store"
        made = r.json()
        key = made["key"]
        assert re.fullmatch(r"sfk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
        assert key.startswith(f"sfk_{made['id']}_")
        assert (made["tenant"], made["name"], made["scope"]) == (None, "grafana", "read")
        ops = _create(c, ADMIN_HEADERS, "ops", "read", "admin")
        assert (ops["scope"], ops["scopes"]) == ("admin", ["read", "write", "admin"])

        # Stored hashed: neither secret is in the database.
        with rt.metadata.engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(sa.select(api_keys)).mappings()]
        assert {row["id"] for row in rows} == {made["id"], ops["id"]}
        assert all(row["tenant"] is None for row in rows)
        for secret in (key, ops["key"], key.split("_", 2)[2], ops["key"].split("_", 2)[2]):
            assert secret not in repr(rows)

        # The read key reaches every tenant's data, but cannot manage keys.
        assert c.get("/api/tenants/acme", headers=_h(key)).status_code == 200
        assert c.get(BASE, headers=_h(key)).status_code == 403
        r = c.post(BASE, json={"name": "x", "scopes": ["admin"]}, headers=_h(key))
        assert r.status_code == 403
        assert "'write'" in r.json()["detail"][0]["msg"]  # the method's scope, checked first

        # Listed (newest last) without any secret, last use recorded.
        listed = c.get(BASE, headers=_h(ops["key"]))
        assert listed.status_code == 200
        assert listed.headers["Cache-Control"] == "no-store"
        rows_out = listed.json()
        assert [k["id"] for k in rows_out] == [made["id"], ops["id"]]
        assert all("key" not in k for k in rows_out)
        assert key not in listed.text
        assert ops["key"] not in listed.text
        assert rows_out[0]["last_used_at"] is not None  # the read key was used above

        # Revoked at once: its next request is 401. Twice is a no-op; it stays listed.
        assert c.delete(f"{BASE}/{made['id']}", headers=_h(ops["key"])).status_code == 204
        gone = c.get("/api/tenants/acme", headers=_h(key))
        assert gone.status_code == 401
        assert gone.headers["WWW-Authenticate"].startswith("Bearer")
        assert c.delete(f"{BASE}/{made['id']}", headers=_h(ops["key"])).status_code == 204
        assert c.get(BASE, headers=ADMIN_HEADERS).json()[0]["revoked_at"] is not None

        # A tenant's key is not an operator key: 404 here (revoke it under its tenant).
        t = c.post(
            "/api/tenants/acme/keys", json={"name": "t", "scopes": ["admin"]}, headers=ADMIN_HEADERS
        ).json()
        r = c.delete(f"{BASE}/{t['id']}", headers=ADMIN_HEADERS)
        assert r.status_code == 404
        assert r.json()["detail"][0]["loc"] == ["key_id"]
        assert c.get("/api/tenants/acme", headers=_h(t["key"])).status_code == 200
        assert c.delete(f"{BASE}/0123456789ab", headers=ADMIN_HEADERS).status_code == 404
        r = c.delete(f"{BASE}/not-an-id", headers=ADMIN_HEADERS)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["path", "key_id"]
        r = c.post(BASE, json={"name": "x", "scopes": ["root"]}, headers=ADMIN_HEADERS)
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"][:2] == ["body", "scopes"]

        # A tenant's admin key, a write operator key: 403 on every operator-key route.
        write = _create(c, ADMIN_HEADERS, "automation", "write")
        for who, why in ((t["key"], "needs an operator key"), (write["key"], "'admin' scope")):
            for method, path, body in (
                ("GET", BASE, None),
                ("POST", BASE, {"name": "x", "scopes": ["admin"]}),
                ("DELETE", f"{BASE}/{ops['id']}", None),
            ):
                r = c.request(method, path, json=body, headers=_h(who))
                assert r.status_code == 403, (method, r.text)
                assert why in r.json()["detail"][0]["msg"], (method, r.text)
        assert c.get(BASE, headers=_h(ops["key"])).status_code == 200  # nothing was revoked


def test_the_last_admin_operator_key_cannot_revoke_itself(bare_rt: Runtime) -> None:
    rt = bare_rt
    first = KeyStore(rt.metadata, rt.hash_key).create(None, "first", "admin")  # the CLI's way
    one = _h(first.plaintext)
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        assert c.get("/api/tenants", headers=ADMIN_HEADERS).status_code == 401  # no settings key
        read = _create(c, one, "reader", "read")  # a read operator key does not count
        r = c.delete(f"{BASE}/{first.key.id}", headers=one)
        assert r.status_code == 409, r.text
        err = r.json()["detail"][0]
        assert (err["loc"], err["type"]) == (["key_id"], "conflict")
        assert "last active admin operator key" in err["msg"]
        assert c.get(BASE, headers=one).status_code == 200  # still works

        second = _create(c, one, "second", "admin")
        two = _h(second["key"])
        # Another admin operator key exists: now the first may go, and is refused at once.
        assert c.delete(f"{BASE}/{first.key.id}", headers=one).status_code == 204
        assert c.get(BASE, headers=one).status_code == 401
        # The second is now the last one.
        assert c.delete(f"{BASE}/{second['id']}", headers=two).status_code == 409
        # Revoking another key is never refused (the caller stays).
        assert c.delete(f"{BASE}/{read['id']}", headers=two).status_code == 204
        states = {k["id"]: k["revoked_at"] for k in c.get(BASE, headers=two).json()}
        assert states[second["id"]] is None
        assert states[first.key.id] is not None
        assert states[read["id"]] is not None


def test_with_the_settings_key_a_stored_admin_key_may_revoke_itself(rt: Runtime) -> None:
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        only = _create(c, ADMIN_HEADERS, "only", "admin")
        # SENDFLOWR_ADMIN_API_KEY is an admin operator key too: nobody is locked out.
        assert c.delete(f"{BASE}/{only['id']}", headers=_h(only["key"])).status_code == 204
        assert c.get(BASE, headers=_h(only["key"])).status_code == 401
        assert c.get(BASE, headers=ADMIN_HEADERS).status_code == 200


def test_rival_self_revocations_leave_one_admin_key(bare_rt: Runtime) -> None:
    """Two last admin operator keys revoking themselves at the same moment: one wins, one is 409
    (the check and the update cannot interleave)."""
    store = KeyStore(bare_rt.metadata, bare_rt.hash_key)
    for _ in range(5):
        made = [store.create(None, f"rival-{i}", "admin").key.id for i in range(2)]
        barrier = threading.Barrier(2)
        results: dict[str, str] = {}

        def revoke(
            key_id: str, barrier: threading.Barrier = barrier, results: dict[str, str] = results
        ) -> None:
            barrier.wait()
            try:
                store.revoke_operator(key_id, caller=key_id)
                results[key_id] = "revoked"
            except ConflictError:
                results[key_id] = "conflict"

        threads = [threading.Thread(target=revoke, args=(k,)) for k in made]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results.values()) == ["conflict", "revoked"], results
        live = [k for k in store.list(operators=True) if not k.revoked and k.scope == "admin"]
        assert len(live) == 1
        # reset: the survivor is revoked from the CLI (no guard there) for the next round
        store.revoke(live[0].id, None, any_tenant=True)


def test_revocation_reaches_another_process_at_once(rt: Runtime) -> None:
    """Keys are not cached: an API process other than the one revoking refuses the key on its
    next request (two apps on one metadata store, each with its own auth state)."""
    with (
        TestClient(create_app(rt.settings, runtime=rt)) as a,
        TestClient(create_app(rt.settings, runtime=rt)) as b,
    ):
        made = _create(a, ADMIN_HEADERS, "roaming", "admin")
        assert b.get(BASE, headers=_h(made["key"])).status_code == 200
        assert a.delete(f"{BASE}/{made['id']}", headers=ADMIN_HEADERS).status_code == 204
        assert b.get(BASE, headers=_h(made["key"])).status_code == 401


def test_operator_key_routes_are_documented(rt: Runtime) -> None:
    with TestClient(create_app(rt.settings, runtime=rt)) as c:
        doc = c.get("/openapi.json").json()
    ops = doc["paths"][BASE]
    one = doc["paths"][BASE + "/{key_id}"]
    ref = {"$ref": "#/components/schemas/ErrorOut"}
    expected = {
        ("post", BASE): {"201", "401", "403", "409", "413", "422", "429", "503"},
        ("get", BASE): {"200", "401", "403", "429", "503"},
        ("delete", BASE + "/{key_id}"): {"204", "401", "403", "404", "409", "422", "429"},
    }
    for (method, path), codes in expected.items():
        responses = (ops if path == BASE else one)[method]["responses"]
        assert codes <= set(responses), (method, path, sorted(responses))
        for code in codes - {"200", "201", "204", "422"}:  # 422: FastAPI's own schema
            assert responses[code]["content"]["application/json"]["schema"] == ref
    assert "KeyCreatedOut" in str(ops["post"]["responses"]["201"])
    assert ops["post"]["tags"] == ["keys"]
