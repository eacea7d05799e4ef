"""A version trained after a model served describes what serving logged, on the real stack.

Bronze holds a simulated history (written straight to Delta); a deterministic
champion answers requests through the real API in process, which logs them to
the profile's real ``ml.predictions``. Redis holds no features for this
profile, so every logged row carries the views' defaults (no product was seen
in the last hour): a reference rebuilt by replay from bronze looks nothing like
it, which makes plain which rows the profile was built from.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from deltalake import write_deltalake
from pydantic import SecretStr

from infra.contracts.tables import PARTITION_BY, TableName
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from monitoring.prediction_sample import newest_predictions
from tests.parity_stack import ADMIN_KEY, busiest_users, register_champion, requests_for, serve
from training.contract import UNKNOWN_DEVICE
from training.dataset import simulated_events
from training.logged_reference import MIN_LOGGED_REQUESTS, logged_frame
from training.profiles import PER_REQUEST, NumericProfile, ReferenceProfile, load_profile
from training.registry import Registry
from training.train import TrainRequest, train

pytestmark = pytest.mark.integration

REQUESTS = MIN_LOGGED_REQUESTS + 20
DAYS = 3


def _trained(settings: Settings, start: datetime) -> tuple[ReferenceProfile, dict[str, str], int]:
    end = datetime.now(UTC) + timedelta(seconds=1)  # after every logged request
    report = train(settings, TrainRequest(kind="river", start=start, end=end, progress=False))
    profile = load_profile(settings, report.version)
    assert profile is not None
    run = Registry(settings).client.get_run(report.run_id)
    assert report.reference_kind == profile.reference_kind
    return profile, run.data.params, report.version


def test_a_version_trained_after_serving_is_profiled_on_the_logged_requests(
    profile_settings: Settings,
) -> None:
    settings = profile_settings.model_copy(
        update={"api_keys": SecretStr(f"{ADMIN_KEY}:admin"), "metrics_port": 0}
    )
    anchor = datetime.now(UTC).replace(microsecond=0)
    config = SimulationConfig(events=40_000, seed=9, history_days=DAYS, users=600, anchor=anchor)
    write_deltalake(
        settings.table_uri(TableName.BRONZE_EVENTS), simulated_events(config),
        partition_by=PARTITION_BY[TableName.BRONZE_EVENTS],
    )  # fmt: skip
    start = anchor - timedelta(days=DAYS)

    # nothing served yet: the replayed reference
    before, params, _ = _trained(settings, start)
    assert before.reference_kind == "requests" and before.logged_requests == 0
    assert params["reference_kind"] == "requests" and params["logged_requests"] == "0"

    register_champion(settings)
    bodies = requests_for(busiest_users(settings, 11), REQUESTS, seed=3)
    ids = serve(settings, bodies)
    logged = newest_predictions(settings, 10 * REQUESTS).records
    assert {r.request_id for r in logged} == set(ids)
    rows = sum(r.rows for r in logged)

    profile, params, version = _trained(settings, start)
    assert profile.reference_kind == "logged"
    assert profile.logged_requests == profile.requests == REQUESTS
    assert params["reference_kind"] == "logged" and params["logged_requests"] == str(REQUESTS)
    assert profile.rows == rows == sum(profile.score.counts)  # every logged row, re-scored
    # counted the monitor's way: a request's region and device once, its candidates' columns
    # once per row
    regions = Counter(body["region"] for body in bodies)
    assert profile.categorical["region"].counts == dict(sorted(regions.items()))
    devices = Counter(body.get("device", UNKNOWN_DEVICE) for body in bodies)
    assert profile.categorical["device"].counts == dict(sorted(devices.items()))
    for name, numeric in profile.numeric.items():
        assert sum(numeric.counts) == (REQUESTS if name in PER_REQUEST else rows), name
    categories = Counter(c for r in logged for c in r.features["category"])
    assert profile.categorical["category"].counts == dict(sorted(categories.items()))
    # no product seen in the last hour online, unlike the history the replay reads
    assert profile.numeric["product_impressions_1h"].counts == [rows]
    assert len(before.numeric["product_impressions_1h"].counts) > 1
    # the new version's scores of the logged rows, not the champion's logged scores
    rescored = Registry(settings).load(version).score_frame(logged_frame(logged))["score"]
    assert profile.bin_numeric("score", rescored.to_numpy()).tolist() == profile.score.counts
    assert profile.score == NumericProfile.of(rescored.to_numpy())
