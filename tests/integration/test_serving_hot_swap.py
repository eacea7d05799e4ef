"""Hot swap: a new champion promoted while clients send requests without pause.

The registry poller (every 0.3 s here) loads the new version in a worker thread
while requests keep being answered by the old one, then swaps one reference.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from infra.settings import Settings
from serving.app import create_app
from tests.integration.test_serving_api import (
    USERS,
    fresh_profile,
    register_scorer,
    serving,
    write_features,
)
from tests.scorers import PopularityScorer
from training.registry import Registry

pytestmark = pytest.mark.integration

CLIENTS = 3
AFTER_SWAP = 60  # answers from the new champion before the load stops


def test_a_new_champion_is_swapped_in_under_load_without_a_failed_request(
    stack_settings: Settings,
) -> None:
    settings = fresh_profile(stack_settings, "hs")
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"model_poll_s": 0.3})}
    )
    old = register_scorer(settings, PopularityScorer())
    new = register_scorer(settings, PopularityScorer(bias=1.0))
    registry = Registry(settings)
    registry.make_champion(old)
    write_features(settings, USERS[:20], time.time())
    answers: list[int] = []
    failures: list[str] = []

    async def client_loop(client: httpx.AsyncClient, index: int, done: asyncio.Event) -> None:
        n = 0
        while not done.is_set():
            body = {"user_id": USERS[(index + n) % 20], "region": "US-TX", "k": 5}
            try:
                response = await client.post("/v1/recommendations", json=body)
            except httpx.HTTPError as error:
                failures.append(repr(error))
                continue
            if response.status_code != 200:
                failures.append(response.text)
            else:
                answers.append(response.json()["model"]["version"])
            n += 1

    async def promote(done: asyncio.Event) -> None:
        while answers.count(old) < 50:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(registry.make_champion, new)
        deadline = time.monotonic() + 60
        while answers.count(new) < AFTER_SWAP and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        done.set()

    async def main() -> None:
        async with serving(create_app(settings)) as client:
            done = asyncio.Event()
            loops = [client_loop(client, i, done) for i in range(CLIENTS)]
            await asyncio.gather(promote(done), *loops)

    asyncio.run(main())
    assert failures == []
    assert set(answers) == {old, new}
    assert answers[0] == old and answers.count(new) >= AFTER_SWAP
    switched = answers.index(new)
    # requests already routed when the swap happened may finish just after it, no later
    assert answers[switched:].count(old) < CLIENTS
    assert answers[-AFTER_SWAP // 2 :] == [new] * (AFTER_SWAP // 2)
