"""Send simulated traffic to Kafka and/or JSONL files, optionally paced."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from infra.kafka.producer import Producer
from infra.plantly.simulator import ShopSimulator, SimMessage
from infra.settings import Settings

PROGRESS_EVERY = 5_000
_PACE_EVERY = 100


class TrafficSink(Protocol):
    def write(self, message: SimMessage) -> None: ...

    def close(self) -> None: ...


class KafkaSink:
    """Messages to ``shop.events`` / ``shop.orders`` of the settings' profile."""

    def __init__(self, settings: Settings) -> None:
        self.producer = Producer(settings)
        self.topics = {
            "events": settings.topic(settings.topics.events),
            "orders": settings.topic(settings.topics.orders),
        }
        self._unpolled = 0

    def write(self, message: SimMessage) -> None:
        self.producer.send(self.topics[message.topic], message.value, message.key)
        self._unpolled += 1
        if self._unpolled >= 1_000:
            # serve delivery reports so they do not pile up in memory
            self.producer.poll()
            self._unpolled = 0

    def close(self) -> None:
        self.producer.close()


class JsonlSink:
    """``events.jsonl`` and ``orders.jsonl`` in a folder: one raw payload a line."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, IO[bytes]] = {
            name: (folder / f"{name}.jsonl").open("wb") for name in ("events", "orders")
        }

    def write(self, message: SimMessage) -> None:
        # a truncated (malformed) payload may contain no newline, but one could
        # in principle; keep one message per line by escaping raw newlines
        self.files[message.topic].write(message.value.replace(b"\n", b"\\n") + b"\n")

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


@dataclass
class TrafficReport:
    run_id: str
    events: int = 0
    orders: int = 0
    rejected_by_design: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def send_traffic(
    simulator: ShopSimulator,
    sinks: list[TrafficSink],
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> TrafficReport:
    """Stream every simulated message to every sink; ``rate`` in events/s (None: max)."""
    report = TrafficReport(run_id=simulator.run_id)
    total = simulator.config.events
    start = time.perf_counter()
    due = 0.0  # seconds after start when the next event is scheduled
    try:
        for message in simulator.messages():
            for sink in sinks:
                sink.write(message)
            if message.topic == "orders":
                report.orders += 1
                continue
            report.events += 1
            if message.expected is not None:
                report.rejected_by_design[message.expected.value] += 1
            if rate is not None:
                due += 1.0 / (rate * simulator.traffic_multiplier(report.events / total))
                if report.events % _PACE_EVERY == 0:
                    _sleep_until(start + due)
            if on_progress is not None and report.events % PROGRESS_EVERY == 0:
                on_progress(report.events)
    finally:
        for sink in sinks:
            sink.close()
    report.seconds = time.perf_counter() - start
    if on_progress is not None:
        on_progress(report.events)
    return report


def _sleep_until(deadline: float) -> None:
    ahead = deadline - time.perf_counter()
    if ahead > 0:
        time.sleep(ahead)
