"""A campaign's dispatch timeline: its triggers per time bucket and status against the ESP
capacity the planner booked, with the late and failed ones.

The buckets come from one grouped statement (the same SQL on SQLite and PostgreSQL): the
campaign's triggers, and the open or sent triggers other campaigns of the tenant hold on the
same ESP account within the campaign's window (they share the capacity). A trigger is late when
it is due by more than `late_after` and not sent yet, or when it was sent more than
`late_after` after its trigger time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from sendflowr.storage.metadata.store import MetadataStore
from sendflowr.storage.metadata.tables import triggers
from sendflowr.storage.metadata.triggers import (
    OPEN,
    Schedule,
    Trigger,
    TriggerStatus,
    minute_of,
    trigger_of_row,
)

STATUSES: tuple[TriggerStatus, ...] = ("scheduled", "sending", "sent", "failed", "cancelled")
MAX_REASONS = 20
MAX_FILLED = 2_000  # empty buckets are filled in up to this many buckets


@dataclass(slots=True)
class Bucket:
    start: int  # unix seconds
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    late: int = 0
    other_campaigns: int = 0  # other campaigns' open or sent triggers on the same ESP account

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Timeline:
    bucket_seconds: int
    buckets: list[Bucket]
    counts: dict[str, int]
    late_count: int
    late: list[Trigger]
    failed: list[Trigger]
    failure_reasons: list[tuple[str, int]]


def counts_by_schedule(
    metadata: MetadataStore, schedule_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Triggers per status of each campaign, in one grouped statement (for lists)."""
    out: dict[str, dict[str, int]] = {sid: {} for sid in schedule_ids}
    if not schedule_ids:
        return out
    t = triggers.c
    with metadata._guard(), metadata.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.schedule_id, t.status, sa.func.count())
            .where(t.schedule_id.in_(list(schedule_ids)))
            .group_by(t.schedule_id, t.status)
        ).all()
    for sid, status, n in rows:
        out[sid][status] = int(n)
    return out


def window_minutes(schedule: Schedule) -> tuple[int, int]:
    """The first and last trigger minute the campaign's window allows (unix seconds)."""
    first = minute_of(schedule.window_start - timedelta(seconds=schedule.latency_seconds))
    return first, minute_of(schedule.window_end)


def _epoch(column: Any) -> ColumnElement[Any]:
    # SQLite: CAST(STRFTIME('%s', x) AS INTEGER); PostgreSQL: EXTRACT(epoch FROM x)
    return sa.extract("epoch", column)


def late_condition(now: datetime, late_after_seconds: int) -> ColumnElement[bool]:
    t = triggers.c
    return sa.or_(
        sa.and_(t.status.in_(OPEN), t.trigger_at < now - timedelta(seconds=late_after_seconds)),
        sa.and_(
            t.status == "sent",
            _epoch(t.sent_at) - _epoch(t.trigger_at) > late_after_seconds,
        ),
    )


def timeline(
    metadata: MetadataStore,
    schedule: Schedule,
    bucket_seconds: int,
    now: datetime,
    late_after_seconds: int,
    limit: int,
) -> Timeline:
    """The campaign's buckets (every bucket from the window's first to its last, empty ones
    too, unless that is more than MAX_FILLED), its counts per status, up to `limit` late and
    failed triggers (earliest first) and its failure reasons (most frequent first)."""
    t = triggers.c
    mine = t.schedule_id == schedule.id
    first, last = window_minutes(schedule)
    others = sa.and_(
        t.schedule_id != schedule.id,
        t.trigger_minute >= first - first % bucket_seconds,
        t.trigger_minute <= last,
        t.status.in_((*OPEN, "sent")),
    )
    late = late_condition(now, late_after_seconds)
    # The parameters live in the inner SELECT only, so the outer GROUP BY names plain columns
    # (PostgreSQL refuses a GROUP BY expression whose bind parameters differ from the SELECT's).
    inner = (
        sa.select(
            (t.trigger_minute - t.trigger_minute % bucket_seconds).label("bucket"),
            t.status.label("status"),
            sa.case((mine, 1), else_=0).label("mine"),
            sa.case((sa.and_(mine, late), 1), else_=0).label("late"),
        )
        .where(t.tenant == schedule.tenant, t.esp == schedule.esp, sa.or_(mine, others))
        .subquery()
    )
    grouped = sa.select(
        inner.c.bucket, inner.c.status, inner.c.mine, sa.func.count(), sa.func.sum(inner.c.late)
    ).group_by(inner.c.bucket, inner.c.status, inner.c.mine)
    with metadata._guard(), metadata.engine.connect() as conn:
        rows = conn.execute(grouped).all()
        late_rows = conn.execute(
            triggers.select().where(mine, late).order_by(t.trigger_at, t.decision_id).limit(limit)
        ).all()
        failed_rows = conn.execute(
            triggers.select()
            .where(mine, t.status == "failed")
            .order_by(t.trigger_at, t.decision_id)
            .limit(limit)
        ).all()
        reasons = conn.execute(
            sa.select(t.error, sa.func.count())
            .where(mine, t.status == "failed")
            .group_by(t.error)
            .order_by(sa.func.count().desc())
            .limit(MAX_REASONS)
        ).all()

    buckets: dict[int, Bucket] = {}
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    late_count = 0
    for start, status, is_mine, n, n_late in rows:
        b = buckets.setdefault(int(start), Bucket(int(start)))
        if is_mine:
            b.counts[status] = b.counts.get(status, 0) + int(n)
            b.late += int(n_late or 0)
            counts[status] = counts.get(status, 0) + int(n)
            late_count += int(n_late or 0)
        else:
            b.other_campaigns += int(n)
    lo = min([first - first % bucket_seconds, *buckets])
    hi = max([last - last % bucket_seconds, *buckets])
    if (hi - lo) // bucket_seconds < MAX_FILLED:  # else (a far reschedule) only the busy ones
        for start in range(lo, hi + 1, bucket_seconds):
            buckets.setdefault(start, Bucket(start))
    return Timeline(
        bucket_seconds=bucket_seconds,
        buckets=[buckets[k] for k in sorted(buckets)],
        counts=counts,
        late_count=late_count,
        late=[trigger_of_row(r._mapping) for r in late_rows],
        failed=[trigger_of_row(r._mapping) for r in failed_rows],
        failure_reasons=[(e or "no reason recorded", int(n)) for e, n in reasons],
    )
