"""The incremental learner: labeled examples per second of CPU, scoring, checkpoints.

The core is :class:`~training.learner_state.LearnerState` on pre-parsed events (no
Kafka, no validation): per event the tiles, per impression its point-in-time row,
per label the join, the prequential score and River's ``learn_one``. A week of
simulated plantly.shop traffic is spread over four partitions by user and fed in
turns of 5,000 events per partition, as the Kafka source hands them over. Rates
are per second of this process's CPU time (one thread: one core), so other work
on the machine does not count against them; wall-clock rates are reported too.

Scoring: :class:`~training.river_model.RiverScorer` on 100 contract rows, against
River's own ``predict_proba_one`` loop. Checkpoint: one :func:`write_checkpoint`
to MLflow, with the snapshot's size.

Run alone (the checkpoint part starts a temporary stack when none runs)::

    python -m tests.benchmarks.learner
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.settings import Settings
from training.checkpoints import Checkpoint, write_checkpoint
from training.contract import COLUMNS
from training.learner_state import LearnerEvent, LearnerState
from training.river_model import RiverScorer

TARGET_LABELED_PER_CORE_S = 10_000
TARGET_SCORE_100_P99_MS = 5.0
PARTITIONS = 4
TURN = 5_000
ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)

Parts = dict[str, list[LearnerEvent]]


def simulated_parts(events: int, seed: int = 3) -> Parts:
    """A week of events, parsed, in each partition's order (partition by user)."""
    config = SimulationConfig(events=events, seed=seed, history_days=7, anchor=ANCHOR)
    parts: Parts = {f"{p}-shop.events": [] for p in range(PARTITIONS)}
    for message in ShopSimulator(config).messages():
        if message.topic != "events":
            continue
        row = json.loads(message.value)
        row["event_ts"] = datetime.fromisoformat(row["event_ts"])
        partition = zlib.crc32(message.key) % PARTITIONS
        parts[f"{partition}-shop.events"].append(LearnerEvent.from_mapping(row))
    return parts


def feed(state: LearnerState, parts: Parts) -> None:
    """Partitions in turns of :data:`TURN` events, like the Kafka source."""
    at = dict.fromkeys(parts, 0)
    while any(at[part] < len(events) for part, events in parts.items()):
        for part, events in parts.items():
            turn = events[at[part] : at[part] + TURN]
            if turn:
                state.learn_batch(part, turn)
                at[part] += len(turn)


def bench_core(events: int = 200_000) -> tuple[dict[str, Any], LearnerState]:
    parts = simulated_parts(events)
    state = LearnerState()
    wall, cpu = time.perf_counter(), time.process_time()
    feed(state, parts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counters = state.counters
    started = time.perf_counter()
    snapshot = state.snapshot()
    snapshot_s = time.perf_counter() - started
    started = time.perf_counter()
    LearnerState.restore(snapshot)
    restore_s = time.perf_counter() - started
    result = {
        "events": counters.events,
        "impressions": counters.impressions,
        "labeled": counters.labeled,
        "positives": counters.positives,
        "pending_at_end": state.pending_count,
        "labeled_per_cpu_s": round(counters.labeled / cpu),
        "events_per_cpu_s": round(counters.events / cpu),
        "labeled_per_wall_s": round(counters.labeled / wall),
        "us_per_labeled": round(cpu / counters.labeled * 1e6, 1),
        "target_labeled_per_cpu_s": TARGET_LABELED_PER_CORE_S,
        "meets_target": counters.labeled / cpu >= TARGET_LABELED_PER_CORE_S,
        "prequential": {k: round(v, 4) for k, v in state.metric_values().items()},
        "snapshot_mb": round(len(snapshot) / 1e6, 2),
        "snapshot_ms": round(snapshot_s * 1000, 1),
        "restore_ms": round(restore_s * 1000, 1),
    }
    return result, state


def latencies_ms(score: Callable[[pd.DataFrame], object], rows: pd.DataFrame) -> dict[str, float]:
    for _ in range(20):
        score(rows)
    samples = []
    for _ in range(500):
        started = time.perf_counter()
        score(rows)
        samples.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}


def bench_scoring(state: LearnerState) -> dict[str, Any]:
    """100 pending impressions' rows scored by the trained model."""
    pending = [p for queue in state.pending.values() for p in queue][:100]
    rows = pd.DataFrame([dict(zip(COLUMNS, p.values, strict=True)) for p in pending])
    scorer = RiverScorer(state.model)
    batch = latencies_ms(scorer.score, rows)
    return {
        "rows": len(rows),
        "score": batch,
        "river_predict_proba_one_loop": latencies_ms(scorer.score_one_by_one, rows),
        "target_p99_ms": TARGET_SCORE_100_P99_MS,
        "meets_target": batch["p99_ms"] <= TARGET_SCORE_100_P99_MS,
    }


def bench_checkpoint(settings: Settings, state: LearnerState) -> dict[str, Any]:
    bench = settings.model_copy(update={"profile": f"bench{int(time.time())}"})
    started = time.perf_counter()
    checkpoint = Checkpoint.of(state, None)
    taken_s = time.perf_counter() - started
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run URLs: keep stdout JSON
        version = write_checkpoint(bench, checkpoint)
    return {
        "take_ms": round(taken_s * 1000, 1),
        "write_s": round(time.perf_counter() - started, 2),
        "version": version.version,
    }


def bench_learner(settings: Settings | None = None, events: int = 200_000) -> dict[str, Any]:
    core, state = bench_core(events)
    result: dict[str, Any] = {"core": core, "scoring": bench_scoring(state)}
    if settings is not None:
        result["checkpoint"] = bench_checkpoint(settings, state)
    return result


if __name__ == "__main__":
    from tests.benchmarks.stack import benchmark_stack

    with benchmark_stack() as bench_settings:
        print(json.dumps(bench_learner(bench_settings), indent=2))
