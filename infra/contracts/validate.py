"""The one validation function every reader of ``shop.events``/``shop.orders`` uses.

>>> from datetime import UTC, datetime
>>> raw = (b'{"event_id":"e1","event_type":"click","event_ts":"2026-11-26T10:00:00+01:00",'
...        b'"user_id":"u1","product_id":"ficus-lyrata-6in","region":"US-CA",'
...        b'"device":"mobile","schema_version":1}')
>>> event = validate(raw, products={"ficus-lyrata-6in"})
>>> event.event_type, event.event_ts.isoformat()
('click', '2026-11-26T09:00:00+00:00')
>>> validate(raw, products={"monstera-deliciosa-6in"}).reason
<RejectionReason.UNKNOWN_PRODUCT: 'unknown_product'>
>>> validate(raw, now=datetime(2027, 1, 1, tzinfo=UTC)).reason
<RejectionReason.TOO_LATE: 'too_late'>
>>> validate(raw.replace(b'"schema_version":1', b'"schema_version":1,"price":NaN')).reason
<RejectionReason.NON_FINITE: 'non_finite'>
>>> validate(b'[1, 2]').reason
<RejectionReason.MALFORMED_JSON: 'malformed_json'>
"""

from __future__ import annotations

from collections.abc import Container
from datetime import datetime
from typing import Literal, overload

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from infra.contracts.events import (
    MAX_EVENT_AGE,
    MAX_FUTURE_SKEW,
    MAX_PAYLOAD_BYTES,
    ShopEvent,
    ShopOrder,
)
from infra.contracts.rejections import Rejection, RejectionReason

Kind = Literal["event", "order"]

_MODELS: dict[str, type[BaseModel]] = {"event": ShopEvent, "order": ShopOrder}

# pydantic error types that are not "wrong type" or "invalid value"
_BY_ERROR_TYPE = {
    "json_invalid": RejectionReason.MALFORMED_JSON,
    "json_type": RejectionReason.MALFORMED_JSON,
    "missing": RejectionReason.MISSING_FIELD,
    "extra_forbidden": RejectionReason.UNKNOWN_FIELD,
    "finite_number": RejectionReason.NON_FINITE,
    "wrong_schema_version": RejectionReason.WRONG_SCHEMA_VERSION,
}


@overload
def validate(
    raw: bytes,
    *,
    kind: Literal["event"] = ...,
    products: Container[str] | None = ...,
    now: datetime | None = ...,
) -> ShopEvent | Rejection: ...


@overload
def validate(
    raw: bytes,
    *,
    kind: Literal["order"],
    products: Container[str] | None = ...,
    now: datetime | None = ...,
) -> ShopOrder | Rejection: ...


@overload
def validate(
    raw: bytes,
    *,
    kind: Kind,
    products: Container[str] | None = ...,
    now: datetime | None = ...,
) -> ShopEvent | ShopOrder | Rejection: ...


def validate(
    raw: bytes,
    *,
    kind: Kind = "event",
    products: Container[str] | None = None,
    now: datetime | None = None,
) -> ShopEvent | ShopOrder | Rejection:
    """Parse and check one message; never raises for bad input.

    ``products`` is the catalog's ids (skipped when ``None``); ``now`` is the
    processing time that bounds event time (skipped when ``None``).
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Rejection(RejectionReason.OVERSIZED, f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        parsed = _MODELS[kind].model_validate_json(raw)
    except ValidationError as error:
        return rejection_from(error)
    message: ShopEvent | ShopOrder = parsed  # type: ignore[assignment]
    if products is not None:
        unknown = _unknown_product(message, products)
        if unknown is not None:
            return Rejection(RejectionReason.UNKNOWN_PRODUCT, "product_id is not in the catalog")
    if now is not None:
        if message.event_ts < now - MAX_EVENT_AGE:
            return Rejection(RejectionReason.TOO_LATE, "event_ts is older than 30 days")
        if message.event_ts > now + MAX_FUTURE_SKEW:
            return Rejection(RejectionReason.FROM_FUTURE, "event_ts is over 5 minutes ahead")
    return message


def _unknown_product(message: ShopEvent | ShopOrder, products: Container[str]) -> str | None:
    ids = [message.product_id] if isinstance(message, ShopEvent) else message.product_ids
    return next((pid for pid in ids if pid not in products), None)


def rejection_from(error: ValidationError) -> Rejection:
    """The rejection for a pydantic error: the most fundamental reason among its details."""
    details = error.errors(include_input=False, include_url=False)
    best = min(details, key=lambda d: _reason_for(d).precedence)
    where = ".".join(str(part) for part in best["loc"]) or "payload"
    return Rejection(_reason_for(best), f"{where}: {best['msg']}")


def _reason_for(detail: ErrorDetails) -> RejectionReason:
    kind = detail["type"]
    if kind in ("model_type", "model_attributes_type") and not detail["loc"]:
        return RejectionReason.MALFORMED_JSON
    if kind in _BY_ERROR_TYPE:
        return _BY_ERROR_TYPE[kind]
    if kind == "literal_error" and detail["loc"] == ("event_type",):
        return RejectionReason.UNKNOWN_EVENT_TYPE
    if kind.endswith("_type"):
        return RejectionReason.WRONG_TYPE
    return RejectionReason.INVALID_VALUE
