"""The prediction API under load: ``tributary serve`` as a process, ``wrk`` from another.

Set-up: a profile of its own on the benchmark stack; a week of simulated
traffic for 5,000 shoppers folded into the online store (every one of the 540
products too); a PyTorch DLRM-style model (:mod:`training.torch_model`, its
encoder fitted on those shoppers, weights untrained: the cost is the same) as
champion; ``tributary serve`` started as a subprocess with API keys on.

Load: ``wrk`` with a Lua script cycling through 2,000 prepared requests
(``POST /v1/recommendations``, 50 random candidates, random shopper and region,
``k`` 10), first one connection in a closed loop, then 8 connections; with one
uvicorn worker (the default) and with two. Where the
time goes comes from the server's own ``tributary_serving_stage_seconds``
histograms (mean per stage) against its request histogram and wrk's view.

Run alone against a temporary stack::

    python -m tests.benchmarks.serving
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
import mlflow
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from flows.features.online import delete_view, write_entities
from flows.features.tiles import EntityTiles
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from serving.demo import wait_ready
from tests.local_stack import free_port, settings_env
from training.contract import assemble_rows
from training.pyfunc import RecommenderModel
from training.registry import Registry, configure, experiment_name, log_recommender
from training.torch_model import DotInteractionNet, FeatureEncoder, TorchScorer

USERS: Final = 5_000
CANDIDATES: Final = 50
REQUESTS: Final = 2_000
API_KEY: Final = "bench-" + "k" * 26
TARGET_P50_MS, TARGET_P99_MS, GOAL_P99_MS = 3.0, 10.0, 5.0
TARGET_RPS_8: Final = 800

_WRK_SCRIPT: Final = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "%(key)s"
request = function()
  n = n %% #bodies + 1
  return wrk.format(nil, "/v1/recommendations", nil, bodies[n])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_s": %%.3f, "p50_ms": %%.3f, "p90_ms": %%.3f, ' ..
    '"p99_ms": %%.3f, "max_ms": %%.3f, "errors": %%d, "non_2xx": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def fold_traffic(users: int = USERS, events: int = 300_000) -> tuple[dict[str, EntityTiles], ...]:
    """A week of traffic for ``users`` shoppers ending now: user and product states."""
    config = SimulationConfig(
        events=events, seed=3, history_days=7, users=users, anchor=datetime.now(UTC)
    )
    shoppers: dict[str, EntityTiles] = {}
    products = {pid: EntityTiles() for pid in load_catalog()}
    for message in ShopSimulator(config).messages():
        if message.topic != "events":
            continue
        e = json.loads(message.value)
        ts = datetime.fromisoformat(e["event_ts"]).timestamp()
        args = (e["event_type"], ts, e["price"], e.get("quantity"))
        shoppers.setdefault(e["user_id"], EntityTiles()).add(*args)
        products[e["product_id"]].add(*args)
    return shoppers, products


def torch_model(user_ids: list[str]) -> RecommenderModel:
    """The project's PyTorch model, its vocabularies fitted on these shoppers."""
    catalog = load_catalog()
    rng = random.Random(1)
    pids = list(catalog)
    frames = [
        pd.DataFrame(
            assemble_rows(
                uid,
                "US-CA",
                "mobile",
                {},
                [(p, {}) for p in rng.sample(pids, 3)],
                catalog,
                time.time(),
            )
        )
        for uid in user_ids
    ]
    rows = pd.concat(frames, ignore_index=True)
    encoder = FeatureEncoder().fit(rows)
    net = DotInteractionNet(encoder.cardinalities, len(encoder.numeric_columns))
    return RecommenderModel(TorchScorer(encoder, net))


def prepare(settings: Settings) -> tuple[Settings, list[str]]:
    """A profile with features in Redis and a champion; returns it and request bodies."""
    bench = settings.model_copy(update={"profile": f"bserve{int(time.time())}"})
    ensure_topics(bench.kafka_bootstrap, bench.all_topics(), bench.topic_partitions)
    shoppers, products = fold_traffic()
    client = Redis.from_url(bench.redis_url)
    try:
        items = [("user", uid, t) for uid, t in shoppers.items()]
        items += [("product", pid, t) for pid, t in products.items()]
        for at in range(0, len(items), 1000):
            write_entities(client, bench, items[at : at + 1000])
    finally:
        client.close()
    user_ids = sorted(shoppers)
    model = torch_model(user_ids)
    configure(bench)
    mlflow.set_experiment(experiment_name(bench))
    catalog = load_catalog()
    example = pd.DataFrame(
        assemble_rows(
            user_ids[0], "US-CA", "mobile", {}, [(p, {}) for p in list(catalog)[:3]], catalog, 0.0
        )
    )
    with mlflow.start_run():
        version = log_recommender(bench, model, input_example=example, delta_versions={}).version
    Registry(bench).make_champion(version)
    return bench, request_bodies(user_ids)


def request_bodies(user_ids: list[str], n: int = REQUESTS) -> list[str]:
    catalog = load_catalog()
    pids = list(catalog)
    regions = [*sorted({r for p in catalog.values() for r in p.invasive_regions}), "US-NY"]
    rng = random.Random(2)
    return [
        json.dumps(
            {
                "user_id": rng.choice(user_ids),
                "region": rng.choice(regions),
                "device": rng.choice(["mobile", "desktop", "tablet"]),
                "candidates": rng.sample(pids, CANDIDATES),
                "k": 10,
            }
        )
        for _ in range(n)
    ]


@contextmanager
def api_process(
    settings: Settings, port: int, workers: int = 1, api_key: str = API_KEY
) -> Iterator[str]:
    """``tributary serve`` in its own process until the block ends (SIGTERM, then wait)."""
    env = {**os.environ, **settings_env(settings), "TRIBUTARY_API_KEYS": f"{api_key}:admin"}
    command = [
        sys.executable,
        "-m",
        "infra.cli",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout=120.0)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    if code not in (0, -signal.SIGTERM):
        raise RuntimeError(f"tributary serve exited with {code} on SIGTERM")


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    threads = min(connections, 2)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["requests_per_s"] = round(result["requests"] / result["duration_s"])
    return result


def server_breakdown(url: str) -> dict[str, float]:
    """Mean milliseconds per stage, and per request as the server measured it."""
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "tributary_serving_stage_seconds":
                key = sample.labels.get("stage", "")
            elif family.name == "tributary_serving_request_seconds":
                if sample.labels.get("route") != "/v1/recommendations":
                    continue
                key = "server_total"
            else:
                continue
            if sample.name.endswith("_sum"):
                sums[key] = sample.value
            elif sample.name.endswith("_count"):
                counts[key] = sample.value
    return {f"{k}_mean_ms": round(1000 * sums[k] / counts[k], 3) for k in sums if counts.get(k)}


def run_load(settings: Settings, script: Path, workers: int, seconds: int) -> dict[str, Any]:
    """One connection, then eight, against a fresh ``tributary serve --workers N``."""
    with api_process(settings, free_port(), workers) as url:
        wrk(url, script, 1, 3)  # warm-up: connections, caches, the allocator
        sequential = wrk(url, script, 1, seconds)
        stages = server_breakdown(url)
        concurrent = wrk(url, script, 8, seconds)
    accounted = sum(stages.get(f"{s}_mean_ms", 0.0) for s in ("features", "rank", "log"))
    if "server_total_mean_ms" in stages:
        stages["framework_and_waits_mean_ms"] = round(stages["server_total_mean_ms"] - accounted, 3)
    return {
        "one_connection": sequential,
        "eight_connections": concurrent,
        # with several workers, /metrics adds every worker up (multiprocess mode)
        "server_stages_one_connection": stages,
        "meets_latency_target": sequential["p50_ms"] <= TARGET_P50_MS
        and sequential["p99_ms"] <= TARGET_P99_MS,
        "meets_throughput_target": concurrent["requests_per_s"] >= TARGET_RPS_8,
    }


def bench_serving(settings: Settings, seconds: int = 15) -> dict[str, Any]:
    bench, bodies = prepare(settings)
    results: dict[str, Any] = {
        "users": USERS,
        "candidates": CANDIDATES,
        "model": "torch DLRM-style (training.torch_model), 50 rows per request",
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "goal_p99_ms": GOAL_P99_MS,
        "target_rps_8_connections": TARGET_RPS_8,
    }
    with tempfile.TemporaryDirectory(prefix="tributary-wrk-") as folder:
        body_file = Path(folder) / "bodies.txt"
        body_file.write_text("\n".join(bodies) + "\n")
        script = Path(folder) / "recommend.lua"
        script.write_text(_WRK_SCRIPT % {"bodies": body_file, "key": API_KEY})
        try:
            for workers in (1, 2):
                results[f"workers_{workers}"] = run_load(bench, script, workers, seconds)
        finally:
            client = Redis.from_url(bench.redis_url)
            for view in ("user", "product"):
                delete_view(client, bench, view)
            client.close()
    return results


if __name__ == "__main__":
    from tests.benchmarks.stack import benchmark_stack

    with benchmark_stack() as bench_settings, contextlib.redirect_stdout(sys.stderr):
        found = bench_serving(bench_settings)
    print(json.dumps(found, indent=2))
