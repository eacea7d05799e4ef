"""The monitor flow: logged requests joined and profiled per second, statistics cost, lag.

Traffic: prediction records of 50 candidates each, encoded by serving's own
prediction log (~11 KB each), at 100 requests/s of event time over 4
partitions, with their impressions (request id), clicks and purchases over 4
more, and a late event per events partition so every window's labels complete.
A pool of distinct records is reused with fresh request ids and times.

- ``core``: the parse step and :class:`~monitoring.monitor_state.MonitorState`
  alone (no Bytewax), one thread, partitions in turns of 5,000 messages like the
  Kafka source: requests per second of this process's CPU time.
- ``flow``: the whole dataflow on one worker with ``run_main`` (in-memory
  Kafka, the real Delta table in a temporary folder, the real gauges): requests
  per second of wall clock, start-up included.
- ``statistics``: checking, concatenating and binning a group of 2,000 records
  (100,000 rows, 20 monitored columns), per row per column.
- ``lag``: from the state's decision to close a window to its gauges being set
  (the flow's ``gauges-out``), with backlog batches (5,000 messages: the
  gauges wait for the next batch's parse) and live-sized ones (100), and the
  time the close itself takes (``close_batch_ms_max``). In live traffic a
  window closes ``allowed_lateness_s`` after its end, plus this.

Run alone: ``python -m tests.benchmarks.monitor``.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, run_main

from flows.kafka_source import BATCH_SIZE, KafkaBatch
from infra.plantly.catalog import load_catalog
from infra.plantly.encoding import rfc3339
from infra.settings import MonitoringSettings, Settings
from monitoring.monitor_flow import Parser, build_flow
from monitoring.monitor_state import MonitorState, Part
from monitoring.records import NUMBERS, ParsedPrediction, group_columns, parse_prediction
from monitoring.reference import ReferenceBook, StaticRegistry
from monitoring.sinks import export_gauges
from monitoring.windows import MonitorRecord, aggregate
from tests.monitor_traffic import (
    EVENTS,
    MODEL,
    PREDICTIONS,
    BatchListSource,
    Traffic,
    _Events,
    _outcomes,
    batches,
    make_request,
    reference_profile,
    user_partition,
)
from training.contract import CATEGORICALS

TARGET_REQUESTS_PER_S = 2_000
TARGET_US_PER_ROW_COLUMN = 5.0
TARGET_LAG_P99_S = 5.0
RATE = 100.0  # requests per second of event time
PARTITIONS = 4
POOL = 400
ANCHOR = datetime(2026, 6, 1, tzinfo=UTC)
KNOBS = MonitoringSettings(window_s=60.0, parity_every_s=0)
LIVE_BATCH = 100


def traffic(requests: int, seed: int = 2, batch: int = BATCH_SIZE) -> dict[str, list[KafkaBatch]]:
    """Kafka partitions of predictions and events (see the module doc)."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    start = ANCHOR.timestamp() - 6 * 3600
    pool = [make_request(rng, nrng, f"pool-{i:04d}", start, 3) for i in range(POOL)]
    stamp = rfc3339(start).encode()
    kept = Traffic()
    events = _Events(kept)
    predictions: list[tuple[bytes | None, bytes]] = []
    for i in range(requests):
        template, raw = pool[i % POOL]
        request = replace(template, request_id=f"b-{i:07d}", ts=start + i / RATE)
        raw = raw.replace(template.request_id.encode(), request.request_id.encode(), 1)
        predictions.append(
            (request.user_id.encode(), raw.replace(stamp, rfc3339(request.ts).encode(), 1))
        )
        _outcomes(rng, events, request)
    for partition in range(PARTITIONS):  # labels complete: time moves on in every partition
        user = next(
            f"s-{i}" for i in range(99) if user_partition(f"s-{i}".encode(), 4) == partition
        )
        events.add("add_to_cart", start + requests / RATE + 7200, user, pool[0][0].items[0][0])
    ordered = sorted(kept.events, key=lambda e: e[2])
    parts = batches(predictions, PREDICTIONS, PARTITIONS, batch)
    parts |= batches([(u.encode(), v) for u, v, _ in ordered], EVENTS, PARTITIONS, batch,
                     part_of=lambda i, key: user_partition(key, PARTITIONS))  # fmt: skip
    return parts


def _turns(parts: dict[str, list[KafkaBatch]]) -> list[KafkaBatch]:
    """Partitions in turns, one batch each, as the source hands them over."""
    queues = {name: list(found) for name, found in sorted(parts.items())}
    out = []
    while any(queues.values()):
        for queue in queues.values():
            if queue:
                out.append(queue.pop(0))
    return out


def _count(parts: dict[str, list[KafkaBatch]], topic: str) -> int:
    return sum(len(b) for name, found in parts.items() if name.endswith(topic) for b in found)


def _registry() -> StaticRegistry:
    return StaticRegistry({3: reference_profile()}, champion=3)


def bench_core(parts: dict[str, list[KafkaBatch]]) -> dict[str, Any]:
    settings = Settings(metrics_port=0, monitoring=KNOBS)
    book = ReferenceBook(_registry(), poll_s=3600.0)
    parser = Parser(settings, book, load_catalog().product_ids, lambda: ANCHOR)
    state = MonitorState(KNOBS, MODEL)
    state.attach(book.profile, [p for p in parts if p.endswith(PREDICTIONS)],
                 [p for p in parts if p.endswith(EVENTS)], time.time())  # fmt: skip
    records: list[MonitorRecord] = []
    closes: list[float] = []
    parse_cpu = 0.0
    turns = _turns(parts)
    middle: dict[str, float] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for index, batch in enumerate(turns):
        if index == len(turns) // 2:
            middle = _snapshot_cost(state)
        started = time.process_time()
        pieces: list[Part] = [parsed.part for parsed in parser([batch])]
        parse_cpu += time.process_time() - started
        began = time.perf_counter()
        emitted = state.consume(pieces, time.time())
        if any(r.phase == "predictions" for r in emitted):
            closes.append(time.perf_counter() - began)
        records += emitted
    records += state.finish(time.time())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    requests = _count(parts, PREDICTIONS)
    return {
        "requests": requests,
        "events": _count(parts, EVENTS),
        "records": {p: sum(r.phase == p for r in records) for p in ("predictions", "outcomes")},
        "requests_per_cpu_s": round(requests / cpu),
        "requests_per_wall_s": round(requests / wall),
        "parse_share_of_cpu": round(parse_cpu / cpu, 3),
        "close_batch_ms_max": round(max(closes, default=0.0) * 1000, 1),
        "dropped": {k: v for k, v in state.dropped().items() if v},
        "snapshot_half_way": middle,
        "target_requests_per_s": TARGET_REQUESTS_PER_S,
        "meets_target": requests / cpu >= TARGET_REQUESTS_PER_S,
    }


def _snapshot_cost(state: MonitorState) -> dict[str, float]:
    """Size and time of one recovery snapshot (taken every epoch, 5 s by default)."""
    held = state.held()
    started = time.process_time()
    data = state.snapshot()
    return {
        "mb": round(len(data) / 1e6, 2),
        "cpu_ms": round((time.process_time() - started) * 1000, 1),
        "requests_held": held["requests"],
        "impressions_held": held["impressions"],
    }


class _TimedPartition(StatelessSinkPartition[MonitorRecord]):
    def __init__(self, lags: list[float]) -> None:
        self.lags = lags

    def write_batch(self, items: list[MonitorRecord]) -> None:
        for record in items:
            export_gauges(record)
            if record.phase == "predictions":
                self.lags.append(time.time() - record.emitted_at)


class TimedGauges(DynamicSink[MonitorRecord]):
    """The real gauges, each record timed from the state's decision to close its window."""

    def __init__(self, lags: list[float]) -> None:
        self.lags = lags

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TimedPartition:
        return _TimedPartition(self.lags)


def bench_flow(
    parts: dict[str, list[KafkaBatch]], knobs: MonitoringSettings = KNOBS
) -> dict[str, Any]:
    lags: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(metrics_port=0, state_dir=Path(folder), lake_root=f"{folder}/lake",
                            monitoring=knobs)  # fmt: skip
        monitor: list[Any] = []
        flow = build_flow(
            settings, tail=False, source=BatchListSource(parts), registry=_registry(),
            monitor_sink=TestingSink(monitor), dlq_sink=TestingSink([]),
            gauge_sink=TimedGauges(lags), products=load_catalog().product_ids,
            clock=lambda: ANCHOR,
        )  # fmt: skip
        started = time.perf_counter()
        run_main(flow)
        seconds = time.perf_counter() - started
    requests = _count(parts, PREDICTIONS)
    return {
        "requests_per_s": round(requests / seconds),
        "seconds": round(seconds, 2),
        "records": len(monitor),
        "meets_target": requests / seconds >= TARGET_REQUESTS_PER_S,
        "lag_close_to_gauges_s": _quantiles(lags),
        "meets_lag_target": bool(lags) and _quantiles(lags)["p99"] <= TARGET_LAG_P99_S,
    }


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": values[0] if values else float("nan"), "p99": max(values, default=0.0)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 4), "p99": round(cuts[98], 4), "max": round(max(values), 4)}


def _best(call: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_statistics(records: int = 2_000) -> dict[str, Any]:
    rng, nrng = random.Random(4), np.random.default_rng(4)
    raws = [make_request(rng, nrng, f"s{i}", ANCHOR.timestamp() - 60, 3)[1] for i in range(200)]
    raws = raws * (records // len(raws))
    profile = reference_profile()
    now = ANCHOR.timestamp()
    parsed = [parse_prediction(raw, model_name=MODEL, now=now) for raw in raws]
    good = [p for p in parsed if isinstance(p, ParsedPrediction)]
    group, _ = group_columns(good)
    columns = len(NUMBERS) + len(CATEGORICALS)
    cells = group.rows * columns
    parse_s = _best(lambda: [parse_prediction(raw, model_name=MODEL, now=now) for raw in raws], 3)
    check_s = _best(lambda: group_columns(good))
    bin_s = _best(lambda: aggregate(group, profile))
    return {
        "rows": group.rows,
        "columns": columns,
        "parse_us_per_request": round(parse_s / len(raws) * 1e6, 1),
        "check_and_concatenate_us_per_row_column": round(check_s / cells * 1e6, 4),
        "bin_and_count_us_per_row_column": round(bin_s / cells * 1e6, 4),
        "total_us_per_row_column": round((check_s + bin_s) / cells * 1e6, 4),
        "with_parse_us_per_row_column": round((parse_s + check_s + bin_s) / cells * 1e6, 4),
        "target_us_per_row_column": TARGET_US_PER_ROW_COLUMN,
        "meets_target": (parse_s + check_s + bin_s) / cells * 1e6 <= TARGET_US_PER_ROW_COLUMN,
    }


def bench_monitor(requests: int = 20_000) -> dict[str, Any]:
    parts = traffic(requests)
    # 10-second windows: more of them close on the watermark, mid-stream
    small = bench_flow(
        traffic(requests // 4, batch=LIVE_BATCH), KNOBS.model_copy(update={"window_s": 10.0})
    )
    return {
        "statistics": bench_statistics(),
        "core": bench_core(parts),
        "flow": bench_flow(parts),
        # batches as a live poll returns them, not a backlog's 5,000 messages
        "lag_close_to_gauges_small_batches_s": small["lag_close_to_gauges_s"],
    }


if __name__ == "__main__":
    print(json.dumps(bench_monitor(), indent=2))
