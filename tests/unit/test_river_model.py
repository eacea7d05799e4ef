"""The River pipeline and its scorer: batch scores equal River's own, training learns."""

from __future__ import annotations

import random

import cloudpickle  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import pytest
from river import compose, linear_model, preprocessing

from infra.plantly.catalog import load_catalog
from training.contract import COLUMNS, NUMERIC, append_row, empty_columns
from training.metrics import roc_auc
from training.pyfunc import RecommenderModel, Scorer
from training.river_model import RiverScorer, fit_river, make_pipeline

CATALOG = load_catalog()
REGIONS = ("US-CA", "US-NY", "US-FL", "GB-ENG")


def frame(rows: int, seed: int) -> pd.DataFrame:
    """Contract rows with a known rule: cacti sell, Californians buy, busy users buy."""
    rng = random.Random(seed)
    columns = empty_columns()
    labels, times, truth = [], [], []
    products = list(CATALOG)
    for n in range(rows):
        product_id = rng.choice(products)
        region = rng.choice(REGIONS)
        impressions = rng.randrange(20)
        user = {"impressions_1h": impressions, "purchases_30d": rng.randrange(3)}
        product = {"ctr_24h": rng.random(), "clicks_1h": rng.randrange(5)}
        append_row(columns, f"u-{n}", product_id, region, "mobile", user, product, CATALOG, 0.0)
        cactus = CATALOG[product_id].category == "cactus"
        logit = -3.0 + 2.5 * cactus + 1.0 * (region == "US-CA") + 0.15 * impressions
        truth.append(1 / (1 + np.exp(-logit)))
        labels.append(int(rng.random() < truth[-1]))
        times.append(float(rows - n))  # listed newest first
    table = pd.DataFrame(columns)
    table["label"], table["event_ts"], table["truth"] = labels, times, truth
    return table


@pytest.fixture(scope="module")
def trained() -> RiverScorer:
    return fit_river(frame(3_000, seed=1))


def test_batch_scores_equal_river_row_by_row(trained: RiverScorer) -> None:
    rows = frame(200, seed=2)[list(COLUMNS)]
    rows.loc[0, "region"] = "AU-QLD"  # a category never seen in training
    rows.loc[1, "device"] = "unknown"
    scores = trained.score(rows)
    assert scores.shape == (200,)
    assert scores == pytest.approx(trained.score_one_by_one(rows), abs=1e-12)
    assert 0.0 < scores.min() < scores.max() < 1.0


def test_training_learns_the_rule(trained: RiverScorer) -> None:
    test = frame(4_000, seed=3)
    best = roc_auc(test["label"], test["truth"])  # scoring with the true probabilities
    learned = roc_auc(test["label"], trained.score(test[list(COLUMNS)]))
    assert learned > best - 0.02


def test_training_goes_oldest_first() -> None:
    data = frame(500, seed=4)
    shuffled = data.sample(frac=1.0, random_state=0)
    oldest_first = data.sort_values("event_ts").drop(columns="event_ts")
    rows = frame(50, seed=5)[list(COLUMNS)]
    by_time = fit_river(shuffled).score(rows)
    assert by_time == pytest.approx(fit_river(oldest_first).score(rows), abs=1e-12)
    assert not np.allclose(by_time, fit_river(data.drop(columns="event_ts")).score(rows))


def test_a_constant_column_scores_like_river() -> None:
    data = frame(300, seed=6)
    data["user_add_to_cart_24h"] = 0  # zero variance: River's scaler outputs 0
    scorer = fit_river(data)
    rows = frame(30, seed=7)[list(COLUMNS)]
    rows["user_add_to_cart_24h"] = 5
    assert scorer.score(rows) == pytest.approx(scorer.score_one_by_one(rows), abs=1e-12)


def test_it_is_a_scorer_that_survives_cloudpickle(trained: RiverScorer) -> None:
    rows = frame(20, seed=8)[list(COLUMNS)]
    copy = cloudpickle.loads(cloudpickle.dumps(RecommenderModel(trained)))
    assert isinstance(trained, Scorer) and copy.kind == "river"
    scored = copy.score_frame(rows)
    assert list(scored["product_id"]) == list(rows["product_id"])
    assert scored["score"].to_numpy() == pytest.approx(trained.score(rows))


def test_other_pipelines_are_scored_by_river_itself() -> None:
    pipeline = compose.Select(*NUMERIC) | preprocessing.StandardScaler()
    pipeline |= linear_model.LogisticRegression()
    data = frame(200, seed=9)
    for x, y in zip(data[list(COLUMNS)].to_dict("records"), data["label"], strict=True):
        pipeline.learn_one(x, bool(y))
    rows = data[list(COLUMNS)].head(10)
    scorer = RiverScorer(pipeline)
    assert scorer.score(rows) == pytest.approx(scorer.score_one_by_one(rows))
    assert len(set(scorer.score(rows).round(6))) > 1


def test_no_rows_no_scores() -> None:
    empty = pd.DataFrame({name: [] for name in COLUMNS})
    assert RiverScorer(make_pipeline()).score(empty).shape == (0,)


def test_a_frame_without_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="label"):
        fit_river(frame(5, seed=10).drop(columns="label"))
