"""The Delta sink on real tables in tmp_path: exactly-once under replay, versions, layout."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from deltalake import DeltaTable

from flows.sinks.delta import (
    APP_PREFIX,
    DeltaPartition,
    DeltaSink,
    DeltaTarget,
    FlushPolicy,
    RowChunk,
    app_id,
    compact,
)
from infra.contracts import ShopEvent
from infra.contracts.tables import (
    BRONZE_EVENTS,
    PARTITION_BY,
    PII_CUSTOMERS,
    SourcePosition,
    TableName,
    event_row,
)

TOPIC = "shop.events"
DAY1 = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)


def event_chunk(partition: int, offsets: Iterable[int], start: datetime = DAY1) -> RowChunk:
    """Events at ``start`` + one minute per offset, so a day boundary is easy to cross."""
    offsets = list(offsets)
    rows = [
        event_row(
            ShopEvent(
                event_id=f"e-{partition}-{offset}",
                event_type="click",
                event_ts=start + timedelta(minutes=offset),
                user_id=f"u{offset % 7}",
                product_id="ficus-lyrata-6in",
                region="US-CA",
                device="mobile",
                schema_version=1,
            ),
            SourcePosition(TOPIC, partition, offset),
        )
        for offset in offsets
    ]
    return RowChunk(TOPIC, partition, offsets, pa.Table.from_pylist(rows, schema=BRONZE_EVENTS))


def events_target(tmp_path: Path) -> DeltaTarget:
    return DeltaTarget(
        uri=str(tmp_path / "bronze" / "events"),
        table=TableName.BRONZE_EVENTS,
        schema=BRONZE_EVENTS,
        partition_by=PARTITION_BY[TableName.BRONZE_EVENTS],
    )


def read(target: DeltaTarget) -> pa.Table:
    return DeltaTable(target.uri).to_pyarrow_table()


def offsets_in(target: DeltaTarget, partition: int) -> list[int]:
    table = read(target)
    return sorted(
        offset
        for part, offset in zip(
            table.column("source_partition").to_pylist(),
            table.column("source_offset").to_pylist(),
            strict=True,
        )
        if part == partition
    )


def version_of(target: DeltaTarget, partition: int) -> int | None:
    key = f"{TOPIC}:{partition}"
    return DeltaTable(target.uri).transaction_version(app_id(APP_PREFIX, target.table, key))


def test_replay_after_a_crash_adds_each_row_once(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    first = DeltaPartition(target, FlushPolicy())
    first.write_batch([event_chunk(0, range(0, 50)), event_chunk(1, range(0, 30))])
    stale_state = first.snapshot()  # what a recovery store would hold
    first.write_batch([event_chunk(0, range(50, 80))])
    first.flush()  # committed mid-epoch, then the process dies before the next snapshot

    # Bytewax resumes the source from the older snapshot: offsets 50..79 come again.
    second = DeltaSink(target, lambda: [f"{TOPIC}:0"]).build_part("out", f"{TOPIC}:0", stale_state)
    second.write_batch([event_chunk(0, range(50, 100)), event_chunk(1, range(0, 40))])
    second.close()

    assert offsets_in(target, 0) == list(range(100))
    assert offsets_in(target, 1) == list(range(40))
    assert version_of(target, 0) == 99 and version_of(target, 1) == 39
    ids = read(target).column("event_id").to_pylist()
    assert len(ids) == len(set(ids)) == 140


def test_a_restart_from_the_beginning_writes_nothing_twice(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    first = DeltaPartition(target, FlushPolicy())
    first.write_batch([event_chunk(2, range(0, 200, 2))])  # gaps: rejects in between
    first.close()
    version = DeltaTable(target.uri).version()

    again = DeltaPartition(target, FlushPolicy())
    again.write_batch([event_chunk(2, range(0, 200, 2))])
    again.close()
    assert again.commits == 0
    assert DeltaTable(target.uri).version() == version
    assert offsets_in(target, 2) == list(range(0, 200, 2))


def test_uncommitted_rows_are_written_on_replay(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    first = DeltaPartition(target, FlushPolicy())
    first.write_batch([event_chunk(0, range(10))])
    first.snapshot()
    first.write_batch([event_chunk(0, range(10, 20))])  # buffered only: lost in the crash

    replay = DeltaPartition(target, FlushPolicy())
    replay.write_batch([event_chunk(0, range(5, 20))])
    replay.snapshot()
    assert offsets_in(target, 0) == list(range(20))
    assert version_of(target, 0) == 19


def test_a_chunk_across_the_committed_version_is_cut(tmp_path: Path) -> None:
    chunk = event_chunk(0, [3, 5, 8, 9])
    assert chunk.after(2) is chunk
    assert chunk.after(9) is None
    cut = chunk.after(5)
    assert cut is not None and cut.offsets == [8, 9]
    assert cut.rows.column("source_offset").to_pylist() == [8, 9]


def test_one_commit_carries_a_version_per_source_partition(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    part = DeltaPartition(target, FlushPolicy())
    part.write_batch([event_chunk(0, range(5)), event_chunk(3, range(7))])
    state = part.snapshot()
    assert state == {f"{TOPIC}:0": 4, f"{TOPIC}:3": 6}
    table = DeltaTable(target.uri)
    assert table.version() == 1  # created empty at 0, then one commit
    assert version_of(target, 0) == 4 and version_of(target, 3) == 6
    assert version_of(target, 1) is None
    assert part.snapshot() == state and part.commits == 1  # nothing new: no empty commit


def test_tables_without_offset_columns_are_exactly_once_too(tmp_path: Path) -> None:
    target = DeltaTarget(str(tmp_path / "pii"), TableName.PII_CUSTOMERS, PII_CUSTOMERS)
    rows = [
        {"user_id": f"u{i}", "email": f"u{i}@example.com", "shipping_address": "1 Elm St",
         "order_id": f"o{i}", "event_ts": DAY1}
        for i in range(6)
    ]  # fmt: skip
    chunk = RowChunk("shop.orders", 1, [10, 11, 12, 13, 14, 15], pa.Table.from_pylist(rows))
    for _ in range(2):
        part = DeltaPartition(target, FlushPolicy())
        part.write_batch([RowChunk(chunk.topic, 1, chunk.offsets, chunk.rows.cast(PII_CUSTOMERS))])
        part.close()
    table = DeltaTable(target.uri)
    assert table.to_pyarrow_table().num_rows == 6
    key = app_id(APP_PREFIX, TableName.PII_CUSTOMERS, "shop.orders:1")
    assert key == "tributary-ingest:pii/customers:shop.orders:1"
    assert table.transaction_version(key) == 15


def test_tables_are_partitioned_by_event_date_with_the_fixed_schema(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    part = DeltaPartition(target, FlushPolicy())
    part.write_batch([event_chunk(0, range(120))])  # 23:00 → 00:59 the next day
    part.close()
    table = DeltaTable(target.uri)
    assert table.metadata().partition_columns == ["event_date"]
    folders = sorted(p.name for p in Path(target.uri).iterdir() if p.name != "_delta_log")
    assert folders == ["event_date=2026-11-24", "event_date=2026-11-25"]
    data = table.to_pyarrow_table()
    assert set(data.schema.names) == set(BRONZE_EVENTS.names)
    for name in BRONZE_EVENTS.names:
        assert data.schema.field(name).type == BRONZE_EVENTS.field(name).type, name
    by_date = data.group_by("event_date").aggregate([("event_id", "count")]).to_pylist()
    counts = {row["event_date"].isoformat(): row["event_id_count"] for row in by_date}
    assert counts == {"2026-11-24": 60, "2026-11-25": 60}


def test_size_and_age_limits_commit_before_the_epoch_ends(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    now = [0.0]
    part = DeltaPartition(target, FlushPolicy(max_rows=50, max_age_s=2.0), clock=lambda: now[0])
    part.write_batch([event_chunk(0, range(30))])
    assert part.commits == 0
    part.write_batch([event_chunk(0, range(30, 60))])  # 60 rows >= 50
    assert part.commits == 1 and version_of(target, 0) == 59
    part.write_batch([event_chunk(0, range(60, 65))])
    now[0] = 2.5
    part.write_batch([event_chunk(0, range(65, 70))])  # the buffer is 2.5 s old
    assert part.commits == 2 and version_of(target, 0) == 69


def test_checkpoints_every_n_versions_and_compaction_keeps_versions(tmp_path: Path) -> None:
    target = events_target(tmp_path)
    part = DeltaPartition(target, FlushPolicy(checkpoint_every=3))
    for start in range(0, 50, 10):
        part.write_batch([event_chunk(0, range(start, start + 10))])
        part.flush()
    log = Path(target.uri) / "_delta_log"
    assert (log / f"{3:020d}.checkpoint.parquet").exists()
    metrics = compact(target.uri)
    assert metrics["numFilesRemoved"] > metrics["numFilesAdded"]
    assert version_of(target, 0) == 49
    assert offsets_in(target, 0) == list(range(50))
    again = DeltaPartition(target, FlushPolicy())
    again.write_batch([event_chunk(0, range(50))])
    assert again.snapshot() == {f"{TOPIC}:0": 49} and again.commits == 0


def test_keys_route_to_the_partition_named_after_them(tmp_path: Path) -> None:
    keys = [f"{TOPIC}:{p}" for p in (3, 0, 2, 1, 10)]
    sink = DeltaSink(events_target(tmp_path), lambda: keys)
    parts = sink.list_parts()
    assert parts == sorted(keys)
    assert all(parts[sink.part_fn(key) % len(parts)] == key for key in keys)
    assert isinstance(sink.part_fn("other:9"), int)


@pytest.mark.parametrize("epoch_ms", [1, 10_000])
def test_the_sink_in_a_dataflow_writes_every_partition_once(tmp_path: Path, epoch_ms: int) -> None:
    target = events_target(tmp_path)
    chunks = [event_chunk(p, range(s, s + 25)) for s in range(0, 100, 25) for p in (0, 1, 2)]
    for _ in range(2):  # the second run replays everything, as a restart without recovery
        flow = Dataflow("delta-sink")
        items = op.input("in", flow, TestingSource([(c.key, c) for c in chunks]))
        op.output("out", items, DeltaSink(target, lambda: [f"{TOPIC}:{p}" for p in range(3)]))
        epoch = timedelta(milliseconds=epoch_ms)
        run_main(flow, epoch_interval=epoch)
    for partition in range(3):
        assert offsets_in(target, partition) == list(range(100))
        assert version_of(target, partition) == 99
