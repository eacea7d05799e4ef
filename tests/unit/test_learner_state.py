"""The learner's core: labels, point-in-time rows, bounded state, snapshots, prequential order."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from training.contract import COLUMNS
from training.learner_state import LABEL_WINDOW_S, LearnerEvent, LearnerState
from training.river_model import Row

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CATALOG = load_catalog()
P1, P2 = list(CATALOG)[:2]
PART = "0-shop.events"


class SpyModel:
    """Records every call; predicts 1 / (2 + examples learned so far)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Row, bool | None]] = []
        self.learned: list[tuple[Row, bool]] = []

    def predict_proba_one(self, x: Row) -> dict[bool, float]:
        self.calls.append(("predict", x, None))
        p = 1.0 / (2 + len(self.learned))
        return {False: 1.0 - p, True: p}

    def learn_one(self, x: Row, y: bool) -> None:
        self.calls.append(("learn", x, y))
        self.learned.append((x, y))


def event(n: int, kind: str, ts: float, user: str = "u-1", product: str = P1) -> LearnerEvent:
    price = CATALOG[product].price if kind in ("add_to_cart", "purchase") else None
    quantity = 1 if kind == "purchase" else None
    return LearnerEvent(f"e{n}", kind, ts, user, product, "US-CA", "mobile", price, quantity)


def learner(lateness: float = 0.0, **kw: Any) -> tuple[LearnerState, SpyModel]:
    spy = SpyModel()
    return LearnerState(spy, allowed_lateness_s=lateness, **kw), spy


def labels(spy: SpyModel) -> list[tuple[str, str, bool]]:
    return [(str(x["user_id"]), str(x["product_id"]), y) for x, y in spy.learned]


# -- labels -------------------------------------------------------------------


def test_a_purchase_within_30_minutes_makes_a_positive_at_once() -> None:
    state, spy = learner()
    state.learn_batch(PART, [event(1, "impression", T0), event(2, "purchase", T0 + 29 * 60)])
    assert labels(spy) == [("u-1", P1, True)]
    assert (state.counters.labeled, state.counters.positives, state.pending_count) == (1, 1, 0)


def test_a_purchase_at_exactly_30_minutes_still_counts() -> None:
    state, spy = learner()
    state.learn_batch(PART, [event(1, "impression", T0), event(2, "purchase", T0 + LABEL_WINDOW_S)])
    assert labels(spy) == [("u-1", P1, True)]


def test_an_impression_becomes_negative_once_the_watermark_passes_its_window() -> None:
    state, spy = learner(lateness=300.0)
    state.learn_batch(PART, [event(1, "impression", T0)])
    # 30 min + the lateness later the label could still change: nothing yet
    state.learn_batch(PART, [event(2, "click", T0 + LABEL_WINDOW_S + 300, product=P2)])
    assert spy.learned == []
    state.learn_batch(PART, [event(3, "click", T0 + LABEL_WINDOW_S + 301, product=P2)])
    assert labels(spy) == [("u-1", P1, False)]
    assert state.pending_count == 0


def test_buying_another_product_labels_nothing() -> None:
    state, spy = learner()
    state.learn_batch(PART, [event(1, "impression", T0), event(2, "purchase", T0 + 60, product=P2)])
    assert spy.learned == [] and state.pending_count == 1


def test_a_purchase_after_the_window_leaves_the_impression_negative() -> None:
    state, spy = learner()
    state.learn_batch(PART, [event(1, "impression", T0), event(2, "purchase", T0 + 31 * 60)])
    assert labels(spy) == [("u-1", P1, False)]
    assert state.counters.positives == 0


def test_a_purchase_before_the_impression_does_not_label_it() -> None:
    state, spy = learner()
    state.learn_batch(PART, [event(1, "purchase", T0), event(2, "impression", T0 + 60)])
    assert spy.learned == [] and state.pending_count == 1


def test_a_late_purchase_within_the_lateness_still_labels() -> None:
    state, spy = learner(lateness=600.0)
    # another user's events move the partition's event time 35 minutes on
    batch = [event(1, "impression", T0), event(2, "click", T0 + 35 * 60, user="u-2", product=P2)]
    state.learn_batch(PART, [*batch, event(3, "purchase", T0 + 25 * 60)])
    assert labels(spy) == [("u-1", P1, True)]


def test_another_partition_running_ahead_expires_nothing_here() -> None:
    state, spy = learner()
    state.learn_batch("0-shop.events", [event(1, "impression", T0)])
    state.learn_batch("1-shop.events", [event(2, "click", T0 + 86_400, user="u-2", product=P2)])
    assert spy.learned == []
    state.learn_batch("0-shop.events", [event(3, "purchase", T0 + 600)])
    assert labels(spy) == [("u-1", P1, True)]


def test_events_of_unknown_products_are_skipped() -> None:
    state, _ = learner()
    state.learn_batch(PART, [event(1, "impression", T0, product="no-such-plant")])
    assert (state.counters.skipped, state.counters.impressions, state.pending_count) == (1, 0, 0)


# -- point-in-time rows -------------------------------------------------------


def test_rows_see_only_earlier_events_not_the_impression_itself_nor_later_ones() -> None:
    state, spy = learner()
    state.learn_batch(
        PART,
        [
            event(1, "impression", T0, product=P2),
            event(2, "click", T0 + 5, product=P2),
            event(3, "impression", T0 + 10),  # the one we follow: sees 1 impression, 1 click
            event(4, "impression", T0 + 10, product=P2),  # same instant: not seen by #3
            event(5, "click", T0 + 20),
            event(6, "impression", T0 + 30),
            event(7, "purchase", T0 + 40),  # labels #3 and #6 positive
        ],
    )
    rows = {(str(x["product_id"]), int(x["user_impressions_1h"])): x for x, _ in spy.learned}
    first = rows[(P1, 1)]
    assert first["user_clicks_1h"] == 1
    assert first["product_impressions_1h"] == 0  # P1 was never shown before #3
    assert first["user_purchases_30d"] == 0
    assert first["user_hours_since_last_event"] == pytest.approx(5 / 3600)
    second = rows[(P1, 3)]  # #6 sees #1, #3 and #4, and the click on P1
    assert (second["product_impressions_1h"], second["product_clicks_1h"]) == (1, 1)
    assert all(y for _, y in spy.learned)


# -- bounded state ------------------------------------------------------------


def test_pending_impressions_are_capped_per_user_and_the_oldest_dropped_unlabeled() -> None:
    state, spy = learner(max_pending_per_user=3)
    state.learn_batch(PART, [event(n, "impression", T0 + n) for n in range(5)])
    assert (state.pending_count, state.counters.evicted) == (3, 2)
    state.learn_batch(PART, [event(9, "click", T0 + 2 * LABEL_WINDOW_S, user="u-2")])
    assert state.pending_count == 0
    assert [x["user_impressions_1h"] for x, _ in spy.learned] == [2, 3, 4]  # the newest three


def test_state_stays_bounded_over_a_long_stream() -> None:
    state, _ = learner(lateness=60.0)
    for hour in range(48):
        batch = [
            event(hour * 100 + n, "impression", T0 + hour * 3600 + n * 30, user=f"u-{n % 7}")
            for n in range(100)
        ]
        state.learn_batch(PART, batch)
    # only the last 31 minutes of impressions may be pending: ~62 of the last hour's 100
    assert state.pending_count <= 63
    assert len(state.partitions[PART].expiry) <= 63 + 100
    assert state.counters.labeled == state.counters.impressions - state.pending_count


# -- prequential order ----------------------------------------------------------


def test_each_example_is_scored_before_it_is_learned() -> None:
    state, spy = learner()
    state.learn_batch(
        PART,
        [event(n, "impression", T0 + n, product=[P1, P2][n % 2]) for n in range(6)]
        + [event(9, "purchase", T0 + 100), event(10, "click", T0 + 4000, user="u-2")],
    )
    kinds = [kind for kind, _, _ in spy.calls]
    assert kinds == ["predict", "learn"] * 6
    for (_, predicted, _), (_, learned, _) in zip(spy.calls[::2], spy.calls[1::2], strict=True):
        assert predicted == learned
    # the log loss used the scores from before each learn: 1/2, 1/3, 1/4, ...
    ys = [y for _, y in spy.learned]
    expected = [-math.log(1 / (2 + i) if y else 1 - 1 / (2 + i)) for i, y in enumerate(ys)]
    assert state.metric_values()["log_loss"] == pytest.approx(sum(expected) / len(expected))


# -- snapshots and positions ----------------------------------------------------


def simulated(events: int = 4_000) -> list[LearnerEvent]:
    config = SimulationConfig(
        events=events, seed=11, history_days=0.5, anchor=datetime(2026, 11, 26, tzinfo=UTC)
    )
    out = []
    for message in ShopSimulator(config).messages():
        if message.topic == "events":
            row = json.loads(message.value)
            row["event_ts"] = datetime.fromisoformat(row["event_ts"])
            out.append(LearnerEvent.from_mapping(row))
    return out


def test_a_restored_snapshot_goes_on_exactly_like_the_original() -> None:
    events = simulated()
    original = LearnerState()
    original.learn_batch(PART, events[:2_500], next_offset=2_500)
    restored = LearnerState.restore(original.snapshot())
    assert restored.pending_count == original.pending_count > 0
    for state in (original, restored):
        state.learn_batch(PART, events[2_500:], next_offset=len(events))
    assert original.counters == restored.counters
    assert original.counters.labeled > 1_000 and original.counters.positives > 10
    # River's weight vectors may sum in another order once unpickled: equal to ~1 ulp
    assert original.metric_values() == pytest.approx(restored.metric_values(), rel=1e-9)
    assert original.positions == restored.positions == {PART: len(events)}
    assert original.users == restored.users and original.products == restored.products
    assert original.pending_count == restored.pending_count
    rows = [dict(x) for x, _ in zip(pending_rows(original), range(20), strict=False)]
    assert len(rows) == 20
    assert [original.model.predict_proba_one(x)[True] for x in rows] == pytest.approx(
        [restored.model.predict_proba_one(x)[True] for x in rows], rel=1e-9
    )


def pending_rows(state: LearnerState) -> list[Row]:
    return [
        dict(zip(COLUMNS, pending.values, strict=True))
        for queue in state.pending.values()
        for pending in queue
    ]


def test_positions_follow_the_offsets_given_or_count_events() -> None:
    state, _ = learner()
    state.learn_batch(PART, [event(1, "click", T0)], next_offset=41)
    state.learn_batch(PART, [event(2, "click", T0 + 1)])
    state.learn_batch("1-shop.events", [], next_offset=7)  # a batch of invalid messages only
    assert state.positions == {PART: 42, "1-shop.events": 7}
    assert state.counters.events == 2


def test_events_from_bronze_rows() -> None:
    row = {
        "event_id": "e1", "event_type": "purchase", "event_ts": datetime(2026, 1, 1, tzinfo=UTC),
        "user_id": "u-1", "product_id": P1, "region": "US-CA", "device": "mobile",
        "price": 9.99, "quantity": 2, "session_id": "s-1",
    }  # fmt: skip
    assert LearnerEvent.from_mapping(row) == LearnerEvent(
        "e1", "purchase", T0, "u-1", P1, "US-CA", "mobile", 9.99, 2
    )
