"""The Kafka bus and `sendflowr consumer` against a real broker (Tansu), chDB and SQLite:
end to end (events API -> Kafka -> consumer -> chDB -> decision), a poison message, a store
write that keeps failing, and a consumer process killed with SIGKILL mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from sendflowr.bus.kafka import KafkaBus, KafkaOptions, KafkaTopics, event_key
from sendflowr.consumer import ConsumerStoppedError, EventConsumer, consumer_lag, open_consumer
from sendflowr.events import CanonicalEvent, EventType, Identifiers, to_builtins
from sendflowr.identity.hashing import hash_email
from sendflowr.pipeline import IngestResult, Pipeline, PreparedBatch
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.storage.metadata.store import Tenant
from tests.conftest import ADMIN_HEADERS, HASH_KEY
from tests.factories import make_event
from tests.kafka import KAFKA_SESSION_TIMEOUT_MS, kafka_overrides

pytestmark = pytest.mark.kafka
WARSAW = ZoneInfo("Europe/Warsaw")


@pytest.fixture
def krt(kafka_settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.open(kafka_settings)
    try:
        yield rt
    finally:
        rt.events.drop_database()  # type: ignore[attr-defined]
        rt.close()


def _drain(consumer: EventConsumer, messages: int) -> None:
    for _ in range(600):
        if consumer.tally.messages >= messages:
            return
        consumer.run_batch()
    raise AssertionError(f"consumed {consumer.tally.messages} of {messages}")


def _annas_clicks() -> list[CanonicalEvent]:
    """Anna clicks at 09:10 Warsaw time every weekday of the last six weeks."""
    now = datetime.now(UTC)
    day = (now - timedelta(days=42)).astimezone(WARSAW).date()
    events = []
    while day < now.astimezone(WARSAW).date():
        if day.weekday() < 5:
            at = datetime(day.year, day.month, day.day, 9, 10, tzinfo=WARSAW)
            events.append(
                CanonicalEvent(
                    tenant="acme",
                    esp="klaviyo",
                    esp_event_id=f"anna-{day.isoformat()}",
                    event_type=EventType.CLICKED,
                    occurred_at=at,
                    identifiers=Identifiers(
                        email_hash=hash_email(HASH_KEY.encode(), "anna@acme.test")
                    ),
                )
            )
        day += timedelta(days=1)
    return events


def _klaviyo_clicks(events: list[CanonicalEvent]) -> bytes:
    """The same clicks as a Klaviyo webhook delivery (what Klaviyo POSTs)."""
    items = []
    for e in events:
        at = e.occurred_at
        items.append(
            {
                "external_id": e.esp_event_id,
                "topic": "event:klaviyo.clicked_email",
                "payload": {
                    "data": {
                        "type": "event",
                        "id": e.esp_event_id,
                        "attributes": {
                            "timestamp": int(at.timestamp()),
                            "datetime": at.isoformat(),
                            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, e.esp_event_id)),
                            "event_properties": {"$message": "msg1"},
                        },
                        "relationships": {
                            "profile": {"data": {"type": "profile", "id": "01ANNA"}},
                            "metric": {"data": {"type": "metric", "id": "M1"}},
                        },
                    },
                    "included": [
                        {
                            "type": "profile",
                            "id": "01ANNA",
                            "attributes": {"email": "anna@acme.test"},
                        },
                        {"type": "metric", "id": "M1", "attributes": {"name": "Clicked Email"}},
                    ],
                },
            }
        )
    return msgspec.json.encode({"data": items, "meta": {}})


def test_webhook_and_events_api_to_kafka_to_consumer_to_decision(
    kafka_settings: Settings,
) -> None:
    """The scale path end to end: a signed Klaviyo webhook and the events API into the API
    (bus kafka://: they only produce), `EventConsumer` in a thread (as `sendflowr consumer`
    runs it) into chDB, then a decision for that person from her history, published to the
    timing-decisions topic. One group join."""
    from pydantic import SecretStr

    from sendflowr.api import create_app
    from sendflowr.connectors.klaviyo.webhooks import sign
    from sendflowr.secrets import generate_key

    settings = kafka_settings.model_copy(update={"secret_key": SecretStr(generate_key())})
    krt = Runtime.open(settings)
    stop = threading.Event()
    consumer: EventConsumer | None = None
    thread: threading.Thread | None = None
    try:
        with TestClient(create_app(settings, runtime=krt), headers=ADMIN_HEADERS) as client:
            r = client.post(
                "/api/tenants", json={"id": "acme", "name": "Acme", "timezone": "Europe/Warsaw"}
            )
            assert r.status_code == 201, r.text
            krt.accounts.connect("acme", "klaviyo", "api_key", {"api_key": "pk_test"})
            krt.accounts.set_webhook_secret("acme", "klaviyo", "whsec_e2e_0123456789abcdef")

            clicks = _annas_clicks()
            half = len(clicks) // 2
            raw = _klaviyo_clicks(clicks[:half])
            ts = str(int(time.time()))
            r = client.post(
                "/api/webhook/klaviyo/acme",
                content=raw,
                headers={
                    "Klaviyo-Timestamp": ts,
                    "Klaviyo-Signature": sign("whsec_e2e_0123456789abcdef", raw, ts),
                    "Klaviyo-Webhook-Id": "wh-e2e",
                    "Content-Type": "application/json",
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] == half
            rest = [to_builtins(e) for e in clicks[half:]]
            r = client.post("/api/events", json={"events": rest})
            assert r.status_code == 200, r.text
            # The API only produced: nothing is stored until a consumer runs the pipeline.
            assert krt.events.count_events("acme") == 0

            day = datetime.now(UTC).astimezone(WARSAW).date() + timedelta(days=1)
            while day.weekday() >= 5:
                day += timedelta(days=1)
            start = datetime(day.year, day.month, day.day, 5, 0, tzinfo=WARSAW)
            body = {
                "tenant": "acme",
                "identifier": {"type": "email", "value": "anna@acme.test"},
                "send_after": start.isoformat(),
                "send_before": (start + timedelta(hours=8)).isoformat(),
                "latency_estimate_seconds": 300,
            }
            before = client.post("/timing/decide", json=body)
            assert before.status_code == 200, before.text
            assert before.json()["fallback_level"] != "personal"

            assert isinstance(krt.bus, KafkaBus)
            consumer = open_consumer(krt.pipeline, krt.bus)
            thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
            thread.start()
            partitions = {(consumer.topic, p) for p in range(3)}
            deadline = time.monotonic() + 120
            # The tally counts a batch before the lag is read after it: wait for both.
            while (
                consumer.tally.messages < len(clicks) or set(consumer_lag()) != partitions
            ) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert consumer.tally.messages == len(clicks), consumer.tally
            assert consumer.tally.dead_lettered == 0
            assert set(consumer_lag()) == partitions
            assert consumer.total_lag() == 0
            assert krt.events.count_events("acme") == len(clicks)

            after = client.post("/timing/decide", json=body)
            assert after.status_code == 200, after.text
            d = after.json()
            assert d["fallback_level"] == "personal"
            local = datetime.fromisoformat(d["target_minute_utc"]).astimezone(WARSAW)
            assert datetime(day.year, day.month, day.day, 8, 10, tzinfo=WARSAW) < local
            assert local <= datetime(day.year, day.month, day.day, 9, 10, tzinfo=WARSAW)
            # The evidence behind it: her clicks, in the explanation.
            e = client.get(f"/timing/explanations/{d['explanation_ref']}?tenant=acme")
            assert e.status_code == 200, e.text
            assert e.json()["fallback_level"] == "personal"
            assert e.json()["evidence"], e.json()

            # Both decisions went to the timing-decisions topic, keyed by person.
            published = {
                (m.key(), orjson.loads(m.value())["decision_id"])  # type: ignore[attr-defined]
                for m in _read_all(krt.bus.options.bootstrap, krt.bus.topics.decisions, 3, 2)
            }
            uid = d["universal_id"]
            assert published == {
                (f"acme/{uid}".encode(), before.json()["decision_id"]),
                (f"acme/{uid}".encode(), d["decision_id"]),
            }
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
        krt.events.drop_database()  # type: ignore[attr-defined]
        krt.close()


def _produce_raw(bootstrap: str, topic: str, values: list[bytes]) -> list[int]:
    """Produce values in order to partition 0; returns their offsets."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    offsets: list[int] = [0] * len(values)

    def report(i: int) -> object:
        def cb(err: object, msg: object) -> None:
            assert err is None, err
            offsets[i] = msg.offset()  # type: ignore[attr-defined]

        return cb

    for i, v in enumerate(values):
        producer.produce(topic, v, b"k", partition=0, on_delivery=report(i))  # type: ignore[arg-type]
    assert producer.flush(15) == 0
    return offsets


def _read_all(bootstrap: str, topic: str, partitions: int, expect: int) -> list[object]:
    """Every message of a topic, without joining a group (assigned partitions)."""
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"r{uuid.uuid4().hex}"}
        | {"enable.auto.commit": False}
    )
    reader.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[object] = []
    deadline = time.monotonic() + 30
    while len(out) < expect and time.monotonic() < deadline:
        out += [m for m in reader.consume(1000, 0.5) if m.error() is None]
    reader.close()
    return out


def test_poison_messages_go_to_the_dead_letter_topic(krt: Runtime, kafka_bootstrap: str) -> None:
    assert isinstance(krt.bus, KafkaBus)
    krt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    topics = krt.bus.topics
    good = [msgspec.json.encode(make_event(i, person=i % 3)) for i in range(10)]
    ghost = msgspec.json.encode(make_event(99, tenant="ghost"))
    values = [*good[:4], b"\xff\xfe not json", *good[4:8], b'{"tenant": "acme"}', ghost, *good[8:]]
    offsets = _produce_raw(kafka_bootstrap, topics.events, values)

    consumer = open_consumer(krt.pipeline, krt.bus)
    try:
        _drain(consumer, 13)
        # It carried on: the good events around the poison are stored.
        assert krt.events.count_events("acme") == 10
        assert consumer.tally.dead_lettered == 3
    finally:
        consumer.close()

    letters = _read_all(kafka_bootstrap, topics.dead_letters, 3, 3)
    assert len(letters) == 3
    by_offset = {}
    for m in letters:
        headers = {k: (v or b"").decode() for k, v in m.headers()}  # type: ignore[attr-defined]
        assert headers["source-topic"] == topics.events
        assert headers["source-partition"] == "0"
        by_offset[int(headers["source-offset"])] = (headers["reason"], m.value())  # type: ignore[attr-defined]
    assert set(by_offset) == {offsets[4], offsets[9], offsets[10]}
    assert "malformed JSON" in by_offset[offsets[4]][0]
    assert by_offset[offsets[4]][1] == b"\xff\xfe not json"
    assert "esp" in by_offset[offsets[9]][0]
    assert by_offset[offsets[10]][0] == "tenant: no tenant 'ghost'"
    # The metadata store's dead letters (what the API lists) have the invalid ones too.
    assert len(krt.metadata.list_dead_letters()) == 2


def test_a_failing_store_write_stops_the_consumer_without_committing(krt: Runtime) -> None:
    assert isinstance(krt.bus, KafkaBus)
    events = [make_event(i, person=i % 7) for i in range(100)]
    krt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    krt.bus.publish(events, source="test")
    krt.events.drop_database()  # type: ignore[attr-defined]  # every insert now fails

    import dataclasses

    options = dataclasses.replace(krt.bus.options, store_retry_s=1.0)
    consumer = EventConsumer(krt.pipeline, krt.bus, options)
    try:
        with pytest.raises(ConsumerStoppedError, match="without committing"):
            _drain(consumer, 100)
        assert consumer.tally.retries >= 1
        assert consumer.tally.messages == 0
    finally:
        consumer.close()

    krt.events.migrate()  # the store is back: a new consumer gets the uncommitted batch
    consumer = EventConsumer(krt.pipeline, krt.bus, options)
    try:
        _drain(consumer, 100)
    finally:
        consumer.close()
    assert krt.events.count_events("acme") == 100


class _GatedPipeline(Pipeline):
    """The runtime's pipeline, whose first write waits until the next batch is being
    prepared (so it proves the two overlap) and whose later writes fail."""

    def __init__(self, inner: Pipeline) -> None:
        super().__init__(inner.events, inner.features, inner.identity, inner.metadata)
        self.prepared: list[int] = []
        self.next_prepared = threading.Event()
        self.overlapped = False
        self.writes = 0

    def prepare_json(self, source: str, lines: Sequence[bytes]) -> PreparedBatch:
        out = super().prepare_json(source, lines)
        self.prepared.append(len(lines))
        if len(self.prepared) == 2:
            self.next_prepared.set()
        return out

    def store(self, prepared: PreparedBatch) -> IngestResult:
        self.writes += 1
        if self.writes == 1:
            self.overlapped = self.next_prepared.wait(timeout=20)
            return super().store(prepared)
        raise RuntimeError("the store is down")


def test_run_writes_one_batch_while_preparing_the_next_and_commits_only_what_is_written(
    krt: Runtime,
) -> None:
    """EventConsumer.run (what `sendflowr consumer` runs): the next batch is decoded and
    resolved while the previous one is written; a batch is committed only once written, so
    when a later write keeps failing the consumer stops with the earlier batches committed
    and stored, and nothing of the failed one committed."""
    import dataclasses

    assert isinstance(krt.bus, KafkaBus)
    krt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    krt.bus.publish([make_event(i, person=i % 7) for i in range(300)], source="test")
    options = dataclasses.replace(krt.bus.options, batch_size=100, store_retry_s=1.0)
    gated = _GatedPipeline(krt.pipeline)
    consumer = EventConsumer(gated, krt.bus, options)
    with pytest.raises(ConsumerStoppedError, match="without committing"):
        consumer.run(threading.Event())
    assert gated.overlapped, "the first write ended before the next batch was prepared"
    first = gated.prepared[0]
    assert consumer.tally.batches == 1
    assert consumer.tally.messages == first
    assert krt.events.count_events("acme") == first
    assert consumer.tally.retries >= 1
    # What the group committed: the first batch's messages, not the failed second batch's.
    reader = Consumer({"bootstrap.servers": options.bootstrap, "group.id": options.group})
    try:
        partitions = [TopicPartition(options.topics.events, p) for p in range(options.partitions)]
        committed = reader.committed(partitions, timeout=10)
    finally:
        reader.close()
    assert sum(max(tp.offset, 0) for tp in committed) == first


def test_publish_on_an_unreachable_broker_is_a_503_not_an_ack() -> None:
    from sendflowr.bus.kafka import BusUnavailableError

    options = KafkaOptions(
        bootstrap="127.0.0.1:9", topics=KafkaTopics.with_prefix("nowhere."), publish_timeout_s=1
    )
    bus = KafkaBus(options, create_topics=False)
    try:
        with pytest.raises(BusUnavailableError, match=r"timed out|not acknowledged") as caught:
            bus.publish([make_event(1)], source="test")
        assert caught.value.status == 503
        assert bus.health().state == "down"
    finally:
        bus.close()


def test_events_are_keyed_by_the_most_stable_identifier() -> None:
    e = make_event(1)
    assert event_key(e) == f"acme/email_hash:{e.identifiers.email_hash}".encode()
    both = msgspec.structs.replace(
        e, identifiers=Identifiers(email_hash=e.identifiers.email_hash, esp_profile_id="01HX")
    )
    assert event_key(both) == b"acme/esp_profile_id:01HX"


# -- SIGKILL mid-batch -------------------------------------------------------------------


def _env(tmp: Path, overrides: dict[str, object]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDFLOWR_")}
    env.update(
        {
            "SENDFLOWR_EVENT_STORE_URL": f"chdb://{tmp}/chdb?database=killed",
            "SENDFLOWR_METADATA_URL": f"sqlite:///{tmp}/meta.db",
            "SENDFLOWR_DATA_DIR": str(tmp / "var"),
            "SENDFLOWR_HASH_KEY": HASH_KEY,
            "SENDFLOWR_EXECUTOR": "false",
            "SENDFLOWR_BACKFILL_WORKER": "false",
            "SENDFLOWR_KAFKA_BATCH_SIZE": "2000",
        }
    )
    env.update({f"SENDFLOWR_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def _consumer_process(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sendflowr", "consumer", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


_SETUP_SCRIPT = """
from sendflowr.pipeline import IngestResult, Pipeline, PreparedBatch
from sendflowr.runtime import Runtime
from sendflowr.settings import load_settings
from sendflowr.storage.metadata.store import Tenant
rt = Runtime.open(load_settings())
rt.metadata.ensure_tenant(Tenant("t1", "T1", "UTC"))
rt.close()
"""

_COUNT_SCRIPT = """
import json, sys
from sendflowr.settings import load_settings
from sendflowr.storage.events import open_event_store
s = open_event_store(load_settings().event_store)
db = s.database
rows = s._rows(f"SELECT count(), uniqExact(event_id) FROM `{db}`.email_events")
print(json.dumps({"served": s.count_events("t1"), "by_type": sum(s.count_by_type("t1").values()),
                  "raw": int(rows[0][0]), "distinct": int(rows[0][1])}))
"""


@pytest.mark.slow
def test_consumer_killed_mid_batch_loses_and_duplicates_nothing(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    import json

    overrides = kafka_overrides(kafka_bootstrap)
    env = _env(tmp_path, overrides)
    produced = 30_000
    options = KafkaOptions(
        bootstrap=kafka_bootstrap,
        topics=KafkaTopics.with_prefix(str(overrides["kafka_topic_prefix"])),
        partitions=3,
    )
    bus = KafkaBus(options)
    try:
        events = [make_event(i, tenant="t1", person=i % 997) for i in range(produced)]
        for i in range(0, produced, 5000):
            bus.publish(events[i : i + 5000], source="test")
    finally:
        bus.close()

    subprocess.run([sys.executable, "-c", _SETUP_SCRIPT], env=env, check=True, timeout=120)
    first = _consumer_process(env)
    seen: list[str] = []
    killed = threading.Event()

    def watch() -> None:
        assert first.stdout is not None
        for line in first.stdout:
            seen.append(line)
            committed = sum("committed" in s for s in seen)
            if committed >= 2 and "processing" in line:
                first.send_signal(signal.SIGKILL)  # mid-batch: read, not yet committed
                killed.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    watcher.join(timeout=120)
    try:
        assert killed.is_set(), "".join(seen[-30:])
        first.wait(10)
        assert first.returncode == -signal.SIGKILL

        # The killed member's session must expire before its partitions are handed on.
        second = _consumer_process(env, "--idle-exit", str(3 * KAFKA_SESSION_TIMEOUT_MS / 1000))
        try:
            out, _ = second.communicate(timeout=240)
        finally:
            if second.poll() is None:  # a failed run must not leave a consumer behind
                second.kill()
                second.wait()
        assert second.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    count = subprocess.run(
        [sys.executable, "-c", _COUNT_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    counts = json.loads(count.stdout.strip().splitlines()[-1])
    assert counts["served"] == produced, counts
    assert counts["by_type"] == produced, counts
    assert counts["distinct"] == produced, counts
    assert counts["raw"] >= produced, counts  # before merges, a redelivered batch may be twice


def test_a_member_joining_mid_stream_loses_nothing(
    krt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """Two members of one group, the second joining while the first is consuming: the
    partitions are shared out mid-stream and every event is stored."""
    import dataclasses
    import logging

    assert isinstance(krt.bus, KafkaBus)
    krt.metadata.ensure_tenant(Tenant("acme", "Acme", "UTC"))
    produced = 60_000
    events = [make_event(i, person=i % 501) for i in range(produced)]
    for i in range(0, produced, 10_000):
        krt.bus.publish(events[i : i + 10_000], source="test")
    options = dataclasses.replace(krt.bus.options, batch_size=500)
    stop = threading.Event()
    # At most ~5,000 events/s each, so the stream outlasts the second member's join.
    first = EventConsumer(krt.pipeline, krt.bus, options, on_batch=lambda _: time.sleep(0.1))
    second: list[EventConsumer] = []
    done: list[BaseException | None] = []

    def run(c: EventConsumer) -> None:
        try:
            c.run(stop, idle_exit_s=3 * KAFKA_SESSION_TIMEOUT_MS / 1000)
            done.append(None)
        except BaseException as exc:  # the assertion below names it
            done.append(exc)

    caplog.set_level(logging.INFO, logger="sendflowr.consumer")
    threads = [threading.Thread(target=run, args=(first,), daemon=True)]
    threads[0].start()
    for _ in range(600):  # the first member is under way: the second joins now
        if first.tally.messages >= 2_000:
            break
        time.sleep(0.05)
    assert 0 < first.tally.messages < produced, first.tally
    second.append(EventConsumer(krt.pipeline, krt.bus, options, on_batch=lambda _: time.sleep(0.1)))
    threads.append(threading.Thread(target=run, args=(second[0],), daemon=True))
    threads[1].start()
    for t in threads:
        t.join(timeout=240)
    assert done == [None, None], done
    assert krt.events.count_events("acme") == produced
    text = caplog.text
    assert "revoked" in text  # the rebalance happened while the first was consuming
    assert second[0].tally.messages > 0, (first.tally, second[0].tally)  # it took partitions
    assert first.tally.messages + second[0].tally.messages >= produced
