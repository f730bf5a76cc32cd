"""Intents and their change history (who changed what, when) in the metadata store.

Every create, update and delete writes a history row in the same transaction as the change, with
the fields that changed as [before, after]. Updates may name the version they were based on: a
stale version is a conflict (409), so two operators never silently overwrite each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from sendflowr.errors import ConflictError, NotFoundError
from sendflowr.intents import HotPathSignal, Intent, changes
from sendflowr.storage.metadata.store import MetadataStore, aware
from sendflowr.storage.metadata.tables import intent_history, intents


@dataclass(frozen=True, slots=True)
class IntentChange:
    intent_id: str
    version: int
    action: str
    actor: str
    changed_at: datetime
    changes: dict[str, list[Any]]


class IntentStore:
    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self.engine = metadata.engine

    def create(self, intent: Intent, actor: str) -> Intent:
        self.metadata.get_tenant(intent.tenant)
        now = datetime.now(UTC)
        intent = replace(intent, version=1, created_at=now, updated_at=now)
        try:
            with self.metadata._guard(), self.engine.begin() as conn:
                conn.execute(intents.insert().values(**_row(intent)))
                _history(conn, intent, "created", actor, changes({}, intent.config()))
        except IntegrityError:
            raise ConflictError(
                f"intent {intent.intent_id!r} exists already", field="intent_id"
            ) from None
        return intent

    def find(self, tenant: str, intent_id: str) -> Intent | None:
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(
                intents.select().where(intents.c.tenant == tenant, intents.c.intent_id == intent_id)
            ).first()
        return _intent(row._mapping) if row is not None else None

    def get(self, tenant: str, intent_id: str) -> Intent:
        found = self.find(tenant, intent_id)
        if found is None:
            raise NotFoundError(f"no intent {intent_id!r} for tenant {tenant!r}", field="intent_id")
        return found

    def all(self, tenant: str) -> list[Intent]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                intents.select().where(intents.c.tenant == tenant).order_by(intents.c.intent_id)
            ).all()
        return [_intent(r._mapping) for r in rows]

    def update(self, updated: Intent, actor: str, *, expected_version: int | None = None) -> Intent:
        """Replace the intent's configuration; a history row records what changed. Nothing
        changed: no new version, no history row."""
        with self.metadata._guard(), self.engine.begin() as conn:
            row = conn.execute(
                intents.select()
                .where(intents.c.tenant == updated.tenant, intents.c.intent_id == updated.intent_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no intent {updated.intent_id!r} for tenant {updated.tenant!r}",
                    field="intent_id",
                )
            current = _intent(row._mapping)
            if expected_version is not None and expected_version != current.version:
                raise ConflictError(
                    f"intent {updated.intent_id!r} is at version {current.version}, not "
                    f"{expected_version}: reload it and apply the change again",
                    field="version",
                )
            diff = changes(current.config(), updated.config())
            if not diff:
                return current
            new = replace(
                updated,
                version=current.version + 1,
                created_at=current.created_at,
                updated_at=datetime.now(UTC),
            )
            # the version in WHERE makes a concurrent writer on SQLite (no row locks) lose
            result = conn.execute(
                intents.update()
                .where(
                    intents.c.tenant == new.tenant,
                    intents.c.intent_id == new.intent_id,
                    intents.c.version == current.version,
                )
                .values(**_row(new))
            )
            if not result.rowcount:
                raise ConflictError(
                    f"intent {new.intent_id!r} changed concurrently; retry", field="version"
                )
            _history(conn, new, "updated", actor, diff)
        return new

    def delete(self, tenant: str, intent_id: str, actor: str) -> None:
        with self.metadata._guard(), self.engine.begin() as conn:
            row = conn.execute(
                intents.select().where(intents.c.tenant == tenant, intents.c.intent_id == intent_id)
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no intent {intent_id!r} for tenant {tenant!r}", field="intent_id"
                )
            current = _intent(row._mapping)
            conn.execute(
                intents.delete().where(intents.c.tenant == tenant, intents.c.intent_id == intent_id)
            )
            gone = replace(current, version=current.version + 1)
            _history(conn, gone, "deleted", actor, changes(current.config(), {}))

    def history(self, tenant: str, intent_id: str, limit: int = 200) -> list[IntentChange]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                intent_history.select()
                .where(intent_history.c.tenant == tenant, intent_history.c.intent_id == intent_id)
                .order_by(intent_history.c.id.desc())
                .limit(limit)
            ).all()
        return [
            IntentChange(
                r.intent_id, r.version, r.action, r.actor, aware(r.changed_at), dict(r.changes)
            )
            for r in rows
        ]

    def hot_path_types(self) -> dict[str, dict[str, int]]:
        """{tenant: {event_type: longest within_seconds}} over every intent: what the pipeline
        watches for promotions."""
        out: dict[str, dict[str, int]] = {}
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(intents.c.tenant, intents.c.hot_path_signals).where(
                    intents.c.hot_path_signals != sa.null()
                )
            ).all()
        for tenant, signals in rows:
            for s in signals or []:
                kinds = out.setdefault(tenant, {})
                kinds[s["event_type"]] = max(kinds.get(s["event_type"], 0), s["within_seconds"])
        return out


def _row(i: Intent) -> dict[str, Any]:
    return {
        "tenant": i.tenant,
        "intent_id": i.intent_id,
        "name": i.name,
        "description": i.description,
        "window_seconds": i.window_seconds,
        "latency_seconds": i.latency_seconds,
        "hot_path_signals": [s.as_dict() for s in i.hot_path_signals],
        "suppression_sources": list(i.suppression_sources),
        "frequency_cap_group": i.frequency_cap_group,
        "esp": i.esp,
        "binding": dict(i.binding),
        "version": i.version,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    }


def _intent(r: Any) -> Intent:
    return Intent(
        tenant=r["tenant"],
        intent_id=r["intent_id"],
        name=r["name"],
        description=r["description"],
        window_seconds=r["window_seconds"],
        latency_seconds=r["latency_seconds"],
        hot_path_signals=tuple(
            HotPathSignal(s["event_type"], int(s["within_seconds"]))
            for s in r["hot_path_signals"] or []
        ),
        suppression_sources=tuple(r["suppression_sources"] or []),
        frequency_cap_group=r["frequency_cap_group"],
        esp=r["esp"],
        binding=dict(r["binding"] or {}),
        version=r["version"],
        created_at=aware(r["created_at"]),
        updated_at=aware(r["updated_at"]),
    )


def _history(
    conn: Connection, intent: Intent, action: str, actor: str, diff: dict[str, list[Any]]
) -> None:
    conn.execute(
        intent_history.insert().values(
            tenant=intent.tenant,
            intent_id=intent.intent_id,
            version=intent.version,
            action=action,
            actor=actor,
            changed_at=datetime.now(UTC),
            changes=diff,
        )
    )
