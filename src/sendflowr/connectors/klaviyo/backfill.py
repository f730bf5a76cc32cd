"""Backfill and incremental sync of a tenant's Klaviyo history, resumable at any point.

A job is planned as (metric, UTC day) units plus one catalogue unit (campaigns and flows).
Fetching and storing overlap: `concurrency` fetchers each walk one unit's cursor at a time
(the client paces every request to Klaviyo's published limits) and put the pages into a
bounded queue; one processor takes what is queued in batches and, in a worker thread,
normalises, archives and stores them through the pipeline (durable when it returns), then
records each page's count and the next page's URL in its unit's checkpoint, page by page in
the order they were fetched. A crash between the store and the checkpoints re-fetches those
pages, whose events have the same deterministic ids and so replace themselves; pages fetched
but not yet stored are simply fetched again: resumed jobs end with no gap and no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from sendflowr.archive.hook import keep_accepted
from sendflowr.archive.klaviyo import backfill_rows_from_bytes
from sendflowr.connectors.klaviyo.catalog import fetch_catalog
from sendflowr.connectors.klaviyo.client import EventsPage, KlaviyoClient, KlaviyoError
from sendflowr.connectors.klaviyo.constants import ESP, METRIC_ALIASES, METRIC_EVENT_TYPES
from sendflowr.connectors.klaviyo.factory import open_client
from sendflowr.connectors.klaviyo.normalize import EVENT_FIELDS, PROFILE_FIELDS, IdentifierCache
from sendflowr.connectors.klaviyo.normalize_wire import normalize_records
from sendflowr.connectors.notify import notify_job
from sendflowr.events import CanonicalEvent
from sendflowr.metrics import observe_ingest
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.backfill import Job, JobStatus, Unit
from sendflowr.storage.metadata.catalog import CatalogItem
from sendflowr.storage.metadata.store import DeadLetter

log = logging.getLogger("sendflowr.backfill")

CATALOG = "catalog"  # the unit (metric_id and day) that fetches campaigns and flows
SOURCE = "klaviyo-backfill"
ENGAGEMENT_METRICS = frozenset(METRIC_EVENT_TYPES) | frozenset(METRIC_ALIASES)


class Cancelled(Exception):
    """The job was cancelled, or another worker took it over."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool:
    """False only when `worker` ran on this host and its process is gone."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: only its heartbeat can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def days(start: datetime, end: datetime) -> list[str]:
    """The UTC days (YYYY-MM-DD) that [start, end) touches, oldest first."""
    out: list[str] = []
    day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    while day < end:
        out.append(day.date().isoformat())
        day += timedelta(days=1)
    return out


def day_range(day: str, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """A unit's time range: its UTC day clipped to the job's range."""
    lo = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return max(lo, start), min(lo + timedelta(days=1), end)


@dataclass
class RunnerOptions:
    concurrency: int = 4  # units fetched at once
    page_size: int = 1000
    buffer_pages: int = 16  # fetched pages waiting to be stored, at most
    batch_events: int = 5000  # events normalised, archived and stored together, at most
    heartbeat_seconds: float = 5.0
    stale_after: timedelta = timedelta(seconds=60)


ProgressHook = Callable[[Job], None]


@dataclass(slots=True)
class _Fetched:
    """A fetched page of a unit, or (page None) the unit's fetch failure."""

    unit: Unit
    page: EventsPage | None
    error: str | None


class BackfillRunner:
    """Claims backfill jobs and runs them to an end (completed, failed or cancelled)."""

    def __init__(
        self,
        runtime: Runtime,
        options: RunnerOptions | None = None,
        *,
        client_factory: Callable[[str], KlaviyoClient] | None = None,
        on_progress: ProgressHook | None = None,
        worker: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.options = options or RunnerOptions(concurrency=runtime.settings.backfill_concurrency)
        self.client_factory = client_factory or (lambda tenant: open_client(runtime, tenant))
        self.on_progress = on_progress
        self.worker = worker or worker_name()
        self.store = runtime.backfills
        # Profiles recur across a tenant's pages: hash and parse their identifiers once.
        self._identifiers = IdentifierCache()

    # -- claiming -----------------------------------------------------------------------------
    def claim(self, job_id: int | None = None) -> Job | None:
        """The next job to run: `job_id` if given (taken over when its worker is gone),
        else the oldest queued job or one whose worker stopped heartbeating or died here."""
        if job_id is not None:
            job = self.store.get_job(job_id)
            if job.status == "in_progress" and worker_alive(job.worker):
                return self.store.claim_job(self.worker, self.options.stale_after, job_id=job_id)
            return self.store.claim_job(self.worker, timedelta(0), job_id=job_id)
        for job in self.store.jobs():
            if (
                job.status == "in_progress"
                and job.worker != self.worker
                and not worker_alive(job.worker)
            ):
                taken = self.store.claim_job(self.worker, timedelta(0), job_id=job.id)
                if taken is not None:
                    return taken
        return self.store.claim_job(self.worker, self.options.stale_after)

    async def run_next(self) -> Job | None:
        job = self.claim()
        return await self.run(job) if job is not None else None

    # -- running ------------------------------------------------------------------------------
    async def run(self, job: Job) -> Job:
        log.info("backfill %s for %s: %s to %s", job.id, job.tenant, job.range_start, job.range_end)
        heart = asyncio.create_task(self._heartbeat(job.id))
        try:
            client = self.client_factory(job.tenant)
            async with client:
                if job.total_units == 0:
                    await self._plan(client, job)
                await self._run_units(client, job)
        except Cancelled:
            final = self._finish(job.id, "cancelled", None)
        except KlaviyoError as exc:
            final = self._finish(job.id, "failed", f"Klaviyo: {exc}")
        except Exception as exc:
            log.exception("backfill %s failed", job.id)
            final = self._finish(job.id, "failed", f"{type(exc).__name__}: {exc}")
        else:
            current = self.store.get_job(job.id)
            if current.cancel_requested:
                final = self._finish(job.id, "cancelled", None)
            elif current.failed_units:
                failed = self.store.units(job.id, ["failed"])
                first = failed[0].error if failed else ""
                final = self._finish(
                    job.id,
                    "failed",
                    f"{current.failed_units} of {current.total_units} units failed; first: {first}",
                )
            else:
                self._advance_checkpoints(current)
                final = self._finish(job.id, "completed", None)
        finally:
            heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heart
        await notify_job(self.runtime, final)
        return final

    def _finish(self, job_id: int, status: JobStatus, error: str | None) -> Job:
        job = self.store.finish_job(job_id, status, error)
        if self.on_progress is not None:
            self.on_progress(job)
        log.info("backfill %s %s: %s events", job.id, job.status, job.events)
        return job

    async def _plan(self, client: KlaviyoClient, job: Job) -> None:
        metrics = [m for m in await client.list_metrics() if m.name in ENGAGEMENT_METRICS]
        self.runtime.catalog.upsert(
            job.tenant, ESP, [CatalogItem("metric", m.id, m.name) for m in metrics]
        )
        units: list[tuple[str, str, str]] = [(CATALOG, "campaigns and flows", CATALOG)]
        for day in days(job.range_start, job.range_end):
            units.extend((m.id, m.name, day) for m in metrics)
        self.store.add_units(job.id, units)
        self._report(job.id)

    async def _run_units(self, client: KlaviyoClient, job: Job) -> None:
        """Fetch and store concurrently: `concurrency` fetchers walk units' cursors and put
        pages into a bounded queue; one processor drains it in batches (normalise, archive,
        store, then each page's checkpoint in order) in a worker thread, so requests keep
        going out at the limiter's pace while earlier pages are being stored."""
        units: asyncio.Queue[Unit] = asyncio.Queue()
        for unit in self.store.units(job.id, ["queued", "in_progress"]):
            units.put_nowait(unit)
        pages: asyncio.Queue[_Fetched | None] = asyncio.Queue(
            maxsize=max(1, self.options.buffer_pages)
        )
        stop = asyncio.Event()  # the fetchers failed: drop what is queued, store nothing more

        async def fetcher() -> None:
            while True:
                try:
                    unit = units.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if unit.metric_id == CATALOG:
                    await self._run_catalog(client, job, unit)
                else:
                    await self._fetch_unit(client, job, unit, pages)

        async def fetch_all() -> None:
            try:
                await asyncio.gather(*fetchers)
            except BaseException:
                stop.set()
                for f in fetchers:
                    f.cancel()
                await asyncio.gather(*fetchers, return_exceptions=True)
                raise
            finally:
                if stop.is_set():  # the processor may be gone: never wait for room
                    with contextlib.suppress(asyncio.QueueFull):
                        pages.put_nowait(None)
                else:
                    await pages.put(None)

        fetchers = [asyncio.create_task(fetcher()) for _ in range(self.options.concurrency)]
        fetching = asyncio.create_task(fetch_all())
        processing = asyncio.create_task(self._process(job, pages, stop))
        try:
            await asyncio.gather(fetching, processing)
        except BaseException:
            stop.set()
            for t in (*fetchers, fetching):
                t.cancel()
            await asyncio.gather(*fetchers, fetching, return_exceptions=True)
            # Nothing puts any more. The processor, if still running, ends after its current
            # batch (a thread cannot be interrupted, and the job must not be finished while it
            # still writes): wake it with the end marker.
            while not pages.empty():
                pages.get_nowait()
            pages.put_nowait(None)
            await asyncio.gather(processing, return_exceptions=True)
            raise

    async def _run_catalog(self, client: KlaviyoClient, job: Job, unit: Unit) -> None:
        try:
            items = await fetch_catalog(client)
            await asyncio.to_thread(self.runtime.catalog.upsert, job.tenant, ESP, items)
            self.store.page_done(unit, 0, None, finished=True)
        except KlaviyoError as exc:
            self.store.unit_failed(unit, f"catalogue: {exc}")
        self._report(job.id)

    async def _fetch_unit(
        self,
        client: KlaviyoClient,
        job: Job,
        unit: Unit,
        pages: asyncio.Queue[_Fetched | None],
    ) -> None:
        """Read one unit's pages in cursor order into `pages` (a failure goes there too, so
        it is recorded after the pages fetched before it)."""
        start, end = day_range(unit.day, job.range_start, job.range_end)
        url = unit.next_url
        while True:
            if self.store.cancel_requested(job.id):
                raise Cancelled
            try:
                page = await client.events_page(
                    metric_id=unit.metric_id,
                    start=start,
                    end=end,
                    cursor_url=url,
                    page_size=self.options.page_size,
                    # Only what the normaliser reads (sparse fieldsets), archived as received.
                    event_fields=EVENT_FIELDS,
                    profile_fields=PROFILE_FIELDS,
                )
            except KlaviyoError as exc:
                await pages.put(_Fetched(unit, None, str(exc)))
                return
            await pages.put(_Fetched(unit, page, None))
            if page.next_url is None:
                return
            url = page.next_url

    async def _process(
        self, job: Job, pages: asyncio.Queue[_Fetched | None], stop: asyncio.Event
    ) -> None:
        """Drain the queue in batches of up to `batch_events` events until the end marker."""
        limit = max(1, self.options.batch_events)
        ended = False
        while not ended:
            first = await pages.get()
            if first is None or stop.is_set():
                return
            batch = [first]
            size = len(first.page) if first.page is not None else 0
            while size < limit:
                try:
                    item = pages.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    ended = True
                    break
                batch.append(item)
                size += len(item.page) if item.page is not None else 0
            counts = await asyncio.to_thread(self._store_batch, job.tenant, batch)
            for item, stored in zip(batch, counts, strict=True):
                await asyncio.to_thread(self._checkpoint, item, stored)
                self._report(job.id)

    def _store_batch(self, tenant: str, batch: list[_Fetched]) -> list[int]:
        """Normalise and store a batch of pages; the events stored from each page.

        Stored (durable) before any checkpoint moves (`_checkpoint`, page by page in order,
        after this returns): a crash in between re-fetches those pages, whose events have
        deterministic ids and replace themselves. What cannot be normalised becomes a dead
        letter naming the field and the reason (the rest of the page is kept)."""
        events: list[CanonicalEvent] = []
        rejected: list[DeadLetter] = []
        payloads: list[str] = []
        contexts: list[str] = []
        counts: list[int] = []
        for item in batch:
            if item.page is None:
                counts.append(0)
                continue
            unit, page = item.unit, item.page
            result = normalize_records(
                page.records,
                page.profile_records,
                {unit.metric_id: unit.metric_name},
                tenant=tenant,
                hash_key=self.runtime.hash_key,
                metric_id=unit.metric_id,
                cache=self._identifiers,
            )
            rejected.extend(
                DeadLetter(
                    source=SOURCE,
                    payload=orjson.dumps(raw, default=str).decode(),
                    reason=str(exc),
                    tenant=tenant,
                )
                for raw, exc in result.rejected
            )
            if result.events:
                # The raw archive (issue 7): the page's accepted resources, as received.
                rows, ctx = backfill_rows_from_bytes(
                    [_archived(page, i) for i in result.accepted],
                    metric_id=unit.metric_id,
                    metric_name=unit.metric_name,
                )
                payloads.extend(rows)
                contexts.extend(ctx)
            events.extend(result.events)
            counts.append(len(result.events))
        if rejected:
            self.runtime.metadata.add_dead_letters(rejected)
            observe_ingest(SOURCE, dead_lettered=len(rejected))
        if events:
            # Durable in the archive before storing, as every ingest path.
            keep_accepted(
                self.runtime,
                tenant=tenant,
                esp=ESP,
                source=SOURCE,
                kind="klaviyo-event",
                payloads=payloads,
                event_ids=[e.event_id for e in events],
                contexts=contexts,
            )
            self.runtime.bus.publish(events, source=SOURCE)
        return counts

    def _checkpoint(self, item: _Fetched, stored: int) -> None:
        if item.page is None:
            self.store.unit_failed(item.unit, item.error or "failed")
        else:
            finished = item.page.next_url is None
            self.store.page_done(item.unit, stored, item.page.next_url, finished=finished)

    def _advance_checkpoints(self, job: Job) -> None:
        metric_ids = {u.metric_id for u in self.store.units(job.id) if u.metric_id != CATALOG}
        for metric_id in metric_ids:
            self.store.set_checkpoint(job.tenant, ESP, metric_id, job.range_end)

    async def _heartbeat(self, job_id: int) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            await asyncio.to_thread(self.store.heartbeat, job_id, self.worker)

    def _report(self, job_id: int) -> None:
        """Hand the job's current state to the progress hook (read only when there is one)."""
        if self.on_progress is not None:
            self.on_progress(self.store.get_job(job_id))


def _archived(page: EventsPage, i: int) -> tuple[bytes, bytes | None]:
    """Event `i` of the page and its included profile, as received (for the raw archive)."""
    record = page.records[i]
    pid = record.profile_ref()
    profile = page.profile_records.get(pid) if pid is not None else None
    return record.raw, profile.raw if profile is not None else None


def plan_range(
    now: datetime, *, days_back: int | None = None, years_back: int | None = None
) -> tuple[datetime, datetime]:
    """[start, end) for a backfill of the last N days or the last N calendar years (the same
    date and time N years before; 29 February becomes the 28th), ending now. Exactly one of
    the two."""
    if (days_back is None) == (years_back is None):
        raise ValueError("give days_back or years_back, exactly one")
    if years_back is not None:
        year = now.year - years_back
        try:
            return now.replace(year=year), now
        except ValueError:  # 29 February, in a year without one
            return now.replace(year=year, day=28), now
    return now - timedelta(days=days_back or 0), now


def incremental_range(runtime: Runtime, tenant: str, now: datetime) -> tuple[datetime, datetime]:
    """From the oldest per-metric checkpoint (every metric synced up to it) to now."""
    metric_ids = runtime.catalog.names(tenant, "metric")
    marks = [runtime.backfills.checkpoint(tenant, ESP, m) for m in metric_ids]
    known = [m for m in marks if m is not None]
    if not known or len(known) < len(marks):
        raise LookupError(f"tenant {tenant!r} has no completed backfill to continue from")
    return min(known), now
