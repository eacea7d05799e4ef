"""Rows of the Delta table ``monitoring/metrics`` for tests and the dashboard screenshot.

The schema is the one the monitor flow writes (the brief's long form, one row
per number); rows are written with ``deltalake.write_deltalake`` directly, so
these tests do not depend on the flow. :func:`drift_story` makes the rows of a
believable incident: version 1 serves steady traffic, a shift in what shoppers
click moves its features and scores, the concept-drift detector fires, and
version 2, retrained on the new data, takes over.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pyarrow as pa
from deltalake import write_deltalake

from monitoring.metrics_table import METRICS_SCHEMA
from training.contract import CATEGORICALS, NUMERIC

# the monitor's own table schema: the samples are written as the flow writes them
SCHEMA: Final = METRICS_SCHEMA
MODEL: Final = "plant-recommender"
BINS: Final = 10
DRIFTING: Final = ("product_clicks_1h", "product_ctr_24h", "price")


def row(
    window_end: datetime,
    version: int,
    phase: str,
    metric: str,
    value: float,
    feature: str = "",
    *,
    window_s: float = 60.0,
    emitted_at: datetime | None = None,
    seq: int = 1,
) -> dict[str, Any]:
    """One number of one window, as the monitor writes it."""
    return {
        "window_start": window_end - timedelta(seconds=window_s),
        "window_end": window_end,
        "model_name": MODEL,
        "model_version": version,
        "phase": phase,
        "metric": metric,
        "feature": feature,
        "value": value,
        "emitted_at": emitted_at or window_end + timedelta(seconds=2),
        "seq": seq,
    }


def write_rows(uri: str, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` to the table at ``uri`` (created with the schema when absent)."""
    write_deltalake(uri, pa.Table.from_pylist(list(rows), schema=SCHEMA), mode="append")


@dataclass(frozen=True)
class Phase:
    """How a version behaves in a stretch of windows."""

    version: int
    ctr: float
    conversion: float
    auc: float
    score_psi: float
    feature_psi: float
    js: float


def drift_story(now: datetime, *, minutes: int = 90, window_s: int = 60) -> list[dict[str, Any]]:
    """Steady traffic on v1, a shift at 55 % of the range, v2 champion from 75 %."""
    rng = random.Random(7)
    first = now - timedelta(minutes=minutes)
    ends = [first + timedelta(seconds=window_s * (i + 1)) for i in range(minutes * 60 // window_s)]
    shift, swap = ends[int(len(ends) * 0.55)], ends[int(len(ends) * 0.75)]
    labels_until = now - timedelta(minutes=min(15, minutes // 6))  # outcomes wait for labels
    steady = Phase(1, 0.082, 0.031, 0.76, 0.02, 0.03, 0.03)
    shifted = Phase(1, 0.061, 0.019, 0.66, 0.31, 0.34, 0.21)
    retrained = Phase(2, 0.079, 0.029, 0.75, 0.03, 0.04, 0.04)
    rows: list[dict[str, Any]] = []
    for seq, end in enumerate(ends, start=1):
        phase = steady if end < shift else (shifted if end < swap else retrained)
        rows += _window(rng, end, phase, window_s, seq, labelled=end <= labels_until)
        if end == shift + timedelta(minutes=8):
            late = end + timedelta(seconds=30)  # the detection re-emits the window's outcomes
            detected = row(end, 1, "outcomes", "concept_drift", 1.0, window_s=window_s, seq=seq)
            rows.append({**detected, "emitted_at": late})
    for version, start in ((1, ends[0]), (2, swap)):
        rows += [
            row(start, version, "reference", "score_bin_share", 1 / BINS, str(b), window_s=window_s)
            for b in range(BINS)
        ]
    return rows


def _window(
    rng: random.Random, end: datetime, p: Phase, window_s: int, seq: int, *, labelled: bool
) -> Iterator[dict[str, Any]]:
    def put(phase: str, metric: str, value: float, feature: str = "") -> dict[str, Any]:
        return row(end, p.version, phase, metric, value, feature, window_s=window_s, seq=seq)

    noise = lambda scale: rng.gauss(0.0, scale)  # noqa: E731
    requests = round(300 + noise(25))
    yield put("predictions", "requests", requests)
    yield put("predictions", "shown", requests * 10)
    yield put("predictions", "mean_score", p.conversion * 1.05 + noise(0.001))
    yield put("predictions", "estimated_roc_auc", p.auc + 0.01 + noise(0.006))
    yield put("predictions", "estimated_conversion", p.conversion * 1.05 + noise(0.001))
    yield put("predictions", "score_psi", abs(p.score_psi + noise(0.01)))
    tilt = 3.0 * p.score_psi  # a drifted window has fewer low scores, more high ones
    shares = [math.exp(tilt * (b - 4.5) / 9) for b in range(BINS)]
    for b, share in enumerate(shares):
        yield put("predictions", "score_bin_share", share / sum(shares), str(b))
    for name in NUMERIC:
        base = p.feature_psi if name in DRIFTING else 0.02
        yield put("predictions", "feature_psi", abs(base + noise(0.01)), name)
    for name in CATEGORICALS:
        js = p.js if name == "category" else 0.02
        yield put("predictions", "feature_js_distance", abs(js + noise(0.005)), name)
        yield put("predictions", "feature_chi2_pvalue", 1e-6 if js > 0.1 else 0.4, name)
    for view, age in (("user", 40.0), ("product", 12.0)):
        yield put("predictions", "feature_age_p95_seconds", age + abs(noise(3.0)), view)
    if labelled:
        impressions = requests * 10
        yield put("outcomes", "impressions", impressions)
        yield put("outcomes", "ctr", max(0.0, p.ctr + noise(0.004)))
        yield put("outcomes", "conversion", max(0.0, p.conversion + noise(0.002)))
        yield put("outcomes", "roc_auc", p.auc + noise(0.012))
        yield put("outcomes", "log_loss", 0.14 + noise(0.005))
        yield put("outcomes", "concept_drift", 0.0)


def now_utc() -> datetime:
    """Now, to the whole second, as the monitor's window ends are."""
    return datetime.now(UTC).replace(microsecond=0)
