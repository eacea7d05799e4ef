"""Training end to end on real Delta and MLflow, and the retrain worker's jobs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from deltalake import write_deltalake

from infra.contracts.tables import PARTITION_BY, TableName
from infra.kafka.producer import Producer
from infra.kafka.reader import read_topic
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from training.contract import COLUMNS
from training.dataset import simulated_events
from training.profiles import load_profile
from training.promotion import MODEL_CARD_ARTIFACT
from training.registry import CHALLENGER, CHAMPION, Registry
from training.retrainer import RetrainRequest, RetrainWorker, run_worker
from training.train import TrainReport, TrainRequest, train

pytestmark = pytest.mark.integration

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def bronze(profile_settings: Settings) -> Settings:
    """A bronze/events table with three simulated days, as ingest would leave it."""
    config = SimulationConfig(events=60_000, seed=5, history_days=3, users=800, anchor=ANCHOR)
    write_deltalake(
        profile_settings.table_uri(TableName.BRONZE_EVENTS), simulated_events(config),
        partition_by=PARTITION_BY[TableName.BRONZE_EVENTS],
    )  # fmt: skip
    return profile_settings


def test_torch_training_is_tracked_registered_and_loads_through_pyfunc(bronze: Settings) -> None:
    report = train(bronze, TrainRequest(kind="torch", device="cpu", max_epochs=3,
                                         challenger=True, progress=False))  # fmt: skip
    assert report.valid_auc > 0.6 and report.device == "cpu"
    assert report.delta_versions == {"bronze/events": 0, "catalog/products": 0}
    registry = Registry(bronze)
    version = registry.version(report.version)
    assert version.tags["delta.bronze/events"] == "0" and version.tags["feature_set_version"] == "1"
    assert version.tags["model_kind"] == "torch" and len(version.tags["git_revision"]) >= 40
    challenger = registry.alias(CHALLENGER)
    assert challenger is not None and challenger.version == report.version
    run = registry.client.get_run(report.run_id)
    assert float(run.data.params["rows"]) == report.rows
    assert run.data.metrics["valid_auc"] == pytest.approx(report.valid_auc, abs=1e-4)
    assert [m.step for m in registry.client.get_metric_history(report.run_id, "epoch_valid_auc")]
    artifacts = {a.path for a in registry.client.list_artifacts(report.run_id)}
    assert {"model_card.md", "data_check.json", "validation", "environment"} <= artifacts
    profile = load_profile(bronze, report.version)  # what the monitor measures drift against
    assert profile is not None and profile.rows == report.reference_rows > 0
    card = Path(registry.client.download_artifacts(report.run_id, MODEL_CARD_ARTIFACT))
    assert "## Metrics" in card.read_text() and "region=" in card.read_text()
    _assert_scores_through_pyfunc(f"models:/{bronze.registered_model_name}@challenger", report)


def test_river_training_loads_through_the_same_interface(bronze: Settings) -> None:
    report = train(bronze, TrainRequest(kind="river", progress=False))
    assert report.valid_auc > 0.6
    _assert_scores_through_pyfunc(f"models:/{bronze.registered_model_name}/{report.version}",
                                  report)  # fmt: skip


def _assert_scores_through_pyfunc(uri: str, report: TrainReport) -> None:
    model = mlflow.pyfunc.load_model(uri)
    rows = pd.DataFrame(model.input_example)  # the logged example, as serving would send it
    scored = model.predict(rows[list(COLUMNS)])
    assert list(scored.columns) == ["product_id", "score"] and len(scored) == len(rows)
    assert scored["score"].between(0, 1).all(), report


def test_the_retrain_worker_promotes_then_cools_down_and_retries_failures(
    bronze: Settings,
) -> None:
    worker = RetrainWorker(bronze)
    first = worker.retrain(RetrainRequest(reason="drift on region US-CA", kind="river"))
    assert first.outcome == "promoted", first.detail
    champion = Registry(bronze).alias(CHAMPION)
    assert champion is not None and champion.version == first.version
    second = worker.retrain(RetrainRequest(reason="again", kind="river"))
    assert second.outcome == "skipped" and "cooldown" in second.detail

    sleeps: list[float] = []
    calls: list[int] = []

    def failing_trainer(settings: Settings, request: TrainRequest) -> TrainReport:
        calls.append(1)
        raise ConnectionError("MLflow is down")

    no_cooldown = bronze.model_copy(
        update={"training": bronze.training.model_copy(update={"retrain_cooldown_s": 0.0})}
    )
    flaky = RetrainWorker(no_cooldown, trainer=failing_trainer, sleep=sleeps.append)
    result = flaky.retrain(RetrainRequest(reason="flaky", kind="river"))
    assert result.outcome == "failed" and result.attempts == 3 and len(calls) == 3
    assert sleeps == [5.0, 10.0]
    assert "ConnectionError: MLflow is down" in result.detail


@pytest.fixture
def worker_thread(bronze: Settings) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(bronze, stop, 0), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(30)


def test_run_worker_consumes_ml_retrain_and_dead_letters_bad_requests(
    bronze: Settings, worker_thread: threading.Event
) -> None:
    producer = Producer(bronze)
    topic = bronze.topic(bronze.topics.retrain)
    producer.send(topic, b'{"reason": "drift", "kind": "river", "window_days": 5}', b"monitor")
    producer.send(topic, b'{"reason": "", "kind": "xgboost"}', b"monitor")
    producer.send(topic, b"not json", b"monitor")
    producer.close()
    deadline = time.monotonic() + 240
    registry = Registry(bronze)
    while registry.alias(CHAMPION) is None and time.monotonic() < deadline:
        time.sleep(1)
    assert registry.alias(CHAMPION) is not None
    dead = list(read_topic(bronze, bronze.topic(bronze.topics.dlq)))
    while len(dead) < 2 and time.monotonic() < deadline:  # the worker may still be on it
        time.sleep(0.5)
        dead = list(read_topic(bronze, bronze.topic(bronze.topics.dlq)))
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert reasons == ["invalid_value", "malformed_json"]
    assert {r.value for r in dead} == {b'{"reason": "", "kind": "xgboost"}', b"not json"}
    last = json.loads(registry.client.get_registered_model(registry.name).tags["last_retrain"])
    assert last["outcome"] == "promoted" and last["detail"].startswith("drift")
