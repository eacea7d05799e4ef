"""``/v1/hooks/registry``: MLflow tells the API that an alias moved, so it swaps at once.

Polling alone would leave a new champion unserved for up to ``model_poll_s``.
The lifespan registers this route as an MLflow webhook on alias changes when
``TRIBUTARY_SERVING__WEBHOOK_URL`` is set (``tributary serve`` sets it). MLflow
cannot send an API key, so a delivery is trusted by its HMAC signature when
``TRIBUTARY_TRAINING__WEBHOOK_SECRET`` is set, and otherwise only from loopback.
The refresh runs after the answer, so MLflow never waits on a model load, and
reaches the API's other workers through :mod:`serving.control`.
"""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, BackgroundTasks, Request, Response

from infra.errors import TributaryError
from serving.dependencies import State
from serving.routers.predictions import ERRORS
from serving.state import ControlUnavailableError, ServingState
from training.registry import CHALLENGER, CHAMPION
from training.webhook import alias_change, fresh_and_signed

router = APIRouter(prefix="/v1/hooks", tags=["hooks"])
_LOG = logging.getLogger("serving.routers.hooks")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class UntrustedDeliveryError(TributaryError):
    code = "unauthorized"
    http_status = 401


@router.post("/registry", status_code=202, responses=ERRORS)
async def registry(request: Request, state: State, tasks: BackgroundTasks) -> Response:
    """Refresh the models when the champion or challenger alias of our model moved."""
    body = (await request.body()).decode("utf-8", errors="replace")
    secret = state.settings.training.webhook_secret
    headers = {k.lower(): v for k, v in request.headers.items()}
    if secret is not None:
        trusted = fresh_and_signed(secret.get_secret_value(), headers, body)
    else:
        trusted = request.client is not None and request.client.host in _LOOPBACK
    if not trusted:
        raise UntrustedDeliveryError("registry deliveries must be signed (or come from loopback)")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        return Response(status_code=204)  # not ours to act on; MLflow need not retry
    change = alias_change(payload, state.models.name) if isinstance(payload, dict) else None
    if change is None or change[1] not in (CHAMPION, CHALLENGER):
        return Response(status_code=204)
    tasks.add_task(_refresh_everywhere, state)
    return Response(status_code=202)


async def _refresh_everywhere(state: ServingState) -> None:
    try:
        await state.refresh_everywhere()
    except ControlUnavailableError as error:  # this worker swapped; the others will poll
        _LOG.warning("%s", error)
