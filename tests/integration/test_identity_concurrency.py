"""Several processes resolving overlapping identifiers at once end with the serial graph."""

from __future__ import annotations

import multiprocessing
import random
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sendflowr.events import CanonicalEvent, EventType, Identifiers
from sendflowr.identity.store import IdentityGraphStore
from sendflowr.settings import parse_metadata_url
from sendflowr.storage.metadata.store import MetadataStore, Tenant
from sendflowr.storage.metadata.tables import identity_identifiers, identity_profiles
from tests.factories import T0, email_hash

KEY = b"concurrency-key"
PEOPLE = 120
WORKERS = 4


def _events(seed: int) -> list[CanonicalEvent]:
    """Events each carrying 1-3 identifiers of one person: links never cross people."""
    rng = random.Random(seed)
    out = []
    for n in range(600):
        p = rng.randrange(PEOPLE)
        choice = rng.sample(["email", "klaviyo", "anon"], rng.randint(1, 3))
        ids = Identifiers(
            email_hash=email_hash(p) if "email" in choice else None,
            esp_profile_id=f"K{p}" if "klaviyo" in choice else None,
            anonymous_id=f"A{p}" if "anon" in choice else None,
        )
        out.append(
            CanonicalEvent(
                tenant="acme",
                esp="klaviyo",
                esp_event_id=f"w{seed}-{n}",
                event_type=EventType.OPENED,
                occurred_at=T0 + timedelta(seconds=n),
                identifiers=ids,
            )
        )
    return out


def _worker(url: str, seed: int) -> None:
    meta = MetadataStore(parse_metadata_url(url))
    store = IdentityGraphStore(meta, KEY)
    events = _events(seed)
    for i in range(0, len(events), 25):
        store.resolve_events("acme", events[i : i + 25])
    meta.close()


def _components(events: list[CanonicalEvent]) -> set[frozenset[tuple[str, str]]]:
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for e in events:
        ids = e.identifiers
        keys = [
            k
            for k in (
                ("email", ids.email_hash) if ids.email_hash else None,
                ("esp:klaviyo", ids.esp_profile_id) if ids.esp_profile_id else None,
                ("anon", ids.anonymous_id) if ids.anonymous_id else None,
            )
            if k is not None
        ]
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
        find(keys[0])
    groups: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for k in parent:
        groups.setdefault(find(k), set()).add(k)
    return {frozenset(g) for g in groups.values()}


@pytest.mark.postgres
@pytest.mark.slow
def test_concurrent_workers_end_with_the_serial_graph(postgres_url: str) -> None:
    meta = MetadataStore(parse_metadata_url(postgres_url))
    meta.migrate()
    meta.create_tenant(Tenant("acme", "Acme", "UTC"))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(postgres_url, s)) for s in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    with meta.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                identity_identifiers.c.kind,
                identity_identifiers.c.value,
                identity_identifiers.c.universal_id,
            )
        ).all()
        roots = set(
            conn.execute(
                sa.select(identity_profiles.c.universal_id).where(
                    identity_profiles.c.merged_into.is_(None)
                )
            ).scalars()
        )
    groups: dict[str, set[tuple[str, str]]] = {}
    for kind, value, uid in rows:
        groups.setdefault(uid, set()).add((kind, value))
    got = {frozenset(g) for g in groups.values()}
    expected = _components([e for s in range(WORKERS) for e in _events(s)])
    assert got == expected
    assert set(groups) <= roots  # every identifier points at a live person
    meta.close()
