"""Crash recovery: flows SIGKILLed mid-stream end in the same state as a clean run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from bytewax.testing import run_main
from deltalake import DeltaTable
from redis import Redis

from flows import feature_flow, ingest
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from tests.local_stack import settings_env

pytestmark = pytest.mark.integration

EVENTS = 200_000
KILLS = 3


def variant(base: Settings, folder: Path, redis_db: int) -> Settings:
    """Same topics (same profile), its own Redis database, lake and recovery store."""
    url = base.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    return base.model_copy(
        update={
            "state_dir": folder,
            "lake_root": str(folder / "lake"),
            "redis_url": url,
            "metrics_port": 0,
        }
    )


def delta_versions(settings: Settings, table: str) -> int:
    return len(list(Path(settings.table_uri(table), "_delta_log").glob("*.json")))


PROGRESS = {"ingest": "bronze/events", "features": "features/user"}


def run_with_kills(settings: Settings, flow: str, rng: random.Random) -> None:
    """Kill the flow three times, each soon after it committed something new."""
    command = [sys.executable, "-m", "infra.cli", "run", flow, "--until-end"]
    command += ["--snapshot-interval", "0.5"]
    for _ in range(KILLS):
        seen = delta_versions(settings, PROGRESS[flow])
        child = subprocess.Popen(command, env={**os.environ, **settings_env(settings)})
        deadline = time.monotonic() + 120
        while delta_versions(settings, PROGRESS[flow]) == seen:
            assert child.poll() is None, f"{flow} ended before it committed anything"
            assert time.monotonic() < deadline, f"{flow} made no progress in 120 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.8))
        assert child.poll() is None, f"{flow} ended before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finished = subprocess.run(
        command, env={**os.environ, **settings_env(settings)}, timeout=300, check=False
    )
    assert finished.returncode == 0


def redis_state(settings: Settings) -> dict[Any, Any]:
    client = Redis.from_url(settings.redis_url)
    try:
        return {key: client.get(key) for key in client.scan_iter(f"{settings.profile}:*")}
    finally:
        client.close()


def table(settings: Settings, name: str, order: list[str]) -> pa.Table:
    return (
        DeltaTable(settings.table_uri(name))
        .to_pyarrow_table()
        .sort_by([(column, "ascending") for column in order])
    )


@pytest.fixture
def crash_setup(stack_settings: Settings, tmp_path: Path) -> tuple[Settings, Settings]:
    profile = f"crash{random.randrange(10**6)}"
    base = stack_settings.model_copy(update={"profile": profile})
    ensure_topics(base.kafka_bootstrap, base.all_topics(), base.topic_partitions)
    from infra.plantly.catalog import ensure_catalog_table

    clean, crashed = variant(base, tmp_path / "clean", 1), variant(base, tmp_path / "crash", 2)
    for settings in (clean, crashed):
        ensure_catalog_table(settings)
    config = SimulationConfig(events=EVENTS, seed=21, history_days=2)
    send_traffic(ShopSimulator(config), [KafkaSink(base)])
    return clean, crashed


def test_sigkilled_flows_end_like_a_clean_run(crash_setup: tuple[Settings, Settings]) -> None:
    clean, crashed = crash_setup
    run_main(ingest.build_flow(clean, tail=False))
    run_main(feature_flow.build_flow(clean, tail=False))

    rng = random.Random(7)
    run_with_kills(crashed, "ingest", rng)
    run_with_kills(crashed, "features", rng)

    bronze_clean = table(clean, "bronze/events", ["source_partition", "source_offset"])
    assert bronze_clean.num_rows == EVENTS
    assert table(crashed, "bronze/events", ["source_partition", "source_offset"]).equals(
        bronze_clean
    )
    orders = ["source_partition", "source_offset"]
    assert table(crashed, "bronze/orders", orders).equals(table(clean, "bronze/orders", orders))

    online_clean, online_crashed = redis_state(clean), redis_state(crashed)
    assert len(online_clean) > 1_000
    assert online_crashed == online_clean  # every entity, byte for byte

    key = ["source_partition", "source_offset"]
    # users live in one Kafka partition each, so even their log rows are identical
    assert table(crashed, "features/user", key).equals(table(clean, "features/user", key))
    # a product's rows depend on how partitions interleaved; each event is logged once
    product_clean = table(clean, "features/product", key)
    product_crashed = table(crashed, "features/product", key)
    assert product_crashed.num_rows == product_clean.num_rows == EVENTS
    assert product_crashed.select([*key, "product_id", "event_id"]).equals(
        product_clean.select([*key, "product_id", "event_id"])
    )
