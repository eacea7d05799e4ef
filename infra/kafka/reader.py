"""Read a topic to its current end, and find true end offsets, by assignment.

Consumer-group joins take ~23 s on Tansu (see NOTES.md), so readers that only
need "everything so far" assign partitions directly. They stop at the
partition-EOF signal, not at the high watermark from ListOffsets: Tansu 0.6
answers ListOffsets with the *first* offset of the last record batch plus one,
which undercounts by the size of that batch. :func:`end_offsets` corrects for
that by fetching the last batch; on a real Kafka cluster it costs one fetch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from infra.settings import Settings


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _consumer(bootstrap: str) -> Consumer:
    # Partitions are only ever assigned, so the group is never joined; a unique
    # id keeps the reader away from any real group's committed offsets.
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"tributary-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "fetch.wait.max.ms": 10,
        }
    )


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    return sorted(metadata.partitions)


def _headers(message: Message) -> list[tuple[str, bytes | None]]:
    # a consumed message carries its headers as a list of pairs
    return cast(list[tuple[str, bytes | None]], message.headers() or [])


def _record(message: Message) -> Record:
    return Record(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value() or b"",
        headers=[(name, value or b"") for name, value in _headers(message)],
    )


def _until_eof(
    consumer: Consumer, partitions: set[tuple[str, int]], timeout: float
) -> Iterator[Record | _Eof]:
    """Records until every partition reported EOF, with an ``_Eof`` marker for each
    partition that gives its end offset."""
    deadline = time.monotonic() + timeout
    while partitions:
        batch = consumer.consume(10_000, timeout=0.1)
        if not batch and time.monotonic() > deadline:
            raise TimeoutError(f"no end of partitions {sorted(partitions)} after {timeout:.0f} s")
        for message in batch:
            error = message.error()
            if error is None:
                yield _record(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                eof = _Eof(message.topic() or "", message.partition() or 0, message.offset() or 0)
                partitions.discard((eof.topic, eof.partition))
                yield eof
            else:
                raise KafkaException(error)


@dataclass(frozen=True, slots=True)
class _Eof:
    topic: str
    partition: int
    end: int


def partition_ends(
    bootstrap: str, partitions: list[TopicPartition], timeout: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """``(low, end)`` of each partition, with the true end (see the module doc)."""
    consumer = _consumer(bootstrap)
    try:
        marks = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=timeout)
            for tp in partitions
        }
        last_batches = [
            TopicPartition(topic, part, max(low, high - 1))
            for (topic, part), (low, high) in marks.items()
            if high > low
        ]
        ends: dict[tuple[str, int], int] = {}
        if last_batches:
            consumer.assign(last_batches)
            pending = {(tp.topic, tp.partition) for tp in last_batches}
            for item in _until_eof(consumer, pending, timeout):
                if isinstance(item, _Eof):
                    ends[(item.topic, item.partition)] = item.end
    finally:
        consumer.close()
    return {key: (low, max(high, ends.get(key, high))) for key, (low, high) in marks.items()}


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The true end offset of every partition of ``topic``."""
    consumer = _consumer(settings.kafka_bootstrap)
    try:
        partitions = _partitions(consumer, topic, timeout)
    finally:
        consumer.close()
    marks = partition_ends(
        settings.kafka_bootstrap, [TopicPartition(topic, p) for p in partitions], timeout
    )
    return {p: marks[(topic, p)][1] for p in partitions}


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> Iterator[Record]:
    """Every message now in ``topic``; order is kept within each partition."""
    consumer = _consumer(settings.kafka_bootstrap)
    try:
        partitions = _partitions(consumer, topic, timeout)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        for item in _until_eof(consumer, {(topic, p) for p in partitions}, timeout):
            if isinstance(item, Record):
                yield item
    finally:
        consumer.close()


def topic_partitions(settings: Settings, topic: str, timeout: float = 10.0) -> list[int]:
    """The partition ids of ``topic``."""
    consumer = _consumer(settings.kafka_bootstrap)
    try:
        return _partitions(consumer, topic, timeout)
    finally:
        consumer.close()


def offsets_for_times(
    settings: Settings, partitions: list[TopicPartition], timeout: float = 10.0
) -> dict[int, int]:
    """Per partition, the first offset whose timestamp is at or after the one given as its
    offset (milliseconds); -1 where there is none.

    Tansu 0.6 answers 0 for any time (measured): a lower bound, never too late,
    so a reader that filters by time still gets every record, only reads more.
    """
    consumer = _consumer(settings.kafka_bootstrap)
    try:
        found = consumer.offsets_for_times(partitions, timeout=timeout)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


def read_partitions(
    settings: Settings, topic: str, ranges: dict[int, tuple[int, int]], timeout: float = 30.0
) -> Iterator[Record]:
    """The records of each partition from ``begin`` up to ``end`` (exclusive), by assignment."""
    pending = {p: end for p, (begin, end) in ranges.items() if begin < end}
    if not pending:
        return
    consumer = _consumer(settings.kafka_bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in pending])
        for item in _until_eof(consumer, {(topic, p) for p in pending}, timeout):
            if isinstance(item, Record) and item.offset < pending.get(item.partition, -1):
                yield item
    finally:
        consumer.close()
