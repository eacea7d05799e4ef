"""The scorer flow on the real stack: Kafka in and out, Redis features, the MLflow champion.

A small deterministic scorer from this module is registered and made champion;
it ranks by the product's clicks in the last hour (and adds a hundredth of the
user's), so an answer is right only if both views were read from Redis. The
expected ranking is computed here from the catalog, not with the ranking code.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import cluster_main
from redis import Redis

from flows.features.online import write_entities
from flows.features.tiles import EntityTiles
from infra.contracts import DlqHeaders, RejectionReason
from infra.kafka.producer import Producer
from infra.kafka.reader import read_topic
from infra.plantly.catalog import load_catalog
from infra.settings import Settings
from serving.scorer_flow import build_flow
from tests.local_stack import settings_env
from training.contract import Rows, assemble_rows
from training.pyfunc import RecommenderModel
from training.registry import Registry, configure, experiment_name, log_recommender

pytestmark = pytest.mark.integration

CATALOG = load_catalog()
PRODUCTS = sorted(CATALOG)
REGIONS = ("US-FL", "US-CA", "AU-NSW", "GB-ENG")
USERS = [f"u-{i:03d}" for i in range(30)]
PRODUCT_CLICKS = {pid: (i * 37) % 23 for i, pid in enumerate(PRODUCTS)}
USER_CLICKS = {uid: i % 5 for i, uid in enumerate(USERS)}


class ClickScorer:
    """Clicks of the product plus a hundredth of the user's, squashed to [0, 1)."""

    kind = "test-clicks"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def score(self, rows: Rows) -> np.ndarray:
        product = np.asarray(rows["product_clicks_1h"], dtype=np.float64)
        user = np.asarray(rows["user_clicks_1h"], dtype=np.float64)
        signal = (product if self.sign > 0 else 30 - product) + user / 100
        scores: np.ndarray = signal / (signal + 1)
        return scores


def expected(request: dict[str, Any], sign: float = 1.0) -> list[tuple[str, float]]:
    region, user = request["region"], USER_CLICKS[request["user_id"]]
    allowed = [p for p in request["candidates"] if region not in CATALOG[p].invasive_regions]
    ranked = sorted(allowed, key=lambda pid: -sign * PRODUCT_CLICKS[pid])[: request.get("k", 10)]
    signals = [
        (PRODUCT_CLICKS[p] if sign > 0 else 30 - PRODUCT_CLICKS[p]) + user / 100 for p in ranked
    ]
    return [(pid, s / (s + 1)) for pid, s in zip(ranked, signals, strict=True)]


def register_champion(settings: Settings, sign: float) -> int:
    configure(settings)
    mlflow.set_experiment(experiment_name(settings))
    example = pd.DataFrame(
        assemble_rows("u-1", "US-CA", "mobile", {}, [(PRODUCTS[0], {})], CATALOG, as_of=0.0)
    )
    with mlflow.start_run():
        version = log_recommender(
            settings, RecommenderModel(ClickScorer(sign)), input_example=example, delta_versions={}
        )
    Registry(settings).make_champion(version.version)
    return version.version


def write_features(settings: Settings) -> None:
    now = time.time()
    items = []
    for view, clicks in (("user", USER_CLICKS), ("product", PRODUCT_CLICKS)):
        for entity, count in clicks.items():
            tiles = EntityTiles()
            for _ in range(count):
                tiles.add("click", now - 60, None, None)
            items.append((view, entity, tiles))
    client = Redis.from_url(settings.redis_url)
    try:
        write_entities(client, settings, items)
    finally:
        client.close()


def requests(count: int, first: int = 0, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed + first)
    out = []
    for i in range(first, first + count):
        request: dict[str, Any] = {
            "request_id": f"r-{i:05d}",
            "user_id": rng.choice(USERS),
            "region": rng.choice(REGIONS),
            "candidates": rng.sample(PRODUCTS, rng.randint(5, 80)),
        }
        if i % 2:
            request["k"] = rng.randint(1, 25)
        out.append(request)
    return out


BAD = {
    b"[1, 2]": RejectionReason.MALFORMED_JSON,
    b'{"request_id": "r-bad", "user_id": "u-000", "region": "US-FL", "candidates": []}': (
        RejectionReason.INVALID_VALUE
    ),
    b'{"request_id": "r-bad", "user_id": "u-000", "region": "US-FL",'
    b' "candidates": ["plastic-fern-4in"]}': RejectionReason.UNKNOWN_PRODUCT,
}


def produce(settings: Settings, payloads: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(settings)
    topic = settings.topic(settings.topics.score_requests)
    for key, value in payloads:
        producer.send(topic, value, key)
    producer.close()


def answers(settings: Settings) -> dict[str, dict[str, Any]]:
    records = read_topic(settings, settings.topic(settings.topics.scores))
    out = {}
    for record in records:
        body = json.loads(record.value)
        assert record.key == body["user_id"].encode()
        out[body["request_id"]] = body
    return out


def assert_answered(
    got: dict[str, dict[str, Any]], sent: list[dict[str, Any]], sign: float
) -> None:
    for request in sent:
        body = got[request["request_id"]]
        items = [(item["product_id"], item["score"]) for item in body["items"]]
        want = expected(request, sign)
        assert [pid for pid, _ in items] == [pid for pid, _ in want]
        assert np.allclose([s for _, s in items], [s for _, s in want])
        assert not any(request["region"] in CATALOG[pid].invasive_regions for pid, _ in items)


def test_two_workers_answer_every_request_with_the_champion(profile_settings: Settings) -> None:
    settings = profile_settings
    version = register_champion(settings, sign=1.0)
    write_features(settings)
    sent = requests(400)
    payloads = [(r["user_id"].encode(), json.dumps(r).encode()) for r in sent]
    payloads += [(b"bad", raw) for raw in BAD]
    produce(settings, payloads)

    cluster_main(build_flow(settings, tail=False), [], 0, worker_count_per_proc=2)

    got = answers(settings)
    assert len(got) == len(sent)
    assert_answered(got, sent, sign=1.0)
    model = {"name": settings.registered_model_name, "version": version, "alias": "champion"}
    assert all(body["model"] == model for body in got.values())
    # some answers lost candidates to the compliance filter, which is what is checked above
    assert sum(len(expected(r)) < min(len(r["candidates"]), r.get("k", 10)) for r in sent) > 10

    dead = read_topic(settings, settings.topic(settings.topics.dlq))
    reasons = {r.value: DlqHeaders.from_kafka(r.headers) for r in dead}
    assert {value: h.reason for value, h in reasons.items()} == BAD
    topic = settings.topic(settings.topics.score_requests)
    assert all(h.source_topic == topic and h.source_offset >= 0 for h in reasons.values())


def _wait_for(settings: Settings, ids: set[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = answers(settings)
        if ids <= set(got):
            return got
        assert time.monotonic() < deadline, f"{len(ids - set(got))} requests unanswered"
        time.sleep(0.2)


@pytest.fixture
def scorer_process(profile_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, **settings_env(profile_settings)}
    env |= {"TRIBUTARY_METRICS_PORT": "0", "TRIBUTARY_SERVING__MODEL_POLL_S": "0.5"}
    command = [sys.executable, "-m", "infra.cli", "run", "scorer", "--no-recovery"]
    child = subprocess.Popen(command, env=env)
    yield child
    child.terminate()
    child.wait(30)


def test_tributary_run_scorer_follows_a_moved_champion(
    profile_settings: Settings, scorer_process: subprocess.Popen[bytes]
) -> None:
    settings = profile_settings
    register_champion(settings, sign=1.0)
    write_features(settings)
    first = requests(50)
    produce(settings, [(r["user_id"].encode(), json.dumps(r).encode()) for r in first])
    got = _wait_for(settings, {r["request_id"] for r in first})
    assert_answered(got, first, sign=1.0)

    second_version = register_champion(settings, sign=-1.0)
    time.sleep(1.0)  # two poll intervals: the next batch must see the new alias
    later = requests(50, first=50)
    produce(settings, [(r["user_id"].encode(), json.dumps(r).encode()) for r in later])
    got = _wait_for(settings, {r["request_id"] for r in later})
    assert scorer_process.poll() is None
    assert_answered(got, later, sign=-1.0)
    assert {got[r["request_id"]]["model"]["version"] for r in later} == {second_version}
