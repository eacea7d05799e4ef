"""Promotion gates on a real MLflow registry: each bad model fails its own gate."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from tests.scorers import PopularityScorer, RandomScorer, SlowScorer, SponsoringModel
from training.contract import COLUMNS
from training.dataset import build_rows, simulated_events, time_split
from training.promotion import (
    MODEL_CARD_ARTIFACT,
    VALIDATION_ARTIFACT,
    GateFailedError,
    evaluate,
    promote,
)
from training.pyfunc import RecommenderModel
from training.registry import (
    CHALLENGER,
    CHAMPION,
    Registry,
    configure,
    experiment_name,
    lineage_tags,
    log_recommender,
)
from training.webhook import WebhookReceiver, ensure_webhook

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def validation() -> pd.DataFrame:
    anchor = datetime(2026, 11, 20, tzinfo=UTC)
    config = SimulationConfig(events=120_000, seed=11, history_days=4, users=1500, anchor=anchor)
    frame = build_rows(simulated_events(config), 0.0, anchor.timestamp(), load_catalog())
    return time_split(frame, 0.3)[1]


def register(
    settings: Settings,
    model: RecommenderModel,
    validation: pd.DataFrame,
    signature: ModelSignature | None = None,
) -> int:
    configure(settings)
    mlflow.set_experiment(experiment_name(settings))
    with mlflow.start_run(), tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(VALIDATION_ARTIFACT).name
        validation.to_parquet(path)
        mlflow.log_artifact(str(path), str(Path(VALIDATION_ARTIFACT).parent))
        mlflow.log_text(f"# Model card\n\nA {model.kind} model.\n", MODEL_CARD_ARTIFACT)
        if signature is None:
            example = validation[list(COLUMNS)].head(3)
            registered = log_recommender(
                settings, model, input_example=example, delta_versions={"bronze/events": 1}
            )
            return registered.version
        info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature)
        tags = lineage_tags({"bronze/events": 1}, model.kind)
        return int(mlflow.register_model(info.model_uri, settings.registered_model_name,
                                         tags=tags).version)  # fmt: skip


def failed(error: GateFailedError) -> set[str]:
    return {result.gate for result in error.report.results if not result.passed}


def test_a_good_model_passes_every_gate_and_becomes_champion(
    profile_settings: Settings, validation: pd.DataFrame
) -> None:
    version = register(profile_settings, RecommenderModel(PopularityScorer()), validation)
    report = promote(profile_settings, version)
    assert report.promoted and report.previous_champion is None
    assert [r.gate for r in report.results] == [
        "auc", "segments", "signature", "latency", "compliance", "pii",
    ]  # fmt: skip
    assert report.results[0].numbers["auc"] > 0.6
    registry = Registry(profile_settings)
    champion = registry.alias(CHAMPION)
    assert champion is not None and champion.version == version
    assert champion.tags["gates"] == "passed" and champion.tags["gate.compliance"] == "pass"
    card = registry.client.download_artifacts(champion.run_id, MODEL_CARD_ARTIFACT)
    assert "## Promotion gates" in Path(card).read_text()


def test_bad_models_each_fail_their_own_gate(
    profile_settings: Settings, validation: pd.DataFrame
) -> None:
    random = register(profile_settings, RecommenderModel(RandomScorer()), validation)
    with pytest.raises(GateFailedError) as error:
        promote(profile_settings, random)
    assert failed(error.value) >= {"auc"} and "compliance" not in failed(error.value)
    assert "validation AUC 0.4" in str(error.value) or "validation AUC 0.5" in str(error.value)

    sponsoring = register(profile_settings, SponsoringModel(PopularityScorer()), validation)
    with pytest.raises(GateFailedError) as error:
        promote(profile_settings, sponsoring)
    assert failed(error.value) == {"compliance"}
    assert "invasive recommendation(s)" in str(error.value)

    slow = register(profile_settings, RecommenderModel(SlowScorer()), validation)
    with pytest.raises(GateFailedError) as error:
        promote(profile_settings, slow)
    assert failed(error.value) == {"latency"}
    assert Registry(profile_settings).version(slow).tags["gate.latency"] == "fail"

    wrong = Schema([ColSpec("string", "user_id"), ColSpec("double", "product_id")])
    signature = ModelSignature(inputs=wrong, outputs=Schema([ColSpec("double", "score")]))
    unsigned = register(
        profile_settings, RecommenderModel(PopularityScorer()), validation, signature
    )
    with pytest.raises(GateFailedError) as error:
        promote(profile_settings, unsigned)
    assert failed(error.value) == {"signature"}
    assert "input product_id is double, the contract says string" in str(error.value)
    assert Registry(profile_settings).alias(CHAMPION) is None  # nothing was promoted


def test_a_challenger_must_not_be_worse_than_the_champion_and_rollback_restores(
    profile_settings: Settings, validation: pd.DataFrame
) -> None:
    first = register(profile_settings, RecommenderModel(PopularityScorer()), validation)
    promote(profile_settings, first)
    second = register(profile_settings, RecommenderModel(PopularityScorer(0.5)), validation)
    report = promote(profile_settings, second)
    assert report.previous_champion == first
    assert report.results[0].numbers["champion_version"] == first
    registry = Registry(profile_settings)
    assert registry.rollback() == (second, first)
    champion = registry.alias(CHAMPION)
    assert champion is not None and champion.version == first


def test_evaluate_records_results_without_moving_champion(
    profile_settings: Settings, validation: pd.DataFrame
) -> None:
    version = register(profile_settings, RecommenderModel(PopularityScorer()), validation)
    report = evaluate(profile_settings, version)
    assert report.passed and not report.promoted
    assert Registry(profile_settings).alias(CHAMPION) is None
    assert Registry(profile_settings).version(version).tags["gates"] == "passed"


@pytest.fixture
def receiver(profile_settings: Settings) -> Iterator[tuple[WebhookReceiver, list[int]]]:
    seen: list[int] = []
    hook = WebhookReceiver(profile_settings, seen.append, port=0).start()
    ensure_webhook(profile_settings, hook.url)
    try:
        yield hook, seen
    finally:
        hook.stop()


def test_a_new_challenger_alias_reaches_the_webhook(
    profile_settings: Settings,
    validation: pd.DataFrame,
    receiver: tuple[WebhookReceiver, list[int]],
) -> None:
    _, seen = receiver
    version = register(profile_settings, RecommenderModel(PopularityScorer()), validation)
    Registry(profile_settings).set_alias(CHALLENGER, version)
    deadline = time.monotonic() + 30  # MLflow delivers from a background thread pool
    while not seen and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(seen) == {version}
