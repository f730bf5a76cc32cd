"""The feature cache's inputs on the real event store: the columnar read (engagement_arrays on
chDB) and `sendflowr features rebuild`. The bulk rebuild == per-person rebuilds == the
pipeline's incremental fold, and the timing service's cache path, run over every cache backend
in tests/contract/test_feature_cache.py."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from typer.testing import CliRunner

from sendflowr.cli import app
from sendflowr.events import EventType
from sendflowr.identity.identifiers import EMAIL, Identifier
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.store import Tenant
from tests.factories import T0, email_hash, make_event

BERLIN = ZoneInfo("Europe/Berlin")
NOW = int((T0 + timedelta(days=30)).timestamp())


def _uid(rt: Runtime, person: int, tenant: str = "acme") -> str:
    uid = rt.identity.owner(tenant, Identifier(EMAIL, email_hash(person)))
    assert uid is not None
    return uid


def _load(rt: Runtime) -> None:
    rt.metadata.ensure_tenant(Tenant("acme", "Acme", "Europe/Berlin"))
    rt.metadata.ensure_tenant(Tenant("other", "Other", "UTC"))
    kinds = [EventType.RECEIVED, EventType.OPENED, EventType.CLICKED, EventType.ORDERED]
    events = [
        make_event(
            i,
            person=i % 5,
            event_type=kinds[i % 4],
            at=T0 + timedelta(hours=7 * i),
            machine=i % 8 == 5,
        )
        for i in range(60)
    ]
    rt.pipeline.process(events)
    rt.pipeline.process(events[:10])  # a replay: stored twice, read once
    rt.pipeline.process([make_event(100, tenant="other", person=1)])


def test_engagement_arrays_read_a_tenant_in_one_columnar_query(runtime: Runtime) -> None:
    _load(runtime)
    arrays = runtime.events.engagement_arrays("acme")
    assert len(arrays) == 60  # the replayed copies are deduplicated
    assert sorted(arrays.universal_ids) == sorted(_uid(runtime, p) for p in range(5))
    per_person = np.bincount(arrays.uid_code, minlength=len(arrays.universal_ids))
    assert per_person.tolist() == [12] * 5
    types = np.array(arrays.event_types)[arrays.type_code]
    assert sorted(set(types.tolist())) == ["clicked", "opened", "ordered", "received"]
    assert int(arrays.is_machine_open.sum()) == sum(1 for i in range(60) if i % 8 == 5)
    stored = runtime.events.profile_events("acme", _uid(runtime, 2))
    mine = arrays.uid_code == arrays.universal_ids.index(_uid(runtime, 2))
    expected = sorted(int(e.occurred_at.timestamp() * 1000) for e in stored)
    assert sorted(arrays.utc_ms[mine].tolist()) == expected
    clicks = runtime.events.engagement_arrays(
        "acme", types=["clicked"], since=T0 + timedelta(days=5)
    )
    assert set(np.array(clicks.event_types)[clicks.type_code].tolist()) == {"clicked"}
    assert len(clicks) == sum(1 for i in range(60) if i % 4 == 2 and 7 * i >= 5 * 24)
    empty = runtime.events.engagement_arrays("nobody")
    assert (len(empty), empty.universal_ids) == (0, [])


def test_features_rebuild_cli(runtime: Runtime, tmp_path: Path) -> None:
    _load(runtime)
    s = runtime.settings
    env = {
        "SENDFLOWR_EVENT_STORE_URL": s.event_store_url,
        "SENDFLOWR_METADATA_URL": s.metadata_url,
        "SENDFLOWR_DATA_DIR": str(s.data_dir),
        "SENDFLOWR_HASH_KEY": s.hash_key.get_secret_value() if s.hash_key else "",
    }
    ok = CliRunner().invoke(app, ["features", "rebuild", "--tenant", "acme"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "acme" in ok.output
    assert "Europe/Berlin" in ok.output
    assert "60" in ok.output
    every = CliRunner().invoke(app, ["features", "rebuild"], env=env)
    assert every.exit_code == 0, every.output
    assert "other" in every.output
    bad = CliRunner().invoke(app, ["features", "rebuild", "--tenant", "nope"], env=env)
    assert bad.exit_code == 2
    assert "--tenant: no tenant 'nope'" in bad.output


def test_concurrent_queries_get_their_own_parameters(runtime: Runtime) -> None:
    """The API queries chDB from a thread pool: a chDB session mixes up the parameters of
    concurrent queries unless the store serialises them."""
    _load(runtime)
    expected = {"acme": 60, "other": 1, "nobody": 0}
    wrong: list[tuple[str, int]] = []

    def work(tenant: str) -> None:
        for _ in range(40):
            got = runtime.events.count_events(tenant)
            if got != expected[tenant]:
                wrong.append((tenant, got))

    threads = [threading.Thread(target=work, args=(t,)) for t in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []
