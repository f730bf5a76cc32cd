"""Data-subject erasure: one person out of every store.

Order matters for a retry. The stores that hang off the identity graph go first (triggers,
the raw archive, events and explanations, dead letters, cached features), the graph itself
last, in one transaction with the audit row. A failure part-way leaves the person resolvable,
so calling the erasure again finishes it; once the graph row is gone the id is unknown (404).
Events a webhook stored for the person while the erasure ran are swept afterwards (only those
written before the graph transaction committed, so a person re-created since is not touched);
so are raw archive files written meanwhile (only those received before the commit).

Dead letters and the raw archive are searched by content (`identity.matching`): a payload
names the person when it holds an address hashing to one of their email hashes, a string
equal to one of their identifiers (an email hash included) or one of their phones however
formatted; archive rows also go when their `event_id` is one of the person's stored events
(looked up before the events are erased). A raw row naming two people (a webhook item whose
identifiers were refused a merge) goes with either's erasure, so a replay no longer brings
that event back for the other.

What an erasure cannot reach: an ESP call a worker had already claimed may still go out, and
copies of the raw archive made outside SendFlowr (a compaction job's output, a bucket's
object versions or backups) are the operator's to erase.

The tenant's audience curve (an aggregate over everyone, no per-person row) is rebuilt without
the person: at once in the process that erased (the route calls TimingService.forget_audience);
in every other process, decisions made more than decisions.ERASURE_CHECK_S after the erasure
use a rebuilt curve (each process watches the tenant's latest erasure audit id).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from sendflowr import event_columns
from sendflowr.archive.store import ArchiveErasure, RawArchive
from sendflowr.connectors.klaviyo.normalize import WEBHOOK_IDENTIFIERS
from sendflowr.errors import NotFoundError
from sendflowr.identity.matching import PersonMatcher
from sendflowr.identity.store import ErasedPerson, IdentityGraphStore
from sendflowr.storage.events.base import EventStore
from sendflowr.storage.features.base import FeatureCache
from sendflowr.storage.metadata.store import MetadataStore
from sendflowr.storage.metadata.tables import dead_letters
from sendflowr.storage.metadata.triggers import TriggerStore

_PAGE = 1_000
# Event ids looked up to find the person's archive rows by `event_id` (their identifiers find
# the rest, however many events they have).
MAX_EVENT_IDS = 100_000


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
    archive: RawArchive | None = None,
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
    matcher = PersonMatcher(subject.identifiers, hash_key)
    per_schedule = triggers.erase_people(tenant, ids)
    event_ids: list[str] = []
    raw = ArchiveErasure()
    if archive is not None:
        # Before the events go (also on a retry): the archive's event_id column names them.
        event_ids = events.event_ids(tenant, ids, MAX_EVENT_IDS)
        raw = archive.erase_rows(tenant, matcher, event_ids=event_ids)
    stored = events.erase_people(tenant, ids)
    letters = erase_dead_letters(metadata, tenant, matcher)
    cached = len(features.get_many(tenant, ids))
    features.invalidate(tenant, ids)
    removed = {
        "events": stored["events"],
        "explanations": stored["explanations"],
        "triggers": sum(per_schedule.values()),
        "features": cached,
        "dead_letters": letters,
        "archive_rows": raw.rows_removed,
        "archive_files": raw.files,
    }
    done: ErasedPerson = identity.erase(tenant, subject, actor, removed)
    event_columns.forget()  # the last ingest batches' columns may hold their identifiers
    WEBHOOK_IDENTIFIERS.clear()  # plaintext identifiers of profiles seen on webhooks
    committed = datetime.now(UTC)
    late = events.erase_people(tenant, ids, ingested_before=committed)
    features.invalidate(tenant, ids)
    out = dict(done.removed)
    out["events"] += late["events"]
    out["explanations"] += late["explanations"]
    if archive is not None:
        # Files a webhook wrote while the erasure ran, received before the graph commit.
        again = archive.erase_rows(
            tenant, matcher, event_ids=event_ids, skip=raw.seen, received_before=committed
        )
        out["archive_rows"] += again.rows_removed
        out["archive_files"] += again.files
    return Erasure(
        tenant, done.universal_id, len(done.aliases) - 1, out, len(per_schedule), done.audit_id
    )


def erase_dead_letters(metadata: MetadataStore, tenant: str, matcher: PersonMatcher) -> int:
    """Delete the tenant's dead letters whose payload names the person (`PersonMatcher`: an
    address that hashes to one of their email hashes, any string value equal to one of their
    identifiers, or one of their phones however formatted)."""
    doomed: list[int] = []
    for letter_id, payload in _letters(metadata, tenant):
        if matcher.names(payload):
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
