"""The streaming scorer's messages: requests on ``ml.score-requests``, answers on ``ml.scores``.

A request names a shopper, the context and the candidate plants to rank; it is
as strict as the event contract (exact JSON types, no unknown fields) and a
refused one becomes a :class:`~infra.contracts.Rejection` with one of the
contract's reasons, for the dead-letter topic.

>>> from infra.plantly.catalog import load_catalog
>>> ids = load_catalog().product_ids
>>> raw = (b'{"request_id": "r-1", "user_id": "u-1", "region": "US-FL",'
...        b' "candidates": ["ficus-lyrata-3gal", "ficus-lyrata-3gal", "lantana-camara-6in"]}')
>>> request = parse_request(raw, products=ids, max_candidates=500)
>>> request.device, request.candidates, request.k
(None, ['ficus-lyrata-3gal', 'lantana-camara-6in'], None)
>>> parse_request(b'{"request_id": "r-2"}', products=ids, max_candidates=500).reason
<RejectionReason.MISSING_FIELD: 'missing_field'>
>>> parse_request(raw.replace(b"ficus", b"fake"), products=ids, max_candidates=500).reason
<RejectionReason.UNKNOWN_PRODUCT: 'unknown_product'>
>>> parse_request(raw, products=ids, max_candidates=1)
Rejection(reason=<RejectionReason.INVALID_VALUE: 'invalid_value'>, detail='candidates: more than 1')
"""

from __future__ import annotations

from collections.abc import Container
from datetime import datetime
from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from infra.contracts import MAX_PAYLOAD_BYTES, Rejection, RejectionReason
from infra.contracts.events import Device, Identifier, RegionCode, UserId
from infra.contracts.validate import rejection_from

MAX_K: Final = 500
"""The most items one answer may ask for (the serving settings' ``default_k`` bound)."""
CANDIDATES_LIMIT: Final = 5_000
"""The hard bound on candidates; ``settings.serving.max_candidates`` is usually lower."""

_STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)


class ScoreRequest(BaseModel):
    """Rank ``candidates`` for ``user_id`` in ``region``; ``k`` defaults to the settings'.

    Repeated candidates count once, in the order they first appear.
    """

    model_config = _STRICT

    request_id: Identifier
    user_id: UserId
    region: RegionCode
    device: Device | None = None
    candidates: Annotated[list[Identifier], Field(min_length=1, max_length=CANDIDATES_LIMIT)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] | None = None

    @field_validator("candidates")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class ModelRef(BaseModel):
    """The registry version that scored a request, and the alias it was served under."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    version: int
    alias: str


class ItemScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    product_id: str
    score: float


class ScoreMessage(BaseModel):
    """One answer on ``ml.scores`` (key: ``user_id``): the ``k`` best allowed candidates.

    ``ts`` is when the features were read and the request scored.

    >>> from datetime import UTC
    >>> message = ScoreMessage(
    ...     request_id="r-1", ts=datetime(2026, 11, 26, 10, tzinfo=UTC), user_id="u-1",
    ...     model=ModelRef(name="plant-recommender", version=3, alias="champion"),
    ...     items=[ItemScore(product_id="ficus-lyrata-3gal", score=0.25)])
    >>> message.model_dump_json()[:60]
    '{"request_id":"r-1","ts":"2026-11-26T10:00:00Z","user_id":"u'
    """

    model_config = ConfigDict(frozen=True)

    request_id: str
    ts: AwareDatetime
    user_id: str
    model: ModelRef
    items: list[ItemScore]


def parse_request(
    raw: bytes, *, products: Container[str], max_candidates: int
) -> ScoreRequest | Rejection:
    """Parse and check one request against the catalog's ``products``; never raises.

    Reasons are the event contract's: ``oversized``, ``malformed_json``,
    ``missing_field``, ``unknown_field``, ``wrong_type``, ``invalid_value`` (an
    empty id, a bad region or device, no candidates, more than
    ``max_candidates``, ``k`` outside 1..500) and ``unknown_product``.
    """
    if len(raw) > MAX_PAYLOAD_BYTES:
        return Rejection(RejectionReason.OVERSIZED, f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        request = ScoreRequest.model_validate_json(raw)
    except ValidationError as error:
        return rejection_from(error)
    if len(request.candidates) > max_candidates:
        return Rejection(RejectionReason.INVALID_VALUE, f"candidates: more than {max_candidates}")
    if any(product_id not in products for product_id in request.candidates):
        return Rejection(RejectionReason.UNKNOWN_PRODUCT, "a candidate is not in the catalog")
    return request


def score_message(
    request: ScoreRequest, ts: datetime, model: ModelRef, items: list[ItemScore]
) -> ScoreMessage:
    """The answer to ``request``."""
    return ScoreMessage(
        request_id=request.request_id, ts=ts, user_id=request.user_id, model=model, items=items
    )
