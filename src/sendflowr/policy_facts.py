"""What the send policies need to know about a batch of people, read with few queries.

Per batch (one tenant, one window), at most: the tenant's policy row; the ESP calls due in the
error-rate breaker's look-back (one grouped query); the breaker events (unsubscribed, bounced,
spam complaint) of the tenant, and its recent orders and hot-path signals (two event-store
queries, each over the whole tenant and kept for the batch's people, or narrowed to their
ids for a small batch); the batch's triggers around
the window for the frequency cap (one query). Nothing is read per person. The rules themselves
are pure: sendflowr.timing.policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sendflowr.identity.store import IdentityGraphStore
from sendflowr.intents import Intent
from sendflowr.storage.events.base import EventStore
from sendflowr.storage.metadata.policies import PolicyStore, TenantPolicy
from sendflowr.storage.metadata.store import MetadataStore
from sendflowr.timing.policy import (
    PERSON_BREAKERS,
    Facts,
    HotPathHit,
    PolicyConfig,
    Suppression,
    match_hot_path,
)

EVER: datetime = datetime(2000, 1, 1, tzinfo=UTC)
SMALL_BATCH = 1_000  # up to this many people, event reads are narrowed to their ids
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """A batch's policy configuration and facts (rows in the batch's order)."""

    config: PolicyConfig
    facts: Facts

    def facts_slice(self, start: int, n: int) -> Facts:
        """The rows [start, start + n), renumbered from 0 (a chunk of a large audience)."""
        f = self.facts
        return Facts(
            n,
            _part(f.breaker, start, n),
            f.tenant_breaker,
            _part(f.last_order, start, n),
            _part(f.sends, start, n),
            _part(f.hot_path, start, n),
        )


def _part(d: dict[int, T], start: int, n: int) -> dict[int, T]:
    return {r - start: v for r, v in d.items() if start <= r < start + n}


def effective_config(policy: TenantPolicy, intent: Intent | None) -> PolicyConfig:
    """The tenant's policies, narrowed by an intent that names the suppression sources it
    respects (e.g. a receipt that ignores the order cool-off). The tenant and ESP breakers
    apply to every intent."""
    cfg = policy.config
    if intent is None or not intent.suppression_sources:
        return cfg
    sources = set(intent.suppression_sources)
    return replace(
        cfg,
        breakers=frozenset(b for b in cfg.breakers if b in sources),
        order_cooloff_seconds=cfg.order_cooloff_seconds if "recent_order" in sources else 0,
    )


def esp_breaker(
    store: PolicyStore, tenant: str, cfg: PolicyConfig, now: datetime, esp: str | None
) -> Suppression | None:
    """Tripped while the share of failed calls among the ESP's recent ones (triggers due in the
    look-back) exceeds the threshold over enough calls; `esp` None: any of the tenant's."""
    for c in store.hot_esp_calls(tenant, cfg.esp_error_window_seconds, now):
        if esp is not None and c.esp != esp:
            continue
        if c.sent + c.failed >= cfg.esp_error_min_calls and c.error_rate > cfg.esp_error_rate:
            return Suppression(
                "esp_error_rate",
                f"{c.failed} of the last {c.sent + c.failed} calls to {c.esp} failed "
                f"({c.error_rate:.0%} > {cfg.esp_error_rate:.0%})",
                {"esp": c.esp, "sent": c.sent, "failed": c.failed},
            )
    return None


def gather(
    metadata: MetadataStore,
    events: EventStore,
    identity: IdentityGraphStore,
    tenant: str,
    universal_ids: Sequence[str],
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    *,
    intent: Intent | None = None,
    esp: str | None = None,
    exclude_decisions: Sequence[str] = (),
    person_ids: Sequence[str] | None = None,
) -> PolicyContext:
    """The policy facts of a batch: `universal_ids` are the people's root ids (rows).
    `person_ids`: for a single person, the ids their events are stored under as
    `identity.aliases` gives them (the root first), when the caller read them already."""
    if person_ids is not None and list(universal_ids) != [person_ids[0]]:
        raise ValueError("person_ids are one person's ids, the root (universal_ids[0]) first")
    store = PolicyStore(metadata)
    policy = store.hot(tenant)  # with the ESP call counts: at most HOT_TTL_S old
    cfg = effective_config(policy, intent)
    facts = Facts(len(universal_ids))
    if policy.breaker is not None:  # the operator's switch: every intent
        b = policy.breaker
        facts.tenant_breaker = Suppression(
            "tenant_breaker",
            b.reason,
            {"tripped_by": b.actor, "tripped_at": b.tripped_at.isoformat()},
        )
    else:
        facts.tenant_breaker = esp_breaker(
            store, tenant, cfg, now, esp or (intent.esp if intent else None)
        )
    row_of = {u: i for i, u in enumerate(universal_ids)}
    aliases: dict[str, str] | None = None
    # A small batch (a single decision, a re-decision) reads only its people's events, under
    # every id they are stored under; a large one reads the tenant once.
    stored_ids: list[str] | None = None
    if len(row_of) == 1:  # a single decision: its own aliases (an indexed read), not the map
        (root,) = row_of
        stored_ids = list(person_ids) if person_ids else identity.aliases(tenant, root)
        aliases = dict.fromkeys(stored_ids[1:], root)
    elif len(universal_ids) <= SMALL_BATCH:
        aliases = identity.alias_map(tenant)
        stored_ids = list(row_of) + [a for a, root in aliases.items() if root in row_of]

    def rows_of(uids: Sequence[str]) -> list[int]:
        nonlocal aliases
        if aliases is None:
            aliases = identity.alias_map(tenant) if uids else {}
        return [row_of.get(aliases.get(u, u), -1) for u in uids]

    now_s = int(now.timestamp())
    breakers = sorted(b for b in cfg.breakers if b in PERSON_BREAKERS)
    if breakers and facts.tenant_breaker is None:
        known = events.events_by_person(tenant, breakers) if stored_ids is not None else None
        if known is not None and stored_ids is not None:  # the query's order: id, then time
            found = [(u, t, k) for u in sorted(set(stored_ids)) for t, k in known.get(u, ())]
            uids, utc, types = [f[0] for f in found], [f[1] for f in found], [f[2] for f in found]
        else:
            uids, utc, types, _ = events.engagement_history(
                tenant, breakers, EVER, universal_ids=stored_ids
            )
        for r, t, kind in zip(rows_of(uids), utc, types, strict=True):
            if r >= 0:  # time order: the latest wins
                facts.breaker[r] = Suppression(
                    kind,
                    f"{kind.replace('_', ' ')} at {datetime.fromtimestamp(t, UTC).isoformat()}",
                    {"event_at": datetime.fromtimestamp(t, UTC).isoformat()},
                )
    signals = [(s.event_type, s.within_seconds) for s in intent.hot_path_signals] if intent else []
    lookback = max([cfg.order_cooloff_seconds, *(w for _, w in signals)])
    kinds = sorted({k for k, _ in signals} | ({"ordered"} if cfg.order_cooloff_seconds else set()))
    if kinds and lookback > 0:
        since = now - timedelta(seconds=lookback)
        uids, utc, types, _ = events.engagement_history(
            tenant, kinds, since, universal_ids=stored_ids
        )
        latest: dict[int, dict[str, int]] = {}
        for r, t, kind in zip(rows_of(uids), utc, types, strict=True):
            if r >= 0:
                seen = latest.setdefault(r, {})
                seen[kind] = max(seen.get(kind, 0), t)
        for r, seen in latest.items():
            if cfg.order_cooloff_seconds and "ordered" in seen:
                facts.last_order[r] = seen["ordered"]
            hit: HotPathHit | None = match_hot_path(signals, seen, now_s)
            if hit is not None:
                facts.hot_path[r] = hit
    if cfg.cap_count is not None:
        period = timedelta(seconds=cfg.cap_period_seconds)
        sends = store.sends(
            tenant, universal_ids, window_start - period, window_end + period, exclude_decisions
        )
        facts.sends = {row_of[u]: s for u, s in sends.items() if u in row_of}
    return PolicyContext(cfg, facts)
