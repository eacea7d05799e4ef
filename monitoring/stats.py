"""Drift and performance statistics of one monitoring window: pure numpy and scipy.

Drift compares a window's distribution with the reference profile's
(:mod:`training.profiles`):

- :func:`psi`, the population stability index over the reference's bins,
  ``sum((q - p) * ln(q / p))`` with reference shares ``p`` and window shares
  ``q``; shares below ``epsilon`` are raised to it so an empty bin costs a
  bounded amount instead of infinity.
- :func:`chi_square_pvalue`, Pearson's chi-square test that the window's
  categories and the reference's come from one distribution; a category the
  reference never saw counts.
- :func:`js_distance`, the Jensen-Shannon distance between the two category
  distributions, base 2, so 0 (same) .. 1 (disjoint).

Performance, once labels arrive: :func:`roc_auc` (exact, ties count half) and
:func:`log_loss`. Before labels, from the scores alone (confidence-based
performance estimation, after NannyML's CBPE): :func:`estimated_roc_auc` and
:func:`estimated_conversion` are what the AUC and the positive rate will be if
the scores are calibrated probabilities. :func:`estimated_roc_auc` is
:func:`training.metrics.estimated_roc_auc`, re-exported: reference profiles
record it at training time, and training may not import monitoring.

>>> round(psi([50, 50], [60, 40]), 4)
0.0405
>>> round(js_distance({"a": 1}, {"b": 1}), 4)
1.0
>>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
0.75
>>> estimated_roc_auc(np.array([0.5, 0.5, 0.5]))
0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2

from training import metrics, profiles
from training.metrics import estimated_roc_auc as estimated_roc_auc

LOG_LOSS_EPSILON: Final = 1e-7


def psi(
    reference_counts: Sequence[int] | np.ndarray,
    current_counts: Sequence[int] | np.ndarray,
    *,
    epsilon: float = 1e-4,
) -> float:
    """Population stability index of ``current_counts`` against ``reference_counts``.

    Both are counts over the same bins. NaN when either holds no rows. Under no
    drift it is about ``(1/n + 1/m) * chi2(bins - 1)`` for ``n`` reference and
    ``m`` window rows, so a fixed threshold needs windows of enough rows
    (docs/monitoring-statistics.md has the measured false-alarm rates).
    """
    reference = np.asarray(reference_counts, dtype=np.float64)
    current = np.asarray(current_counts, dtype=np.float64)
    if reference.shape != current.shape:
        raise ValueError(f"bins differ: {reference.shape} reference, {current.shape} current")
    reference_total, current_total = reference.sum(), current.sum()
    if reference_total <= 0 or current_total <= 0:
        return float("nan")
    p = np.maximum(reference / reference_total, epsilon)
    q = np.maximum(current / current_total, epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def _aligned(
    reference: Mapping[str, int], current: Mapping[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both over the union of their categories (reference's first)."""
    names = list(reference) + [name for name in current if name not in reference]
    return (
        np.array([reference.get(name, 0) for name in names], dtype=np.float64),
        np.array([current.get(name, 0) for name in names], dtype=np.float64),
    )


def chi_square_pvalue(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """P-value of Pearson's chi-square test that both counts come from one distribution.

    The test of homogeneity on the 2 x K table (reference, window) x (union of
    categories): each cell's expected count is its row total times the pooled
    share of its category, and the statistic has K - 1 degrees of freedom.
    When the reference is much larger than the window this is the
    goodness-of-fit test with expected counts from the reference's shares; it
    differs in also counting the reference's own sampling noise, without which
    a window of 10,000 rows against a 40,000-row reference alarmed 9.5 % of the
    time at p < 0.01 on steady data instead of 1 %. A category the reference
    never saw counts: its pooled share is small but not zero, so a few rows of
    it drive the p-value towards 0 (no smoothing is needed). 1.0 with one
    category; NaN when the window or the reference is empty.
    """
    ref, cur = _aligned(reference, current)
    ref_total, cur_total = ref.sum(), cur.sum()
    if ref_total <= 0 or cur_total <= 0:
        return float("nan")
    seen = (ref + cur) > 0
    if int(seen.sum()) < 2:
        return 1.0
    pooled = (ref[seen] + cur[seen]) / (ref_total + cur_total)
    statistic = float(
        np.sum((ref[seen] - ref_total * pooled) ** 2 / (ref_total * pooled))
        + np.sum((cur[seen] - cur_total * pooled) ** 2 / (cur_total * pooled))
    )
    return float(chi2.sf(statistic, int(seen.sum()) - 1))


def js_distance(reference: Mapping[str, int], current: Mapping[str, int]) -> float:
    """Jensen-Shannon distance (base 2, 0..1) of the two category distributions.

    No smoothing: the divergence is finite with disjoint supports (it is then 1).
    NaN when either side is empty.
    """
    ref, cur = _aligned(reference, current)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return float("nan")
    distance = float(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2.0))
    # rounding can leave a hair below 0 under the square root (NaN) or above 1
    return 0.0 if np.isnan(distance) else min(distance, 1.0)


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC (Mann-Whitney, tied scores count half); NaN without both classes."""
    return metrics.roc_auc(labels, scores)


def log_loss(labels: ArrayLike, scores: ArrayLike) -> float:
    """Mean binary log loss, scores clipped to [1e-7, 1 - 1e-7]; NaN without rows."""
    if np.size(labels) == 0:
        return float("nan")
    return metrics.log_loss(labels, scores, eps=LOG_LOSS_EPSILON)


def estimated_conversion(scores: ArrayLike) -> float:
    """The positive rate expected if ``scores`` are calibrated: their mean (NaN if none)."""
    p = np.asarray(scores, dtype=np.float64)
    return float(p.mean()) if p.size else float("nan")


def numeric_counts(edges: ArrayLike, values: ArrayLike) -> np.ndarray:
    """Counts of ``values`` in the bins of ``edges`` (a reference profile's cut points)."""
    return profiles.bin_counts(edges, values)


def category_counts(values: Iterable[object]) -> dict[str, int]:
    """Counts of ``values`` by their text; a list is fastest (see :mod:`training.profiles`)."""
    return profiles.category_counts(values)
