"""The monitor dataflow: logged predictions and their outcomes → window statistics.

::

    ml.predictions ─┐                                     ┌ monitor-out ─► ml.monitor
                    ├ kafka-in ─ parse ──┬─ key ─ monitor ┼ delta-out ───► monitoring/metrics
    shop.events ────┘    (check, group,  │   (one key:    └ gauges-out ──► Prometheus gauges
                          bin per batch) │    windows, join)
                                         └─ rejects ─ dlq-out ───────────► shop.dlq

**parse** (every worker, per Kafka batch): a prediction record is checked
strictly (:mod:`monitoring.records`) and its model version against the registry
(:mod:`monitoring.reference`); a refused one goes to ``shop.dlq`` with the
reason in its headers and counts in ``tributary_flow_rejects_total{flow="monitor"}``.
The batch's records are grouped by (version, window); each group's columns are
concatenated once and binned against the version's reference profile
(:func:`monitoring.windows.aggregate`), so only small count vectors travel on.
Events are checked with :func:`infra.contracts.validate`; invalid ones are the
ingest flow's business and skipped, like the learner does.

**monitor** (one key, so one worker): :class:`~monitoring.monitor_state.MonitorState`
merges the pieces into open windows, joins outcomes, closes windows on the
watermarks, on ``idle_close_s`` of quiet (Bytewax ``notify_at``) and at the end
of the input, and numbers what it emits. One key keeps the join and the
windows consistent without coordination; the heavy per-row work is in parse,
which spreads over workers. Measured: ``python -m tests.benchmarks.monitor``.

**Recovery** is Bytewax's: the state is snapshotted with the Kafka offsets
(``tributary run monitor`` turns it on), so a restart resumes where the last
snapshot ended and replays the rest, emitting the same records with the same
``seq`` (or, for records triggered by different partitions close together, in
another order: :mod:`monitoring.metrics_table`). The Delta sink keeps each
record once by its (phase, version, window) key; ``ml.monitor`` readers
deduplicate on that key. Without recovery the topics are read from the
beginning and the state is rebuilt from them: the same records again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import UTC, datetime

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, FixedPartitionedSink

from flows.ingest import now_utc
from flows.kafka_source import KafkaBatch, settings_source
from flows.metrics import EVENTS_IN, LAST_PROCESSED, REJECTS
from flows.sinks.dlq import DlqMessage, SourceMessage, dlq_message, kafka_dlq_sink
from infra.contracts import Rejection, RejectionReason, validate
from infra.plantly.catalog import read_catalog_ids
from infra.settings import Settings, load_settings
from monitoring import metrics
from monitoring.metrics_table import keyed, metrics_sink
from monitoring.monitor_state import EventPart, MonitorState, Part, Pieces, PredictionPart
from monitoring.records import ParsedPrediction, group_columns, outcome_event, parse_prediction
from monitoring.reference import MlflowVersions, ReferenceBook, VersionRegistry
from monitoring.sinks import FLOW, GaugeSink, MonitorMessage, kafka_monitor_sink, monitor_message
from monitoring.windows import MonitorRecord, WindowKey, aggregate, window_start

FLOW_ID = "tributary-monitor"
KEY = "monitor"
Clock = Callable[[], float]


@dataclass(slots=True)
class Parsed:
    """One Kafka batch after parse: the state's piece, and the DLQ messages."""

    part: Part
    rejects: list[DlqMessage] = field(default_factory=list)


class Parser:
    """Checks, groups and bins each Kafka batch (module doc)."""

    def __init__(
        self,
        settings: Settings,
        book: ReferenceBook,
        products: Container[str] | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.predictions_topic = settings.topic(settings.topics.predictions)
        self.model_name = settings.registered_model_name
        self.window_s = settings.monitoring.window_s
        self.book = book
        self.products = products
        self.clock = clock

    def __call__(self, batches: list[KafkaBatch]) -> list[Parsed]:
        out = []
        for batch in batches:
            EVENTS_IN.labels(flow=FLOW, topic=batch.topic).inc(len(batch))
            if not batch.offsets:
                continue
            part = f"{batch.partition}-{batch.topic}"
            if batch.topic == self.predictions_topic:
                out.append(self._predictions(part, batch))
            else:
                out.append(Parsed(self._events(part, batch)))
        return out

    def _predictions(self, part: str, batch: KafkaBatch) -> Parsed:
        groups, rejects = self._groups(batch)
        pieces: Pieces = {}
        newest: float | None = None
        for key, records in groups.items():
            group, refused = group_columns(records)
            rejects += [self._reject(batch, record.index, why) for record, why in refused]
            if not group.records:
                continue
            requests = [record.request for record in group.records]
            pieces[key] = (aggregate(group, self.book.profile(key[0])), requests)
            top = max(request.ts for request in requests)
            newest = top if newest is None else max(newest, top)
            metrics.REQUESTS.labels(str(key[0])).inc(len(requests))
        return Parsed(PredictionPart(part, newest, pieces), rejects)

    def _groups(
        self, batch: KafkaBatch
    ) -> tuple[dict[WindowKey, list[ParsedPrediction]], list[DlqMessage]]:
        now = self.clock().timestamp()
        groups: dict[WindowKey, list[ParsedPrediction]] = {}
        rejects: list[DlqMessage] = []
        for index, raw in enumerate(batch.values):
            parsed = parse_prediction(raw, model_name=self.model_name, now=now)
            if isinstance(parsed, Rejection):
                rejects.append(self._reject(batch, index, parsed))
                continue
            request = parsed.request
            if not self.book.known(request.version):
                detail = f"model.version: {self.model_name} has no version {request.version}"
                why = Rejection(RejectionReason.INVALID_VALUE, detail)
                rejects.append(self._reject(batch, index, why))
                continue
            parsed.index = index
            key = (request.version, window_start(request.ts, self.window_s))
            groups.setdefault(key, []).append(parsed)
        return groups, rejects

    def _reject(self, batch: KafkaBatch, index: int, rejection: Rejection) -> DlqMessage:
        REJECTS.labels(flow=FLOW, reason=rejection.reason.value).inc()
        source: SourceMessage = KafkaSourceMessage(
            batch.keys[index], batch.values[index], topic=batch.topic,
            partition=batch.partition, offset=batch.offsets[index],
        )  # fmt: skip
        return dlq_message(source, rejection)

    def _events(self, part: str, batch: KafkaBatch) -> EventPart:
        now = self.clock()
        newest: float | None = None
        events = []
        for raw in batch.values:
            result = validate(raw, products=self.products, now=now)
            if isinstance(result, Rejection):
                continue
            ts = result.event_ts.timestamp()
            if newest is None or ts > newest:
                newest = ts
            event = outcome_event(result)
            if event is not None:
                events.append(event)
        return EventPart(part, newest, events)


class MonitorLogic(StatefulBatchLogic[Part, MonitorRecord, bytes]):
    """The one monitor: feeds the state, emits its records, wakes up on quiet."""

    def __init__(self, state: MonitorState, wall: Clock, stop: Callable[[], None]) -> None:
        self.state = state
        self.wall = wall
        self.stop = stop  # the champion poller's, at the end of the input
        self._dropped: Counter[str] = Counter(state.dropped())

    def on_batch(self, values: list[Part]) -> tuple[list[MonitorRecord], bool]:
        records = self.state.consume(values, self.wall())
        LAST_PROCESSED.labels(flow=FLOW).set(time.time())
        self._export()
        return records, self.RETAIN

    def on_notify(self) -> tuple[list[MonitorRecord], bool]:
        records = self.state.on_idle(self.wall())
        self._export()
        return records, self.RETAIN

    def on_eof(self) -> tuple[list[MonitorRecord], bool]:
        records = self.state.finish(self.wall())
        self._export()
        self.stop()
        return records, self.RETAIN

    def notify_at(self) -> datetime | None:
        at = self.state.next_wakeup(self.wall())
        return None if at is None else datetime.fromtimestamp(at, UTC)

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def _export(self) -> None:
        for kind, count in self.state.held().items():
            metrics.HELD.labels(kind).set(count)
        dropped = Counter(self.state.dropped())
        for reason, count in (dropped - self._dropped).items():
            metrics.DROPPED.labels(reason).inc(count)
        self._dropped = dropped


class LogicBuilder:
    """Makes the monitor's logic, new or from a snapshot, when its first item arrives."""

    def __init__(
        self,
        settings: Settings,
        kafka: FixedPartitionedSource[KafkaBatch, int],
        book: ReferenceBook,
        wall: Clock,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.book = book
        self.wall = wall

    def __call__(self, resume: bytes | None) -> MonitorLogic:
        settings = self.settings
        if resume is None:
            state = MonitorState(settings.monitoring, settings.registered_model_name)
        else:
            state = MonitorState.restore(resume)
        topic = settings.topic(settings.topics.predictions)
        parts = self.kafka.list_parts()  # at the start of the run, not when the flow is built
        predicted = [p for p in parts if p.partition("-")[2] == topic]
        others = [p for p in parts if p not in predicted]
        state.attach(self.book.profile, predicted, others, self.wall())
        self.book.start()
        return MonitorLogic(state, self.wall, self.book.stop)


def _rejects(parsed: Parsed) -> list[DlqMessage]:
    return parsed.rejects


def _keyed(parsed: Parsed) -> tuple[str, Part]:
    return KEY, parsed.part


def build_flow(
    settings: Settings,
    tail: bool = True,
    *,
    source: FixedPartitionedSource[KafkaBatch, int] | None = None,
    registry: VersionRegistry | None = None,
    monitor_sink: DynamicSink[MonitorMessage] | None = None,
    dlq_sink: DynamicSink[DlqMessage] | None = None,
    delta_sink: FixedPartitionedSink[MonitorRecord, None] | None = None,
    gauge_sink: DynamicSink[MonitorRecord] | None = None,
    products: Container[str] | None = None,
    clock: Callable[[], datetime] = now_utc,
    wall: Clock = time.time,
) -> Dataflow:
    """The monitor dataflow of the settings' profile (``tail=False`` stops at the end).

    Tests replace the Kafka ``source`` (parts named ``{partition}-{topic}``,
    resume state = next offset), the ``registry`` (MLflow), the sinks, the
    catalog's ``products`` and the clocks: ``clock`` bounds event and record
    times, ``wall`` times the idle close.
    """
    topics = settings.topics
    kafka = source or settings_source(settings, [topics.predictions, topics.events], tail=tail)
    book = ReferenceBook(registry or MlflowVersions(settings), settings.monitoring.reference_poll_s)
    valid = read_catalog_ids(settings) if products is None else products
    builder = LogicBuilder(settings, kafka, book, wall)
    flow = Dataflow(FLOW_ID)
    messages = op.input("kafka-in", flow, kafka)
    parsed = op.flat_map_batch("parse", messages, Parser(settings, book, valid, clock))
    dlq = dlq_sink or kafka_dlq_sink(settings, flow=FLOW)
    op.output("dlq-out", op.flat_map("rejects", parsed, _rejects), dlq)
    states = op.stateful_batch("monitor", op.map("key", parsed, _keyed), builder)
    records = op.key_rm("unkey", states)
    kafka_out = monitor_sink or kafka_monitor_sink(settings)
    op.output("monitor-out", op.map("encode", records, monitor_message), kafka_out)
    delta = delta_sink or metrics_sink(settings)
    op.output("delta-out", op.map("to-table", records, keyed), delta)
    op.output("gauges-out", records, gauge_sink or GaugeSink(settings))
    return flow


def from_env(tail: bool = True) -> Dataflow:
    """For ``python -m bytewax.run "monitoring.monitor_flow:from_env()"``: settings from the env."""
    return build_flow(load_settings(), tail=tail)
