"""The feature dataflow: shop.events → entity tiles → Redis (online) + Delta feature log.

::

    shop.events ─ kafka-in ─ parse ─┬─ user shards ────┐               ┌─► redis-out (one pipeline
                  (batches)   (validate, │              ├─ tiles ─ split ┤    per batch, latest
                              shard key) └─ product shards┘ (stateful)  │    state of each entity)
                                                                        └─► features/{view} log

Entities are grouped into :data:`SHARDS` shards per view and each shard is one
``stateful_batch`` key, so the runtime hands a shard all its events of a Kafka
batch at once: per-event work stays in plain Python loops, and an entity that
changed several times in a batch is written to Redis once. Invalid events are
skipped here (the ingest flow sends them to the DLQ).

Recovery: a shard's snapshot holds its entities' tile snapshots; after a crash
the shard is rebuilt from it and Kafka resumes at the snapshotted offsets, so
replayed events rebuild exactly the same tiles. Redis writes are absolute
values and the log's Delta sink skips offsets it already holds, so the replay
changes nothing that was already written. (Bytewax keeps snapshots that a
killed run wrote for epochs it never committed; :mod:`flows.runner` deletes
them before a restart, or a resume could pair a newer shard state with older
offsets.)
"""

from __future__ import annotations

import pickle
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis import Redis

from flows.feature_log import LogBuilder, log_schema, log_table, log_table_of
from flows.features.codec import encode
from flows.features.definitions import get_view
from flows.features.online import DEFAULT_TTL_S
from flows.features.tiles import EntityTiles, TileSnapshot
from flows.ingest import now_utc
from flows.kafka_source import KafkaBatch, KafkaBatchSource, settings_source
from flows.metrics import EVENTS_IN, FRESHNESS_SECONDS, LAST_PROCESSED, REDIS_WRITE_SECONDS, REJECTS
from flows.sinks.delta import DeltaTarget
from flows.sinks.epoch_delta import ColumnChunk, EpochDeltaSink
from infra.contracts import Rejection, ShopEvent, validate
from infra.plantly.catalog import read_catalog_ids
from infra.settings import Settings

FLOW = "features"
FLOW_ID = "tributary-features"
SHARDS = 32
VIEWS = ("user", "product")


@dataclass(frozen=True, slots=True)
class FeatureEvent:
    """The fields of a valid event the features need, and where it was read."""

    event_id: str
    event_type: str
    ts: float
    user_id: str
    product_id: str
    price: float | None
    quantity: int | None
    source: tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class OnlineWrite:
    """An entity's whole encoded state after a batch: idempotent to write."""

    key: str
    value: bytes
    newest_ts: float
    view: str


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Feature-log rows of one view from one source partition, offsets ascending."""

    view: str
    chunk: ColumnChunk


Update = OnlineWrite | LogChunk
ShardItem = tuple[str, list[FeatureEvent]]
"""A view name and events of one shard: the stateful builder is not told its key."""


def shard_key(view: str, entity_id: str) -> str:
    """The stateful key holding ``entity_id``.

    >>> shard_key("user", "u-000042")
    'user:12'
    """
    return f"{view}:{zlib.crc32(entity_id.encode()) % SHARDS}"


class Parser:
    """Validates a Kafka batch and groups its valid events by shard, per view."""

    def __init__(self, products: frozenset[str], clock: Callable[[], datetime]) -> None:
        self.products = products
        self.clock = clock

    def __call__(self, batches: list[KafkaBatch]) -> list[tuple[str, ShardItem]]:
        now = self.clock()
        shards: dict[str, ShardItem] = {}
        reasons: Counter[str] = Counter()
        for batch in batches:
            EVENTS_IN.labels(flow=FLOW, topic=batch.topic).inc(len(batch))
            for offset, raw in zip(batch.offsets, batch.values, strict=True):
                result = validate(raw, products=self.products, now=now)
                if isinstance(result, Rejection):
                    reasons[result.reason.value] += 1
                    continue
                event = _feature_event(result, (batch.topic, batch.partition, offset))
                for view, entity_id in (("user", event.user_id), ("product", event.product_id)):
                    key = shard_key(view, entity_id)
                    item = shards.get(key)
                    if item is None:
                        item = shards[key] = (view, [])
                    item[1].append(event)
        for reason, count in reasons.items():
            REJECTS.labels(flow=FLOW, reason=reason).inc(count)
        return list(shards.items())


def _feature_event(event: ShopEvent, source: tuple[str, int, int]) -> FeatureEvent:
    return FeatureEvent(
        event.event_id, event.event_type, event.event_ts.timestamp(), event.user_id,
        event.product_id, event.price, event.quantity, source,
    )  # fmt: skip


class ShardLogic(StatefulBatchLogic[ShardItem, Update, bytes]):
    """The tiles of every entity of one shard of one view."""

    def __init__(self, prefix: str, resume: bytes | None) -> None:
        self.prefix = prefix  # the Redis key prefix of the profile
        self.view_name = ""
        self.entities: dict[str, EntityTiles] = {}
        if resume is not None:
            saved: tuple[str, dict[str, TileSnapshot]] = pickle.loads(resume)
            self.view_name = saved[0]
            self.entities = {k: EntityTiles.from_snapshot(s) for k, s in saved[1].items()}

    def on_batch(self, values: list[ShardItem]) -> tuple[Iterable[Update], bool]:
        self.view_name = values[0][0]
        events = [event for _, group in values for event in group]
        view, entity_of = get_view(self.view_name), _ENTITY_OF[self.view_name]
        key_prefix = f"{self.prefix}fv:{view.name}:"
        changed: dict[str, float] = {}
        logs: dict[tuple[str, int], tuple[list[int], LogBuilder]] = {}
        for event in events:
            entity_id = entity_of(event)
            tiles = self.entities.get(entity_id)
            if tiles is None:
                tiles = self.entities[entity_id] = EntityTiles()
            tiles.add(event.event_type, event.ts, event.price, event.quantity)
            changed[entity_id] = max(event.ts, changed.get(entity_id, event.ts))
            log = logs.get(event.source[:2])
            if log is None:
                log = logs[event.source[:2]] = ([], LogBuilder(view))
            log[0].append(event.source[2])
            log[1].add(
                entity_id, event.event_id, event.ts, tiles.features(view, event.ts), event.source
            )
        updates: list[Update] = [
            OnlineWrite(f"{key_prefix}{entity_id}", encode(self.entities[entity_id]), ts, view.name)
            for entity_id, ts in changed.items()
        ]
        for (topic, partition), (offsets, builder) in logs.items():
            updates.append(
                LogChunk(view.name, ColumnChunk(topic, partition, offsets, builder.columns))
            )
        return updates, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        # bytes are immutable, as Bytewax requires of snapshots
        saved = {k: t.snapshot() for k, t in self.entities.items()}
        return pickle.dumps((self.view_name, saved))


_ENTITY_OF: dict[str, Callable[[FeatureEvent], str]] = {
    "user": lambda e: e.user_id,
    "product": lambda e: e.product_id,
}


class _RedisPartition(StatelessSinkPartition[OnlineWrite]):
    def __init__(self, url: str) -> None:
        self.client = Redis.from_url(url)

    def write_batch(self, items: list[OnlineWrite]) -> None:
        latest = {item.key: item for item in items}  # a later state supersedes an earlier one
        start = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        for item in latest.values():
            pipe.set(item.key, item.value, ex=DEFAULT_TTL_S)
        pipe.execute()
        done = time.time()
        REDIS_WRITE_SECONDS.labels(flow=FLOW).observe(time.perf_counter() - start)
        for item in latest.values():
            FRESHNESS_SECONDS.labels(flow=FLOW, view=item.view).observe(done - item.newest_ts)
        LAST_PROCESSED.labels(flow=FLOW).set(done)

    def close(self) -> None:
        self.client.close()


class RedisSink(DynamicSink[OnlineWrite]):
    """Pipelined SETs, one round trip per batch, on every worker."""

    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self.url)


def _log_chunk(update: Update, view: str) -> tuple[str, ColumnChunk] | None:
    if not isinstance(update, LogChunk) or update.view != view:
        return None
    return update.chunk.key, update.chunk


def _online(update: Update) -> OnlineWrite | None:
    return update if isinstance(update, OnlineWrite) else None


def build_flow(
    settings: Settings,
    *,
    tail: bool = True,
    products: frozenset[str] | None = None,
    clock: Callable[[], datetime] = now_utc,
    source: KafkaBatchSource | None = None,
    online_sink: DynamicSink[OnlineWrite] | None = None,
) -> Dataflow:
    """The feature dataflow of the settings' profile (``tail=False`` stops at the end).

    ``source`` and ``online_sink`` replace Kafka and Redis in tests; a replacement
    source names its parts ``{partition}-{topic}`` like Kafka's.
    """
    catalog = read_catalog_ids(settings) if products is None else products
    source = source or settings_source(settings, [settings.topics.events], tail=tail)
    prefix = settings.redis_key_prefix
    flow = Dataflow(FLOW_ID)
    messages = op.input("kafka-in", flow, source)
    keyed = op.flat_map_batch("parse", messages, Parser(catalog, clock))
    updates = op.stateful_batch("tiles", keyed, lambda resume: ShardLogic(prefix, resume))
    plain = op.key_rm("unkey", updates)
    online = op.filter_map("online", plain, _online)
    op.output("redis-out", online, online_sink or RedisSink(settings.redis_url))
    for view in VIEWS:
        target = DeltaTarget(
            uri=settings.table_uri(log_table(view)),
            table=log_table(view),
            schema=log_schema(get_view(view)),
            partition_by=["event_date"],
            storage_options=settings.lake_storage_options or None,
            flow=FLOW,
            app_prefix=FLOW_ID,
        )
        rows = op.filter_map(f"{view}-log-rows", plain, partial(_log_chunk, view=view))
        # log rows of one source partition come from shards on every worker, so
        # the log is committed per whole epoch, and off the Redis path
        to_table = partial(log_table_of, get_view(view))
        op.output(f"{view}-log-out", rows, EpochDeltaSink(target, to_table))
    return flow
