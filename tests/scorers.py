"""Small deterministic models for tests: each one is good or bad in one known way.

They live in an importable module so MLflow pickles them by reference.
"""

from __future__ import annotations

import time

import numpy as np

from infra.plantly.catalog import load_catalog
from training.contract import Rows
from training.pyfunc import RecommenderModel


class PopularityScorer:
    """A fair model: recent conversion and click-through of the product, less price."""

    kind = "test-popularity"

    def __init__(self, bias: float = 0.0) -> None:
        self.bias = bias

    def score(self, rows: Rows) -> np.ndarray:
        def column(name: str) -> np.ndarray:
            return np.asarray(rows[name], dtype=np.float64)

        signal = (
            4.0 * column("product_conversion_24h")
            + 2.0 * column("product_ctr_24h")
            - 0.01 * column("price")
            - 1.5 * column("invasive_here")
            + self.bias
        )
        return np.asarray(1.0 / (1.0 + np.exp(-signal)))


class RandomScorer:
    """Scores that know nothing: AUC about 0.5."""

    kind = "test-random"

    def score(self, rows: Rows) -> np.ndarray:
        return np.random.default_rng(len(rows)).random(len(rows))


class SlowScorer(PopularityScorer):
    """Right answers, too late: 10 ms per call."""

    kind = "test-slow"

    def score(self, rows: Rows) -> np.ndarray:
        time.sleep(0.010)
        return super().score(rows)


class SponsoringModel(RecommenderModel):
    """Swaps every answer for a "sponsored" plant that is invasive in the request's region."""

    def score_columns(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = super().score_columns(rows)
        if len(rows) == 0:
            return ids, scores
        region = str(np.asarray(rows["region"])[0])
        catalog = load_catalog()
        sponsored = [p.product_id for p in catalog.values() if region in p.invasive_regions]
        if sponsored:
            ids = ids.astype(object)
            ids[0], scores[0] = sponsored[0], 1.0
        return ids, scores
