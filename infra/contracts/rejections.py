"""The fixed list of reasons an input is refused, and the refusal itself.

Every reason is documented here and in the README; the DLQ's ``reason`` header
carries the value. Adding a reason is a contract change (see DESIGN.md).

>>> Rejection(RejectionReason.NON_FINITE, "price: not finite")
Rejection(reason=<RejectionReason.NON_FINITE: 'non_finite'>, detail='price: not finite')
>>> RejectionReason.TOO_LATE.describe()
'the event time is more than 30 days before processing time'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RejectionReason(StrEnum):
    """Why a message went to the dead-letter topic, most fundamental first."""

    OVERSIZED = "oversized"
    MALFORMED_JSON = "malformed_json"
    WRONG_SCHEMA_VERSION = "wrong_schema_version"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    INVALID_VALUE = "invalid_value"
    UNKNOWN_PRODUCT = "unknown_product"
    TOO_LATE = "too_late"
    FROM_FUTURE = "from_future"

    def describe(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def precedence(self) -> int:
        """Lower wins when one payload breaks several rules."""
        return _ORDER.index(self)


_ORDER = list(RejectionReason)

_DESCRIPTIONS = {
    RejectionReason.OVERSIZED: "the payload is larger than 64 KiB",
    RejectionReason.MALFORMED_JSON: "the payload is not a UTF-8 JSON object",
    RejectionReason.WRONG_SCHEMA_VERSION: "schema_version is not a supported version (1)",
    RejectionReason.UNKNOWN_EVENT_TYPE: (
        "event_type is not impression, click, add_to_cart or purchase"
    ),
    RejectionReason.MISSING_FIELD: (
        "a required field is absent (price for add_to_cart/purchase, quantity for purchase)"
    ),
    RejectionReason.UNKNOWN_FIELD: "a field that the contract does not define",
    RejectionReason.WRONG_TYPE: "a field has the wrong JSON type (a string for a number, ...)",
    RejectionReason.NON_FINITE: "a number is NaN or infinite",
    RejectionReason.INVALID_VALUE: (
        "a value breaks its rule: empty or too long ids, a timestamp without zone, "
        "an unknown region or device, a negative price, a quantity outside 1..1000, "
        "an order total that does not match its items"
    ),
    RejectionReason.UNKNOWN_PRODUCT: "product_id is not in the catalog",
    RejectionReason.TOO_LATE: "the event time is more than 30 days before processing time",
    RejectionReason.FROM_FUTURE: "the event time is more than 5 minutes after processing time",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused payload: the reason, and a detail that never echoes input values."""

    reason: RejectionReason
    detail: str
