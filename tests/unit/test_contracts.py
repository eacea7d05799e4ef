"""The event contract: every rejection reason, round trips, precedence, PII safety."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from infra.contracts import (
    DlqHeaders,
    Rejection,
    RejectionReason,
    ShopEvent,
    ShopOrder,
    validate,
)
from infra.contracts.tables import (
    BRONZE_EVENTS,
    BRONZE_ORDERS,
    PII_CUSTOMERS,
    SourcePosition,
    event_row,
    order_row,
    pii_row,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PRODUCTS = frozenset({"ficus-lyrata-3gal", "monstera-deliciosa-6in"})
GOOD = {
    "event_id": "e-1",
    "event_type": "purchase",
    "event_ts": "2026-11-26T11:59:00.250Z",
    "user_id": "u-000001",
    "product_id": "ficus-lyrata-3gal",
    "session_id": "s-1",
    "request_id": "r-1",
    "region": "US-CA",
    "device": "desktop",
    "price": 59.99,
    "quantity": 2,
    "schema_version": 1,
}
ORDER = {
    "order_id": "o-1",
    "event_ts": "2026-11-26T11:59:00Z",
    "user_id": "u-000001",
    "items": [{"product_id": "ficus-lyrata-3gal", "quantity": 2, "unit_price": 59.99}],
    "total": 119.98,
    "email": "ava.kim7@example.com",
    "shipping_address": "12 Oak St, Sacramento, California 95814, US",
    "schema_version": 1,
}


def raw(payload: dict[str, object], **changes: object) -> bytes:
    merged = {**payload, **changes}
    return json.dumps({k: v for k, v in merged.items() if v is not DROP}).encode()


DROP = object()

# One crafted input per reason; the test below checks the table is complete.
CRAFTED: dict[RejectionReason, bytes] = {
    RejectionReason.OVERSIZED: raw(GOOD, session_id="s" * 70_000),
    RejectionReason.MALFORMED_JSON: b'{"event_id": "e-1", "event_type": ',
    RejectionReason.WRONG_SCHEMA_VERSION: raw(GOOD, schema_version=2),
    RejectionReason.UNKNOWN_EVENT_TYPE: raw(GOOD, event_type="hover"),
    RejectionReason.MISSING_FIELD: raw(GOOD, user_id=DROP),
    RejectionReason.UNKNOWN_FIELD: raw(GOOD, coupon="SPRING10"),
    RejectionReason.WRONG_TYPE: raw(GOOD, quantity="2"),
    RejectionReason.NON_FINITE: raw(GOOD, price=float("inf")),
    RejectionReason.INVALID_VALUE: raw(GOOD, region="California"),
    RejectionReason.UNKNOWN_PRODUCT: raw(GOOD, product_id="plastic-flamingo"),
    RejectionReason.TOO_LATE: raw(GOOD, event_ts="2026-10-20T00:00:00Z"),
    RejectionReason.FROM_FUTURE: raw(GOOD, event_ts="2026-11-26T12:06:00Z"),
}


def test_every_reason_has_a_crafted_input() -> None:
    assert set(CRAFTED) == set(RejectionReason)


@pytest.mark.parametrize("reason", list(RejectionReason), ids=str)
def test_crafted_input_is_rejected_for_its_reason(reason: RejectionReason) -> None:
    result = validate(CRAFTED[reason], products=PRODUCTS, now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason is reason, result.detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe\x00garbage", RejectionReason.MALFORMED_JSON),
        (b"[1, 2, 3]", RejectionReason.MALFORMED_JSON),
        (b'"just a string"', RejectionReason.MALFORMED_JSON),
        (b"", RejectionReason.MALFORMED_JSON),
        (raw(GOOD, price=DROP), RejectionReason.MISSING_FIELD),
        (raw(GOOD, quantity=DROP), RejectionReason.MISSING_FIELD),
        (raw(GOOD, quantity=True), RejectionReason.WRONG_TYPE),
        (raw(GOOD, schema_version=True), RejectionReason.WRONG_TYPE),
        (raw(GOOD, quantity=2.0), RejectionReason.WRONG_TYPE),
        (raw(GOOD, event_ts=1764151200), RejectionReason.WRONG_TYPE),
        (raw(GOOD, price=float("nan")), RejectionReason.NON_FINITE),
        (raw(GOOD, price=-1), RejectionReason.INVALID_VALUE),
        (raw(GOOD, quantity=1001), RejectionReason.INVALID_VALUE),
        (raw(GOOD, quantity=0), RejectionReason.INVALID_VALUE),
        (raw(GOOD, user_id=""), RejectionReason.INVALID_VALUE),
        (raw(GOOD, user_id="u" * 65), RejectionReason.INVALID_VALUE),
        (raw(GOOD, device="smart-fridge"), RejectionReason.INVALID_VALUE),
        (raw(GOOD, event_ts="2026-11-26T11:59:00"), RejectionReason.INVALID_VALUE),
        (raw(GOOD, event_ts="yesterday"), RejectionReason.INVALID_VALUE),
    ],
)
def test_more_bad_inputs(payload: bytes, reason: RejectionReason) -> None:
    result = validate(payload, products=PRODUCTS, now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason is reason, result.detail


def test_most_fundamental_reason_wins() -> None:
    payload = raw(GOOD, schema_version=7, event_type="hover", price="x", user_id=DROP)
    result = validate(payload)
    assert isinstance(result, Rejection)
    assert result.reason is RejectionReason.WRONG_SCHEMA_VERSION
    oversized_and_broken = b"{" + b" " * 70_000
    assert validate(oversized_and_broken) == Rejection(
        RejectionReason.OVERSIZED, "70001 bytes > 65536"
    )


def test_checks_are_skipped_without_their_context() -> None:
    late = raw(GOOD, event_ts="2020-01-01T00:00:00Z", product_id="not-in-catalog")
    assert isinstance(validate(late), ShopEvent)


def test_time_bounds_are_inclusive_of_the_allowed_range() -> None:
    edge_late = raw(GOOD, event_ts=(NOW - timedelta(days=30)).isoformat())
    edge_future = raw(GOOD, event_ts=(NOW + timedelta(minutes=5)).isoformat())
    assert isinstance(validate(edge_late, now=NOW), ShopEvent)
    assert isinstance(validate(edge_future, now=NOW), ShopEvent)


def test_valid_event_round_trips() -> None:
    event = validate(raw(GOOD), products=PRODUCTS, now=NOW)
    assert isinstance(event, ShopEvent)
    assert event.event_ts == datetime(2026, 11, 26, 11, 59, 0, 250_000, tzinfo=UTC)
    again = validate(event.model_dump_json().encode(), products=PRODUCTS, now=NOW)
    assert again == event


def test_zone_offsets_are_normalised_to_utc() -> None:
    event = validate(raw(GOOD, event_ts="2026-11-26T13:59:00+02:00"))
    assert isinstance(event, ShopEvent)
    assert event.event_ts == datetime(2026, 11, 26, 11, 59, tzinfo=UTC)


def test_minimal_impression_round_trips() -> None:
    minimal = {k: GOOD[k] for k in ("event_id", "event_ts", "user_id", "product_id", "region")}
    payload = raw({**minimal, "event_type": "impression", "device": "tablet", "schema_version": 1})
    event = validate(payload)
    assert isinstance(event, ShopEvent)
    assert (event.price, event.quantity, event.session_id) == (None, None, None)
    assert validate(event.model_dump_json(exclude_none=True).encode()) == event


def test_order_round_trips_and_rows_keep_pii_apart() -> None:
    order = validate(raw(ORDER), kind="order", products=PRODUCTS, now=NOW)
    assert isinstance(order, ShopOrder)
    assert validate(order.model_dump_json().encode(), kind="order") == order
    position = SourcePosition("shop.orders", 1, 9)
    bronze = pa.Table.from_pylist([order_row(order, position)], schema=BRONZE_ORDERS)
    assert "email" not in bronze.column_names
    assert "ava.kim7" not in str(bronze.to_pylist())
    pii = pa.Table.from_pylist([pii_row(order)], schema=PII_CUSTOMERS)
    assert pii.column("email").to_pylist() == ["ava.kim7@example.com"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"total": 100.0}, RejectionReason.INVALID_VALUE),
        ({"email": "not-an-address"}, RejectionReason.INVALID_VALUE),
        ({"items": []}, RejectionReason.INVALID_VALUE),
        ({"items": ["ficus"]}, RejectionReason.WRONG_TYPE),
        ({"email": DROP}, RejectionReason.MISSING_FIELD),
        (
            {"items": [{"product_id": "nope", "quantity": 1, "unit_price": 1.0}], "total": 1.0},
            RejectionReason.UNKNOWN_PRODUCT,
        ),
    ],
)
def test_bad_orders(changes: dict[str, object], reason: RejectionReason) -> None:
    result = validate(raw(ORDER, **changes), kind="order", products=PRODUCTS, now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason is reason, result.detail


def test_rejection_detail_never_echoes_the_input() -> None:
    result = validate(raw(ORDER, email="secret person@example"), kind="order")
    assert isinstance(result, Rejection)
    assert "secret" not in result.detail
    assert result.detail.startswith("email")


def test_bronze_event_row_fits_the_arrow_schema() -> None:
    event = validate(raw(GOOD))
    assert isinstance(event, ShopEvent)
    table = pa.Table.from_pylist(
        [event_row(event, SourcePosition("shop.events", 3, 41))], schema=BRONZE_EVENTS
    )
    row = table.to_pylist()[0]
    assert row["event_ts"] == event.event_ts
    assert (row["source_partition"], row["source_offset"], row["quantity"]) == (3, 41, 2)


def test_dlq_headers_round_trip_through_kafka_form() -> None:
    headers = DlqHeaders(
        reason=RejectionReason.TOO_LATE,
        detail="event_ts is older than 30 days",
        source_topic="shop.events",
        source_partition=0,
        source_offset=12,
    )
    kafka = headers.to_kafka()
    assert dict(kafka)["reason"] == b"too_late"
    assert DlqHeaders.from_kafka(kafka) == headers
