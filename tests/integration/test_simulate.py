"""The simulator against the real broker: what is sent is exactly what lands."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable

from infra.cli.app import main
from infra.contracts.tables import TableName
from infra.kafka.reader import end_offsets, read_topic
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.settings import Settings

pytestmark = pytest.mark.integration

ANCHOR = "2026-11-20T12:00:00+00:00"


def test_simulated_events_land_exactly_once(
    profile_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--events", "5000", "--history-days", "2", "--seed", "5"]
    args += ["--anchor", ANCHOR, "--jsonl", str(tmp_path), "--json"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 5000 and report["seed"] == 5

    config = SimulationConfig(
        events=5000, seed=5, history_days=2, anchor=datetime.fromisoformat(ANCHOR)
    )
    expected = [m for m in ShopSimulator(config).messages() if m.topic == "events"]
    events_topic = profile_settings.topic("shop.events")
    landed = list(read_topic(profile_settings, events_topic))
    assert len(landed) == 5000
    assert sorted(r.value for r in landed) == sorted(m.value for m in expected)
    ids = [json.loads(r.value)["event_id"] for r in landed]
    assert len(set(ids)) == 5000
    assert all(r.key == json.loads(r.value)["user_id"].encode() for r in landed)
    assert sum(end_offsets(profile_settings, events_topic).values()) == 5000

    orders = list(read_topic(profile_settings, profile_settings.topic("shop.orders")))
    assert len(orders) == report["orders"] > 0
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert sorted(lines) == sorted(r.value for r in landed)


def test_catalog_table_is_written_once(profile_settings: Settings) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--events", "10", "--json"])
    table = DeltaTable(profile_settings.table_uri(TableName.CATALOG))
    assert table.to_pyarrow_table().num_rows == len(load_catalog())
    version = table.version()
    with pytest.raises(SystemExit):
        main(["simulate", "--events", "10", "--json"])
    assert DeltaTable(profile_settings.table_uri(TableName.CATALOG)).version() == version


def test_profiles_never_share_topics(profile_settings: Settings) -> None:
    dev = profile_settings.model_copy(update={"profile": "dev"})
    assert set(profile_settings.all_topics()).isdisjoint(dev.all_topics())
    assert profile_settings.table_uri("bronze/events") != dev.table_uri("bronze/events")
