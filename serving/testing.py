"""In-memory stand-ins for what the API talks to, for unit tests and doctests.

Like ``bytewax.testing``: :class:`FakeSource` is a registry of scorers,
:class:`FakeRedis` answers ``MGET`` from a dict, :class:`ListSink` keeps the
prediction log in a list, :class:`ControlHub` carries control messages between
apps standing in for the workers of one API. :func:`fake_backends` bundles them
for ``create_app(settings, backends=...)``. Integration tests use the real ones.

>>> import asyncio
>>> from flows.features.tiles import EntityTiles
>>> redis = FakeRedis()
>>> tiles = EntityTiles()
>>> tiles.add("impression", 100.0)
>>> redis.put(Settings(), "user", "u-1", tiles)
>>> values = asyncio.run(redis.mget(["dev:fv:user:u-1", "dev:fv:user:u-2"]))
>>> [v is None for v in values]
[False, True]
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import numpy as np

from flows.features.codec import encode
from flows.features.online import feature_key
from flows.features.tiles import EntityTiles
from infra.errors import NotFoundError
from infra.settings import Settings
from serving.control import ControlMessage, StoredRouting
from serving.state import Backends
from training.contract import Rows
from training.pyfunc import RecommenderModel
from training.registry import CHALLENGER, CHAMPION, RegisteredVersion


class OffsetScorer:
    """``offset`` plus a price term: the same ranking for every offset, distinct scores.

    >>> from training.contract import RowBatch
    >>> rows = RowBatch({"price": [10.0, 50.0]})
    >>> OffsetScorer(0.2).score(rows).round(3).tolist()
    [0.283, 0.45]
    """

    kind = "offset"

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def score(self, rows: Rows) -> np.ndarray:
        price = np.asarray(rows["price"], dtype=np.float64)
        return np.asarray(self.offset + 0.5 * price / (price + 50.0))


class FakeSource:
    """A registry of versions (``{version: offset}``) with movable aliases."""

    def __init__(
        self,
        versions: Mapping[int, float],
        *,
        champion: int | None = None,
        challenger: int | None = None,
        name: str = "plant-recommender",
    ) -> None:
        self.versions = dict(versions)
        self.name = name
        self.aliases: dict[str, int] = {}
        if champion is not None:
            self.aliases[CHAMPION] = champion
        if challenger is not None:
            self.aliases[CHALLENGER] = challenger
        self.loads: list[int] = []
        self.failing = False  # set to make the registry look down

    def alias(self, alias: str) -> RegisteredVersion | None:
        if self.failing:
            raise ConnectionError("registry unreachable")
        number = self.aliases.get(alias)
        return None if number is None else RegisteredVersion(self.name, number, "run", {})

    def load(self, number: int) -> RecommenderModel:
        if number not in self.versions:
            raise NotFoundError(f"{self.name} has no version {number}")
        self.loads.append(number)
        return RecommenderModel(OffsetScorer(self.versions[number]))


class FakeRedis:
    """The two calls the API makes of ``redis.asyncio``: MGET and PING."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.mgets = 0
        self.down = False

    def put(self, settings: Settings, view: str, entity_id: str, tiles: EntityTiles) -> None:
        self.values[feature_key(settings, view, entity_id)] = encode(tiles)

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.mgets += 1
        return [self.values.get(key) for key in keys]

    async def ping(self) -> bool:
        if self.down:
            raise ConnectionError("redis is down")
        return True

    async def aclose(self) -> None:
        return None


class ListSink:
    """The prediction log as a list of ``(key, decoded JSON)``.

    Clearing ``hold`` makes sends block, like a stuck broker; ``sending`` is set
    once a send has started.
    """

    def __init__(self) -> None:
        self.records: list[tuple[bytes, dict[str, Any]]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.sending = threading.Event()
        self.closed = False

    def send(self, key: bytes, value: bytes) -> None:
        self.sending.set()
        self.hold.wait()
        self.records.append((key, json.loads(value)))

    def poll(self) -> None:
        return None

    def close(self, timeout: float) -> None:
        self.closed = True


class ControlHub:
    """The workers' control channel within one process: what one publishes, all receive.

    Each app built over the hub (one per simulated worker) gets a
    :class:`LocalControl`; the stored routing is shared, as Redis would share it.
    Apps may run on different threads and event loops (one ``TestClient`` each).
    """

    def __init__(self) -> None:
        self.listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[ControlMessage]]] = []
        self.routing: StoredRouting | None = None
        self.published: list[ControlMessage] = []

    def channel(self) -> LocalControl:
        return LocalControl(self)


class LocalControl:
    """One worker's end of a :class:`ControlHub`."""

    def __init__(self, hub: ControlHub) -> None:
        self.hub = hub

    async def publish(self, message: ControlMessage) -> None:
        self.hub.published.append(message)
        for loop, queue in list(self.hub.listeners):
            loop.call_soon_threadsafe(queue.put_nowait, message)

    async def listen(self) -> AsyncIterator[ControlMessage]:
        listener = (asyncio.get_running_loop(), asyncio.Queue[ControlMessage]())
        self.hub.listeners.append(listener)
        try:
            yield ControlMessage(op="resync", origin="")
            while True:
                yield await listener[1].get()
        finally:
            self.hub.listeners.remove(listener)

    async def store_routing(self, routing: StoredRouting) -> None:
        self.hub.routing = routing

    async def stored_routing(self) -> StoredRouting | None:
        return self.hub.routing

    async def close(self) -> None:
        return None


def fake_backends(
    source: FakeSource,
    redis: FakeRedis | None = None,
    sink: ListSink | None = None,
    broker_problem: str | None = None,
    hub: ControlHub | None = None,
) -> Callable[[Settings], Backends]:
    """A ``backends`` factory for :func:`serving.app.create_app` over these fakes."""

    def build(settings: Settings) -> Backends:
        return Backends(
            redis=redis or FakeRedis(),  # type: ignore[arg-type]
            models=source,
            sink=sink or ListSink(),
            broker_check=lambda: broker_problem,
            control=(hub or ControlHub()).channel(),
        )

    return build
