"""Hot paths: a signal (say, a site visit) from a person with a send scheduled promotes the send
to as soon as possible in its window.

The pipeline calls the watcher after each tenant's events are stored. It looks only at event
types some intent of the tenant watches (a cached map, refreshed every few seconds), and only at
events recent enough to count; for each such person with a scheduled trigger of an intent that
watches that signal, the person is re-decided as soon as possible (moves.redecide), and the new
explanation names the hot path.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import pyarrow as pa
import pyarrow.compute as pc

from sendflowr.storage.metadata.triggers import Schedule
from sendflowr.timing.policy import match_hot_path
from sendflowr.timing.window import Window

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime

log = logging.getLogger("sendflowr.hotpath")
REFRESH_SECONDS: Final = 5.0


class HotPathWatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._watched: dict[str, dict[str, int]] = {}
        self._loaded = 0.0
        self._lock = threading.Lock()
        self.promoted = 0

    def invalidate(self) -> None:
        with self._lock:
            self._loaded = 0.0

    def _watch(self, tenant: str) -> dict[str, int]:
        with self._lock:
            if time.monotonic() - self._loaded > REFRESH_SECONDS:
                self._watched = self.runtime.intents.hot_path_types()
                self._loaded = time.monotonic()
            return self._watched.get(tenant, {})

    def __call__(self, tenant: str, table: pa.Table) -> None:
        kinds = self._watch(tenant)
        if not kinds or not table.num_rows:
            return
        now = datetime.now(UTC)
        longest = max(kinds.values())
        since = pa.scalar(int((now.timestamp() - longest) * 1000), pa.timestamp("ms", tz="UTC"))
        mask = pc.and_(
            pc.is_in(table.column("event_type"), pa.array(sorted(kinds))),
            pc.greater_equal(table.column("occurred_at").cast(since.type), since),
        )
        hits = table.filter(mask)
        if not hits.num_rows:
            return
        latest: dict[tuple[str, str], datetime] = {}
        for uid, kind, at in zip(
            hits.column("universal_id").to_pylist(),
            hits.column("event_type").to_pylist(),
            hits.column("occurred_at").to_pylist(),
            strict=True,
        ):
            key = (uid, kind)
            if key not in latest or at > latest[key]:
                latest[key] = at
        self._promote(tenant, latest, now)

    def _promote(self, tenant: str, latest: dict[tuple[str, str], datetime], now: datetime) -> None:
        from sendflowr.scheduling.moves import redecide

        uids = sorted({u for u, _ in latest})
        # one read per intent and per campaign, however many of their people signalled
        intents = {i.intent_id: i for i in self.runtime.intents.all(tenant)}
        schedules: dict[str, Schedule] = {}
        by_person: dict[str, dict[str, int]] = {}
        for (uid, kind), at in latest.items():
            by_person.setdefault(uid, {})[kind] = int(at.timestamp())
        now_s = int(now.timestamp())
        for trigger in self.runtime.triggers.open_for(tenant, uids):
            intent = intents.get(trigger.intent_id)
            if intent is None:
                continue
            hit = match_hot_path(
                [(s.event_type, s.within_seconds) for s in intent.hot_path_signals],
                by_person.get(trigger.universal_id, {}),
                now_s,
            )
            if hit is None:
                continue
            schedule = schedules.get(trigger.schedule_id)
            if schedule is None:
                schedule = schedules[trigger.schedule_id] = self.runtime.triggers.get_schedule(
                    trigger.schedule_id
                )
            earliest = max(
                schedule.window_start,
                now.replace(second=0, microsecond=0)
                + timedelta(minutes=1 + schedule.latency_seconds // 60),
            )
            if trigger.target_at <= earliest or earliest >= schedule.window_end:
                continue  # due sooner already, or the window is over
            new = redecide(
                self.runtime,
                trigger,
                Window(earliest, schedule.window_end),
                policy="hot_path",
                asap=True,
                facts={
                    "signal": hit.signal,
                    "signal_at": datetime.fromtimestamp(hit.at, UTC).isoformat(),
                    "within_seconds": hit.within_seconds,
                    "was_target_utc": trigger.target_at.isoformat(),
                },
            )
            if new is not None:
                self.promoted += 1
                log.info(
                    "hot path %s promoted %s from %s to %s", hit.signal,
                    trigger.decision_id, trigger.target_at, new.target_at,
                )  # fmt: skip
