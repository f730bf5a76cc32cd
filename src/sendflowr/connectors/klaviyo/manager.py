"""The backfill worker inside a long-running process: claims queued jobs and runs them, and
queues incremental syncs on a schedule when `sync_interval_seconds` is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sendflowr.connectors.klaviyo.backfill import BackfillRunner, incremental_range
from sendflowr.connectors.klaviyo.constants import ESP
from sendflowr.errors import SendFlowrError
from sendflowr.runtime import Runtime

log = logging.getLogger("sendflowr.backfill")


class BackfillManager:
    def __init__(self, runtime: Runtime, *, poll_seconds: float = 1.0) -> None:
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        self.runner = BackfillRunner(runtime)
        self._task: asyncio.Task[None] | None = None
        self._last_schedule = datetime.min.replace(tzinfo=UTC)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="backfill-manager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                self._schedule_syncs()
                job = await asyncio.to_thread(self.runner.claim)
                if job is not None:
                    await self.runner.run(job)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must outlive any one job's trouble
                log.exception("backfill worker error")
            await asyncio.sleep(self.poll_seconds)

    def _schedule_syncs(self) -> None:
        interval = self.runtime.settings.sync_interval_seconds
        now = datetime.now(UTC)
        if interval <= 0 or now - self._last_schedule < timedelta(seconds=interval):
            return
        self._last_schedule = now
        for account in self.runtime.accounts.list():
            if account.esp != ESP or account.status != "connected":
                continue
            latest = self.runtime.backfills.latest_job(account.tenant, ESP)
            if latest is None or latest.status in ("queued", "in_progress"):
                continue
            try:
                start, end = incremental_range(self.runtime, account.tenant, now)
                self.runtime.backfills.create_job(account.tenant, ESP, "incremental", start, end)
            except (LookupError, SendFlowrError) as exc:
                log.debug("no incremental sync for %s: %s", account.tenant, exc)
