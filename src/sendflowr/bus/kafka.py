"""Kafka bus (confluent-kafka): the API produces, `sendflowr consumer` runs the pipeline.

Producer: idempotent (`enable.idempotence`, `acks=all`). `publish` returns only once the broker
has acknowledged every message of the call; if it has not within
`kafka_publish_timeout_seconds` (or refused one), `BusUnavailableError` is raised, which the API
answers with 503 and Retry-After. Part of such a batch may have been written: a retry is safe,
since event ids are deterministic and the store keeps each event once.

Message key: the most stable identifier of the person (`partition_key`), so one person's events
land on one partition and are consumed in order. Value: the canonical event as JSON (msgspec).
Header `source`: where the event came from (api, klaviyo-webhook, ...).

Topics (`KafkaTopics`, names prefixed by `kafka_topic_prefix`): email-events,
timing-decisions and email-events-dlq, created at start-up when missing, with
`kafka_partitions` partitions and `kafka_replication_factor` replicas.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from sendflowr.bus.base import Bus
from sendflowr.errors import UnavailableError
from sendflowr.events import CanonicalEvent
from sendflowr.pipeline import IngestResult
from sendflowr.storage.health import BackendHealth

log = logging.getLogger("sendflowr.bus.kafka")

_encoder: Final = msgspec.json.Encoder()

# (key, value, headers) of one message to produce.
Outgoing = tuple[bytes | None, bytes, list[tuple[str, str | bytes | None]]]


class BusUnavailableError(UnavailableError):
    """The broker did not acknowledge in time (or refused): nothing is reported accepted."""

    def __init__(self, message: str) -> None:
        super().__init__(f"the event bus is unavailable: {message}")


@dataclass(frozen=True, slots=True)
class KafkaTopics:
    events: str
    decisions: str
    dead_letters: str

    @classmethod
    def with_prefix(cls, prefix: str = "") -> KafkaTopics:
        return cls(
            f"{prefix}email-events", f"{prefix}timing-decisions", f"{prefix}email-events-dlq"
        )

    def all(self) -> tuple[str, str, str]:
        return (self.events, self.decisions, self.dead_letters)


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """What the bus and the consumer need from settings (see Settings.kafka_*)."""

    bootstrap: str
    topics: KafkaTopics = field(default_factory=KafkaTopics.with_prefix)
    partitions: int = 12
    replication_factor: int = 1
    publish_timeout_s: float = 10.0
    group: str = "sendflowr-consumer"
    batch_size: int = 20_000
    batch_timeout_s: float = 0.5
    session_timeout_ms: int = 10_000
    store_retry_s: float = 60.0
    client_config: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> KafkaOptions:
        """From a `Settings` whose bus_url is kafka:// (typed Any: settings imports nothing
        from here, and this module must not import the runtime)."""
        return cls(
            bootstrap=settings.bus.bootstrap,
            topics=KafkaTopics.with_prefix(settings.kafka_topic_prefix),
            partitions=settings.kafka_partitions,
            replication_factor=settings.kafka_replication_factor,
            publish_timeout_s=settings.kafka_publish_timeout_seconds,
            group=settings.kafka_consumer_group,
            batch_size=settings.kafka_batch_size,
            batch_timeout_s=settings.kafka_batch_timeout_seconds,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            store_retry_s=settings.kafka_store_retry_seconds,
            client_config=dict(settings.kafka_client_config),
        )

    def client(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **self.client_config, **extra}


def partition_key(tenant: str, identifiers: Mapping[str, Any]) -> bytes | None:
    """The most stable identifier of the person: the ESP's profile id (it survives an email
    change), else the email hash, else the phone, else the first external id (by name), else
    the anonymous id. Prefixed with the tenant and kind, so equal values in two tenants or of
    two kinds are different keys. None when there is no identifier (an invalid payload)."""
    for kind in ("esp_profile_id", "email_hash", "phone"):
        value = identifiers.get(kind)
        if isinstance(value, str) and value:
            return f"{tenant}/{kind}:{value}".encode()
    external = identifiers.get("external_ids")
    if isinstance(external, Mapping) and external:
        name = min(str(k) for k in external)
        return f"{tenant}/external:{name}:{external[name]}".encode()
    anonymous = identifiers.get("anonymous_id")
    if isinstance(anonymous, str) and anonymous:
        return f"{tenant}/anonymous:{anonymous}".encode()
    return None


def event_key(event: CanonicalEvent) -> bytes | None:
    ids = event.identifiers
    return partition_key(
        event.tenant,
        {
            "esp_profile_id": ids.esp_profile_id,
            "email_hash": ids.email_hash,
            "phone": ids.phone,
            "external_ids": ids.external_ids,
            "anonymous_id": ids.anonymous_id,
        },
    )


def ensure_topics(options: KafkaOptions, timeout_s: float = 15.0) -> list[str]:
    """Create the bus's topics that do not exist yet; returns the names created."""
    admin = AdminClient(options.client())
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise BusUnavailableError(f"{options.bootstrap}: {_reason(exc)}") from None
    missing = [t for t in options.topics.all() if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, options.partitions, options.replication_factor) for t in missing],
        request_timeout=timeout_s,
    )
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            created.append(topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # a concurrent start-up
                raise BusUnavailableError(f"creating topic {topic!r}: {_reason(exc)}") from None
    if created:
        log.info("created topics %s (%d partitions)", created, options.partitions)
    return created


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return str(exc) or type(exc).__name__


class _Pending:
    """Delivery reports for one publish call."""

    __slots__ = ("done", "errors", "left", "lock")

    def __init__(self, count: int) -> None:
        self.lock = threading.Lock()
        self.left = count
        self.errors: list[str] = []
        self.done = threading.Event()
        if count == 0:
            self.done.set()

    def report(self, err: KafkaError | None, _msg: Message) -> None:
        with self.lock:
            if err is not None:
                self.errors.append(str(err.str()))
            self.left -= 1
            if self.left == 0:
                self.done.set()


class KafkaBus(Bus):
    backend = "kafka"

    def __init__(self, options: KafkaOptions, *, create_topics: bool = True) -> None:
        self.options = options
        self.topics = options.topics
        if create_topics:
            try:
                ensure_topics(options, timeout_s=max(options.publish_timeout_s, 5.0))
            except BusUnavailableError as exc:  # at start-up: one line naming the setting
                raise RuntimeError(f"SENDFLOWR_BUS_URL: {exc.message}") from None
        timeout_ms = int(options.publish_timeout_s * 1000)
        self._producer = Producer(
            options.client(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                    "compression.type": "lz4",
                    "message.timeout.ms": timeout_ms,
                    "queue.buffering.max.messages": 1_000_000,
                }
            )
        )
        self._admin = AdminClient(options.client())
        self.decisions_failed = 0  # timing decisions refused or not acknowledged in time
        # Delivery callbacks run in whichever thread polls: one background thread does.
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-bus-poll", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    # -- producing -----------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        items: Sequence[Outgoing],
    ) -> None:
        """Produce (key, value, headers) and wait for every acknowledgement; raises
        BusUnavailableError if one is refused or the timeout passes."""
        pending = _Pending(len(items))
        deadline = time.monotonic() + self.options.publish_timeout_s
        for key, value, headers in items:
            while True:
                try:
                    self._producer.produce(
                        topic, value, key, headers=headers, on_delivery=pending.report
                    )
                    break
                except BufferError:  # the local queue is full: wait for room
                    if time.monotonic() > deadline:
                        raise BusUnavailableError("the producer queue stayed full") from None
                    self._producer.poll(0.01)
                except KafkaException as exc:
                    raise BusUnavailableError(_reason(exc)) from None
        if not pending.done.wait(max(deadline - time.monotonic(), 0.0) + 1.0):
            raise BusUnavailableError(
                f"{pending.left} of {len(items)} messages not acknowledged by "
                f"{self.options.bootstrap} within {self.options.publish_timeout_s:g} s"
            )
        if pending.errors:
            raise BusUnavailableError(
                f"{len(pending.errors)} of {len(items)} messages refused: {pending.errors[0]}"
            )

    def publish(self, events: Sequence[CanonicalEvent], source: str) -> IngestResult:
        headers: list[tuple[str, str | bytes | None]] = [("source", source.encode())]
        self.produce(
            self.topics.events, [(event_key(e), _encoder.encode(e), headers) for e in events]
        )
        # Acknowledged by the broker is durable; the consumer stores them moments later.
        return IngestResult(received=len(events), stored=len(events))

    def publish_payloads(self, payloads: Sequence[Mapping[str, Any]], source: str) -> IngestResult:
        """Put payloads on the topic as they are; the consumer validates them, and a bad one
        goes to the dead-letter topic."""
        headers: list[tuple[str, str | bytes | None]] = [("source", source.encode())]
        items = []
        for p in payloads:
            ids = p.get("identifiers")
            tenant = p.get("tenant")
            key = (
                partition_key(tenant, ids)
                if isinstance(ids, Mapping) and isinstance(tenant, str)
                else None
            )
            items.append((key, orjson.dumps(p, default=str), headers))
        self.produce(self.topics.events, items)
        return IngestResult(received=len(payloads), stored=len(payloads))

    @property
    def publishes_decisions(self) -> bool:
        return True

    def publish_decisions(self, tenant: str, decisions: Sequence[Mapping[str, Any]]) -> None:
        """Timing decisions for downstream consumers (analytics, audit), keyed by tenant and
        person (one person's decisions stay in order). Asynchronous: produce() only queues
        the message in librdkafka and returns (microseconds); the acknowledgement arrives in
        the poll thread, and a refused or timed-out delivery is logged and counted in
        `decisions_failed`, never raised. The decision itself is already durable in the
        explanation store, so no request waits for the broker. Header `tenant`."""
        headers: list[tuple[str, str | bytes | None]] = [("tenant", tenant.encode())]
        for d in decisions:
            person = d.get("universal_id") or d.get("person") or ""
            value = orjson.dumps(d, default=str)
            key = f"{tenant}/{person}".encode()
            try:
                try:
                    self._producer.produce(
                        self.topics.decisions, value, key, headers=headers,
                        on_delivery=self._decision_delivered,
                    )  # fmt: skip
                except BufferError:  # the local queue is full: one short wait, then give up
                    self._producer.poll(0.05)
                    self._producer.produce(
                        self.topics.decisions, value, key, headers=headers,
                        on_delivery=self._decision_delivered,
                    )  # fmt: skip
            except (BufferError, KafkaException) as exc:
                self.decisions_failed += 1
                log.warning("timing decision not published: %s", _reason(exc))

    def _decision_delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.decisions_failed += 1
            log.warning("timing decision not delivered: %s", err.str())

    def dead_letter(self, items: Sequence[Outgoing]) -> None:
        """Put rejected messages on the dead-letter topic (waits for acknowledgement)."""
        self.produce(self.topics.dead_letters, items)

    # -- state ---------------------------------------------------------------------------

    def health(self) -> BackendHealth:
        try:
            meta = self._admin.list_topics(timeout=3)
        except KafkaException as exc:
            return BackendHealth("bus", self.backend, "down", _reason(exc))
        missing = [t for t in self.topics.all() if t not in meta.topics]
        info: dict[str, str | int | float] = {
            "brokers": len(meta.brokers),
            "partitions": len(meta.topics[self.topics.events].partitions)
            if self.topics.events in meta.topics
            else 0,
        }
        if missing:
            return BackendHealth("bus", self.backend, "degraded", f"missing topics {missing}", info)
        return BackendHealth("bus", self.backend, "ok", self.options.bootstrap, info)

    def close(self) -> None:
        if self._closed.is_set():
            return
        left = self._producer.flush(self.options.publish_timeout_s)
        if left:
            log.warning("closing with %d messages not acknowledged", left)
        self._closed.set()
        self._poller.join(timeout=5)
