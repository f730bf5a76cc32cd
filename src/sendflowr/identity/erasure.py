"""Data-subject erasure: one person out of every store.

Order matters for a retry. The stores that hang off the identity graph go first (triggers,
events and explanations, dead letters, cached features), the graph itself last, in one
transaction with the audit row. A failure part-way leaves the person resolvable, so calling
the erasure again finishes it; once the graph row is gone the id is unknown (404). Events a
webhook stored for the person while the erasure ran are swept afterwards (only those written
before the graph transaction committed, so a person re-created since is not touched).

What an erasure cannot reach: an ESP call a worker had already claimed may still go out, and
the tenant's audience curve (an aggregate over everyone, no per-person row) keeps the person's
weight until its cache expires (decisions.AUDIENCE_TTL_S).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from sendflowr.errors import NotFoundError
from sendflowr.identity.hashing import hash_email
from sendflowr.identity.identifiers import EMAIL
from sendflowr.identity.store import ErasedPerson, ErasureSubject, IdentityGraphStore
from sendflowr.storage.events.base import EventStore
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.metadata.store import MetadataStore
from sendflowr.storage.metadata.tables import dead_letters
from sendflowr.storage.metadata.triggers import TriggerStore

_EMAILISH = re.compile(r"[^\s\"'<>()\[\]{},;:@\\]+@[^\s\"'<>()\[\]{},;:@\\]+")
_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class Erasure:
    tenant: str
    universal_id: str
    aliases: int  # ids merged into the person, erased with them
    removed: dict[str, int]
    schedules_touched: int
    audit_id: int


def erase_person(
    tenant: str,
    universal_id: str,
    actor: str,
    *,
    identity: IdentityGraphStore,
    events: EventStore,
    features: FeatureCache,
    triggers: TriggerStore,
    metadata: MetadataStore,
    hash_key: bytes,
) -> Erasure:
    """Remove the person (or the person an id was merged into) from every store; see the
    module docstring. NotFoundError for an id the tenant does not know (also after an
    erasure)."""
    subject = identity.erasure_subject(tenant, universal_id)
    if subject is None:
        raise NotFoundError(
            f"no person {universal_id!r} in tenant {tenant!r}", field="universal_id"
        )
    ids = [*subject.aliases, *subject.stranger_ids]
    per_schedule = triggers.erase_people(tenant, ids)
    stored = events.erase_people(tenant, ids)
    letters = erase_dead_letters(metadata, tenant, subject, hash_key)
    cached = len(features.get_many(tenant, ids))
    features.invalidate(tenant, ids)
    removed = {
        "events": stored["events"],
        "explanations": stored["explanations"],
        "triggers": sum(per_schedule.values()),
        "features": cached,
        "dead_letters": letters,
    }
    done: ErasedPerson = identity.erase(tenant, subject, actor, removed)
    committed = datetime.now(UTC)
    late = events.erase_people(tenant, ids, ingested_before=committed)
    features.invalidate(tenant, ids)
    out = dict(done.removed)
    out["events"] += late["events"]
    out["explanations"] += late["explanations"]
    return Erasure(
        tenant, done.universal_id, len(done.aliases) - 1, out, len(per_schedule), done.audit_id
    )


def erase_dead_letters(
    metadata: MetadataStore, tenant: str, subject: ErasureSubject, hash_key: bytes
) -> int:
    """Delete the tenant's dead letters whose payload names the person: an address that
    hashes to one of their email hashes, or any string value equal to another identifier of
    theirs (ESP profile id, phone, external or anonymous id)."""
    emails = {i.value for i in subject.identifiers if i.kind == EMAIL}
    others = {i.value for i in subject.identifiers if i.kind != EMAIL}
    doomed: list[int] = []
    for letter_id, payload in _letters(metadata, tenant):
        if _names(payload, emails, others, hash_key):
            doomed.append(letter_id)
    if not doomed:
        return 0
    n = 0
    with metadata._guard(), metadata.engine.begin() as conn:
        for i in range(0, len(doomed), _PAGE):
            n += conn.execute(
                dead_letters.delete().where(dead_letters.c.id.in_(doomed[i : i + _PAGE]))
            ).rowcount
    return n


def _letters(metadata: MetadataStore, tenant: str) -> Iterator[tuple[int, str]]:
    after = 0
    while True:
        with metadata._guard(), metadata.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dead_letters.c.id, dead_letters.c.payload)
                .where(dead_letters.c.tenant == tenant, dead_letters.c.id > after)
                .order_by(dead_letters.c.id)
                .limit(_PAGE)
            ).all()
        yield from ((int(i), str(p)) for i, p in rows)
        if len(rows) < _PAGE:
            return
        after = int(rows[-1][0])


def _names(payload: str, emails: set[str], others: set[str], key: bytes) -> bool:
    if emails:
        for candidate in _EMAILISH.findall(payload):
            try:
                if hash_email(key, candidate) in emails:
                    return True
            except ValueError:
                continue
    if not others:
        return False
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return any(v in payload for v in others)
    return any(s.strip() in others for s in _strings(parsed))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
