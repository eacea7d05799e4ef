"""Reference profiles on the real MLflow: logged by training, loaded by version."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from deltalake import write_deltalake

from infra.contracts.tables import PARTITION_BY, TableName
from infra.errors import NotFoundError
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from training.contract import COLUMNS
from training.dataset import simulated_events
from training.profiles import PER_REQUEST, PROFILE_ARTIFACT, load_profile
from training.promotion import VALIDATION_ARTIFACT
from training.registry import Registry, log_recommender
from training.replay import REFERENCE_REQUESTS
from training.train import TrainRequest, train

pytestmark = pytest.mark.integration

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def bronze(profile_settings: Settings) -> Settings:
    config = SimulationConfig(events=40_000, seed=9, history_days=3, users=600, anchor=ANCHOR)
    write_deltalake(
        profile_settings.table_uri(TableName.BRONZE_EVENTS), simulated_events(config),
        partition_by=PARTITION_BY[TableName.BRONZE_EVENTS],
    )  # fmt: skip
    return profile_settings


def test_a_trained_version_has_a_profile_of_its_reference_requests_and_an_old_one_has_none(
    bronze: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    report = train(bronze, TrainRequest(kind="river", progress=False))
    profile = load_profile(bronze, report.version)
    assert profile is not None
    # serving-shaped: session starts of the validation part, every allowed product each
    assert profile.reference_kind == "requests"
    assert 0 < profile.requests == report.reference_requests <= REFERENCE_REQUESTS
    rows = report.reference_rows
    assert profile.rows == rows and rows > 300 * profile.requests  # the whole catalog, less
    # a request's shopper and context count once, its candidates once per row (as the monitor)
    for name, numeric in profile.numeric.items():
        assert sum(numeric.counts) == (profile.requests if name in PER_REQUEST else rows), name
    for name, categorical in profile.categorical.items():
        expected = profile.requests if name in PER_REQUEST else rows
        assert sum(categorical.counts.values()) == expected, name
    assert profile.logged_requests == 0  # nothing was served: no logged reference
    assert sum(profile.score.counts) == rows  # the model's scores of those rows
    assert profile.numeric["invasive_here"].counts == [rows]  # never a candidate
    assert 0.5 < profile.estimated_roc_auc < 1 and 0 < profile.estimated_conversion < 1
    assert profile.roc_auc == pytest.approx(report.valid_auc, abs=1e-4)  # validation's
    version = Registry(bronze).version(report.version)
    assert profile.window_start == datetime.fromisoformat(version.tags["window_start"])
    assert profile.window_end == datetime.fromisoformat(version.tags["window_end"])
    assert set(profile.categorical["device"].counts) <= {"mobile", "desktop", "tablet", "unknown"}

    old = _version_without_profile(bronze, report.version, report.run_id)
    with caplog.at_level(logging.WARNING, logger="training.profiles"):
        assert load_profile(bronze, old) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "training.profiles"]
    assert len(lines) == 1 and f"model version {old} has no reference profile" in lines[0]
    assert PROFILE_ARTIFACT in lines[0]
    with pytest.raises(NotFoundError):
        load_profile(bronze, old + 100)


def _version_without_profile(settings: Settings, version: int, run_id: str) -> int:
    """Register the same model again from a run that logged no profile, as older code did."""
    registry = Registry(settings)
    model = registry.load(version)
    validation = Path(registry.client.download_artifacts(run_id, VALIDATION_ARTIFACT))
    example = pd.read_parquet(validation)[list(COLUMNS)].head(5)
    with mlflow.start_run(run_name="before-profiles"):
        return log_recommender(settings, model, input_example=example,
                               delta_versions={}).version  # fmt: skip
