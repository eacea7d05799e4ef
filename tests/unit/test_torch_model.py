"""The PyTorch model: encoding contract rows, the network, and the pickled scorer."""

from __future__ import annotations

import pickle

import cloudpickle  # type: ignore[import-untyped]
import numpy as np
import pandas as pd
import pytest
import torch

from infra.plantly.catalog import load_catalog
from training.contract import COLUMNS, NUMERIC, SPEC, RowBatch
from training.pyfunc import RecommenderModel, Scorer
from training.torch_model import (
    ID_COLUMNS,
    UNKNOWN_ID,
    DotInteractionNet,
    FeatureEncoder,
    TorchScorer,
)

CATALOG = load_catalog()
REGIONS = ("US-CA", "US-AZ", "US-NY", "GB-ENG")


def synthetic_rows(n: int, seed: int = 0, users: int = 60, products: int = 40) -> pd.DataFrame:
    """Contract rows with a learnable label: each region buys from its favourite category."""
    rng = np.random.default_rng(seed)
    plants = [CATALOG[pid] for pid in sorted(CATALOG.product_ids)[:products]]
    user = rng.integers(0, users, n)
    plant = [plants[i] for i in rng.integers(0, len(plants), n)]
    region = rng.choice(REGIONS, n)
    categories = sorted({p.category for p in plants})
    favourite = np.array([categories[REGIONS.index(r) % len(categories)] for r in region])
    category = np.array([p.category for p in plant])
    invasive = np.array([int(r in p.invasive_regions) for r, p in zip(region, plant, strict=True)])
    logit = -3.0 + 2.5 * (category == favourite) - 1.5 * invasive
    frame = pd.DataFrame(
        {
            "user_id": [f"u-{u}" for u in user],
            "product_id": [p.product_id for p in plant],
            "region": region,
            "device": rng.choice(["mobile", "desktop", "tablet"], n),
            "category": category,
            "light": [p.light for p in plant],
            "pet_safe": [int(p.pet_safe) for p in plant],
            "price": [p.price for p in plant],
            "invasive_here": invasive,
        }
    )
    for name, kind in SPEC:
        if name not in frame:
            ratio = "ctr" in name or "conversion" in name
            values = rng.random(n) if ratio else rng.poisson(3.0, n) * (1 + 9 * rng.random(n))
            frame[name] = values.astype("int64") if kind == "long" else values
    frame = frame[list(COLUMNS)]
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return synthetic_rows(2_000)


def test_encoder_maps_unseen_ids_and_categories_to_the_unknown_id(rows: pd.DataFrame) -> None:
    encoder = FeatureEncoder().fit(rows)
    fresh = rows.head(3).copy()
    fresh.loc[0, "user_id"] = "never-seen"
    fresh.loc[1, "product_id"] = "not-a-plant"
    fresh.loc[2, ["region", "device"]] = ["XX-ZZ", "unknown"]
    ids = encoder.encode_ids(fresh)
    column = {name: j for j, name in enumerate(ID_COLUMNS)}
    assert ids[0, column["user_id"]] == UNKNOWN_ID
    assert ids[1, column["product_id"]] == UNKNOWN_ID
    assert ids[2, column["region"]] == UNKNOWN_ID
    assert ids[2, column["device"]] == UNKNOWN_ID
    assert (np.delete(ids[0], column["user_id"]) > 0).all()
    assert encoder.cardinalities[column["device"]] == 4  # three devices + unknown


def test_encoder_keeps_ids_below_min_count_out_of_the_vocabulary() -> None:
    frame = synthetic_rows(200, users=3)
    frame.loc[0, "user_id"] = "once"
    encoder = FeatureEncoder(min_count=2).fit(frame)
    assert "once" not in encoder.vocabularies["user_id"]
    assert encoder.encode_ids(frame.head(1))[0, 0] == UNKNOWN_ID
    assert sorted(encoder.vocabularies["user_id"].values()) == [1, 2, 3]


def test_encoder_log_scales_counts_and_standardizes(rows: pd.DataFrame) -> None:
    encoder = FeatureEncoder().fit(rows)
    scaled = dict(zip(encoder.numeric_columns, encoder.log_scaled, strict=True))
    assert scaled["user_impressions_1h"] and scaled["price"] and scaled["user_spend_30d"]
    assert not scaled["user_ctr_7d"] and not scaled["pet_safe"]
    dense = encoder.encode_dense(rows)
    assert dense.dtype == np.float32
    assert np.allclose(dense.mean(axis=0), 0.0, atol=1e-4)
    varying = rows[list(NUMERIC)].nunique().to_numpy() > 1
    assert np.allclose(dense.std(axis=0)[varying], 1.0, atol=1e-3)


def test_encoder_turns_missing_numbers_into_the_training_mean(rows: pd.DataFrame) -> None:
    encoder = FeatureEncoder().fit(rows)
    broken = rows.head(2).copy()
    broken["price"] = [np.nan, -5.0]
    dense = encoder.encode_dense(broken)
    price = encoder.numeric_columns.index("price")
    assert dense[0, price] == 0.0
    assert np.isfinite(dense).all()


def test_network_gives_one_logit_per_row_and_keeps_unknown_rows_zero(rows: pd.DataFrame) -> None:
    encoder = FeatureEncoder().fit(rows)
    net = DotInteractionNet(encoder.cardinalities, len(NUMERIC), embedding_dim=8)
    ids, dense = encoder.encode(rows.head(5))
    assert net(ids, dense).shape == (5,)
    tables = [w.detach() for name, w in net.named_parameters() if name.startswith("embeddings.")]
    assert len(tables) == len(ID_COLUMNS)
    assert all(float(w[UNKNOWN_ID].abs().sum()) == 0.0 for w in tables)
    net.set_prior(0.04)
    assert float(net.output.bias.detach()) == pytest.approx(np.log(0.04 / 0.96))


def _scorer(rows: pd.DataFrame) -> TorchScorer:
    encoder = FeatureEncoder().fit(rows)
    torch.manual_seed(3)
    return TorchScorer(encoder, DotInteractionNet(encoder.cardinalities, len(NUMERIC)))


def test_scorer_returns_probabilities_in_row_order(rows: pd.DataFrame) -> None:
    scorer = _scorer(rows)
    assert isinstance(scorer, Scorer)
    scores = scorer.score(rows.head(50))
    assert scores.dtype == np.float64 and scores.shape == (50,)
    assert ((scores > 0) & (scores < 1)).all()
    reversed_rows = rows.head(50).iloc[::-1].reset_index(drop=True)
    assert np.allclose(scorer.score(reversed_rows), scores[::-1], rtol=1e-6)
    assert scorer.score(rows.head(0)).shape == (0,)


def test_scorer_survives_a_cloudpickle_roundtrip_inside_the_pyfunc(rows: pd.DataFrame) -> None:
    scorer = _scorer(rows)
    expected = scorer.score(rows)
    model = cloudpickle.loads(cloudpickle.dumps(RecommenderModel(scorer)))
    assert model.kind == "torch"
    assert np.array_equal(model.score_frame(rows)["score"].to_numpy(), expected)
    assert np.array_equal(pickle.loads(pickle.dumps(scorer)).score(rows), expected)


def test_scorer_serves_the_unseen_user_of_a_request(rows: pd.DataFrame) -> None:
    scorer = _scorer(rows)
    request = rows.head(20).assign(user_id="brand-new", device="unknown")
    scores = scorer.score(request)
    assert np.isfinite(scores).all()
    assert len(set(scores.round(9))) > 1  # products still differ


def test_the_numpy_forward_matches_the_torch_module(rows: pd.DataFrame) -> None:
    scorer = _scorer(rows)
    batch = RowBatch({name: rows[name].tolist() for name in COLUMNS})
    fast = scorer.score(batch)
    assert np.allclose(fast, scorer.score_with_torch(rows), rtol=0, atol=1e-6)
    assert np.array_equal(scorer.score(rows), fast)  # a DataFrame and a RowBatch agree
    restored = pickle.loads(pickle.dumps(scorer))
    assert np.array_equal(restored.score(batch), fast)


def test_a_row_batch_with_missing_or_text_numbers_encodes_as_a_data_frame_does(
    rows: pd.DataFrame,
) -> None:
    """The batch path converts all numbers at once; None and text must still become NaN."""
    scorer = _scorer(rows)
    head = rows.head(6)
    columns: dict[str, list[object]] = {name: head[name].tolist() for name in COLUMNS}
    columns["user_spend_30d"][1] = None
    batch = RowBatch(columns)
    frame = batch.to_pandas()
    assert np.array_equal(scorer.encoder.encode_dense(batch), scorer.encoder.encode_dense(frame))
    columns["product_ctr_24h"][2] = None
    missing = scorer.encoder.encode_dense(RowBatch(dict(columns)))
    columns["product_ctr_24h"][2] = "n/a"  # not a number: read as missing
    dense = scorer.encoder.encode_dense(RowBatch(columns))
    assert np.array_equal(dense, missing)
    assert np.isfinite(dense).all()
