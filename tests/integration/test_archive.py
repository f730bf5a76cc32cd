"""The raw archive and `sendflowr replay`: every accepted raw payload is kept as hive-style
Parquet before the 2xx, and replaying it rebuilds the event store exactly, idempotently."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from sendflowr.archive.replay import replay
from sendflowr.archive.store import ARCHIVE_SCHEMA, RawArchive, archive_url
from sendflowr.cli import app as cli_app
from sendflowr.connectors.klaviyo.backfill import BackfillRunner, RunnerOptions
from sendflowr.klaviyo_sim import build_brand, create_sim_app
from sendflowr.runtime import Runtime
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS
from tests.factories import payload
from tests.integration.test_backfill import API_KEY, SIM_URL, _config, _factory
from tests.integration.test_webhooks import FLOW_SECRET, SECRET, _deliver, _item


def _wipe_event_store(rt: Runtime) -> None:
    """Lose the event store (the disaster replay is for) and start it empty."""
    rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
    rt.events.migrate()
    assert rt.events.count_events() == 0


# -- the archive itself ----------------------------------------------------------------------
def test_write_is_hive_partitioned_parquet_and_lists_by_tenant_and_day(tmp_path: Path) -> None:
    archive = RawArchive(str(tmp_path / "arch"))
    day1 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    day2 = day1 + timedelta(minutes=2)
    paths = archive.write(
        tenant=["a", "b", "a"],
        esp="klaviyo",
        source="api",
        kind="canonical",
        payloads=['{"n":1}', '{"n":2}', '{"n":3}'],
        event_ids=["e1", "e2", None],
        received_at=day1,
    )
    archive.write(
        tenant="a", esp="klaviyo", source="api", kind="canonical", payloads=["{}"],
        received_at=day2,
    )  # fmt: skip
    assert len(paths) == 2  # one file per tenant of the batch
    assert "/tenant=a/date=2026-03-01/part-235900" in paths[0]
    assert "/tenant=b/date=2026-03-01/" in paths[1]
    table = pq.read_table(paths[0])
    assert table.schema.equals(ARCHIVE_SCHEMA)
    assert table.column("payload").to_pylist() == ['{"n":1}', '{"n":3}']
    assert table.column("event_id").to_pylist() == ["e1", None]
    assert table.column("received_at").to_pylist()[0] == day1

    assert [(f.tenant, f.day) for f in archive.files()] == [
        ("a", date(2026, 3, 1)),
        ("b", date(2026, 3, 1)),
        ("a", date(2026, 3, 2)),
    ]
    assert [f.day for f in archive.files(tenant="a")] == [date(2026, 3, 1), date(2026, 3, 2)]
    assert [f.tenant for f in archive.files(since=date(2026, 3, 2))] == ["a"]
    assert [f.tenant for f in archive.files(until=date(2026, 3, 1))] == ["a", "b"]
    assert not list((tmp_path / "arch").rglob("*.tmp"))  # nothing half-written left behind


def test_an_fsspec_url_works_like_a_directory() -> None:
    url = f"memory://sendflowr-test-{uuid.uuid4().hex[:8]}/raw"
    archive = RawArchive(url)
    archive.write(tenant="t", esp="klaviyo", source="mock", kind="canonical", payloads=["{}"] * 3)
    files = archive.files(tenant="t")
    assert len(files) == 1
    assert f"{url.removeprefix('memory://')}/tenant=t/date=" in files[0].path
    assert archive.read(files[0]).num_rows == 3


def test_read_gives_the_archive_schema_whatever_columns_a_file_has(tmp_path: Path) -> None:
    """A file written before a column existed reads with that column as nulls, the schema's
    columns in its order (what the dataset reader's schema= gave before `read` went to
    ParquetFile on the calling thread)."""
    archive = RawArchive(str(tmp_path / "arch"))
    (path,) = archive.write(
        tenant="a", esp="klaviyo", source="api", kind="canonical", payloads=["{}", '{"n":2}'],
        event_ids=["e1", "e2"],
    )  # fmt: skip
    full = archive.read(path)
    assert full.schema.equals(ARCHIVE_SCHEMA)
    older = full.drop_columns(["event_id", "context"]).select(
        ["payload", "tenant", "esp", "source", "kind", "received_at"]
    )
    pq.write_table(older, path)
    got = archive.read(path)
    assert got.schema.equals(ARCHIVE_SCHEMA)
    assert got.column("payload").to_pylist() == ["{}", '{"n":2}']
    assert got.column("event_id").to_pylist() == [None, None]
    assert got.column("received_at").to_pylist() == full.column("received_at").to_pylist()


def test_the_setting_defaults_under_data_dir_and_can_be_switched_off(tmp_path: Path) -> None:
    assert archive_url(None, tmp_path) == str(tmp_path.resolve() / "archive")
    assert archive_url("off", tmp_path) is None
    assert archive_url("", tmp_path) is None
    assert archive_url("s3://bucket/raw", tmp_path) == "s3://bucket/raw"


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown archive kind"):
        RawArchive(str(tmp_path)).write(
            tenant="t", esp="x", source="api", kind="nope", payloads=["{}"]
        )


# -- accepted means archived, and replay rebuilds ------------------------------------------------
@pytest.fixture
def acme(runtime: Runtime) -> Runtime:
    runtime.metadata.create_tenant(Tenant("acme", "Acme", "UTC"))
    return runtime


def test_events_api_archives_then_replay_rebuilds_exactly_and_idempotently(
    acme: Runtime, client: TestClient
) -> None:
    assert acme.archive is not None
    body = [payload(n) for n in range(25)]
    assert client.post("/api/events", json={"events": body}).status_code == 200
    rows = [r for f in acme.archive.files() for r in acme.archive.read(f).to_pylist()]
    assert [orjson.loads(r["payload"]) for r in rows] == body  # the payloads as received
    assert {r["source"] for r in rows} == {"api"}
    assert all(r["event_id"] for r in rows)
    before = acme.events.count_by_type("acme")

    # Replaying over the live store stores nothing twice.
    again = replay(acme, acme.archive)
    assert (again.rows, again.rejected) == (25, 0)
    assert acme.events.count_by_type("acme") == before

    _wipe_event_store(acme)
    result = replay(acme, acme.archive, tenant="acme")
    assert (result.files, result.rows, result.stored, result.rejected) == (1, 25, 25, 0)
    assert acme.events.count_by_type("acme") == before
    replay(acme, acme.archive)
    assert acme.events.count_events("acme") == 25


def test_a_rejected_request_is_not_archived(acme: Runtime, client: TestClient) -> None:
    bad = [payload(1), payload(2, event_type="nonsense")]
    assert client.post("/api/events", json={"events": bad}).status_code == 422
    assert acme.archive is not None
    assert acme.archive.files() == []


def test_archive_down_means_503_with_retry_after_and_nothing_stored(
    acme: Runtime, client: TestClient, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the archive's directory should be")
    acme.archive = RawArchive(str(blocker))
    r = client.post("/api/events", json={"events": [payload(1)]})
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"]
    assert "raw archive" in r.text
    assert acme.events.count_events() == 0  # not accepted: the sender retries


def test_switched_off_archive_keeps_nothing(settings: Settings) -> None:
    rt = Runtime.open(settings.model_copy(update={"raw_archive_url": "off"}))
    try:
        assert rt.archive is None
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()


@pytest.fixture
def keyed(settings: Settings) -> Iterator[tuple[TestClient, Runtime]]:
    from sendflowr.api import create_app

    cfg = settings.model_copy(
        update={"secret_key": SecretStr(generate_key()), "backfill_worker": False}
    )
    rt = Runtime.open(cfg)
    try:
        rt.metadata.create_tenant(Tenant("brand", "Brand", "UTC"))
        rt.accounts.connect("brand", "klaviyo", "api_key", {"api_key": API_KEY}, api_url=SIM_URL)
        rt.accounts.set_webhook_secret("brand", "klaviyo", SECRET)
        rt.accounts.set_webhook_secret("brand", "klaviyo", FLOW_SECRET, flow=True)
        with TestClient(create_app(cfg, runtime=rt), headers=ADMIN_HEADERS) as client:
            yield client, rt
    finally:
        rt.events._command(f"DROP DATABASE IF EXISTS `{rt.events.database}`")
        rt.close()


def test_klaviyo_webhooks_flow_actions_and_backfill_replay_to_the_same_store(
    keyed: tuple[TestClient, Runtime],
) -> None:
    client, rt = keyed
    assert rt.archive is not None
    # Webhook items (one unusable: dead-lettered, not archived), then a flow action.
    items = [_item(n) for n in range(6)]
    items[5]["payload"]["data"]["attributes"].pop("datetime")
    items[5]["payload"]["data"]["attributes"].pop("timestamp")
    r = _deliver(client, items)
    assert r.status_code == 200, r.text
    assert r.json()["dead_lettered"] == 1
    flow = client.post(
        "/api/webhook/klaviyo/brand/flow",
        json={"event": "Clicked Email", "id": "fa-1", "profile": {"email": "x@example.com"}},
        headers={"X-SendFlowr-Flow-Secret": FLOW_SECRET},
    )
    assert flow.status_code == 200, flow.text
    # A backfill from the simulator.
    sim = create_sim_app(_config(), brand=build_brand(_config().sim_config()))
    now = datetime.now(UTC)
    job = rt.backfills.create_job("brand", "klaviyo", "backfill", now - timedelta(days=30), now)
    runner = BackfillRunner(
        rt, RunnerOptions(concurrency=4, page_size=100), client_factory=_factory(sim)
    )
    claimed = runner.claim(job.id)
    assert claimed is not None
    assert asyncio.run(runner.run(claimed)).status == "completed"

    kinds = {
        r["kind"] for f in rt.archive.files(tenant="brand") for r in rt.archive.read(f).to_pylist()
    }
    assert kinds == {"klaviyo-webhook-item", "klaviyo-flow-action", "klaviyo-event"}
    before = rt.events.count_by_type("brand")
    stored = sum(before.values())
    assert stored > 100

    _wipe_event_store(rt)
    result = replay(rt, rt.archive, tenant="brand")
    assert result.rejected == 0, result.errors
    assert result.rows == stored  # exactly the accepted items were archived
    assert rt.events.count_by_type("brand") == before
    replay(rt, rt.archive, tenant="brand")
    assert rt.events.count_by_type("brand") == before


def test_replay_command(acme: Runtime, client: TestClient, settings: Settings) -> None:
    assert client.post("/api/events", json={"events": [payload(n) for n in range(7)]}).is_success
    _wipe_event_store(acme)
    env = {
        "SENDFLOWR_EVENT_STORE_URL": settings.event_store_url,
        "SENDFLOWR_METADATA_URL": settings.metadata_url,
        "SENDFLOWR_DATA_DIR": str(settings.data_dir),
        "SENDFLOWR_HASH_KEY": "test-hash-key-0123456789abcdef",
        "COLUMNS": "200",
    }
    today = datetime.now(UTC).date()
    later = (today + timedelta(days=1)).isoformat()
    none = CliRunner().invoke(cli_app, ["replay", "--since", later], env=env)
    assert none.exit_code == 0, none.output
    assert "0 files" in none.output
    ok = CliRunner().invoke(
        cli_app, ["replay", "--tenant", "acme", "--until", today.isoformat()], env=env
    )
    assert ok.exit_code == 0, ok.output
    assert "1 files, 7 rows: 7 events stored, 0 rejected" in ok.output
    assert acme.events.count_events("acme") == 7
    bad = CliRunner().invoke(cli_app, ["replay", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2
    assert "--since" in bad.output
