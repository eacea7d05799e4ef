"""The prediction API on the real stack: Redis features, MLflow models, Kafka prediction log.

The app runs in process (its real lifespan, behind ``httpx.ASGITransport``);
everything it talks to is the session's Tansu, redis-server and MLflow. Two
deterministic versions are registered once for the module: v1 champion, v2
challenger (same ranking, scores shifted up), so which one answered is visible.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from redis import Redis

from flows.features.online import write_entities
from flows.features.tiles import EntityTiles
from infra.kafka.reader import read_topic
from infra.plantly.catalog import load_catalog
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from serving.app import create_app
from serving.schemas import RecommendationRequest
from tests.scorers import PopularityScorer
from training.contract import assemble_rows
from training.pyfunc import RecommenderModel
from training.registry import CHALLENGER, Registry, configure, experiment_name, log_recommender

pytestmark = pytest.mark.integration

CATALOG = load_catalog()
REGIONS = sorted({region for plant in CATALOG.values() for region in plant.invasive_regions})
USERS = [f"u-{n:04d}" for n in range(200)]
ADMIN_KEY = "admin-" + "k" * 26
KEYS = f"{ADMIN_KEY}:admin"


@dataclass(frozen=True)
class Registered:
    settings: Settings
    champion: int
    challenger: int


def register_scorer(settings: Settings, scorer: PopularityScorer) -> int:
    """Log ``scorer`` as a new version of the settings' registered model."""
    configure(settings)
    mlflow.set_experiment(experiment_name(settings))
    pids = list(CATALOG)[:3]
    example = pd.DataFrame(
        assemble_rows("u-1", "US-CA", "mobile", {}, [(p, {}) for p in pids], CATALOG, 0.0)
    )
    with mlflow.start_run():
        registered = log_recommender(
            settings, RecommenderModel(scorer), input_example=example, delta_versions={}
        )
    return registered.version


def fresh_profile(stack_settings: Settings, prefix: str) -> Settings:
    """A profile of its own: topics created, Redis keys and registered model empty."""
    profile = f"{prefix}{random.SystemRandom().randrange(10**8)}"
    settings = stack_settings.model_copy(update={"profile": profile, "api_keys": SecretStr(KEYS)})
    ensure_topics(settings.kafka_bootstrap, settings.all_topics(), settings.topic_partitions)
    return settings


def write_features(settings: Settings, users: list[str], now: float) -> None:
    """Some recent activity for the users and every product, in the online store."""
    rng = random.Random(5)
    products = {pid: EntityTiles() for pid in CATALOG}
    shoppers = {uid: EntityTiles() for uid in users}
    pids = list(CATALOG)
    for tiles in shoppers.values():
        for _ in range(20):
            pid, ts = rng.choice(pids), now - rng.uniform(0, 3 * 86400)
            kind = rng.choice(["impression", "impression", "click", "add_to_cart"])
            tiles.add(kind, ts)
            products[pid].add(kind, ts)
    items = [("user", uid, t) for uid, t in shoppers.items()]
    items += [("product", pid, t) for pid, t in products.items()]
    client = Redis.from_url(settings.redis_url)
    try:
        write_entities(client, settings, items)
    finally:
        client.close()


@pytest.fixture(scope="module")
def registered(stack_settings: Settings) -> Registered:
    settings = fresh_profile(stack_settings, "sv")
    champion = register_scorer(settings, PopularityScorer())
    challenger = register_scorer(settings, PopularityScorer(bias=1.0))
    registry = Registry(settings)
    registry.make_champion(champion)
    registry.set_alias(CHALLENGER, challenger)
    write_features(settings, USERS, time.time())
    return Registered(settings, champion, challenger)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client talking to it in process."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"X-API-Key": ADMIN_KEY}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            yield client


def run(settings: Settings, body: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with serving(create_app(settings)) as client:
            return await body(client)

    return asyncio.run(main())


def with_routing(registered: Registered, fraction: float, shadow: bool) -> Settings:
    serving_settings = registered.settings.serving.model_copy(
        update={"canary_fraction": fraction, "shadow": shadow}
    )
    return registered.settings.model_copy(update={"serving": serving_settings})


def logged(settings: Settings) -> list[dict[str, Any]]:
    topic = settings.topic(settings.topics.predictions)
    return [json.loads(record.value) for record in read_topic(settings, topic)]


def test_routes_answer_from_the_real_stack(registered: Registered) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        response = await client.post(
            "/v1/recommendations", json={"user_id": USERS[0], "region": "US-CA", "k": 5}
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"]["version"] == registered.champion
        assert answer["model"]["alias"] == "champion" and len(answer["items"]) == 5
        assert any(age is not None for age in answer["feature_ages"]["user"].values())
        features = await client.get(f"/v1/features/user/{USERS[0]}")
        assert features.status_code == 200 and features.json()["features"]["last_event_ts"]
        product = await client.get(f"/v1/features/product/{answer['items'][0]['product_id']}")
        assert product.status_code == 200, product.text
        pinned = await client.post(
            f"/v1/predict?version={registered.challenger}",
            json={
                "user_id": USERS[1],
                "product_id": answer["items"][0]["product_id"],
                "region": "US-CA",
                "device": "desktop",
            },
        )
        assert pinned.status_code == 200 and pinned.json()["model"]["alias"] is None
        assert pinned.json()["score"] > answer["items"][0]["score"]  # v2 scores higher

    run(registered.settings, body)


def test_every_request_id_is_logged_exactly_once(registered: Registered) -> None:
    settings = with_routing(registered, 0.3, shadow=True)

    async def body(client: httpx.AsyncClient) -> list[str]:
        ids = []
        for n in range(150):
            response = await client.post(
                "/v1/recommendations",
                json={
                    "user_id": USERS[n % len(USERS)],
                    "region": REGIONS[n % len(REGIONS)],
                    "candidates": random.Random(n).sample(list(CATALOG), 30),
                    "k": 5,
                },
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])
        return ids

    ids = run(settings, body)  # the lifespan's end flushes the log
    records = [r for r in logged(settings) if r["request_id"] in set(ids)]
    assert Counter(r["request_id"] for r in records) == Counter(ids)
    answered = Counter(r["model"]["alias"] for r in records)
    assert answered["challenger"] > 0 and answered["champion"] > 0
    for record in records:
        assert record["shadow"] is not None, record["request_id"]
        assert record["shadow"]["model"]["alias"] != record["model"]["alias"]
        assert len(record["shadow"]["scores"]) == len(record["candidates"])
        assert len(record["features"]["user_id"]) == len(record["candidates"])
        assert "email" not in json.dumps(record)


def answer_all(settings: Settings, requests: list[RecommendationRequest]) -> list[Any]:
    """Every request through the app's own service (no HTTP client in the way), 16 at a time."""

    async def main() -> list[Any]:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            service = app.state.serving.service
            out: list[Any] = []
            for at in range(0, len(requests), 16):
                batch = requests[at : at + 16]
                out += await asyncio.gather(*(service.recommendations(r) for r in batch))
            return out

    return asyncio.run(main())


def test_canary_fraction_holds_and_shadow_never_changes_answers(registered: Registered) -> None:
    n, fraction = 2000, 0.2
    pids = list(CATALOG)
    requests = [
        RecommendationRequest(
            user_id=USERS[i % len(USERS)], region="US-NY", k=5,
            candidates=random.Random(i).sample(pids, 10),
        )
        for i in range(n)
    ]  # fmt: skip
    canary = answer_all(with_routing(registered, fraction, shadow=True), requests)
    by_challenger = sum(a.model.alias == CHALLENGER for a in canary)
    assert abs(by_challenger - n * fraction) <= 4 * math.sqrt(n * fraction * (1 - fraction))
    plain = answer_all(with_routing(registered, 0.0, shadow=False), requests[:500])
    for with_shadow, without in zip(canary, plain, strict=False):
        if with_shadow.model.alias == "champion":
            assert with_shadow.items == without.items


def test_no_plant_is_ever_offered_where_it_is_invasive(registered: Registered) -> None:
    rng = random.Random(42)
    pids = list(CATALOG)
    invasive = {
        r: {p.product_id for p in CATALOG.values() if r in p.invasive_regions} for r in REGIONS
    }
    requests = []
    for _ in range(10_000):
        region = rng.choice(REGIONS)
        # half of the candidates are banned in the region, so the filter has work
        banned = rng.sample(sorted(invasive[region]), min(10, len(invasive[region])))
        candidates = banned + rng.sample(pids, 10)
        requests.append(
            RecommendationRequest(
                user_id=rng.choice(USERS), region=region, candidates=candidates,
                k=len(candidates),
            )
        )  # fmt: skip
    answers = answer_all(registered.settings, requests)
    offered = 0
    for request, answer in zip(requests, answers, strict=True):
        returned = {item.product_id for item in answer.items}
        assert not returned & invasive[request.region], request.region
        offered += len(returned)
    assert offered > 50_000
