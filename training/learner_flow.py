"""The learner dataflow: shop.events → one River learner → checkpoints in MLflow.

::

    shop.events ─ kafka-in ─ parse ──────── learn ───────── checkpoint-out
                  (from the   (validate,    (one key:       (a writer thread:
                  checkpoint's LearnerEvent, LearnerState,   model version +
                  offsets)     per batch)    prequential)    state artifact)

River learns serially, so the stateful step has a single key and runs on one
worker; with more workers only the reading and validation spread out. Invalid
messages are skipped (the ingest flow sends them to the DLQ) but still move the
partition's position past them.

**Recovery is from the MLflow checkpoint, not from Bytewax's recovery store.** A
checkpoint must be in the registry anyway (it is a servable model version), and it
carries the exact Kafka offsets its state had consumed, so it alone is enough to
resume: the source starts every partition at those offsets (from the beginning
when there is no checkpoint) and ignores Bytewax's resume state. Two stores could
disagree — a Bytewax snapshot newer than the last registered version would resume
Kafka past events whose learning was never saved — and snapshotting megabytes of
model and pending impressions every epoch would cost more than it saves. Run
it with ``recovery=False``; with recovery on it behaves the same. After a crash
the learner replays from the last written checkpoint's offsets: labeled examples
after it are learned again exactly once, from the same state, none twice.

Metrics (Prometheus, flow ``learner``): ``tributary_learner_labeled_examples_total``
by label, ``tributary_learner_prequential_log_loss``,
``tributary_learner_prequential_roc_auc``, ``tributary_learner_pending_impressions``,
``tributary_learner_checkpoint_seconds``, ``tributary_learner_checkpoint_version``,
``tributary_learner_checkpoint_failures_total``, plus the flows' shared
``events_in``, ``rejects`` and ``last_processed`` series.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge, Histogram

from flows.ingest import now_utc
from flows.kafka_source import KafkaBatch, settings_source
from flows.metrics import EVENTS_IN, LAST_PROCESSED, REJECTS
from infra.contracts import Rejection, ShopEvent, validate
from infra.plantly.catalog import read_catalog_ids
from infra.settings import Settings
from training.checkpoints import (
    Checkpoint,
    CheckpointPolicy,
    CheckpointWriter,
    Write,
    load_latest,
    write_checkpoint,
)
from training.learner_state import LearnerEvent, LearnerState
from training.registry import RegisteredVersion

FLOW = "learner"
FLOW_ID = "tributary-learner"
KEY = "learner"
METRICS_EVERY_S = 2.0  # the rolling AUC costs ~25 ms to read: not per batch

LABELED = Counter(
    "tributary_learner_labeled_examples", "Impressions labeled and learned from.", ["label"]
)
LOG_LOSS = Gauge(
    "tributary_learner_prequential_log_loss", "Prequential (test-then-train) log loss."
)
ROC_AUC = Gauge(
    "tributary_learner_prequential_roc_auc", "Prequential ROC AUC over the latest labeled examples."
)
PENDING = Gauge("tributary_learner_pending_impressions", "Impressions waiting for their label.")
CHECKPOINT_SECONDS = Histogram(
    "tributary_learner_checkpoint_seconds",
    "Time to write one checkpoint to MLflow (off the learning path).",
    buckets=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
)
CHECKPOINT_VERSION = Gauge(
    "tributary_learner_checkpoint_version", "Model version of the newest written checkpoint."
)
CHECKPOINT_FAILURES = Counter(
    "tributary_learner_checkpoint_failures", "Failed attempts to write a checkpoint."
)


@dataclass(frozen=True, slots=True)
class PartBatch:
    """The valid events of one Kafka batch, and the partition's next offset after it."""

    part: str
    events: list[LearnerEvent]
    next_offset: int


@dataclass(frozen=True)
class LearnerStart:
    """Where a run begins: the state, and the checkpoint version it came from."""

    state: LearnerState
    version: int | None = None

    @classmethod
    def load(cls, settings: Settings) -> LearnerStart:
        """The newest checkpoint of the profile, or a fresh learner."""
        restored = load_latest(settings)
        if restored is None:
            knobs = settings.training
            return cls(LearnerState(
                allowed_lateness_s=knobs.learner_allowed_lateness_s,
                max_pending_per_user=knobs.learner_max_pending_per_user,
            ))  # fmt: skip
        return cls(restored.state, restored.version.version)


class CheckpointSource(FixedPartitionedSource[KafkaBatch, int]):
    """Kafka partitions from a checkpoint's offsets; Bytewax's resume state is ignored.

    ``kafka`` is a :class:`~flows.kafka_source.KafkaBatchSource` (or a stand-in whose
    resume state is the next offset to read).
    """

    def __init__(
        self, kafka: FixedPartitionedSource[KafkaBatch, int], starts: Mapping[str, int]
    ) -> None:
        self.kafka = kafka
        self.starts = dict(starts)

    def list_parts(self) -> list[str]:
        return self.kafka.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[KafkaBatch, int]:
        # a partition the checkpoint never read starts at the beginning
        return self.kafka.build_part(step_id, for_part, self.starts.get(for_part))


class Parser:
    """Validates each Kafka batch into one :class:`PartBatch` for the single learner key."""

    def __init__(self, products: frozenset[str], clock: Callable[[], datetime]) -> None:
        self.products = products
        self.clock = clock

    def __call__(self, batches: list[KafkaBatch]) -> list[tuple[str, PartBatch]]:
        now = self.clock()
        out: list[tuple[str, PartBatch]] = []
        reasons: Tally[str] = Tally()
        for batch in batches:
            EVENTS_IN.labels(flow=FLOW, topic=batch.topic).inc(len(batch))
            events: list[LearnerEvent] = []
            for raw in batch.values:
                result = validate(raw, products=self.products, now=now)
                if isinstance(result, Rejection):
                    reasons[result.reason.value] += 1
                    continue
                events.append(_learner_event(result))
            if batch.offsets:
                part = f"{batch.partition}-{batch.topic}"
                out.append((KEY, PartBatch(part, events, batch.offsets[-1] + 1)))
        for reason, count in reasons.items():
            REJECTS.labels(flow=FLOW, reason=reason).inc(count)
        return out


def _learner_event(event: ShopEvent) -> LearnerEvent:
    return LearnerEvent(
        event.event_id, event.event_type, event.event_ts.timestamp(), event.user_id,
        event.product_id, event.region, event.device, event.price, event.quantity,
    )  # fmt: skip


class LearnerLogic(StatefulBatchLogic[PartBatch, Checkpoint, None]):
    """The one learner: feeds the state, emits checkpoints when the policy says so."""

    def __init__(self, start: LearnerStart, policy: CheckpointPolicy) -> None:
        self.state = start.state
        self.resumed_from = start.version
        self.policy = policy
        policy.taken(self.state.counters.events)  # what was restored is saved already
        self._metrics_at = 0.0

    def on_batch(self, values: list[PartBatch]) -> tuple[Iterable[Checkpoint], bool]:
        state = self.state
        labeled, positives = state.counters.labeled, state.counters.positives
        for batch in values:
            state.learn_batch(batch.part, batch.events, batch.next_offset)
        new_positives = state.counters.positives - positives
        LABELED.labels(label="positive").inc(new_positives)
        LABELED.labels(label="negative").inc(state.counters.labeled - labeled - new_positives)
        LAST_PROCESSED.labels(flow=FLOW).set(time.time())
        self._export_metrics(force=False)
        return self._checkpoint_if(self.policy.due(state.counters.events)), self.RETAIN

    def on_notify(self) -> tuple[Iterable[Checkpoint], bool]:
        return self._checkpoint_if(self.policy.due(self.state.counters.events)), self.RETAIN

    def on_eof(self) -> tuple[Iterable[Checkpoint], bool]:
        # the end of the topics (tail=False): save whatever is new
        fresh = self.state.counters.events > self.policy.last_events
        return self._checkpoint_if(fresh), self.RETAIN

    def notify_at(self) -> datetime | None:
        if self.state.counters.events == self.policy.last_events:
            return None  # nothing new to save
        return datetime.fromtimestamp(self.policy.next_time(), UTC)

    def snapshot(self) -> None:
        return None  # recovery is from the MLflow checkpoint (module docstring)

    def _checkpoint_if(self, due: bool) -> list[Checkpoint]:
        if not due:
            return []
        self.policy.taken(self.state.counters.events)
        self._export_metrics(force=True)
        return [Checkpoint.of(self.state, self.resumed_from)]

    def _export_metrics(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._metrics_at < METRICS_EVERY_S:
            return
        self._metrics_at = now
        values = self.state.metric_values()
        if self.state.counters.labeled:
            LOG_LOSS.set(values["log_loss"])
            ROC_AUC.set(values["roc_auc"])
        PENDING.set(self.state.pending_count)


def _written(version: RegisteredVersion, seconds: float) -> None:
    CHECKPOINT_SECONDS.observe(seconds)
    CHECKPOINT_VERSION.set(version.version)


def _failed(error: BaseException) -> None:
    CHECKPOINT_FAILURES.inc()


class _CheckpointPartition(StatelessSinkPartition[Checkpoint]):
    def __init__(self, write: Write) -> None:
        self.writer = CheckpointWriter(write, on_written=_written, on_failed=_failed)

    def write_batch(self, items: list[Checkpoint]) -> None:
        if items:
            self.writer.submit(items[-1])  # the newest holds everything the others did

    def close(self) -> None:
        self.writer.close()


class CheckpointSink(DynamicSink[Checkpoint]):
    """Hands checkpoints to a writer thread on the worker that learns."""

    def __init__(self, write: Write) -> None:
        self.write = write

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CheckpointPartition:
        return _CheckpointPartition(self.write)


def build_flow(
    settings: Settings,
    tail: bool = True,
    *,
    start: LearnerStart | None = None,
    source: FixedPartitionedSource[KafkaBatch, int] | None = None,
    write: Write | None = None,
    checkpoint_events: int | None = None,
    checkpoint_minutes: float | None = None,
    products: frozenset[str] | None = None,
    clock: Callable[[], datetime] = now_utc,
) -> Dataflow:
    """The learner dataflow of the settings' profile (``tail=False`` stops at the end).

    By default it resumes from the profile's newest checkpoint in MLflow and
    checkpoints every ``settings.training.learner_checkpoint_events`` events or
    ``learner_checkpoint_minutes``. Tests replace ``start``, ``source`` (parts named
    ``{partition}-{topic}``, resume state = next offset), ``write`` (the MLflow
    writer) and the cadence.
    """
    start = start if start is not None else LearnerStart.load(settings)
    kafka = source or settings_source(settings, [settings.topics.events], tail=tail)
    every_events = checkpoint_events or settings.training.learner_checkpoint_events
    every_s = 60.0 * (checkpoint_minutes or settings.training.learner_checkpoint_minutes)
    valid_products = read_catalog_ids(settings) if products is None else products
    writer: Write = write or (lambda checkpoint: write_checkpoint(settings, checkpoint))

    def builder(resume: None) -> LearnerLogic:
        return LearnerLogic(start, CheckpointPolicy(every_events, every_s, time.time))

    flow = Dataflow(FLOW_ID)
    messages = op.input("kafka-in", flow, CheckpointSource(kafka, start.state.positions))
    keyed = op.flat_map_batch("parse", messages, Parser(valid_products, clock))
    checkpoints = op.stateful_batch("learn", keyed, builder)
    op.output("checkpoint-out", op.key_rm("unkey", checkpoints), CheckpointSink(writer))
    return flow
