"""``POST /v1/recommendations`` and ``POST /v1/predict`` (role ``predict``).

``?version=N`` pins a registry version instead of the champion/canary routing.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from serving.dependencies import PredictCaller, Service
from serving.schemas import (
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    PydanticJSON,
    RecommendationRequest,
    RecommendationResponse,
)

router = APIRouter(prefix="/v1", tags=["predictions"])

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 422, 503)
}
Version = Annotated[int | None, Query(ge=1, description="Pin this registry version.")]


@router.post("/recommendations", response_model=RecommendationResponse, responses=ERRORS)
async def recommendations(
    body: RecommendationRequest, service: Service, _: PredictCaller, version: Version = None
) -> PydanticJSON:
    """Rank the candidates (default: the whole catalog) for a shopper; never an invasive plant."""
    return PydanticJSON(await service.recommendations(body, version))


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    body: PredictRequest, service: Service, _: PredictCaller, version: Version = None
) -> PydanticJSON:
    """The purchase probability of one product for a shopper."""
    return PydanticJSON(await service.predict(body, version))
