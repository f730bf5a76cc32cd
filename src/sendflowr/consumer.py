"""`sendflowr consumer`: the pipeline in a Kafka consumer group.

Each pass: poll a batch (up to `kafka_batch_size` messages, waiting at most
`kafka_batch_timeout_seconds`), decode and validate every message, write the good events
(identity -> event store -> features), put the bad ones on the dead-letter topic, and only then
commit the batch's offsets, synchronously. A crash at any point before the commit means the
batch is delivered again; the event store keeps each event once (deterministic event ids) and
features skip ids they have already counted, so redelivery never double-counts. `run` keeps two
batches under way: one written on a second thread while the next is polled, decoded and
resolved on the calling thread, which makes every call on the Kafka consumer and every commit,
in order, each after its own batch's write.

- A message that cannot be decoded or validated goes to the dead-letter topic with headers
  `reason`, `source-topic`, `source-partition`, `source-offset`, `source` (and to the metadata
  store's dead letters, as for every other ingest path); the consumer carries on.
- A failed store write is retried with exponential backoff for `kafka_store_retry_seconds`;
  then the consumer stops (`ConsumerStoppedError`, exit status 1) without committing, so the
  batch is processed by whoever next owns its partitions.
- Consumer lag per partition (high watermark - committed offset) is kept after every batch:
  `EventConsumer.lag()`, and for a metrics endpoint in the same process `consumer_lag()`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as TP
from tenacity import Retrying, retry_if_not_exception_type, stop_after_delay, wait_exponential

from sendflowr.bus.base import Bus
from sendflowr.bus.kafka import KafkaBus, KafkaOptions
from sendflowr.errors import NotFoundError
from sendflowr.events import EventValidationError
from sendflowr.gcpause import gc_paused
from sendflowr.pipeline import IngestResult, Pipeline, PreparedBatch
from sendflowr.storage.events.rows import events_to_arrow

log = logging.getLogger("sendflowr.consumer")

_T = TypeVar("_T")


class _TenantOnly(msgspec.Struct):
    tenant: str = ""


_tenant_decoder = msgspec.json.Decoder(_TenantOnly)
_LIVE: weakref.WeakSet[EventConsumer] = weakref.WeakSet()


@dataclass(slots=True)
class _Prepared:
    messages: list[Message]  # the whole batch, committed once it is written
    batches: list[PreparedBatch]  # one per source
    dead: list[tuple[Message, str]]  # for the dead-letter topic, with the reason


class ConsumerStoppedError(RuntimeError):
    """The consumer gave up on a batch (store or dead-letter topic unavailable too long); its
    offsets were not committed."""


@dataclass(slots=True)
class ConsumerTally:
    batches: int = 0
    messages: int = 0
    stored: int = 0
    dead_lettered: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)


def consumer_lag() -> dict[tuple[str, int], int]:
    """Lag per (topic, partition) of every consumer running in this process, as of its last
    batch: what a Prometheus gauge (e.g. sendflowr_consumer_lag{topic,partition}) reads."""
    out: dict[tuple[str, int], int] = {}
    for consumer in list(_LIVE):
        out.update(consumer.lag())
    return out


class EventConsumer:
    """Runs `pipeline` over the bus's events topic in consumer group `options.group`."""

    def __init__(
        self,
        pipeline: Pipeline,
        bus: KafkaBus,
        options: KafkaOptions | None = None,
        *,
        on_batch: Callable[[ConsumerTally], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.bus = bus
        self.options = options or bus.options
        self.topic = self.options.topics.events
        self.on_batch = on_batch
        self.tally = ConsumerTally()
        self._lag: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._assigned: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._pending: tuple[_Prepared, Future[list[IngestResult]]] | None = None
        self._failed: BaseException | None = None
        retry_ms = int(self.options.store_retry_s * 1000)
        tuning = {  # defaults: settings' kafka_client_config overrides each of them
            "fetch.max.bytes": 64 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            # A partition whose local queue was full is fetched again this soon, not after
            # librdkafka's default second: with the default, a consumer that drains its queue
            # quickly sat idle for half-second gaps (poll alone: 110,000 messages/s on Tansu,
            # 360,000 with this).
            "fetch.queue.backoff.ms": 20,
        }
        self._consumer = Consumer(
            {
                **tuning,
                **self.options.client(
                    **{
                        "group.id": self.options.group,
                        "enable.auto.commit": False,
                        "enable.auto.offset.store": False,
                        "auto.offset.reset": "earliest",
                        "session.timeout.ms": self.options.session_timeout_ms,
                        "heartbeat.interval.ms": max(self.options.session_timeout_ms // 10, 100),
                        # A batch retried for store_retry_s must not cost the group membership.
                        "max.poll.interval.ms": max(300_000, retry_ms + 60_000),
                    }
                ),  # which holds kafka_client_config, so that overrides `tuning`
            }
        )
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        _LIVE.add(self)
        # pyarrow imports its pandas shim on the first table built (about half a second):
        # at start-up, not in the first batch.
        events_to_arrow([], [])

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, idle_exit_s: float | None = None) -> ConsumerTally:
        """Process batches until `stop` is set (then finish the current batch and leave the
        group), or, with `idle_exit_s`, once no message arrived for that long after the first
        assignment. Raises ConsumerStoppedError when a batch cannot be written.

        Two batches are under way at a time: while one is written (the event store's insert,
        which runs without the GIL, then the feature fold) on a second thread, the next is
        polled, decoded and resolved on this one. Offsets are still committed in order, each
        batch's after its write; a partition revoked meanwhile first waits for the write of
        the batch in flight and its commit."""
        idle_since = time.monotonic()
        pool = ThreadPoolExecutor(1, thread_name_prefix="sendflowr-store")
        try:
            while not stop.is_set():
                if self._failed is not None:  # a write failed during a rebalance
                    raise self._failed
                with gc_paused():
                    messages = self._poll()
                    prepared = self._prepare(messages) if messages else None
                self._settle()
                if prepared is not None:
                    self._pending = (prepared, pool.submit(self._write, prepared))
                else:
                    self._update_lag()  # idle: the lag of partitions assigned meanwhile
                if messages or not self._assigned:
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
            self._settle()
        finally:
            try:
                if self._failed is None:
                    self._settle()  # a batch already written is committed, even on the way out
            except Exception as exc:  # the error that brought us here is the one raised
                log.warning("the batch in flight was not committed: %s", exc)
            finally:
                pool.shutdown(wait=True)
                self.close()
        return self.tally

    def run_batch(self) -> int:
        """Poll one batch, process it, commit it; returns the number of messages."""
        self._settle()
        # The collector paused for the whole batch, consume() included: its ten thousand
        # Message objects (and their header lists) otherwise trigger collections that walk
        # every live object (the identity graph, the feature cache) again and again.
        with gc_paused():
            messages = self._poll()
            if messages:
                prepared = self._prepare(messages)
                self._finish(prepared, self._write(prepared))
            else:
                self._update_lag()
        return len(messages)

    def _poll(self) -> list[Message]:
        messages = self._consumer.consume(self.options.batch_size, self.options.batch_timeout_s)
        good: list[Message] = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise KafkaException(err)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err.str())
        if good:
            log.info("batch of %d messages: processing", len(good))
        return good

    def _settle(self) -> None:
        """Wait for the batch being written, then dead-letter its bad messages and commit it.
        Raises the write's error (ConsumerStoppedError) without committing."""
        if self._pending is None:
            return
        prepared, future = self._pending
        self._pending = None
        self._finish(prepared, future.result())

    def _finish(self, prepared: _Prepared, results: list[IngestResult]) -> None:
        self.tally.stored += sum(r.stored for r in results)
        if prepared.dead:
            self._dead_letter(prepared.dead)
        self._commit(prepared.messages)
        self.tally.batches += 1
        self.tally.messages += len(prepared.messages)
        log.info("batch of %d messages: committed", len(prepared.messages))
        self._update_lag()
        if self.on_batch is not None:
            self.on_batch(self.tally)

    def _prepare(self, messages: list[Message]) -> _Prepared:
        """Decode, validate and resolve a batch, one group per source header; the bad
        messages (invalid, or of a tenant that does not exist) are set aside for the
        dead-letter topic."""
        by_source = _by_source(messages)
        batches: list[PreparedBatch] = []
        dead: list[tuple[Message, str]] = []
        for source, group in by_source.items():
            values = [m.value() or b"" for m in group]
            try:
                prepared = self._with_retry(
                    "prepare", functools.partial(self.pipeline.prepare_json, source, values)
                )
            except NotFoundError:
                # A tenant that does not exist (deleted since, or produced by something else
                # than the API): its events are dead letters, the rest is written.
                group, unknown = self._known_tenants(group)
                dead.extend(unknown)
                values = [m.value() or b"" for m in group]
                prepared = self._with_retry(
                    "prepare", functools.partial(self.pipeline.prepare_json, source, values)
                )
            batches.append(prepared)
            dead.extend(
                (group[r.index], str(EventValidationError(r.errors)))
                for r in prepared.result.rejected
            )
        return _Prepared(messages, batches, dead)

    def _write(self, prepared: _Prepared) -> list[IngestResult]:
        """Store a prepared batch (retried for store_retry_s, then ConsumerStoppedError)."""
        return [
            self._with_retry("store write", functools.partial(self.pipeline.store, batch))
            for batch in prepared.batches
        ]

    def _known_tenants(
        self, group: list[Message]
    ) -> tuple[list[Message], list[tuple[Message, str]]]:
        """Split off events of a tenant that does not exist: dead letters, not a store fault."""
        tenants: dict[str, bool] = {}
        keep: list[Message] = []
        unknown: list[tuple[Message, str]] = []
        for m in group:
            try:
                tenant = _tenant_decoder.decode(m.value() or b"").tenant
            except (msgspec.DecodeError, msgspec.ValidationError):
                keep.append(m)  # the pipeline's validation names what is wrong
                continue
            if tenant not in tenants:
                tenants[tenant] = (
                    self._with_retry(
                        "tenant lookup",
                        functools.partial(self.pipeline.metadata.find_tenant, tenant),
                    )
                    is not None
                )
            if tenants[tenant] or not tenant:
                keep.append(m)
            else:
                unknown.append((m, f"tenant: no tenant {tenant!r}"))
        return keep, unknown

    def _dead_letter(self, rejected: list[tuple[Message, str]]) -> None:
        items = []
        for m, reason in rejected:
            headers: list[tuple[str, str | bytes | None]] = [
                ("reason", reason.encode()),
                ("source-topic", str(m.topic()).encode()),
                ("source-partition", str(m.partition()).encode()),
                ("source-offset", str(m.offset()).encode()),
                ("source", (_header(m, "source") or "").encode()),
            ]
            items.append((m.key(), m.value() or b"", headers))
            log.warning("dead-lettered %s[%s]@%s: %s", m.topic(), m.partition(), m.offset(), reason)
        self._with_retry("dead-letter write", lambda: self.bus.dead_letter(items))
        self.tally.dead_lettered += len(items)

    def _with_retry(self, what: str, fn: Callable[[], _T]) -> _T:
        """Retry `fn` with exponential backoff for store_retry_s, then stop the consumer."""

        def note(state: object) -> None:
            self.tally.retries += 1
            outcome = getattr(state, "outcome", None)
            exc = outcome.exception() if outcome is not None else None
            log.warning("%s failed (%s); retrying", what, exc)

        try:
            for attempt in Retrying(
                retry=retry_if_not_exception_type(NotFoundError),
                stop=stop_after_delay(self.options.store_retry_s),
                wait=wait_exponential(multiplier=0.2, max=5),
                before_sleep=note,
                reraise=True,
            ):
                with attempt:
                    return fn()
        except NotFoundError:
            raise
        except Exception as exc:
            raise ConsumerStoppedError(
                f"{what} failed for {self.options.store_retry_s:g} s, stopping without "
                f"committing: {exc}"
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _commit(self, messages: list[Message]) -> None:
        # A partition's messages arrive in offset order: its last one in the batch is its
        # highest (kept in a dict comprehension: one pass, no per-message max()).
        last: dict[tuple[str, int], int] = {
            (m.topic() or "", m.partition() or 0): m.offset() or 0 for m in messages
        }
        offsets = [TP(t, p, o + 1) for (t, p), o in last.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Partitions taken away meanwhile: their new owner processes these messages again
            # (stored once); nothing is lost.
            log.warning("commit failed (%s); the batch will be redelivered", exc)
            return
        with self._lock:
            for (t, p), o in last.items():
                self._committed[(t, p)] = o + 1

    # -- lag -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TP]) -> None:
        log.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        with self._lock:
            self._assigned = [(p.topic, p.partition) for p in partitions]
            for p in partitions:
                self._committed.pop((p.topic, p.partition), None)

    def _on_revoke(self, consumer: Consumer, partitions: list[TP]) -> None:
        log.info("revoked %s", [(p.topic, p.partition) for p in partitions])
        # The batch being written is committed before its partitions go to another member,
        # which would otherwise process it again.
        try:
            self._settle()
        except Exception as exc:  # raised by run(): nothing of that batch is committed
            self._failed = exc
        with self._lock:
            gone = {(p.topic, p.partition) for p in partitions}
            self._assigned = [tp for tp in self._assigned if tp not in gone]
            for tp in gone:
                self._lag.pop(tp, None)

    def _update_lag(self) -> None:
        with self._lock:
            assigned = list(self._assigned)
            unknown = [tp for tp in assigned if tp not in self._committed]
        if unknown:
            try:
                for tp in self._consumer.committed([TP(t, p) for t, p in unknown], timeout=5):
                    # Nothing committed yet (OFFSET_INVALID): counted from the low watermark.
                    self._committed[(tp.topic, tp.partition)] = (
                        tp.offset if tp.offset != OFFSET_INVALID else -1
                    )
            except KafkaException as exc:
                log.debug("committed offsets unavailable: %s", exc)
        lag: dict[tuple[str, int], int] = {}
        for t, p in assigned:
            # The high watermark from the latest fetch response: no broker round trip. A
            # partition no fetch has answered for yet (an idle one, just after assignment) asks
            # the broker once, so every assigned partition has its lag.
            low, high = self._consumer.get_watermark_offsets(TP(t, p), cached=True)
            if high < 0:
                try:
                    asked = self._consumer.get_watermark_offsets(TP(t, p), timeout=5)
                except KafkaException as exc:
                    log.debug("watermarks of %s[%d] unavailable: %s", t, p, exc)
                    continue
                if asked is None:  # timed out
                    continue
                low, high = asked
            committed = self._committed.get((t, p), -1)
            if committed < 0:
                committed = max(low, 0)
            lag[(t, p)] = max(high - committed, 0)
        with self._lock:
            self._lag = lag

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages not yet committed per assigned (topic, partition), as of the last batch."""
        with self._lock:
            return dict(self._lag)

    def total_lag(self) -> int:
        return sum(self.lag().values())

    def close(self) -> None:
        if self in _LIVE:
            _LIVE.discard(self)
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the consumer: %s", exc)


def _by_source(messages: list[Message]) -> dict[str, list[Message]]:
    """The batch grouped by each message's `source` header. The usual batch is of one
    source, which the bus puts first in every message's headers: then a single comparison
    over the first headers (in C) instead of a look at each message."""
    firsts: list[Any]
    try:
        firsts = [h[0] for h in map(Message.headers, messages)]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):  # a message without headers
        firsts = []
    if firsts and firsts.count(firsts[0]) == len(firsts):
        first = firsts[0]
        if isinstance(first, tuple) and first[0] == "source" and isinstance(first[1], bytes):
            return {first[1].decode("utf-8", "replace"): messages}
    groups: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        groups[_source(m)].append(m)
    return groups


def _source(m: Message) -> str:
    headers = m.headers()
    if isinstance(headers, list) and headers and headers[0][0] == "source":
        value = headers[0][1]  # where the bus puts it: no scan
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return _header(m, "source") or f"kafka:{m.topic()}"


def _header(m: Message, name: str) -> str | None:
    headers = m.headers() or ()
    pairs = headers.items() if isinstance(headers, dict) else headers
    for key, value in pairs:
        if key == name and value is not None:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def open_consumer(pipeline: Pipeline, bus: Bus) -> EventConsumer:
    """The consumer for a runtime's pipeline and bus (which must be the Kafka bus)."""
    if not isinstance(bus, KafkaBus):
        raise RuntimeError(
            "SENDFLOWR_BUS_URL is not kafka://: with the inline bus the API stores events "
            "itself and there is nothing to consume"
        )
    return EventConsumer(pipeline, bus)
