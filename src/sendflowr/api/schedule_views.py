"""The dispatch timeline of a campaign as the API shows it: bucket choice, response bodies and
late or failed triggers with their reasons in words."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from sendflowr.api.intent_schemas import TriggerOut
from sendflowr.errors import InvalidInputError
from sendflowr.storage.metadata.schedule_timeline import Timeline, window_minutes
from sendflowr.storage.metadata.triggers import Schedule, Trigger

BucketName = Literal["auto", "minute", "5min", "15min", "hour"]
BUCKETS: dict[str, int] = {"minute": 60, "5min": 300, "15min": 900, "hour": 3600}
AUTO_TARGET = 360  # auto: the smallest bucket that draws the window in at most this many
MAX_BUCKETS = 1_440  # a chosen bucket may draw at most this many


class TimelineBucketOut(BaseModel):
    start: datetime
    counts: dict[str, int] = Field(description="this campaign's triggers per status")
    total: int
    late: int
    other_campaigns: int = Field(
        description="open or sent triggers of the tenant's other campaigns on the same ESP"
    )
    capacity: int = Field(description="triggers the planner may book in this bucket")


class TriggerIssueOut(TriggerOut):
    late_seconds: float | None = Field(
        None, description="how late: sent after, or due and unsent for, this many seconds"
    )
    reason: str = Field(description="what happened, in words")


class FailureReasonOut(BaseModel):
    error: str
    count: int


class ScheduleTimelineOut(BaseModel):
    schedule_id: str
    tenant: str
    intent_id: str
    esp: str
    status: str
    running: bool = Field(description="triggers are still scheduled or being sent")
    window: list[datetime]
    now: datetime
    bucket: str
    bucket_seconds: int
    capacity_per_minute: int
    capacity_per_bucket: int
    ceiling_per_minute: int | None
    late_after_seconds: int
    counts: dict[str, int] = Field(description="the campaign's triggers per status")
    late_count: int
    failed_count: int
    buckets: list[TimelineBucketOut]
    late: list[TriggerIssueOut] = Field(description="the earliest late triggers")
    failed: list[TriggerIssueOut] = Field(description="the earliest failed triggers")
    failure_reasons: list[FailureReasonOut] = Field(description="most frequent first")


def bucket_seconds(schedule: Schedule, bucket: str) -> int:
    """The bucket's length; 422 on `bucket` when it would draw the window in too many."""
    first, last = window_minutes(schedule)
    span = last - first + 60
    if bucket == "auto":
        fits = [s for s in sorted(BUCKETS.values()) if span / s <= AUTO_TARGET]
        return fits[0] if fits else max(BUCKETS.values())
    seconds = BUCKETS[bucket]
    if span / seconds > MAX_BUCKETS:
        raise InvalidInputError.at(
            ("query", "bucket"),
            f"the campaign's window of {duration(span)} makes {span // seconds} buckets of "
            f"{bucket}; at most {MAX_BUCKETS} are drawn, choose a longer bucket or auto",
        )
    return seconds


def duration(seconds: float) -> str:
    """Seconds in words: '45 s', '3 min', '2 h 5 min', '1 d 3 h'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def late_reason(t: Trigger, now: datetime) -> tuple[float, str]:
    """How late a late trigger is and why, in words."""
    if t.status == "sent" and t.sent_at is not None:
        delay = (t.sent_at - t.trigger_at).total_seconds()
        tries = f" (on attempt {t.attempts})" if t.attempts > 1 else ""
        return delay, f"sent {duration(delay)} after its trigger time{tries}"
    overdue = (now - t.trigger_at).total_seconds()
    due = f"due {duration(overdue)} ago and not sent yet"
    if t.status == "sending":
        return overdue, f"{due}: being sent (attempt {t.attempts})"
    if t.error:
        return overdue, (
            f"{due}: waiting to retry after {t.attempts} "
            f"attempt{'s' if t.attempts != 1 else ''} ({t.error})"
        )
    return overdue, f"{due}: no executor has claimed it (is one running?)"


def failed_reason(t: Trigger) -> str:
    attempts = f"{t.attempts} attempt{'s' if t.attempts != 1 else ''}"
    return f"failed after {attempts}: {t.error or 'no reason recorded'}"


def timeline_out(
    s: Schedule,
    tl: Timeline,
    bucket: str,
    now: datetime,
    late_after_seconds: int,
    trigger_out: Callable[[Trigger], TriggerOut],
) -> ScheduleTimelineOut:
    """The response; `trigger_out` is the schedules routes' view of one trigger."""

    def issue(t: Trigger, late_seconds: float | None, reason: str) -> TriggerIssueOut:
        fields = trigger_out(t).model_dump()
        return TriggerIssueOut(**fields, late_seconds=late_seconds, reason=reason)

    per_bucket = s.capacity_per_minute * tl.bucket_seconds // 60
    ceiling = s.summary.get("ceiling_per_minute")
    return ScheduleTimelineOut(
        schedule_id=s.id,
        tenant=s.tenant,
        intent_id=s.intent_id,
        esp=s.esp,
        status=s.status,
        running=bool(tl.counts.get("scheduled") or tl.counts.get("sending")),
        window=[s.window_start, s.window_end],
        now=now,
        bucket=bucket,
        bucket_seconds=tl.bucket_seconds,
        capacity_per_minute=s.capacity_per_minute,
        capacity_per_bucket=per_bucket,
        ceiling_per_minute=ceiling if isinstance(ceiling, int) else None,
        late_after_seconds=late_after_seconds,
        counts=tl.counts,
        late_count=tl.late_count,
        failed_count=tl.counts.get("failed", 0),
        buckets=[
            TimelineBucketOut(
                start=datetime.fromtimestamp(b.start, UTC),
                counts=b.counts,
                total=b.total,
                late=b.late,
                other_campaigns=b.other_campaigns,
                capacity=per_bucket,
            )
            for b in tl.buckets
        ],
        late=[issue(t, *late_reason(t, now)) for t in tl.late],
        failed=[issue(t, None, failed_reason(t)) for t in tl.failed],
        failure_reasons=[FailureReasonOut(error=e, count=n) for e, n in tl.failure_reasons],
    )
