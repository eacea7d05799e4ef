"""``/v1/admin``: reload the aliases, see the models held, change the canary (role ``admin``)."""

from __future__ import annotations

from fastapi import APIRouter

from infra.errors import TributaryError
from infra.plantly.encoding import rfc3339
from serving.dependencies import AdminCaller, State
from serving.models import LoadedModel
from serving.routers.predictions import ERRORS
from serving.schemas import CanaryUpdate, ModelRef, ModelsResponse, PydanticJSON
from serving.state import ServingState

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class RegistryUnavailableError(TributaryError):
    code = "registry_unavailable"
    http_status = 503


@router.post("/reload", response_model=ModelsResponse, responses=ERRORS)
async def reload(state: State, _: AdminCaller) -> PydanticJSON:
    """Poll the registry now, in every worker; a new champion or challenger is swapped in."""
    report = await state.refresh_everywhere()
    if report.error is not None:
        raise RegistryUnavailableError(f"the registry poll failed: {report.error}")
    return PydanticJSON(models_held(state))


@router.get("/models", response_model=ModelsResponse, responses=ERRORS)
async def models(state: State, _: AdminCaller) -> PydanticJSON:
    """The versions held, the routing and the last poll."""
    return PydanticJSON(models_held(state))


@router.put("/canary", response_model=ModelsResponse, responses=ERRORS)
async def canary(body: CanaryUpdate, state: State, _: AdminCaller) -> PydanticJSON:
    """Route ``fraction`` of requests to the challenger, in every worker; shadow on/off."""
    await state.set_routing(body.fraction, body.shadow)
    return PydanticJSON(models_held(state))


def models_held(state: ServingState) -> ModelsResponse:
    store = state.models
    routing, last = store.routing, store.last_refresh
    return ModelsResponse(
        worker=state.origin,
        champion=_ref(routing.champion),
        challenger=_ref(routing.challenger),
        cached_versions=store.cached_versions(),
        canary_fraction=store.canary_fraction,
        shadow=store.shadow,
        last_poll=None if last is None else rfc3339(last.at),
        last_error=None if last is None else last.error,
    )


def _ref(model: LoadedModel | None) -> ModelRef | None:
    if model is None:
        return None
    return ModelRef(name=model.name, version=model.version, alias=model.alias)
