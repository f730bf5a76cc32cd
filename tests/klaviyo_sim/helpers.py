"""Request bodies shaped as Klaviyo's spec asks."""

from __future__ import annotations

import orjson


def event_body(
    email: str, unique_id: str | None = "u-1", metric: str = "SendFlowr Trigger"
) -> bytes:
    attributes: dict[str, object] = {
        "properties": {"reason": "test"},
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
        "time": "2026-01-10T10:00:00+00:00",
    }
    if unique_id is not None:
        attributes["unique_id"] = unique_id
    return orjson.dumps({"data": {"type": "event", "attributes": attributes}})


def bulk_body(n_events: int, profiles: int = 1, prefix: str = "b") -> bytes:
    items = []
    per = max(1, n_events // profiles)
    k = 0
    for p in range(profiles):
        events = []
        for _ in range(per):
            events.append(
                {
                    "type": "event",
                    "attributes": {
                        "properties": {"n": k},
                        "metric": {"data": {"type": "metric", "attributes": {"name": "Bulk"}}},
                        "unique_id": f"{prefix}-{k}",
                    },
                }
            )
            k += 1
        items.append(
            {
                "type": "event-bulk-create",
                "attributes": {
                    "profile": {
                        "data": {"type": "profile", "attributes": {"email": f"p{p}@x.test"}}
                    },
                    "events": {"data": events},
                },
            }
        )
    return orjson.dumps(
        {
            "data": {
                "type": "event-bulk-create-job",
                "attributes": {"events-bulk-create": {"data": items}},
            }
        }
    )


def webhook_body(url: str, secret: str = "s3cret", topics: tuple[str, ...] = ()) -> bytes:
    chosen = topics or ("event:klaviyo.opened_email", "event:klaviyo.clicked_email")
    return orjson.dumps(
        {
            "data": {
                "type": "webhook",
                "attributes": {"name": "sf", "endpoint_url": url, "secret_key": secret},
                "relationships": {
                    "webhook-topics": {"data": [{"type": "webhook-topic", "id": t} for t in chosen]}
                },
            }
        }
    )
