"""Prometheus metrics of the prediction API, in a registry of the app's own.

Each :func:`serving.app.create_app` gets a fresh :class:`CollectorRegistry`, so
several apps in one process (tests) never collide; ``/metrics`` renders it.
Under ``tributary serve --workers N`` (N > 1) the workers write their values to
files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode,
which ``serve`` turns on) and ``/metrics``, whichever worker answers it, adds
them all up; ``model_version`` then carries a ``pid`` label per worker, so a
worker serving another version than the rest shows.

=====================================================  ===========================
``tributary_serving_requests_total{route,status}``     requests by route template
``tributary_serving_request_seconds{route}``           server-side latency
``tributary_serving_stage_seconds{stage}``             features, rank, model, log
``tributary_serving_feature_age_seconds{view}``        stalest feature used, per request
``tributary_serving_predictions_total{alias}``         which model answered
``tributary_serving_model_version{alias}``             versions held (0: none)
``tributary_serving_model_refresh_total{outcome}``     registry polls
``tributary_serving_prediction_log_total{outcome}``    sent, dropped, shadow_failed
=====================================================  ===========================
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_AGE_BUCKETS = (1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


class ServingMetrics:
    """Every metric the API exports, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "tributary_serving_requests", "HTTP requests by route.", ["route", "status"],
            registry=reg,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "tributary_serving_request_seconds", "Server-side request latency.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "tributary_serving_stage_seconds",
            "Time per stage of a prediction: features (Redis MGET and decode), rank "
            "(filter, assemble, score, sort), model (the scorer alone), log (enqueue).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.feature_age = Histogram(
            "tributary_serving_feature_age_seconds",
            "Per request and view, the largest age of the features the model used.",
            ["view"], buckets=_AGE_BUCKETS, registry=reg,
        )  # fmt: skip
        self.predictions = Counter(
            "tributary_serving_predictions", "Answered predictions by the alias that answered.",
            ["alias"], registry=reg,
        )  # fmt: skip
        self.model_version = Gauge(
            "tributary_serving_model_version", "Registry version held per alias (0: none).",
            ["alias"], registry=reg, multiprocess_mode="liveall",
        )  # fmt: skip
        self.model_refresh = Counter(
            "tributary_serving_model_refresh", "Registry polls by outcome.", ["outcome"],
            registry=reg,
        )  # fmt: skip
        self.prediction_log = Counter(
            "tributary_serving_prediction_log",
            "Prediction-log records: sent to Kafka, dropped on a full queue, shadow_failed.",
            ["outcome"], registry=reg,
        )  # fmt: skip
        self.prediction_log_queue = Gauge(
            "tributary_serving_prediction_log_queue", "Records waiting to be sent.",
            registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip
        # resolved once: a labelled child costs a dict lookup and a lock per call
        self.stage = {
            name: self.stage_seconds.labels(name) for name in ("features", "rank", "model", "log")
        }
        self.age = {view: self.feature_age.labels(view) for view in ("user", "product")}

    def render(self) -> bytes:
        folder = os.environ.get(MULTIPROCESS_ENV)
        if not folder:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, folder)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker)

    def close(self) -> None:
        """This worker is gone: its live gauges (version held, queue) stop counting."""
        if os.environ.get(MULTIPROCESS_ENV):
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
