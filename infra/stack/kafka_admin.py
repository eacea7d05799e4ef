"""Topic creation and end offsets, the two things the stack asks of Kafka itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # what .admin re-exports; its stubs do not say so

from infra.errors import StackError
from infra.kafka.reader import partition_ends
from infra.stack.health import kafka_config, short_reason

ADMIN_TIMEOUT_S = 10.0
OFFSETS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class TopicOffsets:
    """How much landed in a topic.

    ``end_offset`` sums the partitions' end offsets; ``messages`` counts the
    records still held (end minus start offset, per partition).
    """

    name: str
    partitions: int
    end_offset: int
    messages: int


def ensure_topics(
    bootstrap: str, names: Sequence[str], partitions: int, timeout: float = ADMIN_TIMEOUT_S
) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created."""
    admin = AdminClient(kafka_config(bootstrap))
    created: list[str] = []
    try:
        existing = admin.list_topics(timeout=timeout).topics
        wanted = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name in names
            if name not in existing
        ]
        # Only missing topics are asked for: Tansu 0.6 took 5 s longer to shut
        # down after answering TOPIC_ALREADY_EXISTS.
        futures = admin.create_topics(wanted, request_timeout=timeout) if wanted else {}
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
                created.append(name)
            except KafkaException as error:
                # Made meanwhile by someone else: there all the same.
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    except KafkaException as error:
        raise StackError(f"kafka: cannot create topics: {short_reason(error)}") from error
    return sorted(created)


def topic_offsets(bootstrap: str, timeout: float = OFFSETS_TIMEOUT_S) -> list[TopicOffsets]:
    """Partition count and total end offset of every non-internal topic."""
    try:
        metadata = AdminClient(kafka_config(bootstrap)).list_topics(timeout=timeout)
        topics = {
            name: sorted(topic.partitions)
            for name, topic in metadata.topics.items()
            if not name.startswith("__")
        }
        marks = partition_ends(
            bootstrap,
            [TopicPartition(name, p) for name, parts in topics.items() for p in parts],
            timeout,
        )
    except KafkaException as error:
        raise StackError(f"kafka: cannot read topic offsets: {short_reason(error)}") from error
    return [
        TopicOffsets(
            name=name,
            partitions=len(parts),
            end_offset=sum(marks[(name, p)][1] for p in parts),
            messages=sum(marks[(name, p)][1] - marks[(name, p)][0] for p in parts),
        )
        for name, parts in sorted(topics.items())
    ]
