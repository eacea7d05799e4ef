"""Turn a valid event into a malformed one, for every rejection reason.

The ``bad-input`` scenario uses these to prove that the pipeline sends each
kind of bad input to the dead-letter topic with the right reason. Each mutator
is the smallest change that breaks exactly one rule of the contract.

>>> from infra.contracts import validate
>>> good = (b'{"event_id":"e1","event_type":"click","event_ts":"2026-11-26T10:00:00.000Z",'
...         b'"user_id":"u1","product_id":"p1","region":"US-CA","device":"mobile",'
...         b'"price":9.99,"schema_version":1}')
>>> anchor = 1795687200.0  # 2026-11-26T10:00:00Z
>>> bad = mutate(good, RejectionReason.WRONG_TYPE, anchor)
>>> validate(bad).reason
<RejectionReason.WRONG_TYPE: 'wrong_type'>
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from infra.contracts.events import MAX_PAYLOAD_BYTES
from infra.contracts.rejections import RejectionReason
from infra.plantly.encoding import encode_json, rfc3339

Event = dict[str, Any]
UNKNOWN_PRODUCT_ID = "plastic-flamingo-xl"
_DAY = 86400.0


def _set(field: str, value: Any) -> Callable[[Event, float], Event]:
    def change(event: Event, anchor: float) -> Event:
        return {**event, field: value}

    return change


def _drop(field: str) -> Callable[[Event, float], Event]:
    def change(event: Event, anchor: float) -> Event:
        return {k: v for k, v in event.items() if k != field}

    return change


def _shift_time(seconds: float) -> Callable[[Event, float], Event]:
    def change(event: Event, anchor: float) -> Event:
        return {**event, "event_ts": rfc3339(anchor + seconds)}

    return change


_FIELD_CHANGES: dict[RejectionReason, Callable[[Event, float], Event]] = {
    RejectionReason.OVERSIZED: _set("session_id", "x" * (MAX_PAYLOAD_BYTES + 1)),
    RejectionReason.WRONG_SCHEMA_VERSION: _set("schema_version", 2),
    RejectionReason.UNKNOWN_EVENT_TYPE: _set("event_type", "hover"),
    RejectionReason.MISSING_FIELD: _drop("user_id"),
    RejectionReason.UNKNOWN_FIELD: _set("coupon_code", "SPRING10"),
    RejectionReason.WRONG_TYPE: _set("price", "9.99"),
    RejectionReason.NON_FINITE: _set("price", float("nan")),
    RejectionReason.INVALID_VALUE: _set("device", "smart-fridge"),
    RejectionReason.UNKNOWN_PRODUCT: _set("product_id", UNKNOWN_PRODUCT_ID),
    RejectionReason.TOO_LATE: _shift_time(-45 * _DAY),
    RejectionReason.FROM_FUTURE: _shift_time(2 * 3600.0),
}


def mutate(raw: bytes, reason: RejectionReason, anchor: float) -> bytes:
    """``raw`` broken so that validation rejects it for ``reason``.

    ``anchor`` is the processing time the time-bound reasons are measured from.
    """
    if reason is RejectionReason.MALFORMED_JSON:
        return raw[: len(raw) // 2]
    event = _FIELD_CHANGES[reason](json.loads(raw), anchor)
    if reason is RejectionReason.NON_FINITE:
        # json.dumps writes the NaN literal that some producers really send
        return json.dumps(event, separators=(",", ":")).encode()
    return encode_json(event)


REASONS: tuple[RejectionReason, ...] = tuple(RejectionReason)
