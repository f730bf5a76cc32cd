"""Single decisions' explanation rows are written in the background, in small batches; a
read, an erasure and close() write pending rows first (storage/events/explanation_buffer.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sendflowr.storage.events.chdb_store import ChdbEventStore
from sendflowr.timing.explanation import Explanation


def _row(ref: str, uid: str = "sf_0123456789abcdef") -> Explanation:
    at = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    return Explanation(
        tenant="acme",
        explanation_ref=ref,
        decision_id=ref.removeprefix("exp_"),
        universal_id=uid,
        intent_id="",
        created_at=at,
        model_version="test-1",
        target_minute_utc=at,
        trigger_timestamp_utc=at,
        confidence_score=0.5,
        fallback_level="audience",
        weight_personal=0.0,
        weight_audience=0.75,
        weight_global=0.25,
        machine_opens_excluded=0,
        evidence={"engagements": 0},
        details={"channel": "email"},
        model_confidence=0.5,  # as the store reads back a row written without a map
    )


def _count(store: ChdbEventStore) -> int:
    rows = store._rows(f"SELECT count() FROM `{store.database}`.timing_explanations FINAL")
    return int(rows[0][0])


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(chdb_dir: Path, database: str) -> Iterator[ChdbEventStore]:
    s = ChdbEventStore(chdb_dir, database)
    s.migrate()
    yield s
    s._command(f"DROP DATABASE IF EXISTS `{database}`")
    s.close()


def test_a_buffered_row_is_found_at_once_and_written_in_the_background(
    store: ChdbEventStore,
) -> None:
    store.buffer_explanations([_row("exp_1")])
    assert store.get_explanation("acme", "exp_1") == _row("exp_1")  # the read wrote it first
    store._explanations.max_delay_s = 0.01
    store.buffer_explanations([_row("exp_2"), _row("exp_3")])
    deadline = time.monotonic() + 10
    while store._explanations.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store._explanations.pending() == 0
    assert _count(store) == 3


def test_close_writes_pending_rows(store: ChdbEventStore, chdb_dir: Path, database: str) -> None:
    other = ChdbEventStore(chdb_dir, database)  # the same database, its own buffer
    other._explanations.max_delay_s = 3_600.0  # nothing would be written before close
    other.buffer_explanations([_row("exp_9")])
    assert _count(store) == 0
    other.close()
    assert _count(store) == 1
    with pytest.raises(RuntimeError, match="closed"):
        other.buffer_explanations([_row("exp_10")])


def test_erasure_writes_pending_rows_first_so_none_lands_after_it(
    store: ChdbEventStore,
) -> None:
    store._explanations.max_delay_s = 3_600.0
    store.buffer_explanations([_row("exp_5", "sf_gone"), _row("exp_6", "sf_kept")])
    assert store.erase_people("acme", ["sf_gone"]) == {"events": 0, "explanations": 1}
    assert store._explanations.pending() == 0
    assert store.get_explanation("acme", "exp_5") is None
    assert store.get_explanation("acme", "exp_6") is not None


def test_breaker_events_are_kept_until_one_is_written_or_any_deleted(
    store: ChdbEventStore,
) -> None:
    """events_by_person (what a single decision's breaker check reads) is exact: a write of
    a watched type or a delete invalidates it; other events do not."""
    from sendflowr.events import EventType
    from sendflowr.storage.events.rows import events_to_arrow
    from tests.factories import make_event

    kinds = ["bounced", "unsubscribed"]
    assert store.events_by_person("acme", kinds) == {}
    first = store.events_by_person("acme", kinds)
    assert first is store.events_by_person("acme", kinds)  # kept
    unsub = make_event(1, event_type=EventType.UNSUBSCRIBED)
    store.insert_events(events_to_arrow([unsub], ["sf_a"]))
    got = store.events_by_person("acme", kinds)
    assert got == {"sf_a": [(int(unsub.occurred_at.timestamp()), "unsubscribed")]}
    store.insert_events(events_to_arrow([make_event(2)], ["sf_a"]))  # an open: not watched
    assert store.events_by_person("acme", kinds) is got
    store.erase_people("acme", ["sf_a"])
    assert store.events_by_person("acme", kinds) == {}


def test_rows_being_written_still_count_as_pending() -> None:
    """`pending()` is 0 only once rows are written: a row the writer has taken but not yet
    stored still counts (a wait on pending() == 0 once raced the background write)."""
    import threading

    from sendflowr.storage.events.explanation_buffer import ExplanationBuffer

    started, release = threading.Event(), threading.Event()
    written: list[str] = []

    def write(rows: object) -> None:
        started.set()
        assert release.wait(10)
        written.extend(r.explanation_ref for r in rows)  # type: ignore[attr-defined]

    buffer = ExplanationBuffer(write, max_delay_s=0.0)
    buffer.add([_row("exp_a")])
    assert started.wait(10)
    assert buffer.pending() == 1  # taken by the writer, not yet written
    release.set()
    deadline = time.monotonic() + 10
    while buffer.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert buffer.pending() == 0
    assert written == ["exp_a"]
    buffer.close()
