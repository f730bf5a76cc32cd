"""Identity benchmark: events resolved per second through the identity graph.

- embedded (SQLite), warm: the process's graph is current, so a batch needs no reads;
- PostgreSQL, cold: the graph is read for every batch (as when other workers write too);
- memory: resident growth per million identifiers held in the warm graph.
Batches of 10,000 simulated events; medians of repeats on a fresh database each.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, timed, write_result
from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.settings import parse_metadata_url
from sendflowr.simulate import config_for_event_count, simulate
from sendflowr.storage.metadata.store import MetadataStore, Tenant

KEY = b"bench-identity-key"
BATCH = 10_000
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _store(url: str) -> IdentityGraphStore:
    meta = MetadataStore(parse_metadata_url(url))
    meta.migrate()
    meta.ensure_tenant(Tenant("bench", "bench", "UTC"))
    return IdentityGraphStore(meta, KEY)


def _fresh_pg() -> tuple[str, sa.Engine, str]:
    admin = sa.create_engine(
        POSTGRES.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    name = f"sf_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return POSTGRES.rsplit("/", 1)[0] + "/" + name, admin, name


def _drop_pg(admin: sa.Engine, name: str) -> None:
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def resolve_all(store: IdentityGraphStore, batches: list[list[CanonicalEvent]]) -> None:
    for b in batches:
        store.resolve_events("bench", b)


def memory_per_million(n: int) -> dict[str, float]:
    """Warm-graph memory: n people with an email and a Klaviyo id each (2n identifiers)."""
    root = Path(tempfile.mkdtemp())
    store = _store(f"sqlite:///{root}/m.db")
    events = [
        CanonicalEvent(
            tenant="bench",
            esp="klaviyo",
            esp_event_id=f"m{i}",
            event_type=EventType.OPENED,
            occurred_at=simulate_start(),
            identifiers=Identifiers(email_hash=f"{i:064x}", esp_profile_id=f"K{i}"),
        )
        for i in range(n)
    ]
    gc.collect()
    before = _rss_mib()
    for i in range(0, n, BATCH):
        store.resolve_events("bench", events[i : i + BATCH])
    del events
    gc.collect()
    after = _rss_mib()
    return {
        "identifiers": 2 * n,
        "rss_growth_mib": round(after - before, 1),
        "mib_per_million_identifiers": round((after - before) / (2 * n / 1e6), 1),
    }


def simulate_start() -> datetime:
    return datetime(2026, 1, 5, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = dataclasses.replace(config_for_event_count(args.events, tenant="bench"), hash_key=KEY)
    events = simulate(cfg).events[: args.events]
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]

    warm, cold_first, pg = [], [], []
    for _ in range(args.repeats):
        root = Path(tempfile.mkdtemp())
        store = _store(f"sqlite:///{root}/m.db")
        cold_first.append(timed(partial(resolve_all, store, batches)))  # builds the graph
        warm.append(timed(partial(resolve_all, store, batches)))  # graph current: no reads
        url, admin, name = _fresh_pg()
        pg_store = _store(url)
        resolve_all(pg_store, batches)  # the people exist ...
        with pg_store.engine.connect() as c:  # ... with the statistics autovacuum would keep
            c.exec_driver_sql("ANALYZE")
        pg_store._warm = False  # ... and every batch reads them, as with concurrent workers
        pg_store.forget_cache()
        pg.append(timed(partial(resolve_all, pg_store, batches)))
        pg_store.metadata.close()
        _drop_pg(admin, name)
    n = len(events)
    write_result(
        "identity",
        {
            "events": n,
            "batch_size": BATCH,
            "repeats": args.repeats,
            "embedded_sqlite_first_pass_events_per_s": round(n / median(cold_first)),
            "embedded_sqlite_warm_events_per_s": round(n / median(warm)),
            "postgresql_cold_graph_events_per_s": round(n / median(pg)),
            "targets": {"embedded_warm": 20_000, "postgresql": 5_000},
            "memory": memory_per_million(250_000),
        },
    )


if __name__ == "__main__":
    main()
