"""How often drift statistics cross the alert thresholds on steady data, and what a shift gives.

The thresholds in ``monitoring/alerts/*.rules.yml`` cite these numbers. Steady
means every window is drawn from the very distribution the reference was
profiled on, so every crossing is a false alarm caused by sampling noise alone.
Real steady traffic also has daily rhythms that this cannot see; the 7-day
``steady`` replay measures those.

``python -m tests.benchmarks.psi_noise`` prints one JSON document (~20 s on one core).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

BINS = 10
REFERENCE_ROWS = 100_000
TRIALS = 20_000
WINDOW_ROWS = (100, 1_000, 10_000)
EPSILON = 1e-4  # as monitoring.stats.psi


def psi(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """PSI of each row of ``current`` counts against ``reference`` counts (last axis: bins)."""
    ref = np.clip(reference / reference.sum(axis=-1, keepdims=True), EPSILON, None)
    cur = np.clip(current / current.sum(axis=-1, keepdims=True), EPSILON, None)
    result: np.ndarray = ((cur - ref) * np.log(cur / ref)).sum(axis=-1)
    return result


def quantile_edges(sample: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior cut points as the reference profile makes them: unique quantiles."""
    return np.unique(np.quantile(sample, np.linspace(0, 1, bins + 1)[1:-1]))


def summary(values: np.ndarray, *, thresholds: tuple[float, ...] = (0.1, 0.2)) -> dict[str, float]:
    """Mean, p99, largest, and the share of windows over each threshold."""
    out = {
        "mean": round(float(values.mean()), 5),
        "p99": round(float(np.quantile(values, 0.99)), 5),
        "max": round(float(values.max()), 5),
    }
    return out | {f"share_over_{t}": float((values > t).mean()) for t in thresholds}


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _columns(rng: np.random.Generator) -> dict[str, Callable[[int], np.ndarray]]:
    # a price-like skewed continuous column, and a sparse count like clicks_1h
    def lognormal(n: int) -> np.ndarray:
        return rng.lognormal(0.0, 1.0, n)

    def poisson(n: int) -> np.ndarray:
        return np.asarray(rng.poisson(0.5, n), dtype=float)

    return {"lognormal": lognormal, "poisson_0.5": poisson}


def steady_false_alarms(rng: np.random.Generator) -> dict[str, Any]:
    """P(PSI > 0.1) and P(PSI > 0.2) per window of n rows, steady data."""
    out: dict[str, Any] = {}
    for name, draw in _columns(rng).items():
        edges = quantile_edges(draw(REFERENCE_ROWS))
        reference = bin_counts(edges, draw(REFERENCE_ROWS))
        truth = bin_counts(edges, draw(2_000_000)) / 2_000_000
        rows: dict[str, Any] = {"bins": len(edges) + 1}
        for n in WINDOW_ROWS:
            rows[str(n)] = summary(psi(reference, rng.multinomial(n, truth, size=TRIALS)))
        out[name] = rows
    return out


def demo_window(rng: np.random.Generator, requests: int = 1_000, candidates: int = 50) -> Any:
    """A 1-minute demo window: user columns repeat per candidate, product columns vary.

    A user value copied to 50 candidate rows leaves the bin shares unchanged, so
    user columns behave like ``requests`` rows; product columns take one value
    per product of a 180-plant catalog, drawn with a skewed popularity.
    """
    users = rng.lognormal(0.0, 1.0, 1_000_000)
    edges = quantile_edges(users)
    reference = bin_counts(edges, users[:REFERENCE_ROWS])
    truth = bin_counts(edges, users) / len(users)
    user_psi = psi(reference, rng.multinomial(requests, truth, size=TRIALS))
    repeated = psi(reference, rng.multinomial(requests, truth, size=TRIALS) * candidates)
    product_value = rng.lognormal(0.0, 1.0, 180)
    popularity = rng.zipf(1.5, 180).astype(float)
    popularity /= popularity.sum()
    product_edges = quantile_edges(np.repeat(product_value, (popularity * 1e5).astype(int)))
    product_bins = np.searchsorted(product_edges, product_value, side="right")
    onehot = np.eye(len(product_edges) + 1)[product_bins]
    ref_products = rng.multinomial(REFERENCE_ROWS, popularity) @ onehot
    windows = rng.multinomial(requests * candidates, popularity, size=TRIALS) @ onehot
    product_psi = psi(ref_products, windows)
    return {
        "user_column": summary(user_psi),
        "user_column_x50_rows": summary(repeated),
        "product_column": summary(product_psi),
    }


def shift_response(rng: np.random.Generator) -> dict[str, Any]:
    """PSI of 1,000-row windows after a mean shift of d sd, and with a share f of rows shifted."""
    base = rng.normal(0.0, 1.0, REFERENCE_ROWS)
    edges = quantile_edges(base)
    reference = bin_counts(edges, base)
    out = {}
    for d in (0.25, 0.5, 1.0, 2.0):
        out[f"shift_{d}sd"] = float(psi(reference, bin_counts(edges, rng.normal(d, 1, 1_000))))
    for d in (1.0, 2.0):
        for share in (0.25, 0.5, 0.75):
            shifted = int(1_000 * share)
            window = np.concatenate([rng.normal(d, 1, shifted), rng.normal(0, 1, 1_000 - shifted)])
            out[f"shift_{d}sd_share_{share}"] = float(psi(reference, bin_counts(edges, window)))
    return {name: round(value, 4) for name, value in out.items()}


def js_distance_noise(rng: np.random.Generator, requests: int) -> dict[str, Any]:
    """Jensen-Shannon distance (base 2) of a steady 18-region column at ``requests`` rows."""
    weights = rng.dirichlet(np.ones(18) * 2.0)
    reference = rng.multinomial(REFERENCE_ROWS, weights).astype(float)
    windows = rng.multinomial(requests, weights, size=TRIALS).astype(float)
    p = reference / reference.sum()
    q = windows / windows.sum(axis=1, keepdims=True)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / b), 0.0)
        result: np.ndarray = terms.sum(axis=-1)
        return result

    distance = np.sqrt(np.clip((kl(p, m) + kl(q, m)) / 2, 0, None))
    return {"rows": requests, **summary(distance)}


def chi_square_tail(rows: int, threshold: float = 0.2, bins: int = BINS) -> float:
    """P(PSI > threshold) from PSI ~ (1/n + 1/m) chi2(bins - 1) (NOTES.md): beyond simulation."""
    from scipy.stats import chi2

    return float(chi2.sf(threshold / (1 / rows + 1 / REFERENCE_ROWS), bins - 1))


def auc_noise(rng: np.random.Generator, shown: int = 10_000, rate: float = 0.03) -> dict[str, Any]:
    """Spread of a window's ROC AUC (binormal, true AUC ~0.75) with ``shown`` labelled items."""
    from scipy.stats import rankdata

    values = []
    for _ in range(500):
        labels = rng.random(shown) < rate
        scores = rng.normal(0.0, 1.0, shown) + labels * 0.95  # AUC = Phi(0.95 / sqrt 2) ~ 0.75
        ranks = rankdata(scores)
        positives = labels.sum()
        values.append((ranks[labels].sum() - positives * (positives + 1) / 2)
                      / (positives * (shown - positives)))  # fmt: skip
    spread = np.asarray(values)
    return {"shown": shown, "mean": round(float(spread.mean()), 4),
            "sd": round(float(spread.std()), 4), "min": round(float(spread.min()), 4)}  # fmt: skip


def cbpe_noise(rng: np.random.Generator, shown: int = 10_000) -> dict[str, Any]:
    """Spread of the confidence-based AUC estimate over windows of calibrated scores.

    Each window's scores are drawn from one steady distribution (beta, mean ~3 %);
    the estimate is the AUC expected if every score is the true purchase probability.
    """
    values = []
    for _ in range(500):
        scores = np.sort(rng.beta(0.6, 19.0, shown))
        negatives_below = np.cumsum(1 - scores) - (1 - scores)  # ties: none with floats
        expected = (scores * negatives_below).sum() / (scores.sum() * (1 - scores).sum())
        values.append(expected)
    spread = np.asarray(values)
    return {"shown": shown, "mean": round(float(spread.mean()), 4),
            "sd": round(float(spread.std()), 4), "min": round(float(spread.min()), 4)}  # fmt: skip


def bench_psi_noise(seed: int = 7) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "trials_per_case": TRIALS,
        "reference_rows": REFERENCE_ROWS,
        "steady_windows": steady_false_alarms(rng),
        "demo_window_1000_requests_x50": demo_window(rng),
        "shift_response_1000_rows": shift_response(rng),
        "psi_over_0.2_chi_square_tail": {str(n): chi_square_tail(n) for n in (100, 200, 500, 1000)},
        "js_distance_18_categories": [js_distance_noise(rng, n) for n in (100, 500, 1_000, 10_000)],
        "auc_noise": [auc_noise(rng, 1_000), auc_noise(rng, 10_000)],
        "estimated_auc_noise": [cbpe_noise(rng, 1_000), cbpe_noise(rng, 10_000)],
    }


if __name__ == "__main__":
    json.dump(bench_psi_noise(), sys.stdout, indent=2)
    sys.stdout.write("\n")
