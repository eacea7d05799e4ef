"""Simulator throughput: events/s generated, and events/s acknowledged by the broker."""

from __future__ import annotations

import os
import time
from typing import Any

from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings

TARGET_EVENTS_PER_S = 50_000


def bench_simulator(settings: Settings, events: int = 500_000) -> dict[str, Any]:
    """Run pinned to one core, as the target is stated per core."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    config = SimulationConfig(events=events, seed=1, history_days=7)
    started = time.perf_counter()
    generated = sum(1 for _ in ShopSimulator(config).messages())
    generate_s = time.perf_counter() - started
    report = send_traffic(ShopSimulator(config), [KafkaSink(settings)])
    return {
        "events": events,
        "messages_with_orders": generated,
        "generate_events_per_s": round(events / generate_s),
        "to_broker_events_per_s": round(report.events_per_second),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": report.events_per_second >= TARGET_EVENTS_PER_S,
        "cores_used": 1,
    }
