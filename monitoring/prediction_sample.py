"""The newest logged predictions of ``ml.predictions``, parsed strictly for the parity check.

:func:`newest_predictions` reads only the tail of each partition (the last
``n`` messages, by assignment: no consumer-group join), keeps the ``n``
newest by broker timestamp (the moment the API logged them) and parses those
with :func:`parse_prediction`. A record that does not parse is counted by
reason, never fatal: a parity check must not be stopped by the thing it may
be there to find.

The parser (:func:`~training.prediction_records.parse_prediction`) lives in
training, which reads the same records for its logged reference profiles;
its names are re-exported here for the parity check.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from infra.errors import TributaryError
from infra.kafka.reader import partition_ends
from infra.settings import Settings
from training.prediction_records import LoggedPrediction, RecordError, parse_prediction

__all__ = [
    "LoggedPrediction",
    "PredictionSample",
    "PredictionSampleError",
    "RecordError",
    "newest_predictions",
    "parse_prediction",
]


class PredictionSampleError(TributaryError):
    """``ml.predictions`` could not be read (missing topic, broker down)."""

    code = "prediction_log_unreadable"
    http_status = 503


# -- reading the tail of the topic -------------------------------------------------


@dataclass
class PredictionSample:
    """The newest logged predictions, and how many of the newest messages did not parse."""

    records: list[LoggedPrediction]
    unparsed: Counter[str] = field(default_factory=Counter)
    messages: int = 0  # messages selected: records plus unparsed


@dataclass(frozen=True, slots=True)
class _Tail:
    timestamp_ms: int
    partition: int
    offset: int
    value: bytes


def newest_predictions(settings: Settings, n: int, timeout: float = 30.0) -> PredictionSample:
    """The ``n`` newest messages of ``ml.predictions`` (all when fewer), parsed."""
    topic = settings.topic(settings.topics.predictions)
    tail = _read_tail(settings.kafka_bootstrap, topic, n, timeout)
    newest = sorted(tail, key=lambda m: (m.timestamp_ms, m.partition, m.offset))[-n:]
    sample = PredictionSample(records=[], messages=len(newest))
    for message in newest:
        try:
            sample.records.append(parse_prediction(message.value))
        except RecordError as error:
            sample.unparsed[error.reason] += 1
    return sample


def _read_tail(bootstrap: str, topic: str, n: int, timeout: float) -> list[_Tail]:
    """The last ``n`` messages of every partition of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # assigned, never joined: a unique id stays clear of real groups' offsets
            "group.id": f"tributary-parity-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise PredictionSampleError(f"cannot read topic {topic}: {metadata and metadata.error}")
        parts = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        ends = partition_ends(bootstrap, parts, timeout)
        starts = {p: max(low, end - n) for (_, p), (low, end) in ends.items()}
        wanted = {
            p: ends[(topic, p)][1] for p, start in starts.items() if start < ends[(topic, p)][1]
        }
        if not wanted:
            return []
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in wanted])
        return _consume(consumer, wanted, timeout)
    except KafkaException as error:
        raise PredictionSampleError(f"cannot read topic {topic}: {error}") from None
    finally:
        consumer.close()


def _consume(consumer: Consumer, ends: dict[int, int], timeout: float) -> list[_Tail]:
    """Messages until every partition reached the end it had when the read began."""
    deadline = time.monotonic() + timeout
    out: list[_Tail] = []
    while ends:
        batch = consumer.consume(10_000, timeout=0.1)
        if not batch and time.monotonic() > deadline:
            raise PredictionSampleError(f"partitions {sorted(ends)} not read to their end")
        for message in batch:
            error = message.error()
            partition = message.partition() or 0
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                ends.pop(partition, None)
                continue
            out.append(_tail(message, partition))
            if out[-1].offset >= ends.get(partition, 0) - 1:
                ends.pop(partition, None)
    return out


def _tail(message: Message, partition: int) -> _Tail:
    kind, timestamp_ms = message.timestamp()
    return _Tail(
        timestamp_ms=-1 if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms,
        partition=partition,
        offset=message.offset() or 0,
        value=message.value() or b"",
    )
