"""Changes every worker of one API must make together: reload the aliases, re-route traffic.

``tributary serve --workers N`` runs N processes behind one port; an admin
request, or MLflow's webhook delivery, reaches only one of them. That worker
applies the change at once and publishes a :class:`ControlMessage` on the
profile's Redis channel ``<prefix>serving:control``; every other worker
listens there and applies it too. The routing (canary fraction, shadow) set
through the admin API is also stored under ``<prefix>serving:routing``, so a
worker that starts later (a restart, a crashed worker replaced) routes like
the others — until the configuration itself changes: the stored routing
remembers the configured values it overrode and is ignored once they differ.

>>> message = ControlMessage(op="routing", canary_fraction=0.1, shadow=True, origin="a")
>>> ControlMessage.model_validate_json(message.model_dump_json()) == message
True
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from infra.settings import Settings

_LOG = logging.getLogger("serving.control")
RETRY_S: Final = 1.0


class ControlMessage(BaseModel):
    """One change for every worker; ``origin`` names the worker that made it.

    ``resync`` is the channel's own word to its listener, never published: the
    subscription is (again) in place, and what was said before it may be missed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    op: Literal["reload", "routing", "resync"]
    canary_fraction: float | None = Field(None, ge=0.0, le=1.0)
    shadow: bool | None = None
    origin: str


class StoredRouting(BaseModel):
    """The routing the admin API set, and the configured routing it replaced."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    canary_fraction: float = Field(ge=0.0, le=1.0)
    shadow: bool
    configured: tuple[float, bool]


def worker_id() -> str:
    """This process, told apart from the API's other workers (and from a restarted one)."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ControlChannel(Protocol):
    """Where workers of one API tell each other about changes: Redis, or a hub in tests."""

    async def publish(self, message: ControlMessage) -> None: ...

    def listen(self) -> AsyncIterator[ControlMessage]: ...

    async def store_routing(self, routing: StoredRouting) -> None: ...

    async def stored_routing(self) -> StoredRouting | None: ...

    async def close(self) -> None: ...


class RedisControl:
    """Redis pub/sub for the messages, one key for the stored routing.

    A client of its own: the feature reads' client gives up on a read after two
    seconds, and a subscription waits on its read for as long as nothing happens.
    """

    def __init__(self, settings: Settings) -> None:
        self.redis = AsyncRedis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, health_check_interval=30
        )
        self.channel = f"{settings.redis_key_prefix}serving:control"
        self.routing_key = f"{settings.redis_key_prefix}serving:routing"

    async def publish(self, message: ControlMessage) -> None:
        await self.redis.publish(self.channel, message.model_dump_json())

    async def listen(self) -> AsyncIterator[ControlMessage]:
        """Messages as they come; reconnects after a lost connection (and says so)."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                yield ControlMessage(op="resync", origin="")
                async for raw in pubsub.listen():
                    message = _parse(raw.get("data"))
                    if message is not None:
                        yield message
            except (RedisError, OSError) as error:
                _LOG.warning("control channel lost (%s); resubscribing", error)
                await asyncio.sleep(RETRY_S)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def store_routing(self, routing: StoredRouting) -> None:
        await self.redis.set(self.routing_key, routing.model_dump_json())

    async def stored_routing(self) -> StoredRouting | None:
        raw = await self.redis.get(self.routing_key)
        if raw is None:
            return None
        try:
            return StoredRouting.model_validate_json(raw)
        except ValidationError:
            _LOG.warning("ignoring a damaged stored routing at %s", self.routing_key)
            return None

    async def close(self) -> None:
        await self.redis.aclose()


def _parse(data: object) -> ControlMessage | None:
    if not isinstance(data, bytes | str):
        return None
    try:
        return ControlMessage.model_validate_json(data)
    except ValidationError:
        _LOG.warning("ignoring a malformed control message: %.200r", data)
        return None
