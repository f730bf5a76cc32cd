"""Data-subject erasure reaches the raw archive: after DELETE /api/identity/{universal_id} no
archived Parquet file holds the person's address, Klaviyo profile id or phone, everyone else's
rows are all still there, and `replay` into an empty event store does not bring the person
back. Real stores: chDB, SQLite, the local archive directory; only Klaviyo is simulated (its
signed webhooks)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sendflowr.archive.replay import replay
from sendflowr.archive.store import ArchiveErasure, RawArchive
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.erasure import erase_person
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL, ESP_PREFIX, PHONE, Identifier
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS, HASH_KEY, open_runtime
from tests.factories import klaviyo_webhook_item
from tests.integration.test_webhooks import FLOW_SECRET, SECRET, _deliver

KEY = HASH_KEY.encode()
ANN = {
    "email": "Ann.Lee@Example.com",
    "klaviyo": "01HANNLEE0000000000000000A",
    "phone": "+14155550101",
}
BOB = {"email": "bob@example.com", "klaviyo": "01HBOB00000000000000000000", "phone": "+14155550199"}


def _item(n: int, person: dict[str, str], *, email: str | None = None) -> dict[str, Any]:
    at = datetime.now(UTC) - timedelta(minutes=30 - n)
    attrs = {"email": email or person["email"], "phone_number": person["phone"]}
    return klaviyo_webhook_item(f"evt-{n}", person["klaviyo"], attrs, at)


@pytest.fixture
def brand(settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    from sendflowr.api import create_app

    cfg = settings.model_copy(
        update={"secret_key": SecretStr(generate_key()), "backfill_worker": False}
    )
    with open_runtime(cfg) as rt:
        rt.metadata.create_tenant(Tenant("brand", "Brand", "UTC"))
        rt.accounts.connect("brand", "klaviyo", "api_key", {"api_key": "pk_test"})
        rt.accounts.set_webhook_secret("brand", "klaviyo", SECRET)
        rt.accounts.set_webhook_secret("brand", "klaviyo", FLOW_SECRET, flow=True)
        with TestClient(create_app(cfg, runtime=rt), headers=ADMIN_HEADERS) as client:
            yield client, rt


def _every_archived_row(archive: RawArchive) -> list[dict[str, Any]]:
    """Every row of every Parquet file under the archive root, read directly (not through the
    archive's own listing)."""
    paths = [p for p in archive.fs.find(archive.root) if str(p).endswith(".parquet")]
    return [r for p in paths for r in pq.read_table(p).to_pylist()]


def _owner(rt: Runtime, ident: Identifier) -> str | None:
    return rt.identity.owner("brand", ident)


def test_erasure_removes_the_person_from_the_archive_and_replay_does_not_bring_them_back(
    brand: tuple[TestClient, Runtime],
) -> None:
    client, rt = brand
    archive = rt.archive
    assert archive is not None
    ann_items = [_item(1, ANN), _item(2, ANN, email="  ANN.LEE@example.COM "), _item(3, ANN)]
    bob_items = [_item(4, BOB), _item(5, BOB), _item(6, BOB)]
    # Two deliveries: one shared with bob, one of bob only; then a flow action for ann.
    for items in ([ann_items[0], bob_items[0], ann_items[1]], [bob_items[1], bob_items[2]],
                  [ann_items[2]]):  # fmt: skip
        r = _deliver(client, items)
        assert r.status_code == 200, r.text
        assert r.json()["dead_lettered"] == 0
    flow = client.post(
        "/api/webhook/klaviyo/brand/flow",
        json={
            "event": "Clicked Email",
            "id": "fa-ann",
            "profile": {"email": "ann.lee@example.com"},
        },
        headers={"X-SendFlowr-Flow-Secret": FLOW_SECRET},
    )
    assert flow.status_code == 200, flow.text
    assert len(_every_archived_row(archive)) == 7

    ann_email = Identifier(EMAIL, hash_email(KEY, ANN["email"]))
    uid = _owner(rt, ann_email)
    assert uid is not None
    bob_uid = _owner(rt, Identifier(EMAIL, hash_email(KEY, BOB["email"])))
    assert bob_uid is not None
    bob_events = len(rt.events.profile_events("brand", [bob_uid]))
    assert bob_events == 3
    before = {(r["kind"], r["payload"]) for r in _every_archived_row(archive)}

    r = client.delete(f"/api/identity/{uid}", params={"tenant": "brand"})
    assert r.status_code == 200, r.text
    removed = r.json()["removed"]
    assert removed["archive_rows"] == 4  # three webhook items and the flow action
    assert removed["archive_files"] == 3  # one rewritten, two left empty and deleted
    assert removed["events"] == 4

    rows = _every_archived_row(archive)
    for row in rows:
        text = f"{row['payload']} {row['context']}"
        assert "ann.lee@example.com" not in text.lower()
        assert ANN["klaviyo"] not in text
        assert "5550101" not in text
    # Bob's rows are all there, exactly as archived.
    bob_payloads = {orjson.dumps(i).decode() for i in bob_items}
    assert {r["payload"] for r in rows} == bob_payloads
    assert {(r["kind"], r["payload"]) for r in rows} <= before
    assert len(archive.files(tenant="brand")) == 2

    # Replaying the archive into an empty event store rebuilds bob, and not ann.
    rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
    rt.events.migrate()
    result = replay(rt, archive, tenant="brand")
    assert (result.rows, result.rejected) == (3, 0), result.errors
    assert rt.events.count_events("brand") == bob_events
    for ident in (ann_email, Identifier(ESP_PREFIX + "klaviyo", ANN["klaviyo"]),
                  Identifier(PHONE, ANN["phone"])):  # fmt: skip
        assert _owner(rt, ident) is None
    assert len(rt.events.profile_events("brand", [bob_uid])) == bob_events


def test_without_an_archive_erasure_still_works(
    brand: tuple[TestClient, Runtime],
) -> None:
    client, rt = brand
    assert _deliver(client, [_item(1, ANN), _item(2, BOB)]).status_code == 200
    uid = _owner(rt, Identifier(EMAIL, hash_email(KEY, ANN["email"])))
    assert uid is not None
    archive, rt.archive = rt.archive, None  # a deployment with the archive switched off
    r = client.delete(f"/api/identity/{uid}", params={"tenant": "brand"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["archive_rows"] == 0
    assert r.json()["removed"]["archive_files"] == 0
    assert archive is not None
    assert len(_every_archived_row(archive)) == 2  # untouched: nobody asked it


class _WebhookDuringErasure(RawArchive):
    """The real archive; right after the erasure's first pass, a webhook archives a delivery
    that names the person (before the graph commit): a race made deterministic."""

    passes = 0

    def erase_rows(self, *args: Any, **kwargs: Any) -> ArchiveErasure:
        done = super().erase_rows(*args, **kwargs)
        self.passes += 1
        if self.passes == 1:
            self.write(
                tenant="acme",
                esp="klaviyo",
                source="klaviyo-webhook",
                kind="klaviyo-webhook-item",
                payloads=[
                    orjson.dumps(_item(8, ANN)).decode(),
                    orjson.dumps(_item(9, BOB)).decode(),
                ],
            )
        return done


def test_a_delivery_archived_while_the_erasure_runs_is_swept_after_the_commit(
    runtime: Runtime, tmp_path: Path
) -> None:
    runtime.metadata.create_tenant(Tenant("acme", "Acme", "UTC"))
    archive = _WebhookDuringErasure(str(tmp_path / "racing-archive"))
    ann_email = Identifier(EMAIL, hash_email(KEY, ANN["email"]))
    runtime.pipeline.process(
        [
            CanonicalEvent(
                tenant="acme",
                esp="klaviyo",
                esp_event_id="evt-1",
                event_type=EventType.OPENED,
                occurred_at=datetime.now(UTC) - timedelta(hours=1),
                identifiers=Identifiers(email_hash=ann_email.value),
            )
        ]
    )
    uid = runtime.identity.owner("acme", ann_email)
    assert uid is not None
    archive.write(tenant="acme", esp="klaviyo", source="klaviyo-webhook",
                  kind="klaviyo-webhook-item",
                  payloads=[orjson.dumps(_item(1, ANN)).decode()])  # fmt: skip

    done = erase_person(
        "acme", uid, "test", identity=runtime.identity, events=runtime.events,
        features=runtime.features, triggers=runtime.triggers, metadata=runtime.metadata,
        hash_key=runtime.hash_key, archive=archive,
    )  # fmt: skip
    assert archive.passes == 2
    assert done.removed["archive_rows"] == 2  # the first pass's row and the racing one
    assert done.removed["archive_files"] == 2  # one deleted, the racing part rewritten
    rows = _every_archived_row(archive)
    assert [orjson.loads(r["payload"])["external_id"] for r in rows] == ["evt-9"]  # bob's


def test_an_unreadable_archive_fails_the_erasure_before_the_graph_and_a_retry_finishes(
    brand: tuple[TestClient, Runtime],
) -> None:
    client, rt = brand
    archive = rt.archive
    assert archive is not None
    assert _deliver(client, [_item(1, ANN), _item(2, BOB)]).status_code == 200
    uid = _owner(rt, Identifier(EMAIL, hash_email(KEY, ANN["email"])))
    assert uid is not None
    [good] = archive.files(tenant="brand")
    broken = good.path.rsplit("/", 1)[0] + "/part-000000000000-broken.parquet"
    Path(broken).write_bytes(b"not parquet")

    r = client.delete(f"/api/identity/{uid}", params={"tenant": "brand"})
    assert r.status_code == 503, r.text
    assert "the raw archive could not be read (tenant=brand/date=" in r.text
    assert "part-000000000000-broken.parquet" in r.text
    assert r.headers["retry-after"]
    assert _owner(rt, Identifier(EMAIL, hash_email(KEY, ANN["email"]))) == uid  # still there

    Path(broken).unlink()  # the operator repairs the archive; the same call then finishes
    r = client.delete(f"/api/identity/{uid}", params={"tenant": "brand"})
    assert r.status_code == 200, r.text
    assert r.json()["removed"]["archive_rows"] == 1
    assert [
        orjson.loads(row["payload"])["external_id"] for row in _every_archived_row(archive)
    ] == ["evt-2"]
