"""The prediction log: one ``ml.predictions`` message per answered request.

Requests hand a :class:`PredictionRecord` to :meth:`PredictionLog.submit`,
which never blocks: a bounded buffer (``settings.serving.prediction_queue``)
sits in front of a worker thread, and a record that finds it full is dropped
and counted (``tributary_serving_prediction_log_total{outcome="dropped"}``)
rather than slowing the response. The worker scores the shadow model, encodes
the JSON and hands it to Kafka; :meth:`PredictionLog.close` drains and flushes
on shutdown. Requests carry no PII, so neither does the log.

Message (key ``user_id``)::

    {"request_id", "ts", "route", "user_id", "region", "device", "k",
     "model": {"name", "version", "alias"},
     "items": [{"product_id", "score"}],          # what was returned, ranked
     "candidates": [...], "scores": [...],         # every scored candidate, row order
     "removed": 2,                                 # dropped by the compliance filter
     "features": {column: [value per candidate]},  # the contract rows the model scored
     "feature_ages": {"user": {...}, "product": {...}},
     "latency_ms", "shadow": null | {"model": {...}, "scores": [...]}}
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import orjson

from flows.features.definitions import FeatureValue
from infra.kafka.producer import Producer
from infra.plantly.encoding import rfc3339
from infra.settings import Settings
from serving.metrics import ServingMetrics
from serving.models import LoadedModel
from serving.schemas import FeatureAges
from training.contract import RowBatch
from training.ranking import ScoredItem

_LOG = logging.getLogger("serving.prediction_log")
INTERVAL_S: Final = 0.005


@dataclass(frozen=True, slots=True)
class RowInputs:
    """What :func:`training.ranking.recommend` assembled the scored rows from."""

    user: Mapping[str, FeatureValue]
    products: Mapping[str, Mapping[str, FeatureValue]]
    candidates: list[str]  # row order


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """Everything about one answered request; encoded off the request path."""

    request_id: str
    ts: float
    route: str
    user_id: str
    region: str
    device: str
    k: int
    model: LoadedModel
    items: list[ScoredItem]
    ranked: list[ScoredItem]  # every scored candidate, best first
    removed: int
    rows: RowBatch  # what the model scored; the shadow model scores it too
    inputs: RowInputs
    ages: FeatureAges
    latency_ms: float
    shadow: LoadedModel | None = None

    def payload(self, shadow_scores: list[float] | None = None) -> dict[str, Any]:
        candidates = self.inputs.candidates
        by_id = {item.product_id: item.score for item in self.ranked}
        return {
            "request_id": self.request_id,
            "ts": rfc3339(self.ts),
            "route": self.route,
            "user_id": self.user_id,
            "region": self.region,
            "device": self.device,
            "k": self.k,
            "model": model_ref(self.model),
            "items": [{"product_id": i.product_id, "score": i.score} for i in self.items],
            "candidates": candidates,
            "scores": [by_id[pid] for pid in candidates],
            "removed": self.removed,
            "features": self.rows.column_lists(),
            "feature_ages": self.ages.model_dump(),
            "latency_ms": round(self.latency_ms, 3),
            "shadow": None
            if self.shadow is None or shadow_scores is None
            else {"model": model_ref(self.shadow), "scores": shadow_scores},
        }


def model_ref(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version, "alias": model.alias}


class RecordSink(Protocol):
    """Where encoded records go: Kafka in production, a list in tests."""

    def send(self, key: bytes, value: bytes) -> None: ...

    def poll(self) -> None: ...

    def close(self, timeout: float) -> None: ...


class KafkaRecordSink:
    """``ml.predictions`` of the settings' profile, through the project's producer."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(settings.topics.predictions)
        # the broker's work goes by produce request more than by byte: at 800 requests/s
        # a 5 ms linger cost the local broker 0.2 ms of CPU per record, 50 ms about 0.1,
        # and the log still trails the answers by at most 50 ms
        self.producer = Producer(settings, **{"linger.ms": 50})

    def send(self, key: bytes, value: bytes) -> None:
        self.producer.send(self.topic, value, key)

    def poll(self) -> None:
        self.producer.poll()

    def close(self, timeout: float) -> None:
        self.producer.close(timeout)


class PredictionLog:
    """A bounded buffer and one worker thread between requests and a :class:`RecordSink`.

    ``submit`` appends to a deque, with no lock and no wake-up call: the worker
    looks every ``interval_s`` and sends what piled up, so a request never
    waits on a condition variable or hands the GIL to the worker.
    """

    def __init__(
        self,
        sink: RecordSink,
        metrics: ServingMetrics,
        capacity: int,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.capacity = capacity
        self.interval_s = interval_s
        self._pending: deque[PredictionRecord] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._sent = metrics.prediction_log.labels("sent")
        self._dropped = metrics.prediction_log.labels("dropped")
        self._shadow_failed = metrics.prediction_log.labels("shadow_failed")
        self._queue = metrics.prediction_log_queue
        self._queue.set_function(lambda: len(self._pending))

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: PredictionRecord) -> bool:
        """Queue ``record``; False (and a counted drop) when ``capacity`` records wait."""
        if len(self._pending) >= self.capacity:
            self._dropped.inc()
            return False
        self._pending.append(record)  # atomic: the worker pops from the other end
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then flush the sink (at most ``timeout`` seconds each)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self.sink.close(timeout)
        except Exception as error:  # shutdown goes on; the loss is reported
            _LOG.error("prediction log not fully delivered: %s", error)

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval_s)
            # the backlog found, for workers of one API (their callbacks are not collected)
            self._queue.set(len(self._pending))
            while self._pending:
                self._write(self._pending.popleft())
                # hand the GIL back at once: otherwise the event loop may wait a whole
                # switch interval (5 ms) behind a run of encodes
                time.sleep(0)
            self.sink.poll()
            if stopping:
                return

    def _write(self, record: PredictionRecord) -> None:
        try:
            # orjson: ~10x faster than json for the ~1,000 numbers of a record,
            # which is GIL time taken from the event loop
            value = orjson.dumps(
                record.payload(self._shadow_scores(record)),
                default=_plain, option=orjson.OPT_SERIALIZE_NUMPY,
            )  # fmt: skip
            self.sink.send(record.user_id.encode(), value)
        except Exception:  # one bad record must not stop the log
            _LOG.exception("cannot log prediction %s", record.request_id)
            return
        self._sent.inc()

    def _shadow_scores(self, record: PredictionRecord) -> list[float] | None:
        if record.shadow is None or record.rows.empty:
            return None
        try:
            _, scores = record.shadow.model.score_columns(record.rows)
        except Exception:
            _LOG.exception("shadow model v%s failed", record.shadow.version)
            self._shadow_failed.inc()
            return None
        listed: list[float] = scores.tolist()
        return listed


def _plain(value: object) -> object:
    """numpy scalars that pandas may hand back, as JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
