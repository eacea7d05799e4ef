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

Before labels exist, :func:`estimated_roc_auc` is the AUC to expect if the
scores are calibrated probabilities (confidence-based performance estimation,
after NannyML's CBPE). It lives here, below ``monitoring``, because a model's
reference profile (:mod:`training.profiles`) records it at training time and
the monitor (``monitoring.stats`` re-exports it) computes it per window: one
implementation for both.
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


def estimated_roc_auc(scores: ArrayLike) -> float:
    """The ROC AUC expected if ``scores`` are calibrated probabilities (CBPE).

    Row ``i`` is a positive with probability ``p_i = s_i``, so the pair
    (``i`` positive, ``j`` negative) occurs with weight ``p_i (1 - p_j)``; the
    expected AUC is, over ordered pairs ``i != j``::

        sum p_i (1 - p_j) [s_i > s_j] (+ 1/2 if s_i == s_j)  /  sum p_i (1 - p_j)

    Computed in O(n log n): sort, then per distinct score the weight of the
    negatives strictly below it. NaN with fewer than two rows or when every
    score is 0 or every score is 1 (no pair can be a positive and a negative).

    >>> round(estimated_roc_auc(np.array([0.1, 0.9])), 4)
    0.9878
    >>> estimated_roc_auc(np.array([0.5, 0.5, 0.5]))
    0.5
    """
    p = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    if p.size < 2:
        return float("nan")
    values, group = np.unique(p, return_inverse=True)
    positive = np.bincount(group, weights=p, minlength=values.size)  # sum of p per score
    negative = np.bincount(group, weights=1.0 - p, minlength=values.size)
    negatives_below = np.cumsum(negative) - negative
    self_pairs = float(np.sum(p * (1.0 - p)))  # i == j: not a pair
    ties = float(np.sum(positive * negative)) - self_pairs
    numerator = float(np.sum(positive * negatives_below)) + 0.5 * ties
    denominator = float(positive.sum() * negative.sum()) - self_pairs
    if denominator <= 1e-12:
        return float("nan")
    return numerator / denominator


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
