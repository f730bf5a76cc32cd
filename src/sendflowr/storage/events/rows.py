"""Canonical events -> the columnar rows of `email_events` (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa

from sendflowr.events import CanonicalEvent

EMAIL_EVENT_SCHEMA = pa.schema(
    [
        ("tenant", pa.string()),
        ("universal_id", pa.string()),
        ("occurred_at", pa.timestamp("ms", tz="UTC")),
        ("event_id", pa.string()),
        ("esp", pa.string()),
        ("esp_event_id", pa.string()),
        ("event_type", pa.string()),
        ("email_hash", pa.string()),
        ("esp_profile_id", pa.string()),
        ("phone", pa.string()),
        ("external_ids", pa.map_(pa.string(), pa.string())),
        ("anonymous_id", pa.string()),
        ("campaign_id", pa.string()),
        ("flow_id", pa.string()),
        ("message_id", pa.string()),
        ("is_machine_open", pa.bool_()),
        ("properties", pa.string()),
        ("schema_version", pa.uint8()),
    ]
)


def events_to_arrow(events: Sequence[CanonicalEvent], universal_ids: Sequence[str]) -> pa.Table:
    if len(events) != len(universal_ids):
        raise ValueError("one universal id per event is required")
    dumps = orjson.dumps
    cols: dict[str, list[object]] = {name: [] for name in EMAIL_EVENT_SCHEMA.names}
    tenant, uid, at, eid = (
        cols["tenant"],
        cols["universal_id"],
        cols["occurred_at"],
        cols["event_id"],
    )
    esp, espid, etype = cols["esp"], cols["esp_event_id"], cols["event_type"]
    email, prof, phone = cols["email_hash"], cols["esp_profile_id"], cols["phone"]
    ext, anon, camp = cols["external_ids"], cols["anonymous_id"], cols["campaign_id"]
    flow, msg, mpp = cols["flow_id"], cols["message_id"], cols["is_machine_open"]
    props, ver = cols["properties"], cols["schema_version"]
    for e, u in zip(events, universal_ids, strict=True):
        ids = e.identifiers
        tenant.append(e.tenant)
        uid.append(u)
        at.append(e.occurred_at)
        eid.append(e.event_id)
        esp.append(e.esp)
        espid.append(e.esp_event_id)
        etype.append(e.event_type.value)
        email.append(ids.email_hash or "")
        prof.append(ids.esp_profile_id or "")
        phone.append(ids.phone or "")
        ext.append(list(ids.external_ids.items()))
        anon.append(ids.anonymous_id or "")
        camp.append(e.campaign_id or "")
        flow.append(e.flow_id or "")
        msg.append(e.message_id or "")
        mpp.append(e.is_machine_open)
        props.append(dumps(e.properties).decode() if e.properties else "{}")
        ver.append(e.schema_version)
    return pa.Table.from_pydict(cols, schema=EMAIL_EVENT_SCHEMA)
