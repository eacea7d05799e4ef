"""Read a topic from the beginning to its current end, by partition assignment.

Consumer-group joins take ~23 s on Tansu (see NOTES.md), so readers that only
need "everything so far" assign partitions directly and stop at the high
watermarks taken when they start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from infra.settings import Settings


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "tributary-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of ``topic``."""
    consumer = _consumer(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in metadata.partitions
        }
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> Iterator[Record]:
    """Every message now in ``topic``, partition by partition order preserved."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            batch = consumer.consume(10_000, timeout=timeout)
            if not batch:
                raise TimeoutError(f"{topic}: no message for {timeout:.0f} s")
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue  # the watermarks decide when to stop
                    raise KafkaException(error)
                partition, offset = message.partition(), message.offset()
                if partition in ends and offset < ends[partition]:
                    yield Record(
                        topic, partition, offset, message.key(), message.value(),
                        list(message.headers() or []),
                    )  # fmt: skip
                    if offset + 1 >= ends[partition]:
                        del ends[partition]
    finally:
        consumer.close()
