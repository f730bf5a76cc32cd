"""The identity graph in the metadata store (SQLite embedded, PostgreSQL at scale).

Resolving a batch is one transaction per tenant. It starts with an UPDATE of the tenant's row in
`identity_versions`, which takes that row's lock on PostgreSQL and the write lock on SQLite: two
workers resolving the same tenant take turns, so concurrent workers end with exactly the graph a
serial run gives. The version number it guards lets each process keep a warm copy of the graph:
when no other process wrote since this one did, nothing needs reading.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sendflowr.errors import ConflictError, NotFoundError
from sendflowr.event_columns import columns
from sendflowr.events import CanonicalEvent
from sendflowr.identity.graph import Attached, Created, Graph, Merged, Refused
from sendflowr.identity.identifiers import Blocklist, Identifier, from_event
from sendflowr.identity.rules import Limits
from sendflowr.storage.metadata.store import MetadataStore
from sendflowr.storage.metadata.tables import (
    identity_erasures as erasures_t,
)
from sendflowr.storage.metadata.tables import (
    identity_identifiers as ids_t,
)
from sendflowr.storage.metadata.tables import (
    identity_merges as merges_t,
)
from sendflowr.storage.metadata.tables import (
    identity_profiles as profiles_t,
)
from sendflowr.storage.metadata.tables import (
    identity_versions as versions_t,
)

_CHUNK = 400  # identifiers per IN (...) query: well inside SQLite's variable limit


@dataclass(frozen=True, slots=True)
class Profile:
    universal_id: str
    identifiers: list[Identifier]
    aliases: list[str]  # universal ids merged into this one (their events are this person's)
    created_at: datetime
    merges: list[MergeRecord]


@dataclass(frozen=True, slots=True)
class MergeRecord:
    id: int
    status: str
    survivor: str
    merged: str | None
    identifiers: list[Identifier]
    reason: str
    occurrences: int
    source_event_id: str
    created_at: datetime
    split_at: datetime | None


@dataclass(frozen=True, slots=True)
class SplitResult:
    merge: MergeRecord
    restored: str  # the universal id that exists again
    moved_back: list[Identifier]


@dataclass(frozen=True, slots=True)
class ErasureSubject:
    universal_id: str  # the root
    aliases: list[str]  # itself first, then every id merged into it
    identifiers: list[Identifier]
    stranger_ids: list[str]  # ids decisions gave the person before they existed


@dataclass(frozen=True, slots=True)
class ErasedPerson:
    universal_id: str
    aliases: list[str]
    removed: dict[str, int]  # per store, as recorded in the audit row
    audit_id: int


@dataclass
class _TenantCache:
    version: int
    graph: Graph
    complete: bool  # every identifier of the tenant is in `graph`


@dataclass
class BatchResolution:
    universal_ids: list[str]
    merged: dict[str, list[str]] = field(default_factory=dict)  # survivor -> absorbed
    refused: int = 0


# The decision path's identity reads, built once: building a select per call (its clauses and
# its cache key) cost SQLAlchemy about twice what running it does.
_ALIASES: Final = (
    sa.select(profiles_t.c.universal_id)
    .where(
        profiles_t.c.tenant == sa.bindparam("tenant"),
        profiles_t.c.merged_into == sa.bindparam("root"),
    )
    .order_by(profiles_t.c.seq)
)
# root(owner(identifier)) and its aliases in one statement (a single decision needs the
# person and the ids their events are stored under): a row per alias, or one row with a NULL
# alias; the aliases in _ALIASES's order.
_ALIAS_T: Final = profiles_t.alias("alias_profiles")
_OWNER_ROOT_ALIASES: Final = (
    sa.select(
        ids_t.c.universal_id, profiles_t.c.merged_into, _ALIAS_T.c.universal_id.label("alias")
    )
    .select_from(
        ids_t.outerjoin(
            profiles_t,
            sa.and_(
                profiles_t.c.tenant == ids_t.c.tenant,
                profiles_t.c.universal_id == ids_t.c.universal_id,
            ),
        ).outerjoin(
            _ALIAS_T,
            sa.and_(
                _ALIAS_T.c.tenant == ids_t.c.tenant,
                _ALIAS_T.c.merged_into
                == sa.func.coalesce(profiles_t.c.merged_into, ids_t.c.universal_id),
            ),
        )
    )
    .where(
        ids_t.c.tenant == sa.bindparam("tenant"),
        ids_t.c.kind == sa.bindparam("kind"),
        ids_t.c.value == sa.bindparam("value"),
    )
    .order_by(_ALIAS_T.c.seq)
)


class IdentityGraphStore:
    """Resolves events to universal ids and keeps the merge log; see the module docstring."""

    def __init__(
        self,
        metadata: MetadataStore,
        key: bytes,
        limits: Limits | None = None,
        blocklist: Blocklist | None = None,
        *,
        warm_cache: bool = True,
    ) -> None:
        self.metadata = metadata
        self.engine = metadata.engine
        self._key = key
        self.limits = limits or Limits()
        self.blocklist = blocklist or Blocklist()
        self._warm = warm_cache
        self._cache: dict[str, _TenantCache] = {}
        self._usable_cache: tuple[Blocklist, dict[_Key, tuple[Identifier, ...]]] = (
            self.blocklist,
            {},
        )
        self._lock = threading.Lock()

    def new_universal_id(self, tenant: str, first: Identifier) -> str:
        """Deterministic from the identifier that founded the person, so two workers that
        create the same person concurrently agree on its id."""
        msg = f"{tenant}\x00{first.kind}\x00{first.value}".encode()
        return "sf_" + hmac.digest(self._key, msg, "sha256")[:8].hex()

    # -- resolving --------------------------------------------------------------------------
    def resolve_events(self, tenant: str, events: Sequence[CanonicalEvent]) -> BatchResolution:
        with self._lock:
            try:
                return self._resolve(tenant, events)
            except BaseException:
                # The warm graph may hold changes the rolled-back transaction never wrote.
                self._cache.pop(tenant, None)
                raise

    def _resolve(self, tenant: str, events: Sequence[CanonicalEvent]) -> BatchResolution:
        with self.metadata._guard(), self.engine.begin() as conn:
            version = self._lock_tenant(conn, tenant)
            keys, usable = self._usable(events)
            graph = self._graph_for(conn, tenant, version, list(set(usable.values())))
            start = len(graph.changes)
            out = BatchResolution(self._assign(tenant, graph, events, keys, usable))
            changes = graph.changes[start:]
            if changes:
                self._persist(conn, tenant, changes)
                version += 1
                conn.execute(
                    versions_t.update().where(versions_t.c.tenant == tenant).values(version=version)
                )
            for change in changes:
                if isinstance(change, Merged):
                    out.merged.setdefault(change.survivor, []).append(change.merged)
                elif isinstance(change, Refused):
                    out.refused += 1
            graph.changes.clear()
            if self._warm:
                cache = self._cache.get(tenant)
                complete = cache is not None and cache.complete and cache.graph is graph
                self._cache[tenant] = _TenantCache(version, graph, complete)
        return out

    def _usable(
        self, events: Sequence[CanonicalEvent]
    ) -> tuple[list[_Key], dict[_Key, tuple[Identifier, ...]]]:
        """`_usable_identifiers`, with what earlier batches worked out kept (bounded): the
        same people come back batch after batch."""
        if self._usable_cache[0] is not self.blocklist or len(self._usable_cache[1]) > 500_000:
            self._usable_cache = (self.blocklist, {})
        return _usable_identifiers(events, self.blocklist, self._usable_cache[1])

    def _assign(
        self,
        tenant: str,
        graph: Graph,
        events: Sequence[CanonicalEvent],
        keys: list[_Key],
        usable: Mapping[_Key, tuple[Identifier, ...]],
    ) -> list[str]:
        """The universal id of each event, in order, applying the rules to the graph: what
        `Graph.resolve` event by event gives, with the common case done in bulk.

        An identifier changes owner only by a merge (attaching claims unowned ones only), so
        an identifier set that is wholly one person's when the batch starts stays that
        person's until the batch's first merge: those events are looked up all at once, and
        the others (new people, new identifiers) resolved in order. After a merge, every
        later event is resolved in order, one at a time."""
        owner_of = graph.owner_of
        known: dict[_Key, str] = {}
        for key, idents in usable.items():
            first = owner_of.get(idents[0]) if idents else None
            if first is not None and all(owner_of.get(i) == first for i in idents[1:]):
                known[key] = first
        uids: list[str | None] = list(map(known.get, keys))
        if None not in uids:
            return cast(list[str], uids)
        misses = [i for i, u in enumerate(uids) if u is None]
        after_merge: int | None = None
        for i in misses:
            uid = known.get(keys[i])
            if uid is None:
                uid, merged = self._one(tenant, graph, events[i], keys[i], usable, known)
                if merged:
                    uids[i] = uid
                    after_merge = i + 1
                    break
            uids[i] = uid
        if after_merge is not None:
            known.clear()  # owners moved: from here on, event by event
            for i in range(after_merge, len(events)):
                uid = known.get(keys[i])
                if uid is None:
                    uid, merged = self._one(tenant, graph, events[i], keys[i], usable, known)
                    if merged:
                        known.clear()
                uids[i] = uid
        return cast(list[str], uids)

    def _one(
        self,
        tenant: str,
        graph: Graph,
        event: CanonicalEvent,
        key: _Key,
        usable: Mapping[_Key, tuple[Identifier, ...]],
        known: dict[_Key, str],
    ) -> tuple[str, bool]:
        """One event through the rules (noting a wholly-owned identifier set in `known`);
        returns its universal id and whether it merged people."""
        idents = usable[key]
        if not idents:
            raise ValueError(f"event {event.event_id}: every identifier is a blocked placeholder")
        owner_of = graph.owner_of
        first = owner_of.get(idents[0])
        if first is not None and all(owner_of.get(i) == first for i in idents[1:]):
            known[key] = first
            return first, False
        p = graph.resolve(
            idents,
            self.limits,
            lambda first: self.new_universal_id(tenant, first),
            event.event_id,
        )
        return p.universal_id, bool(p.merge)

    def _lock_tenant(self, conn: Connection, tenant: str) -> int:
        locked = conn.execute(
            versions_t.update()
            .where(versions_t.c.tenant == tenant)
            .values(version=versions_t.c.version)
        ).rowcount
        if not locked:
            if self.metadata.find_tenant(tenant) is None:
                raise NotFoundError(f"no tenant {tenant!r}", field="tenant")
            conn.execute(_insert_ignore(conn, versions_t, {"tenant": tenant, "version": 0}))
            conn.execute(
                versions_t.update()
                .where(versions_t.c.tenant == tenant)
                .values(version=versions_t.c.version)
            )
        version: int = conn.execute(
            sa.select(versions_t.c.version).where(versions_t.c.tenant == tenant)
        ).scalar_one()
        return version

    def _graph_for(
        self,
        conn: Connection,
        tenant: str,
        version: int,
        usable: Sequence[Sequence[Identifier]],
    ) -> Graph:
        cache = self._cache.get(tenant)
        if cache is not None and cache.version == version:
            if cache.complete:
                return cache.graph
            wanted = _distinct(usable)
            missing = [i for i in wanted if i not in cache.graph.owner_of]
            self._load(conn, tenant, missing, cache.graph)
            return cache.graph
        if self._warm and cache is None:
            graph = Graph()
            self._load_all(conn, tenant, graph)
            self._cache[tenant] = _TenantCache(version, graph, complete=True)
            return graph
        # Another process wrote since: start a fresh partial graph for this batch.
        graph = Graph()
        self._load(conn, tenant, _distinct(usable), graph)
        if self._warm:
            self._cache[tenant] = _TenantCache(version, graph, complete=False)
        return graph

    def _load_all(self, conn: Connection, tenant: str, graph: Graph) -> None:
        ages = dict(
            conn.execute(
                sa.select(profiles_t.c.universal_id, profiles_t.c.seq).where(
                    profiles_t.c.tenant == tenant, profiles_t.c.merged_into.is_(None)
                )
            ).all()
        )
        members: dict[str, list[Identifier]] = {}
        for kind, value, uid in conn.execute(
            sa.select(ids_t.c.kind, ids_t.c.value, ids_t.c.universal_id).where(
                ids_t.c.tenant == tenant
            )
        ).all():
            members.setdefault(uid, []).append(Identifier(kind, value))
        for uid, age in ages.items():
            graph.add_profile(uid, age, members.get(uid, ()))

    def _load(
        self, conn: Connection, tenant: str, identifiers: Iterable[Identifier], graph: Graph
    ) -> None:
        """Load the profiles owning these identifiers, with all their identifiers: one query
        per kind and chunk (identifier -> its profile -> every identifier of that profile)."""
        by_kind: dict[str, list[str]] = {}
        for ident in identifiers:
            by_kind.setdefault(ident.kind, []).append(ident.value)
        chunk = 4000 if conn.dialect.name == "postgresql" else _CHUNK
        seed = ids_t.alias("seed")
        member = ids_t.alias("member")
        found: dict[str, tuple[int, list[Identifier]]] = {}
        for kind, values in sorted(by_kind.items()):
            for i in range(0, len(values), chunk):
                rows = conn.execute(
                    sa.select(
                        member.c.kind, member.c.value, member.c.universal_id, profiles_t.c.seq
                    )
                    .select_from(seed)
                    .join(
                        member,
                        sa.and_(
                            member.c.tenant == seed.c.tenant,
                            member.c.universal_id == seed.c.universal_id,
                        ),
                    )
                    .join(
                        profiles_t,
                        sa.and_(
                            profiles_t.c.tenant == seed.c.tenant,
                            profiles_t.c.universal_id == seed.c.universal_id,
                        ),
                    )
                    .where(
                        seed.c.tenant == tenant,
                        seed.c.kind == kind,
                        seed.c.value.in_(values[i : i + chunk]),
                    )
                    .distinct()
                )
                for k, v, uid, seq in rows:
                    found.setdefault(uid, (seq, []))[1].append(Identifier(k, v))
        for uid, (seq, members) in found.items():
            if uid not in graph.members:
                graph.add_profile(uid, seq, members)

    def _persist(self, conn: Connection, tenant: str, changes: Sequence[Any]) -> None:
        now = datetime.now(UTC)
        created = [c for c in changes if isinstance(c, Created)]
        if created:
            conn.execute(
                profiles_t.insert(),
                [
                    {
                        "tenant": tenant,
                        "universal_id": c.universal_id,
                        "source_event_id": c.source_event_id,
                        "created_at": now,
                    }
                    for c in created
                ],
            )
        # Order matters: a merge re-points identifiers attached earlier in the batch.
        pending: list[dict[str, Any]] = []
        for change in changes:
            if isinstance(change, Attached):
                pending.append(
                    {
                        "tenant": tenant,
                        "kind": change.identifier.kind,
                        "value": change.identifier.value,
                        "universal_id": change.universal_id,
                        "source_event_id": change.source_event_id,
                        "created_at": now,
                    }
                )
            elif isinstance(change, Merged):
                if pending:
                    conn.execute(ids_t.insert(), pending)
                    pending = []
                self._persist_merge(conn, tenant, change, now)
            elif isinstance(change, Refused):
                self._persist_refusal(conn, tenant, change, now)
        if pending:
            conn.execute(ids_t.insert(), pending)

    def _persist_merge(self, conn: Connection, tenant: str, m: Merged, now: datetime) -> None:
        children = conn.execute(
            sa.select(profiles_t.c.universal_id).where(
                profiles_t.c.tenant == tenant, profiles_t.c.merged_into == m.merged
            )
        ).scalars()
        absorbed = [m.merged, *children]
        conn.execute(
            ids_t.update()
            .where(ids_t.c.tenant == tenant, ids_t.c.universal_id == m.merged)
            .values(universal_id=m.survivor)
        )
        # Path compression: everything that pointed at the merged profile points at the root.
        conn.execute(
            profiles_t.update()
            .where(
                profiles_t.c.tenant == tenant,
                profiles_t.c.universal_id.in_(absorbed),
            )
            .values(merged_into=m.survivor)
        )
        conn.execute(
            merges_t.insert().values(
                tenant=tenant,
                status="merged",
                survivor=m.survivor,
                merged=m.merged,
                identifiers=[[i.kind, i.value] for i in m.moved],
                absorbed=absorbed,
                reason="identifiers seen on one event",
                refusal_key=None,
                occurrences=1,
                source_event_id=m.source_event_id,
                created_at=now,
                last_seen_at=now,
            )
        )

    def _persist_refusal(self, conn: Connection, tenant: str, r: Refused, now: datetime) -> None:
        ref = r.refusal
        ident = [[ref.identifier.kind, ref.identifier.value]] if ref.identifier else []
        subject = ref.other_universal_id or (f"{ident[0][0]}:{ident[0][1]}" if ident else "")
        # One row per distinct refusal, counted: a shared address seen 10,000 times is one row.
        key = hashlib.sha256(f"{r.universal_id}|{subject}|{ref.reason}".encode()).hexdigest()
        values = {
            "tenant": tenant,
            "status": "refused",
            "survivor": r.universal_id,
            "merged": ref.other_universal_id,
            "identifiers": ident,
            "absorbed": [],
            "reason": ref.reason,
            "refusal_key": key,
            "occurrences": 1,
            "source_event_id": r.source_event_id,
            "created_at": now,
            "last_seen_at": now,
        }
        updated = conn.execute(
            merges_t.update()
            .where(merges_t.c.tenant == tenant, merges_t.c.refusal_key == key)
            .values(occurrences=merges_t.c.occurrences + 1, last_seen_at=now)
        ).rowcount
        if not updated:
            conn.execute(merges_t.insert().values(**values))

    # -- reading ----------------------------------------------------------------------------
    def root(self, tenant: str, universal_id: str) -> str | None:
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(
                sa.select(profiles_t.c.universal_id, profiles_t.c.merged_into).where(
                    profiles_t.c.tenant == tenant, profiles_t.c.universal_id == universal_id
                )
            ).first()
        if row is None:
            return None
        return str(row.merged_into or row.universal_id)

    def owner(self, tenant: str, identifier: Identifier) -> str | None:
        with self.metadata._guard(), self.engine.connect() as conn:
            uid: str | None = conn.execute(
                sa.select(ids_t.c.universal_id).where(
                    ids_t.c.tenant == tenant,
                    ids_t.c.kind == identifier.kind,
                    ids_t.c.value == identifier.value,
                )
            ).scalar_one_or_none()
        return uid

    def owners(self, tenant: str, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        """Root universal ids of many identifiers at once (absent: unknown)."""
        by_kind: dict[str, list[str]] = {}
        for ident in identifiers:
            by_kind.setdefault(ident.kind, []).append(ident.value)
        out: dict[Identifier, str] = {}
        with self.metadata._guard(), self.engine.connect() as conn:
            chunk = 4000 if conn.dialect.name == "postgresql" else _CHUNK
            for kind, values in by_kind.items():
                for i in range(0, len(values), chunk):
                    rows = conn.execute(
                        sa.select(ids_t.c.value, ids_t.c.universal_id).where(
                            ids_t.c.tenant == tenant,
                            ids_t.c.kind == kind,
                            ids_t.c.value.in_(values[i : i + chunk]),
                        )
                    )
                    for value, uid in rows:
                        out[Identifier(kind, value)] = uid
        return out

    def alias_map(self, tenant: str) -> dict[str, str]:
        """Every merged-away universal id of the tenant -> the id it was merged into."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(profiles_t.c.universal_id, profiles_t.c.merged_into).where(
                    profiles_t.c.tenant == tenant, profiles_t.c.merged_into.is_not(None)
                )
            )
            return {str(u): str(m) for u, m in rows}

    def owner_root_aliases(self, tenant: str, identifier: Identifier) -> list[str] | None:
        """The person an identifier names now (root(owner(identifier))) followed by the ids
        merged into it, as `aliases` gives them, in one query (the single decision's lookup);
        None: nobody."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                _OWNER_ROOT_ALIASES,
                {"tenant": tenant, "kind": identifier.kind, "value": identifier.value},
            ).all()
        if not rows:
            return None
        root = str(rows[0].merged_into or rows[0].universal_id)
        return [root, *(str(r.alias) for r in rows if r.alias is not None)]

    def aliases(self, tenant: str, universal_id: str) -> list[str]:
        """The universal ids whose stored events are this person's (itself first)."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(_ALIASES, {"tenant": tenant, "root": universal_id}).scalars()
            return [universal_id, *rows]

    def profile(self, tenant: str, universal_id: str, recent_merges: int = 20) -> Profile:
        root = self.root(tenant, universal_id)
        if root is None:
            raise NotFoundError(
                f"no person {universal_id!r} in tenant {tenant!r}", field="universal_id"
            )
        with self.metadata._guard(), self.engine.connect() as conn:
            created = conn.execute(
                sa.select(profiles_t.c.created_at).where(
                    profiles_t.c.tenant == tenant, profiles_t.c.universal_id == root
                )
            ).scalar_one()
            idents = [
                Identifier(k, v)
                for k, v in conn.execute(
                    sa.select(ids_t.c.kind, ids_t.c.value)
                    .where(ids_t.c.tenant == tenant, ids_t.c.universal_id == root)
                    .order_by(ids_t.c.kind, ids_t.c.value)
                ).all()
            ]
        aliases = self.aliases(tenant, root)
        merges = self.merge_log(tenant, universal_ids=aliases, limit=recent_merges)
        return Profile(root, idents, aliases[1:], _aware(created), merges)

    def merge_log(
        self,
        tenant: str,
        status: str | None = None,
        universal_ids: Sequence[str] | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[MergeRecord]:
        q = sa.select(merges_t).where(merges_t.c.tenant == tenant)
        if status is not None:
            q = q.where(merges_t.c.status == status)
        if universal_ids is not None:
            q = q.where(
                sa.or_(merges_t.c.survivor.in_(universal_ids), merges_t.c.merged.in_(universal_ids))
            )
        if before_id is not None:
            q = q.where(merges_t.c.id < before_id)
        q = q.order_by(merges_t.c.id.desc()).limit(limit)
        with self.metadata._guard(), self.engine.connect() as conn:
            return [_merge_record(r._mapping) for r in conn.execute(q)]

    # -- split ------------------------------------------------------------------------------
    def split(self, tenant: str, merge_id: int, operator: str) -> SplitResult:
        """Undo a merge: the merged profile exists again with the identifiers the merge moved
        (those the survivor still holds)."""
        with self._lock, self.metadata._guard(), self.engine.begin() as conn:
            self._lock_tenant(conn, tenant)
            row = conn.execute(
                sa.select(merges_t).where(merges_t.c.tenant == tenant, merges_t.c.id == merge_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no merge {merge_id} in tenant {tenant!r}", field="merge_id")
            record = _merge_record(row._mapping)
            if record.status != "merged" or record.merged is None:
                raise ConflictError(
                    f"merge {merge_id} is {record.status}, only an applied merge can be split",
                    field="merge_id",
                )
            survivor = self._root_in(conn, tenant, record.survivor)
            moved = record.identifiers
            back = []
            for ident in moved:
                res = conn.execute(
                    ids_t.update()
                    .where(
                        ids_t.c.tenant == tenant,
                        ids_t.c.kind == ident.kind,
                        ids_t.c.value == ident.value,
                        ids_t.c.universal_id == survivor,
                    )
                    .values(universal_id=record.merged)
                )
                if res.rowcount:
                    back.append(ident)
            absorbed = list(row._mapping["absorbed"] or [record.merged])
            conn.execute(
                profiles_t.update()
                .where(profiles_t.c.tenant == tenant, profiles_t.c.universal_id == record.merged)
                .values(merged_into=None)
            )
            children = [a for a in absorbed if a != record.merged]
            if children:
                conn.execute(
                    profiles_t.update()
                    .where(profiles_t.c.tenant == tenant, profiles_t.c.universal_id.in_(children))
                    .values(merged_into=record.merged)
                )
            now = datetime.now(UTC)
            conn.execute(
                merges_t.update()
                .where(merges_t.c.id == merge_id)
                .values(status="split", split_at=now, split_by=operator[:200])
            )
            conn.execute(
                versions_t.update()
                .where(versions_t.c.tenant == tenant)
                .values(version=versions_t.c.version + 1)
            )
            # The warm graph no longer matches: rebuild it on the next batch.
            self._cache.pop(tenant, None)
        done = self.merge_log(tenant, universal_ids=[record.merged], limit=50)
        final = next(m for m in done if m.id == merge_id)
        return SplitResult(final, record.merged, back)

    def _root_in(self, conn: Connection, tenant: str, uid: str) -> str:
        row = conn.execute(
            sa.select(profiles_t.c.merged_into).where(
                profiles_t.c.tenant == tenant, profiles_t.c.universal_id == uid
            )
        ).first()
        return str(row.merged_into) if row is not None and row.merged_into else uid

    # -- data-subject erasure ---------------------------------------------------------------
    def erasure_subject(self, tenant: str, universal_id: str) -> ErasureSubject | None:
        """What an erasure of this person (or of an id merged into them) must remove: the root
        id, the alias set, the identifiers, and the ids a decision or schedule gave the person
        while they were still a stranger (see `stranger_ids`). None: no such person."""
        root = self.root(tenant, universal_id)
        if root is None:
            return None
        aliases = self.aliases(tenant, root)
        with self.metadata._guard(), self.engine.connect() as conn:
            idents = [
                Identifier(k, v)
                for k, v in conn.execute(
                    sa.select(ids_t.c.kind, ids_t.c.value)
                    .where(ids_t.c.tenant == tenant, ids_t.c.universal_id.in_(aliases))
                    .order_by(ids_t.c.kind, ids_t.c.value)
                ).all()
            ]
            candidates = sorted(
                {self.new_universal_id(tenant, i) for i in idents}.difference(aliases)
            )
            taken = set(
                conn.execute(
                    sa.select(profiles_t.c.universal_id).where(
                        profiles_t.c.tenant == tenant, profiles_t.c.universal_id.in_(candidates)
                    )
                ).scalars()
            )
        strangers = [c for c in candidates if c not in taken]
        return ErasureSubject(root, aliases, idents, strangers)

    def erase(
        self,
        tenant: str,
        subject: ErasureSubject,
        actor: str,
        removed_elsewhere: Mapping[str, int],
    ) -> ErasedPerson:
        """Remove the person from the graph in one transaction: identifiers, profiles (the
        alias set) and every merge-log row naming them or one of their identifiers; record
        the erasure in `identity_erasures` (a keyed hash of the id, who, when, the counts).
        ConflictError when the person changed since `subject` was read (merged with someone
        else meanwhile): nothing is removed and the caller may retry."""
        with self._lock, self.metadata._guard(), self.engine.begin() as conn:
            self._lock_tenant(conn, tenant)
            exists = conn.execute(
                sa.select(profiles_t.c.seq).where(
                    profiles_t.c.tenant == tenant,
                    profiles_t.c.universal_id == subject.universal_id,
                )
            ).first()
            if exists is None:
                raise NotFoundError(
                    f"no person {subject.universal_id!r} in tenant {tenant!r}",
                    field="universal_id",
                )
            root = self._root_in(conn, tenant, subject.universal_id)
            aliases = [
                subject.universal_id,
                *conn.execute(
                    sa.select(profiles_t.c.universal_id)
                    .where(
                        profiles_t.c.tenant == tenant,
                        profiles_t.c.merged_into == subject.universal_id,
                    )
                    .order_by(profiles_t.c.seq)
                ).scalars(),
            ]
            if root != subject.universal_id or sorted(aliases) != sorted(subject.aliases):
                raise ConflictError(
                    f"person {subject.universal_id!r} changed during the erasure; retry",
                    field="universal_id",
                )
            idents = {(i.kind, i.value) for i in subject.identifiers}
            naming = sa.or_(merges_t.c.survivor.in_(aliases), merges_t.c.merged.in_(aliases))
            merge_ids = set(
                conn.execute(
                    sa.select(merges_t.c.id).where(merges_t.c.tenant == tenant, naming)
                ).scalars()
            )
            # A refusal names the identifier it refused (a JSON list): matched here, portably.
            for mid, listed in conn.execute(
                sa.select(merges_t.c.id, merges_t.c.identifiers).where(
                    merges_t.c.tenant == tenant, merges_t.c.status == "refused"
                )
            ).all():
                if any((k, v) in idents for k, v in listed or []):
                    merge_ids.add(mid)
            removed_merges = 0
            ordered = sorted(merge_ids)
            for i in range(0, len(ordered), _CHUNK):
                removed_merges += conn.execute(
                    merges_t.delete().where(merges_t.c.id.in_(ordered[i : i + _CHUNK]))
                ).rowcount
            removed_ids = conn.execute(
                ids_t.delete().where(ids_t.c.tenant == tenant, ids_t.c.universal_id.in_(aliases))
            ).rowcount
            removed_profiles = conn.execute(
                profiles_t.delete().where(
                    profiles_t.c.tenant == tenant, profiles_t.c.universal_id.in_(aliases)
                )
            ).rowcount
            conn.execute(
                versions_t.update()
                .where(versions_t.c.tenant == tenant)
                .values(version=versions_t.c.version + 1)
            )
            removed = {
                "identifiers": int(removed_ids),
                "profiles": int(removed_profiles),
                "merge_records": int(removed_merges),
                **{k: int(v) for k, v in removed_elsewhere.items()},
            }
            audit_id = conn.execute(
                erasures_t.insert()
                .values(
                    tenant=tenant,
                    subject_hash=self.erasure_hash(tenant, subject.universal_id),
                    actor=actor[:200],
                    erased_at=datetime.now(UTC),
                    removed=removed,
                )
                .returning(erasures_t.c.id)
            ).scalar_one()
            # The warm graph still holds the person: rebuild it on the next batch. The
            # memo of usable identifiers may hold theirs: drop it (it refills in one batch).
            self._cache.pop(tenant, None)
            self._usable_cache = (self.blocklist, {})
        return ErasedPerson(subject.universal_id, aliases, removed, int(audit_id))

    def erasure_hash(self, tenant: str, universal_id: str) -> str:
        """The audit log's name for an erased id: keyed, so it cannot be reversed or matched
        without the deployment's key, yet an operator holding an id can check it was erased."""
        msg = f"erasure\x00{tenant}\x00{universal_id}".encode()
        return hmac.digest(self._key, msg, "sha256").hex()

    def erasures(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        """The tenant's erasure audit rows, newest first."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(erasures_t)
                .where(erasures_t.c.tenant == tenant)
                .order_by(erasures_t.c.id.desc())
                .limit(limit)
            ).all()
        return [{**r._mapping, "erased_at": _aware(r._mapping["erased_at"])} for r in rows]

    def latest_erasure_id(self, tenant: str) -> int:
        """The tenant's newest erasure audit id (0: none yet), from the audit table every
        process of a deployment shares: one probe of ix_identity_erasures_tenant_id. Caches
        built from the tenant's people (the audience curve) compare it to notice an erasure
        another process ran."""
        with self.metadata._guard(), self.engine.connect() as conn:
            latest = conn.execute(
                sa.select(sa.func.max(erasures_t.c.id)).where(erasures_t.c.tenant == tenant)
            ).scalar()
        return int(latest or 0)

    def forget_cache(self, tenant: str | None = None) -> None:
        with self._lock:
            if tenant is None:
                self._cache.clear()
            else:
                self._cache.pop(tenant, None)


# An event's ESP and identifiers (external ids as a tuple of pairs): what `from_event` reads.
_Key = tuple[Any, ...]


def _usable_identifiers(
    events: Sequence[CanonicalEvent],
    blocklist: Blocklist,
    cache: dict[_Key, tuple[Identifier, ...]] | None = None,
) -> tuple[list[_Key], dict[_Key, tuple[Identifier, ...]]]:
    """A key per event (its ESP and identifiers) and `from_event(...).usable` of each
    distinct key, worked out once (a batch holds many events of each person) or taken from
    `cache`. The keys are built from the event and identifier columns."""
    if not events:
        return [], {}
    event_cols = columns(events)  # the batch decoder's, when it made them
    ids = event_cols["identifiers"]
    cols = columns(ids)
    external = cols["external_ids"]
    if any(external):
        external = tuple(tuple(x.items()) if x else None for x in external)
    else:
        external = (None,) * len(ids)
    keys = list(
        zip(
            event_cols["esp"],
            cols["email_hash"],
            cols["esp_profile_id"],
            cols["phone"],
            cols["anonymous_id"],
            external,
            strict=True,
        )
    )
    cache = {} if cache is None else cache
    usable: dict[_Key, tuple[Identifier, ...]] = {}
    for key, i in dict(zip(keys, range(len(keys)), strict=True)).items():
        found = cache.get(key)
        if found is None:
            found = cache[key] = from_event(key[0], ids[i], blocklist).usable
        usable[key] = found
    return keys, usable


def _distinct(usable: Sequence[Sequence[Identifier]]) -> list[Identifier]:
    seen: set[Identifier] = set()
    for idents in usable:
        seen.update(idents)
    return sorted(seen)


def _insert_ignore(conn: Connection, table: sa.Table, values: dict[str, Any]) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).values(**values).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).values(**values).on_conflict_do_nothing()


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _merge_record(row: Any) -> MergeRecord:
    return MergeRecord(
        id=int(row["id"]),
        status=row["status"],
        survivor=row["survivor"],
        merged=row["merged"],
        identifiers=[Identifier(k, v) for k, v in row["identifiers"] or []],
        reason=row["reason"],
        occurrences=int(row["occurrences"]),
        source_event_id=row["source_event_id"],
        created_at=_aware(row["created_at"]),
        split_at=_aware(row["split_at"]) if row["split_at"] else None,
    )
