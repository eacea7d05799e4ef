"""Fast JSON encoding of simulated events (the simulator's hot path).

Every string the simulator puts in an event is an id, code or timestamp it made
itself, so none needs JSON escaping; an f-string is ~5x faster than
``json.dumps`` on a dict. Orders carry free text (addresses) and use ``json``.

>>> rfc3339(1764151200.5)
'2025-11-26T10:00:00.500Z'
>>> import json
>>> e = encode_event("e1", "purchase", 1764151200.0, "u1", "p1", "s1", "US-CA", "mobile", 9.99, 2)
>>> json.loads(e)["quantity"], json.loads(e)["event_ts"]
(2, '2025-11-26T10:00:00.000Z')
"""

from __future__ import annotations

import json
import time
from typing import Any

_DAY = 86400
_day_prefix: dict[int, str] = {}


def rfc3339(ts: float) -> str:
    """UTC RFC 3339 with milliseconds; the date part is cached per day."""
    millis = round(ts * 1000)
    seconds, ms = divmod(millis, 1000)
    day, second_of_day = divmod(seconds, _DAY)
    prefix = _day_prefix.get(day)
    if prefix is None:
        prefix = time.strftime("%Y-%m-%dT", time.gmtime(day * _DAY))
        _day_prefix[day] = prefix
    hour, rest = divmod(second_of_day, 3600)
    minute, second = divmod(rest, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"


def encode_event(
    event_id: str,
    event_type: str,
    ts: float,
    user_id: str,
    product_id: str,
    session_id: str,
    region: str,
    device: str,
    price: float,
    quantity: int | None,
    request_id: str | None = None,
) -> bytes:
    """One ``shop.events`` message in contract order."""
    extra = f',"quantity":{quantity}' if quantity is not None else ""
    if request_id is not None:
        extra += f',"request_id":"{request_id}"'
    return (
        f'{{"event_id":"{event_id}","event_type":"{event_type}","event_ts":"{rfc3339(ts)}",'
        f'"user_id":"{user_id}","product_id":"{product_id}","session_id":"{session_id}",'
        f'"region":"{region}","device":"{device}","price":{price}{extra},"schema_version":1}}'
    ).encode()


def encode_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
