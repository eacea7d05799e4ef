"""The API contract, route by route and error by error, over in-memory backends.

The app runs its real lifespan, routers, middleware and error handlers in
process (``TestClient`` as a context manager); only Redis, the registry and
Kafka are the fakes of :mod:`serving.testing`. The same routes run against the
real stack in ``tests/integration/test_serving_api.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW
from flows.features.tiles import EntityTiles
from infra.errors import ConfigError
from infra.plantly.catalog import load_catalog
from infra.settings import Settings
from serving.app import create_app
from serving.testing import FakeRedis, FakeSource, ListSink, fake_backends
from training.contract import RowBatch, Rows
from training.pyfunc import RecommenderModel, Scorer
from training.webhook import sign

PREDICT_KEY, ADMIN_KEY = "p-" + "x" * 30, "a-" + "y" * 30
KEYS = SecretStr(f"{PREDICT_KEY}:predict,{ADMIN_KEY}:admin")
PREDICT = {"X-API-Key": PREDICT_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}
CATALOG = load_catalog()
FL_INVASIVE = next(p.product_id for p in CATALOG.values() if "US-FL" in p.invasive_regions)
SAFE = [p.product_id for p in CATALOG.values() if not p.invasive_regions][:20]


class World:
    """The fakes behind one app."""

    def __init__(self, settings: Settings, source: FakeSource) -> None:
        self.settings = settings
        self.source = source
        self.redis = FakeRedis()
        self.sink = ListSink()
        self.broker_problem: str | None = None

    def client(self, **overrides: Any) -> TestClient:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        backends = fake_backends(self.source, self.redis, self.sink, self.broker_problem)
        return TestClient(create_app(settings, backends=backends), raise_server_exceptions=False)


@pytest.fixture
def world() -> World:
    return World(Settings(profile="t1", api_keys=KEYS), FakeSource({1: 0.1, 2: 0.3}, champion=1))


@pytest.fixture
def api(world: World) -> Iterator[TestClient]:
    with world.client() as client:
        yield client


def recommend(client: TestClient, headers: dict[str, str] = PREDICT, **body: Any) -> Any:
    return client.post(
        "/v1/recommendations", json={"user_id": "u-1", "region": "US-CA", **body}, headers=headers
    )


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# -- the prediction routes ----------------------------------------------------


def test_recommendations_are_ranked_with_model_and_ages(api: TestClient) -> None:
    response = recommend(api, candidates=SAFE, k=5, device="mobile")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"request_id", "model", "items", "feature_ages"}
    assert body["model"] == {"name": "t1.plant-recommender", "version": 1, "alias": "champion"}
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert {item["product_id"] for item in body["items"]} <= set(SAFE)
    assert set(body["feature_ages"]["user"]) == set(USER_VIEW.names)
    assert set(body["feature_ages"]["product"]) == set(PRODUCT_VIEW.names)


def test_whole_catalog_by_default_without_invasive_plants(api: TestClient) -> None:
    body = recommend(api, region="US-FL", k=500).json()
    returned = [item["product_id"] for item in body["items"]]
    invasive = {p.product_id for p in CATALOG.values() if "US-FL" in p.invasive_regions}
    assert len(returned) == len(CATALOG) - len(invasive)
    assert not set(returned) & invasive
    assert len(recommend(api).json()["items"]) == 10  # settings.serving.default_k


def test_unknown_user_reads_defaults_and_a_known_one_has_ages(
    world: World, api: TestClient
) -> None:
    unknown = recommend(api, user_id="never-seen", candidates=SAFE[:2]).json()
    assert all(age is None for age in unknown["feature_ages"]["user"].values())
    tiles = EntityTiles()
    tiles.add("click", time.time() - 30)
    world.redis.put(world.settings, "user", "u-1", tiles)
    world.redis.put(world.settings, "product", SAFE[0], tiles)
    known = recommend(api, candidates=SAFE[:2]).json()["feature_ages"]
    assert 29 <= known["user"]["clicks_1h"] < 120
    assert 29 <= known["product"]["clicks_1h"] < 120


def test_one_mget_per_prediction(world: World, api: TestClient) -> None:
    before = world.redis.mgets
    recommend(api, candidates=SAFE)
    assert world.redis.mgets == before + 1


def test_predict_scores_one_product(api: TestClient) -> None:
    body = {"user_id": "u-1", "product_id": SAFE[0], "region": "US-CA"}
    response = api.post("/v1/predict", json=body, headers=PREDICT)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert 0.0 <= answer["score"] <= 1.0 and answer["model"]["version"] == 1
    ranked = recommend(api, candidates=[SAFE[0]]).json()["items"][0]["score"]
    assert answer["score"] == pytest.approx(ranked)


def test_predict_refuses_a_plant_invasive_in_the_region(api: TestClient) -> None:
    body = {"user_id": "u-1", "product_id": FL_INVASIVE, "region": "US-FL"}
    assert_error(api.post("/v1/predict", json=body, headers=PREDICT), 422, "not_allowed_in_region")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"candidates": ["no-such-plant"]}, "unknown_product"),
        ({"candidates": [SAFE[0], "nope-1", "nope-2"]}, "unknown_product"),
        ({"k": 0}, "invalid_request"),
        ({"k": 501}, "invalid_request"),
        ({"region": "California"}, "invalid_request"),
        ({"device": "fridge"}, "invalid_request"),
        ({"user_id": ""}, "invalid_request"),
        ({"user_id": "u" * 65}, "invalid_request"),
        ({"surprise": 1}, "invalid_request"),
        ({"candidates": "monstera"}, "invalid_request"),
    ],
)
def test_bad_recommendation_requests_are_422(
    api: TestClient, body: dict[str, Any], code: str
) -> None:
    assert_error(recommend(api, **body), 422, code)


def test_too_many_candidates_is_422(world: World) -> None:
    serving = world.settings.serving.model_copy(update={"max_candidates": 5})
    with world.client(serving=serving) as client:
        assert_error(recommend(client, candidates=SAFE[:6]), 422, "invalid_input")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user_id": "u-1", "region": "US-CA", "k": NaN}',
        b'{"user_id": "u-1", "region": "US-CA", "k": Infinity}',
        b'{"user_id": NaN, "region": "US-CA"}',
        b'{"user_id": "u-1", "region": "US-CA", "candidates": [-Infinity]}',
    ],
)
def test_nan_and_infinity_are_422(api: TestClient, raw: bytes) -> None:
    headers = {**PREDICT, "Content-Type": "application/json"}
    assert_error(
        api.post("/v1/recommendations", content=raw, headers=headers), 422, "invalid_request"
    )


def test_nan_fraction_for_the_canary_is_422(api: TestClient) -> None:
    headers = {**ADMIN, "Content-Type": "application/json"}
    response = api.put("/v1/admin/canary", content=b'{"fraction": NaN}', headers=headers)
    assert_error(response, 422, "invalid_request")


def test_invalid_json_is_400(api: TestClient) -> None:
    headers = {**PREDICT, "Content-Type": "application/json"}
    response = api.post("/v1/recommendations", content=b'{"user_id": ', headers=headers)
    assert_error(response, 400, "invalid_json")


def test_oversized_bodies_are_413(api: TestClient) -> None:
    big = {"user_id": "u-1", "region": "US-CA", "candidates": ["x" * 100] * 700}
    assert_error(
        api.post("/v1/recommendations", json=big, headers=PREDICT), 413, "payload_too_large"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size counts
        yield b'{"user_id": "u-1", "region": "US-CA", "candidates": ['
        for _ in range(1000):
            yield b'"' + b"y" * 100 + b'",'
        yield b'"z"]}'

    headers = {**PREDICT, "Content-Type": "application/json"}
    response = api.post("/v1/recommendations", content=chunks(), headers=headers)
    assert_error(response, 413, "payload_too_large")


def test_no_champion_is_503(world: World) -> None:
    world.source.aliases.clear()
    with world.client() as client:
        assert_error(recommend(client), 503, "no_model")


def test_a_model_answering_nan_is_a_json_500(world: World) -> None:
    world.source.versions[1] = float("nan")
    with world.client() as client:
        assert_error(recommend(client, candidates=SAFE[:3]), 500, "model_error")


def test_pinned_versions(api: TestClient) -> None:
    pinned = api.post(
        "/v1/recommendations?version=2",
        headers=PREDICT,
        json={"user_id": "u-1", "region": "US-CA", "candidates": SAFE[:3]},
    )
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["model"] == {"name": "t1.plant-recommender", "version": 2, "alias": None}
    missing = api.post(
        "/v1/recommendations?version=9", headers=PREDICT, json={"user_id": "u-1", "region": "US-CA"}
    )
    assert_error(missing, 404, "not_found")
    assert_error(
        api.post(
            "/v1/recommendations?version=0",
            headers=PREDICT,
            json={"user_id": "u-1", "region": "US-CA"},
        ),
        422,
        "invalid_request",
    )


# -- features -------------------------------------------------------------------


def test_features_route(world: World, api: TestClient) -> None:
    tiles = EntityTiles()
    tiles.add("impression", time.time() - 10)
    world.redis.put(world.settings, "user", "u-7", tiles)
    response = api.get("/v1/features/user/u-7", headers=PREDICT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["view"] == "user" and body["entity_id"] == "u-7"
    assert body["features"]["impressions_1h"] == 1 and body["as_of"].endswith("Z")
    assert 9 <= body["ages"]["impressions_1h"] < 100
    assert_error(api.get("/v1/features/basket/u-7", headers=PREDICT), 404, "not_found")
    assert_error(api.get("/v1/features/user/u-never", headers=PREDICT), 404, "not_found")
    assert_error(api.get("/v1/features/product/no-such-plant", headers=PREDICT), 404, "not_found")


# -- auth -------------------------------------------------------------------------


def test_keys_and_roles(api: TestClient) -> None:
    assert_error(recommend(api, headers={}), 401, "unauthorized")
    assert_error(recommend(api, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert recommend(api, headers=ADMIN).status_code == 200  # admin implies predict
    assert_error(api.get("/v1/admin/models", headers=PREDICT), 403, "forbidden")
    assert_error(api.get("/v1/admin/models"), 401, "unauthorized")
    assert_error(api.get("/v1/features/user/u-1"), 401, "unauthorized")
    assert api.get("/v1/admin/models", headers=ADMIN).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert api.get(path).status_code == 200, path


def test_the_key_is_never_echoed(api: TestClient) -> None:
    secret = "s3cret-" + "z" * 20
    response = recommend(api, headers={"X-API-Key": secret})
    assert response.status_code == 401 and secret not in response.text


def test_dev_profile_without_keys_is_open(world: World) -> None:
    with world.client(profile="dev", api_keys=None) as client:
        assert recommend(client, headers={}).status_code == 200
        assert client.get("/v1/admin/models").status_code == 200


def test_other_profiles_refuse_to_start_without_keys() -> None:
    with pytest.raises(ConfigError, match="needs API keys"):
        create_app(Settings(profile="prod"))
    with pytest.raises(ConfigError, match="key:predict"):
        create_app(Settings(profile="prod", api_keys=SecretStr("k:root")))


# -- admin --------------------------------------------------------------------------


def test_reload_swaps_the_champion(world: World, api: TestClient) -> None:
    assert recommend(api).json()["model"]["version"] == 1
    world.source.aliases["champion"] = 2
    reloaded = api.post("/v1/admin/reload", headers=ADMIN)
    assert reloaded.status_code == 200 and reloaded.json()["champion"]["version"] == 2
    assert recommend(api).json()["model"]["version"] == 2
    world.source.failing = True
    assert_error(api.post("/v1/admin/reload", headers=ADMIN), 503, "registry_unavailable")
    assert recommend(api).json()["model"]["version"] == 2  # still served


def test_canary_can_change_at_runtime(world: World, api: TestClient) -> None:
    world.source.aliases["challenger"] = 2
    api.post("/v1/admin/reload", headers=ADMIN)
    assert {recommend(api).json()["model"]["version"] for _ in range(20)} == {1}
    changed = api.put("/v1/admin/canary", json={"fraction": 1.0}, headers=ADMIN)
    assert changed.status_code == 200 and changed.json()["canary_fraction"] == 1.0
    answer = recommend(api).json()["model"]
    assert answer == {"name": "t1.plant-recommender", "version": 2, "alias": "challenger"}
    assert_error(
        api.put("/v1/admin/canary", json={"fraction": 1.5}, headers=ADMIN), 422, "invalid_request"
    )


# -- health, metrics, errors of the framework -------------------------------------


def test_readiness_names_what_is_missing(world: World) -> None:
    with world.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        world.redis.down = True
        not_ready = client.get("/readyz")
        assert_error(not_ready, 503, "not_ready")
        assert [d["check"] for d in not_ready.json()["error"]["details"]] == ["redis"]
    world.redis.down = False
    world.broker_problem = "connection refused"
    world.source.aliases.clear()
    with world.client() as client:
        message = client.get("/readyz").json()["error"]["message"]
        assert "broker: connection refused" in message and "champion" in message


def test_metrics_by_route_template_and_stage(api: TestClient) -> None:
    recommend(api, candidates=SAFE)
    api.get("/v1/features/user/u-404", headers=PREDICT)
    text = api.get("/metrics").text
    assert 'tributary_serving_requests_total{route="/v1/recommendations",status="200"} 1.0' in text
    assert 'route="/v1/features/{view}/{entity_id}",status="404"' in text
    assert "u-404" not in text
    for stage in ("features", "rank", "model", "log"):
        assert f'tributary_serving_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert 'tributary_serving_predictions_total{alias="champion"} 1.0' in text
    assert 'tributary_serving_model_version{alias="champion"} 1.0' in text


def test_framework_errors_are_json(api: TestClient) -> None:
    assert_error(api.get("/v2/nothing"), 404, "not_found")
    assert_error(api.get("/v1/recommendations", headers=PREDICT), 405, "method_not_allowed")


# -- the prediction log -------------------------------------------------------------


def test_every_answer_is_logged_once(world: World) -> None:
    with world.client() as client:
        ids = [recommend(client, candidates=SAFE, k=3).json()["request_id"] for _ in range(5)]
        body = {"user_id": "u-2", "product_id": SAFE[1], "region": "US-FL", "device": "tablet"}
        ids.append(client.post("/v1/predict", json=body, headers=PREDICT).json()["request_id"])
        assert_error(recommend(client, candidates=["nope"]), 422, "unknown_product")
    assert world.sink.closed  # flushed on shutdown
    logged = [record for _, record in world.sink.records]
    assert sorted(r["request_id"] for r in logged) == sorted(ids)
    first = logged[0]
    assert first["model"] == {"name": "t1.plant-recommender", "version": 1, "alias": "champion"}
    assert first["device"] == "unknown" and first["route"] == "recommendations"
    assert len(first["items"]) == 3 and len(first["candidates"]) == len(SAFE)
    assert first["features"]["product_id"] == first["candidates"]
    assert max(first["scores"]) == first["items"][0]["score"]
    assert first["latency_ms"] > 0 and first["shadow"] is None
    assert world.sink.records[-1][0] == b"u-2" and logged[-1]["device"] == "tablet"


class CapturingScorer:
    """Scores like the wrapped scorer and keeps the last rows it was given."""

    kind = "capturing"

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner
        self.rows: list[pd.DataFrame] = []

    def score(self, rows: Rows) -> np.ndarray:
        self.rows.append(rows.to_pandas() if isinstance(rows, RowBatch) else rows.copy())
        return self.inner.score(rows)


class CapturingSource(FakeSource):
    def load(self, number: int) -> RecommenderModel:
        self.scorer = CapturingScorer(super().load(number).scorer)
        return RecommenderModel(self.scorer)


def test_the_logged_features_are_the_rows_the_model_scored() -> None:
    settings = Settings(profile="t2", api_keys=KEYS)
    source, redis, sink = CapturingSource({1: 0.1}, champion=1), FakeRedis(), ListSink()
    tiles = EntityTiles()
    for kind in ("impression", "click", "add_to_cart", "purchase"):
        tiles.add(kind, time.time() - 600, price=12.5, quantity=1)
    redis.put(settings, "user", "u-1", tiles)
    redis.put(settings, "product", SAFE[3], tiles)
    app = create_app(settings, backends=fake_backends(source, redis, sink))
    with TestClient(app) as client:
        candidates = [FL_INVASIVE, *SAFE[:5]]
        response = recommend(client, region="US-FL", candidates=candidates, device="desktop")
        assert response.status_code == 200
    (scored,) = source.scorer.rows
    ((_, logged),) = sink.records
    assert list(logged["features"]) == list(scored.columns)
    assert logged["features"] == {name: column.tolist() for name, column in scored.items()}
    assert logged["candidates"] == SAFE[:5] and logged["removed"] == 1
    assert logged["features"]["product_purchases_24h"][3] == 1


# -- the registry webhook -----------------------------------------------------


def _alias_delivery(settings: Settings, version: int) -> str:
    data = {"name": settings.registered_model_name, "alias": "champion", "version": str(version)}
    return json.dumps({"entity": "model_version_alias", "action": "created", "data": data})


def test_a_signed_registry_delivery_swaps_the_champion_at_once(world: World) -> None:
    secret = "s3cret-" + "z" * 20
    training = world.settings.training.model_copy(update={"webhook_secret": SecretStr(secret)})
    world.settings = world.settings.model_copy(update={"training": training})
    with world.client() as client:
        assert recommend(client).json()["model"]["version"] == 1
        world.source.aliases["champion"] = 2
        body = _alias_delivery(world.settings, 2)
        assert_error(client.post("/v1/hooks/registry", content=body), 401, "unauthorized")
        stamp = str(int(time.time()))
        headers = {"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": stamp,
                   "X-MLflow-Signature": sign(secret, "d-1", stamp, body)}  # fmt: skip
        assert client.post("/v1/hooks/registry", content=body, headers=headers).status_code == 202
        assert recommend(client).json()["model"]["version"] == 2


def test_an_unsigned_delivery_is_refused_unless_it_comes_from_loopback(world: World) -> None:
    with world.client() as client:  # TestClient's peer is "testclient", not loopback
        response = client.post("/v1/hooks/registry", content=_alias_delivery(world.settings, 2))
        assert_error(response, 401, "unauthorized")
