"""Reference profiles: quantile bins, category counts, the score profile, the JSON form.

And the population they describe: serving-shaped reference requests, which on
steady traffic look like what serving logs later, where training impressions do not.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from scipy.special import expit

from infra.errors import StackError
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from monitoring.stats import category_counts, js_distance, psi
from training import profiles
from training.contract import CATEGORICALS, NUMERIC
from training.dataset import build_rows, simulated_events, time_split
from training.metrics import estimated_roc_auc, roc_auc
from training.profiles import (
    PER_REQUEST,
    PROFILE_ARTIFACT,
    NumericProfile,
    ReferenceProfile,
    build_profile,
    load_profile,
    log_profile,
    quantile_edges,
)
from training.registry import RegisteredVersion
from training.replay import REQUEST, ReferenceRequests

REGIONS = ("US-CA", "US-NY", "US-TX")


def _rows(n: int, seed: int, first_minute: int = 0) -> pd.DataFrame:
    """Contract-shaped rows: a continuous 0..99 price, a zero-heavy count, the rest random."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({name: rng.gamma(2.0, 3.0, n) for name in NUMERIC})
    frame["price"] = np.arange(n, dtype=np.float64) % 100
    # 80 % zeros, then 10 % ones, 5 % twos, 5 % threes
    frame["product_clicks_1h"] = rng.permutation(
        np.repeat([0, 1, 2, 3], _shares(n, 0.8, 0.1, 0.05))
    )
    frame["pet_safe"] = rng.integers(0, 2, n)
    for name in CATEGORICALS:
        frame[name] = pd.array(rng.choice(REGIONS, n), dtype="string")
    frame["label"] = (rng.random(n) < 0.2).astype(np.int64)
    frame["event_ts"] = 1_800_000_000.0 + (first_minute + np.arange(n)) * 60.0
    return frame


def _shares(n: int, *shares: float) -> list[int]:
    counts = [round(n * share) for share in shares]
    return [*counts, n - sum(counts)]


def _requests(n: int, seed: int) -> pd.DataFrame:
    """Rows shaped like reference requests: 50 rows to a request, one shopper and context each."""
    frame = _rows(n, seed).assign(**{REQUEST: np.arange(n) // 50})
    for name in PER_REQUEST:
        frame[name] = frame.groupby(REQUEST)[name].transform("first")
    return frame


def _monitored(rows: pd.DataFrame, name: str) -> np.ndarray:
    """A column's values as the monitor counts them: a request's shopper and context once."""
    values: np.ndarray = rows[name].to_numpy()
    return values if name not in PER_REQUEST else values[~rows[REQUEST].duplicated().to_numpy()]


def _scores(n: int, seed: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, n)


@pytest.fixture
def profile() -> ReferenceProfile:
    reference, valid = _requests(1_000, seed=1), _rows(200, seed=2, first_minute=1_000)
    return build_profile(reference, _scores(1_000, 8), valid, _scores(200, 3))


def test_numeric_edges_are_deduplicated_quantiles_of_the_reference_rows(
    profile: ReferenceProfile,
) -> None:
    # 1,000 rows of 0..99, ten of each: the 10 % quantile is 9.9, which moves up
    # to the next value seen (10), so bin 0 holds 0..9 exactly
    assert profile.numeric["price"].edges == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0,
                                              90.0]  # fmt: skip
    assert profile.numeric["price"].counts == [100] * 10
    # 80 % zeros: the quantiles up to 0.7 are 0 and the 0.8 one is 0.2 (between
    # rows 799 and 800), all of which move up to 1, so zero gets a bin of its own;
    # the 0.9 quantile (1.1) moves up to 2: three bins instead of ten
    clicks = profile.numeric["product_clicks_1h"]
    assert clicks.edges == [1.0, 2.0] and clicks.counts == [800, 100, 100]
    assert profile.numeric["pet_safe"].edges == [1.0]  # two values, two bins


def test_every_contract_column_is_profiled_and_counts_sum_to_the_rows(
    profile: ReferenceProfile,
) -> None:
    assert set(profile.numeric) == set(NUMERIC) and set(profile.categorical) == set(CATEGORICALS)
    assert profile.rows == 1_000
    for name, numeric in profile.numeric.items():
        # a request's shopper is one observation, its 50 candidates fifty (as the monitor counts)
        assert sum(numeric.counts) == (20 if name in PER_REQUEST else 1_000), name
        assert len(numeric.counts) == len(numeric.edges) + 1 <= 10, name
        assert numeric.edges == sorted(set(numeric.edges)), name
        assert min(numeric.counts) > 0, name  # the edge rule leaves no empty bins
    for name, categorical in profile.categorical.items():
        assert sum(categorical.counts.values()) == (20 if name in PER_REQUEST else 1_000), name
    assert sum(profile.score.counts) == 1_000 and len(profile.score.counts) == 10


def test_categorical_counts_are_exact() -> None:
    reference = _rows(30, seed=4).assign(**{REQUEST: np.arange(30)})  # one row a request
    reference["region"] = ["US-CA"] * 17 + ["US-NY"] * 12 + ["EU-DE"]
    profile = build_profile(reference, np.full(30, 0.5), _rows(10, seed=5), np.full(10, 0.5))
    assert profile.categorical["region"].counts == {"EU-DE": 1, "US-CA": 17, "US-NY": 12}
    # three requests of ten rows: a region counts once per request, a category once per row
    reference[REQUEST] = np.arange(30) // 10
    reference["region"] = ["US-CA"] * 20 + ["EU-DE"] * 10
    reference["category"] = ["cactus"] * 25 + ["fern"] * 5
    profile = build_profile(reference, np.full(30, 0.5), _rows(10, seed=5), np.full(10, 0.5))
    assert profile.categorical["region"].counts == {"EU-DE": 1, "US-CA": 2}
    assert profile.categorical["category"].counts == {"cactus": 25, "fern": 5}


def test_validation_rate_auc_and_window(profile: ReferenceProfile) -> None:
    valid = _rows(200, seed=2)
    scores = _scores(200, 3)
    assert profile.positive_rate == pytest.approx(valid["label"].mean())
    assert profile.roc_auc == pytest.approx(roc_auc(valid["label"], scores))
    assert profile.window_start == datetime.fromtimestamp(1_800_000_000.0, UTC)
    # from the first reference row to the last validation row
    assert profile.window_end == datetime.fromtimestamp(1_800_000_000.0 + 1_199 * 60.0, UTC)
    window = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 8, tzinfo=UTC))
    given = build_profile(_requests(50, 1), _scores(50, 1), valid, scores, window=window)
    assert (given.window_start, given.window_end) == window


def test_bin_numeric_of_the_reference_values_gives_the_stored_counts(
    profile: ReferenceProfile,
) -> None:
    reference = _requests(1_000, seed=1)
    for name in NUMERIC:
        binned = profile.bin_numeric(name, _monitored(reference, name))
        assert binned.tolist() == profile.numeric[name].counts, name
    assert profile.bin_numeric("score", _scores(1_000, 8)).tolist() == profile.score.counts
    # the bin rule: edges[i-1] <= x < edges[i]
    assert profile.bin_numeric("price", np.array([9.99, 10.0, 95.0, 1e9])).tolist() == [
        1, 1, 0, 0, 0, 0, 0, 0, 0, 2
    ]  # fmt: skip


def test_json_round_trip_is_exact_and_small(profile: ReferenceProfile) -> None:
    text = profile.model_dump_json()
    again = ReferenceProfile.model_validate_json(text)
    assert again == profile
    reference = _requests(1_000, seed=1)
    spend = _monitored(reference, "user_spend_30d")
    assert again.bin_numeric("user_spend_30d", spend).tolist() == (
        profile.numeric["user_spend_30d"].counts
    )
    assert len(text) < 8_000


def test_a_one_class_validation_set_keeps_its_nan_auc_through_json() -> None:
    valid = _rows(20, seed=6).assign(label=0)
    profile = build_profile(_requests(50, seed=7), _scores(50, 7), valid, np.linspace(0, 1, 20))
    again = ReferenceProfile.model_validate_json(profile.model_dump_json())
    assert math.isnan(again.roc_auc) and again.positive_rate == 0.0


def test_the_profile_describes_the_reference_requests_and_their_scores() -> None:
    reference, valid = _requests(1_000, seed=1), _rows(200, seed=2)
    # the model scores every allowed product high, its validation impressions low
    reference_scores, valid_scores = _scores(1_000, 8, 0.5, 1.0), _scores(200, 3, 0.0, 0.5)
    profile = build_profile(reference, reference_scores, valid, valid_scores)
    assert profile.reference_kind == "requests" and profile.requests == 20
    assert profile.rows == sum(profile.score.counts) == 1_000
    assert min(profile.score.edges) >= 0.5  # the bins are the reference scores'
    assert profile.estimated_roc_auc == pytest.approx(estimated_roc_auc(reference_scores))
    assert profile.estimated_conversion == pytest.approx(reference_scores.mean())
    assert profile.positive_rate == pytest.approx(valid["label"].mean())  # validation's
    assert profile.roc_auc == pytest.approx(roc_auc(valid["label"], valid_scores))
    with pytest.raises(ValueError, match="999 scores for 1000 reference rows"):
        build_profile(reference, reference_scores[1:], valid, valid_scores)


def test_without_reference_requests_the_validation_impressions_stand_in() -> None:
    valid, scores = _rows(200, seed=2), _scores(200, 3)
    fallback = build_profile(_requests(0, seed=1), np.array([]), valid, scores)
    assert fallback.reference_kind == "impressions" and fallback.requests == 0
    assert fallback.rows == sum(fallback.score.counts) == 200
    assert fallback.numeric["price"].counts == NumericProfile.of(valid["price"]).counts
    assert fallback.estimated_roc_auc == pytest.approx(estimated_roc_auc(scores))
    # rows without a request column are impressions too
    impressions = build_profile(_rows(100, seed=4), _scores(100, 4), valid, scores)
    assert impressions.reference_kind == "impressions" and impressions.rows == 100


def test_a_profile_written_before_reference_requests_still_reads(
    profile: ReferenceProfile,
) -> None:
    old = json.loads(profile.model_dump_json())
    for name in ("reference_kind", "requests", "estimated_roc_auc", "estimated_conversion"):
        del old[name]
    read = ReferenceProfile.model_validate_json(json.dumps(old))
    assert read.reference_kind == "impressions" and read.requests == 0
    assert math.isnan(read.estimated_roc_auc) and math.isnan(read.estimated_conversion)
    assert read.numeric == profile.numeric and read.format == 1


def test_degenerate_columns_get_one_bin() -> None:
    assert quantile_edges(np.full(50, 3.0), 10) == []
    assert quantile_edges(np.array([np.nan, np.nan]), 10) == []
    constant = NumericProfile.of(np.full(50, 3.0))
    assert constant.counts == [50] and constant.rows == 50


def test_log_profile_needs_an_active_run(profile: ReferenceProfile) -> None:
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_profile(profile)


# -- the population: reference requests vs what serving logs later ------------------------

ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)
# PSI noise is about (1/n + 1/m)(bins - 1) with n, m *requests* for the user columns (a
# request repeats its user's values on every row): 500 on each side keeps it near 0.02
STREAM_REQUESTS = 500


def _model(rows: pd.DataFrame) -> np.ndarray:
    """A fixed stand-in for a trained model: what matters is that both sides use it."""
    logit = (
        -4.0 + 3.0 * rows["product_ctr_24h"].to_numpy(np.float64)
        + 0.3 * np.log1p(rows["user_clicks_1h"].to_numpy(np.float64))
        + 0.2 * rows["pet_safe"].to_numpy(np.float64)
    )  # fmt: skip
    return np.asarray(expit(logit), dtype=np.float64)


@pytest.fixture(scope="module")
def steady() -> tuple[ReferenceProfile, ReferenceProfile, pd.DataFrame]:
    """Profiles of a steady week (new and old kind) and serving-shaped rows of the day after."""
    catalog = load_catalog()
    week = simulated_events(
        SimulationConfig(events=100_000, seed=42, history_days=7, anchor=ANCHOR)
    )
    day_after = simulated_events(  # the same shop and shoppers, at the same rate
        SimulationConfig(events=14_286, seed=43, history_days=1, anchor=ANCHOR + timedelta(days=1))
    )
    requests = ReferenceRequests(validation_fraction=0.2, max_requests=STREAM_REQUESTS)
    start, end = (ANCHOR - timedelta(days=7)).timestamp(), ANCHOR.timestamp()
    rows = build_rows(week, start, end, catalog, requests=requests)
    train, valid = time_split(rows, 0.2)
    valid_scores = _model(valid)
    reference = requests.frame
    profile = build_profile(reference, _model(reference), valid, valid_scores)
    before = build_profile(train, _model(train), valid, valid_scores)  # impressions, as before
    # session starts of the day after, with the week as history: what serving will log
    later = ReferenceRequests(validation_fraction=0.5, max_requests=STREAM_REQUESTS)
    both = pa.concat_tables([week, day_after])
    build_rows(both, end, (ANCHOR + timedelta(days=1)).timestamp(), catalog, requests=later)
    return profile, before, later.frame


def _psi(profile: ReferenceProfile, name: str, rows: pd.DataFrame) -> float:
    values = _model(rows) if name == "score" else _monitored(rows, name).astype(np.float64)
    return psi(profile.numeric_profile(name).counts, profile.bin_numeric(name, values))


def test_on_steady_traffic_served_rows_match_the_reference_requests_not_impressions(
    steady: tuple[ReferenceProfile, ReferenceProfile, pd.DataFrame],
) -> None:
    profile, before, served = steady
    assert profile.reference_kind == "requests" and profile.requests == STREAM_REQUESTS
    assert served[REQUEST].nunique() == STREAM_REQUESTS
    drift = {name: _psi(profile, name, served) for name in (*NUMERIC, "score")}
    # measured: user columns <= 0.05 (the 30-day ones grow with the simulated history,
    # which starts empty), product columns <= 0.02, the score 0.01
    assert max(drift.values()) < 0.1, drift
    assert max(v for k, v in drift.items() if k.startswith("product_")) < 0.05, drift
    # the old reference, training impressions: a shown item is read mid-session (0 hours
    # since the user's last event, an hour of impressions counted), a request at the start
    old = {name: _psi(before, name, served) for name in (*NUMERIC, "score")}
    assert old["user_hours_since_last_event"] > 3.0, old  # measured 6.6
    assert old["user_impressions_1h"] > 2.0 and old["user_clicks_1h"] > 0.5, old
    assert old["invasive_here"] > 0.2, old  # the shop shows invasive plants; serving never
    for name in ("category", "light"):  # the catalog's mix, not the popular plants'
        counts = category_counts(served[name].tolist())
        now = js_distance(profile.categorical[name].counts, counts)
        assert now < 0.02 < js_distance(before.categorical[name].counts, counts), name


# -- load_profile's answers, against a stand-in registry (the real one: tests/integration) ----


class _Client:
    def __init__(self, listed: list[str] | Exception, text: str = "") -> None:
        self.listed, self.text = listed, text

    def list_artifacts(self, run_id: str, path: str) -> list[FileInfo]:
        if isinstance(self.listed, Exception):
            raise self.listed
        return [FileInfo(name, False, 10) for name in self.listed if name.startswith(path)]

    def download_artifacts(self, run_id: str, path: str, folder: str) -> str:
        target = Path(folder) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.text)
        return str(target)


def _registry(client: _Client, run_id: str = "run-1") -> type:
    class StandIn:
        def __init__(self, settings: Settings) -> None:
            self.client = client

        def version(self, number: int) -> RegisteredVersion:
            return RegisteredVersion("plant-recommender", number, run_id, {})

    return StandIn


def test_load_profile_reads_the_artifact(
    profile: ReferenceProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _Client([PROFILE_ARTIFACT], profile.model_dump_json())
    monkeypatch.setattr(profiles, "Registry", _registry(client))
    assert load_profile(Settings(), 4) == profile


def test_load_profile_is_none_with_one_line_for_a_version_without_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(profiles, "Registry", _registry(_Client(["monitoring/other.json"])))
    with caplog.at_level(logging.WARNING, logger="training.profiles"):
        assert load_profile(Settings(), 3) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"model version 3 has no reference profile ({PROFILE_ARTIFACT} in run run-1): "
        "no drift is measured for it"
    ]
    monkeypatch.setattr(profiles, "Registry", _registry(_Client([]), run_id=""))
    assert load_profile(Settings(), 5) is None  # a version registered without a run


def test_load_profile_raises_when_the_server_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None would be remembered as "this version has no profile"; an outage is not that
    for error in (MlflowException("API request failed: connection refused"),
                  ConnectionError("connection refused")):  # fmt: skip
        monkeypatch.setattr(profiles, "Registry", _registry(_Client(error)))
        with pytest.raises(StackError, match="cannot list the artifacts of run run-1"):
            load_profile(Settings(), 3)
    unreadable = _Client([PROFILE_ARTIFACT], '{"format": 2}')
    monkeypatch.setattr(profiles, "Registry", _registry(unreadable))
    assert load_profile(Settings(), 3) is None
