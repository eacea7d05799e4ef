"""Typed models of the event contract (schema_version 1, DESIGN.md).

The models are strict: JSON types must match exactly (no ``"5"`` for 5, no
``true`` for 1), NaN and infinities are refused, unknown fields are refused.
Use :func:`infra.contracts.validate.validate` rather than these models
directly: it turns every failure into a :class:`Rejection` with a fixed reason.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_EVENT_AGE = timedelta(days=30)
MAX_FUTURE_SKEW = timedelta(minutes=5)

EventType = Literal["impression", "click", "add_to_cart", "purchase"]
Device = Literal["mobile", "desktop", "tablet"]
EVENT_TYPES: tuple[EventType, ...] = ("impression", "click", "add_to_cart", "purchase")
DEVICES: tuple[Device, ...] = ("mobile", "desktop", "tablet")

RegionCode = Annotated[str, Field(pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$")]
Identifier = Annotated[str, Field(min_length=1, max_length=128)]
UserId = Annotated[str, Field(min_length=1, max_length=64)]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Quantity = Annotated[int, Field(ge=1, le=1000)]
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def _check_schema_version(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise PydanticCustomError(
            "wrong_schema_version", "schema_version {got} is not supported", {"got": value}
        )
    return value


EventTime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
SchemaVersion = Annotated[int, AfterValidator(_check_schema_version)]


class ShopEvent(BaseModel):
    """One clickstream event on ``shop.events`` (key: ``user_id``)."""

    model_config = _STRICT

    event_id: Identifier
    event_type: EventType
    event_ts: EventTime
    user_id: UserId
    product_id: Identifier
    session_id: Identifier | None = None
    request_id: Identifier | None = None
    region: RegionCode
    device: Device
    price: Price | None = None
    quantity: Quantity | None = None
    schema_version: SchemaVersion

    @model_validator(mode="after")
    def _required_by_type(self) -> ShopEvent:
        if self.event_type in ("add_to_cart", "purchase") and self.price is None:
            message = "price is required for {t}"
            raise PydanticCustomError("missing", message, {"t": self.event_type})
        if self.event_type == "purchase" and self.quantity is None:
            raise PydanticCustomError("missing", "quantity is required for purchase")
        return self


class OrderItem(BaseModel):
    """One line of an order."""

    model_config = _STRICT

    product_id: Identifier
    quantity: Quantity
    unit_price: Price


class ShopOrder(BaseModel):
    """One sale on ``shop.orders`` (key: ``user_id``); ``email`` and
    ``shipping_address`` are PII and may only reach the restricted PII table."""

    model_config = _STRICT

    order_id: Identifier
    event_ts: EventTime
    user_id: UserId
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=1000)]
    total: Price
    email: Annotated[str, Field(max_length=254)]
    shipping_address: Annotated[str, Field(min_length=1, max_length=512)]
    schema_version: SchemaVersion

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise PydanticCustomError("value_error", "email is not an address")
        return value

    @model_validator(mode="after")
    def _total_matches_items(self) -> ShopOrder:
        expected = sum(item.quantity * item.unit_price for item in self.items)
        if abs(expected - self.total) > 0.01 + 1e-9 * expected:
            raise PydanticCustomError("value_error", "total does not equal the sum of the items")
        return self

    @property
    def product_ids(self) -> list[str]:
        return [item.product_id for item in self.items]
