"""The prediction API: ``create_app(settings)`` builds a FastAPI app, its lifespan runs it.

Layout follows FastAPI's "bigger applications": routers per concern under
:mod:`serving.routers`, parts injected with ``Depends``
(:mod:`serving.dependencies`), models in :mod:`serving.schemas`. Building the
app checks the API keys (outside ``dev`` it refuses to exist without them) and
connects to nothing; the lifespan opens Redis, the registry and the prediction
log, loads the champion, and closes them in order on shutdown.

>>> from infra.settings import Settings
>>> app = create_app(Settings())
>>> sorted(app.openapi()["paths"])[:4]
['/healthz', '/metrics', '/readyz', '/v1/admin/canary']
>>> create_app(Settings(profile="prod"))
Traceback (most recent call last):
...
infra.errors.ConfigError: profile 'prod' needs API keys: set TRIBUTARY_API_KEYS ...
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from infra.plantly.catalog import Catalog, load_catalog
from infra.settings import Settings, load_settings
from serving import errors
from serving.metrics import ServingMetrics
from serving.middleware import BodySizeLimit, RequestMetrics
from serving.routers import admin, dashboard, features, health, hooks, predictions
from serving.security import ApiKeys
from serving.state import Backends, ServingState, real_backends

BackendFactory = Callable[[Settings], Backends]


def create_app(
    settings: Settings,
    *,
    backends: BackendFactory = real_backends,
    catalog: Catalog | None = None,
    freeze_gc: bool = False,
) -> FastAPI:
    """The API for ``settings``; ``backends`` replaces the outside world in tests.

    ``freeze_gc`` moves everything alive after start-up (models, catalog,
    libraries) out of the garbage collector's reach, so its full passes stay
    short: a serving process sets it, tests creating many apps do not.
    """
    keys = ApiKeys.from_settings(settings)
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts = backends(settings)
        state = ServingState.build(settings, keys, catalog or load_catalog(), parts, metrics)
        app.state.serving = state
        await state.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="Tributary prediction API",
        summary="plantly.shop recommendations and purchase predictions, with online features.",
        version="1",
        lifespan=lifespan,
    )
    errors.install(app)
    routers = (
        predictions.router, features.router, admin.router, hooks.router, health.router,
        dashboard.router,
    )  # fmt: skip
    for router in routers:
        app.include_router(router)
    # added last = outermost: the size check runs before anything reads the body
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(BodySizeLimit)
    return app


def app_from_environment() -> FastAPI:
    """``uvicorn --factory serving.app:app_from_environment``: settings from TRIBUTARY_*."""
    return create_app(load_settings(), freeze_gc=True)
