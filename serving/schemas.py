"""What the prediction API accepts and answers: strict pydantic models.

Requests forbid unknown fields and non-finite numbers (``allow_inf_nan=False``),
so ``NaN`` or ``Infinity`` in a body is a 422, never a value that reaches a
model. Responses are plain models; the routers render them with
:class:`PydanticJSON`, which skips FastAPI's second validation pass.

>>> RecommendationRequest.model_validate({"user_id": "u-1", "region": "US-CA"}).k is None
True
>>> CanaryUpdate.model_validate({"fraction": float("nan")})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for CanaryUpdate
fraction
  Input should be a finite number [type=finite_number, input_value=nan, input_type=float]
...
>>> PydanticJSON(ModelRef(name="plant-recommender", version=3, alias="champion")).body
b'{"name":"plant-recommender","version":3,"alias":"champion"}'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import Response

from flows.features.definitions import FeatureValue

UserId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Region = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$")]
Device = Literal["mobile", "desktop", "tablet"]
Ages = dict[str, float | None]

# The schema allows up to this many; settings.serving.max_candidates is the real limit.
CANDIDATES_CEILING = 5_000
K_CEILING = 500


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class RecommendationRequest(_Request):
    """Rank ``candidates`` (default: the whole catalog) for a shopper in ``region``."""

    user_id: UserId
    region: Region = Field(description="ISO 3166-2 code, e.g. US-CA")
    candidates: list[ProductId] | None = Field(None, max_length=CANDIDATES_CEILING)
    k: int | None = Field(None, ge=1, le=K_CEILING)
    device: Device | None = Field(None, description="Omitted: the model sees 'unknown'.")


class PredictRequest(_Request):
    """The purchase probability of one product for a shopper in ``region``."""

    user_id: UserId
    product_id: ProductId
    region: Region
    device: Device | None = None


class CanaryUpdate(_Request):
    """New routing: the share of requests the challenger answers, and shadow scoring."""

    fraction: float = Field(ge=0.0, le=1.0)
    shadow: bool | None = None


class ModelRef(BaseModel):
    """The version that answered; ``alias`` is null for a version pinned with ``?version=``."""

    name: str
    version: int
    alias: str | None


class ScoredProduct(BaseModel):
    product_id: str
    score: float


class FeatureAges(BaseModel):
    """Seconds since the newest event behind each feature; null when there was none.

    ``product`` holds, per feature, the largest age over the scored candidates
    (the stalest value the model saw).
    """

    user: Ages
    product: Ages


class RecommendationResponse(BaseModel):
    request_id: str
    model: ModelRef
    items: list[ScoredProduct]
    feature_ages: FeatureAges


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    score: float
    feature_ages: FeatureAges


class FeaturesResponse(BaseModel):
    view: str
    entity_id: str
    features: dict[str, FeatureValue]
    as_of: str = Field(description="RFC 3339, UTC")
    ages: Ages


class ModelsResponse(BaseModel):
    """What the worker that answered holds: aliases, cached versions, routing, last poll."""

    worker: str  # the process (pid-nonce): workers of one API should all agree
    champion: ModelRef | None
    challenger: ModelRef | None
    cached_versions: list[int]
    canary_fraction: float
    shadow: bool
    last_poll: str | None
    last_error: str | None


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class PydanticJSON(Response):
    """A response rendered by pydantic-core straight to bytes."""

    media_type = "application/json"

    def __init__(
        self, content: BaseModel, status_code: int = 200, *, exclude_none: bool = False
    ) -> None:
        body = content.model_dump_json(exclude_none=exclude_none).encode()
        super().__init__(body, status_code=status_code)

    def render(self, content: Any) -> bytes:
        return content if isinstance(content, bytes) else bytes(str(content), "utf-8")
