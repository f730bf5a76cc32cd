"""The simulated brand: the ground-truth simulator's audience and events as Klaviyo holds them.

Every canonical event becomes a Klaviyo event resource (rendered once, here); profiles,
metrics, campaigns, flows, one list and one segment come from the same simulation.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Final
from zoneinfo import ZoneInfo

from sendflowr.connectors.klaviyo.constants import EVENT_TYPE_METRICS
from sendflowr.events import CanonicalEvent, EventType
from sendflowr.klaviyo_sim import resources, sparse
from sendflowr.klaviyo_sim.eventstore import EventStore
from sendflowr.simulate import KIND_CAMPAIGN, SimConfig, Simulation, simulate

LIST_ID: Final = "SimList"
# A custom metric the brand's flows are triggered by: what a SendFlowr intent binds to.
TRIGGER_METRIC: Final = "SendFlowr Send"
SEGMENT_ID: Final = "SimEngaged"
_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Metrics Klaviyo records itself; the others arrive through the API (onsite tracking, orders).
_KLAVIYO_METRICS: Final = frozenset(
    {
        EventType.RECEIVED,
        EventType.OPENED,
        EventType.CLICKED,
        EventType.BOUNCED,
        EventType.SPAM_COMPLAINT,
        EventType.UNSUBSCRIBED,
    }
)
_FLOW_TRIGGERS: Final = {"welcome": "Added to List", "browse-abandonment": "Metric"}
_DAY: Final = 86_400
_SPARSE_FIELDSETS_KEPT: Final = 8


def short_id(text: str, length: int = 6) -> str:
    """A stable alphanumeric id derived from `text` (Klaviyo's metric ids look like this)."""
    number = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    out = []
    for _ in range(length):
        number, r = divmod(number, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)


def topic_id(integration_key: str, metric_name: str) -> str:
    """`event:klaviyo.opened_email` for Klaviyo's "Opened Email"."""
    return f"event:{integration_key}." + re.sub(r"[^a-z0-9]+", "_", metric_name.lower()).strip("_")


def _integration(key: str, name: str, category: str) -> dict[str, str]:
    return {
        "object": "integration",
        "id": short_id("integration:" + key),
        "key": key,
        "name": name,
        "category": category,
    }


@dataclass(frozen=True, slots=True)
class Metric:
    code: int
    id: str
    name: str
    event_type: EventType | None  # None: a custom metric no engagement maps to
    integration: dict[str, str]
    topic: str
    created: int


@dataclass(slots=True)
class Profile:
    index: int
    id: str
    email: str
    tz: str
    created: int
    is_mpp: bool
    last_event: int | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    name: str
    subject: str
    message_id: str
    send_ts: int
    created: int


@dataclass(frozen=True, slots=True)
class Flow:
    id: str
    name: str
    subject: str
    message_id: str
    trigger_type: str
    created: int


@dataclass(slots=True)
class Brand:
    config: SimConfig
    account_id: str
    public_key: str
    metrics: list[Metric]
    profiles: list[Profile]
    campaigns: list[Campaign]
    flows: list[Flow]
    events: EventStore
    # (profile index, joined at) in joining order
    list_members: list[tuple[int, int]]
    segment_members: list[tuple[int, int]]
    history_events: int
    machine_opens: int
    metric_by_id: dict[str, Metric] = field(init=False)
    metric_by_type: dict[EventType, Metric] = field(init=False)
    profile_by_id: dict[str, Profile] = field(init=False)
    profile_by_email: dict[str, Profile] = field(init=False)
    rendered_profiles: list[bytes] = field(init=False)
    rendered_metrics: list[bytes] = field(init=False)
    # A recent event's properties per metric: the template live events copy.
    templates: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Profiles rendered with a sparse fieldset: fields -> profile index -> bytes (lazily).
    sparse_profiles: dict[tuple[str, ...], dict[int, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metric_by_id = {m.id: m for m in self.metrics}
        self.metric_by_type = {m.event_type: m for m in self.metrics if m.event_type}
        self.profile_by_id = {p.id: p for p in self.profiles}
        self.profile_by_email = {p.email: p for p in self.profiles}
        self.rendered_profiles = [resources.render(self.profile_resource(p)) for p in self.profiles]
        self.rendered_metrics = [
            resources.render(resources.metric(m.id, m.name, m.created, m.integration))
            for m in self.metrics
        ]

    @property
    def tenant(self) -> str:
        return self.config.tenant

    def profile_resource(self, p: Profile) -> dict[str, Any]:
        return resources.profile(p.id, p.email, p.tz, p.created, p.last_event)

    def rerender_profile(self, p: Profile) -> None:
        self.rendered_profiles[p.index] = resources.render(self.profile_resource(p))
        for rendered in self.sparse_profiles.values():
            rendered.pop(p.index, None)

    def rendered_profile(self, index: int, fields: tuple[str, ...] | None) -> bytes:
        """Profile `index` as rendered, with only `fields` in its attributes when given
        (`sparse.narrowing`); each fieldset's renderings are kept (a few fieldsets at most)."""
        if fields is None:
            return self.rendered_profiles[index]
        cache = self.sparse_profiles.get(fields)
        if cache is None:
            if len(self.sparse_profiles) >= _SPARSE_FIELDSETS_KEPT:
                self.sparse_profiles.clear()
            cache = self.sparse_profiles[fields] = {}
        found = cache.get(index)
        if found is None:
            resource = self.profile_resource(self.profiles[index])
            found = cache[index] = resources.render(sparse.sparse_resource(resource, fields))
        return found

    def summary(self) -> dict[str, Any]:
        """What the brand holds, to compare a backfill with."""
        store = self.events
        by_metric = Counter(store.metric.tolist())
        ts = store.ts
        return {
            "tenant": self.tenant,
            "account_id": self.account_id,
            "profiles": len(self.profiles),
            "events": len(store),
            "history_events": self.history_events,
            "live_events": len(store) - self.history_events,
            "events_by_metric": {m.name: by_metric.get(m.code, 0) for m in self.metrics},
            "metric_ids": {m.name: m.id for m in self.metrics},
            "machine_opens": self.machine_opens,
            "campaigns": len(self.campaigns),
            "flows": len(self.flows),
            "list_members": len(self.list_members),
            "segment_members": len(self.segment_members),
            "start": self.config.start.isoformat(),
            "end": self.config.end.isoformat(),
            "first_datetime": resources.iso(int(ts.min())) if len(store) else None,
            "last_datetime": resources.iso(int(ts.max())) if len(store) else None,
        }


def event_properties(ev: CanonicalEvent, campaign_names: dict[str, str]) -> dict[str, Any]:
    """The canonical properties as Klaviyo's event_properties (see the module docs)."""
    props = dict(ev.properties)
    props["$event_id"] = ev.esp_event_id
    if ev.message_id is not None:
        props["$message"] = ev.message_id
    if ev.flow_id is not None and ev.event_type is not EventType.ORDERED:
        props["$flow"] = ev.flow_id
    if ev.campaign_id is not None and ev.campaign_id in campaign_names:
        props["Campaign Name"] = campaign_names[ev.campaign_id]
    if ev.event_type is EventType.OPENED:
        # Klaviyo flags every open, true or false. In the simulation an Apple Mail Privacy
        # Protection open is exactly the prefetch at delivery (the person's own opens are
        # separate events), so both flags say "machine open".
        props["machine_open"] = ev.is_machine_open
        props["Apple Privacy Open"] = ev.is_machine_open
    return props


def build_brand(cfg: SimConfig, sim: Simulation | None = None) -> Brand:
    """The brand for `cfg` (simulated here unless `sim` is given)."""
    sim = sim or simulate(cfg)
    start = int(cfg.start.timestamp())
    metrics = []
    for code, (etype, name) in enumerate(EVENT_TYPE_METRICS.items()):
        integration = (
            _integration("klaviyo", "Klaviyo", "Internal")
            if etype in _KLAVIYO_METRICS
            else _integration("api", "API", "API")
        )
        metrics.append(
            Metric(
                code=code,
                id=short_id("metric:" + name),
                name=name,
                event_type=etype,
                integration=integration,
                topic=topic_id(integration["key"], name),
                created=start - 365 * _DAY,
            )
        )
    api = _integration("api", "API", "API")
    metrics.append(
        Metric(
            code=len(metrics),
            id=short_id("metric:" + TRIGGER_METRIC),
            name=TRIGGER_METRIC,
            event_type=None,
            integration=api,
            topic=topic_id(api["key"], TRIGGER_METRIC),
            created=start - 365 * _DAY,
        )
    )
    profiles = [
        Profile(
            index=p.index,
            id=p.esp_profile_id,
            email=p.email,
            tz=p.tz,
            # Subscribers from before the period joined over the preceding year.
            created=(p.signup_ms // 1000)
            if p.signup_ms is not None
            else start - 365 * _DAY + (p.index * 7919) % (360 * _DAY),
            is_mpp=p.is_mpp,
        )
        for p in sim.profiles
    ]
    brand_tz = ZoneInfo(cfg.brand_tz)
    at = time(cfg.send_minute_of_day // 60, cfg.send_minute_of_day % 60)
    campaigns: list[Campaign] = []
    flows: list[Flow] = []
    for msg in sim.messages:
        if msg.kind == KIND_CAMPAIGN and msg.campaign_id is not None:
            day = datetime.strptime(msg.name.removeprefix("newsletter-"), "%Y-%m-%d").date()
            send_ts = int(datetime.combine(day, at, tzinfo=brand_tz).timestamp())
            campaigns.append(
                Campaign(
                    msg.campaign_id, msg.name, msg.subject, msg.message_id, send_ts, send_ts - _DAY
                )
            )
        elif msg.flow_id is not None:
            trigger = _FLOW_TRIGGERS.get(msg.name, "Metric")
            flows.append(
                Flow(msg.flow_id, msg.name, msg.subject, msg.message_id, trigger, start - 90 * _DAY)
            )
    campaign_names = {c.id: c.name for c in campaigns}
    metric_of = {m.event_type: m for m in metrics if m.event_type}
    profile_of = {p.id: p for p in profiles}

    ids: list[str] = []
    ts_list: list[int] = []
    metric_codes: list[int] = []
    profile_idx: list[int] = []
    rendered: list[bytes] = []
    engaged_at: dict[int, int] = {}
    templates: dict[int, dict[str, Any]] = {}
    machine = 0
    for ev in sim.events:
        pid = ev.identifiers.esp_profile_id
        assert pid is not None  # the simulator always sets it
        p = profile_of[pid]
        m = metric_of[ev.event_type]
        ts = ev.occurred_at_ms // 1000
        props = event_properties(ev, campaign_names)
        ids.append(ev.esp_event_id)
        ts_list.append(ts)
        metric_codes.append(m.code)
        profile_idx.append(p.index)
        rendered.append(
            resources.render(resources.event(ev.esp_event_id, ts, ev.event_id, props, pid, m.id))
        )
        p.last_event = ts if p.last_event is None else max(p.last_event, ts)
        if ev.is_machine_open:
            machine += 1
        elif ev.event_type in (EventType.OPENED, EventType.CLICKED):
            engaged_at.setdefault(p.index, ts)
        templates[m.code] = props
    store = EventStore(len(metrics))
    store.extend(ids, ts_list, metric_codes, profile_idx, rendered)
    list_members = sorted(((p.index, p.created) for p in profiles), key=lambda x: (x[1], x[0]))
    segment_members = sorted(engaged_at.items(), key=lambda x: (x[1], x[0]))
    brand = Brand(
        config=cfg,
        account_id=short_id("account:" + cfg.tenant),
        public_key=short_id("public:" + cfg.tenant),
        metrics=metrics,
        profiles=profiles,
        campaigns=campaigns,
        flows=flows,
        events=store,
        list_members=list_members,
        segment_members=segment_members,
        history_events=len(ids),
        machine_opens=machine,
    )
    brand.templates = templates
    return brand
