"""The feature dataflow under one and two workers, with Kafka and Redis stand-ins.

Kafka partitions are lists of :class:`KafkaBatch` items; the online sink keeps
the last value per key; feature-log Delta tables are real, under tmp_path.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from bytewax.inputs import AbortExecution, FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import cluster_main, run_main
from deltalake import DeltaTable

from flows.feature_flow import OnlineWrite, build_flow
from flows.features.codec import decode
from flows.features.tiles import EntityTiles
from flows.kafka_source import KafkaBatch
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import Scenario, ShopSimulator, SimulationConfig
from infra.settings import Settings

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TOPIC = "shop.events"
PARTITIONS = 3


class _Partition(StatefulSourcePartition[KafkaBatch, int]):
    def __init__(self, batches: list[KafkaBatch], start: int) -> None:
        self.batches, self.position = batches, start

    def next_batch(self) -> list[KafkaBatch]:
        if self.position >= len(self.batches):
            raise StopIteration()
        self.position += 1
        return [self.batches[self.position - 1]]

    def snapshot(self) -> int:
        return self.position


class BatchListSource(FixedPartitionedSource[KafkaBatch, int]):
    def __init__(self, parts: dict[str, list[KafkaBatch]]) -> None:
        self.parts = parts

    def list_parts(self) -> list[str]:
        return sorted(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self.parts[for_part], resume_state or 0)


class _Online(StatelessSinkPartition[OnlineWrite]):
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store

    def write_batch(self, items: list[OnlineWrite]) -> None:
        for item in items:
            self.store[item.key] = item.value


class DictSink(DynamicSink[OnlineWrite]):
    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Online:
        return _Online(self.store)


Traffic = tuple[dict[str, list[KafkaBatch]], list[bytes]]


def traffic(events: int = 3_000) -> Traffic:
    """Simulated events spread over partitions by user, in batches of 200, and which are valid.

    Validity comes from the simulator's own label (``SimMessage.expected``), not
    from the validation code under test.
    """
    config = SimulationConfig(
        events=events, seed=5, history_days=1, anchor=ANCHOR, scenario=Scenario.BAD_INPUT
    )
    batches: dict[int, list[KafkaBatch]] = defaultdict(list)
    offsets = [0] * PARTITIONS
    valid: list[bytes] = []
    for message in ShopSimulator(config).messages():
        if message.topic != "events":
            continue
        if message.expected is None:
            valid.append(message.value)
        partition = sum(message.key) % PARTITIONS
        parts = batches[partition]
        if not parts or len(parts[-1]) == 200:
            parts.append(KafkaBatch(TOPIC, partition))
        parts[-1].offsets.append(offsets[partition])
        parts[-1].keys.append(message.key)
        parts[-1].values.append(message.value)
        parts[-1].timestamps.append(0.0)
        offsets[partition] += 1
    return {f"{p}-{TOPIC}": batches[p] for p in range(PARTITIONS)}, valid


def expected_online(valid: list[bytes]) -> dict[str, EntityTiles]:
    """An independent fold: every valid event into its user's and product's tiles."""
    tiles: dict[str, EntityTiles] = defaultdict(EntityTiles)
    for raw in valid:
        event: dict[str, Any] = json.loads(raw)
        ts = datetime.fromisoformat(event["event_ts"]).timestamp()
        for view, entity in (("user", event["user_id"]), ("product", event["product_id"])):
            tiles[f"dev:fv:{view}:{entity}"].add(
                event["event_type"], ts, event.get("price"), event.get("quantity")
            )
    return tiles


def run(
    tmp_path: Path, workers: int, parts: dict[str, list[KafkaBatch]]
) -> tuple[DictSink, Settings]:
    settings = Settings(state_dir=tmp_path, lake_root=str(tmp_path / "lake"))
    online = DictSink()
    flow = build_flow(
        settings,
        products=load_catalog().product_ids,
        clock=lambda: ANCHOR,
        source=BatchListSource(parts),  # type: ignore[arg-type]
        online_sink=online,
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return online, settings


@pytest.mark.parametrize("workers", [1, 2])
def test_online_state_matches_an_independent_fold(tmp_path: Path, workers: int) -> None:
    parts, valid = traffic()
    online, _ = run(tmp_path, workers, parts)
    expected = expected_online(valid)
    assert len(expected) > 500
    assert {key: decode(value) for key, value in online.store.items()} == expected


@pytest.mark.parametrize("workers", [1, 2])
def test_feature_log_has_one_row_per_valid_event_and_view(tmp_path: Path, workers: int) -> None:
    parts, valid = traffic()
    _, settings = run(tmp_path, workers, parts)
    ids = {json.loads(raw)["event_id"] for raw in valid}
    for view in ("user", "product"):
        log = DeltaTable(settings.table_uri(f"features/{view}")).to_pyarrow_table()
        assert sorted(log["event_id"].to_pylist()) == sorted(ids)
        assert log.schema.field("event_ts").type == pa.timestamp("us", tz="UTC")


def test_one_and_two_workers_write_the_same_user_log(tmp_path: Path) -> None:
    parts, _ = traffic()
    _, one = run(tmp_path / "one", 1, parts)
    _, two = run(tmp_path / "two", 2, parts)
    order = [("source_partition", "ascending"), ("source_offset", "ascending")]
    logs = [
        DeltaTable(s.table_uri("features/user")).to_pyarrow_table().sort_by(order)
        for s in (one, two)
    ]
    assert logs[0].num_rows > 1_000
    assert logs[0].equals(logs[1])


class _AbortingPartition(_Partition):
    def __init__(self, source: AbortingSource, batches: list[KafkaBatch], start: int) -> None:
        super().__init__(batches, start)
        self.source = source

    def next_batch(self) -> list[KafkaBatch]:
        if self.source.abort_after is not None and self.source.emitted >= self.source.abort_after:
            self.source.abort_after = None  # once: the resumed run goes on
            raise AbortExecution()
        self.source.emitted += 1
        time.sleep(0.002)  # let epochs close between batches
        return super().next_batch()


class AbortingSource(BatchListSource):
    """Aborts the whole execution once, after ``abort_after`` batches."""

    def __init__(self, parts: dict[str, list[KafkaBatch]], abort_after: int) -> None:
        super().__init__(parts)
        self.abort_after: int | None = abort_after
        self.emitted = 0

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _AbortingPartition(self, self.parts[for_part], resume_state or 0)


@pytest.mark.parametrize("abort_after", [2, 6, 10])
def test_resume_after_abort_equals_a_clean_run(tmp_path: Path, abort_after: int) -> None:
    parts, _ = traffic()
    clean, _ = run(tmp_path / "clean", 1, parts)
    settings = Settings(state_dir=tmp_path / "resumed", lake_root=str(tmp_path / "resumed/lake"))
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    source = AbortingSource(parts, abort_after)
    online = DictSink()
    flow = build_flow(
        settings,
        products=load_catalog().product_ids,
        clock=lambda: ANCHOR,
        source=source,  # type: ignore[arg-type]
        online_sink=online,
    )
    config = RecoveryConfig(str(recovery))
    run_main(flow, epoch_interval=timedelta(milliseconds=5), recovery_config=config)
    assert source.abort_after is None  # it did abort
    run_main(flow, epoch_interval=timedelta(milliseconds=5), recovery_config=config)
    assert online.store == clean.store
