"""The executor: claim due triggers, fire them through the intent's bound ESP, record the outcome.

One loop: claim up to `claim_limit` due triggers (a lease marks them `sending` under this
worker), group them by (tenant, intent), read each intent's *current* binding, split each group
into the dispatcher's batch size and send the batches concurrently. Outcomes: sent; a retryable
failure (429, 5xx, network) goes back to `scheduled` with an exponential back-off (or the ESP's
Retry-After) until `max_attempts`, then failed; any other refusal fails with its reason.

A worker killed between claiming and recording leaves `sending` rows; when their lease runs out
another (or the restarted) worker claims and sends them again with the same decision ids, which
the ESP deduplicates: no send is lost and none is delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sendflowr.errors import SendFlowrError
from sendflowr.execution.base import Dispatcher, Send, SendResult
from sendflowr.intents import Intent
from sendflowr.runtime import Runtime
from sendflowr.storage.metadata.triggers import Trigger

log = logging.getLogger("sendflowr.executor")


@dataclass(frozen=True, slots=True)
class ExecutorOptions:
    claim_limit: int = 5_000
    lease: timedelta = timedelta(seconds=120)
    poll_seconds: float = 0.5
    max_attempts: int = 8
    base_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 600.0
    concurrency: int = 16  # batches in flight at once


@dataclass(slots=True)
class Tally:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    by_esp: dict[str, int] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        self.claimed += other.claimed
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        for k, v in other.by_esp.items():
            self.by_esp[k] = self.by_esp.get(k, 0) + v


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _send(t: Trigger) -> Send:
    return Send(
        decision_id=t.decision_id,
        tenant=t.tenant,
        intent_id=t.intent_id,
        universal_id=t.universal_id,
        recipient_type=t.recipient_type,
        recipient_value=t.recipient_value,
        target_at=t.target_at,
        trigger_at=t.trigger_at,
        explanation_ref=t.explanation_ref,
    )


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        dispatchers: Mapping[str, Dispatcher],
        *,
        worker: str | None = None,
        options: ExecutorOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.runtime = runtime
        self.dispatchers = dict(dispatchers)
        self.worker = worker or worker_name()
        self.options = options or ExecutorOptions()
        self.clock = clock
        self.total = Tally()

    # -- one pass ----------------------------------------------------------------------------
    async def run_once(self) -> Tally:
        """Claim what is due now and fire it; returns what happened."""
        o = self.options
        claimed = await asyncio.to_thread(
            self.runtime.triggers.claim_due, self.worker, self.clock(), o.claim_limit, o.lease
        )
        tally = Tally(claimed=len(claimed))
        if not claimed:
            return tally
        groups: dict[tuple[str, str], list[Trigger]] = defaultdict(list)
        for t in claimed:
            groups[(t.tenant, t.intent_id)].append(t)
        jobs = []
        for (tenant, intent_id), items in groups.items():
            intent = self.runtime.intents.find(tenant, intent_id)
            if intent is None:
                tally.add(await self._refuse(items, f"intent {intent_id!r} no longer exists"))
                continue
            dispatcher = self.dispatchers.get(intent.esp)
            if dispatcher is None:
                tally.add(await self._refuse(items, f"no dispatcher for ESP {intent.esp!r}"))
                continue
            try:
                credentials = self.runtime.accounts.credentials(tenant, intent.esp)
            except SendFlowrError as exc:  # not connected (now): try again later
                tally.add(await self._refuse(items, exc.message, retryable=True))
                continue
            size = max(1, dispatcher.max_batch(intent.binding))
            for start in range(0, len(items), size):
                jobs.append((dispatcher, intent, credentials, items[start : start + size]))
        gate = asyncio.Semaphore(o.concurrency)

        async def run(job: tuple[Dispatcher, Intent, Mapping[str, Any], list[Trigger]]) -> Tally:
            async with gate:
                return await self._fire(*job)

        for part in await asyncio.gather(*(run(j) for j in jobs)):
            tally.add(part)
        self.total.add(tally)
        return tally

    async def _refuse(
        self, items: Sequence[Trigger], reason: str, *, retryable: bool = False
    ) -> Tally:
        """Record triggers that cannot be sent now, without calling any ESP."""
        results = [SendResult(t.decision_id, False, reason, retryable=retryable) for t in items]
        return await self._record(items, results, via="")

    async def _fire(
        self,
        dispatcher: Dispatcher,
        intent: Intent,
        credentials: Mapping[str, Any],
        items: Sequence[Trigger],
    ) -> Tally:
        ids = [t.decision_id for t in items]
        try:
            results = await dispatcher.send(
                intent.tenant, intent.binding, credentials, [_send(t) for t in items]
            )
        except Exception as exc:  # a dispatcher bug must not lose the claim: retry later
            log.exception("dispatcher %s raised", dispatcher.esp)
            results = [SendResult(i, False, f"{type(exc).__name__}", retryable=True) for i in ids]
        if len(results) != len(items):
            lost = "the dispatcher gave no result"
            results = [SendResult(i, False, lost, retryable=True) for i in ids]
        return await self._record(items, results, via=dispatcher.esp)

    async def _record(
        self, items: Sequence[Trigger], results: Sequence[SendResult], via: str
    ) -> Tally:
        o = self.options
        now = self.clock()
        by_id = {t.decision_id: t for t in items}
        sent = [r.decision_id for r in results if r.ok]
        failed: dict[str, list[str]] = defaultdict(list)
        retry: dict[tuple[str, datetime], list[str]] = defaultdict(list)
        for r in results:
            if r.ok:
                continue
            t = by_id[r.decision_id]
            reason = r.error or "failed"
            if r.retryable and t.attempts < o.max_attempts:
                backoff = min(o.max_backoff_seconds, o.base_backoff_seconds * 2 ** (t.attempts - 1))
                wait = max(backoff, r.retry_after or 0.0)
                retry[(reason, now + timedelta(seconds=wait))].append(r.decision_id)
            else:
                suffix = f" (after {t.attempts} attempts)" if r.retryable else ""
                failed[reason + suffix].append(r.decision_id)
        store = self.runtime.triggers
        tally = Tally()
        if sent:
            tally.sent = await asyncio.to_thread(store.mark_sent, self.worker, sent, via, now)
            tally.by_esp[via] = tally.sent
        for (reason, not_before), ids in retry.items():
            tally.retried += await asyncio.to_thread(
                store.mark_retry, self.worker, ids, reason, not_before
            )
        for reason, ids in failed.items():
            tally.failed += await asyncio.to_thread(store.mark_failed, self.worker, ids, reason)
        if tally.failed or tally.retried:
            log.warning(
                "intent triggers: %d sent, %d to retry, %d failed", tally.sent, tally.retried,
                tally.failed,
            )  # fmt: skip
        return tally

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> Tally:
        """Until `stop` is set: fire what is due, then wait for the next poll (immediately
        again while a pass found a full claim)."""
        while not stop.is_set():
            try:
                tally = await self.run_once()
            except SendFlowrError as exc:  # a backend hiccup: try again on the next poll
                log.warning("executor pass failed: %s", exc.message)
                tally = Tally()
            if tally.claimed >= self.options.claim_limit:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.poll_seconds)
        return self.total

    async def aclose(self) -> None:
        for d in self.dispatchers.values():
            await d.aclose()
