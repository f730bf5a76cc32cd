"""What the sim has seen: outcomes per operation, events served and created, webhook deliveries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Stats:
    operations: dict[str, Counter[str]] = field(default_factory=dict)
    events_served: int = 0
    # Events created through POST /api/events and bulk jobs, by deduplication key
    # (unique_id, or the time to the second when absent; per profile and metric, as Klaviyo).
    created_received: int = 0
    created_keys: dict[str, int] = field(default_factory=dict)
    created_unique_ids: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, Counter[str]] = field(default_factory=dict)
    delivery_errors: dict[str, str] = field(default_factory=dict)

    def record(self, operation: str, status: int) -> None:
        c = self.operations.get(operation)
        if c is None:
            c = self.operations[operation] = Counter()
        c["requests"] += 1
        if status == 429:
            c["429"] += 1
        klass = f"{status // 100}xx"
        c[klass] += 1

    def record_created(self, unique_id: str, dedup_key: str) -> None:
        self.created_received += 1
        self.created_keys[dedup_key] = self.created_keys.get(dedup_key, 0) + 1
        self.created_unique_ids[unique_id] = self.created_unique_ids.get(unique_id, 0) + 1

    def record_delivery(
        self, webhook_id: str, events: int, status: int | None, error: str | None
    ) -> None:
        c = self.deliveries.get(webhook_id)
        if c is None:
            c = self.deliveries[webhook_id] = Counter()
        c["attempts"] += 1
        if status is not None and 200 <= status < 300:
            c["delivered"] += 1
            c["events_delivered"] += events
        else:
            c["failed"] += 1
            self.delivery_errors[webhook_id] = error or f"HTTP {status}"

    def snapshot(self, include_ids: bool = False) -> dict[str, Any]:
        duplicates = sum(n - 1 for n in self.created_keys.values())
        created: dict[str, Any] = {
            "received": self.created_received,
            "unique": len(self.created_keys),
            "duplicates": duplicates,
        }
        if include_ids:
            created["unique_ids"] = sorted(self.created_unique_ids)
            created["repeated_unique_ids"] = {
                k: n for k, n in sorted(self.created_unique_ids.items()) if n > 1
            }
        return {
            "operations": {
                op: {k: c.get(k, 0) for k in ("requests", "2xx", "4xx", "429", "5xx")}
                for op, c in sorted(self.operations.items())
            },
            "events_served": self.events_served,
            "created_events": created,
            "webhook_deliveries": {
                wid: {
                    **{
                        k: c.get(k, 0)
                        for k in ("attempts", "delivered", "failed", "events_delivered")
                    },
                    "last_error": self.delivery_errors.get(wid),
                }
                for wid, c in sorted(self.deliveries.items())
            },
        }
