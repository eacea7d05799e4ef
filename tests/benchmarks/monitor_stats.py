"""Monitoring statistics: their cost per row, and how often they alarm on steady data.

- ``cost``: µs per row per column to bin the numeric contract columns and the
  score against a reference profile and to count the categorical ones, on
  100,000 simulated contract rows given as lists (as the monitor decodes them
  from JSON). Target: ≤ 5 µs per row per monitored column.
- ``psi_false_alarms``: the share of windows whose PSI reaches 0.1 and 0.2
  when reference and window are drawn from the same distribution, 10 quantile
  bins, windows of 100, 1,000 and 10,000 rows; also the chi-square and
  Jensen-Shannon numbers of steady categorical data.
- ``concept_drift``: false alarms per 100,000 stationary errors and detection
  delay (errors after the shift) of ADWIN, PageHinkley and KSWIN.
- ``cbpe``: how far the estimated AUC lands from the realised one when the
  scores are calibrated.

Run alone::

    python -m tests.benchmarks.monitor_stats
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
from river import drift

from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from monitoring.concept import absolute_errors
from monitoring.stats import (
    category_counts,
    chi_square_pvalue,
    estimated_roc_auc,
    js_distance,
    numeric_counts,
    psi,
    roc_auc,
)
from training.contract import CATEGORICALS, COLUMNS, IDS, NUMERIC
from training.dataset import build_rows, simulated_events
from training.profiles import NumericProfile, build_profile

ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)
COST_ROWS = 100_000
TARGET_US_PER_ROW_COLUMN = 5.0
WINDOW_SIZES = (100, 1_000, 10_000)
PSI_THRESHOLDS = (0.1, 0.2)
REFERENCE_ROWS = 40_000
TRIALS = 2_000
# scores of a calibrated model: Beta(0.5, 16) has mean 0.03, like plantly's purchase rate
SCORE_BETA = (0.5, 16.0)
SHIFT_AT = 20_000


class Detector(Protocol):
    @property
    def drift_detected(self) -> bool: ...

    def update(self, x: float) -> object: ...


def contract_rows(rows: int = COST_ROWS) -> pd.DataFrame:
    """``rows`` simulated contract rows (resampled from two simulated days) with scores."""
    catalog = load_catalog()
    config = SimulationConfig(events=60_000, seed=5, history_days=2, users=800, anchor=ANCHOR)
    end = ANCHOR.timestamp()
    built = build_rows(simulated_events(config, catalog), end - 2 * 86400, end, catalog)
    rng = np.random.default_rng(0)
    frame = built.iloc[rng.integers(0, len(built), rows)].reset_index(drop=True)
    frame["score"] = rng.beta(*SCORE_BETA, rows)
    return frame


def bench_cost(frame: pd.DataFrame) -> dict[str, Any]:
    """Bin and count one window of ``frame`` against a profile of it, from lists."""
    scores = frame["score"].to_numpy()
    profile = build_profile(frame, scores, frame, scores, bins=10)
    lists = {name: frame[name].tolist() for name in (*COLUMNS, "score")}
    edges = {name: profile.numeric_profile(name).edges for name in (*NUMERIC, "score")}

    def binning(names: tuple[str, ...]) -> Callable[[], object]:
        return lambda: [numeric_counts(edges[name], lists[name]) for name in names]

    def counting(names: tuple[str, ...]) -> Callable[[], object]:
        return lambda: [category_counts(lists[name]) for name in names]

    def counts_and_statistics() -> None:
        for name in NUMERIC:
            psi(profile.numeric[name].counts, numeric_counts(edges[name], lists[name]))
        for name in CATEGORICALS:
            counts = category_counts(lists[name])
            chi_square_pvalue(profile.categorical[name].counts, counts)
            js_distance(profile.categorical[name].counts, counts)

    seconds = {
        "numeric": _best_of(binning(NUMERIC)), "score": _best_of(binning(("score",))),
        "categorical": _best_of(counting(CATEGORICALS)), "ids": _best_of(counting(IDS)),
        "statistics": _best_of(counts_and_statistics),
    }  # fmt: skip
    rows = len(frame)

    def per_row_column(total_s: float, columns: int) -> float:
        return round(total_s / (rows * columns) * 1e6, 4)

    # monitored: the numeric and categorical contract columns and the score (not the ids)
    monitored = per_row_column(
        seconds["numeric"] + seconds["score"] + seconds["categorical"], len(NUMERIC) + 1 +
        len(CATEGORICALS),
    )  # fmt: skip
    return {
        "rows": rows,
        "numeric_us_per_row_column": per_row_column(seconds["numeric"], len(NUMERIC)),
        "score_us_per_row": per_row_column(seconds["score"], 1),
        "categorical_us_per_row_column": per_row_column(seconds["categorical"], len(CATEGORICALS)),
        "ids_us_per_row_column": per_row_column(seconds["ids"], len(IDS)),
        "contract_21_columns_us_per_row_column": per_row_column(
            seconds["numeric"] + seconds["categorical"] + seconds["ids"], len(COLUMNS)
        ),
        "monitored_us_per_row_column": monitored,
        "with_psi_chi2_js_us_per_row_column": per_row_column(
            seconds["statistics"], len(NUMERIC) + len(CATEGORICALS)
        ),
        "target_us_per_row_column": TARGET_US_PER_ROW_COLUMN,
        "meets_target": monitored <= TARGET_US_PER_ROW_COLUMN,
    }


def _best_of(call: Callable[[], object], repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def bench_psi_false_alarms(trials: int = TRIALS) -> dict[str, Any]:
    """Steady data: reference and windows drawn from one lognormal, 10 quantile bins."""
    rng = np.random.default_rng(1)
    reference = NumericProfile.of(rng.lognormal(0.0, 1.0, REFERENCE_ROWS), bins=10)
    found: dict[str, Any] = {"reference_rows": REFERENCE_ROWS, "bins": len(reference.counts),
                             "trials": trials}  # fmt: skip
    for size in WINDOW_SIZES:
        values = np.array([
            psi(reference.counts, numeric_counts(reference.edges, rng.lognormal(0.0, 1.0, size)))
            for _ in range(trials)
        ])  # fmt: skip
        found[f"window_{size}"] = {
            "mean_psi": round(float(values.mean()), 5),
            "p99_psi": round(float(np.quantile(values, 0.99)), 5),
            **{f"false_alarm_rate_at_{t}": float(np.mean(values >= t)) for t in PSI_THRESHOLDS},
        }
    return found


def bench_categorical_false_alarms(trials: int = TRIALS) -> dict[str, Any]:
    """Steady data over 18 regions (skewed shares): chi-square p-values and JS distances."""
    rng = np.random.default_rng(2)
    names = [f"R{i:02d}" for i in range(18)]
    shares = rng.dirichlet(np.full(len(names), 2.0))
    reference = category_counts(rng.choice(names, REFERENCE_ROWS, p=shares).tolist())
    found: dict[str, Any] = {"categories": len(names), "reference_rows": REFERENCE_ROWS}
    for size in WINDOW_SIZES:
        pvalues, distances = [], []
        for _ in range(trials):
            window = category_counts(rng.choice(names, size, p=shares).tolist())
            pvalues.append(chi_square_pvalue(reference, window))
            distances.append(js_distance(reference, window))
        found[f"window_{size}"] = {
            "chi2_pvalue_below_0.01_rate": float(np.mean(np.array(pvalues) < 0.01)),
            "js_distance_mean": round(float(np.mean(distances)), 5),
            "js_distance_p99": round(float(np.quantile(distances, 0.99)), 5),
            "js_distance_at_least_0.1_rate": float(np.mean(np.array(distances) >= 0.1)),
        }
    return found


def synthetic_errors(rng: np.random.Generator, n: int, factor: float = 1.0) -> np.ndarray:
    """Errors of a calibrated model whose positives become ``factor`` times as likely."""
    scores = rng.beta(*SCORE_BETA, n)
    labels = rng.random(n) < np.minimum(factor * scores, 1.0)
    return absolute_errors(labels, scores)


def _detections(detector: Detector, errors: np.ndarray) -> list[int]:
    hits = []
    for index, error in enumerate(errors.tolist()):
        detector.update(error)
        if detector.drift_detected:
            hits.append(index)
    return hits


class DetectorRun(NamedTuple):
    make: Callable[[], Detector]
    stationary: int  # errors of stationary noise, for false alarms
    runs: int  # shifted streams per shift size, for the delay


DETECTORS: dict[str, DetectorRun] = {
    "adwin_delta_0.002": DetectorRun(lambda: drift.ADWIN(delta=0.002), 1_000_000, 20),
    "page_hinkley_default": DetectorRun(lambda: drift.PageHinkley(), 1_000_000, 20),
    # ~450 µs an update and an alarm every ~750 errors: a glimpse is enough
    "kswin_alpha_0.005": DetectorRun(lambda: drift.KSWIN(alpha=0.005, seed=1), 20_000, 2),
}


def bench_concept_drift() -> dict[str, Any]:
    found: dict[str, Any] = {
        "stationary_mean_error": round(float(synthetic_errors(np.random.default_rng(0),
                                                              400_000).mean()), 4),
        "shift_mean_error": {str(f): round(float(synthetic_errors(np.random.default_rng(0),
                                                                  400_000, f).mean()), 4)
                             for f in (3.0, 5.0)},
    }  # fmt: skip
    for name, run in DETECTORS.items():
        rng = np.random.default_rng(100)
        started = time.perf_counter()
        alarms = sum(
            len(_detections(run.make(), synthetic_errors(rng, min(run.stationary, 100_000))))
            for _ in range(max(run.stationary // 100_000, 1))
        )
        result: dict[str, Any] = {
            "false_alarms_per_100k": round(alarms / run.stationary * 100_000, 2),
            "us_per_update": round((time.perf_counter() - started) / run.stationary * 1e6, 2),
            "stationary_examples": run.stationary,
        }
        for factor in (3.0, 5.0):
            result[f"delay_at_{factor:g}x"] = _delays(run.make, factor, run.runs)
        found[name] = result
    return found


def _delays(make: Callable[[], Detector], factor: float, runs: int) -> dict[str, Any]:
    delays, early = [], 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        errors = np.concatenate([synthetic_errors(rng, SHIFT_AT),
                                 synthetic_errors(rng, SHIFT_AT, factor)])  # fmt: skip
        hits = _detections(make(), errors)
        early += sum(hit < SHIFT_AT for hit in hits)
        after = [hit - SHIFT_AT for hit in hits if hit >= SHIFT_AT]
        delays.append(after[0] if after else SHIFT_AT)
    return {
        "runs": runs, "median": float(np.median(delays)), "max": int(max(delays)),
        "missed": int(sum(d >= SHIFT_AT for d in delays)), "alarms_before_shift": early,
    }  # fmt: skip


def bench_cbpe(trials: int = 200) -> dict[str, Any]:
    """|estimated - realised| AUC when labels are drawn from calibrated scores."""
    rng = np.random.default_rng(3)
    found: dict[str, Any] = {}
    for size in (1_000, 10_000):
        gaps = []
        for _ in range(trials):
            scores = rng.beta(*SCORE_BETA, size)
            labels = rng.random(size) < scores
            gaps.append(abs(estimated_roc_auc(scores) - roc_auc(labels, scores)))
        found[f"window_{size}"] = {
            "mean_abs_gap": round(float(np.mean(gaps)), 4),
            "p95_abs_gap": round(float(np.quantile(gaps, 0.95)), 4),
        }
    return found


def bench_monitor_stats() -> dict[str, Any]:
    return {
        "cost": bench_cost(contract_rows()),
        "psi_false_alarms": bench_psi_false_alarms(),
        "categorical_false_alarms": bench_categorical_false_alarms(),
        "concept_drift": bench_concept_drift(),
        "cbpe": bench_cbpe(),
    }


if __name__ == "__main__":
    json.dump(bench_monitor_stats(), sys.stdout, indent=2)
    sys.stdout.write("\n")
