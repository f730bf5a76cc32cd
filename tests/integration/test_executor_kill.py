"""The executor under crashes and competition: a `sendflowr worker` killed with SIGKILL while a
claimed batch is in flight loses nothing and sends nothing twice once a worker restarts, and
several workers on one database never fire the same trigger twice (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from sendflowr.execution.executor import Executor, ExecutorOptions
from sendflowr.execution.registry import dispatchers
from sendflowr.execution.webhook_sink import WebhookSink
from sendflowr.intents import Intent
from sendflowr.klaviyo_sim import SimServerConfig, run_in_thread
from sendflowr.klaviyo_sim.brand import TRIGGER_METRIC
from sendflowr.runtime import Runtime
from sendflowr.scheduling.audience import Recipient
from sendflowr.scheduling.service import ScheduleRequest, schedule
from sendflowr.secrets import generate_key
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant

API_KEY = "pk_sim_executor_kill"
TENANT = "brand"
SINK_SECRET = "sink-secret-0123456789abcdef0123456789"
HASH_KEY = "kill-test-hash-key-0123456789abcdef"
DEADLINE = 120.0


@pytest.fixture
def sim_url() -> Iterator[str]:
    config = SimServerConfig(
        tenant="simbrand", profiles=50, days=3, api_keys=(API_KEY,), rate_limits=False
    )
    base_url, stop = run_in_thread(config)
    try:
        yield base_url
    finally:
        stop()


def _open(settings: Settings, secret: str, metadata_url: str | None = None) -> Runtime:
    update: dict[str, object] = {
        "secret_key": SecretStr(secret),
        "backfill_worker": False,
        "executor": False,
        "hash_key": SecretStr(HASH_KEY),
    }
    if metadata_url is not None:
        update["metadata_url"] = metadata_url
    return Runtime.open(settings.model_copy(update=update))


def _campaign(rt: Runtime, intent: Intent, n: int) -> list[str]:
    """n triggers due now: a one-minute window at the earliest whole minute a send can land
    with a 3-minute latency, so every trigger time (target - 3 min) has passed or is now."""
    latency = 180
    now = datetime.now(UTC)
    earliest = now + timedelta(seconds=latency)
    start = earliest.replace(second=0, microsecond=0) + timedelta(minutes=1)
    rt.intents.create(intent, "test")
    record = schedule(
        rt,
        ScheduleRequest(
            intent,
            [Recipient("email", f"p{i}@example.test") for i in range(n)],
            start,
            start + timedelta(minutes=1),
            latency_seconds=latency,
        ),
    )
    ids = [t.decision_id for t in rt.triggers.page(record.id, limit=10_000)]
    assert len(ids) == n
    return ids


def _statuses(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return dict(
            conn.execute("SELECT status, count(*) FROM triggers GROUP BY status").fetchall()
        )
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()


@pytest.mark.network
@pytest.mark.slow
def test_worker_killed_mid_send_resumes_without_loss_or_duplicates(
    sim_url: str, settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "meta.db"
    secret = generate_key()
    rt = _open(settings, secret, f"sqlite:///{db}")
    try:
        rt.metadata.create_tenant(Tenant(TENANT, "Brand", "UTC"))
        rt.accounts.connect(TENANT, "klaviyo", "api_key", {"api_key": API_KEY}, api_url=sim_url)
        intent = Intent(TENANT, "letter", "Letter", "klaviyo", {"metric_name": TRIGGER_METRIC})
        ids = _campaign(rt, intent, 250)
    finally:
        rt.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDFLOWR_")}
    env.update(
        SENDFLOWR_EVENT_STORE_URL=f"chdb://{data}/events",
        SENDFLOWR_METADATA_URL=f"sqlite:///{db}",
        SENDFLOWR_DATA_DIR=str(data),
        SENDFLOWR_SECRET_KEY=secret,
        SENDFLOWR_HASH_KEY=HASH_KEY,
        SENDFLOWR_LOG_LEVEL="warning",
    )
    command = [sys.executable, "-m", "sendflowr", "worker", "--poll", "0.2"]
    command += ["--lease-seconds", "3", "--claim", "100"]
    with httpx.Client(base_url=sim_url, timeout=10) as sim:
        # the first bulk job hangs: the worker is killed while Klaviyo holds it
        sim.post(
            "/_sim/faults",
            json={
                "kind": "slow",
                "count": 1,
                "delay_seconds": 6,
                "path_prefix": "/api/event-bulk-create-jobs",
            },
        )
        first = subprocess.Popen(command, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + DEADLINE
            while _statuses(db).get("sending", 0) == 0:
                assert time.monotonic() < deadline, "the worker never claimed"
                assert first.poll() is None, "the worker exited"
                time.sleep(0.05)
            time.sleep(1.0)  # the claimed batch is in flight now
            first.kill()
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        stranded = _statuses(db)
        assert stranded.get("sending", 0) > 0, stranded

        second = subprocess.Popen(command, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + DEADLINE
            while _statuses(db) != {"sent": len(ids)}:
                assert time.monotonic() < deadline, _statuses(db)
                assert second.poll() is None, "the restarted worker exited"
                time.sleep(0.2)
        finally:
            second.terminate()
            second.wait(10)
        time.sleep(6)  # the killed worker's hung request completes at the sim meanwhile
        created = sim.get("/_sim/stats", params={"include_ids": "true"}).json()["created_events"]
    # Every decision reached Klaviyo; a batch sent again after the crash carries the same
    # unique ids, which Klaviyo deduplicates: one event per decision.
    assert sorted(created["unique_ids"]) == sorted(ids)
    assert created["unique"] == len(ids)
    assert created["received"] >= len(ids)


def _race(rt_factory: list[Runtime], ids: list[str], sink: WebhookSink) -> None:
    async def main() -> None:
        executors = [
            Executor(rt, dispatchers(rt), options=ExecutorOptions(claim_limit=37))
            for rt in rt_factory
        ]
        late = datetime.now(UTC) + timedelta(minutes=5)
        for e in executors:
            e.clock = lambda: late

        async def drain(e: Executor) -> None:
            while (await e.run_once()).claimed:
                pass

        await asyncio.gather(*(drain(e) for e in executors))
        for e in executors:
            await e.aclose()

    asyncio.run(main())
    stats = sink.stats
    assert stats.unique == len(ids)
    assert stats.duplicates == 0


def _webhook_campaign(rt: Runtime, sink: WebhookSink, n: int) -> list[str]:
    rt.metadata.create_tenant(Tenant(TENANT, "Brand", "UTC"))
    rt.accounts.connect(
        TENANT,
        "webhook",
        "hmac",
        {"url": sink.url, "secret": SINK_SECRET, "requests_per_minute": 100_000},
    )
    intent = Intent(TENANT, "letter", "Letter", "webhook", {"event": "letter", "max_batch": 10})
    return _campaign(rt, intent, n)


@pytest.mark.network
def test_concurrent_workers_never_fire_a_trigger_twice_sqlite(
    settings: Settings, tmp_path: Path
) -> None:
    sink = WebhookSink(SINK_SECRET)
    sink.start()
    secret = generate_key()
    url = f"sqlite:///{tmp_path}/race.db"
    rt = _open(settings, secret, url)
    others = [_open(settings, secret, url) for _ in range(3)]
    try:
        ids = _webhook_campaign(rt, sink, 400)
        _race([rt, *others], ids, sink)
        assert rt.triggers.counts(rt.triggers.list_schedules(TENANT)[0].id) == {"sent": 400}
    finally:
        for r in others:
            r.close()
        rt.close()
        sink.stop()


@pytest.mark.network
@pytest.mark.postgres
def test_concurrent_workers_never_fire_a_trigger_twice_postgres(
    settings: Settings, postgres_url: str
) -> None:
    sink = WebhookSink(SINK_SECRET)
    sink.start()
    secret = generate_key()
    rt = _open(settings, secret, postgres_url)
    others = [_open(settings, secret, postgres_url) for _ in range(3)]
    try:
        ids = _webhook_campaign(rt, sink, 400)
        _race([rt, *others], ids, sink)
        assert rt.triggers.counts(rt.triggers.list_schedules(TENANT)[0].id) == {"sent": 400}
    finally:
        for r in others:
            r.close()
        rt.close()
        sink.stop()
