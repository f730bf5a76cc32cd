"""A batch resolves exactly as its events one at a time: the bulk look-up of people known when
the batch starts, and the event-by-event path after a merge, give the same universal ids,
merges and refusals as batches of one event (the serial reference)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.rules import Limits
from sendflowr.identity.store import BatchResolution, IdentityGraphStore
from sendflowr.settings import parse_metadata_url
from sendflowr.storage.metadata.store import MetadataStore, Tenant
from tests.factories import T0, email_hash

KEY = b"identity-batch-key"


def _events(seed: int, count: int) -> list[CanonicalEvent]:
    """Identifiers drawn from small pools, so people repeat, grow and merge (and, with tight
    limits, merges are refused)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        fields: dict[str, object] = {}
        if rng.random() < 0.6:
            fields["email_hash"] = email_hash(rng.randrange(25))
        if rng.random() < 0.5:
            fields["esp_profile_id"] = f"p{rng.randrange(30)}"
        if rng.random() < 0.15:
            fields["phone"] = f"+4812345{rng.randrange(20):04d}"
        if rng.random() < 0.1:
            fields["external_ids"] = {"shop": f"s{rng.randrange(10)}"}
        if not fields or rng.random() < 0.1:
            fields["anonymous_id"] = f"a{rng.randrange(15)}"
        out.append(
            CanonicalEvent(
                tenant="acme",
                esp="klaviyo",
                esp_event_id=f"e{seed}-{n}",
                event_type=EventType.OPENED,
                occurred_at=T0 + timedelta(seconds=n),
                identifiers=Identifiers(**fields),  # type: ignore[arg-type]
            )
        )
    return out


def _store(path: Path) -> tuple[MetadataStore, IdentityGraphStore]:
    meta = MetadataStore(parse_metadata_url(f"sqlite:///{path}"))
    meta.migrate()
    meta.ensure_tenant(Tenant("acme", "acme", "UTC"))
    limits = Limits(per_family={"email": 2, "esp": 2, "phone": 1, "ext": 2, "anon": 3})
    return meta, IdentityGraphStore(meta, KEY, limits)


def _run(store: IdentityGraphStore, events: list[CanonicalEvent], size: int) -> BatchResolution:
    total = BatchResolution([])
    for i in range(0, len(events), size):
        r = store.resolve_events("acme", events[i : i + size])
        total.universal_ids.extend(r.universal_ids)
        for survivor, absorbed in r.merged.items():
            total.merged.setdefault(survivor, []).extend(absorbed)
        total.refused += r.refused
    return total


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_resolve_as_one_event_at_a_time(seed: int, tmp_path: Path) -> None:
    events = _events(seed, 600)
    meta_a, serial = _store(tmp_path / "serial.db")
    meta_b, batched = _store(tmp_path / "batched.db")
    try:
        want = _run(serial, events, 1)
        # A first batch on an empty graph, then batches that start with known people.
        got = _run(batched, events, 200)
        assert want.merged, "the events must cause merges for this test to mean anything"
        assert want.refused, "and refused merges"
        assert got.universal_ids == want.universal_ids
        assert got.merged == want.merged
        assert got.refused == want.refused
    finally:
        meta_a.close()
        meta_b.close()
