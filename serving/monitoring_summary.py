"""``GET /v1/monitoring/summary``: the dashboard's one JSON answer, from three sources.

:class:`MonitoringData` asks the registry (who is champion, and why), then
Delta ``monitoring/metrics`` for that champion's panels (in a thread: reading
Delta blocks), while Prometheus answers alerts and rates. Each source's answer
is cached for a few seconds (:class:`TtlCache`): every open dashboard polls,
and N of them must not mean N Delta reads every few seconds.

>>> import asyncio
>>> cache = TtlCache[str, int](ttl_s=60.0)
>>> calls = []
>>> async def compute() -> int:
...     calls.append(1)
...     return len(calls)
>>> async def twice() -> list[int]:
...     return [await cache.get("k", compute), await cache.get("k", compute)]
>>> asyncio.run(twice())
[1, 1]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from datetime import UTC, datetime
from typing import Final, Generic, TypeVar

from pydantic import BaseModel

from infra.settings import Settings
from serving.monitoring_data import TABLE, MetricsPanels, load_panels
from serving.monitoring_sources import (
    MlflowRegistryReader,
    PrometheusPanel,
    PrometheusReader,
    RegistryPanel,
)

_LOG = logging.getLogger("serving.monitoring_summary")
TTL_S: Final = 5.0
_MAX_KEYS: Final = 32

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values computed at most once per ``ttl_s`` per key; concurrent callers share one."""

    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._values: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._locks: dict[K, asyncio.Lock] = {}

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            held = self._values.get(key)
            if held is not None and self.clock() - held[0] < self.ttl_s:
                return held[1]
            value = await compute()
            self._values[key] = (self.clock(), value)
            self._values.move_to_end(key)
            while len(self._values) > _MAX_KEYS:  # ranges are the caller's choice: bound them
                old, _ = self._values.popitem(last=False)
                self._locks.pop(old, None)
            return value


class Summary(BaseModel):
    """Everything one dashboard refresh draws."""

    generated_at: str
    hours: float
    profile: str
    model: str
    metrics: MetricsPanels
    prometheus: PrometheusPanel
    registry: RegistryPanel


RegistryRead = Callable[[], RegistryPanel]


class MonitoringData:
    """The dashboard's sources for one API; ``registry`` and ``prometheus_url`` for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: RegistryRead | None = None,
        prometheus_url: str | None = None,
        ttl_s: float = TTL_S,
    ) -> None:
        self.settings = settings
        self.registry = registry or MlflowRegistryReader(settings).read
        self.prometheus = PrometheusReader(
            prometheus_url or f"http://{settings.prometheus_address}", settings.profile
        )
        self._registry_cache = TtlCache[str, RegistryPanel](ttl_s)
        self._metrics_cache = TtlCache[tuple[float, int | None], MetricsPanels](ttl_s)
        self._prometheus_cache = TtlCache[float, PrometheusPanel](ttl_s)

    async def summary(self, hours: float) -> Summary:
        prometheus = asyncio.create_task(
            self._prometheus_cache.get(hours, lambda: self.prometheus.read(hours))
        )
        registry = await self._registry_cache.get("registry", self._read_registry)
        metrics = await self._metrics_cache.get(
            (hours, registry.champion), lambda: self._read_metrics(hours, registry.champion)
        )
        return Summary(
            generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            hours=hours,
            profile=self.settings.profile,
            model=self.settings.registered_model_name,
            metrics=metrics,
            prometheus=await prometheus,
            registry=registry,
        )

    async def _read_registry(self) -> RegistryPanel:
        return await asyncio.to_thread(self.registry)

    async def _read_metrics(self, hours: float, champion: int | None) -> MetricsPanels:
        try:
            return await asyncio.to_thread(load_panels, self.settings, hours, champion)
        except Exception as error:  # a table being rewritten, a lake unreachable: say so
            _LOG.warning("cannot read %s: %s", TABLE, error)
            return MetricsPanels(
                available=False,
                table=self.settings.table_uri(TABLE),
                message=f"cannot read {TABLE}: {type(error).__name__}: {error}"[:500],
            )
