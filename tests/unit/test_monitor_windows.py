"""Prediction records, window aggregates and the monitor's state, without Bytewax."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import orjson
import pytest

from infra.contracts import Rejection, RejectionReason
from infra.settings import MonitoringSettings
from monitoring import stats
from monitoring.monitor_state import EventPart, MonitorState, PredictionPart
from monitoring.records import (
    SCORE,
    ParsedPrediction,
    group_columns,
    parse_prediction,
)
from monitoring.windows import (
    PER_REQUEST,
    PartitionClock,
    WindowAggregate,
    aggregate,
    prediction_stats,
    window_start,
)
from tests.monitor_traffic import MODEL, make_request, observed, reference_profile
from training.contract import CATEGORICALS, NUMERIC

NOW = 1_795_000_000.0
PROFILE = reference_profile()


def records(count: int, seed: int = 1, ts: float = NOW - 100.0) -> list[bytes]:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    return [make_request(rng, nrng, f"r{i}", ts + i, 3)[1] for i in range(count)]


def parsed(raw: bytes) -> ParsedPrediction:
    result = parse_prediction(raw, model_name=MODEL, now=NOW)
    assert isinstance(result, ParsedPrediction), result
    return result


def edited(raw: bytes, change: Any) -> bytes:
    body = orjson.loads(raw)
    change(body)
    return orjson.dumps(body)


# -- records ---------------------------------------------------------------------


def test_a_logged_record_parses_into_what_the_monitor_uses() -> None:
    raw = records(1)[0]
    body = orjson.loads(raw)
    record = parsed(raw)
    assert record.request.request_id == "r0" and record.request.version == 3
    assert record.request.ts == pytest.approx(NOW - 100.0, abs=1e-3)
    assert record.request.items == tuple(i["product_id"] for i in body["items"])
    assert record.rows == 50 and record.columns[SCORE] == body["scores"]
    assert record.ages == (body["feature_ages"]["user"]["clicks_1h"],
                           body["feature_ages"]["product"]["ctr_24h"])  # fmt: skip


def _set(path: str, value: object) -> Any:
    def change(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        for name in parents:
            body = body[name]
        body[leaf] = value

    return change


def _drop(name: str) -> Any:
    return lambda body: body.pop(name)


def _poison(column: str, value: object) -> Any:
    def change(body: dict[str, Any]) -> None:
        target = body["scores"] if column == SCORE else body["features"][column]
        target[7] = value

    return change


BAD: list[tuple[Any, RejectionReason, str]] = [
    (_drop("request_id"), RejectionReason.MISSING_FIELD, "request_id"),
    (_set("request_id", ""), RejectionReason.INVALID_VALUE, "request_id"),
    (_set("ts", 17), RejectionReason.WRONG_TYPE, "ts"),
    (_set("ts", "yesterday"), RejectionReason.INVALID_VALUE, "ts"),
    (_set("ts", "2026-11-26T10:00:00"), RejectionReason.INVALID_VALUE, "ts"),
    (_set("ts", "2099-01-01T00:00:00Z"), RejectionReason.FROM_FUTURE, "ts"),
    (_set("model.name", "other-model"), RejectionReason.INVALID_VALUE, "model.name"),
    (_set("model.version", "3"), RejectionReason.WRONG_TYPE, "model.version"),
    (_set("model.version", True), RejectionReason.WRONG_TYPE, "model.version"),
    (_set("scores", [0.5]), RejectionReason.INVALID_VALUE, "scores"),
    (_set("items", [{"product_id": "x", "score": "high"}]), RejectionReason.WRONG_TYPE, "items"),
    (_set("features.price", [1.0]), RejectionReason.INVALID_VALUE, "features.price"),
    (_set("features.region", "US-CA"), RejectionReason.WRONG_TYPE, "features.region"),
    (lambda b: b["features"].pop("light"), RejectionReason.MISSING_FIELD, "features.light"),
    (_set("feature_ages.user", [1]), RejectionReason.WRONG_TYPE, "feature_ages.user"),
    (_set("features.pet_safe", [True] * 50), RejectionReason.WRONG_TYPE, "features.pet_safe"),
]


@pytest.mark.parametrize(("change", "reason", "field"), BAD)
def test_a_record_that_breaks_the_format_is_refused_with_a_reason(
    change: Any, reason: RejectionReason, field: str
) -> None:
    result = parse_prediction(edited(records(1)[0], change), model_name=MODEL, now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason is reason and result.detail.startswith(field)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{nope", RejectionReason.MALFORMED_JSON),
        (b"[1, 2]", RejectionReason.MALFORMED_JSON),
        (b'{"x": NaN}', RejectionReason.MALFORMED_JSON),
    ],
)
def test_a_payload_that_is_not_a_json_object_is_malformed(
    raw: bytes, reason: RejectionReason
) -> None:
    result = parse_prediction(raw, model_name=MODEL, now=NOW)
    assert isinstance(result, Rejection) and result.reason is reason


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [("price", None, RejectionReason.NON_FINITE), ("price", "12", RejectionReason.WRONG_TYPE),
     (SCORE, None, RejectionReason.NON_FINITE), ("price", [1], RejectionReason.WRONG_TYPE),
     ("device", 3, RejectionReason.WRONG_TYPE), ("light", {"a": 1}, RejectionReason.WRONG_TYPE)],
)  # fmt: skip
def test_a_bad_value_refuses_its_record_and_keeps_the_rest_of_the_group(
    column: str, value: object, reason: RejectionReason
) -> None:
    raws = records(6)
    raws[2] = edited(raws[2], _poison(column, value))
    group, refused = group_columns([parsed(raw) for raw in raws])
    assert [(r.request.request_id, why.reason) for r, why in refused] == [("r2", reason)]
    assert [r.request.request_id for r in group.records] == ["r0", "r1", "r3", "r4", "r5"]
    assert group.rows == 250 and all(len(v) == 250 for v in group.numbers.values())


def test_group_columns_are_the_records_values_concatenated() -> None:
    group, refused = group_columns([parsed(raw) for raw in records(4)])
    assert refused == []
    bodies = [orjson.loads(raw) for raw in records(4)]
    price = np.concatenate([b["features"]["price"] for b in bodies])
    assert np.array_equal(group.numbers["price"], price)
    regions = [v for b in bodies for v in b["features"]["region"]]
    assert group.categories["region"] == {r: regions.count(r) for r in set(regions)}


# -- aggregates and statistics -----------------------------------------------------


def test_pieces_merge_into_the_aggregate_of_the_whole() -> None:
    rows = [parsed(raw) for raw in records(9)]
    whole = aggregate(group_columns(rows)[0], PROFILE)
    merged = WindowAggregate()
    for part in (rows[:2], rows[2:7], rows[7:]):
        merged.merge(aggregate(group_columns(part)[0], PROFILE))
    assert (merged.requests, merged.rows, merged.shown) == (whole.requests, whole.rows, whole.shown)
    assert all(np.array_equal(merged.bins[n], whole.bins[n]) for n in whole.bins)
    assert merged.categories == whole.categories
    assert prediction_stats(merged, PROFILE) == prediction_stats(whole, PROFILE)


def test_prediction_statistics_are_the_stats_functions_on_the_windows_data() -> None:
    rows = [parsed(raw) for raw in records(20)]
    found = prediction_stats(aggregate(group_columns(rows)[0], PROFILE), PROFILE)
    returned = np.array([s for r in rows for s in r.request.scores])
    scores = np.concatenate([r.columns[SCORE] for r in rows])
    assert found.metrics["requests"] == 20 and found.metrics["rows"] == 1_000
    assert found.metrics["shown"] == 200
    assert found.metrics["mean_score"] == pytest.approx(returned.mean())
    assert found.metrics["estimated_roc_auc"] == pytest.approx(stats.estimated_roc_auc(returned))
    assert found.metrics["estimated_conversion"] == pytest.approx(returned.mean())
    score_counts = stats.numeric_counts(PROFILE.score.edges, scores)
    assert found.metrics["score_psi"] == pytest.approx(
        stats.psi(PROFILE.score.counts, score_counts)
    )
    assert found.score_shares == pytest.approx((score_counts / 1_000).tolist())
    columns = [r.columns for r in rows]
    for name in NUMERIC:
        values = np.asarray(observed(columns, name), dtype=float)
        counts = stats.numeric_counts(PROFILE.numeric[name].edges, values)
        assert found.features[name]["psi"] == pytest.approx(
            stats.psi(PROFILE.numeric[name].counts, counts)
        )
    for name in CATEGORICALS:
        current = stats.category_counts(observed(columns, name))
        reference = PROFILE.categorical[name].counts
        assert found.features[name] == pytest.approx({
            "chi2_pvalue": stats.chi_square_pvalue(reference, current),
            "js_distance": stats.js_distance(reference, current),
        })  # fmt: skip
    ages = np.array([r.ages for r in rows])
    assert found.feature_ages == pytest.approx(
        {"user": np.percentile(ages[:, 0], 95), "product": np.percentile(ages[:, 1], 95)}
    )


def test_a_shoppers_columns_count_once_per_request_a_candidates_once_per_row() -> None:
    rows = [parsed(raw) for raw in records(8)]
    piece = aggregate(group_columns(rows)[0], PROFILE)
    assert sum(piece.categories["region"].values()) == 8
    assert sum(piece.categories["category"].values()) == 400
    assert piece.bins["user_clicks_1h"].sum() == 8 and piece.bins["price"].sum() == 400
    assert set(PER_REQUEST) == {"region", "device"} | {n for n in NUMERIC if n.startswith("user_")}


def test_without_a_profile_there_are_counts_but_no_drift() -> None:
    rows = [parsed(raw) for raw in records(5)]
    found = prediction_stats(aggregate(group_columns(rows)[0], None), None)
    assert found.metrics["requests"] == 5 and "score_psi" not in found.metrics
    assert found.features == {} and found.score_shares == []


# -- watermarks and the state -------------------------------------------------------


def test_window_start_is_aligned_to_the_epoch() -> None:
    assert window_start(NOW + 0.5, 60.0) == math.floor(NOW / 60.0) * 60.0
    assert window_start(-0.5, 60.0) == -60.0


def test_an_idle_partition_stops_holding_the_watermark_and_a_restart_forgives() -> None:
    clock = PartitionClock(lateness_s=5.0, idle_s=30.0)
    clock.expect(["a", "b"], wall=100.0)
    clock.advance("a", 1_000.0, wall=101.0)
    assert clock.low(102.0) == -math.inf and clock.next_idle(102.0) == 130.0
    assert clock.low(130.5) == 995.0 and clock.low(140.0) is None
    clock.restart(wall=500.0)
    assert clock.low(501.0) == -math.inf


KNOBS = MonitoringSettings(
    window_s=60.0, allowed_lateness_s=5.0, idle_close_s=30.0, outcome_lateness_s=60.0
)
START = window_start(NOW - 600.0, 60.0)


def piece(ts: float, count: int = 3, version: int = 3) -> PredictionPart:
    rows = [parsed(raw) for raw in records(count, ts=ts)]
    group, _ = group_columns(rows)
    key = (version, window_start(ts, 60.0))
    pieces = {key: (aggregate(group, PROFILE), [r.request for r in rows])}
    return PredictionPart("0-ml.predictions", max(r.request.ts for r in rows), pieces)


def state() -> MonitorState:
    monitor = MonitorState(KNOBS, MODEL)
    monitor.attach(lambda version: PROFILE, ["0-ml.predictions"], ["0-shop.events"], wall=0.0)
    return monitor


def test_a_window_closes_when_the_watermark_passes_its_end_and_late_pieces_are_counted() -> None:
    monitor = state()
    assert monitor.consume([piece(START + 10)], wall=1.0) == []
    assert monitor.consume([piece(START + 62)], wall=2.0) == []  # 60 + 5 s lateness not reached
    (closed,) = monitor.consume([piece(START + 70, count=1)], wall=3.0)
    assert (closed.phase, closed.seq, closed.window_start) == ("predictions", 1, START)
    assert closed.metrics["requests"] == 3 and closed.reference["available"] is True
    assert monitor.consume([piece(START + 30)], wall=4.0) == []
    assert monitor.late_requests == 3


def test_quiet_closes_every_open_window_and_the_end_closes_the_rest() -> None:
    monitor = state()
    assert monitor.consume([piece(START + 10), piece(START + 62)], wall=1.0) == []
    assert monitor.next_wakeup(wall=2.0) == 31.0
    assert monitor.on_idle(wall=20.0) == []
    closed = monitor.on_idle(wall=31.0)
    assert [(r.window_start, r.seq) for r in closed] == [(START, 1), (START + 60, 2)]
    assert monitor.next_wakeup(wall=32.0) is None
    monitor.consume([piece(START + 130)], wall=40.0)
    (last,) = monitor.finish(wall=41.0)
    assert (last.window_start, last.seq) == (START + 120, 3)


def test_outcomes_follow_once_the_events_watermark_completes_the_labels() -> None:
    monitor = state()
    first = piece(START + 10, count=2)
    request = next(iter(first.pieces.values()))[1][0]
    product = request.items[0]
    events = EventPart("0-shop.events", START + 15,
                       [_event("impression", START + 15, product, request.request_id),
                        _event("purchase", START + 400, product, None)])  # fmt: skip
    closed = monitor.consume([first, events, piece(START + 70, count=1)], wall=1.0)
    assert [r.phase for r in closed] == ["predictions"]
    late_enough = START + 15 + 1800 + KNOBS.outcome_lateness_s + 1
    (outcome,) = monitor.consume([EventPart("0-shop.events", late_enough, [])], wall=2.0)
    assert outcome.phase == "outcomes" and outcome.seq == 2
    assert outcome.metrics["impressions"] == 1 and outcome.metrics["purchases"] == 1


def _event(kind: str, ts: float, product: str, rid: str | None) -> Any:
    from monitoring.records import OutcomeEvent

    return OutcomeEvent(kind, ts, "u-000", product, rid)


def test_a_restored_state_goes_on_like_the_original() -> None:
    parts = [piece(START + 10), piece(START + 50), piece(START + 70), piece(START + 140)]
    whole = state()
    expected = [r for p in parts for r in whole.consume([p], wall=1.0)]
    resumed = state()
    seen = [r for p in parts[:2] for r in resumed.consume([p], wall=1.0)]
    restored = MonitorState.restore(resumed.snapshot())
    restored.attach(lambda version: PROFILE, [], [], wall=1.0)
    seen += [r for p in parts[2:] for r in restored.consume([p], wall=1.0)]
    assert [(r.seq, r.window_start, r.metrics) for r in seen] == [
        (r.seq, r.window_start, r.metrics) for r in expected
    ]
    assert len(expected) == 2
