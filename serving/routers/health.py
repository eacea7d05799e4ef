"""``/healthz`` (the process answers), ``/readyz`` (it can serve), ``/metrics``: all open."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from serving.dependencies import State
from serving.errors import error_response
from serving.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """200 while the process runs."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(state: State) -> Response:
    """200 when Redis and the broker answer and a champion is loaded; else 503 naming what not."""
    problems = await state.readiness()
    missing = [f"{name}: {why}" for name, why in problems.items() if why is not None]
    if missing:
        details = [{"check": name, "problem": why} for name, why in problems.items() if why]
        return error_response(503, "not_ready", "; ".join(missing), details)
    return JSONResponse({"status": "ready", "checks": dict.fromkeys(problems, "ok")})


@router.get("/metrics")
async def metrics(state: State) -> Response:
    """Prometheus text format."""
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
