"""The workers' control channel on real Redis: delivery, stored routing, a lost connection."""

from __future__ import annotations

import asyncio

import pytest
from redis import Redis

from infra.settings import Settings
from serving.control import ControlMessage, RedisControl, StoredRouting
from tests.integration.test_serving_api import fresh_profile

pytestmark = pytest.mark.integration


async def _next(messages: asyncio.Queue[ControlMessage]) -> ControlMessage:
    return await asyncio.wait_for(messages.get(), timeout=10.0)


def test_messages_reach_listeners_and_survive_a_killed_connection(
    stack_settings: Settings,
) -> None:
    settings = fresh_profile(stack_settings, "ctl")

    async def story() -> None:
        sender, receiver = RedisControl(settings), RedisControl(settings)
        messages: asyncio.Queue[ControlMessage] = asyncio.Queue()

        async def collect() -> None:
            async for message in receiver.listen():
                messages.put_nowait(message)

        listening = asyncio.create_task(collect())
        try:
            assert (await _next(messages)).op == "resync"  # subscribed
            await sender.publish(ControlMessage(op="reload", origin="a"))
            assert await _next(messages) == ControlMessage(op="reload", origin="a")
            # Redis drops every subscriber: the listener says so and subscribes again
            admin = Redis.from_url(settings.redis_url)
            assert admin.client_kill_filter(_type="pubsub") >= 1
            admin.close()
            assert (await _next(messages)).op == "resync"
            routing = ControlMessage(op="routing", canary_fraction=0.2, origin="a")
            await sender.publish(routing)
            assert await _next(messages) == routing
            # another profile's workers hear nothing of it
            other = RedisControl(fresh_profile(stack_settings, "ctl"))
            await other.publish(ControlMessage(op="reload", origin="b"))
            await other.close()
            await asyncio.sleep(0.3)
            assert messages.empty()
        finally:
            listening.cancel()
            await sender.close()
            await receiver.close()

    asyncio.run(story())


def test_the_stored_routing_round_trips_and_a_damaged_one_reads_as_none(
    stack_settings: Settings,
) -> None:
    settings = fresh_profile(stack_settings, "ctl")

    async def story() -> None:
        control = RedisControl(settings)
        try:
            assert await control.stored_routing() is None
            routing = StoredRouting(canary_fraction=0.3, shadow=True, configured=(0.0, False))
            await control.store_routing(routing)
            assert await control.stored_routing() == routing
            await control.redis.set(control.routing_key, b"{not json")
            assert await control.stored_routing() is None
        finally:
            await control.close()

    asyncio.run(story())
