"""Flow benchmarks: ingest and feature throughput, and end-to-end freshness.

Throughput: a simulated history already in Kafka, each flow on one worker in
this process, stopping at the topics' end (start-up included and reported).

Freshness: the feature flow runs as its own process, following the topic,
while a background producer sends live traffic at 5,000 events/s. Probe events
for fresh users are produced one at a time and Redis is polled until each
probe's entity appears: produce → readable, measured from outside the flow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from bytewax.testing import run_main
from redis import Redis

from flows import feature_flow, ingest
from flows.features.online import feature_key
from infra.kafka.producer import Producer
from infra.plantly.catalog import ensure_catalog_table
from infra.plantly.encoding import encode_event
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from tests.local_stack import settings_env

TARGET_THROUGHPUT = 20_000
TARGET_FRESHNESS_P99_MS = 250.0


def _profile(settings: Settings, name: str) -> Settings:
    profiled = settings.model_copy(update={"profile": name})
    ensure_topics(profiled.kafka_bootstrap, profiled.all_topics(), profiled.topic_partitions)
    ensure_catalog_table(profiled)
    return profiled


def bench_flow_throughput(settings: Settings, events: int = 200_000) -> dict[str, Any]:
    bench = _profile(settings, f"bench{int(time.time())}")
    send_traffic(
        ShopSimulator(SimulationConfig(events=events, seed=9, history_days=2)), [KafkaSink(bench)]
    )
    results: dict[str, Any] = {"events": events}
    for name, module in (("ingest", ingest), ("features", feature_flow)):
        built = time.perf_counter()
        flow = module.build_flow(bench, tail=False)
        started = time.perf_counter()
        run_main(flow)
        seconds = time.perf_counter() - started
        results[name] = {
            "events_per_s": round(events / seconds),
            "seconds": round(seconds, 2),
            "build_s": round(started - built, 3),
        }
    slowest = min(results["ingest"]["events_per_s"], results["features"]["events_per_s"])
    results["target_events_per_s"] = TARGET_THROUGHPUT
    results["meets_target"] = slowest >= TARGET_THROUGHPUT
    return results


def _probe(settings: Settings, producer: Producer, client: Redis, index: int) -> float:
    user = f"u-probe-{settings.profile}-{index}"
    key = feature_key(settings, "user", user)
    value = encode_event(
        f"probe-{settings.profile}-{index}", "impression", time.time(), user,
        "monstera-deliciosa-6in", "s-probe", "US-CA", "desktop", 34.99, None,
    )  # fmt: skip
    sent = time.perf_counter()
    producer.send(settings.topic(settings.topics.events), value, user.encode())
    producer.poll()
    while not client.exists(key):
        if time.perf_counter() - sent > 10:
            raise TimeoutError(f"probe {index} not visible after 10 s")
        time.sleep(0.0005)
    return (time.perf_counter() - sent) * 1000


def bench_freshness(settings: Settings, rate: float = 5_000, probes: int = 300) -> dict[str, Any]:
    live = _profile(settings, f"fresh{int(time.time())}")
    command = [sys.executable, "-m", "infra.cli", "run", "features", "--no-recovery"]
    flow = subprocess.Popen(
        command, env={**os.environ, **settings_env(live.model_copy(update={"metrics_port": 0}))}
    )
    stop = threading.Event()
    background = ShopSimulator(SimulationConfig(events=10**9, seed=4))
    producer = Producer(live, **{"linger.ms": 0})
    client = Redis.from_url(live.redis_url)

    def load() -> None:
        sink = KafkaSink(live)
        started, sent = time.perf_counter(), 0
        for message in background.messages():
            if stop.is_set():
                break
            sink.write(message)
            sent += message.topic == "events"
            if sent % 100 == 0:
                time.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        sink.close()

    loader = threading.Thread(target=load, daemon=True)
    try:
        loader.start()
        _probe(live, producer, client, -1)  # waits for the flow to start
        time.sleep(2.0)
        latencies = []
        for index in range(probes):
            latencies.append(_probe(live, producer, client, index))
            time.sleep(0.02)
    finally:
        stop.set()
        loader.join(timeout=10)
        flow.terminate()
        flow.wait(timeout=30)
        producer.close()
        client.close()
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    return {
        "rate_events_per_s": rate,
        "probes": probes,
        "p50_ms": round(latencies[len(latencies) // 2], 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(latencies[-1], 2),
        "target_p99_ms": TARGET_FRESHNESS_P99_MS,
        "meets_target": p99 <= TARGET_FRESHNESS_P99_MS,
    }


if __name__ == "__main__":
    from tests.benchmarks.stack import benchmark_stack

    with benchmark_stack() as stack:
        print(json.dumps({"freshness": bench_freshness(stack)}, indent=2))
