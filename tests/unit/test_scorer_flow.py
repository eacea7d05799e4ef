"""The scorer dataflow under one and two workers, with Kafka, Redis and MLflow stand-ins.

Kafka partitions are lists of :class:`KafkaBatch` items, features come from a
dict, and the registry is a list of versions whose champion a test moves. The
expected answers are computed here from the catalog, not with the ranking code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, cluster_main, run_main

from flows.features.codec import encode
from flows.features.online import feature_key
from flows.features.tiles import EntityTiles
from flows.kafka_source import KafkaBatch
from flows.sinks.dlq import DlqMessage
from infra.contracts import DlqHeaders, Rejection, RejectionReason
from infra.plantly.catalog import load_catalog
from infra.settings import Settings
from serving.models import ModelStore, NoModelError
from serving.scorer_flow import ChampionPoller, RedisFeatureReader, ScoreOut, build_flow
from serving.scoring_requests import ScoreRequest, parse_request
from training.contract import Rows
from training.pyfunc import RecommenderModel
from training.ranking import Features
from training.registry import CHAMPION, RegisteredVersion

TOPIC = "ml.score-requests"
PARTITIONS = 2
NOW = 1_795_000_000.0
REGIONS = ("US-FL", "US-CA", "AU-NSW", "GB-ENG")
CATALOG = load_catalog()
PRODUCTS = sorted(CATALOG)
# every product's clicks in the last hour: the fake model ranks by them
CLICKS = {pid: (i * 37) % 101 for i, pid in enumerate(PRODUCTS)}


class ClickScorer:
    """Ranks by the product's clicks in the last hour; ``sign=-1`` ranks the other way."""

    kind = "test-clicks"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def score(self, rows: Rows) -> np.ndarray:
        clicks = np.asarray(rows["product_clicks_1h"], dtype=np.float64)
        scores: np.ndarray = 0.5 + self.sign * clicks / (2 * (clicks + 1))
        return scores


@dataclass
class FakeModels:
    """A registry stand-in: each champion lookup takes the next of ``champions``, the
    last one repeating; there is never a challenger."""

    champions: list[int | None]
    loads: list[int] = field(default_factory=list)
    asked: int = 0

    def alias(self, alias: str) -> RegisteredVersion | None:
        if alias != CHAMPION:
            return None
        number = self.champions[min(self.asked, len(self.champions) - 1)]
        self.asked += 1
        return None if number is None else RegisteredVersion("plant-recommender", number, "", {})

    def load(self, number: int) -> RecommenderModel:
        self.loads.append(number)
        return RecommenderModel(ClickScorer(1.0 if number % 2 else -1.0))


@dataclass
class FakeFeatures:
    """Product clicks from :data:`CLICKS`; records every read."""

    reads: list[tuple[list[str], list[str]]] = field(default_factory=list)

    def read(
        self, user_ids: Sequence[str], product_ids: Sequence[str], as_of: float
    ) -> tuple[dict[str, Features], dict[str, Features]]:
        self.reads.append((list(user_ids), list(product_ids)))
        users: dict[str, Features] = {uid: {} for uid in user_ids}
        return users, {pid: {"clicks_1h": CLICKS[pid]} for pid in product_ids}


class _Partition(StatefulSourcePartition[KafkaBatch, int]):
    def __init__(self, batches: list[KafkaBatch], start: int) -> None:
        self.batches, self.position = batches, start

    def next_batch(self) -> list[KafkaBatch]:
        if self.position >= len(self.batches):
            raise StopIteration()
        self.position += 1
        return [self.batches[self.position - 1]]

    def snapshot(self) -> int:
        return self.position


class BatchListSource(FixedPartitionedSource[KafkaBatch, int]):
    def __init__(self, parts: dict[str, list[KafkaBatch]]) -> None:
        self.parts = parts

    def list_parts(self) -> list[str]:
        return sorted(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self.parts[for_part], resume_state or 0)


class Request(TypedDict):
    request_id: str
    user_id: str
    region: str
    candidates: list[str]
    k: NotRequired[int]
    device: NotRequired[str]


def good_requests(count: int, seed: int = 3) -> list[Request]:
    rng = random.Random(seed)
    requests: list[Request] = []
    for i in range(count):
        request: Request = {
            "request_id": f"r-{i:05d}",
            "user_id": f"u-{rng.randrange(40):03d}",
            "region": rng.choice(REGIONS),
            "candidates": rng.sample(PRODUCTS, rng.randint(1, 60)),
        }
        if i % 3:
            request["k"] = rng.randint(1, 20)
        if i % 4 == 0:
            request["device"] = "desktop"
        requests.append(request)
    return requests


BAD: dict[bytes, RejectionReason] = {
    b"{not json": RejectionReason.MALFORMED_JSON,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL"}': RejectionReason.MISSING_FIELD,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL",'
    b' "candidates": ["ficus-lyrata-3gal"], "coupon": 1}': RejectionReason.UNKNOWN_FIELD,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL",'
    b' "candidates": ["ficus-lyrata-3gal"], "k": "3"}': RejectionReason.WRONG_TYPE,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "Florida",'
    b' "candidates": ["ficus-lyrata-3gal"]}': RejectionReason.INVALID_VALUE,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL", "device": "phone",'
    b' "candidates": ["ficus-lyrata-3gal"]}': RejectionReason.INVALID_VALUE,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL",'
    b' "candidates": []}': RejectionReason.INVALID_VALUE,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL", "k": 0,'
    b' "candidates": ["ficus-lyrata-3gal"]}': RejectionReason.INVALID_VALUE,
    b'{"request_id": "r-x", "user_id": "u-1", "region": "US-FL",'
    b' "candidates": ["plastic-fern-4in"]}': RejectionReason.UNKNOWN_PRODUCT,
    b'{"request_id": "' + b"r" * 70_000 + b'"}': RejectionReason.OVERSIZED,
}


def partitions(payloads: list[bytes], batch: int = 25) -> dict[str, list[KafkaBatch]]:
    parts: dict[int, list[KafkaBatch]] = {p: [] for p in range(PARTITIONS)}
    for index, raw in enumerate(payloads):
        partition = index % PARTITIONS
        batches = parts[partition]
        if not batches or len(batches[-1]) == batch:
            batches.append(KafkaBatch(TOPIC, partition))
        last = batches[-1]
        last.offsets.append(index // PARTITIONS)
        last.keys.append(f"k{index}".encode())
        last.values.append(raw)
        last.timestamps.append(0.0)
    return {f"{p}-{TOPIC}": parts[p] for p in parts}


def expected_items(request: Request, sign: float = 1.0) -> list[str]:
    """The allowed candidates by clicks (highest first, then candidate order), top k."""
    region = request["region"]
    allowed = [p for p in request["candidates"] if region not in CATALOG[p].invasive_regions]
    ranked = sorted(allowed, key=lambda pid: -sign * CLICKS[pid])
    return ranked[: request.get("k", 10)]


@dataclass
class Run:
    scores: list[ScoreOut]
    dlq: list[DlqMessage]
    models: FakeModels
    features: FakeFeatures
    batches: int


def prepare(
    payloads: list[bytes], champions: Sequence[int | None] = (1,), poll_s: float = 10
) -> tuple[Dataflow, Run]:
    settings = Settings(serving={"model_poll_s": poll_s})
    parts = partitions(payloads)
    out = Run([], [], FakeModels(list(champions)), FakeFeatures(), sum(map(len, parts.values())))
    ticks = iter(range(10**6))
    flow = build_flow(
        settings, catalog=CATALOG, models=out.models, features=out.features,
        source=BatchListSource(parts), scores_sink=TestingSink(out.scores),
        dlq_sink=TestingSink(out.dlq), clock=lambda: NOW, poll_clock=lambda: float(next(ticks)),
    )  # fmt: skip
    return flow, out


def run(
    payloads: list[bytes],
    workers: int = 1,
    champions: Sequence[int | None] = (1,),
    poll_s: float = 10,
) -> Run:
    flow, out = prepare(payloads, champions, poll_s)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def answers(scores: list[ScoreOut]) -> dict[str, dict[str, Any]]:
    out = {}
    for message in scores:
        body = json.loads(message.value or b"")
        assert message.key == body["user_id"].encode()
        out[body["request_id"]] = body
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_every_valid_request_is_answered_ranked_and_compliant(workers: int) -> None:
    requests = good_requests(300)
    bad = list(BAD)
    payloads = [json.dumps(r).encode() for r in requests]
    for at, raw in zip(range(7, 300, 29), bad, strict=False):
        payloads.insert(at, raw)
    result = run(payloads, workers)

    got = answers(result.scores)
    assert len(result.scores) == len(got) == len(requests)
    invasive_served = 0
    for request in requests:
        body = got[str(request["request_id"])]
        items = body["items"]
        assert [item["product_id"] for item in items] == expected_items(request)
        clicks = [CLICKS[item["product_id"]] for item in items]
        assert [item["score"] for item in items] == [0.5 + c / (2 * (c + 1)) for c in clicks]
        invasive_served += sum(
            request["region"] in CATALOG[item["product_id"]].invasive_regions for item in items
        )
        assert body["model"] == {"name": "plant-recommender", "version": 1, "alias": "champion"}
        assert body["ts"] == "2026-11-18T11:06:40Z"
    assert invasive_served == 0
    assert any(len(expected_items(r)) < len(r["candidates"]) for r in requests)

    dead = [(m.value, DlqHeaders.from_kafka(m.headers)) for m in result.dlq]
    assert sorted((value, h.reason) for value, h in dead) == sorted(BAD.items())
    for value, headers in dead:
        index = payloads.index(value or b"")
        assert (headers.source_topic, headers.source_partition) == (TOPIC, index % PARTITIONS)
        assert headers.source_offset == index // PARTITIONS
    assert {m.key for m in result.dlq} == {
        f"k{payloads.index(m.value or b'')}".encode() for m in result.dlq
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_features_are_read_once_per_batch_for_all_its_users_and_candidates(workers: int) -> None:
    requests = good_requests(200)
    result = run([json.dumps(r).encode() for r in requests], workers)
    assert 1 <= len(result.features.reads) <= result.batches
    users = {uid for read_users, _ in result.features.reads for uid in read_users}
    products = {pid for _, read_products in result.features.reads for pid in read_products}
    assert users == {r["user_id"] for r in requests}
    assert products == {pid for r in requests for pid in r["candidates"]}
    for read_users, read_products in result.features.reads:  # each entity once per read
        assert len(read_users) == len(set(read_users))
        assert len(read_products) == len(set(read_products))
    assert result.models.loads == [1]  # one load for both workers


def test_a_moved_champion_scores_the_next_batches() -> None:
    requests = good_requests(200)
    # the poll clock ticks 1 s per call, so each batch looks the alias up: version 1, then 2
    result = run([json.dumps(r).encode() for r in requests], champions=[1, 2], poll_s=1)
    assert result.models.loads == [1, 2]
    got = answers(result.scores)
    versions = [got[str(r["request_id"])]["model"]["version"] for r in requests]
    assert versions[0] == 1 and set(versions) == {1, 2}
    for request in requests:
        body = got[str(request["request_id"])]
        sign = 1.0 if body["model"]["version"] == 1 else -1.0
        items = [item["product_id"] for item in body["items"]]
        assert items == expected_items(request, sign)


def test_no_champion_stops_the_flow_before_answering() -> None:
    flow, out = prepare([json.dumps(r).encode() for r in good_requests(5)], champions=[None])
    with pytest.raises(Exception) as raised:
        run_main(flow)
    causes = []
    error: BaseException | None = raised.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(cause, NoModelError) for cause in causes)
    assert out.scores == [] and out.models.loads == []


def test_poller_follows_the_alias_at_most_every_poll_interval() -> None:
    now = [0.0]
    models = FakeModels([3, 3, 4, None])
    poller = ChampionPoller(ModelStore(models, "plant-recommender"), 10.0, lambda: now[0])
    seen = []
    for moment in (0.0, 5.0, 9.9, 10.0, 15.0, 20.0, 30.0, 40.0):
        now[0] = moment
        seen.append(poller.current().version)
    # lookups at 0, 10, 20, 30, 40: 3, 3, 4, then no alias (the last champion stays)
    assert seen == [3, 3, 3, 3, 3, 4, 4, 4]
    assert models.asked == 5
    assert models.loads == [3, 4]


def test_poller_without_any_champion_raises_no_model() -> None:
    poller = ChampionPoller(ModelStore(FakeModels([None]), "m"), 1.0, lambda: 0.0)
    with pytest.raises(NoModelError):
        poller.current()


class _FakeRedis:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store = store
        self.calls: list[list[str]] = []

    def mget(self, keys: list[str]) -> list[bytes | None]:
        self.calls.append(keys)
        return [self.store.get(key) for key in keys]


def test_redis_reader_reads_both_views_in_one_mget() -> None:
    settings = Settings(profile="prod")
    user, product = EntityTiles(), EntityTiles()
    for _ in range(3):
        user.add("click", NOW - 60, None, None)
    product.add("purchase", NOW - 3600, 12.5, 2)
    store = {
        feature_key(settings, "user", "u-1"): encode(user),
        feature_key(settings, "product", "ficus-lyrata-3gal"): encode(product),
    }
    reader = RedisFeatureReader(settings)
    fake = _FakeRedis(store)
    reader._client = fake  # type: ignore[assignment]
    users, products = reader.read(["u-1", "u-2"], ["ficus-lyrata-3gal", "lantana-camara-6in"], NOW)
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 4
    assert users["u-1"]["clicks_1h"] == 3 and users["u-2"]["clicks_1h"] == 0
    assert products["ficus-lyrata-3gal"]["purchases_24h"] == 1
    assert products["lantana-camara-6in"]["purchases_24h"] == 0


@pytest.mark.parametrize(("raw", "reason"), list(BAD.items()))
def test_each_bad_request_gets_its_reason(raw: bytes, reason: RejectionReason) -> None:
    refused = parse_request(raw, products=CATALOG.product_ids, max_candidates=500)
    assert getattr(refused, "reason", None) == reason


def test_more_candidates_than_the_setting_allows_is_invalid() -> None:
    raw = json.dumps(good_requests(1)[0] | {"candidates": PRODUCTS[:11]}).encode()
    refused = parse_request(raw, products=CATALOG.product_ids, max_candidates=10)
    assert isinstance(refused, Rejection) and refused.reason == RejectionReason.INVALID_VALUE
    accepted = parse_request(raw, products=CATALOG.product_ids, max_candidates=11)
    assert isinstance(accepted, ScoreRequest) and accepted.candidates == PRODUCTS[:11]
