"""``GET /v1/features/{view}/{entity_id}``: one entity's online features (role ``predict``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from serving.dependencies import PredictCaller, Service
from serving.routers.predictions import ERRORS
from serving.schemas import FeaturesResponse, PydanticJSON

router = APIRouter(prefix="/v1/features", tags=["features"])


@router.get("/{view}/{entity_id}", response_model=FeaturesResponse, responses=ERRORS)
async def get_features(
    view: str,
    entity_id: Annotated[str, Path(min_length=1, max_length=128)],
    service: Service,
    _: PredictCaller,
) -> PydanticJSON:
    """Features as of now with their ages; 404 for an unknown view or an entity never seen."""
    return PydanticJSON(await service.features(view, entity_id))
