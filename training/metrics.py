"""Offline metrics: ROC AUC with its standard error, log loss, and per-segment AUC.

AUC is the Mann-Whitney statistic (ties count half), so it needs no extra
library. Its standard error follows Hanley & McNeil (1982): the gates use it to
tell a segment that is worse from one that is only small.

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
0.5
>>> round(log_loss([0, 1], [0.2, 0.9]), 4)
0.1643
>>> round(auc_standard_error(0.75, positives=50, negatives=500), 3)
0.041
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

SEGMENT_COLUMNS = ("region", "device")


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """P(a random positive scores above a random negative); NaN without both classes."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(s)
    rank_sum = float(ranks[y].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    mean_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_ranks, ends - starts)
    return ranks


def log_loss(labels: ArrayLike, probabilities: ArrayLike, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley-McNeil standard error of an AUC estimate."""
    if positives == 0 or negatives == 0 or math.isnan(auc):
        return float("inf")
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


@dataclass(frozen=True, slots=True)
class SegmentAuc:
    """AUC of the rows where ``column == value``."""

    column: str
    value: str
    rows: int
    positives: int
    auc: float
    standard_error: float

    @property
    def name(self) -> str:
        return f"{self.column}={self.value}"


def segment_aucs(
    frame: pd.DataFrame,
    scores: ArrayLike,
    columns: Sequence[str] = SEGMENT_COLUMNS,
    label: str = "label",
) -> list[SegmentAuc]:
    """One :class:`SegmentAuc` per value of each of ``columns``, sorted by name."""
    s = np.asarray(scores, dtype=np.float64)
    y = frame[label].to_numpy().astype(bool)
    found = []
    for column in columns:
        values = frame[column].to_numpy()
        for value in sorted(set(values.tolist())):
            mask = values == value
            positives = int(y[mask].sum())
            rows = int(mask.sum())
            auc = roc_auc(y[mask], s[mask])
            error = auc_standard_error(auc, positives, rows - positives)
            found.append(SegmentAuc(column, str(value), rows, positives, auc, error))
    return found
