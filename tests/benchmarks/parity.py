"""Parity check cost: 200 logged predictions against a 7-day simulated history.

The history (100,000 events over 7 days, as ``make demo`` simulates) goes
through Kafka, the ingest and feature flows; 200 requests that each rank the
whole catalog (the API's default, the largest records: ~530 rows of 21
columns) are answered by the API in process, so ``ml.predictions`` holds real
records. Then ``check_parity`` runs a few times; the phases are timed apart
(reading the topic's tail and parsing, reading the pinned Delta window,
replaying and comparing), and once more with the monitor's 10 s lag allowance.

``python -m tests.benchmarks.parity`` prints one JSON document.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from monitoring.parity import check_parity, check_records, read_events
from monitoring.prediction_sample import newest_predictions
from tests.parity_stack import (
    busiest_users,
    land_history,
    parity_profile,
    register_champion,
    requests_for,
    serve,
)

RECORDS = 200
REPEATS = 3


def bench_parity(settings: Settings, events: int = 100_000, days: float = 7.0) -> dict[str, Any]:
    bench = parity_profile(settings, f"parity{int(time.time())}")
    land_history(bench, SimulationConfig(events=events, seed=17, history_days=days))
    register_champion(bench)
    users = busiest_users(bench, 100)
    serve(bench, requests_for(users, RECORDS, seed=3, catalog_every=1))
    catalog = load_catalog()
    totals, phases = [], []
    report = None
    for _ in range(REPEATS):
        report = check_parity(bench, RECORDS, catalog=catalog)
        totals.append(report.seconds)
        phases.append(_phases(bench, catalog))
    assert report is not None
    forgiving = check_parity(bench, RECORDS, catalog=catalog, lag_allowance_s=10.0)
    tally = report.tally
    return {
        "history_events": events,
        "history_days": days,
        "records": tally.records,
        "rows": tally.values // 21,
        "values_compared": tally.values,
        "values_mismatched": tally.mismatched_values,
        "events_replayed": tally.events_replayed,
        "seconds_median": round(statistics.median(totals), 3),
        "seconds_all": [round(s, 3) for s in totals],
        # the monitor's loop: a second replay 10 s behind (nothing is in flight here)
        "seconds_with_lag_allowance_10s": round(forgiving.seconds, 3),
        "phases_median_s": {
            name: round(statistics.median(p[name] for p in phases), 3) for name in phases[0]
        },
    }


def _phases(settings: Settings, catalog: Any) -> dict[str, float]:
    started = time.perf_counter()
    sample = newest_predictions(settings, RECORDS)
    sampled = time.perf_counter()
    _, events, _ = read_events(settings, sample.records)
    read = time.perf_counter()
    check_records(sample.records, events, catalog)
    done = time.perf_counter()
    return {
        "read_and_parse_log": sampled - started,
        "read_delta": read - sampled,
        "replay_and_compare": done - read,
    }


if __name__ == "__main__":
    from tests.benchmarks.stack import benchmark_stack

    with benchmark_stack() as stack:
        print(json.dumps({"parity": bench_parity(stack)}, indent=2))
