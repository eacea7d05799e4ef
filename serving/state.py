"""What one running API worker holds, from start-up to shutdown.

:class:`Backends` names everything outside the process the API talks to —
Redis, the model registry, the prediction-log sink, the broker check and the
workers' control channel — so unit tests swap in the fakes of
:mod:`serving.testing`. :class:`ServingState` starts them in the app's
lifespan, polls the registry and listens to the other workers
(:mod:`serving.control`) in the background, and stops them in order: no new
polls, drain the log, close Redis.
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

from infra.errors import TributaryError
from infra.plantly.catalog import Catalog
from infra.redis_client import async_redis
from infra.settings import Settings
from infra.stack.health import kafka_check
from serving.control import ControlChannel, ControlMessage, RedisControl, StoredRouting, worker_id
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
    control: ControlChannel


def real_backends(settings: Settings) -> Backends:
    """Redis (``redis.asyncio`` with hiredis), the MLflow registry, Kafka."""
    redis = async_redis(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    check = kafka_check(settings.kafka_bootstrap, settings.kafka_address, CHECK_TIMEOUT_S)

    def broker_check() -> str | None:
        health = check()
        return None if health.ok else health.detail

    return Backends(
        redis, Registry(settings), KafkaRecordSink(settings), broker_check, RedisControl(settings)
    )


class ControlUnavailableError(TributaryError):
    """A change was made on this worker, but the other workers could not be told."""

    code = "control_unavailable"
    http_status = 503


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
    origin: str = field(default_factory=worker_id)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _poller: asyncio.Task[None] | None = None
    _listener: asyncio.Task[None] | None = None

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
        """Start the log, join the other workers, load the aliases (waiting a while), poll."""
        self.log.start()
        await self._restore_routing()
        self._listener = asyncio.create_task(self._listen(), name="control-listen")
        if self.settings.serving.webhook_url:
            await asyncio.to_thread(self._subscribe, self.settings.serving.webhook_url)
        first = await self._refresh_within(FIRST_LOAD_WAIT_S)
        if first is not None and first.champion is None:
            _LOG.warning("no %s@champion to serve yet; /readyz answers 503", self.models.name)
        self._poller = asyncio.create_task(self._poll(), name="model-poll")

    def _subscribe(self, url: str) -> None:
        """Ask MLflow to call ``url`` on alias changes; polling still covers a failure.

        The workers of one API start together and register the same webhook:
        a Redis lock lets one at a time look it up, so it is created once.
        """
        from redis import Redis

        from training.webhook import ensure_webhook

        name = f"tributary-{self.settings.profile}-serving-{zlib.crc32(url.encode()):08x}"
        client = Redis.from_url(self.settings.redis_url, socket_timeout=5.0)
        try:
            lock_name = f"{self.settings.redis_key_prefix}serving:webhook-lock"
            with client.lock(lock_name, timeout=60, blocking_timeout=30):
                ensure_webhook(self.settings, url, name, deletions=True)
        except Exception as error:  # the registry may be down: serve, and keep polling
            _LOG.warning("cannot register the registry webhook %s: %s", url, error)
        finally:
            client.close()

    async def stop(self) -> None:
        for task in (self._listener, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.to_thread(self.log.close)
        await self.backends.control.close()
        await self.backends.redis.aclose()
        self.metrics.close()

    async def refresh(self) -> RefreshReport:
        """Poll the registry now, in this worker; the poller's clock restarts."""
        report = await asyncio.to_thread(self.models.refresh)
        self._record(report)
        self._wake.set()
        return report

    async def refresh_everywhere(self) -> RefreshReport:
        """Poll now here, and tell the other workers to (``POST /v1/admin/reload``, webhook)."""
        report = await self.refresh()
        await self._publish(ControlMessage(op="reload", origin=self.origin))
        return report

    async def set_routing(self, canary_fraction: float, shadow: bool | None) -> None:
        """Re-route traffic here and in every other worker, now and after restarts."""
        self.models.set_routing(canary_fraction, shadow)
        routing = StoredRouting(
            canary_fraction=self.models.canary_fraction, shadow=self.models.shadow,
            configured=self._configured(),
        )  # fmt: skip
        message = ControlMessage(
            op="routing", canary_fraction=routing.canary_fraction, shadow=routing.shadow,
            origin=self.origin,
        )  # fmt: skip
        try:
            await self.backends.control.store_routing(routing)
        except Exception as error:
            raise ControlUnavailableError(
                f"routing changed on this worker only; cannot store it: {error}"
            ) from error
        await self._publish(message)

    async def _publish(self, message: ControlMessage) -> None:
        try:
            await self.backends.control.publish(message)
        except Exception as error:  # the change stands here; the caller learns the rest
            raise ControlUnavailableError(
                f"{message.op} done on this worker only; cannot tell the others: {error}"
            ) from error

    async def _listen(self) -> None:
        subscriptions = 0
        try:
            async for message in self.backends.control.listen():
                if message.origin == self.origin:
                    continue
                if message.op == "resync":
                    # changes made before the subscription (at start-up, or while the
                    # connection was lost) are read from the store and the registry
                    subscriptions += 1
                    await self._restore_routing()
                    if subscriptions > 1:
                        await self.refresh()
                elif message.op == "reload":
                    await self.refresh()
                else:
                    fraction = message.canary_fraction
                    self.models.set_routing(
                        self.models.canary_fraction if fraction is None else fraction,
                        message.shadow,
                    )
        except Exception:  # never silently: the workers would drift apart
            _LOG.exception("the control channel listener stopped")
            raise

    async def _restore_routing(self) -> None:
        """The routing the admin API set, unless the configuration changed since."""
        try:
            stored = await self.backends.control.stored_routing()
        except Exception as error:  # Redis down: start with the configured routing
            _LOG.warning("cannot read the stored routing, using the configured one: %s", error)
            return
        if stored is not None and stored.configured == self._configured():
            self.models.set_routing(stored.canary_fraction, stored.shadow)

    def _configured(self) -> tuple[float, bool]:
        return (self.settings.serving.canary_fraction, self.settings.serving.shadow)

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
