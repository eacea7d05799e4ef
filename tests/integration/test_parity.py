"""Online/offline parity on the real stack: real events, real flows, real API, real log.

A simulated history goes through Kafka, the ingest flow (bronze Delta) and the
feature flow (Redis) to the topics' end; only then does the API answer
requests, so no request can see feature lag and parity must be exact. Then
one shopper's Redis value is overwritten with a state holding other counts,
and the requests that read it must be the ones parity reports.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY
from redis import Redis

from flows.features.codec import decode, encode
from flows.features.online import feature_key
from infra.contracts.tables import TableName
from infra.lake import table_version
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from monitoring.parity import ParityLoop, check_parity
from monitoring.prediction_sample import newest_predictions
from tests.local_stack import settings_env
from tests.parity_stack import (
    CATALOG,
    busiest_users,
    land_history,
    parity_profile,
    register_champion,
    requests_for,
    serve,
)
from training.contract import COLUMNS

pytestmark = pytest.mark.integration

REQUESTS = 48
SAFE = [p.product_id for p in CATALOG.values() if not p.invasive_regions][:40]
USER_COLUMNS = {name for name in COLUMNS if name.startswith("user_") and name != "user_id"}


@dataclass(frozen=True)
class Served:
    settings: Settings
    users: list[str]
    ids: list[str]


@pytest.fixture(scope="module")
def served(stack_settings: Settings) -> Served:
    """The session stack under a profile of this module's own, with a served history."""
    settings = parity_profile(stack_settings, f"par{random.SystemRandom().randrange(10**8)}")
    land_history(settings, SimulationConfig(events=12_000, seed=41, history_days=3))
    register_champion(settings)
    users = [*busiest_users(settings, 11), "never-seen-shopper"]
    return Served(settings, users, serve(settings, requests_for(users, REQUESTS)))


def parity_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``tributary parity ARGS`` as its own process, configured like ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "parity", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_clean_run_has_no_mismatch(served: Served) -> None:
    report = check_parity(served.settings, REQUESTS)
    tally = report.tally
    assert tally.records == REQUESTS and report.messages == REQUESTS
    assert not report.unparsed and not tally.skipped
    assert report.delta_versions == {
        TableName.BRONZE_EVENTS: table_version(served.settings, TableName.BRONZE_EVENTS)
    }
    # a quarter of the requests score the whole catalog (less the region's invasive plants)
    assert tally.values > (REQUESTS // 4) * 400 * len(COLUMNS)
    assert tally.events_replayed > 5_000
    assert tally.mismatched_values == 0, tally.examples
    assert report.mismatch_ratio == 0.0


def test_the_monitor_loop_exports_the_check(served: Served) -> None:
    loop = ParityLoop(served.settings, sample=REQUESTS)
    report = loop.run_once()
    assert report is not None and loop.failures == 0
    assert REGISTRY.get_sample_value("tributary_monitor_parity_mismatch_ratio") == 0.0
    checked = REGISTRY.get_sample_value("tributary_monitor_parity_checked_values")
    assert checked == report.tally.values > 0


def test_the_sample_is_the_newest_records(served: Served) -> None:
    sample = newest_predictions(served.settings, 10)
    sampled = {record.request_id for record in sample.records}
    assert len(sampled) == 10 and sample.messages == 10
    # broker timestamps have millisecond resolution: ties may swap neighbours at the edge
    assert set(served.ids[-8:]) <= sampled <= set(served.ids[-12:])
    everything = newest_predictions(served.settings, 10_000)
    assert {r.request_id for r in everything.records} == set(served.ids)  # all, when fewer


def test_the_command_prints_json_and_exits_0(served: Served) -> None:
    done = parity_cli(served.settings, "--sample", "12", "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert {"delta_versions", "records_checked", "values_compared", "mismatches",
            "mismatch_ratio", "examples", "records_unparsed"} <= set(body)  # fmt: skip
    assert body["records_checked"] == 12 and body["values_mismatched"] == 0
    assert set(body["mismatches"]) == set(COLUMNS) and body["examples"] == []
    usage = parity_cli(served.settings, "--sample", "0")
    assert usage.returncode == 2 and usage.stdout == ""
    assert usage.stderr.startswith("error: ") and usage.stderr.count("\n") == 1


def test_a_corrupted_redis_value_is_caught(served: Served) -> None:
    settings, victim = served.settings, served.users[0]
    client = Redis.from_url(settings.redis_url)
    key = feature_key(settings, "user", victim)
    stored = client.get(key)
    assert isinstance(stored, bytes)
    tiles = decode(stored)
    now = time.time()
    for _ in range(5):
        tiles.add("impression", now - 20.0)
    tiles.add("click", now - 10.0)
    client.set(key, encode(tiles), keepttl=True)
    client.close()

    shoppers = [victim, served.users[1], victim, served.users[2], victim, served.users[3]]
    bodies = [{"user_id": u, "region": "US-CA", "candidates": SAFE} for u in shoppers]
    ids = serve(settings, bodies)
    victim_ids = {rid for rid, user in zip(ids, shoppers, strict=True) if user == victim}

    report = check_parity(settings, len(bodies))
    tally = report.tally
    assert tally.records == len(bodies) and tally.mismatched_records == len(victim_ids)
    assert {example.request_id for example in tally.examples} <= victim_ids
    rows = len(victim_ids) * len(SAFE)
    for column in ("user_impressions_1h", "user_clicks_1h", "user_hours_since_last_event"):
        assert tally.by_column[column] == rows, column
    wrong = {name for name, count in tally.by_column.items() if count}
    assert wrong <= USER_COLUMNS  # nothing about products or the context
    assert report.mismatch_ratio > 0
    # lag only ever leaves events out: no allowance explains counts that never happened
    forgiving = check_parity(settings, len(bodies), lag_allowance_s=60)
    assert forgiving.tally.by_column == tally.by_column

    done = parity_cli(settings, "--sample", str(len(bodies)), "--json")
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["mismatches"]["user_impressions_1h"] == rows
    assert body["records_mismatched"] == len(victim_ids)
