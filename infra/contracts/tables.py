"""Arrow schemas of the Delta tables the ingest side writes, and row builders.

Every table is partitioned by the UTC date of its event time where it has one,
so time-range reads (backfill, training sets) prune files. Bronze orders keep no
PII: email and address go only to ``pii/customers``.

>>> from datetime import UTC, datetime
>>> e = ShopEvent(event_id="e1", event_type="impression", user_id="u1",
...               event_ts=datetime(2026, 11, 26, 23, 59, tzinfo=UTC),
...               product_id="p1", region="US-CA", device="tablet", schema_version=1)
>>> row = event_row(e, SourcePosition("shop.events", 2, 17))
>>> row["event_date"], row["source_offset"], row["price"]
(datetime.date(2026, 11, 26), 17, None)
>>> set(row) == set(BRONZE_EVENTS.names)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from infra.contracts.events import ShopEvent, ShopOrder


class TableName:
    """Table paths under the profile's lake root (DESIGN.md, Tables)."""

    CATALOG: Final = "catalog/products"
    BRONZE_EVENTS: Final = "bronze/events"
    BRONZE_ORDERS: Final = "bronze/orders"
    PII_CUSTOMERS: Final = "pii/customers"


_TS = pa.timestamp("us", tz="UTC")

_SOURCE_FIELDS = [
    pa.field("source_topic", pa.string(), nullable=False),
    pa.field("source_partition", pa.int32(), nullable=False),
    pa.field("source_offset", pa.int64(), nullable=False),
]

BRONZE_EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("event_ts", _TS, nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("region", pa.string(), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int32()),
        pa.field("schema_version", pa.int16(), nullable=False),
        *_SOURCE_FIELDS,
    ]
)

_ORDER_ITEM = pa.struct(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("unit_price", pa.float64(), nullable=False),
    ]
)

BRONZE_ORDERS = pa.schema(
    [
        pa.field("order_id", pa.string(), nullable=False),
        pa.field("event_ts", _TS, nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("items", pa.list_(_ORDER_ITEM), nullable=False),
        pa.field("total", pa.float64(), nullable=False),
        pa.field("schema_version", pa.int16(), nullable=False),
        *_SOURCE_FIELDS,
    ]
)

PII_CUSTOMERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("email", pa.string(), nullable=False),
        pa.field("shipping_address", pa.string(), nullable=False),
        pa.field("order_id", pa.string(), nullable=False),
        pa.field("event_ts", _TS, nullable=False),
    ]
)

CATALOG_PRODUCTS = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("species", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("light", pa.string(), nullable=False),
        pa.field("pet_safe", pa.bool_(), nullable=False),
        pa.field("invasive_regions", pa.list_(pa.string()), nullable=False),
    ]
)

PARTITION_BY: Final[dict[str, list[str]]] = {
    TableName.BRONZE_EVENTS: ["event_date"],
    TableName.BRONZE_ORDERS: ["event_date"],
}


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where in Kafka a message was read: lineage for every bronze row."""

    topic: str
    partition: int
    offset: int


def _source(position: SourcePosition) -> dict[str, Any]:
    return {
        "source_topic": position.topic,
        "source_partition": position.partition,
        "source_offset": position.offset,
    }


def event_row(event: ShopEvent, position: SourcePosition) -> dict[str, Any]:
    """A ``bronze/events`` row."""
    row = event.model_dump()
    row["event_date"] = event.event_ts.date()
    row.update(_source(position))
    return row


def order_row(order: ShopOrder, position: SourcePosition) -> dict[str, Any]:
    """A ``bronze/orders`` row: the order without its PII."""
    row = order.model_dump(exclude={"email", "shipping_address"})
    row["event_date"] = order.event_ts.date()
    row.update(_source(position))
    return row


def pii_row(order: ShopOrder) -> dict[str, Any]:
    """A ``pii/customers`` row, the only place email and address are kept."""
    return {
        "user_id": order.user_id,
        "email": order.email,
        "shipping_address": order.shipping_address,
        "order_id": order.order_id,
        "event_ts": order.event_ts,
    }
