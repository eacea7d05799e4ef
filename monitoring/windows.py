"""Event-time windows of logged predictions: watermarks, mergeable aggregates, statistics.

Windows are tumbling, ``window_s`` long, aligned to the epoch, one series per
model version, over the prediction's ``ts``. A window's aggregate is built in
pieces — one per (version, window) group of a Kafka batch, on whichever worker
parsed the batch — and the pieces merge by addition: request, row and item
counts, the counts of every numeric column and of the scores in the reference
profile's bins, category counts, the returned items' scores and the oldest
feature age per request and view. A request's context and shopper columns
(:data:`PER_REQUEST`) count once per request, every other column once per
scored candidate. Binning happens once per piece, on numpy
arrays of the whole group (:func:`aggregate`).

**Watermarks.** :class:`PartitionClock` keeps the newest event time per Kafka
partition; the low watermark is the oldest of them minus the allowed lateness.
Per partition, because the source reads partitions in turns of thousands of
messages: a replay would otherwise push one partition's time hours past the
others' and call their records late. A partition that delivered nothing for
``idle_s`` of wall clock is left out, so a quiet one cannot hold every window
open; when all are quiet, the monitor closes what is open (``idle_close_s``).

>>> clock = PartitionClock(lateness_s=10.0, idle_s=30.0)
>>> clock.expect(["0-ml.predictions", "1-ml.predictions"], wall=0.0)
>>> clock.advance("1-ml.predictions", 320.0, wall=1.0)
>>> clock.low(wall=2.0)
-inf
>>> clock.advance("0-ml.predictions", 400.0, wall=20.0)
>>> clock.low(wall=21.0), clock.low(wall=35.0), clock.low(wall=60.0)
(310.0, 390.0, None)
>>> window_start(299.9, 300.0), window_start(300.0, 300.0)
(0.0, 300.0)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from monitoring import stats
from monitoring.records import SCORE, VIEWS, GroupColumns, ParsedPrediction
from training.contract import NUMERIC

# PER_REQUEST is defined with the profile, which counts the same way
from training.profiles import PER_REQUEST as PER_REQUEST
from training.profiles import ReferenceProfile

WindowKey = tuple[int, float]
"""(model version, window start in epoch seconds)."""
AGE_QUANTILE: Final = 95.0
CANDIDATE_SAMPLE: Final = 20_000


def window_start(ts: float, window_s: float) -> float:
    """Start of the tumbling window holding ``ts``."""
    return math.floor(ts / window_s) * window_s


class PartitionClock:
    """Newest event time per partition; the low watermark over the partitions not idle."""

    def __init__(self, lateness_s: float, idle_s: float) -> None:
        self.lateness_s = lateness_s
        self.idle_s = idle_s
        self.newest: dict[str, float] = {}
        self.seen: dict[str, float] = {}  # wall clock of the partition's last delivery

    def expect(self, parts: Iterable[str], wall: float) -> None:
        """Partitions that exist but may not have delivered yet: they hold the watermark."""
        for part in parts:
            self.newest.setdefault(part, -math.inf)
            self.seen.setdefault(part, wall)

    def advance(self, part: str, newest: float | None, wall: float) -> None:
        if newest is not None:
            self.newest[part] = max(newest, self.newest.get(part, -math.inf))
        else:
            self.newest.setdefault(part, -math.inf)
        self.seen[part] = wall

    def low(self, wall: float) -> float | None:
        """The watermark; None when every partition is idle (or none is known)."""
        active = [t for p, t in self.newest.items() if wall - self.seen[p] < self.idle_s]
        return min(active) - self.lateness_s if active else None

    def next_idle(self, wall: float) -> float | None:
        """When the next active partition turns idle (wall clock)."""
        times = [seen + self.idle_s for seen in self.seen.values() if wall - seen < self.idle_s]
        return min(times) if times else None

    def restart(self, wall: float) -> None:
        """After a restore: wall clocks of another process's life mean nothing."""
        self.seen = dict.fromkeys(self.seen, wall)


@dataclass(slots=True)
class WindowAggregate:
    """Everything a window's prediction statistics need, mergeable by addition."""

    requests: int = 0
    rows: int = 0
    shown: int = 0
    unbinned: int = 0  # requests aggregated without a reference profile
    returned: list[np.ndarray] = field(default_factory=list)  # returned items' scores
    # a systematic sample of every scored candidate's score, for the window's CBPE
    candidates: list[np.ndarray] = field(default_factory=list)
    ages: list[np.ndarray] = field(default_factory=list)  # (requests, views) oldest ages
    bins: dict[str, np.ndarray] = field(default_factory=dict)  # NUMERIC + SCORE
    categories: dict[str, Counter[str]] = field(default_factory=dict)

    def merge(self, other: WindowAggregate) -> None:
        self.requests += other.requests
        self.rows += other.rows
        self.shown += other.shown
        self.unbinned += other.unbinned
        self.returned.extend(other.returned)
        self.candidates.extend(other.candidates)
        if sum(len(part) for part in self.candidates) > 2 * CANDIDATE_SAMPLE:
            self.candidates = [_sample(np.concatenate(self.candidates))]
        self.ages.extend(other.ages)
        for name, counts in other.bins.items():
            mine = self.bins.get(name)
            self.bins[name] = counts.copy() if mine is None else mine + counts
        for name, tally in other.categories.items():
            self.categories.setdefault(name, Counter()).update(tally)

    @property
    def binned(self) -> bool:
        """Every request was binned against the version's reference profile."""
        return self.unbinned == 0 and bool(self.bins)


def aggregate(group: GroupColumns, profile: ReferenceProfile | None) -> WindowAggregate:
    """One piece of a window: the group's columns, binned against ``profile`` when there is one.

    Columns of :data:`PER_REQUEST` count once per request, the others once per
    scored row.
    """
    records = group.records
    returned = np.fromiter(
        (score for r in records for score in r.request.scores), dtype=np.float64
    )  # fmt: skip
    firsts = _first_rows(records)
    categories = {
        name: Counter(counts if name not in PER_REQUEST else _first_values(records, name))
        for name, counts in group.categories.items()
    }
    piece = WindowAggregate(
        requests=len(records),
        rows=group.rows,
        shown=len(returned),
        unbinned=0 if profile is not None else len(records),
        returned=[returned],
        candidates=[_sample(group.numbers[SCORE])],
        ages=[np.array([r.ages for r in records], dtype=np.float64).reshape(-1, len(VIEWS))],
        categories=categories,
    )
    if profile is not None:
        for name in (*NUMERIC, SCORE):
            if name == SCORE or name in profile.numeric:
                values = group.numbers[name]
                piece.bins[name] = profile.bin_numeric(
                    name, values[firsts] if name in PER_REQUEST else values
                )
    return piece


def _sample(scores: np.ndarray) -> np.ndarray:
    """At most about :data:`CANDIDATE_SAMPLE` of the candidate scores, evenly spread.

    CBPE over every candidate of a window would keep ~500 scores per request in
    the state (and its snapshots); a systematic sample estimates the same pooled
    AUC (CBPE's spread at 20,000 scores is ~0.002).
    """
    step = max(1, len(scores) // CANDIDATE_SAMPLE)
    return np.array(scores[::step], dtype=np.float64)


def _first_rows(records: Sequence[ParsedPrediction]) -> np.ndarray:
    """Where each record's rows start in the group's columns (records without rows left out)."""
    sizes = np.fromiter((r.rows for r in records), dtype=np.int64, count=len(records))
    starts = np.cumsum(sizes) - sizes
    return starts[sizes > 0]


def _first_values(records: Sequence[ParsedPrediction], name: str) -> list[str]:
    return [r.columns[name][0] for r in records if r.rows]


# -- a closed window's statistics ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PredictionStats:
    """The "predictions" phase of one window, before it gets a sequence number."""

    metrics: dict[str, float]
    features: dict[str, dict[str, float]]
    score_shares: list[float]
    reference_shares: list[float]
    feature_ages: dict[str, float]


def prediction_stats(window: WindowAggregate, profile: ReferenceProfile | None) -> PredictionStats:
    """Counts, score summaries and CBPE estimates, and drift when there is a reference."""
    returned = np.concatenate(window.returned) if window.returned else np.empty(0)
    candidates = np.concatenate(window.candidates) if window.candidates else np.empty(0)
    metrics = {
        "requests": float(window.requests),
        "rows": float(window.rows),
        "shown": float(window.shown),
        "mean_score": float(returned.mean()) if returned.size else math.nan,
        "estimated_roc_auc": stats.estimated_roc_auc(returned),
        "estimated_conversion": stats.estimated_conversion(returned),
        # comparable with the reference's estimate, made the same way over every candidate
        "candidate_estimated_roc_auc": stats.estimated_roc_auc(candidates),
    }
    features: dict[str, dict[str, float]] = {}
    score_shares: list[float] = []
    reference_shares: list[float] = []
    if profile is not None and window.binned:
        metrics["score_psi"] = stats.psi(profile.score.counts, window.bins[SCORE])
        score_shares = _shares(window.bins[SCORE])
        reference_shares = _shares(np.asarray(profile.score.counts))
        features = feature_drift(window, profile)
    return PredictionStats(metrics, features, score_shares, reference_shares, _ages(window))


def feature_drift(
    window: WindowAggregate, profile: ReferenceProfile
) -> dict[str, dict[str, float]]:
    """PSI per numeric column, chi-square p-value and JS distance per categorical one."""
    drift: dict[str, dict[str, float]] = {}
    for name, counts in window.bins.items():
        if name != SCORE:
            drift[name] = {"psi": stats.psi(profile.numeric[name].counts, counts)}
    for name, current in window.categories.items():
        reference = profile.categorical.get(name)
        if reference is not None:
            drift[name] = {
                "chi2_pvalue": stats.chi_square_pvalue(reference.counts, current),
                "js_distance": stats.js_distance(reference.counts, current),
            }
    return drift


def _shares(counts: np.ndarray) -> list[float]:
    total = float(counts.sum())
    return [float(c) / total if total else math.nan for c in counts]


def _ages(window: WindowAggregate) -> dict[str, float]:
    """The 95th percentile over requests of each view's oldest feature (views with data)."""
    if not window.ages:
        return {}
    ages = np.concatenate(window.ages)
    out = {}
    for column, view in enumerate(VIEWS):
        known = ages[:, column][np.isfinite(ages[:, column])]
        if known.size:
            out[view] = float(np.percentile(known, AGE_QUANTILE))
    return out


def reference_summary(profile: ReferenceProfile | None) -> Mapping[str, float | bool]:
    """What the records carry about the reference: validation AUC and positive rate, and CBPE.

    ``estimated_roc_auc`` is the reference's CBPE over every candidate of its
    sampled requests: what the window's ``candidate_estimated_roc_auc`` compares with.
    """
    if profile is None:
        return {"available": False}
    return {
        "available": True,
        "roc_auc": profile.roc_auc,
        "positive_rate": profile.positive_rate,
        "estimated_roc_auc": profile.estimated_roc_auc,
    }


@dataclass(frozen=True, slots=True)
class MonitorRecord:
    """One window and phase of one model version: what ``ml.monitor`` and Delta get."""

    phase: str  # "predictions" | "outcomes"
    seq: int
    model_name: str
    version: int
    window_start: float
    window_end: float
    emitted_at: float
    metrics: dict[str, float]
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    score_shares: list[float] = field(default_factory=list)
    reference_shares: list[float] = field(default_factory=list)
    feature_ages: dict[str, float] = field(default_factory=dict)
    reference: Mapping[str, float | bool] = field(default_factory=dict)
    detections: int = 0  # concept drifts ADWIN found in this window's labels
