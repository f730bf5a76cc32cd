"""A real `sendflowr backfill` process, killed with SIGKILL mid-run and started again, ends
with exactly the simulator's events and no duplicate.

chDB runs one embedded server per process on one directory and this pytest process already
has its own, so this test never opens the backfill's event store: setup and counting run in
subprocesses. Progress is watched by reading the SQLite metadata database read-only.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from sendflowr.connectors.klaviyo.constants import EVENT_TYPE_METRICS
from sendflowr.events import EventType
from sendflowr.klaviyo_sim import SimServerConfig
from sendflowr.klaviyo_sim.command import run_in_thread
from sendflowr.secrets import generate_key

pytestmark = [pytest.mark.network, pytest.mark.slow]

API_KEY = "pk_sim_backfill_kill_test"
TENANT = "killed"
DEADLINE_SECONDS = 60.0

SETUP = """
import json, sys
from sendflowr.runtime import Runtime
from sendflowr.settings import load_settings
from sendflowr.storage.metadata.store import Tenant

tenant, api_key, api_url = sys.argv[1:4]
rt = Runtime.open(load_settings())
try:
    rt.metadata.create_tenant(Tenant(tenant, "Killed brand", "UTC"))
    rt.accounts.connect(tenant, "klaviyo", "api_key", {"api_key": api_key}, api_url=api_url)
finally:
    rt.close()
print(json.dumps({"ok": True}))
"""

COUNT = """
import json, sys
from sendflowr.runtime import Runtime
from sendflowr.settings import load_settings

tenant = sys.argv[1]
rt = Runtime.open(load_settings(), migrate=False)
try:
    table = f"`{rt.events.database}`.email_events"
    where = "WHERE tenant = {tenant:String}"
    params = {"tenant": tenant}
    [[rows, esp_ids, event_ids]] = rt.events._rows(
        f"SELECT count(), uniqExact(esp_event_id), uniqExact(event_id) FROM {table} FINAL "
        + where,
        params,
    )
    [[raw_rows]] = rt.events._rows(f"SELECT count() FROM {table} " + where, params)
    out = {
        "total": rt.events.count_events(tenant),
        "final_rows": int(rows),
        "distinct_esp_event_id": int(esp_ids),
        "distinct_event_id": int(event_ids),
        "raw_rows": int(raw_rows),
        "by_type": rt.events.count_by_type(tenant),
    }
finally:
    rt.close()
print(json.dumps(out))
"""


@pytest.fixture
def sim_url() -> Iterator[str]:
    config = SimServerConfig(
        tenant="simbrand", profiles=3000, days=7, api_keys=(API_KEY,), rate_limits=False
    )
    base_url, stop = run_in_thread(config)
    try:
        yield base_url
    finally:
        stop()


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDFLOWR_")}
    env.update(
        SENDFLOWR_EVENT_STORE_URL=f"chdb://{data}/events",
        SENDFLOWR_METADATA_URL=f"sqlite:///{data}/meta.db",
        SENDFLOWR_DATA_DIR=str(data),
        SENDFLOWR_SECRET_KEY=generate_key(),
        SENDFLOWR_HASH_KEY="kill-test-hash-key-0123456789abcdef",
        SENDFLOWR_BACKFILL_WORKER="false",
        SENDFLOWR_BACKFILL_CONCURRENCY="4",
        SENDFLOWR_LOG_LEVEL="warning",
        COLUMNS="200",  # one line per message from rich
    )
    return env


def _script(source: str, *args: str, env: Mapping[str, str], cwd: Path) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", source, *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read(db: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    """Rows from the metadata database, opened read-only; none while it is busy or new."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.OperationalError:
        return []
    try:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _latest_job(db: Path) -> dict[str, Any] | None:
    rows = _read(
        db,
        "SELECT id, status, total_units, done_units, failed_units, events, worker "
        "FROM backfill_jobs WHERE tenant = ? ORDER BY id DESC LIMIT 1",
        TENANT,
    )
    return dict(rows[0]) if rows else None


def _cursors(db: Path, job_id: int) -> int:
    """Units of the job stopped between two pages: a checkpointed `next_url` to resume from."""
    rows = _read(
        db,
        "SELECT count(*) FROM backfill_units "
        "WHERE job_id = ? AND status = 'in_progress' AND next_url IS NOT NULL",
        job_id,
    )
    return int(rows[0][0]) if rows else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_backfill_killed_with_sigkill_resumes_to_the_exact_count(
    sim_url: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    data = tmp_path / "data"
    data.mkdir()
    env = _env(data)
    db = data / "meta.db"

    with httpx.Client(base_url=sim_url, timeout=10) as sim:
        truth = sim.get("/_sim/brand").json()
        expected = {name: n for name, n in truth["events_by_metric"].items() if n}
        assert sum(expected.values()) == truth["events"] > 0

        _script(SETUP, TENANT, API_KEY, sim_url, env=env, cwd=tmp_path)

        # Slow every events page a little so the kill lands mid-run, not after it. The kill
        # waits for stored events and for a unit stopped between two of its pages (a
        # persisted cursor), so the resume continues units as well as starting new ones.
        slow = sim.post(
            "/_sim/faults",
            json={
                "kind": "slow",
                "count": 100_000,
                "delay_seconds": 0.05,
                "path_prefix": "/api/events",
            },
        )
        assert slow.status_code == 201, slow.text

        command = [sys.executable, "-m", "sendflowr", "backfill", "--tenant", TENANT]
        command += ["--days", "30"]
        log = tmp_path / "first-run.log"
        with log.open("wb") as out:
            first = subprocess.Popen(
                command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                killed_at: dict[str, Any] | None = None
                while time.monotonic() - began < DEADLINE_SECONDS:
                    if first.poll() is not None:
                        break
                    job = _latest_job(db)
                    if job is not None and job["events"] > 0 and _cursors(db, job["id"]):
                        os.kill(first.pid, signal.SIGKILL)
                        first.wait(timeout=10)
                        killed_at = job
                        break
                    time.sleep(0.02)
            finally:
                _stop(first)
        output = log.read_text(errors="replace")
        assert killed_at is not None, f"never caught the backfill mid-run:\n{output}"
        assert first.returncode == -signal.SIGKILL, output

        midway = _latest_job(db)
        assert midway is not None
        assert midway["status"] == "in_progress"
        assert midway["id"] == killed_at["id"]
        assert 0 < midway["done_units"] < midway["total_units"]
        assert 0 < midway["events"] < truth["events"]
        assert _cursors(db, midway["id"]) > 0
        assert midway["worker"].endswith(f":{first.pid}")

        assert sim.delete("/_sim/faults").status_code < 300

    resumed = subprocess.run(
        command,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{TENANT}: resuming job {midway['id']}" in resumed.stdout
    assert f"{TENANT}: completed" in resumed.stdout

    final = _latest_job(db)
    assert final is not None
    assert final["id"] == midway["id"]
    assert final["status"] == "completed"
    assert final["done_units"] == final["total_units"]
    assert final["failed_units"] == 0
    assert final["events"] == truth["events"]  # each page counted once, resumed or not

    counted = _script(COUNT, TENANT, env=env, cwd=tmp_path)
    stored = {EVENT_TYPE_METRICS[EventType(t)]: n for t, n in counted["by_type"].items()}
    assert stored == expected
    assert counted["total"] == counted["final_rows"] == truth["events"]
    # Zero duplicates: every stored event is a different Klaviyo event.
    assert counted["distinct_esp_event_id"] == counted["total"]
    assert counted["distinct_event_id"] == counted["total"]
