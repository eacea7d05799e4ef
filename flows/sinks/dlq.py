"""The dead-letter topic: original bytes and key, headers that say why and from where.

The DLQ is at-least-once: Bytewax's ``KafkaSink`` cannot undo a send, so a
replay (a restart without recovery, or the epoch after a crash) sends a rejected
message again. Each copy carries the same ``source_topic``/``source_partition``/
``source_offset`` headers, which is the key a DLQ reader deduplicates on.

>>> from bytewax.connectors.kafka import KafkaSourceMessage
>>> from infra.contracts import Rejection, RejectionReason
>>> src = KafkaSourceMessage(b"u1", b"{", topic="shop.events", partition=2, offset=7)
>>> out = dlq_message(src, Rejection(RejectionReason.MALFORMED_JSON, "payload: EOF"))
>>> out.key, out.value, dict(out.headers)["source_offset"]
(b'u1', b'{', b'7')
"""

from __future__ import annotations

from typing import Generic, TypeVar

from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSourceMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.metrics import EVENTS_OUT
from infra.contracts import DlqHeaders, Rejection
from infra.settings import Settings

X = TypeVar("X")

SourceMessage = KafkaSourceMessage[bytes | None, bytes | None]
DlqMessage = KafkaSinkMessage[bytes | None, bytes | None]

DLQ_SINK_LABEL = "dlq"


def dlq_message(message: SourceMessage, rejection: Rejection) -> DlqMessage:
    """The DLQ message of a rejected input: its bytes and key untouched."""
    headers = DlqHeaders(
        reason=rejection.reason,
        detail=rejection.detail,
        source_topic=message.topic or "",
        source_partition=message.partition if message.partition is not None else -1,
        source_offset=message.offset if message.offset is not None else -1,
    )
    return KafkaSinkMessage(key=message.key, value=message.value, headers=headers.to_kafka())


class _CountingPartition(StatelessSinkPartition[X], Generic[X]):
    def __init__(self, inner: StatelessSinkPartition[X], flow: str, label: str) -> None:
        self._inner = inner
        self._counter = EVENTS_OUT.labels(flow=flow, sink=label)

    def write_batch(self, items: list[X]) -> None:
        self._inner.write_batch(items)
        # counted after the write returns, so the metric never runs ahead of Kafka
        self._counter.inc(len(items))

    def close(self) -> None:
        self._inner.close()


class CountingSink(DynamicSink[X], Generic[X]):
    """Wraps a sink to count what it wrote in ``EVENTS_OUT{sink=label}``."""

    def __init__(self, inner: DynamicSink[X], flow: str, label: str = DLQ_SINK_LABEL) -> None:
        self.inner = inner
        self.flow = flow
        self.label = label

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[X]:
        part = self.inner.build(step_id, worker_index, worker_count)
        return _CountingPartition(part, self.flow, self.label)


def kafka_dlq_sink(settings: Settings, flow: str = "ingest") -> CountingSink[DlqMessage]:
    """The profile's ``shop.dlq`` through Bytewax's ``KafkaSink``, counted."""
    brokers = [server.strip() for server in settings.kafka_bootstrap.split(",")]
    # idempotent: a broker retry inside one send must not add a second copy
    config = {"enable.idempotence": "true", "linger.ms": "5"}
    sink = KafkaSink(brokers, settings.topic(settings.topics.dlq), add_config=config)
    return CountingSink(sink, flow)
