"""The offline feature log: one Delta row per (event, view), with the values after it.

A row says "from ``event_ts`` on, this entity's features were ...", computed
right after the event was folded into the entity's tiles. A point-in-time
lookup for time t takes the newest row with ``event_ts < t``. Rows carry the
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

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

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


def log_row(
    view: FeatureView,
    entity_id: str,
    event_id: str,
    ts: float,
    values: dict[str, FeatureValue],
    source: tuple[str, int, int],
) -> dict[str, Any]:
    """One row of ``view``'s log; ``source`` is (topic, partition, offset)."""
    when = datetime.fromtimestamp(ts, UTC)
    row: dict[str, Any] = {
        view.entity: entity_id,
        "event_id": event_id,
        "event_ts": when,
        "event_date": when.date(),
        **values,
        "feature_set_version": FEATURE_SET_VERSION,
        "source_topic": source[0],
        "source_partition": source[1],
        "source_offset": source[2],
    }
    last = values.get("last_event_ts")
    if last is not None:
        row["last_event_ts"] = datetime.fromtimestamp(float(last), UTC)
    return row
