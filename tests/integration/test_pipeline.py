"""The streaming pipeline on the real stack: bad input, online values, backfill, processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from prometheus_client import REGISTRY
from redis import Redis

from flows.features.definitions import get_view
from flows.features.online import read_features
from flows.runner import RunPlan, run_process
from infra.cli.app import main
from infra.contracts.tables import TableName
from infra.plantly.catalog import ensure_catalog_table
from infra.plantly.simulator import Scenario, ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from tests.local_stack import free_port_block, settings_env

pytestmark = pytest.mark.integration

EVENTS = 20_000


def fresh_profile(stack: Settings, tmp_path: Path) -> Settings:
    settings = stack.model_copy(
        update={
            "profile": f"pipe{random.randrange(10**8)}",
            "state_dir": tmp_path,
            "lake_root": str(tmp_path / "lake"),
            "metrics_port": 0,
        }
    )
    ensure_topics(settings.kafka_bootstrap, settings.all_topics(), settings.topic_partitions)
    ensure_catalog_table(settings)
    return settings


@pytest.fixture(scope="module")
def landed(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Bad-input traffic, ingested and featurised by the runner, to the topics' end."""
    settings = fresh_profile(stack_settings, tmp_path_factory.mktemp("pipeline"))
    config = SimulationConfig(
        events=EVENTS, seed=31, history_days=2, scenario=Scenario.BAD_INPUT, bad_fraction=0.05
    )
    send_traffic(ShopSimulator(config), [KafkaSink(settings)])
    for flow in ("ingest", "features"):
        run_process(settings, RunPlan(flow=flow, recovery=False, tail=False))
    yield settings


def bronze_events(settings: Settings) -> list[dict[str, Any]]:
    table = DeltaTable(settings.table_uri(TableName.BRONZE_EVENTS)).to_pyarrow_table()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def recount(events: list[dict[str, Any]], key: str, as_of: float) -> dict[str, dict[str, Any]]:
    """Feature values by brute force over bronze rows: an independent implementation."""

    def tiles_back(ts: float, size: int, count: int) -> bool:
        return int(as_of) // size - count < int(ts) // size <= int(as_of) // size

    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        ts, kind, c = e["event_ts"].timestamp(), e["event_type"], counts[e[key]]
        windows = {"1h": tiles_back(ts, 60, 60), "24h": tiles_back(ts, 3600, 24)}
        windows |= {"7d": tiles_back(ts, 3600, 168), "30d": tiles_back(ts, 3600, 720)}
        for window, inside in windows.items():
            if inside:
                c[f"{kind}_{window}"] += 1
                if kind == "purchase":
                    c[f"spend_{window}"] += round(e["price"] * e["quantity"] * 100)
        c["last"] = max(c["last"], ts)
    if key == "user_id":
        return {
            entity: {
                "impressions_1h": c["impression_1h"],
                "clicks_1h": c["click_1h"],
                "add_to_cart_24h": c["add_to_cart_24h"],
                "purchases_30d": c["purchase_30d"],
                "spend_30d": c["spend_30d"] / 100,
                "ctr_7d": c["click_7d"] / max(c["impression_7d"], 1),
                "last_event_ts": c["last"],
            }
            for entity, c in counts.items()
        }
    return {
        entity: {
            "impressions_1h": c["impression_1h"],
            "clicks_1h": c["click_1h"],
            "purchases_24h": c["purchase_24h"],
            "ctr_24h": c["click_24h"] / max(c["impression_24h"], 1),
            "conversion_24h": c["purchase_24h"] / max(c["impression_24h"], 1),
        }
        for entity, c in counts.items()
    }


@pytest.mark.parametrize(("view", "key"), [("user", "user_id"), ("product", "product_id")])
def test_online_values_equal_a_recount_from_bronze(landed: Settings, view: str, key: str) -> None:
    events = bronze_events(landed)
    assert len(events) < EVENTS  # the malformed ones are not in bronze
    as_of = max(e["event_ts"] for e in events).timestamp() + 1
    expected = recount(events, key, as_of)
    client = Redis.from_url(landed.redis_url)
    rows = read_features(client, landed, view, sorted(expected), as_of=as_of)
    assert len(rows) == len(expected) > 100
    for row in rows:
        assert row.found
        assert row.features == pytest.approx(expected[row.entity_id]), row.entity_id
    assert set(rows[0].features) == set(get_view(view).names)


def test_flows_export_their_metrics(landed: Settings) -> None:
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    topic = landed.topic("shop.events")
    assert value("tributary_flow_events_in_total", flow="ingest", topic=topic) >= EVENTS
    assert value("tributary_flow_rejects_total", flow="ingest", reason="non_finite") > 0
    assert value("tributary_delta_commit_seconds_count", flow="ingest", table="bronze/events") > 0
    assert value("tributary_redis_write_seconds_count", flow="features") > 0
    assert value("tributary_feature_freshness_seconds_count", flow="features", view="user") > 0
    assert value("tributary_flow_last_processed_timestamp_seconds", flow="features") > 0


def test_backfill_rebuilds_a_flushed_online_store(
    landed: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Redis.from_url(landed.redis_url)
    pattern = f"{landed.profile}:fv:*"
    before = {key: client.get(key) for key in client.scan_iter(pattern)}
    assert len(before) > 1_000
    client.delete(*before)
    assert not list(client.scan_iter(pattern))

    for name, value in settings_env(landed).items():
        monkeypatch.setenv(name, value)
    today = datetime.now(UTC).date()
    start = (today - timedelta(days=3)).isoformat()
    with pytest.raises(SystemExit) as done:
        main(["backfill", "--from", start, "--to", today.isoformat(), "--json"])
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events_replayed"] == len(bronze_events(landed))
    after = {key: client.get(key) for key in client.scan_iter(pattern)}
    assert after == before  # every entity, byte for byte


def test_two_processes_split_the_partitions(stack_settings: Settings, tmp_path: Path) -> None:
    settings = fresh_profile(stack_settings, tmp_path).model_copy(
        update={"metrics_port": free_port_block(2)}
    )
    config = SimulationConfig(events=8_000, seed=32, history_days=1, anchor=datetime.now(UTC))
    sent = [m for m in ShopSimulator(config).messages() if m.topic == "events"]
    send_traffic(ShopSimulator(config), [KafkaSink(settings)])
    command = [sys.executable, "-m", "infra.cli", "run", "ingest", "--processes", "2"]
    command += ["--until-end", "--no-recovery"]
    done = subprocess.run(
        command, env={**os.environ, **settings_env(settings)}, timeout=180, check=False
    )
    assert done.returncode == 0
    ids = [e["event_id"] for e in bronze_events(settings)]
    assert sorted(ids) == sorted(json.loads(m.value)["event_id"] for m in sent)
    announced = sorted(p.name for p in (tmp_path / "prometheus" / "targets").glob("*.json"))
    assert announced == [f"{settings.profile}-ingest-0.json", f"{settings.profile}-ingest-1.json"]
