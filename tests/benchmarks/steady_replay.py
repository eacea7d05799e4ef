"""False alarms of the monitor's alert rules on a week of steady traffic, replayed in event time.

:mod:`tests.steady_traffic` simulates plantly.shop at a constant rate: a first
model, trained on a week of the shop's own picks, serves ``warm_days`` (so the
30-day features are warm, and look back on model-picked traffic only) and the
``train_days`` window; a River model and its reference profile are trained on
that window as ``tributary train`` does and serve the replay week: each
session's request is logged as the API logs it and the shown plants'
impressions carry its ``request_id``. The week's predictions and shop events
go, in event-time order, through the monitor's own code — the flow's
:class:`~monitoring.monitor_flow.Parser` and a
:class:`~monitoring.monitor_state.MonitorState` per configuration, without
Bytewax — in Kafka-sized batches (:data:`PREDICTION_BATCH` records,
:data:`EVENT_BATCH` events) over :data:`PARTITIONS` partitions per topic keyed
by user. Every monitor rule is then evaluated on the emitted windows
(:mod:`tests.alert_replay`): how many windows it saw, how many its guard let
through, how many crossed its threshold, whether it would have fired, and its
statistic's worst value, within the guard and without it.

Configurations: production (``window_s`` 300) and the demo's (60), both with the
contract's 30-minute label window (the demo shortens it only because its live
sessions happen in an instant), and two sized for the rules' guards
(:data:`GUARDED`): a week of 5-minute windows of 300 requests each is ~600,000
requests served and monitored in process, more than a benchmark can afford,
and the statistics' noise is set by what a window holds, not by how long it
lasts. ``--bootstrap none`` replays a first deployment instead (the shop picked
what the training window shows, as in the demo's history).

Measured (the default run: 100,000 events a day, 5,000 users, 55,254 requests
in the week; ~2,070 s of one core, 3.8 GB at most): in windows of 345-431
requests (``guard_requests``) and 575-680 (``guard_labelled``, 3,952-4,320
labelled items) no drift or performance rule crosses its threshold: largest
feature PSI 0.132 (``user_purchases_30d``), region JS distance 0.175, score PSI
0.018, candidate CBPE 0.019 under the reference's, realised AUC 0.017 under
the promised one, conversion 0.893 of the promised. Production and demo windows
hold 13-44 and 1-14 requests, so the guards keep those rules from evaluating.
``TributaryConceptDrift`` fires in every configuration: ADWIN (delta 0.002) cut
the error stream 8-13 times in the week and never once the same errors are
shuffled, because the errors of one request's shown items are correlated (lag
1-20 autocorrelation 0.025-0.035), which its bound assumes away; delta 1e-5 cut
it 0 times (once in the demo's order), 1e-6 never.

Run alone: ``python -m tests.benchmarks.steady_replay [--events-per-day N]
[--users N] [--days N] [--bootstrap warm-up|training|none] [--keep FILE]``; it
needs no running stack.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike

from flows.kafka_source import KafkaBatch
from infra.plantly.catalog import Catalog, load_catalog
from infra.plantly.encoding import encode_event
from infra.settings import MonitoringSettings, Settings
from monitoring.concept import ConceptDriftDetector
from monitoring.monitor_flow import Parser
from monitoring.monitor_state import MonitorState
from monitoring.reference import ReferenceBook, StaticRegistry
from monitoring.windows import MonitorRecord
from tests.alert_replay import evaluate_all, load_rules
from tests.monitor_traffic import user_partition
from tests.steady_traffic import SteadyConfig, Trained, simulate

PARTITIONS: Final = 4
PREDICTION_BATCH: Final = 100  # ~100 KB records: a ~10 MB fetch, what librdkafka hands over
EVENT_BATCH: Final = 1_000
EVENTS_TOPIC: Final = "shop.events"
WALL: Final = 0.0  # one wall-clock instant: no partition ever looks idle in a replay
WINDOWS: Final = {"production": 300.0, "demo": 60.0}


@dataclass
class MonitorFeed:
    """One monitor configuration, fed the replay week in Kafka-sized batches."""

    name: str
    knobs: MonitoringSettings
    config: SteadyConfig
    catalog: Catalog
    records: list[MonitorRecord] = field(default_factory=list)
    seconds: float = 0.0
    rejected: int = 0  # prediction records the parse step refused (to the DLQ): 0 expected

    def __post_init__(self) -> None:
        settings = Settings(metrics_port=0, monitoring=self.knobs)
        self.registry = StaticRegistry({})  # the replay model joins it once trained
        book = ReferenceBook(self.registry, poll_s=3600.0)
        # validation's "now": at the closing events, within 30 days of every event of the run
        now = datetime.fromtimestamp(closing_ts(self.config, self.knobs) + 60, UTC)
        self.parser = Parser(settings, book, self.catalog.product_ids, lambda: now)
        self.state = MonitorState(self.knobs, settings.registered_model_name)
        self.topics = (self.parser.predictions_topic, EVENTS_TOPIC)
        self.state.attach(book.profile, _parts(self.topics[0]), _parts(EVENTS_TOPIC), WALL)
        self.open: dict[tuple[str, int], KafkaBatch] = {}
        self.offsets: dict[tuple[str, int], int] = {}

    def add(self, topic: str, key: bytes, value: bytes) -> None:
        partition = user_partition(key, PARTITIONS)
        batch = self.open.get((topic, partition))
        if batch is None:
            batch = self.open[(topic, partition)] = KafkaBatch(topic, partition)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        batch.offsets.append(offset)
        batch.keys.append(key)
        batch.values.append(value)
        batch.timestamps.append(0.0)
        size = PREDICTION_BATCH if topic == self.topics[0] else EVENT_BATCH
        if len(batch) >= size:
            del self.open[(topic, partition)]
            self._deliver(batch)

    def _deliver(self, batch: KafkaBatch) -> None:
        started = time.perf_counter()
        parsed = self.parser([batch])
        self.rejected += sum(len(found.rejects) for found in parsed)
        self.records += self.state.consume([found.part for found in parsed], WALL)
        self.seconds += time.perf_counter() - started

    def close(self, closing: list[tuple[bytes, bytes]]) -> None:
        """Deliver what is left, then ``closing`` events that move every partition's time on
        past the last label window; close what is open."""
        for where in sorted(self.open):
            self._deliver(self.open.pop(where))
        for key, value in closing:
            self.add(EVENTS_TOPIC, key, value)
        for where in sorted(self.open):
            self._deliver(self.open.pop(where))
        started = time.perf_counter()
        self.records += self.state.finish(WALL)
        self.seconds += time.perf_counter() - started


def _parts(topic: str) -> list[str]:
    return [f"{partition}-{topic}" for partition in range(PARTITIONS)]


class RecordingDetector(ConceptDriftDetector):
    """The monitor's concept-drift detector, keeping the errors it saw (to look into
    its detections); the state uses it because it finds it already in place."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[np.ndarray] = []

    def update_many(self, errors: ArrayLike) -> int:
        values = np.asarray(errors, dtype=np.float64)
        self.errors.append(values)
        return super().update_many(values)


@dataclass
class Monitors:
    """The :class:`~tests.steady_traffic.TrafficSink` of the run: every feed gets everything."""

    feeds: list[MonitorFeed]
    trained: Trained | None = None

    def start(self, trained: Trained) -> None:
        self.trained = trained
        for feed in self.feeds:
            feed.registry.profiles[trained.version] = trained.profile
            feed.state.detectors[trained.version] = RecordingDetector()

    def prediction(self, key: bytes, value: bytes, ts: float) -> None:
        for feed in self.feeds:
            feed.add(feed.topics[0], key, value)

    def event(self, key: bytes, value: bytes, ts: float) -> None:
        for feed in self.feeds:
            feed.add(EVENTS_TOPIC, key, value)


def closing_ts(config: SteadyConfig, knobs: MonitoringSettings) -> float:
    """When the closing events happen: past the run's last label window and lateness."""
    return config.replay_end + config.tail_s + knobs.outcome_lateness_s + knobs.label_window_s + 900


def closing_events(config: SteadyConfig, knobs: MonitoringSettings, catalog: Catalog) -> list[
    tuple[bytes, bytes]
]:  # fmt: skip
    """One event per partition, late enough that every label of the run is final."""
    ts = closing_ts(config, knobs)
    product = next(iter(catalog))
    out = []
    for partition in range(PARTITIONS):
        user = next(
            f"u-close-{i}" for i in range(1000)
            if user_partition(f"u-close-{i}".encode(), PARTITIONS) == partition
        )  # fmt: skip
        value = encode_event(
            f"e-close-{partition}", "add_to_cart", ts, user, product, "s-close", "US-CA",
            "mobile", catalog[product].price, None, None,
        )  # fmt: skip
        out.append((user.encode(), value))
    return out


EVENTS_PER_SESSION: Final = 12.9
"""Events per session while a model picks what is shown (measured; the shop's own picks
give 9.0: a model's picks are clicked and bought more)."""
GUARDED: Final = {"guard_requests": 360.0, "guard_labelled": 600.0}
"""Requests per window of the two configurations sized for the guards: just over the
drift rules' 300 requests (their noisiest evaluated windows), and enough for the
performance rules' 3,000 labelled items (~6.5 shown and labelled per request)."""


def guarded_windows(config: SteadyConfig) -> dict[str, float]:
    """Window lengths, whole 5 minutes, that hold :data:`GUARDED` requests on average."""
    per_s = config.events_per_day / EVENTS_PER_SESSION / 86_400 / config.ask_every
    return {name: 300.0 * math.ceil(requests / per_s / 300) for name, requests in GUARDED.items()}


# -- the report -------------------------------------------------------------------


def feed_report(feed: MonitorFeed, rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rule outcomes on the replay week's windows, and what the windows held."""
    config = feed.config
    start, end = config.replay_start, config.replay_end
    week = [r for r in feed.records if r.window_end <= end and r.window_start >= start]
    predictions = [r for r in week if r.phase == "predictions"]
    outcomes = [r for r in week if r.phase == "outcomes"]
    return {
        "window_s": feed.knobs.window_s,
        "label_window_s": feed.knobs.label_window_s,
        "windows": {"predictions": len(predictions), "outcomes": len(outcomes)},
        "requests_per_window": _spread([r.metrics["requests"] for r in predictions]),
        "labelled_per_window": _spread([r.metrics["labelled"] for r in outcomes]),
        "conversion": _spread([r.metrics["conversion"] for r in outcomes]),
        "expected_conversion": _spread([r.metrics["expected_conversion"] for r in outcomes]),
        "rules": _hours(evaluate_all(week, feed.knobs.window_s, rules), start),
        "dropped": {k: v for k, v in feed.state.dropped().items() if v},
        "rejected": feed.rejected,
        "monitor_seconds": round(feed.seconds, 1),
    }


def _hours(rules: dict[str, dict[str, Any]], start: float) -> dict[str, dict[str, Any]]:
    """When each incident fired, in hours into the replay week (the first 20)."""
    for found in rules.values():
        at = found.pop("fired_at")
        found["fired_at_h"] = [round((end - start) / 3600, 2) for end in at[:20]]
    return rules


def _spread(values: list[float]) -> dict[str, float] | None:
    finite = [v for v in values if v == v]
    if not finite:
        return None
    return {"min": round(min(finite), 4), "median": round(statistics.median(finite), 4),
            "max": round(max(finite), 4)}  # fmt: skip


def fired(report: dict[str, Any]) -> dict[str, list[str]]:
    """The rules that would have fired, per configuration."""
    return {
        name: [alert for alert, found in feed["rules"].items() if found["fired"]]
        for name, feed in report["monitors"].items()
    }


def bench_steady_replay(
    config: SteadyConfig | None = None,
    windows: dict[str, float] | None = None,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Simulate, train, serve and monitor; the report (see the module doc).

    ``windows``: the monitor configurations by name, ``window_s`` each (default:
    :data:`WINDOWS` and :func:`guarded_windows`). ``keep``: a file to pickle the
    report, every window record and the error streams the concept-drift
    detectors saw into, to look into what fired.
    """
    config = config or SteadyConfig()
    catalog = load_catalog()
    windows = windows or {**WINDOWS, **guarded_windows(config)}
    feeds = [MonitorFeed(name, MonitoringSettings(window_s=w, parity_every_s=0), config, catalog)
             for name, w in windows.items()]  # fmt: skip
    monitors = Monitors(feeds)
    started = time.perf_counter()
    front = simulate(config, monitors, catalog)
    for feed in feeds:
        feed.close(closing_events(config, feed.knobs, catalog))
    seconds = time.perf_counter() - started
    trained = monitors.trained
    if trained is None:
        raise RuntimeError("the replay week never started: no session asked the storefront")
    rules = load_rules()
    report: dict[str, Any] = {
        "config": {**asdict(config), "anchor": config.anchor.isoformat()},
        "traffic": asdict(front.stats),
        "training": _training(trained),
        "monitors": {feed.name: feed_report(feed, rules) for feed in feeds},
        "seconds": {
            "total": round(seconds, 1),
            "training": round(sum(model.seconds for model in front.models), 1),
            "storefront_requests": round(front.stats.request_seconds, 1),
            "monitors": round(sum(feed.seconds for feed in feeds), 1),
        },
    }
    report["fired"] = fired(report)
    if keep is not None:
        _keep(keep, report, feeds, trained.version)
    return report


def _keep(path: Path, report: dict[str, Any], feeds: list[MonitorFeed], version: int) -> None:
    errors = {}
    for feed in feeds:
        detector = feed.state.detectors.get(version)
        if isinstance(detector, RecordingDetector) and detector.errors:
            errors[feed.name] = np.concatenate(detector.errors)
    kept = {"report": report, "records": {f.name: f.records for f in feeds}, "errors": errors}
    path.write_bytes(pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL))


def _training(trained: Trained) -> dict[str, Any]:
    profile = trained.profile
    return {
        "rows": trained.rows, "train_rows": trained.train_rows,
        "validation_rows": trained.validation_rows, "label_rate": round(trained.label_rate, 5),
        "valid_auc": round(trained.valid_auc, 4), "reference_requests": trained.reference_requests,
        "reference_rows": profile.rows,
        "reference_estimated_roc_auc": round(profile.estimated_roc_auc, 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-day", type=int, default=SteadyConfig.events_per_day)
    parser.add_argument("--users", type=int, default=SteadyConfig.users)
    parser.add_argument("--days", type=float, default=SteadyConfig.replay_days)
    parser.add_argument(
        "--bootstrap", choices=["warm-up", "training", "none"], default=SteadyConfig.bootstrap,
        help="who picks what is shown before the replay (SteadyConfig.bootstrap)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, help="pickle the records and error streams here")
    args = parser.parse_args()
    config = SteadyConfig(events_per_day=args.events_per_day, users=args.users,
                          replay_days=args.days, bootstrap=args.bootstrap)  # fmt: skip
    print(json.dumps(bench_steady_replay(config, keep=args.keep), indent=2))


if __name__ == "__main__":
    main()
