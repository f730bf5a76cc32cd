"""Backfill jobs and their units of work, persisted so a killed backfill resumes exactly.

A job covers a time range for one tenant's ESP account. Its units are (metric, day) pairs;
each unit records its status, counts and a checkpoint (the URL of the next page to fetch),
written only after the page's events are durably stored. A job whose worker stopped
heartbeating is claimed again by the next worker and continues from the checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from sendflowr.errors import ConflictError, NotFoundError
from sendflowr.storage.metadata.store import MetadataStore, aware, aware_or_none
from sendflowr.storage.metadata.tables import backfill_jobs, backfill_units, sync_checkpoints
from sendflowr.storage.metadata.upsert import upsert

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
JobKind = Literal["backfill", "incremental"]
ACTIVE: tuple[JobStatus, ...] = ("queued", "in_progress")


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    tenant: str
    esp: str
    kind: JobKind
    status: JobStatus
    range_start: datetime
    range_end: datetime
    total_units: int
    done_units: int
    failed_units: int
    events: int
    error: str | None
    cancel_requested: bool
    worker: str | None
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def progress(self) -> float:
        """Share of units finished (completed or failed), 0..1."""
        if self.status == "completed":
            return 1.0
        if not self.total_units:
            return 0.0
        return min(1.0, (self.done_units + self.failed_units) / self.total_units)


@dataclass(frozen=True, slots=True)
class Unit:
    job_id: int
    metric_id: str
    day: str
    metric_name: str
    status: str
    events: int = 0
    pages: int = 0
    next_url: str | None = None
    error: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class MetricProgress:
    metric_name: str
    total_days: int
    done_days: int
    failed_days: int
    events: int
    errors: list[str] = field(default_factory=list)


def _unit_key(unit: Unit) -> tuple[sa.ColumnElement[bool], ...]:
    return (
        backfill_units.c.job_id == unit.job_id,
        backfill_units.c.metric_id == unit.metric_id,
        backfill_units.c.day == unit.day,
    )


def _job(row: Any) -> Job:
    return Job(
        id=int(row["id"]),
        tenant=row["tenant"],
        esp=row["esp"],
        kind=row["kind"],
        status=row["status"],
        range_start=aware(row["range_start"]),
        range_end=aware(row["range_end"]),
        total_units=int(row["total_units"]),
        done_units=int(row["done_units"]),
        failed_units=int(row["failed_units"]),
        events=int(row["events"]),
        error=row["error"],
        cancel_requested=bool(row["cancel_requested"]),
        worker=row["worker"],
        heartbeat_at=aware_or_none(row["heartbeat_at"]),
        created_at=aware(row["created_at"]),
        started_at=aware_or_none(row["started_at"]),
        finished_at=aware_or_none(row["finished_at"]),
    )


def _unit(row: Any) -> Unit:
    return Unit(
        job_id=int(row["job_id"]),
        metric_id=row["metric_id"],
        day=row["day"],
        metric_name=row["metric_name"],
        status=row["status"],
        events=int(row["events"]),
        pages=int(row["pages"]),
        next_url=row["next_url"],
        error=row["error"],
        attempts=int(row["attempts"]),
    )


class BackfillStore:
    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        self.engine = metadata.engine

    # -- jobs -------------------------------------------------------------------------------
    def create_job(
        self, tenant: str, esp: str, kind: JobKind, start: datetime, end: datetime
    ) -> Job:
        """Queue a job; refused while the tenant has one queued or running."""
        self.metadata.get_tenant(tenant)
        now = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            active = conn.execute(
                sa.select(backfill_jobs.c.id).where(
                    backfill_jobs.c.tenant == tenant,
                    backfill_jobs.c.esp == esp,
                    backfill_jobs.c.status.in_(ACTIVE),
                )
            ).first()
            if active is not None:
                raise ConflictError(
                    f"tenant {tenant!r} has backfill {active.id} queued or running; cancel it "
                    "or wait for it to finish",
                    field="tenant",
                )
            result = conn.execute(
                backfill_jobs.insert().values(
                    tenant=tenant,
                    esp=esp,
                    kind=kind,
                    status="queued",
                    range_start=start,
                    range_end=end,
                    total_units=0,
                    done_units=0,
                    failed_units=0,
                    events=0,
                    error=None,
                    cancel_requested=0,
                    created_at=now,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            job_id = int(key[0])
        return self.get_job(job_id)

    def get_job(self, job_id: int) -> Job:
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(backfill_jobs.select().where(backfill_jobs.c.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"no backfill job {job_id}", field="job")
        return _job(row._mapping)

    def latest_job(self, tenant: str, esp: str = "klaviyo") -> Job | None:
        with self.metadata._guard(), self.engine.connect() as conn:
            row = conn.execute(
                backfill_jobs.select()
                .where(backfill_jobs.c.tenant == tenant, backfill_jobs.c.esp == esp)
                .order_by(backfill_jobs.c.id.desc())
                .limit(1)
            ).first()
        return _job(row._mapping) if row is not None else None

    def jobs(self, tenant: str | None = None, limit: int = 50) -> list[Job]:
        query = backfill_jobs.select().order_by(backfill_jobs.c.id.desc()).limit(limit)
        if tenant is not None:
            query = query.where(backfill_jobs.c.tenant == tenant)
        with self.metadata._guard(), self.engine.connect() as conn:
            return [_job(r._mapping) for r in conn.execute(query)]

    def claim_job(
        self, worker: str, stale_after: timedelta, *, job_id: int | None = None
    ) -> Job | None:
        """Take the oldest queued job (or `job_id`), or a running one whose worker stopped
        heartbeating for `stale_after`.

        The UPDATE re-checks the condition it selected on, so two workers never both win.
        """
        now = datetime.now(UTC)
        stale = now - stale_after
        claimable = sa.or_(
            backfill_jobs.c.status == "queued",
            sa.and_(
                backfill_jobs.c.status == "in_progress",
                sa.or_(
                    backfill_jobs.c.heartbeat_at.is_(None), backfill_jobs.c.heartbeat_at < stale
                ),
            ),
        )
        with self.metadata._guard(), self.engine.begin() as conn:
            query = sa.select(backfill_jobs.c.id).where(claimable)
            if job_id is not None:
                query = query.where(backfill_jobs.c.id == job_id)
            candidates = conn.execute(query.order_by(backfill_jobs.c.id).limit(5)).all()
            for (candidate,) in candidates:
                won = conn.execute(
                    backfill_jobs.update()
                    .where(backfill_jobs.c.id == candidate, claimable)
                    .values(
                        status="in_progress",
                        worker=worker,
                        heartbeat_at=now,
                        started_at=sa.func.coalesce(backfill_jobs.c.started_at, now),
                    )
                )
                if won.rowcount:
                    row = conn.execute(
                        backfill_jobs.select().where(backfill_jobs.c.id == candidate)
                    ).first()
                    return _job(row._mapping) if row is not None else None
        return None

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Refresh the claim; False when the job is no longer this worker's (or cancelled)."""
        with self.metadata._guard(), self.engine.begin() as conn:
            result = conn.execute(
                backfill_jobs.update()
                .where(
                    backfill_jobs.c.id == job_id,
                    backfill_jobs.c.worker == worker,
                    backfill_jobs.c.status == "in_progress",
                )
                .values(heartbeat_at=datetime.now(UTC))
            )
        return bool(result.rowcount)

    def finish_job(self, job_id: int, status: JobStatus, error: str | None = None) -> Job:
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                backfill_jobs.update()
                .where(backfill_jobs.c.id == job_id)
                .values(status=status, error=error, finished_at=datetime.now(UTC))
            )
        return self.get_job(job_id)

    def request_cancel(self, tenant: str, esp: str = "klaviyo") -> Job:
        """Cancel the tenant's active job: at once when queued, at the next page when running."""
        job = self.latest_job(tenant, esp)
        if job is None or job.status not in ACTIVE:
            raise ConflictError(f"tenant {tenant!r} has no queued or running backfill")
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                backfill_jobs.update()
                .where(backfill_jobs.c.id == job.id, backfill_jobs.c.status == "queued")
                .values(status="cancelled", cancel_requested=1, finished_at=datetime.now(UTC))
            )
            conn.execute(
                backfill_jobs.update()
                .where(backfill_jobs.c.id == job.id, backfill_jobs.c.status == "in_progress")
                .values(cancel_requested=1)
            )
        return self.get_job(job.id)

    def cancel_requested(self, job_id: int) -> bool:
        with self.metadata._guard(), self.engine.connect() as conn:
            flag = conn.execute(
                sa.select(backfill_jobs.c.cancel_requested).where(backfill_jobs.c.id == job_id)
            ).scalar()
        return bool(flag)

    def retry(self, tenant: str, esp: str = "klaviyo") -> Job:
        """Queue the tenant's last failed or cancelled job again; finished units are kept."""
        job = self.latest_job(tenant, esp)
        if job is None or job.status not in ("failed", "cancelled"):
            raise ConflictError(
                f"tenant {tenant!r} has no failed or cancelled backfill to retry", field="tenant"
            )
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                backfill_units.update()
                .where(backfill_units.c.job_id == job.id, backfill_units.c.status != "completed")
                .values(status="queued", error=None, updated_at=datetime.now(UTC))
            )
            conn.execute(
                backfill_jobs.update()
                .where(backfill_jobs.c.id == job.id)
                .values(
                    status="queued",
                    error=None,
                    cancel_requested=0,
                    worker=None,
                    heartbeat_at=None,
                    finished_at=None,
                )
            )
            self._recount(conn, job.id)
        return self.get_job(job.id)

    def clear(self, tenant: str, esp: str = "klaviyo") -> int:
        """Delete the tenant's finished jobs and their progress (stored events stay)."""
        with self.metadata._guard(), self.engine.begin() as conn:
            ids = [
                r.id
                for r in conn.execute(
                    sa.select(backfill_jobs.c.id).where(
                        backfill_jobs.c.tenant == tenant,
                        backfill_jobs.c.esp == esp,
                        backfill_jobs.c.status.not_in(ACTIVE),
                    )
                )
            ]
            if ids:
                conn.execute(backfill_units.delete().where(backfill_units.c.job_id.in_(ids)))
                conn.execute(backfill_jobs.delete().where(backfill_jobs.c.id.in_(ids)))
        return len(ids)

    # -- units ------------------------------------------------------------------------------
    def add_units(self, job_id: int, units: Iterable[tuple[str, str, str]]) -> None:
        """Plan (metric_id, metric_name, day) units; existing units are left as they are."""
        now = datetime.now(UTC)
        rows = [
            {
                "job_id": job_id,
                "metric_id": metric_id,
                "day": day,
                "metric_name": name,
                "status": "queued",
                "events": 0,
                "pages": 0,
                "next_url": None,
                "error": None,
                "attempts": 0,
                "updated_at": now,
            }
            for metric_id, name, day in units
        ]
        with self.metadata._guard(), self.engine.begin() as conn:
            for row in rows:
                upsert(conn, backfill_units, row, keys=("job_id", "metric_id", "day"), update=())
            self._recount(conn, job_id)

    def units(self, job_id: int, statuses: Sequence[str] | None = None) -> list[Unit]:
        query = (
            backfill_units.select()
            .where(backfill_units.c.job_id == job_id)
            .order_by(backfill_units.c.day.desc(), backfill_units.c.metric_id)
        )
        if statuses is not None:
            query = query.where(backfill_units.c.status.in_(list(statuses)))
        with self.metadata._guard(), self.engine.connect() as conn:
            return [_unit(r._mapping) for r in conn.execute(query)]

    def page_done(self, unit: Unit, events: int, next_url: str | None, *, finished: bool) -> None:
        """Record a stored page: counts and the checkpoint, in one transaction."""
        now = datetime.now(UTC)
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                backfill_units.update()
                .where(*_unit_key(unit))
                .values(
                    events=backfill_units.c.events + events,
                    pages=backfill_units.c.pages + 1,
                    next_url=None if finished else next_url,
                    status="completed" if finished else "in_progress",
                    error=None,
                    updated_at=now,
                )
            )
            conn.execute(
                backfill_jobs.update()
                .where(backfill_jobs.c.id == unit.job_id)
                .values(
                    events=backfill_jobs.c.events + events,
                    done_units=backfill_jobs.c.done_units + (1 if finished else 0),
                    heartbeat_at=now,
                )
            )

    def unit_failed(self, unit: Unit, error: str) -> None:
        with self.metadata._guard(), self.engine.begin() as conn:
            conn.execute(
                backfill_units.update()
                .where(*_unit_key(unit))
                .values(
                    status="failed",
                    error=error[:2000],
                    attempts=backfill_units.c.attempts + 1,
                    updated_at=datetime.now(UTC),
                )
            )
            self._recount(conn, unit.job_id)

    def metric_progress(self, job_id: int) -> list[MetricProgress]:
        with self.metadata._guard(), self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    backfill_units.c.metric_name,
                    backfill_units.c.status,
                    sa.func.count().label("units"),
                    sa.func.sum(backfill_units.c.events).label("events"),
                )
                .where(backfill_units.c.job_id == job_id)
                .group_by(backfill_units.c.metric_name, backfill_units.c.status)
            ).all()
            errors = conn.execute(
                sa.select(
                    backfill_units.c.metric_name, backfill_units.c.day, backfill_units.c.error
                )
                .where(backfill_units.c.job_id == job_id, backfill_units.c.error.is_not(None))
                .order_by(backfill_units.c.day)
                .limit(100)
            ).all()
        by_metric: dict[str, dict[str, int]] = {}
        for r in rows:
            m = by_metric.setdefault(r.metric_name, {"total": 0, "done": 0, "failed": 0, "ev": 0})
            m["total"] += int(r.units)
            m["ev"] += int(r.events or 0)
            if r.status == "completed":
                m["done"] += int(r.units)
            elif r.status == "failed":
                m["failed"] += int(r.units)
        errs: dict[str, list[str]] = {}
        for e in errors:
            errs.setdefault(e.metric_name, []).append(f"{e.day}: {e.error}")
        return [
            MetricProgress(name, m["total"], m["done"], m["failed"], m["ev"], errs.get(name, []))
            for name, m in sorted(by_metric.items())
        ]

    def _recount(self, conn: sa.Connection, job_id: int) -> None:
        counts: dict[str, int] = dict(
            conn.execute(
                sa.select(backfill_units.c.status, sa.func.count())
                .where(backfill_units.c.job_id == job_id)
                .group_by(backfill_units.c.status)
            ).all()
        )
        conn.execute(
            backfill_jobs.update()
            .where(backfill_jobs.c.id == job_id)
            .values(
                total_units=sum(counts.values()),
                done_units=counts.get("completed", 0),
                failed_units=counts.get("failed", 0),
            )
        )

    # -- incremental sync checkpoints -------------------------------------------------------
    def checkpoint(self, tenant: str, esp: str, metric_id: str) -> datetime | None:
        with self.metadata._guard(), self.engine.connect() as conn:
            at = conn.execute(
                sa.select(sync_checkpoints.c.synced_until).where(
                    sync_checkpoints.c.tenant == tenant,
                    sync_checkpoints.c.esp == esp,
                    sync_checkpoints.c.metric_id == metric_id,
                )
            ).scalar()
        return aware_or_none(at)

    def set_checkpoint(self, tenant: str, esp: str, metric_id: str, until: datetime) -> None:
        """Advance (never move back) the point up to which a metric is fully synced."""
        current = self.checkpoint(tenant, esp, metric_id)
        if current is not None and current >= until:
            return
        with self.metadata._guard(), self.engine.begin() as conn:
            upsert(
                conn,
                sync_checkpoints,
                {"tenant": tenant, "esp": esp, "metric_id": metric_id, "synced_until": until},
                keys=("tenant", "esp", "metric_id"),
            )
