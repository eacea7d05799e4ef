"""A real history served by the real API, for the parity test and benchmark.

:func:`land_history` simulates plantly.shop traffic into Kafka and runs the
ingest and feature flows to the topics' end (bronze Delta and Redis);
:func:`register_champion` makes a small deterministic model the champion; and
:func:`serve` answers requests with the API in process (its real lifespan,
Redis, MLflow and Kafka prediction log), so ``ml.predictions`` holds records
as production writes them. Every event is ingested and featurised before any
request is made, so no request can see feature lag.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import httpx
import mlflow
import pandas as pd
import pyarrow.compute as pc
from pydantic import SecretStr

from flows.runner import RunPlan, run_process
from infra.contracts.tables import TableName
from infra.lake import open_table
from infra.plantly.catalog import ensure_catalog_table, load_catalog
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from serving.app import create_app
from tests.scorers import PopularityScorer
from training.contract import assemble_rows
from training.pyfunc import RecommenderModel
from training.registry import Registry, configure, experiment_name, log_recommender

ADMIN_KEY = "parity-admin-" + "k" * 20
CATALOG = load_catalog()
REGIONS = sorted({region for plant in CATALOG.values() for region in plant.invasive_regions})
DEVICES = ("mobile", "desktop", "tablet", None)


def parity_profile(stack: Settings, profile: str) -> Settings:
    """``stack`` under a profile of its own, with an API key and no flow metrics ports."""
    settings = stack.model_copy(
        update={"profile": profile, "api_keys": SecretStr(f"{ADMIN_KEY}:admin"), "metrics_port": 0}
    )
    ensure_topics(settings.kafka_bootstrap, settings.all_topics(), settings.topic_partitions)
    ensure_catalog_table(settings)
    return settings


def land_history(settings: Settings, config: SimulationConfig) -> None:
    """Simulated traffic, ingested into bronze and folded into Redis, to the topics' end."""
    send_traffic(ShopSimulator(config), [KafkaSink(settings)])
    for flow in ("ingest", "features"):
        run_process(settings, RunPlan(flow=flow, recovery=False, tail=False))


def busiest_users(settings: Settings, count: int) -> list[str]:
    """The users with the most events in bronze, busiest first."""
    table = open_table(settings, TableName.BRONZE_EVENTS).to_pyarrow_table(columns=["user_id"])
    counts = pc.value_counts(table["user_id"]).to_pylist()
    counts.sort(key=lambda item: (-item["counts"], item["values"]))
    return [item["values"] for item in counts[:count]]


def register_champion(settings: Settings) -> int:
    """A deterministic model as the champion of the settings' registered model."""
    configure(settings)
    mlflow.set_experiment(experiment_name(settings))
    pids = list(CATALOG)[:3]
    example = pd.DataFrame(
        assemble_rows("u-1", "US-CA", "mobile", {}, [(p, {}) for p in pids], CATALOG, 0.0)
    )
    with mlflow.start_run():
        registered = log_recommender(
            settings, RecommenderModel(PopularityScorer()), input_example=example,
            delta_versions={},
        )  # fmt: skip
    Registry(settings).make_champion(registered.version)
    return registered.version


def requests_for(
    users: Sequence[str], count: int, *, seed: int = 0, catalog_every: int = 4
) -> list[dict[str, Any]]:
    """Recommendation requests in mixed regions and devices.

    Every ``catalog_every``-th ranks the whole catalog (the API's default), the
    others 40 random candidates.
    """
    rng = random.Random(seed)
    bodies = []
    for n in range(count):
        body: dict[str, Any] = {"user_id": users[n % len(users)], "region": rng.choice(REGIONS)}
        device = rng.choice(DEVICES)
        if device is not None:
            body["device"] = device
        if n % catalog_every:
            body["candidates"] = rng.sample(list(CATALOG), 40)
        bodies.append(body)
    return bodies


def serve(settings: Settings, bodies: Sequence[dict[str, Any]]) -> list[str]:
    """Answer ``bodies`` with the API in process; the request ids, once the log is flushed."""

    async def main() -> list[str]:
        app = create_app(settings)
        ids = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://api", headers={"X-API-Key": ADMIN_KEY}
            ) as client:
                for body in bodies:
                    response = await client.post("/v1/recommendations", json=body)
                    response.raise_for_status()
                    ids.append(response.json()["request_id"])
        return ids  # the lifespan's end flushed the prediction log

    return asyncio.run(main())
