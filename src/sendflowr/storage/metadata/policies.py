"""Tenant send policies, the operator's tenant breaker, and the trigger facts policies read.

A tenant without a row has the defaults (timing.policy.PolicyConfig()). Every change of the
configuration, and every trip or reset of the tenant breaker, writes a history row (who, when,
what changed as [before, after]) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sendflowr.errors import ConflictError
from sendflowr.intents import changes
from sendflowr.storage.metadata.store import MetadataStore, aware, aware_or_none
from sendflowr.storage.metadata.tables import tenant_policies, tenant_policy_history, triggers
from sendflowr.timing.policy import PERSON_BREAKERS, PolicyConfig


def _hhmm(m: int | None) -> str | None:
    return None if m is None else f"{m // 60:02d}:{m % 60:02d}"


def _minutes(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def config_to_dict(c: PolicyConfig) -> dict[str, Any]:
    """The stored (and API) form of a configuration."""
    return {
        "quiet_hours": (
            {"start": _hhmm(c.quiet_start_minute), "end": _hhmm(c.quiet_end_minute)}
            if c.quiet_hours
            else None
        ),
        "frequency_cap": (
            {"count": c.cap_count, "period_hours": c.cap_period_seconds / 3600}
            if c.cap_count is not None
            else None
        ),
        "breakers": sorted(c.breakers),
        "order_cooloff_hours": c.order_cooloff_seconds / 3600,
        "exploration_share": c.exploration_share,
        "esp_error_breaker": {
            "rate": c.esp_error_rate,
            "min_calls": c.esp_error_min_calls,
            "window_minutes": c.esp_error_window_seconds // 60,
        },
    }


def config_from_dict(d: Mapping[str, Any]) -> PolicyConfig:
    """A stored (already validated) configuration; absent keys keep their defaults."""
    base = PolicyConfig()
    quiet = d.get("quiet_hours")
    cap = d.get("frequency_cap")
    esp = d.get("esp_error_breaker") or {}
    return PolicyConfig(
        quiet_start_minute=_minutes(quiet["start"]) if quiet else None,
        quiet_end_minute=_minutes(quiet["end"]) if quiet else None,
        cap_count=int(cap["count"]) if cap else None,
        cap_period_seconds=(
            round(float(cap["period_hours"]) * 3600) if cap else base.cap_period_seconds
        ),
        breakers=frozenset(d.get("breakers", PERSON_BREAKERS)),
        order_cooloff_seconds=round(float(d.get("order_cooloff_hours", 0)) * 3600),
        exploration_share=float(d.get("exploration_share", 0.0)),
        esp_error_rate=float(esp.get("rate", base.esp_error_rate)),
        esp_error_min_calls=int(esp.get("min_calls", base.esp_error_min_calls)),
        esp_error_window_seconds=int(esp.get("window_minutes", 60)) * 60,
    )


@dataclass(frozen=True, slots=True)
class TenantBreaker:
    reason: str
    actor: str
    tripped_at: datetime


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    tenant: str
    config: PolicyConfig
    version: int  # 0: never configured (the defaults)
    breaker: TenantBreaker | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class PolicyChange:
    version: int
    action: str
    actor: str
    changed_at: datetime
    changes: dict[str, list[Any]]


@dataclass(frozen=True, slots=True)
class EspCalls:
    esp: str
    sent: int
    failed: int

    @property
    def error_rate(self) -> float:
        total = self.sent + self.failed
        return self.failed / total if total else 0.0


class PolicyStore:
    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self.engine = metadata.engine

    def get(self, tenant: str) -> TenantPolicy:
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(
                tenant_policies.select().where(tenant_policies.c.tenant == tenant)
            ).first()
        return _policy(tenant, row._mapping if row is not None else None)

    def hot(self, tenant: str) -> TenantPolicy:
        """get() for the decision path: a copy at most HOT_TTL_S old (storage/metadata/hot.py);
        put, trip and reset drop it in this process when they commit."""
        return self.metadata.hot.get("policy", tenant, lambda: self.get(tenant))

    def put(
        self, tenant: str, config: PolicyConfig, actor: str, expected_version: int | None = None
    ) -> TenantPolicy:
        """Replace the configuration (a history row records what changed); a stale
        `expected_version` is a conflict."""
        self.metadata.get_tenant(tenant)
        with self.metadata._guard(), self.engine.begin() as conn:
            current = self._locked(conn, tenant)
            if expected_version is not None and expected_version != current.version:
                raise ConflictError(
                    f"the policy of {tenant!r} is at version {current.version}, not "
                    f"{expected_version}: reload it and apply the change again",
                    field="version",
                )
            diff = changes(config_to_dict(current.config), config_to_dict(config))
            if not diff:
                return current
            self._write(conn, current, config=config_to_dict(config))
            _history(conn, tenant, current.version + 1, "updated", actor, diff)
        self.metadata.hot.forget(tenant)
        return self.get(tenant)

    def trip(self, tenant: str, reason: str, actor: str) -> TenantPolicy:
        self.metadata.get_tenant(tenant)
        now = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            current = self._locked(conn, tenant)
            before = current.breaker.reason if current.breaker else None
            self._write(conn, current, breaker_reason=reason, breaker_actor=actor, breaker_at=now)
            _history(conn, tenant, current.version + 1, "tripped", actor,
                     {"breaker": [before, reason]})  # fmt: skip
        self.metadata.hot.forget(tenant)
        return self.get(tenant)

    def reset(self, tenant: str, actor: str) -> TenantPolicy:
        self.metadata.get_tenant(tenant)
        with self.metadata._guard(), self.engine.begin() as conn:
            current = self._locked(conn, tenant)
            if current.breaker is None:
                return current
            self._write(conn, current, breaker_reason=None, breaker_actor=None, breaker_at=None)
            _history(conn, tenant, current.version + 1, "reset", actor,
                     {"breaker": [current.breaker.reason, None]})  # fmt: skip
        self.metadata.hot.forget(tenant)
        return self.get(tenant)

    def history(self, tenant: str, limit: int = 200) -> list[PolicyChange]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                tenant_policy_history.select()
                .where(tenant_policy_history.c.tenant == tenant)
                .order_by(tenant_policy_history.c.id.desc())
                .limit(limit)
            ).all()
        return [
            PolicyChange(r.version, r.action, r.actor, aware(r.changed_at), dict(r.changes))
            for r in rows
        ]

    def _locked(self, conn: Connection, tenant: str) -> TenantPolicy:
        row = conn.execute(
            tenant_policies.select().where(tenant_policies.c.tenant == tenant).with_for_update()
        ).first()
        return _policy(tenant, row._mapping if row is not None else None)

    def _write(self, conn: Connection, current: TenantPolicy, **values: Any) -> None:
        now = datetime.now(UTC)
        if current.version == 0:
            row = {
                "tenant": current.tenant,
                "config": config_to_dict(current.config),
                "version": 1,
                "breaker_reason": None,
                "breaker_actor": None,
                "breaker_at": None,
                "updated_at": now,
                **values,
            }
            conn.execute(tenant_policies.insert().values(**row))
            return
        # the version in WHERE makes a concurrent writer on SQLite (no row locks) lose
        done = conn.execute(
            tenant_policies.update()
            .where(
                tenant_policies.c.tenant == current.tenant,
                tenant_policies.c.version == current.version,
            )
            .values(version=current.version + 1, updated_at=now, **values)
        )
        if not done.rowcount:
            raise ConflictError(
                f"the policy of {current.tenant!r} changed concurrently; retry", field="version"
            )

    # -- what policies read from the triggers ----------------------------------------------
    def sends(
        self,
        tenant: str,
        universal_ids: Sequence[str],
        since: datetime,
        until: datetime,
        exclude: Sequence[str] = (),
    ) -> dict[str, list[int]]:
        """Target times (unix seconds) of each person's triggers, any intent, sent or still
        planned (scheduled, sending), with a target in [since, until). A small batch reads by
        person; a large one reads the tenant's range once and keeps the batch's people."""
        cond = [
            triggers.c.tenant == tenant,
            triggers.c.status.in_(("scheduled", "sending", "sent")),
            triggers.c.target_at >= since,
            triggers.c.target_at < until,
        ]
        if exclude:
            cond.append(triggers.c.decision_id.not_in(list(exclude)))
        query = sa.select(triggers.c.universal_id, triggers.c.target_at).where(*cond)
        if len(universal_ids) <= 5_000:
            query = query.where(triggers.c.universal_id.in_(list(universal_ids)))
        out: dict[str, list[int]] = {}
        wanted = set(universal_ids)
        with self.metadata._guard(), self.engine.connect() as conn:
            for uid, at in conn.execute(query):
                if uid in wanted:
                    out.setdefault(uid, []).append(int(aware(at).timestamp()))
        return out

    def hot_esp_calls(self, tenant: str, window_s: int, now: datetime) -> list[EspCalls]:
        """esp_calls over the `window_s` before `now`, for the decision path: a count at most
        HOT_TTL_S old (the ESP breaker judges minutes of calls; storage/metadata/hot.py)."""
        return self.metadata.hot.get(
            "esp_calls",
            tenant,
            lambda: self.esp_calls(tenant, now - timedelta(seconds=window_s), now),
            key=window_s,
        )

    def esp_calls(self, tenant: str, since: datetime, until: datetime) -> list[EspCalls]:
        """Per ESP, the tenant's triggers due in [since, until) that were sent or failed."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(triggers.c.esp, triggers.c.status, sa.func.count())
                .where(
                    triggers.c.tenant == tenant,
                    triggers.c.status.in_(("sent", "failed")),
                    triggers.c.trigger_at >= since,
                    triggers.c.trigger_at < until,
                )
                .group_by(triggers.c.esp, triggers.c.status)
            ).all()
        by: dict[str, dict[str, int]] = {}
        for esp, status, n in rows:
            by.setdefault(esp, {})[status] = int(n)
        return [
            EspCalls(esp, c.get("sent", 0), c.get("failed", 0)) for esp, c in sorted(by.items())
        ]


def _policy(tenant: str, r: Any) -> TenantPolicy:
    if r is None:
        return TenantPolicy(tenant, PolicyConfig(), 0, None, None)
    breaker = None
    if r["breaker_reason"] is not None:
        at = aware_or_none(r["breaker_at"]) or datetime.now(UTC)
        breaker = TenantBreaker(r["breaker_reason"], r["breaker_actor"] or "", at)
    return TenantPolicy(
        tenant, config_from_dict(r["config"]), r["version"], breaker, aware(r["updated_at"])
    )


def _history(
    conn: Connection, tenant: str, version: int, action: str, actor: str, diff: dict[str, Any]
) -> None:
    conn.execute(
        tenant_policy_history.insert().values(
            tenant=tenant,
            version=version,
            action=action,
            actor=actor,
            changed_at=datetime.now(UTC),
            changes=diff,
        )
    )
