"""The event contract: typed messages, the one validation function, DLQ headers, tables."""

from infra.contracts.dlq import DlqHeaders
from infra.contracts.events import (
    DEVICES,
    EVENT_TYPES,
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    OrderItem,
    ShopEvent,
    ShopOrder,
)
from infra.contracts.rejections import Rejection, RejectionReason
from infra.contracts.validate import validate

__all__ = [
    "DEVICES",
    "EVENT_TYPES",
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "DlqHeaders",
    "OrderItem",
    "Rejection",
    "RejectionReason",
    "ShopEvent",
    "ShopOrder",
    "validate",
]
