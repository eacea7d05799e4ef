"""PyTorch trainer: training examples/s on the CPU (and CUDA when present), and scoring latency.

A simulated week of plantly.shop (200,000 events, 2,000 shoppers) becomes
point-in-time rows; the model trains a fixed number of epochs (no early stop)
with one intra-op thread and with torch's default (one per core), then on the
GPU if there is one, at two batch sizes. Scoring latency is the serving path:
encode and score 100 candidate rows with the trained scorer.

Run alone::

    python -m tests.benchmarks.torch_train
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch

from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from training.dataset import build_rows, simulated_events, time_split
from training.torch_model import TorchScorer
from training.torch_train import TorchConfig, TorchFitResult, fit_torch

ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)
HISTORY_DAYS = 7
EPOCHS = 3
SCORE_ROWS = 100
TARGET_SCORE_P99_MS = 5.0


def training_rows(events: int = 200_000) -> tuple[pd.DataFrame, pd.DataFrame]:
    catalog = load_catalog()
    config = SimulationConfig(
        events=events, seed=5, history_days=HISTORY_DAYS, users=2_000, anchor=ANCHOR
    )
    end = ANCHOR.timestamp()
    rows = build_rows(simulated_events(config, catalog), end - HISTORY_DAYS * 86400, end, catalog)
    return time_split(rows, 0.2)


def _run(train: pd.DataFrame, valid: pd.DataFrame, **config: Any) -> TorchFitResult:
    fixed = TorchConfig(max_epochs=EPOCHS, patience=EPOCHS, **config)
    return fit_torch(train, valid, fixed, progress=False)


def _summary(result: TorchFitResult, batch_size: int) -> dict[str, Any]:
    # the first epoch pays for warm-up (allocations, kernel selection)
    steady = [e.examples_per_s for e in result.history[1:]] or [result.history[0].examples_per_s]
    return {
        "device": result.device,
        "amp": result.amp,
        "batch_size": batch_size,
        "examples_per_s": round(statistics.median(steady)),
        "first_epoch_examples_per_s": round(result.history[0].examples_per_s),
        "best_valid_auc": round(result.valid_auc, 4),
    }


def score_latency_ms(
    scorer: TorchScorer, rows: pd.DataFrame, calls: int = 2000
) -> dict[str, float]:
    """p50/p99 of scoring one request's rows, from a fresh DataFrame as serving builds it."""
    batch = pd.DataFrame({name: rows[name].iloc[:SCORE_ROWS].tolist() for name in rows.columns})
    found = {}
    for name, call in (
        ("encode", lambda: scorer.encoder.encode(batch)),
        ("score", lambda: scorer.score(batch)),
    ):
        call()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        found[f"{name}_p50_ms"] = round(float(np.percentile(times, 50)), 3)
        found[f"{name}_p99_ms"] = round(float(np.percentile(times, 99)), 3)
    return found


def bench_torch_train() -> dict[str, Any]:
    started = time.perf_counter()
    train, valid = training_rows()
    results: dict[str, Any] = {
        "train_rows": len(train),
        "valid_rows": len(valid),
        "label_rate": round(float(train["label"].mean()), 4),
        "build_rows_s": round(time.perf_counter() - started, 1),
        "epochs": EPOCHS,
        "torch": torch.__version__,
    }
    one = _run(train, valid, device="cpu", cpu_threads=1)
    results["cpu_1_thread"] = _summary(one, TorchConfig().batch_size)
    every = _run(train, valid, device="cpu")
    results[f"cpu_{torch.get_num_threads()}_threads"] = _summary(every, TorchConfig().batch_size)
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name()
        for batch_size in (4_096, 32_768):
            gpu = _run(train, valid, device="cuda", batch_size=batch_size)
            results[f"cuda_batch_{batch_size}"] = _summary(gpu, batch_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a serving worker per core scores on one thread
    try:
        latency = score_latency_ms(one.scorer, valid)
    finally:
        torch.set_num_threads(threads)
    results[f"score_{SCORE_ROWS}_rows_1_thread"] = {
        **latency,
        "target_p99_ms": TARGET_SCORE_P99_MS,
        "meets_target": latency["score_p99_ms"] <= TARGET_SCORE_P99_MS,
    }
    return results


if __name__ == "__main__":
    json.dump(bench_torch_train(), sys.stdout, indent=2)
    sys.stdout.write("\n")
