"""The offline feature log: one Delta row per (event, view), with the values after it.

A row says "right after this event, the entity's features were ...": the
values are computed as of ``event_ts`` just after the event was folded into the
entity's tiles. It is an audit of what the online store held, not a source for
point-in-time training sets: windows decay between updates, so those fold
bronze events into tiles and read as of each example's time. Rows carry the
Kafka position of their event, which is what makes their writes exactly-once
(see :mod:`flows.sinks.delta`). The stream writes rows as events arrive; a
backfill rewrites a date range from bronze in event-time order.

>>> schema = log_schema(get_view("product"))
>>> schema.names[:4]
['product_id', 'event_id', 'event_ts', 'event_date']
>>> str(schema.field("ctr_24h").type), str(schema.field("purchases_24h").type)
('double', 'int64')
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flows.features.definitions import FEATURE_SET_VERSION, FeatureValue, FeatureView, get_view

_TS = pa.timestamp("us", tz="UTC")
_DTYPES = {"int64": pa.int64(), "float64": pa.float64()}


def log_table(view: str) -> str:
    """The table path under the lake root, e.g. ``features/user``."""
    return f"features/{get_view(view).name}"


def log_schema(view: FeatureView) -> pa.Schema:
    feature_fields = [
        pa.field(name, _TS if name == "last_event_ts" else _DTYPES[dtype])
        for name, dtype in view.dtypes.items()
    ]
    return pa.schema(
        [
            pa.field(view.entity, pa.string(), nullable=False),
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("event_ts", _TS, nullable=False),
            pa.field("event_date", pa.date32(), nullable=False),
            *feature_fields,
            pa.field("feature_set_version", pa.int16(), nullable=False),
            pa.field("source_topic", pa.string(), nullable=False),
            pa.field("source_partition", pa.int32(), nullable=False),
            pa.field("source_offset", pa.int64(), nullable=False),
        ]
    )


Columns = dict[str, list[Any]]


class LogBuilder:
    """Collects log rows column by column and builds one Arrow table from them.

    The stream logs every event twice (user and product), so rows are never
    dicts or small tables: appending to columns, merging columns, and converting
    them once per commit is several times cheaper than ``Table.from_pylist``.
    """

    def __init__(self, view: FeatureView, columns: Columns | None = None) -> None:
        self.view = view
        self.columns: Columns = columns or {name: [] for name in (*_KEYS, *view.names)}

    def __len__(self) -> int:
        return len(self.columns["event_id"])

    def add(
        self,
        entity_id: str,
        event_id: str,
        ts: float,
        values: dict[str, FeatureValue],
        source: tuple[str, int, int],
    ) -> None:
        """One row; ``source`` is the event's (topic, partition, offset)."""
        columns = self.columns
        columns["entity"].append(entity_id)
        columns["event_id"].append(event_id)
        columns["micros"].append(round(ts * 1_000_000))
        columns["source_topic"].append(source[0])
        columns["source_partition"].append(source[1])
        columns["source_offset"].append(source[2])
        for name, value in values.items():
            columns[name].append(value)

    def table(self) -> pa.Table:
        return log_table_of(self.view, self.columns)


_KEYS = ("entity", "event_id", "micros", "source_topic", "source_partition", "source_offset")


def log_table_of(view: FeatureView, columns: Columns) -> pa.Table:
    """The Arrow table of ``view``'s log from :class:`LogBuilder` columns."""
    schema = log_schema(view)
    event_ts = pa.array(columns["micros"], pa.int64()).cast(_TS)
    data: dict[str, pa.Array] = {
        view.entity: pa.array(columns["entity"], pa.string()),
        "event_id": pa.array(columns["event_id"], pa.string()),
        "event_ts": event_ts,
        "event_date": pc.cast(event_ts, pa.date32()),
    }
    for name in view.names:
        data[name] = _feature_array(name, columns[name], schema.field(name).type)
    rows = len(columns["event_id"])
    data["feature_set_version"] = pa.array([FEATURE_SET_VERSION] * rows, pa.int16())
    data["source_topic"] = pa.array(columns["source_topic"], pa.string())
    data["source_partition"] = pa.array(columns["source_partition"], pa.int32())
    data["source_offset"] = pa.array(columns["source_offset"], pa.int64())
    return pa.Table.from_pydict(data, schema=schema)


def _feature_array(name: str, values: list[FeatureValue], kind: pa.DataType) -> pa.Array:
    if name != "last_event_ts":
        return pa.array(values, kind)
    micros = [None if v is None else round(v * 1_000_000) for v in values]
    return pa.array(micros, pa.int64()).cast(_TS)
