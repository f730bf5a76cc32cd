"""Schedules (campaigns) and their durable triggers, and the executor's claims on them.

A trigger is one planned ESP call: (decision_id, person, intent, trigger time, status). Its
life: scheduled -> sending (claimed by a worker, with a lease) -> sent | failed, or scheduled ->
cancelled. A worker that dies after claiming leaves its triggers in `sending`; once the lease
runs out any worker claims them again and sends them again under the same decision_id, which the
ESP deduplicates (Klaviyo's `unique_id`), so nothing is lost and nothing is sent twice.

Claims are one statement: PostgreSQL locks the chosen rows with FOR UPDATE SKIP LOCKED so
concurrent workers take disjoint sets; SQLite serialises writers, so its UPDATE ... RETURNING
is atomic on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sendflowr.errors import NotFoundError
from sendflowr.storage.metadata.store import MetadataStore, aware, aware_or_none
from sendflowr.storage.metadata.tables import schedules, triggers

TriggerStatus = Literal["scheduled", "sending", "sent", "failed", "cancelled"]
OPEN: tuple[TriggerStatus, ...] = ("scheduled", "sending")
_INSERT_CHUNK = 20_000
_COLUMNS = (
    "decision_id",
    "tenant",
    "schedule_id",
    "intent_id",
    "universal_id",
    "recipient_type",
    "recipient_value",
    "esp",
    "trigger_minute",
    "trigger_at",
    "target_at",
    "status",
    "attempts",
    "explanation_ref",
    "promoted",
)


@dataclass(frozen=True, slots=True)
class Schedule:
    id: str
    tenant: str
    intent_id: str
    esp: str
    status: str
    window_start: datetime
    window_end: datetime
    latency_seconds: int
    audience: int
    capacity_per_minute: int
    summary: dict[str, Any]
    created_at: datetime


# (decision_id, universal_id, recipient_type, recipient_value, trigger_at, target_at,
#  explanation_ref): tuples, because a schedule writes a million of them
NewTrigger = tuple[str, str, str, str, datetime, datetime, str]


@dataclass(frozen=True, slots=True)
class Trigger:
    decision_id: str
    tenant: str
    schedule_id: str
    intent_id: str
    universal_id: str
    recipient_type: str
    recipient_value: str
    esp: str
    trigger_at: datetime
    target_at: datetime
    status: TriggerStatus
    attempts: int
    worker: str | None
    lease_until: datetime | None
    sent_at: datetime | None
    sent_via: str | None
    error: str | None
    explanation_ref: str
    promoted: bool


def minute_of(t: datetime) -> int:
    """The unix second that starts `t`'s minute."""
    s = int(t.timestamp())
    return s - s % 60


class TriggerStore:
    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self.engine = metadata.engine

    # -- schedules ----------------------------------------------------------------------------
    def create_schedule(self, schedule: Schedule, rows: Iterable[NewTrigger]) -> int:
        """The schedule and its triggers in one transaction: all of them or none. Returns the
        number of triggers written."""
        written = 0
        fixed = (schedule.tenant, schedule.id, schedule.intent_id)
        minutes: dict[datetime, int] = {}
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(schedules.insert().values(**_schedule_row(schedule)))
            batch: list[tuple[Any, ...]] = []
            for did, uid, rtype, rvalue, trigger_at, target_at, ref in rows:
                minute = minutes.get(trigger_at)
                if minute is None:
                    minute = minutes[trigger_at] = minute_of(trigger_at)
                batch.append(
                    (did, *fixed, uid, rtype, rvalue, schedule.esp, minute, trigger_at,
                     target_at, "scheduled", 0, ref, 0)
                )  # fmt: skip
                if len(batch) >= _INSERT_CHUNK:
                    written += _insert_many(conn, batch)
                    batch = []
            written += _insert_many(conn, batch)
        return written

    def get_schedule(self, schedule_id: str, tenant: str | None = None) -> Schedule:
        query = schedules.select().where(schedules.c.id == schedule_id)
        if tenant is not None:
            query = query.where(schedules.c.tenant == tenant)
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(f"no schedule {schedule_id!r}", field="schedule_id")
        return _schedule(row._mapping)

    def list_schedules(
        self, tenant: str, intent_id: str | None = None, limit: int = 100
    ) -> list[Schedule]:
        query = schedules.select().where(schedules.c.tenant == tenant)
        if intent_id is not None:
            query = query.where(schedules.c.intent_id == intent_id)
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(query.order_by(schedules.c.created_at.desc()).limit(limit)).all()
        return [_schedule(r._mapping) for r in rows]

    def set_schedule_status(self, schedule_id: str, status: str) -> None:
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                schedules.update().where(schedules.c.id == schedule_id).values(status=status)
            )

    def counts(self, schedule_id: str) -> dict[str, int]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(triggers.c.status, sa.func.count())
                .where(triggers.c.schedule_id == schedule_id)
                .group_by(triggers.c.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def lateness(self, schedule_id: str) -> dict[str, float]:
        """Seconds from planned trigger time to the ESP call, over the sent triggers."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(triggers.c.trigger_at, triggers.c.sent_at).where(
                    triggers.c.schedule_id == schedule_id, triggers.c.status == "sent"
                )
            ).all()
        delays = sorted((aware(s) - aware(t)).total_seconds() for t, s in rows if s is not None)
        if not delays:
            return {"sent": 0}
        return {
            "sent": len(delays),
            "max_seconds": delays[-1],
            "p50_seconds": delays[len(delays) // 2],
            "p99_seconds": delays[min(len(delays) - 1, int(len(delays) * 0.99))],
            "later_than_60s": sum(1 for d in delays if d > 60),
        }

    # -- capacity ----------------------------------------------------------------------------
    def booked(self, tenant: str, esp: str, first: int, last: int) -> dict[int, int]:
        """Open triggers per trigger minute (unix seconds) in [first, last] for one tenant's
        ESP account: the capacity other campaigns hold already."""
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(triggers.c.trigger_minute, sa.func.count())
                .where(
                    triggers.c.tenant == tenant,
                    triggers.c.esp == esp,
                    triggers.c.trigger_minute >= first,
                    triggers.c.trigger_minute <= last,
                    triggers.c.status.in_(OPEN),
                )
                .group_by(triggers.c.trigger_minute)
            ).all()
        return {int(m): int(n) for m, n in rows}

    # -- the executor ------------------------------------------------------------------------
    def claim_due(self, worker: str, now: datetime, limit: int, lease: timedelta) -> list[Trigger]:
        """Take up to `limit` due triggers, earliest first: scheduled ones whose time has come
        (and whose retry back-off has passed), and `sending` ones whose worker's lease ran out.
        They become `sending` under this worker until `now + lease`."""
        due = sa.or_(
            sa.and_(
                triggers.c.status == "scheduled",
                triggers.c.trigger_minute <= minute_of(now),
                triggers.c.trigger_at <= now,
                sa.or_(triggers.c.lease_until.is_(None), triggers.c.lease_until <= now),
            ),
            sa.and_(triggers.c.status == "sending", triggers.c.lease_until < now),
        )
        pick = (
            sa.select(triggers.c.decision_id)
            .where(due)
            .order_by(triggers.c.trigger_minute)
            .limit(limit)
        )
        if self.metadata.backend == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            triggers.update()
            .where(triggers.c.decision_id.in_(pick.scalar_subquery()))
            .values(
                status="sending",
                worker=worker,
                lease_until=now + lease,
                attempts=triggers.c.attempts + 1,
            )
            .returning(*triggers.c)
        )
        with self.metadata._guard(), self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        out = [trigger_of_row(r._mapping) for r in rows]
        out.sort(key=lambda t: t.trigger_at)
        return out

    def mark_sent(self, worker: str, ids: Sequence[str], via: str, at: datetime) -> int:
        """Record sends; only triggers still claimed by `worker` change (a trigger cancelled
        meanwhile, or re-claimed after an expired lease, is left alone)."""
        return self._finish(worker, ids, status="sent", sent_at=at, sent_via=via, error=None)

    def mark_failed(self, worker: str, ids: Sequence[str], error: str) -> int:
        return self._finish(worker, ids, status="failed", error=error[:2000])

    def mark_retry(self, worker: str, ids: Sequence[str], error: str, not_before: datetime) -> int:
        """Back to `scheduled`, not to be claimed before `not_before`."""
        return self._finish(
            worker, ids, status="scheduled", error=error[:2000], lease_until=not_before
        )

    def _finish(self, worker: str, ids: Sequence[str], **values: Any) -> int:
        n = 0
        with self.metadata._guard(), self.engine.begin() as conn:
            for chunk in _chunks(ids):
                result = conn.execute(
                    triggers.update()
                    .where(
                        triggers.c.decision_id.in_(chunk),
                        triggers.c.status == "sending",
                        triggers.c.worker == worker,
                    )
                    .values(**values)
                )
                n += result.rowcount
        if n:  # the ESP breaker's call counts (storage/metadata/hot.py) are out of date here
            self.metadata.hot.forget_kind("esp_calls")
        return n

    # -- operator actions ----------------------------------------------------------------------
    def cancel(
        self,
        tenant: str,
        *,
        schedule_id: str | None = None,
        universal_id: str | None = None,
        intent_id: str | None = None,
        reason: str = "cancelled by an operator",
    ) -> int:
        """Cancel the scheduled (not yet claimed) triggers of a campaign, a person or an
        intent (any combination narrows)."""
        cond = [triggers.c.tenant == tenant, triggers.c.status == "scheduled"]
        if intent_id is not None:
            cond.append(triggers.c.intent_id == intent_id)
        if schedule_id is not None:
            cond.append(triggers.c.schedule_id == schedule_id)
        if universal_id is not None:
            cond.append(triggers.c.universal_id == universal_id)
        with self.metadata._guard(), self.engine.begin() as conn:
            result = conn.execute(
                triggers.update().where(*cond).values(status="cancelled", error=reason)
            )
        return int(result.rowcount)

    def open_for(
        self, tenant: str, universal_ids: Sequence[str], statuses: Sequence[str] = ("scheduled",)
    ) -> list[Trigger]:
        if not universal_ids:
            return []
        out: list[Trigger] = []
        with self.metadata._guard(), self.engine.connect() as conn:
            for chunk in _chunks(universal_ids):
                rows = conn.execute(
                    triggers.select().where(
                        triggers.c.tenant == tenant,
                        triggers.c.universal_id.in_(chunk),
                        triggers.c.status.in_(list(statuses)),
                    )
                ).all()
                out.extend(trigger_of_row(r._mapping) for r in rows)
        return out

    def take_scheduled(self, schedule_id: str, reason: str) -> list[Trigger]:
        """Cancel a campaign's scheduled triggers and return exactly those (one statement, so
        a trigger a worker claims meanwhile is either sent or returned here, never both)."""
        with self.metadata._guard(), self.engine.begin() as conn:
            rows = conn.execute(
                triggers.update()
                .where(triggers.c.schedule_id == schedule_id, triggers.c.status == "scheduled")
                .values(status="cancelled", error=reason)
                .returning(*triggers.c)
            ).all()
        return [trigger_of_row(r._mapping) for r in rows]

    def restore(self, decision_ids: Sequence[str]) -> int:
        """Undo `take_scheduled` (the new plan failed): cancelled -> scheduled."""
        n = 0
        with self.metadata._guard(), self.engine.begin() as conn:
            for chunk in _chunks(decision_ids):
                result = conn.execute(
                    triggers.update()
                    .where(
                        triggers.c.decision_id.in_(chunk),
                        triggers.c.status == "cancelled",
                    )
                    .values(status="scheduled", error=None)
                )
                n += result.rowcount
        return n

    def replace(
        self, old_decision_id: str, new: NewTrigger, *, promoted: bool, reason: str
    ) -> Trigger | None:
        """Cancel a scheduled trigger and write its replacement in the same campaign, in one
        transaction; None (nothing written) when the old one is no longer scheduled."""
        did, uid, rtype, rvalue, trigger_at, target_at, ref = new
        with self.metadata._guard(), self.engine.begin() as conn:
            old = conn.execute(
                triggers.select().where(
                    triggers.c.decision_id == old_decision_id, triggers.c.status == "scheduled"
                )
            ).first()
            if old is None:
                return None
            done = conn.execute(
                triggers.update()
                .where(triggers.c.decision_id == old_decision_id, triggers.c.status == "scheduled")
                .values(status="cancelled", error=reason)
            )
            if not done.rowcount:
                return None
            conn.execute(
                triggers.insert().values(
                    decision_id=did,
                    tenant=old.tenant,
                    schedule_id=old.schedule_id,
                    intent_id=old.intent_id,
                    universal_id=uid,
                    recipient_type=rtype,
                    recipient_value=rvalue,
                    esp=old.esp,
                    trigger_minute=minute_of(trigger_at),
                    trigger_at=trigger_at,
                    target_at=target_at,
                    status="scheduled",
                    attempts=0,
                    explanation_ref=ref,
                    promoted=int(promoted),
                )
            )
        return self.get(did)

    def get(self, decision_id: str, tenant: str | None = None) -> Trigger:
        query = triggers.select().where(triggers.c.decision_id == decision_id)
        if tenant is not None:
            query = query.where(triggers.c.tenant == tenant)
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(f"no trigger {decision_id!r}", field="decision_id")
        return trigger_of_row(row._mapping)

    def page(
        self,
        schedule_id: str,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Trigger]:
        query = triggers.select().where(triggers.c.schedule_id == schedule_id)
        if status is not None:
            query = query.where(triggers.c.status == status)
        query = query.order_by(triggers.c.trigger_at, triggers.c.decision_id)
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [trigger_of_row(r._mapping) for r in rows]

    # -- data-subject erasure ------------------------------------------------------------------
    def erase_people(self, tenant: str, universal_ids: Sequence[str]) -> dict[str, int]:
        """Delete every trigger of these people in any status (sent ones too: each holds the
        recipient's address), in one transaction. A campaign keeps only an anonymous count:
        its summary's `erased` grows by the triggers it lost. Returns {schedule id: removed}.
        A trigger a worker has claimed may still reach the ESP; its result is then recorded
        nowhere (mark_sent matches no row)."""
        if not universal_ids:
            return {}
        per_schedule: dict[str, int] = {}
        with self.metadata._guard(), self.engine.begin() as conn:
            for chunk in _chunks(universal_ids):
                mine = sa.and_(triggers.c.tenant == tenant, triggers.c.universal_id.in_(chunk))
                for sid, n in conn.execute(
                    sa.select(triggers.c.schedule_id, sa.func.count())
                    .where(mine)
                    .group_by(triggers.c.schedule_id)
                ).all():
                    per_schedule[sid] = per_schedule.get(sid, 0) + int(n)
                conn.execute(triggers.delete().where(mine))
            for sid, n in sorted(per_schedule.items()):
                summary = conn.execute(
                    sa.select(schedules.c.summary).where(schedules.c.id == sid).with_for_update()
                ).scalar_one()
                kept = dict(summary or {})
                kept["erased"] = int(kept.get("erased", 0)) + n
                conn.execute(schedules.update().where(schedules.c.id == sid).values(summary=kept))
        return per_schedule


def _chunks(values: Sequence[str], size: int = 5_000) -> Iterator[list[str]]:
    """Slices small enough for one IN (...) list on either backend."""
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _insert_many(conn: Connection, batch: Sequence[tuple[Any, ...]]) -> int:
    if not batch:
        return 0
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY triggers ({', '.join(_COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in batch:
                copy.write_row(row)
        return len(batch)
    # SQLite: the driver's executemany with tuples, timestamps written as SQLAlchemy writes
    # them (UTC wall time, microseconds): a fifth of the time of Core's per-row processing.
    raw = conn.connection.driver_connection
    assert raw is not None
    stamp = _sqlite_stamps()
    sql = f"INSERT INTO triggers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    raw.executemany(sql, [(*r[:9], stamp(r[9]), stamp(r[10]), *r[11:]) for r in batch])
    return len(batch)


def _sqlite_stamps() -> Callable[[datetime], str]:
    cache: dict[datetime, str] = {}

    def stamp(at: datetime) -> str:
        text = cache.get(at)
        if text is None:
            text = cache[at] = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return text

    return stamp


def _schedule_row(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "tenant": s.tenant,
        "intent_id": s.intent_id,
        "esp": s.esp,
        "status": s.status,
        "window_start": s.window_start,
        "window_end": s.window_end,
        "latency_seconds": s.latency_seconds,
        "audience": s.audience,
        "capacity_per_minute": s.capacity_per_minute,
        "summary": s.summary,
        "created_at": s.created_at,
    }


def _schedule(r: Any) -> Schedule:
    return Schedule(
        id=r["id"],
        tenant=r["tenant"],
        intent_id=r["intent_id"],
        esp=r["esp"],
        status=r["status"],
        window_start=aware(r["window_start"]),
        window_end=aware(r["window_end"]),
        latency_seconds=r["latency_seconds"],
        audience=r["audience"],
        capacity_per_minute=r["capacity_per_minute"],
        summary=dict(r["summary"] or {}),
        created_at=aware(r["created_at"]),
    )


def trigger_of_row(r: Any) -> Trigger:
    return Trigger(
        decision_id=r["decision_id"],
        tenant=r["tenant"],
        schedule_id=r["schedule_id"],
        intent_id=r["intent_id"],
        universal_id=r["universal_id"],
        recipient_type=r["recipient_type"],
        recipient_value=r["recipient_value"],
        esp=r["esp"],
        trigger_at=aware(r["trigger_at"]),
        target_at=aware(r["target_at"]),
        status=r["status"],
        attempts=r["attempts"],
        worker=r["worker"],
        lease_until=aware_or_none(r["lease_until"]),
        sent_at=aware_or_none(r["sent_at"]),
        sent_via=r["sent_via"],
        error=r["error"],
        explanation_ref=r["explanation_ref"],
        promoted=bool(r["promoted"]),
    )
