"""The event-store port, one contract over every backend here: chDB always, a ClickHouse
server when SENDFLOWR_TEST_CLICKHOUSE_URL is set (clickhouse://user:pass@host:8123/db; each
test uses its own database on it): migrations, round trip, deduplication."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sendflowr.events import EventType
from sendflowr.settings import parse_event_store_url
from sendflowr.storage.events.base import EventStore, EventStoreError
from sendflowr.storage.events.chdb_store import ChdbEventStore
from sendflowr.storage.events.migrations import MIGRATIONS
from sendflowr.storage.events.rows import events_to_arrow
from tests.factories import T0, make_event

CLICKHOUSE_URL = os.environ.get("SENDFLOWR_TEST_CLICKHOUSE_URL", "")
BACKENDS = [
    "chdb",
    pytest.param(
        "clickhouse",
        marks=[
            pytest.mark.clickhouse,
            pytest.mark.skipif(
                not CLICKHOUSE_URL, reason="SENDFLOWR_TEST_CLICKHOUSE_URL is not set"
            ),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def new_store(request: pytest.FixtureRequest, chdb_dir: Path) -> Callable[[], EventStore]:
    """Opens an empty store of the backend under test in a fresh database."""

    def make() -> EventStore:
        database = f"t_{uuid.uuid4().hex[:12]}"
        if request.param == "chdb":
            return ChdbEventStore(chdb_dir, database)
        from sendflowr.storage.events.clickhouse_store import ClickHouseEventStore

        url = dataclasses.replace(parse_event_store_url(CLICKHOUSE_URL), database=database)
        return ClickHouseEventStore(url)

    return make


def _drop(s: EventStore) -> None:
    s._command(f"DROP DATABASE IF EXISTS `{s.database}`")


@pytest.fixture
def store(new_store: Callable[[], EventStore]) -> Iterator[EventStore]:
    s = new_store()
    s.migrate()
    yield s
    _drop(s)
    s.close()


def test_migrations_run_once_and_are_recorded(new_store: Callable[[], EventStore]) -> None:
    s = new_store()
    try:
        assert s.pending_migrations() == [m.id for m in MIGRATIONS]
        assert s.migrate() == [m.id for m in MIGRATIONS]
        assert s.migrate() == []
        assert [m.id for m in s.applied_migrations()] == [m.id for m in MIGRATIONS]
        assert s.pending_migrations() == []
        tables = {r[0] for r in s._rows(f"SHOW TABLES FROM `{s.database}`")}
        assert {"email_events", "timing_explanations", "schema_migrations"} <= tables
        assert s.health().state == "ok"
    finally:
        _drop(s)
        s.close()


def test_email_events_engine_partition_and_order(store: EventStore) -> None:
    ddl = store._rows(f"SHOW CREATE TABLE `{store.database}`.email_events")[0][0]
    assert "ReplacingMergeTree" in ddl
    assert "PARTITION BY toYYYYMM(occurred_at)" in ddl
    assert "ORDER BY (tenant, universal_id, occurred_at, event_id)" in ddl


def test_round_trip(store: EventStore) -> None:
    events = [
        make_event(1, campaign_id="c1", properties={"Subject": "Hi", "n": 1}),
        make_event(2, event_type=EventType.CLICKED, flow_id="f1", message_id="m1"),
        make_event(3, machine=True),
    ]
    store.insert_events(events_to_arrow(events, ["sf_0000000000000001"] * 3))
    got = store.profile_events("acme", "sf_0000000000000001")
    assert [g.event_id for g in got] == [e.event_id for e in events]
    first = got[0]
    assert first.occurred_at == events[0].occurred_at
    assert first.campaign_id == "c1"
    assert first.properties == {"Subject": "Hi", "n": 1}
    assert got[1].event_type == "clicked"
    assert (got[1].flow_id, got[1].message_id) == ("f1", "m1")
    assert got[2].is_machine_open is True
    assert store.profile_events("other", "sf_0000000000000001") == []


@pytest.fixture(params=["stream", "table function"])
def chdb_insert_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[int]]:
    """chDB takes a table by one of two paths, by its size (chdb_store.STREAM_INSERT_MAX_ROWS):
    each test using this runs once through each. Yields how many IPC streams were built."""
    from sendflowr.storage.events import chdb_store

    built: list[int] = []
    real = chdb_store._ipc_stream

    def counted(data: Any) -> bytes:
        built.append(data.num_rows)
        return real(data)

    monkeypatch.setattr(chdb_store, "_ipc_stream", counted)
    big = request.param == "stream"
    monkeypatch.setattr(chdb_store, "STREAM_INSERT_MAX_ROWS", 10**9 if big else 0)
    yield built
    if isinstance(request.getfixturevalue("store"), ChdbEventStore):
        assert bool(built) == big  # the path the parameter names was the one taken


def test_every_column_is_stored_as_written(store: EventStore, chdb_insert_path: list[int]) -> None:
    """The Arrow table handed to insert_events reads back column for column: every type of
    the schema (strings with quotes, newlines and non-ASCII text, '' for absent, the
    external-ids map, millisecond times, booleans, the schema version), in two record
    batches (a table built from several chunks); through either of chDB's insert paths."""
    import msgspec
    import pyarrow as pa

    events = [
        make_event(
            1,
            campaign_id='c\'1\n"x"',
            properties={"Subject": 'Été \u2603 \\ "q"', "n": 1, "nested": {"a": [1, None]}},
            at=T0 + timedelta(milliseconds=1_234),
        ),
        make_event(2, flow_id="f1", message_id="m1", machine=True),
    ]
    first = events_to_arrow(events, ["sf_0000000000000001", "sf_0000000000000002"])
    extra = make_event(3, person=2)
    ids = msgspec.structs.replace(
        extra.identifiers,
        esp_profile_id="01K",
        phone="+15555550123",
        anonymous_id="anon-1",
        external_ids={"shopify": "123", "crm": "a-b"},
    )
    extra = msgspec.structs.replace(extra, identifiers=ids)
    second = events_to_arrow([extra], ["sf_3"])
    table = pa.concat_tables([first, second])
    assert table.column("tenant").num_chunks == 2
    store.insert_events(table)
    names = ", ".join(f"`{n}`" for n in table.column_names)
    got = store._arrow(f"SELECT {names} FROM `{store.database}`.email_events ORDER BY esp_event_id")
    for name in table.column_names:
        want = table.column(name).to_pylist()
        have = got.column(name).to_pylist()
        if name == "external_ids":  # a map reads back as pairs, in any order
            want, have = [sorted(x) for x in want], [sorted(x) for x in have]
        elif name == "event_id":  # a UUID column
            have = [str(x) for x in have]
        assert have == want, name


def test_a_rejected_insert_is_one_clear_error_and_the_store_goes_on(
    store: EventStore, chdb_insert_path: list[int]
) -> None:
    import pyarrow as pa

    good = events_to_arrow([make_event(1)], ["sf_0000000000000001"])
    wrong = good.set_column(
        good.column_names.index("occurred_at"), "occurred_at", pa.array(["not a time"])
    )
    # Refused before the backend sees it: chDB's Python() table function would have stored
    # the string as 1970-01-01 (checked).
    with pytest.raises(EventStoreError, match="occurred_at is string, not timestamp"):
        store.insert_events(wrong)
    with pytest.raises(EventStoreError, match="schema_version is missing; extra is not a column"):
        store.insert_events(good.drop_columns(["schema_version"]).append_column("extra", [["x"]]))
    store.insert_events(good)
    assert [e.event_id for e in store.profile_events("acme", "sf_0000000000000001")] == [
        make_event(1).event_id
    ]


def test_time_filters(store: EventStore) -> None:
    events = [make_event(i) for i in range(10)]
    store.insert_events(events_to_arrow(events, ["sf_a"] * 10))
    got = store.profile_events(
        "acme", "sf_a", since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=6)
    )
    assert [g.esp_event_id for g in got] == ["evt-3", "evt-4", "evt-5"]
    assert len(store.profile_events("acme", "sf_a", limit=4)) == 4


def test_same_event_twice_is_one_row_in_every_query(store: EventStore) -> None:
    events = [
        make_event(i, event_type=EventType.CLICKED if i % 2 else EventType.OPENED) for i in range(6)
    ]
    table = events_to_arrow(events, ["sf_b"] * 6)
    for _ in range(3):
        store.insert_events(table)
    store.insert_events(table.slice(0, 2))
    assert store.count_events("acme") == 6
    assert store.count_events() == 6
    assert store.count_by_type("acme") == {"clicked": 3, "opened": 3}
    assert len(store.profile_events("acme", "sf_b")) == 6
    assert store.tenants() == ["acme"]


def test_tenants_are_separate(store: EventStore) -> None:
    a = [make_event(i, tenant="a") for i in range(3)]
    b = [make_event(i, tenant="b") for i in range(5)]
    store.insert_events(events_to_arrow(a + b, ["sf_x"] * 8))
    assert store.count_by_type("a") == {"opened": 3}
    assert store.count_by_type("b") == {"opened": 5}
    assert store.count_by_type("c") == {}


def test_second_directory_in_one_process_is_refused(chdb_dir: Path, tmp_path: Path) -> None:
    store = ChdbEventStore(chdb_dir, f"t_{uuid.uuid4().hex[:12]}")
    with pytest.raises(EventStoreError, match="one data directory per process"):
        ChdbEventStore(tmp_path / "other")
    try:
        store.migrate()
        assert store.count_events() == 0  # the open store is unharmed
    finally:
        store.drop_database()
        store.close()


def test_closed_store_refuses_queries(new_store: Callable[[], EventStore]) -> None:
    s = new_store()
    s.close()
    with pytest.raises(EventStoreError, match="closed"):
        s.count_events()


def test_alias_sets_and_quoting(store: EventStore) -> None:
    odd = "sf_it's\\odd"
    store.insert_events(events_to_arrow([make_event(1), make_event(2)], ["sf_a", odd]))
    got = store.profile_events("acme", ["sf_a", odd])
    assert [g.universal_id for g in got] == ["sf_a", odd]
    assert store.profile_events("acme", [odd])[0].esp_event_id == "evt-2"


def test_reassign_moves_events_and_keeps_one_copy(store: EventStore) -> None:
    events = [make_event(i) for i in range(4)]
    store.insert_events(events_to_arrow(events, ["sf_from"] * 4))
    moved = store.reassign_events(
        "acme", "sf_from", "sf_to", [events[1].event_id, events[3].event_id]
    )
    assert moved == 2
    assert [e.esp_event_id for e in store.profile_events("acme", "sf_from")] == ["evt-0", "evt-2"]
    to = store.profile_events("acme", "sf_to")
    assert [e.esp_event_id for e in to] == ["evt-1", "evt-3"]
    assert to[0].email_hash == events[1].identifiers.email_hash
    assert store.count_events("acme") == 4


def test_explanations_round_trip_and_dedup(store: EventStore) -> None:
    from datetime import UTC, datetime

    from sendflowr.timing.explanation import Explanation

    at = datetime(2026, 3, 2, 9, 0, 0, 123000, tzinfo=UTC)
    row = Explanation(
        tenant="acme",
        explanation_ref="exp_1",
        decision_id="dec_1",
        universal_id="sf_0123456789abcdef",
        intent_id="promo_jan",
        created_at=at,
        model_version="test-1",
        target_minute_utc=at.replace(microsecond=0),
        trigger_timestamp_utc=at.replace(microsecond=0, second=0, minute=0),
        confidence_score=0.625,
        fallback_level="personal",
        weight_personal=0.5,
        weight_audience=0.25,
        weight_global=0.25,
        machine_opens_excluded=3,
        policies=("quiet_hours", "frequency_cap"),
        exploration=True,
        evidence={"clicks": 4, "opens": 9},
        details={"alternatives": [1, 2]},
        model_confidence=0.75,
    )
    assert store.insert_explanations([row, row]) == 2
    got = store.get_explanation("acme", "exp_1")
    assert got == row
    assert store.get_explanation("other", "exp_1") is None
    count = store._rows(f"SELECT count() FROM `{store.database}`.timing_explanations FINAL")
    assert int(count[0][0]) == 1
    # without a calibration map the model's confidence is the stated one
    plain = dataclasses.replace(row, explanation_ref="exp_2", model_confidence=None)
    store.insert_explanations([plain])
    assert store.get_explanation("acme", "exp_2") == dataclasses.replace(
        plain, model_confidence=0.625
    )


def test_explanations_older_than_the_retention_are_deleted(store: EventStore) -> None:
    """The retention is the table's TTL: set once, kept when unchanged, applied as the parts
    merge (forced here), removable."""
    from datetime import UTC, datetime

    from sendflowr.timing.explanation import Explanation

    now = datetime.now(UTC).replace(microsecond=0)

    def row(ref: str, age_days: int) -> Explanation:
        at = now - timedelta(days=age_days)
        return Explanation(
            tenant="acme", explanation_ref=ref, decision_id=ref, universal_id="sf_1",
            intent_id="", created_at=at, model_version="test", target_minute_utc=at,
            trigger_timestamp_utc=at, confidence_score=0.5, fallback_level="personal",
            weight_personal=1.0, weight_audience=0.0, weight_global=0.0,
            machine_opens_excluded=0,
        )  # fmt: skip

    store.insert_explanations([row("exp_old", 500), row("exp_kept", 300), row("exp_new", 1)])
    assert store.explanation_retention() == 0  # none until set
    assert store.set_explanation_retention(400) is True
    assert store.set_explanation_retention(400) is False  # unchanged: no ALTER
    assert store.explanation_retention() == 400
    store._command(f"OPTIMIZE TABLE `{store.database}`.timing_explanations FINAL")
    assert store.get_explanation("acme", "exp_old") is None
    assert store.get_explanation("acme", "exp_kept") is not None
    assert store.get_explanation("acme", "exp_new") is not None

    assert store.set_explanation_retention(0) is True
    assert store.explanation_retention() == 0
    store.insert_explanations([row("exp_ancient", 2_000)])
    store._command(f"OPTIMIZE TABLE `{store.database}`.timing_explanations FINAL")
    assert store.get_explanation("acme", "exp_ancient") is not None
    with pytest.raises(ValueError, match="negative"):
        store.set_explanation_retention(-1)


def test_rows_written_before_model_confidence_read_their_stated_confidence(
    new_store: Callable[[], EventStore],
) -> None:
    """A store migrated before 0003 keeps its explanation rows: after it, their
    model_confidence is what they stated (no calibration map existed then)."""
    s = new_store()
    try:
        assert s.migrate(MIGRATIONS[:2]) == [m.id for m in MIGRATIONS[:2]]
        s._command(
            f"INSERT INTO `{s.database}`.timing_explanations (tenant, explanation_ref, "
            "decision_id, universal_id, intent_id, created_at, model_version, "
            "target_minute_utc, trigger_timestamp_utc, confidence_score, fallback_level, "
            "weight_personal, weight_audience, weight_global, evidence, "
            "machine_opens_excluded, policies, exploration, details) VALUES ('acme', 'exp_old', "
            "'dec_old', 'sf_0123456789abcdef', '', now64(3), 'old', now64(3), now64(3), 0.375, "
            "'global', 0, 0, 1, '{}', 0, [], false, '{}')"
        )
        assert s.migrate() == [MIGRATIONS[2].id]
        old = s.get_explanation("acme", "exp_old")
        assert old is not None
        assert old.confidence_score == 0.375
        assert old.model_confidence == 0.375
    finally:
        _drop(s)
        s.close()


@pytest.mark.network
def test_an_unreachable_clickhouse_server_is_one_clear_error() -> None:
    from sendflowr.storage.events import open_event_store

    url = parse_event_store_url("clickhouse://bob:secret@127.0.0.1:9/events")
    with pytest.raises(EventStoreError, match=r"cannot reach ClickHouse at 127\.0\.0\.1:9") as exc:
        open_event_store(url)
    assert "secret" not in str(exc.value)
