"""Sinks of the dataflows: exactly-once Delta appends, the dead-letter topic."""

from flows.sinks.delta import (
    DeltaPartition,
    DeltaSink,
    DeltaTarget,
    FlushPolicy,
    RowChunk,
    app_id,
    checkpoint,
    compact,
    source_key,
)
from flows.sinks.dlq import CountingSink, DlqMessage, dlq_message, kafka_dlq_sink

__all__ = [
    "CountingSink",
    "DeltaPartition",
    "DeltaSink",
    "DeltaTarget",
    "DlqMessage",
    "FlushPolicy",
    "RowChunk",
    "app_id",
    "checkpoint",
    "compact",
    "dlq_message",
    "kafka_dlq_sink",
    "source_key",
]
