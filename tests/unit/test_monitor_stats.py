"""Drift and performance statistics against hand-computed values and brute force."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest

from monitoring.concept import ConceptDriftDetector, absolute_errors
from monitoring.stats import (
    category_counts,
    chi_square_pvalue,
    estimated_conversion,
    estimated_roc_auc,
    js_distance,
    log_loss,
    numeric_counts,
    psi,
    roc_auc,
)

# -- PSI ----------------------------------------------------------------------


def test_psi_matches_the_hand_computed_sum() -> None:
    # p = (0.5, 0.3, 0.2), q = (0.3, 0.3, 0.4)
    # (0.3 - 0.5) ln(0.3/0.5) = -0.2 * -0.5108256 = 0.1021651
    # (0.3 - 0.3) ln(1)       = 0
    # (0.4 - 0.2) ln(0.4/0.2) =  0.2 *  0.6931472 = 0.1386294
    assert psi([50, 30, 20], [30, 30, 40]) == pytest.approx(0.2407945, abs=1e-7)
    # counts, not shares: scaling either side changes nothing
    assert psi([500, 300, 200], [3, 3, 4]) == pytest.approx(0.2407945, abs=1e-7)


def test_psi_bounds_an_empty_bin_with_epsilon() -> None:
    # p = (1, 0 -> 1e-4), q = (0.5, 0.5)
    # (0.5 - 1) ln(0.5/1)         = 0.3465736
    # (0.5 - 1e-4) ln(0.5/1e-4)   = 0.4999 * 8.5171932 = 4.2577449
    assert psi([100, 0], [50, 50]) == pytest.approx(4.6043185, abs=1e-6)
    # a larger epsilon costs less: 0.499 * ln(0.5/0.001) = 0.499 * 6.2146081
    assert psi([100, 0], [50, 50], epsilon=1e-3) == pytest.approx(
        0.5 * math.log(2) + 0.499 * math.log(500), abs=1e-9
    )


def test_psi_is_zero_for_equal_shares_and_nan_without_rows() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(psi([10, 20], [0, 0])) and math.isnan(psi([0, 0], [1, 2]))
    with pytest.raises(ValueError, match="bins differ"):
        psi([1, 2, 3], [1, 2])


# -- chi-square ----------------------------------------------------------------


def test_chi_square_matches_the_hand_computed_test_of_homogeneity() -> None:
    # reference a=30 b=10 (40), window a=10 b=10 (20); pooled shares a=40/60, b=20/60
    # expected: reference 26.667, 13.333; window 13.333, 6.667
    # chi2 = 3.333²/26.667 + 3.333²/13.333 + 3.333²/13.333 + 3.333²/6.667
    #      = 0.416667 + 0.833333 + 0.833333 + 1.666667 = 3.75, 1 degree of freedom
    # p = P(chi2_1 > 3.75) = erfc(sqrt(3.75 / 2)) = 0.052807
    expected = math.erfc(math.sqrt(3.75 / 2))
    assert expected == pytest.approx(0.052807, abs=1e-6)
    assert chi_square_pvalue({"a": 30, "b": 10}, {"a": 10, "b": 10}) == pytest.approx(expected)


def test_chi_square_with_three_categories() -> None:
    # reference 20/20/20, window 10/20/30: pooled 30/40/50 of 120, expected 15/20/25 both rows
    # chi2 = 25/15 + 0 + 25/25 + 25/15 + 0 + 25/25 = 5.3333, 2 degrees of freedom
    # p = P(chi2_2 > x) = exp(-x/2) = exp(-2.6667) = 0.069483
    pvalue = chi_square_pvalue({"a": 20, "b": 20, "c": 20}, {"a": 10, "b": 20, "c": 30})
    assert pvalue == pytest.approx(math.exp(-16 / 6), rel=1e-9)
    assert pvalue == pytest.approx(0.069483, abs=1e-6)


def test_chi_square_counts_a_category_the_reference_never_saw() -> None:
    reference = {"mobile": 6_000, "desktop": 4_000}
    assert chi_square_pvalue(reference, {"mobile": 60, "desktop": 40}) == pytest.approx(1.0)
    # 3 % of the window on an unseen device: shares of the seen ones barely move
    assert chi_square_pvalue(reference, {"mobile": 58, "desktop": 39, "tv": 3}) < 1e-6


def test_chi_square_edge_cases() -> None:
    assert chi_square_pvalue({"a": 10}, {"a": 3}) == 1.0  # one category: nothing to test
    assert math.isnan(chi_square_pvalue({"a": 10}, {}))
    assert math.isnan(chi_square_pvalue({}, {"a": 3}))
    # zero counts listed in the reference add no degree of freedom
    assert chi_square_pvalue({"a": 30, "b": 10, "z": 0}, {"a": 10, "b": 10}) == pytest.approx(
        math.erfc(math.sqrt(3.75 / 2))
    )


# -- Jensen-Shannon ---------------------------------------------------------------


def test_js_distance_matches_the_hand_computed_value() -> None:
    # P = (0.5, 0.5), Q = (1, 0), M = (0.75, 0.25)
    # KL(P||M) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25) = -0.2924813 + 0.5 = 0.2075187
    # KL(Q||M) = log2(1/0.75) = 0.4150375
    # JSD = (0.2075187 + 0.4150375) / 2 = 0.3112781; distance = sqrt = 0.5579230
    assert js_distance({"a": 5, "b": 5}, {"a": 7}) == pytest.approx(0.5579230, abs=1e-7)
    assert js_distance({"a": 7}, {"a": 5, "b": 5}) == pytest.approx(0.5579230, abs=1e-7)


def test_js_distance_is_zero_for_equal_one_for_disjoint_and_ignores_order() -> None:
    assert js_distance({"a": 2, "b": 6}, {"b": 3, "a": 1}) == pytest.approx(0.0, abs=1e-7)
    assert js_distance({"a": 4}, {"b": 9}) == pytest.approx(1.0)
    assert math.isnan(js_distance({"a": 4}, {}))


# -- realised performance ----------------------------------------------------------


def _pairs_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_roc_auc_equals_the_brute_force_pair_count_with_ties() -> None:
    rng = np.random.default_rng(11)
    for _ in range(5):
        scores = np.round(rng.random(300), 1)  # many ties
        labels = (rng.random(300) < scores).astype(int)
        assert roc_auc(labels, scores) == pytest.approx(_pairs_auc(labels, scores), abs=1e-12)
    assert math.isnan(roc_auc(np.zeros(5), np.linspace(0, 1, 5)))


def test_log_loss_by_hand_and_clipped() -> None:
    # -(ln 0.8 + ln 0.6) / 2 = (0.2231436 + 0.5108256) / 2
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(0.3669846, abs=1e-7)
    # a confident miss costs -ln(1e-7) = 16.118, not infinity
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7))
    assert math.isnan(log_loss(np.array([]), np.array([])))


# -- estimated performance (CBPE) -------------------------------------------------


def _pairs_cbpe(scores: np.ndarray) -> float:
    numerator = denominator = 0.0
    for i, j in product(range(len(scores)), repeat=2):
        if i == j:
            continue
        weight = scores[i] * (1 - scores[j])
        denominator += weight
        numerator += weight * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j]
                               else 0.0)  # fmt: skip
    return numerator / denominator


def test_estimated_auc_equals_the_quadratic_formula() -> None:
    rng = np.random.default_rng(5)
    for size in (2, 3, 40, 150):
        scores = np.round(rng.beta(0.8, 4.0, size), 2)  # rounding makes ties
        assert estimated_roc_auc(scores) == pytest.approx(_pairs_cbpe(scores), abs=1e-12)
    # by hand: pairs (0.1+, 0.9-) weigh 0.1 * 0.1, (0.9+, 0.1-) weigh 0.9 * 0.9: 0.81 / 0.82
    assert estimated_roc_auc(np.array([0.1, 0.9])) == pytest.approx(0.81 / 0.82)


def test_estimated_auc_matches_the_realised_auc_of_calibrated_scores() -> None:
    rng = np.random.default_rng(8)
    scores = rng.beta(0.5, 8.0, 200_000)
    labels = rng.random(scores.size) < scores
    assert estimated_roc_auc(scores) == pytest.approx(roc_auc(labels, scores), abs=0.01)
    assert estimated_conversion(scores) == pytest.approx(labels.mean(), abs=0.002)


def test_estimated_auc_edge_cases() -> None:
    assert estimated_roc_auc(np.full(10, 0.3)) == pytest.approx(0.5)  # all tied
    assert math.isnan(estimated_roc_auc(np.array([0.4])))
    assert math.isnan(estimated_roc_auc(np.zeros(5)))  # no row can be a positive
    assert math.isnan(estimated_conversion(np.array([])))


# -- counting helpers -----------------------------------------------------------


def test_numeric_counts_follow_the_profile_bin_rule() -> None:
    # bins: x < 1, 1 <= x < 2, x >= 2 (NaN last)
    counts = numeric_counts([1.0, 2.0], [0.0, 1.0, 1.5, 2.0, 5.0, float("nan")])
    assert counts.tolist() == [1, 2, 3]
    assert numeric_counts([], [1, 2, 3]).tolist() == [3]


def test_category_counts_agree_for_lists_and_arrays() -> None:
    values = ["US-CA", "US-NY", "US-CA", "EU-DE"]
    expected = {"US-CA": 2, "US-NY": 1, "EU-DE": 1}
    assert category_counts(values) == expected
    assert category_counts(np.array(values)) == expected
    assert category_counts(np.array(values, dtype=object)) == expected
    assert category_counts([]) == {}


# -- concept drift -----------------------------------------------------------------


def _errors(rng: np.random.Generator, n: int, factor: float) -> np.ndarray:
    """Errors of a calibrated model (mean 0.055) whose positives become ``factor`` x as likely."""
    scores = rng.beta(0.5, 16.0, n)
    return absolute_errors(rng.random(n) < np.minimum(factor * scores, 1.0), scores)


def test_concept_detector_stays_quiet_on_stationary_errors() -> None:
    detector = ConceptDriftDetector()
    assert detector.update_many(_errors(np.random.default_rng(21), 200_000, 1.0)) == 0
    assert detector.detections == 0 and detector.examples == 200_000
    assert detector.mean_error == pytest.approx(0.055, abs=0.01)


def test_concept_detector_fires_soon_after_an_error_rate_jump() -> None:
    rng = np.random.default_rng(22)
    detector = ConceptDriftDetector()
    assert detector.update_many(_errors(rng, 20_000, 1.0)) == 0
    after = _errors(rng, 2_000, 5.0)  # mean error 0.055 -> 0.155
    first = next((i for i, error in enumerate(after) if detector.update(float(error))), None)
    assert first is not None and first < 1_000
    assert detector.detections >= 1
