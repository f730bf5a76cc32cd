"""Group commit of accepted batches (sendflowr.intake) through the signed Klaviyo webhook, on
chDB + SQLite + the local archive: deliveries that arrive while one is being written are
archived and stored together, each answered for itself, and one that fails fails alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.testclient import TestClient

from sendflowr.errors import UnavailableError
from sendflowr.events import CanonicalEvent
from sendflowr.pipeline import IngestResult
from sendflowr.runtime import Runtime
from tests.integration.test_webhooks import _deliver, _item, keyed_client

__all__ = ["keyed_client"]  # the fixture, shared with test_webhooks

Publish = Callable[[Sequence[CanonicalEvent], str], IngestResult]


class Gate:
    """Holds the first publish until released, so later deliveries queue behind it (the bus
    is the real one; this only waits, and fails a publish holding a chosen event if asked)."""

    def __init__(self, rt: Runtime, poison: str | None = None) -> None:
        self.real: Publish = rt.bus.publish
        self.rt, self.poison = rt, poison
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[int] = []
        rt.bus.publish = self  # type: ignore[method-assign]

    def __call__(self, events: Sequence[CanonicalEvent], source: str) -> IngestResult:
        self.calls.append(len(events))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)
        if self.poison is not None and any(e.esp_event_id == self.poison for e in events):
            raise UnavailableError("the store refused this batch")
        return self.real(events, source)


def _concurrently(
    client: TestClient, rt: Runtime, gate: Gate, first: list[Any], later: list[list[Any]]
) -> tuple[Any, list[Any]]:
    """Deliver `first`; while it is being written, deliver each of `later` from its own
    thread; release once all of them wait."""
    out: dict[int, Any] = {}
    lead = threading.Thread(target=lambda: out.setdefault(-1, _deliver(client, first)))
    lead.start()
    assert gate.entered.wait(30)
    threads = [
        threading.Thread(target=lambda i=i, items=items: out.setdefault(i, _deliver(client, items)))
        for i, items in enumerate(later)
    ]
    for t in threads:
        t.start()
    group = rt.intake._groups["klaviyo-webhook"]
    deadline = time.monotonic() + 30
    while len(group._queue) < len(later) and time.monotonic() < deadline:
        time.sleep(0.01)
    gate.release.set()
    for t in [lead, *threads]:
        t.join(60)
    return out[-1], [out[i] for i in range(len(later))]


def _stored(rt: Runtime) -> int:
    return sum(rt.events.count_by_type("brand").values())


def test_deliveries_arriving_during_a_write_are_archived_and_stored_together(
    keyed_client: tuple[TestClient, Runtime],
) -> None:
    client, rt = keyed_client
    gate = Gate(rt)
    first, later = _concurrently(
        client,
        rt,
        gate,
        [_item(n) for n in range(10)],
        [[_item(100 * d + n) for n in range(10)] for d in range(1, 6)],
    )
    assert first.status_code == 200
    assert first.json()["accepted"] == 10
    for r in later:
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 10
    assert gate.calls == [10, 50]  # one write for the first, one for the five behind it
    assert _stored(rt) == 60
    assert rt.archive is not None
    files = rt.archive.files("brand")
    assert len(files) == 2
    tables = [rt.archive.read(f) for f in files]
    assert sorted(t.num_rows for t in tables) == [10, 50]
    ids = {e for t in tables for e in t.column("event_id").to_pylist()}
    assert len(ids) == 60
    group = rt.intake._groups["klaviyo-webhook"]
    assert (group.groups, group.jobs) == (2, 6)


def test_a_delivery_whose_write_fails_fails_alone_and_can_be_retried(
    keyed_client: tuple[TestClient, Runtime],
) -> None:
    client, rt = keyed_client
    gate = Gate(rt, poison="evt202")
    bad = [_item(200 + n) for n in range(5)]
    first, later = _concurrently(
        client, rt, gate, [_item(n) for n in range(5)], [[_item(300 + n) for n in range(5)], bad]
    )
    assert first.status_code == 200
    assert later[0].status_code == 200
    assert later[0].json()["accepted"] == 5
    assert later[1].status_code == 503
    assert later[1].headers["retry-after"]
    # the group failed, then each delivery ran alone: the good one stored, the bad one not
    assert gate.calls == [5, 10, 5, 5]
    assert _stored(rt) == 10
    # the failed delivery was not marked received: the sender's retry goes through
    gate.poison = None
    retry = _deliver(client, bad)
    assert retry.status_code == 200
    assert retry.json()["accepted"] == 5
    assert _stored(rt) == 15
