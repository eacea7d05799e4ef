"""The streaming scorer: score requests from Kafka with the champion, answers back to Kafka.

::

    ml.score-requests ─ kafka-in ─ parse ─┬─ score ─── scores-out ─► ml.scores (key user_id)
                        (batches)         │  (one MGET, champion, compliance filter, top k)
                                          └─ rejects ─ dlq-out ────► shop.dlq (reason headers)

Each Kafka batch is parsed at once; the features of every user and candidate of
the batch are read from Redis in one ``MGET``, and each request goes through
:func:`training.ranking.recommend`, the path the API and the promotion gates
use, so a plant invasive in the request's region is never offered. The model is
the registry's ``champion``; the alias is looked up at most every
``settings.serving.model_poll_s`` seconds and a moved alias loads the new
version before the next batch is scored.

Delivery is at-least-once, like the DLQ: after a crash the flow resumes at its
last snapshot and may answer a request again, with the same ``request_id`` to
deduplicate on. A request that arrives while the model has no champion stops
the flow with :class:`serving.models.NoModelError`, and a model that raises
stops it too: the batch is not committed, so a restart (after a promote or a
rollback) answers it. The
champion is followed by the API's :class:`serving.models.ModelStore`, so both
answer with the same version and react to a registry outage the same way.

Run it with ``tributary run scorer`` (or ``python -m bytewax.run
"serving.scorer_flow:from_env()"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import DynamicSink
from redis import Redis

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW
from flows.features.online import read_views
from flows.kafka_source import KafkaBatch, settings_source
from flows.metrics import EVENTS_IN, LAST_PROCESSED, REJECTS
from flows.sinks.dlq import CountingSink, DlqMessage, SourceMessage, dlq_message, kafka_dlq_sink
from infra.contracts import Rejection
from infra.plantly.catalog import Catalog, load_catalog
from infra.settings import Settings, load_settings
from serving.models import LoadedModel, ModelSource, ModelStore
from serving.scoring_requests import ItemScore, ModelRef, ScoreMessage, ScoreRequest, parse_request
from training.ranking import Features, recommend
from training.registry import CHAMPION, Registry

FLOW = "scorer"
FLOW_ID = "tributary-scorer"
SCORES_SINK_LABEL = "scores"

ScoreOut = KafkaSinkMessage[bytes | None, bytes | None]
Clock = Callable[[], float]


@dataclass(slots=True)
class RequestBatch:
    """What one parse of Kafka batches yielded: valid requests and DLQ messages."""

    requests: list[ScoreRequest] = field(default_factory=list)
    rejects: list[DlqMessage] = field(default_factory=list)


class RequestParser:
    """Parses Kafka batches of requests; refused ones become DLQ messages."""

    def __init__(self, products: Container[str], max_candidates: int) -> None:
        self.products = products
        self.max_candidates = max_candidates

    def __call__(self, batches: list[KafkaBatch]) -> list[RequestBatch]:
        out = RequestBatch()
        for batch in batches:
            EVENTS_IN.labels(flow=FLOW, topic=batch.topic).inc(len(batch))
            for offset, key, raw in zip(batch.offsets, batch.keys, batch.values, strict=True):
                parsed = parse_request(
                    raw, products=self.products, max_candidates=self.max_candidates
                )
                if isinstance(parsed, Rejection):
                    REJECTS.labels(flow=FLOW, reason=parsed.reason.value).inc()
                    source: SourceMessage = KafkaSourceMessage(
                        key, raw, topic=batch.topic, partition=batch.partition, offset=offset
                    )
                    out.rejects.append(dlq_message(source, parsed))
                else:
                    out.requests.append(parsed)
        return [out]


class ChampionPoller:
    """The champion of a :class:`ModelStore`, its aliases followed at most every ``poll_s``.

    The store is the API's (load before swap; a registry outage or a vanished
    alias keeps the model held). Workers of one process share the poller, so a
    new version loads once.
    """

    def __init__(self, store: ModelStore, poll_s: float, clock: Clock = time.monotonic) -> None:
        self.store = store
        self.poll_s = poll_s
        self.clock = clock
        self._refreshed_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> LoadedModel:
        """The champion to score with; :class:`NoModelError` while there is none."""
        with self._lock:
            now = self.clock()
            if now - self._refreshed_at >= self.poll_s:
                self.store.refresh()
                self._refreshed_at = now
        return self.store.route().answer


class FeatureReader(Protocol):
    """Features of users and products as of a moment, defaults for unknown entities."""

    def read(
        self, user_ids: Sequence[str], product_ids: Sequence[str], as_of: float
    ) -> tuple[dict[str, Features], dict[str, Features]]: ...


class RedisFeatureReader:
    """Both views from the online store in one ``MGET``; connects on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Redis | None = None

    def read(
        self, user_ids: Sequence[str], product_ids: Sequence[str], as_of: float
    ) -> tuple[dict[str, Features], dict[str, Features]]:
        if self._client is None:
            self._client = Redis.from_url(self.settings.redis_url)
        wanted = [(USER_VIEW.name, user_ids), (PRODUCT_VIEW.name, product_ids)]
        users, products = read_views(self._client, self.settings, wanted, as_of)
        return (
            {row.entity_id: row.features for row in users},
            {row.entity_id: row.features for row in products},
        )


class BatchScorer:
    """Answers every request of a batch with the champion's top ``k`` allowed candidates."""

    def __init__(
        self,
        champion: ChampionPoller,
        features: FeatureReader,
        catalog: Catalog,
        default_k: int,
        clock: Clock = time.time,
    ) -> None:
        self.champion = champion
        self.features = features
        self.catalog = catalog
        self.default_k = default_k
        self.clock = clock

    def __call__(self, batches: list[RequestBatch]) -> list[ScoreOut]:
        requests = [request for batch in batches for request in batch.requests]
        if not requests:
            return []
        champion = self.champion.current()
        as_of = self.clock()  # one moment per batch: every request sees the same features
        users, products = self.features.read(
            list(dict.fromkeys(r.user_id for r in requests)),
            list(dict.fromkeys(pid for r in requests for pid in r.candidates)),
            as_of,
        )
        ts = datetime.fromtimestamp(as_of, UTC)
        out = [self._answer(r, champion, users, products, as_of, ts) for r in requests]
        LAST_PROCESSED.labels(flow=FLOW).set(time.time())
        return out

    def _answer(
        self,
        request: ScoreRequest,
        champion: LoadedModel,
        users: Mapping[str, Features],
        products: Mapping[str, Features],
        as_of: float,
        ts: datetime,
    ) -> ScoreOut:
        ranked = recommend(
            champion.model, self.catalog,
            user_id=request.user_id, region=request.region, device=request.device,
            candidates=request.candidates, user_features=users[request.user_id],
            product_features=products, as_of=as_of, k=request.k or self.default_k,
        )  # fmt: skip
        items = [ItemScore(product_id=i.product_id, score=i.score) for i in ranked.items]
        message = ScoreMessage(
            request_id=request.request_id, ts=ts, user_id=request.user_id,
            model=_ref(champion), items=items,
        )  # fmt: skip
        return KafkaSinkMessage(request.user_id.encode(), message.model_dump_json().encode())


def _ref(model: LoadedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, alias=model.alias or CHAMPION)


def kafka_scores_sink(settings: Settings) -> CountingSink[ScoreOut]:
    """The profile's ``ml.scores`` through Bytewax's ``KafkaSink``, counted."""
    brokers = [server.strip() for server in settings.kafka_bootstrap.split(",")]
    config = {"enable.idempotence": "true", "linger.ms": "5"}
    sink = KafkaSink(brokers, settings.topic(settings.topics.scores), add_config=config)
    return CountingSink(sink, FLOW, SCORES_SINK_LABEL)


def _rejects(batch: RequestBatch) -> list[DlqMessage]:
    return batch.rejects


def build_flow(
    settings: Settings,
    *,
    tail: bool = True,
    catalog: Catalog | None = None,
    models: ModelSource | None = None,
    features: FeatureReader | None = None,
    source: FixedPartitionedSource[KafkaBatch, int] | None = None,
    scores_sink: DynamicSink[ScoreOut] | None = None,
    dlq_sink: DynamicSink[DlqMessage] | None = None,
    clock: Clock = time.time,
    poll_clock: Clock = time.monotonic,
) -> Dataflow:
    """The scorer dataflow of the settings' profile (``tail=False`` stops at the end).

    The keyword arguments replace the catalog, the registry, Redis and Kafka in
    tests; a replacement source names its parts ``{partition}-{topic}``.
    """
    catalog = catalog if catalog is not None else load_catalog()
    registry = models if models is not None else Registry(settings)
    store = ModelStore(registry, settings.registered_model_name)
    poller = ChampionPoller(store, settings.serving.model_poll_s, poll_clock)
    reader = features if features is not None else RedisFeatureReader(settings)
    scorer = BatchScorer(poller, reader, catalog, settings.serving.default_k, clock)
    parser = RequestParser(catalog.product_ids, settings.serving.max_candidates)
    source = source or settings_source(settings, [settings.topics.score_requests], tail=tail)

    flow = Dataflow(FLOW_ID)
    messages = op.input("kafka-in", flow, source)
    batches = op.flat_map_batch("parse", messages, parser)
    rejects = op.flat_map("rejects", batches, _rejects)
    op.output("dlq-out", rejects, dlq_sink or kafka_dlq_sink(settings, flow=FLOW))
    scores = op.flat_map_batch("score", batches, scorer)
    op.output("scores-out", scores, scores_sink or kafka_scores_sink(settings))
    return flow


def from_env(tail: bool = True) -> Dataflow:
    """For ``python -m bytewax.run "serving.scorer_flow:from_env()"``: settings from the env."""
    return build_flow(load_settings(), tail=tail)
