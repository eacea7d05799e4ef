"""What one running API holds, from start-up to shutdown.

:class:`Backends` names everything outside the process the API talks to —
Redis, the model registry, the prediction-log sink and the broker check — so
unit tests swap in the fakes of :mod:`serving.testing`. :class:`ServingState`
starts them in the app's lifespan, polls the registry in the background and
stops them in order: no new polls, drain the log, close Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from redis.asyncio import Redis as AsyncRedis

from infra.plantly.catalog import Catalog
from infra.settings import Settings
from infra.stack.health import kafka_check
from serving.metrics import ServingMetrics
from serving.models import ModelSource, ModelStore, RefreshReport
from serving.prediction_log import KafkaRecordSink, PredictionLog, RecordSink
from serving.security import ApiKeys
from serving.service import PredictionService
from training.registry import CHALLENGER, CHAMPION, Registry

_LOG = logging.getLogger("serving.state")
CHECK_TIMEOUT_S: Final = 1.0
FIRST_LOAD_WAIT_S: Final = 60.0


@dataclass
class Backends:
    """The outside world of the API."""

    redis: AsyncRedis
    models: ModelSource
    sink: RecordSink
    broker_check: Callable[[], str | None]  # blocking; None when reachable, else why not


def real_backends(settings: Settings) -> Backends:
    """Redis (``redis.asyncio`` with hiredis), the MLflow registry, Kafka."""
    redis = AsyncRedis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    check = kafka_check(settings.kafka_bootstrap, settings.kafka_address, CHECK_TIMEOUT_S)

    def broker_check() -> str | None:
        health = check()
        return None if health.ok else health.detail

    return Backends(redis, Registry(settings), KafkaRecordSink(settings), broker_check)


@dataclass
class ServingState:
    """Everything a request needs, built once per app."""

    settings: Settings
    keys: ApiKeys
    catalog: Catalog
    backends: Backends
    metrics: ServingMetrics
    models: ModelStore
    log: PredictionLog
    service: PredictionService
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _poller: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        keys: ApiKeys,
        catalog: Catalog,
        backends: Backends,
        metrics: ServingMetrics,
    ) -> ServingState:
        serving = settings.serving
        models = ModelStore(
            backends.models, settings.registered_model_name,
            canary_fraction=serving.canary_fraction, shadow=serving.shadow,
        )  # fmt: skip
        log = PredictionLog(backends.sink, metrics, serving.prediction_queue)
        service = PredictionService(settings, catalog, backends.redis, models, log, metrics)
        return cls(settings, keys, catalog, backends, metrics, models, log, service)

    async def start(self) -> None:
        """Start the log, load the aliases (waiting a while for them), start polling."""
        self.log.start()
        if self.settings.serving.webhook_url:
            await asyncio.to_thread(self._subscribe, self.settings.serving.webhook_url)
        first = await self._refresh_within(FIRST_LOAD_WAIT_S)
        if first is not None and first.champion is None:
            _LOG.warning("no %s@champion to serve yet; /readyz answers 503", self.models.name)
        self._poller = asyncio.create_task(self._poll(), name="model-poll")

    def _subscribe(self, url: str) -> None:
        """Ask MLflow to call ``url`` on alias changes; polling still covers a failure."""
        from training.webhook import ensure_webhook

        name = f"tributary-{self.settings.profile}-serving-{zlib.crc32(url.encode()):08x}"
        try:
            ensure_webhook(self.settings, url, name, deletions=True)
        except Exception as error:  # the registry may be down: serve, and keep polling
            _LOG.warning("cannot register the registry webhook %s: %s", url, error)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await asyncio.to_thread(self.log.close)
        await self.backends.redis.aclose()

    async def refresh(self) -> RefreshReport:
        """Poll the registry now (``POST /v1/admin/reload``); the poller's clock restarts."""
        report = await asyncio.to_thread(self.models.refresh)
        self._record(report)
        self._wake.set()
        return report

    async def readiness(self) -> dict[str, str | None]:
        """Per dependency, None when fine, else what is wrong."""
        redis_problem, broker_problem = await asyncio.gather(
            self._redis_problem(), asyncio.to_thread(self.backends.broker_check)
        )
        champion = self.models.routing.champion
        return {
            "redis": redis_problem,
            "broker": broker_problem,
            "champion": None if champion is not None else f"no {self.models.name}@champion loaded",
        }

    async def _redis_problem(self) -> str | None:
        try:
            await asyncio.wait_for(self.backends.redis.ping(), CHECK_TIMEOUT_S)
        except Exception as error:  # any failure means not ready, whatever its type
            return f"{type(error).__name__}: {error}"[:200]
        return None

    async def _refresh_within(self, timeout: float) -> RefreshReport | None:
        task = asyncio.ensure_future(asyncio.to_thread(self.models.refresh))
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            _LOG.warning("the registry did not answer within %.0f s; still trying", timeout)
            return None
        report = task.result()
        self._record(report)
        return report

    async def _poll(self) -> None:
        interval = self.settings.serving.model_poll_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            if self._wake.is_set():  # a forced reload just ran: restart the clock
                self._wake.clear()
                continue
            self._record(await asyncio.to_thread(self.models.refresh))

    def _record(self, report: RefreshReport) -> None:
        self.metrics.model_refresh.labels("error" if report.error else "ok").inc()
        self.metrics.model_version.labels(CHAMPION).set(report.champion or 0)
        self.metrics.model_version.labels(CHALLENGER).set(report.challenger or 0)
