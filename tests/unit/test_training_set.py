"""Point-in-time training sets: labels, as-of features, no leakage from the future."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from infra.contracts.tables import BRONZE_EVENTS
from infra.errors import InvalidInputError
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from training.checks import check_training_set
from training.contract import COLUMNS
from training.dataset import build_rows, simulated_events, time_split

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
CATALOG = load_catalog()
PLANT = "monstera-deliciosa-4in"
OTHER = "monstera-deliciosa-6in"


def _events(*specs: tuple[float, str, str, str]) -> pa.Table:
    """Events from (seconds after T0, type, user, product); a late filler keeps labels known."""
    rows = []
    for offset, (dt, kind, user, product) in enumerate(
        [*specs, (7200.0, "click", "u-filler", OTHER)]
    ):
        ts = datetime.fromtimestamp(T0 + dt, UTC)
        rows.append({
            "event_id": f"e{offset}", "event_type": kind, "event_ts": ts, "event_date": ts.date(),
            "user_id": user, "product_id": product, "session_id": None, "request_id": None,
            "region": "US-CA", "device": "mobile",
            "price": 10.0 if kind in ("add_to_cart", "purchase") else None,
            "quantity": 1 if kind == "purchase" else None, "schema_version": 1,
            "source_topic": "shop.events", "source_partition": 0, "source_offset": offset,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=BRONZE_EVENTS)


def _build(events: pa.Table) -> dict[str, list[object]]:
    frame = build_rows(events, T0 - 3600, T0 + 3600, CATALOG)
    return {name: frame[name].tolist() for name in frame.columns}


def test_features_are_as_of_the_impression_and_ignore_the_future() -> None:
    rows = _build(
        _events(
            (-120.0, "click", "u-1", PLANT),  # before: counted
            (0.0, "impression", "u-1", PLANT),  # the row
            (0.0, "click", "u-1", PLANT),  # same instant: strictly-before excludes it
            (60.0, "click", "u-1", PLANT),  # after: would change clicks_1h if leaked
            (90.0, "impression", "u-1", OTHER),
        )
    )
    assert rows["product_id"] == [PLANT, OTHER]
    assert rows["user_clicks_1h"] == [1, 3]
    assert rows["user_impressions_1h"] == [0, 1]  # the impression does not see itself
    assert rows["product_clicks_1h"] == [1, 0]
    assert rows["user_hours_since_last_event"][0] == pytest.approx(120 / 3600)


def test_label_is_a_purchase_of_the_same_product_within_30_minutes() -> None:
    rows = _build(
        _events(
            (0.0, "impression", "u-1", PLANT),  # bought at +29 min: positive
            (10.0, "impression", "u-2", PLANT),  # u-2 buys a different plant: negative
            (20.0, "impression", "u-3", PLANT),  # bought at +31 min: negative
            (1740.0, "purchase", "u-1", PLANT),
            (1750.0, "purchase", "u-2", OTHER),
            (1880.0, "purchase", "u-3", PLANT),
        )
    )
    assert list(zip(rows["user_id"], rows["label"], strict=True)) == [
        ("u-1", 1), ("u-2", 0), ("u-3", 0),
    ]  # fmt: skip


def test_a_purchase_does_not_change_features_before_it_happens() -> None:
    impression = (0.0, "impression", "u-1", PLANT)
    without = _build(_events(impression))
    with_purchase = _build(_events(impression, (600.0, "purchase", "u-1", PLANT)))
    assert with_purchase["label"] == [1] and without["label"] == [0]
    features = [c for c in COLUMNS if c.startswith(("user_", "product_")) and c != "user_id"]
    assert {c: with_purchase[c] for c in features} == {c: without[c] for c in features}


def test_impressions_without_30_minutes_of_hindsight_are_left_out() -> None:
    events = _events((0.0, "impression", "u-1", PLANT))
    skipped: dict[str, int] = {}
    frame = build_rows(events.slice(0, 1), T0 - 3600, T0 + 3600, CATALOG, skipped)
    assert len(frame) == 0 and skipped == {"label_not_known_yet": 1}


def test_time_split_keeps_validation_after_training() -> None:
    frame = build_rows(
        simulated_events(
            SimulationConfig(events=3000, seed=2, history_days=1, users=200,
                             anchor=datetime(2026, 11, 20, tzinfo=UTC))
        ),
        0.0, T0, CATALOG,
    )  # fmt: skip
    train, valid = time_split(frame, 0.25)
    assert len(train) + len(valid) == len(frame)
    assert train["event_ts"].max() < valid["event_ts"].min()
    assert 0.2 < len(valid) / len(frame) < 0.3
    with pytest.raises(InvalidInputError):
        time_split(frame, 1.5)


def test_a_simulated_set_passes_the_data_check() -> None:
    frame = build_rows(
        simulated_events(
            SimulationConfig(events=20_000, seed=4, history_days=2, users=500,
                             anchor=datetime(2026, 11, 20, tzinfo=UTC))
        ),
        0.0, T0, CATALOG,
    )  # fmt: skip
    report = check_training_set(frame)
    assert report.passed, report.failures()
    assert {c.name for c in report.checks} == {"schema", "null_rates", "label_balance", "pii_scan"}
