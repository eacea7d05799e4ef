"""The feature contract: serving's column-at-a-time rows equal training's row-at-a-time ones."""

from __future__ import annotations

import random

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW, FeatureValue
from infra.plantly.catalog import load_catalog
from training.contract import COLUMNS, RowBatch, append_row, assemble_rows, empty_columns

CATALOG = load_catalog()


def _features(rng: random.Random, names: tuple[str, ...]) -> dict[str, FeatureValue]:
    """Some features present (ints, floats, None), some left out to take the default."""
    out: dict[str, FeatureValue] = {}
    for name in names:
        draw = rng.random()
        if draw < 0.2:
            continue
        out[name] = None if draw < 0.3 else rng.choice([rng.randint(0, 40), rng.random() * 90])
    return out


def test_assemble_rows_gives_exactly_the_rows_append_row_gives() -> None:
    rng = random.Random(7)
    products = list(CATALOG)
    for _ in range(50):
        user = _features(rng, USER_VIEW.names)
        user["last_event_ts"] = rng.choice([None, 1_767_225_600.0 - rng.random() * 1e6])
        candidates = [(pid, _features(rng, PRODUCT_VIEW.names)) for pid in rng.sample(products, 8)]
        region = rng.choice(["US-CA", "US-FL", "DE-BY", "AU-QLD"])
        device = rng.choice(["mobile", None])
        served = assemble_rows("u-1", region, device, user, candidates, CATALOG, 1_767_225_600.0)
        trained = empty_columns()
        for pid, product in candidates:
            append_row(
                trained, "u-1", pid, region, device or "unknown", user, product, CATALOG,
                1_767_225_600.0,
            )  # fmt: skip
        assert tuple(served) == COLUMNS
        assert served == trained
        for name in COLUMNS:  # 1 == 1.0 would pass above; a model's encoder could tell
            assert [type(v) for v in served[name]] == [type(v) for v in trained[name]], name


def test_no_candidates_give_empty_columns_in_contract_order() -> None:
    served = assemble_rows("u-1", "US-CA", "mobile", {}, [], CATALOG, 0.0)
    assert tuple(served) == COLUMNS and all(v == [] for v in served.values())
    assert RowBatch(served).empty


def test_column_lists_hand_over_the_lists_without_copying() -> None:
    pids = list(CATALOG)[:2]
    columns = assemble_rows("u-1", "US-CA", "mobile", {}, [(p, {}) for p in pids], CATALOG, 0.0)
    lists = RowBatch(columns).column_lists()
    assert lists == columns and lists["product_id"] is columns["product_id"]
