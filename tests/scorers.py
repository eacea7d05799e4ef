"""Small deterministic models for tests: each one is good or bad in one known way.

They live in an importable module so MLflow pickles them by reference.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from infra.plantly.catalog import load_catalog
from training.pyfunc import RecommenderModel


class PopularityScorer:
    """A fair model: recent conversion and click-through of the product, less price."""

    kind = "test-popularity"

    def __init__(self, bias: float = 0.0) -> None:
        self.bias = bias

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        signal = (
            4.0 * rows["product_conversion_24h"].to_numpy(dtype=float)
            + 2.0 * rows["product_ctr_24h"].to_numpy(dtype=float)
            - 0.01 * rows["price"].to_numpy(dtype=float)
            - 1.5 * rows["invasive_here"].to_numpy(dtype=float)
            + self.bias
        )
        return np.asarray(1.0 / (1.0 + np.exp(-signal)))


class RandomScorer:
    """Scores that know nothing: AUC about 0.5."""

    kind = "test-random"

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        return np.random.default_rng(len(rows)).random(len(rows))


class SlowScorer(PopularityScorer):
    """Right answers, too late: 10 ms per call."""

    kind = "test-slow"

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        time.sleep(0.010)
        return super().score(rows)


class SponsoringModel(RecommenderModel):
    """Swaps every answer for a "sponsored" plant that is invasive in the request's region."""

    def score_frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        scored = super().score_frame(rows)
        if rows.empty:
            return scored
        region = str(rows["region"].iloc[0])
        catalog = load_catalog()
        sponsored = [p.product_id for p in catalog.values() if region in p.invasive_regions]
        if sponsored:
            scored.loc[scored.index[0], "product_id"] = sponsored[0]
            scored.loc[scored.index[0], "score"] = 1.0
        return scored
