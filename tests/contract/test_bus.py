"""The bus contract, run over every backend: inline (the pipeline runs in the caller) and
Kafka (the Tansu broker; `EventConsumer` runs the pipeline, as `sendflowr consumer` does).

`drain(n)` is where the backends differ: nothing to do inline; with Kafka, consume until n
messages went through the consumer (stored and committed, or dead-lettered).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import pytest

from sendflowr.bus.inline import InlineBus
from sendflowr.bus.kafka import KafkaBus
from sendflowr.consumer import EventConsumer
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.factories import make_event, payload
from tests.kafka import kafka_overrides


@dataclass
class Backend:
    runtime: Runtime
    drain: Callable[[int], None]


@pytest.fixture(
    params=["inline", pytest.param("kafka", marks=pytest.mark.kafka)],
)
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        settings = settings.model_copy(update=kafka_overrides(bootstrap))
    rt = Runtime.open(settings)
    rt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    consumers: list[EventConsumer] = []

    def drain(messages: int) -> None:
        if isinstance(rt.bus, InlineBus):
            return
        from sendflowr.consumer import open_consumer

        if not consumers:
            consumers.append(open_consumer(rt.pipeline, rt.bus))
        consumer = consumers[0]
        for _ in range(600):
            if consumer.tally.messages >= messages:
                return
            consumer.run_batch()
        raise AssertionError(f"consumed {consumer.tally.messages} of {messages} messages")

    try:
        yield Backend(rt, drain)
    finally:
        for c in consumers:
            c.close()
        rt.events.drop_database()  # type: ignore[attr-defined]
        rt.close()


def test_published_events_are_stored_once(backend: Backend) -> None:
    rt = backend.runtime
    events = [make_event(i, person=i % 5) for i in range(200)]
    result = rt.bus.publish(events, source="contract")
    assert (result.received, result.rejected) == (200, [])
    # The same events again (a client retry): still stored once.
    rt.bus.publish(events[:50], source="contract")
    backend.drain(250)
    assert rt.events.count_events("acme") == 200
    assert sum(rt.events.count_by_type("acme").values()) == 200


def test_bad_payloads_are_dead_lettered_and_the_rest_stored(backend: Backend) -> None:
    rt = backend.runtime
    payloads = [payload(i) for i in range(20)]
    payloads[3] = payload(3, event_type="teleported")
    payloads[11] = {"tenant": "acme", "nonsense": True}
    result = rt.bus.publish_payloads(payloads, source="contract")
    assert result.received == 20
    backend.drain(20)
    assert rt.events.count_events("acme") == 18
    letters = rt.metadata.list_dead_letters()
    assert sorted(letter.source for letter in letters) == ["contract", "contract"]
    reasons = " | ".join(letter.reason for letter in letters)
    assert "event_type" in reasons
    assert "nonsense" in reasons


def test_publish_keeps_each_persons_events(backend: Backend) -> None:
    rt = backend.runtime
    tenant_events = [make_event(i, person=1) for i in range(30)]
    rt.bus.publish(tenant_events, source="contract")
    backend.drain(30)
    stored = rt.events.profile_events(
        "acme", rt.identity.resolve_events("acme", tenant_events[:1]).universal_ids[0]
    )
    assert len(stored) == 30


def test_health_reports_ok(backend: Backend) -> None:
    health = backend.runtime.bus.health()
    assert (health.port, health.state) == ("bus", "ok")
    assert health.backend == backend.runtime.settings.bus.kind


def _published_decisions(rt: Runtime, expect: int) -> list[tuple[str, dict[str, object]]]:
    """(tenant, decision) as downstream sees them: the inline bus's memory, or every
    message of the timing-decisions topic (read by assignment: no group join)."""
    if isinstance(rt.bus, InlineBus):
        return [(t, dict(d)) for t, d in rt.bus.decisions]
    from confluent_kafka import Consumer, TopicPartition

    assert isinstance(rt.bus, KafkaBus)
    reader = Consumer(
        {"bootstrap.servers": rt.bus.options.bootstrap, "group.id": f"r{uuid.uuid4().hex}"}
    )
    topic = rt.bus.topics.decisions
    reader.assign([TopicPartition(topic, p, 0) for p in range(rt.bus.options.partitions)])
    out: list[tuple[str, dict[str, object]]] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < expect and time.monotonic() < deadline:
            for m in reader.consume(100, 0.5):
                if m.error() is None:
                    tenant = dict(m.headers() or [])["tenant"]
                    assert isinstance(tenant, bytes)
                    value = orjson.loads(m.value() or b"{}")
                    assert m.key() == f"acme/{value['universal_id']}".encode()
                    out.append((tenant.decode(), value))
    finally:
        reader.close()
    return out


def test_published_decisions_reach_downstream(backend: Backend) -> None:
    rt = backend.runtime
    if isinstance(rt.bus, InlineBus):
        assert not rt.bus.publishes_decisions  # nobody to tell: callers skip the rows
        rt.bus.keep_decisions(10)
    assert rt.bus.publishes_decisions
    rows = [
        {"universal_id": f"sf_{i:016x}", "decision_id": str(uuid.uuid4()), "confidence": 0.5}
        for i in range(3)
    ]
    started = time.perf_counter()
    rt.bus.publish_decisions("acme", rows)
    assert time.perf_counter() - started < 1.0  # queued, not waited for
    got = _published_decisions(rt, 3)
    by_id = sorted(got, key=lambda td: str(td[1]["decision_id"]))
    assert by_id == sorted([("acme", r) for r in rows], key=lambda td: str(td[1]["decision_id"]))
