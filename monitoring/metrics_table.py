"""The Delta table ``monitoring/metrics``: every record's numbers in long form, exactly once.

One row per number (:func:`record_rows`): ``window_start``, ``window_end``,
``model_name``, ``model_version``, ``phase``, ``metric``, ``feature`` ("" when
none), ``value`` (NaN allowed), ``emitted_at``, ``seq``. A predictions record
also writes the reference's score-bin shares, validation AUC and positive rate
under phase ``reference`` (metrics ``score_bin_share``, ``roc_auc``,
``conversion``), so the dashboard finds them beside the window they were
compared with.

**Exactly once.** Every commit carries a Delta app transaction
``tributary-monitor:monitoring/metrics:monitor-seq:0`` whose version is the
highest ``seq`` the table holds, in the same atomic commit as the rows. What
decides whether a record is written, though, is its *key* — (``phase``,
``model_version``, ``window_start``), which names one record for the life of
the table: a record whose key the table already holds is dropped. The keys
are read from the table when the sink starts (one projection of three
columns) and kept in memory.

Why not drop by ``seq`` alone: every record's *content* is a function of the
messages before it in its partitions, so a replay reproduces it, but the
*order* of two records triggered by different partitions (a window closing on
the prediction log, an older window's labels completing on the events) follows
how the source happened to interleave the partitions, which a replay need not
repeat. After a crash between two commits, the replay could then number the
uncommitted record with the committed one's ``seq``, and a ``seq`` rule would
drop it and write the other twice. The key rule cannot, and the transaction
version still tells readers how far the table goes.

Rows are buffered and committed at each epoch end (``snapshot``), on close, or
when the buffer is large or old (:class:`~flows.sinks.delta.FlushPolicy`).

>>> from monitoring.windows import MonitorRecord
>>> record = MonitorRecord("outcomes", 7, "m", 3, 0.0, 300.0, 301.0, {"ctr": 0.5})
>>> rows = record_rows(record)
>>> rows.num_rows, rows.column("metric").to_pylist(), rows.column("seq").to_pylist()
(1, ['ctr'], [7])
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from deltalake import DeltaTable

from flows.sinks.delta import (
    DeltaTarget,
    FlushPolicy,
    app_id,
    append_with_versions,
    committed_version,
    source_key,
)
from infra.settings import Settings
from monitoring.windows import MonitorRecord

TABLE: Final = "monitoring/metrics"
FLOW: Final = "monitor"
APP_PREFIX: Final = "tributary-monitor"
SEQ_KEY: Final = source_key("monitor-seq", 0)
"""The app transaction's "partition": its version is the highest ``seq`` in the table."""
PART: Final = "metrics"
RecordKey = tuple[str, int, int]
"""(phase, model version, window start in microseconds): one record of the table."""

_TIMESTAMP = pa.timestamp("us", tz="UTC")
METRICS_SCHEMA: Final = pa.schema(
    [
        ("window_start", _TIMESTAMP),
        ("window_end", _TIMESTAMP),
        ("model_name", pa.string()),
        ("model_version", pa.int64()),
        ("phase", pa.string()),
        ("metric", pa.string()),
        ("feature", pa.string()),
        ("value", pa.float64()),
        ("emitted_at", _TIMESTAMP),
        ("seq", pa.int64()),
    ]
)
_DRIFT_METRICS: Final = {
    "psi": "feature_psi",
    "chi2_pvalue": "feature_chi2_pvalue",
    "js_distance": "feature_js_distance",
}


def _facts(record: MonitorRecord) -> list[tuple[str, str, str, float]]:
    """(phase, metric, feature, value) for every number of a record."""
    phase = record.phase
    facts = [(phase, name, "", value) for name, value in record.metrics.items()]
    for feature, values in sorted(record.features.items()):
        facts += [(phase, _DRIFT_METRICS[k], feature, v) for k, v in values.items()]
    facts += [(phase, "score_bin_share", str(i), v) for i, v in enumerate(record.score_shares)]
    facts += [
        ("reference", "score_bin_share", str(i), v) for i, v in enumerate(record.reference_shares)
    ]
    facts += [
        (phase, "feature_age_p95_seconds", view, v) for view, v in record.feature_ages.items()
    ]
    if record.reference.get("available"):
        facts.append(("reference", "roc_auc", "", float(record.reference["roc_auc"])))
        facts.append(("reference", "conversion", "", float(record.reference["positive_rate"])))
        estimated = float(record.reference.get("estimated_roc_auc", float("nan")))
        facts.append(("reference", "estimated_roc_auc", "", estimated))
    return facts


def _micros(ts: float) -> int:
    return round(ts * 1_000_000)


def record_key(record: MonitorRecord) -> RecordKey:
    return record.phase, record.version, _micros(record.window_start)


def record_rows(record: MonitorRecord) -> pa.Table:
    """The record in the long form of ``monitoring/metrics``: one row per number."""
    facts = _facts(record)
    n = len(facts)
    phases, names, features, values = (list(column) for column in zip(*facts, strict=True))
    return pa.table(
        {
            "window_start": pa.array([_micros(record.window_start)] * n, _TIMESTAMP),
            "window_end": pa.array([_micros(record.window_end)] * n, _TIMESTAMP),
            "model_name": pa.array([record.model_name] * n, pa.string()),
            "model_version": pa.array([record.version] * n, pa.int64()),
            "phase": pa.array(phases, pa.string()),
            "metric": pa.array(names, pa.string()),
            "feature": pa.array(features, pa.string()),
            "value": pa.array(values, pa.float64()),
            "emitted_at": pa.array([_micros(record.emitted_at)] * n, _TIMESTAMP),
            "seq": pa.array([record.seq] * n, pa.int64()),
        },
        schema=METRICS_SCHEMA,
    )


def table_keys(table: DeltaTable) -> set[RecordKey]:
    """The keys of every record the table holds (phase ``reference`` rows ride along)."""
    found = table.to_pyarrow_dataset().to_table(columns=["phase", "model_version", "window_start"])
    found = found.filter(pc.not_equal(found.column("phase"), "reference"))
    distinct = found.group_by(["phase", "model_version", "window_start"]).aggregate([])
    starts = pc.cast(distinct.column("window_start"), pa.int64()).to_pylist()
    return set(
        zip(
            distinct.column("phase").to_pylist(),
            distinct.column("model_version").to_pylist(),
            starts,
            strict=True,
        )
    )


def metrics_target(settings: Settings) -> DeltaTarget:
    return DeltaTarget(
        uri=settings.table_uri(TABLE),
        table=TABLE,
        schema=METRICS_SCHEMA,
        storage_options=settings.lake_storage_options or None,
        flow=FLOW,
        app_prefix=APP_PREFIX,
    )


def keyed(record: MonitorRecord) -> tuple[str, MonitorRecord]:
    """The item the sink takes: every record goes to its one partition."""
    return PART, record


class MetricsSink(FixedPartitionedSink[MonitorRecord, None]):
    """``monitoring/metrics``, exactly once by record key (module doc)."""

    def __init__(self, target: DeltaTarget, policy: FlushPolicy | None = None) -> None:
        self.target = target
        self.policy = policy or FlushPolicy()

    def list_parts(self) -> list[str]:
        return [PART]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> MetricsPartition:
        return MetricsPartition(self.target, self.policy)


class MetricsPartition(StatefulSinkPartition[MonitorRecord, None]):
    """Buffers the rows of new records; commits them with the highest ``seq``."""

    def __init__(
        self,
        target: DeltaTarget,
        policy: FlushPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.policy = policy
        self.clock = clock
        self._table = target.open()
        self._keys = table_keys(self._table)
        self._top = committed_version(self._table, app_id(APP_PREFIX, TABLE, SEQ_KEY))
        self._buffer: list[pa.Table] = []
        self._rows = 0
        self._since = 0.0
        self.commits = 0

    def write_batch(self, values: list[MonitorRecord]) -> None:
        for record in values:
            key = record_key(record)
            if key in self._keys:
                continue  # written before a restart: the same record again
            self._keys.add(key)
            if not self._buffer:
                self._since = self.clock()
            rows = record_rows(record)
            self._buffer.append(rows)
            self._rows += rows.num_rows
            # never lower: a replay may number an unwritten record below the top
            self._top = max(self._top, record.seq)
        if self._rows >= self.policy.max_rows or (
            self._buffer and self.clock() - self._since >= self.policy.max_age_s
        ):
            self.flush()

    def snapshot(self) -> None:
        self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Commit the buffered rows and the highest ``seq`` in one Delta commit."""
        if not self._buffer:
            return
        self._table.update_incremental()
        append_with_versions(
            self._table, self.target, pa.concat_tables(self._buffer), {SEQ_KEY: self._top}
        )
        self._buffer, self._rows = [], 0
        self.commits += 1
        if self._table.version() % self.policy.checkpoint_every == 0:
            self._table.create_checkpoint()


def metrics_sink(settings: Settings) -> MetricsSink:
    return MetricsSink(metrics_target(settings))
