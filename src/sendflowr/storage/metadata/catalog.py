"""The ESP's campaigns, flows and metrics as last fetched (names and status for summaries)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from sendflowr.storage.metadata.store import MetadataStore, aware_or_none
from sendflowr.storage.metadata.tables import esp_catalog
from sendflowr.storage.metadata.upsert import upsert

CatalogKind = Literal["campaign", "flow", "metric"]


@dataclass(frozen=True, slots=True)
class CatalogItem:
    kind: CatalogKind
    esp_id: str
    name: str
    status: str | None = None
    channel: str | None = None
    sent_at: datetime | None = None
    raw: dict[str, Any] | None = None


class CatalogStore:
    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self.engine = metadata.engine

    def upsert(self, tenant: str, esp: str, items: Iterable[CatalogItem]) -> int:
        now = datetime.now(UTC)
        n = 0
        with self.metadata._guard(), self.engine.begin() as conn:
            for item in items:
                upsert(
                    conn,
                    esp_catalog,
                    {
                        "tenant": tenant,
                        "esp": esp,
                        "kind": item.kind,
                        "esp_id": item.esp_id,
                        "name": item.name[:500],
                        "status": item.status,
                        "channel": item.channel,
                        "sent_at": item.sent_at,
                        "raw": item.raw or {},
                        "updated_at": now,
                    },
                    keys=("tenant", "esp", "kind", "esp_id"),
                )
                n += 1
        return n

    def counts(self, tenant: str) -> dict[str, int]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(esp_catalog.c.kind, sa.func.count())
                .where(esp_catalog.c.tenant == tenant)
                .group_by(esp_catalog.c.kind)
            ).all()
        return {str(kind): int(n) for kind, n in rows}

    def items(self, tenant: str, kind: CatalogKind, limit: int = 1000) -> list[CatalogItem]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                esp_catalog.select()
                .where(esp_catalog.c.tenant == tenant, esp_catalog.c.kind == kind)
                .order_by(esp_catalog.c.name)
                .limit(limit)
            ).all()
        return [
            CatalogItem(
                kind=r.kind,
                esp_id=r.esp_id,
                name=r.name,
                status=r.status,
                channel=r.channel,
                sent_at=aware_or_none(r.sent_at),
                raw=dict(r.raw or {}),
            )
            for r in rows
        ]

    def names(self, tenant: str, kind: CatalogKind) -> dict[str, str]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(esp_catalog.c.esp_id, esp_catalog.c.name).where(
                    esp_catalog.c.tenant == tenant, esp_catalog.c.kind == kind
                )
            ).all()
        return {r.esp_id: r.name for r in rows}
