"""A Kafka source that hands the dataflow one item per Kafka batch, not per message.

Bytewax's ``KafkaSource`` wraps every message in a dataclass and the runtime then
moves each one through every step, which costs more than validating it. The
flows here work on whole batches anyway (validation, tiles, Delta rows), so this
source emits a :class:`KafkaBatch` of parallel lists per poll of a partition.

Partitions are assigned, never subscribed (a group join takes ~23 s on Tansu),
and named ``{partition}-{topic}`` like Bytewax's own source. The resume state
is the next offset to read, so a flow restored from a snapshot re-reads exactly
what came after it. With ``tail=False`` a partition ends at the end-of-partition
signal of the fetch (not at the ListOffsets watermark, which Tansu undercounts).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from infra.settings import Settings

BATCH_SIZE = 5_000
IDLE_WAIT = timedelta(milliseconds=5)


@dataclass(slots=True)
class KafkaBatch:
    """Consecutive messages of one partition: ``offsets[i]`` holds ``values[i]``."""

    topic: str
    partition: int
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)  # broker time, epoch seconds

    def __len__(self) -> int:
        return len(self.offsets)


class _Partition(StatefulSourcePartition[KafkaBatch, int]):
    def __init__(
        self, config: dict[str, Any], topic: str, partition: int, start: int, batch_size: int
    ) -> None:
        self.topic, self.partition, self.batch_size = topic, partition, batch_size
        self.next_offset = start
        self.consumer = Consumer(config)
        self.consumer.assign([TopicPartition(topic, partition, start)])
        self.eof = False
        self.idle = False

    def next_batch(self) -> list[KafkaBatch]:
        if self.eof:
            raise StopIteration
        batch = KafkaBatch(self.topic, self.partition)
        for message in self.consumer.consume(self.batch_size, 0.001):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self.eof = True  # ends after this batch is emitted
                    break
                raise KafkaException(error)
            batch.offsets.append(message.offset() or 0)
            batch.keys.append(message.key())
            batch.values.append(message.value() or b"")
            batch.timestamps.append(message.timestamp()[1] / 1000.0)
        self.idle = not batch.offsets
        if self.idle:
            return []
        self.next_offset = batch.offsets[-1] + 1
        return [batch]

    def next_awake(self) -> datetime | None:
        # an idle partition is polled again shortly, not in a busy loop
        return datetime.now().astimezone() + IDLE_WAIT if self.idle else None

    def snapshot(self) -> int:
        return self.next_offset

    def close(self) -> None:
        self.consumer.close()


class KafkaBatchSource(FixedPartitionedSource[KafkaBatch, int]):
    """Every partition of ``topics``, from the beginning or the resumed offset."""

    def __init__(
        self,
        bootstrap: str,
        topics: list[str],
        *,
        tail: bool = True,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.tail = tail
        self.batch_size = batch_size

    def _config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            # assigned, never joined; a unique id never touches a real group's offsets
            "group.id": f"tributary-flow-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": not self.tail,
            "fetch.wait.max.ms": 10,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }

    def list_parts(self) -> list[str]:
        consumer = Consumer(self._config())
        try:
            metadata = consumer.list_topics(timeout=10.0)
        finally:
            consumer.close()
        parts = []
        for topic in self.topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise KafkaException(f"topic {topic!r} is not available: {info and info.error}")
            parts += [f"{p}-{topic}" for p in info.partitions]
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        index, _, topic = for_part.partition("-")
        start = OFFSET_BEGINNING if resume_state is None else resume_state
        return _Partition(self._config(), topic, int(index), start, self.batch_size)


def settings_source(settings: Settings, topics: list[str], *, tail: bool) -> KafkaBatchSource:
    """The profile's ``topics`` (base names such as ``settings.topics.events``)."""
    names = [settings.topic(topic) for topic in topics]
    return KafkaBatchSource(settings.kafka_bootstrap, names, tail=tail)
