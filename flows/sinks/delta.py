"""An idempotent, micro-batched Delta Lake sink keyed by Kafka source partition.

Exactly-once, and why it holds
------------------------------
Every item is a :class:`RowChunk`: rows that came from one Kafka source partition
(``topic:partition``), each with the offset of the message it came from. The sink
is a Bytewax ``FixedPartitionedSink`` whose partitions are those source
partitions, and the item key is the source partition, so each source
partition's rows are written by exactly one sink partition, in offset order.

Each Delta commit carries one *app transaction* per source partition in it:
``app_id = "tributary-ingest:{table}:{topic}:{partition}"`` and ``version`` = the
highest offset of that source partition in the commit. The rows and that version
land in the same atomic commit, so the table itself always knows, per source
partition, the offset up to which it holds every row. A sink partition reads
that version from the table when it first sees a source partition and drops
every row at or below it.

- **No duplicates.** After a crash, Bytewax resumes the Kafka source from the
  last epoch whose snapshots were all persisted, which can be behind the last
  Delta commit (a commit may happen mid-epoch, see below, or land just before
  a crash that kept its epoch's snapshot from being written). The replayed rows
  have offsets at or below the committed version and are dropped. The same
  holds for a restart without recovery, which replays the topics from the
  beginning.
- **No loss.** Rows are committed no later than at ``snapshot()``, which Bytewax
  calls at the end of every epoch for each sink partition written in that
  epoch, before that epoch's snapshots are persisted. So the source's resume
  offset never passes a row that is not yet in Delta.
- **Any commit cadence is safe.** Because the skip decision uses the version
  committed *with* the rows, not Bytewax's resume state, committing earlier than
  the epoch end (on buffer size or age) cannot duplicate or lose anything.

Verified with Bytewax 0.21.1: ``snapshot()`` is called on sink partitions at each
epoch end *also without a recovery store* (``run_main`` and ``bytewax.run``
without ``-r``), but only for partitions written during that epoch, and an epoch
only closes when the input is polled again. The size and age limits of
:class:`FlushPolicy` bound memory and staleness when epochs are long.

Idempotency is per source offset: replays of the *same* topic never add a row
twice. A message produced twice to Kafka (a non-idempotent producer retrying)
has two offsets and lands twice; the simulator's producer is idempotent.

Delta commits cost 3-50 ms and grow with the log, so rows are buffered, the
table object is kept open between commits, a checkpoint is written every
``checkpoint_every`` table versions, and :func:`compact` is there for a schedule.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Transaction
from deltalake import write_deltalake as _write_deltalake
from deltalake.exceptions import DeltaError

from flows.metrics import DELTA_COMMIT_SECONDS, EVENTS_OUT, LAST_PROCESSED

APP_PREFIX = "tributary-ingest"
# Several sink partitions append to one table at once; appends never conflict,
# but a writer that keeps losing the race needs more than delta-rs's 15 tries.
MAX_COMMIT_RETRIES = 100

Versions = dict[str, int]
"""Highest committed Kafka offset per source partition key (``topic:partition``)."""


def source_key(topic: str, partition: int) -> str:
    """The item key and sink partition name of a Kafka source partition.

    >>> source_key("shop.events", 3)
    'shop.events:3'
    """
    return f"{topic}:{partition}"


def app_id(app_prefix: str, table: str, key: str) -> str:
    """The Delta app-transaction id of one source partition in one table.

    >>> app_id(APP_PREFIX, "bronze/events", source_key("shop.events", 3))
    'tributary-ingest:bronze/events:shop.events:3'
    """
    return f"{app_prefix}:{table}:{key}"


@dataclass(frozen=True, slots=True)
class RowChunk:
    """Rows of one table from one source partition, with each row's source offset.

    ``offsets`` ascend and align with ``rows``; a table without offset columns
    (``pii/customers``) still gets exactly-once writes through them.
    """

    topic: str
    partition: int
    offsets: list[int]
    rows: pa.Table

    @property
    def key(self) -> str:
        return source_key(self.topic, self.partition)

    def after(self, version: int) -> RowChunk | None:
        """The rows whose offset is above ``version``, or None when none is."""
        if not self.offsets or self.offsets[-1] <= version:
            return None
        if self.offsets[0] > version:
            return self
        keep = pc.greater(pa.array(self.offsets, pa.int64()), version)
        offsets = [o for o in self.offsets if o > version]
        return RowChunk(self.topic, self.partition, offsets, self.rows.filter(keep))


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When buffered rows are committed besides every epoch end and close."""

    max_rows: int = 100_000
    max_age_s: float = 5.0
    checkpoint_every: int = 100  # table versions between checkpoints


@dataclass(frozen=True, slots=True)
class DeltaTarget:
    """One Delta table and how to write it."""

    uri: str
    table: str  # the table's name (``bronze/events``), part of every app id
    schema: pa.Schema
    partition_by: list[str] | None = None
    storage_options: dict[str, str] | None = None
    flow: str = "ingest"
    app_prefix: str = APP_PREFIX

    def open(self) -> DeltaTable:
        """The table, created empty with its fixed schema when it does not exist."""
        options = self.storage_options or None
        if not DeltaTable.is_deltatable(self.uri, storage_options=options):
            try:
                DeltaTable.create(
                    self.uri,
                    self.schema,
                    mode="ignore",
                    partition_by=self.partition_by,
                    storage_options=options,
                )
            except DeltaError:
                # another worker created it first: version 0 exists, use it
                if not DeltaTable.is_deltatable(self.uri, storage_options=options):
                    raise
        return DeltaTable(self.uri, storage_options=options)


class DeltaSink(FixedPartitionedSink[RowChunk, Versions]):
    """Partitioned, exactly-once appends of :class:`RowChunk` items to one table.

    ``parts`` lists the source partition keys (``topic:partition``); it is called
    when the dataflow starts (it may ask Kafka), not when the sink is built.
    """

    def __init__(
        self,
        target: DeltaTarget,
        parts: Callable[[], Sequence[str]],
        policy: FlushPolicy | None = None,
    ) -> None:
        self.target = target
        self.policy = policy or FlushPolicy()
        self._parts = parts
        self._index: dict[str, int] | None = None

    def _part_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {part: i for i, part in enumerate(sorted(set(self._parts())))}
        return self._index

    def list_parts(self) -> list[str]:
        return list(self._part_index())

    def part_fn(self, item_key: str) -> int:
        # Bytewax takes part_fn(key) modulo the number of parts as an index into
        # the parts sorted by name; so a known key goes to the partition named
        # after it. An unknown one (a partition added to the topic while running)
        # still goes to one fixed partition, whose versions are per source
        # partition, so it stays exactly-once.
        index = self._part_index().get(item_key)
        return zlib.adler32(item_key.encode()) if index is None else index

    def build_part(
        self, step_id: str, for_part: str, resume_state: Versions | None
    ) -> DeltaPartition:
        # resume_state is deliberately unused: the versions committed in the
        # table are never older than it, and they are what the rows match.
        return DeltaPartition(self.target, self.policy)


class DeltaPartition(StatefulSinkPartition[RowChunk, Versions]):
    """Buffers rows and commits them with their per-source-partition versions."""

    def __init__(
        self,
        target: DeltaTarget,
        policy: FlushPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.policy = policy
        self._clock = clock
        self._table = target.open()
        self._committed: Versions = {}
        self._buffer: list[pa.Table] = []
        self._pending: Versions = {}
        self._rows = 0
        self._since = 0.0
        self.commits = 0

    def committed(self, key: str) -> int:
        """The highest offset of ``key`` in the table (-1 when none)."""
        if key not in self._committed:
            self._committed[key] = committed_version(self._table, self._app_id(key))
        return self._committed[key]

    def write_batch(self, values: list[RowChunk]) -> None:
        for chunk in values:
            fresh = chunk.after(self.committed(chunk.key))
            if fresh is None:
                continue
            if not self._buffer:
                self._since = self._clock()
            self._buffer.append(fresh.rows)
            self._pending[chunk.key] = max(fresh.offsets[-1], self._pending.get(chunk.key, -1))
            self._rows += fresh.rows.num_rows
        if self._rows >= self.policy.max_rows or (
            self._buffer and self._clock() - self._since >= self.policy.max_age_s
        ):
            self.flush()

    def snapshot(self) -> Versions:
        self.flush()
        return dict(self._committed)

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Commit the buffered rows and their versions in one Delta commit."""
        if not self._buffer:
            return
        # see the other writers' commits first, so this one needs no retries
        self._table.update_incremental()
        append_with_versions(
            self._table, self.target, pa.concat_tables(self._buffer), self._pending
        )
        self._committed.update(self._pending)
        self._buffer, self._pending, self._rows = [], {}, 0
        self.commits += 1
        if self._table.version() % self.policy.checkpoint_every == 0:
            self._table.create_checkpoint()

    def _app_id(self, key: str) -> str:
        return app_id(self.target.app_prefix, self.target.table, key)


def committed_version(table: DeltaTable, app: str) -> int:
    """The version recorded under app id ``app`` (-1 when none)."""
    version = table.transaction_version(app)
    return -1 if version is None else int(version)


def append_with_versions(
    table: DeltaTable, target: DeltaTarget, data: pa.Table, versions: Versions
) -> None:
    """Append ``data`` and record ``versions`` (per source partition) in the same commit."""
    transactions = [
        Transaction(app_id(target.app_prefix, target.table, key), version)
        for key, version in sorted(versions.items())
    ]
    start = time.perf_counter()
    _write_deltalake(
        table,
        data,
        mode="append",
        partition_by=target.partition_by,
        commit_properties=CommitProperties(
            app_transactions=transactions, max_commit_retries=MAX_COMMIT_RETRIES
        ),
        # checkpoints are the sinks' to schedule, counted on the table's versions
        post_commithook_properties=PostCommitHookProperties(create_checkpoint=False),
    )
    DELTA_COMMIT_SECONDS.labels(flow=target.flow, table=target.table).observe(
        time.perf_counter() - start
    )
    EVENTS_OUT.labels(flow=target.flow, sink=target.table).inc(data.num_rows)
    LAST_PROCESSED.labels(flow=target.flow).set_to_current_time()


def compact(table_uri: str, storage_options: dict[str, str] | None = None) -> dict[str, Any]:
    """Merge small files and write a checkpoint; returns delta-rs's compaction metrics.

    Safe while the sink appends: compaction only rewrites files, and the app
    transactions (the exactly-once versions) survive in the log and checkpoint.
    """
    table = DeltaTable(table_uri, storage_options=storage_options or None)
    metrics = table.optimize.compact()
    table.create_checkpoint()
    return metrics


def checkpoint(table_uri: str, storage_options: dict[str, str] | None = None) -> int:
    """Write a checkpoint at the table's current version, and return that version."""
    table = DeltaTable(table_uri, storage_options=storage_options or None)
    table.create_checkpoint()
    return int(table.version())
