"""The prediction path, free of HTTP: candidates → features → model → ranked items → log.

:class:`PredictionService` checks the candidates against the catalog, drops the
ones invasive in the request's region before reading anything
(:func:`infra.plantly.compliance.allowed_candidates`), reads the user and the
remaining products in one MGET, picks the model (pinned version, or the
champion/challenger draw of :meth:`ModelStore.route`), and ranks with
:func:`training.ranking.recommend` — the function the promotion gates run, which
applies the same compliance filter again. Every answer is queued for the
prediction log; the shadow model scores there, after the response.

Decisions: an unknown product (in ``candidates`` or ``product_id``) is a 422
``unknown_product``; ``/v1/predict`` for a plant invasive in the region is a 422
``not_allowed_in_region``; an unknown user reads the views' defaults.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from prometheus_client import Histogram
from redis.asyncio import Redis as AsyncRedis

from flows.features.definitions import get_view
from flows.features.online import read_features_async
from infra.errors import InvalidInputError, NotFoundError, TributaryError
from infra.plantly.catalog import Catalog
from infra.plantly.compliance import allowed_candidates
from infra.plantly.encoding import rfc3339
from infra.settings import Settings
from serving.features import RequestFeatures, fetch, largest_age
from serving.metrics import ServingMetrics
from serving.models import LoadedModel, ModelStore
from serving.prediction_log import PredictionLog, PredictionRecord, RowInputs
from serving.schemas import (
    FeatureAges,
    FeaturesResponse,
    ModelRef,
    PredictRequest,
    PredictResponse,
    RecommendationRequest,
    RecommendationResponse,
    ScoredProduct,
)
from training.contract import UNKNOWN_DEVICE, Rows
from training.pyfunc import RecommenderModel, Scorer
from training.ranking import Recommendation, recommend

_SHOWN_IDS: Final = 5


class UnknownProductError(InvalidInputError):
    code = "unknown_product"


class NotAllowedInRegionError(InvalidInputError):
    code = "not_allowed_in_region"


class ModelError(TributaryError):
    """The model answered something unusable (wrong shape, NaN): a server fault."""

    code = "model_error"
    http_status = 500


@dataclass(frozen=True, slots=True)
class _Ranked:
    request_id: str
    model: LoadedModel
    shadow: LoadedModel | None
    features: RequestFeatures
    ages: FeatureAges
    result: Recommendation
    inputs: RowInputs
    removed: int  # candidates the compliance filter took out


class _TimedScorer:
    """The model alone, timed: ``rank`` minus ``model`` is assembly and sorting."""

    def __init__(self, scorer: Scorer, timer: Histogram) -> None:
        self.kind = scorer.kind
        self.scorer = scorer
        self.timer = timer

    def score(self, rows: Rows) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.scorer.score(rows)
        finally:
            self.timer.observe(time.perf_counter() - started)


class PredictionService:
    """Answers the prediction routes; one per app, shared by every request."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        redis: AsyncRedis,
        models: ModelStore,
        log: PredictionLog,
        metrics: ServingMetrics,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.redis = redis
        self.models = models
        self.log = log
        self.metrics = metrics
        self._all_products = list(catalog)

    async def recommendations(
        self, request: RecommendationRequest, version: int | None = None
    ) -> RecommendationResponse:
        started = time.perf_counter()
        candidates = self._candidates(request.candidates)
        k = request.k or self.settings.serving.default_k
        ranked = await self._rank(
            request.user_id, request.region, request.device, candidates, version
        )
        self._log("recommendations", ranked, request.region, request.device, k, started)
        return RecommendationResponse(
            request_id=ranked.request_id,
            model=_ref(ranked.model),
            items=[ScoredProduct(product_id=i.product_id, score=i.score)
                   for i in ranked.result.items[:k]],
            feature_ages=ranked.ages,
        )  # fmt: skip

    async def predict(self, request: PredictRequest, version: int | None = None) -> PredictResponse:
        started = time.perf_counter()
        candidates = self._candidates([request.product_id])
        if not allowed_candidates(self.catalog, request.region, candidates):
            raise NotAllowedInRegionError(
                f"{request.product_id} is invasive in {request.region}: it is never offered there"
            )
        ranked = await self._rank(
            request.user_id, request.region, request.device, candidates, version
        )
        self._log("predict", ranked, request.region, request.device, 1, started)
        return PredictResponse(
            request_id=ranked.request_id,
            model=_ref(ranked.model),
            score=ranked.result.items[0].score,
            feature_ages=ranked.ages,
        )

    async def features(self, view: str, entity_id: str) -> FeaturesResponse:
        """One entity's online features; 404 for an unknown view or an entity never seen."""
        spec = get_view(view)
        if view == "product" and entity_id not in self.catalog:
            raise NotFoundError(f"no product {entity_id!r} in the catalog")
        (row,) = await read_features_async(self.redis, self.settings, spec.name, [entity_id])
        if not row.found:
            raise NotFoundError(f"the online store holds no {view} features for {entity_id!r}")
        return FeaturesResponse(
            view=view, entity_id=entity_id, features=row.features, as_of=rfc3339(row.as_of),
            ages=row.ages,
        )  # fmt: skip

    # -- shared by both prediction routes --------------------------------------

    def _candidates(self, requested: Sequence[str] | None) -> list[str]:
        if requested is None:
            return self._all_products
        unique = list(dict.fromkeys(requested))  # a repeated id is ranked once
        limit = self.settings.serving.max_candidates
        if len(unique) > limit:
            raise InvalidInputError(f"{len(unique)} candidates; at most {limit} per request")
        unknown = [pid for pid in unique if pid not in self.catalog]
        if unknown:
            shown = ", ".join(unknown[:_SHOWN_IDS]) + (" …" if len(unknown) > _SHOWN_IDS else "")
            raise UnknownProductError(f"{len(unknown)} unknown product(s): {shown}")
        return unique

    async def _rank(
        self,
        user_id: str,
        region: str,
        device: str | None,
        candidates: list[str],
        version: int | None,
    ) -> _Ranked:
        model, shadow = await self._choose(version)
        stage = self.metrics.stage
        # read only what may be shown; recommend() applies the same filter again
        allowed = allowed_candidates(self.catalog, region, candidates)
        started = time.perf_counter()
        as_of = time.time()
        features = await fetch(self.redis, self.settings, user_id, allowed, as_of)
        ranked_at = time.perf_counter()
        timed = RecommenderModel(_TimedScorer(model.model.scorer, stage["model"]))
        inputs = RowInputs(features.user.features, features.product_values(), allowed)
        result = recommend(
            timed, self.catalog, user_id=user_id, region=region, device=device,
            candidates=allowed, user_features=inputs.user, product_features=inputs.products,
            as_of=as_of, k=len(allowed),
        )  # fmt: skip
        done = time.perf_counter()
        stage["features"].observe(ranked_at - started)
        stage["rank"].observe(done - ranked_at)
        if not all(math.isfinite(item.score) for item in result.items):
            raise ModelError(f"{model.name} v{model.version} returned a non-finite score")
        self.metrics.predictions.labels(model.alias or "pinned").inc()
        return _Ranked(
            uuid.uuid4().hex, model, shadow, features, features.ages(), result, inputs,
            len(candidates) - len(allowed),
        )  # fmt: skip

    async def _choose(self, version: int | None) -> tuple[LoadedModel, LoadedModel | None]:
        if version is None:
            route = self.models.route()
            return route.answer, route.shadow
        pinned = self.models.cached(version)
        if pinned is None:
            # the first request for a version loads it, off the event loop
            pinned = await asyncio.to_thread(self.models.pinned, version)
        return pinned, None

    def _log(
        self, route: str, ranked: _Ranked, region: str, device: str | None, k: int, started: float
    ) -> None:
        submitted = time.perf_counter()
        for view, view_ages in (("user", ranked.ages.user), ("product", ranked.ages.product)):
            age = largest_age(view_ages)
            if age is not None:
                self.metrics.age[view].observe(age)
        result = ranked.result
        self.log.submit(
            PredictionRecord(
                request_id=ranked.request_id, ts=ranked.features.as_of, route=route,
                user_id=ranked.features.user.entity_id, region=region,
                device=device or UNKNOWN_DEVICE, k=k, model=ranked.model,
                items=result.items[:k], ranked=result.items, removed=ranked.removed,
                rows=result.rows, inputs=ranked.inputs, ages=ranked.ages,
                latency_ms=(submitted - started) * 1000,
                shadow=ranked.shadow,
            )
        )  # fmt: skip
        self.metrics.stage["log"].observe(time.perf_counter() - submitted)


def _ref(model: LoadedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, alias=model.alias)
