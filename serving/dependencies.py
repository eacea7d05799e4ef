"""What routes receive through ``Depends``: the app's state, its parts, the caller's role.

Routers never reach for globals: ``state`` comes from ``request.app.state``,
set by the lifespan, and each route declares the role it needs with
:data:`PredictCaller` or :data:`AdminCaller`. Every dependency is ``async``:
FastAPI runs a plain ``def`` one in a thread pool, a thread hop per call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from infra.settings import Settings
from serving.security import HEADER, Role
from serving.service import PredictionService
from serving.state import ServingState

# auto_error=False: a missing key is our 401 with our JSON body, and only when auth is on
api_key_header = APIKeyHeader(name=HEADER, auto_error=False)


async def get_state(request: Request) -> ServingState:
    state: ServingState = request.app.state.serving
    return state


State = Annotated[ServingState, Depends(get_state)]


async def get_settings(state: State) -> Settings:
    return state.settings


async def get_service(state: State) -> PredictionService:
    return state.service


def require(role: Role) -> Callable[[ServingState, str | None], Awaitable[Role]]:
    """A dependency that lets the call through only with a key holding ``role``."""

    async def check(state: State, key: Annotated[str | None, Depends(api_key_header)]) -> Role:
        state.keys.authorize(key, role)
        return role

    return check


Service = Annotated[PredictionService, Depends(get_service)]
PredictCaller = Annotated[Role, Depends(require("predict"))]
AdminCaller = Annotated[Role, Depends(require("admin"))]
