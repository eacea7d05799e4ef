"""The prediction log: never blocks a request, drops are counted, shutdown drains."""

from __future__ import annotations

import numpy as np

from infra.plantly.catalog import load_catalog
from serving.metrics import ServingMetrics
from serving.models import LoadedModel
from serving.prediction_log import PredictionLog, PredictionRecord, RowInputs
from serving.schemas import FeatureAges
from serving.testing import ListSink, OffsetScorer
from training.contract import COLUMNS, RowBatch, Rows, assemble_rows
from training.pyfunc import RecommenderModel
from training.ranking import ScoredItem


class BrokenScorer:
    kind = "broken"

    def score(self, rows: Rows) -> np.ndarray:
        raise RuntimeError("shadow model crashed")


def loaded(version: int, alias: str | None, scorer: object) -> LoadedModel:
    return LoadedModel("m", version, alias, RecommenderModel(scorer))  # type: ignore[arg-type]


CATALOG = load_catalog()
A, B = list(CATALOG)[:2]
INPUTS = RowInputs({"clicks_1h": 2}, {A: {"clicks_1h": 7}}, [A, B])
ROWS = RowBatch(
    assemble_rows("u-1", "US-CA", "unknown", INPUTS.user,
                  [(pid, INPUTS.products.get(pid, {})) for pid in INPUTS.candidates],
                  CATALOG, 1_767_225_600.0)
)  # fmt: skip


def record(n: int, shadow: LoadedModel | None = None) -> PredictionRecord:
    rows = ROWS
    ranked = [ScoredItem(B, 0.6), ScoredItem(A, 0.4)]
    return PredictionRecord(
        request_id=f"r-{n}",
        ts=1_767_225_600.0,
        route="recommendations",
        user_id=f"u-{n}",
        region="US-CA",
        device="unknown",
        k=1,
        model=loaded(1, "champion", OffsetScorer(0.1)),
        items=ranked[:1],
        ranked=ranked,
        removed=3,
        rows=rows,
        inputs=INPUTS,
        ages=FeatureAges(user={"clicks_1h": 5.0}, product={"clicks_1h": None}),
        latency_ms=1.23456,
        shadow=shadow,
    )


def counter(metrics: ServingMetrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "tributary_serving_prediction_log_total", {"outcome": outcome}
    )
    return value or 0.0


def test_records_are_encoded_in_row_order_with_the_ranked_items() -> None:
    sink, metrics = ListSink(), ServingMetrics()
    log = PredictionLog(sink, metrics, capacity=10)
    log.start()
    assert log.submit(record(1))
    log.close()
    ((key, value),) = sink.records
    assert key == b"u-1"
    assert value["ts"] == "2026-01-01T00:00:00.000Z" and value["latency_ms"] == 1.235
    assert value["candidates"] == [A, B] and value["scores"] == [0.4, 0.6]
    assert value["items"] == [{"product_id": B, "score": 0.6}] and value["removed"] == 3
    assert list(value["features"]) == list(COLUMNS)
    assert value["features"] == ROWS.column_lists()
    assert value["features"]["user_clicks_1h"] == [2, 2]
    assert value["features"]["product_clicks_1h"] == [7, 0]
    assert value["model"] == {"name": "m", "version": 1, "alias": "champion"}
    assert value["feature_ages"] == {"user": {"clicks_1h": 5.0}, "product": {"clicks_1h": None}}
    assert value["shadow"] is None and counter(metrics, "sent") == 1


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    sink, metrics = ListSink(), ServingMetrics()
    sink.hold.clear()  # the broker is stuck
    log = PredictionLog(sink, metrics, capacity=5)
    log.start()
    assert log.submit(record(0))
    assert sink.sending.wait(10)  # the worker is stuck sending record 0
    accepted = [log.submit(record(n)) for n in range(1, 51)]
    assert accepted == [True] * 5 + [False] * 45
    assert counter(metrics, "dropped") == 45
    sink.hold.set()
    log.close()
    assert [v["request_id"] for _, v in sink.records] == [f"r-{n}" for n in range(6)]
    assert sink.closed


def test_shutdown_drains_everything_queued() -> None:
    sink = ListSink()
    log = PredictionLog(sink, ServingMetrics(), capacity=1000)
    log.start()
    for n in range(500):
        log.submit(record(n))
    log.close()
    assert [v["request_id"] for _, v in sink.records] == [f"r-{n}" for n in range(500)]


def test_the_shadow_scores_after_the_response_and_may_fail_alone() -> None:
    sink, metrics = ListSink(), ServingMetrics()
    log = PredictionLog(sink, metrics, capacity=10)
    log.start()
    log.submit(record(1, shadow=loaded(2, "challenger", OffsetScorer(0.3))))
    log.submit(record(2, shadow=loaded(3, "challenger", BrokenScorer())))
    log.close()
    first, second = (value for _, value in sink.records)
    assert first["shadow"]["model"] == {"name": "m", "version": 2, "alias": "challenger"}
    assert first["shadow"]["scores"] == OffsetScorer(0.3).score(record(1).rows).tolist()
    assert second["shadow"] is None and counter(metrics, "shadow_failed") == 1
    assert counter(metrics, "sent") == 2
