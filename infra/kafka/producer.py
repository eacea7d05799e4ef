"""A producer tuned for throughput that still refuses to lose messages silently.

Idempotence keeps retries from duplicating messages; delivery failures are
counted by a callback and surfaced by :meth:`Producer.close`.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as _Producer

from infra.errors import TributaryError
from infra.settings import Settings

_LOG = logging.getLogger("infra.kafka.producer")


class DeliveryError(TributaryError):
    """Some messages were not acknowledged by the broker."""

    code = "delivery_failed"
    http_status = 503


class Producer:
    """A thin wrapper: back-pressure on a full queue, and a failure count."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 512 * 1024,
            "on_delivery": self._on_delivery,
            # librdkafka's own log lines (e.g. a broker closing an idle
            # connection) go through logging instead of raw stderr
            "logger": _LOG,
            **overrides,
        }
        self._producer = _Producer(config)
        self.failed = 0
        self.last_error: str | None = None

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed += 1
            self.last_error = str(error)

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                # the local queue is full: let the broker catch up
                self._producer.poll(0.05)

    def poll(self) -> None:
        self._producer.poll(0)

    def close(self, timeout: float = 30.0) -> None:
        """Wait for every message; raise if any was not delivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} messages still queued after {timeout:.0f} s")
        if self.failed:
            raise DeliveryError(f"{self.failed} messages failed: {self.last_error}")
