"""The monitor dataflow under one and two workers, with in-memory Kafka and a real Delta table.

Kafka partitions are lists of :class:`KafkaBatch`; the registry is a
:class:`~monitoring.reference.StaticRegistry` (version 3 has a reference
profile, version 4 none, version 9 does not exist); ``monitoring/metrics`` is a
real Delta table under ``tmp_path``. What the monitor must report is computed
here from the generated traffic: counts from the requests, outcomes by brute
force from the events, drift with :mod:`monitoring.stats` on the raw columns.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc
import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, cluster_main, run_main
from deltalake import DeltaTable
from prometheus_client import REGISTRY

from flows.kafka_source import KafkaBatch
from flows.sinks.delta import FlushPolicy, app_id
from flows.sinks.dlq import DlqMessage
from infra.contracts import DlqHeaders, RejectionReason
from infra.plantly.catalog import load_catalog
from infra.plantly.encoding import encode_event
from infra.settings import MonitoringSettings, Settings
from monitoring import stats
from monitoring.metrics_table import APP_PREFIX, SEQ_KEY, TABLE, MetricsPartition, metrics_target
from monitoring.monitor_flow import build_flow
from monitoring.reference import StaticRegistry
from monitoring.sinks import MonitorMessage
from monitoring.windows import MonitorRecord
from tests.monitor_traffic import (
    EVENTS,
    PREDICTIONS,
    BatchListSource,
    Traffic,
    batches,
    by_window,
    expected_outcomes,
    iso,
    make_traffic,
    observed,
    reference_profile,
    user_partition,
    window_of,
)
from training.contract import CATEGORICALS, NUMERIC

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
WINDOW_S = 60.0
START = window_of(ANCHOR.timestamp() - 4 * 3600, WINDOW_S)
# parity has tests of its own; here it would only read a topic nobody wrote to
KNOBS = MonitoringSettings(
    window_s=WINDOW_S,
    allowed_lateness_s=5.0,
    idle_close_s=30.0,
    outcome_lateness_s=120.0,
    parity_every_s=0,
)
PROFILE = reference_profile()
PARTITIONS = 2


def bad_records(good: bytes) -> list[tuple[bytes, RejectionReason, str]]:
    body = orjson.loads(good)
    unknown = {**body, "request_id": "r-unknown", "model": {**body["model"], "version": 9}}
    nan = {**body, "request_id": "r-nan", "features": {**body["features"], "price": [None] * 50}}
    return [
        (b"{not json", RejectionReason.MALFORMED_JSON, "payload"),
        (orjson.dumps({k: v for k, v in body.items() if k != "ts"}), RejectionReason.MISSING_FIELD,
         "ts: missing"),
        (orjson.dumps({**body, "scores": "high"}), RejectionReason.WRONG_TYPE, "scores"),
        (orjson.dumps(nan), RejectionReason.NON_FINITE, "features.price"),
        (orjson.dumps(unknown), RejectionReason.INVALID_VALUE,
         "model.version: plant-recommender has no version 9"),
    ]  # fmt: skip


@dataclass
class Data:
    traffic: Traffic
    parts: dict[str, list[KafkaBatch]]
    bad: dict[int, tuple[RejectionReason, str]]  # offset in partition 0 -> reason, detail


def _sentinels(events: list[tuple[str, bytes, float]], at: float) -> None:
    """An add-to-cart late in every events partition: its time completes every label."""
    pid = load_catalog().plants[0].product_id
    for partition in range(PARTITIONS):
        user = next(
            f"s-{i}" for i in range(99) if user_partition(f"s-{i}".encode(), 2) == partition
        )
        raw = encode_event(f"sent-{partition}", "add_to_cart", at, user, pid, "s", "US-CA",
                           "mobile", 9.99, None, None)  # fmt: skip
        events.append((user, raw, at))


def make_data(seed: int = 5, windows: int = 3, per_window: int = 60) -> Data:
    traffic = make_traffic(START, windows, per_window, window_s=WINDOW_S, seed=seed)
    predictions: list[tuple[bytes | None, bytes]] = [(k, v) for k, v, _ in traffic.predictions]
    bad: dict[int, tuple[RejectionReason, str]] = {}
    for n, (raw, reason, detail) in enumerate(bad_records(predictions[0][1])):
        index = 10 + 40 * n  # even: partition 0 of the round robin
        predictions.insert(index, (b"u-bad", raw))
        bad[index // PARTITIONS] = (reason, detail)
    events = sorted(traffic.events, key=lambda e: e[2])
    _sentinels(events, START + 3 * 3600)
    parts = batches(predictions, PREDICTIONS, PARTITIONS, 25)
    parts |= batches([(u.encode(), v) for u, v, _ in events], EVENTS, PARTITIONS, 40,
                     part_of=lambda i, key: user_partition(key, PARTITIONS))  # fmt: skip
    return Data(traffic, parts, bad)


@dataclass
class Run:
    settings: Settings
    messages: list[dict[str, Any]]
    dlq: list[DlqMessage]
    aborted: bool = False

    def records(self, phase: str) -> dict[tuple[int, str], dict[str, Any]]:
        found = {}
        for body in self.messages:
            if body["phase"] == phase:
                key = (body["model"]["version"], body["window_start"])
                assert key not in found, f"{phase} {key} twice"
                found[key] = body
        return found

    def table(self) -> DeltaTable:
        return DeltaTable(self.settings.table_uri(TABLE))


def settings_in(folder: Path) -> Settings:
    return Settings(metrics_port=0, state_dir=folder, lake_root=str(folder / "lake"),
                    monitoring=KNOBS)  # fmt: skip


def run(
    folder: Path, data: Data, workers: int = 1, *, abort_after: int | None = None,
    recovery: Path | None = None,
) -> Run:  # fmt: skip
    settings = settings_in(folder)
    monitor: list[MonitorMessage] = []
    dlq: list[DlqMessage] = []
    source = BatchListSource(data.parts, abort_after)
    flow = build_flow(
        settings, tail=False, source=source,
        registry=StaticRegistry({3: PROFILE, 4: None}, champion=3),
        monitor_sink=TestingSink(monitor), dlq_sink=TestingSink(dlq),
        products=load_catalog().product_ids, clock=lambda: ANCHOR,
    )  # fmt: skip
    config = None if recovery is None else RecoveryConfig(str(recovery))
    epoch = timedelta(milliseconds=5)
    if workers == 1:
        run_main(flow, epoch_interval=epoch, recovery_config=config)
        if abort_after is not None:  # the first run aborted: resume
            run_main(flow, epoch_interval=epoch, recovery_config=config)
    else:
        cluster_main(flow, [], 0, epoch_interval=epoch, worker_count_per_proc=workers)
    aborted = abort_after is not None and source.abort_after is None
    return Run(settings, [orjson.loads(m.value or b"") for m in monitor], dlq, aborted)


@pytest.fixture(scope="module")
def data() -> Data:
    return make_data()


@pytest.fixture(scope="module")
def runs(data: Data, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Run]:
    return {w: run(tmp_path_factory.mktemp(f"workers{w}"), data, w) for w in (1, 2)}


# -- predictions -----------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_every_window_closes_once_with_the_right_counts(
    runs: dict[int, Run], data: Data, workers: int
) -> None:
    found = runs[workers].records("predictions")
    expected = by_window(data.traffic, WINDOW_S)
    assert set(found) == set(expected) and len(expected) == 6
    for key, requests in expected.items():
        metrics = found[key]["metrics"]
        returned = [score for r in requests for _, score in r.items]
        assert metrics["requests"] == len(requests)
        assert metrics["rows"] == 50 * len(requests)
        assert metrics["shown"] == len(returned)
        assert metrics["mean_score"] == pytest.approx(np.mean(returned))
        assert metrics["estimated_roc_auc"] == pytest.approx(
            stats.estimated_roc_auc(np.array(returned))
        )


def test_drift_is_measured_against_the_versions_profile_with_the_stats_functions(
    runs: dict[int, Run], data: Data
) -> None:
    found = runs[1].records("predictions")
    for (version, window), requests in by_window(data.traffic, WINDOW_S).items():
        if version != 3:
            continue
        body = found[(3, window)]
        assert body["reference"] == {
            "available": True,
            "roc_auc": 0.71,
            "positive_rate": 0.04,
            "estimated_roc_auc": 0.7,
        }
        columns = [r.columns for r in requests]
        for name in NUMERIC:
            values = np.asarray(observed(columns, name), dtype=float)
            counts = stats.numeric_counts(PROFILE.numeric[name].edges, values)
            assert body["features"][name]["psi"] == pytest.approx(
                stats.psi(PROFILE.numeric[name].counts, counts)
            )
        for name in CATEGORICALS:
            current = stats.category_counts(observed(columns, name))
            reference = PROFILE.categorical[name].counts
            assert body["features"][name]["chi2_pvalue"] == pytest.approx(
                stats.chi_square_pvalue(reference, current)
            )
            assert body["features"][name]["js_distance"] == pytest.approx(
                stats.js_distance(reference, current)
            )
        scores = np.concatenate([r.scores for r in requests])
        counts = stats.numeric_counts(PROFILE.score.edges, scores)
        assert body["metrics"]["score_psi"] == pytest.approx(
            stats.psi(PROFILE.score.counts, counts)
        )
        assert body["score_bins"]["shares"] == pytest.approx((counts / counts.sum()).tolist())
        ages = np.array([r.ages for r in requests])
        assert body["feature_age_p95_seconds"]["user"] == pytest.approx(
            np.percentile(ages[:, 0], 95)
        )


def test_a_version_without_a_profile_gets_counts_but_no_drift(runs: dict[int, Run]) -> None:
    found = [body for (v, _), body in runs[1].records("predictions").items() if v == 4]
    assert found and all(body["reference"] == {"available": False} for body in found)
    assert all(body["features"] == {} and "score_psi" not in body["metrics"] for body in found)
    assert all(body["metrics"]["requests"] > 0 for body in found)
    assert REGISTRY.get_sample_value("tributary_monitor_has_reference", {"model_version": "4"}) == 0


# -- outcomes --------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_outcomes_count_what_happened_within_30_minutes_of_each_impression(
    runs: dict[int, Run], data: Data, workers: int
) -> None:
    found = runs[workers].records("outcomes")
    expected = expected_outcomes(data.traffic, WINDOW_S)
    assert set(found) == set(by_window(data.traffic, WINDOW_S))
    for key, values in expected.items():
        metrics = found[key]["metrics"]
        assert metrics["purchases"] < metrics["impressions"]
        for name, value in values.items():
            assert metrics[name] == pytest.approx(value, nan_ok=True), (key, name)
        assert metrics["ctr"] == pytest.approx(values["clicks"] / values["labelled"])
        assert metrics["conversion"] == pytest.approx(values["purchases"] / values["labelled"])
    late = [s for s in data.traffic.shown if s.score is not None and not s.purchased]
    assert late  # the traffic holds purchases after the window: they were not counted


def test_one_and_two_workers_report_the_same(runs: dict[int, Run]) -> None:
    def facts(run: Run) -> dict[tuple[str, int, str], Any]:
        return {
            (b["phase"], b["model"]["version"], b["window_start"]):
                {k: v for k, v in b.items() if k not in ("seq", "emitted_at")}
            for b in run.messages
        }  # fmt: skip

    assert facts(runs[1]) == facts(runs[2])
    for run_ in runs.values():
        assert sorted(b["seq"] for b in run_.messages) == list(range(1, len(run_.messages) + 1))


# -- bad input -------------------------------------------------------------------


def test_bad_records_go_to_the_dlq_with_their_reason(runs: dict[int, Run], data: Data) -> None:
    for run_ in runs.values():
        found = {}
        for message in run_.dlq:
            headers = DlqHeaders.from_kafka(message.headers)
            assert headers.source_topic == PREDICTIONS and headers.source_partition == 0
            found[headers.source_offset] = (headers.reason, headers.detail)
        assert set(found) == set(data.bad)
        for offset, (reason, detail) in data.bad.items():
            assert found[offset][0] is reason and found[offset][1].startswith(detail)
    rejected = REGISTRY.get_sample_value(
        "tributary_flow_rejects_total", {"flow": "monitor", "reason": "invalid_value"}
    )
    assert rejected is not None and rejected >= 2  # the unknown version, once per run


# -- Delta, exactly once ---------------------------------------------------------


def delta_facts(run_: Run) -> list[tuple[Any, ...]]:
    table = run_.table().to_pyarrow_table()
    names = ["seq", "phase", "model_version", "window_start", "metric", "feature", "value"]
    rows = zip(*(table.column(n).to_pylist() for n in names), strict=True)
    return sorted((*row[:-1], "nan" if math.isnan(row[-1]) else round(row[-1], 9)) for row in rows)


def test_delta_holds_each_number_once_with_the_highest_seq_committed(runs: dict[int, Run]) -> None:
    run_ = runs[1]
    table = run_.table()
    facts = delta_facts(run_)
    numbers = sum(
        len(b["metrics"]) + sum(len(f) for f in b.get("features", {}).values())
        + len(b.get("feature_age_p95_seconds", {}))
        + sum(len(shares) for shares in b.get("score_bins", {}).values())
        + (3 if b.get("reference", {}).get("available") else 0)  # AUC, rate, CBPE
        for b in run_.messages
    )  # fmt: skip
    assert len(facts) == len(set(facts)) == numbers > 200
    seqs = pc.unique(table.to_pyarrow_table().column("seq")).to_pylist()
    assert sorted(seqs) == sorted(b["seq"] for b in run_.messages)
    version = table.transaction_version(app_id(APP_PREFIX, TABLE, SEQ_KEY))
    assert version == max(seqs)
    first = run_.messages[0]
    mine = [f for f in facts if f[0] == first["seq"] and f[2] == first["model"]["version"]]
    assert ("requests" if first["phase"] == "predictions" else "impressions") in {
        f[4] for f in mine
    }


def test_a_replay_from_the_beginning_adds_nothing(
    runs: dict[int, Run], data: Data, tmp_path: Path
) -> None:
    folder = tmp_path / "again"
    first = run(folder, data)
    before = delta_facts(first)
    again = run(folder, data)
    assert [b["seq"] for b in again.messages] == [b["seq"] for b in first.messages]
    assert delta_facts(again) == before
    assert before == delta_facts(runs[1])


@pytest.mark.parametrize("abort_after", [7, 30])
def test_a_run_resumed_after_a_crash_ends_like_a_clean_one(
    runs: dict[int, Run], data: Data, tmp_path: Path, abort_after: int
) -> None:
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    resumed = run(tmp_path, data, abort_after=abort_after, recovery=recovery)
    assert resumed.aborted
    assert delta_facts(resumed) == delta_facts(runs[1])
    # ml.monitor is at-least-once: every record came, some maybe twice, same seq
    assert {b["seq"] for b in resumed.messages} == {b["seq"] for b in runs[1].messages}


# -- gauges and the wall clock ---------------------------------------------------


def test_the_gauges_show_each_versions_newest_window(runs: dict[int, Run]) -> None:
    newest = max(
        (b for b in runs[2].messages if b["phase"] == "predictions" and b["model"]["version"] == 3),
        key=lambda b: b["window_start"],
    )
    labels = {"model_version": "3"}
    assert (
        REGISTRY.get_sample_value("tributary_monitor_window_requests", labels)
        == (newest["metrics"]["requests"])
    )
    assert REGISTRY.get_sample_value("tributary_monitor_score_psi", labels) == pytest.approx(
        newest["metrics"]["score_psi"]
    )
    psi = REGISTRY.get_sample_value("tributary_monitor_feature_psi", {**labels, "feature": "price"})
    assert psi == pytest.approx(newest["features"]["price"]["psi"])


class _PausingPartition(StatefulSourcePartition[KafkaBatch, int]):
    """Delivers its batches, then stays quiet until ``seen`` holds a record (or 20 s)."""

    def __init__(self, batches: list[KafkaBatch], seen: list[MonitorMessage]) -> None:
        self.batches, self.seen = list(batches), seen
        self.quiet_since: float | None = None

    def next_batch(self) -> list[KafkaBatch]:
        if self.batches:
            return [self.batches.pop(0)]
        self.quiet_since = self.quiet_since or time.monotonic()
        if self.seen or time.monotonic() - self.quiet_since > 20:
            raise StopIteration()
        return []

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=20) if not self.batches else None

    def snapshot(self) -> int:
        return 0


class PausingSource(FixedPartitionedSource[KafkaBatch, int]):
    def __init__(self, batches: list[KafkaBatch], seen: list[MonitorMessage]) -> None:
        self.batches, self.seen = batches, seen

    def list_parts(self) -> list[str]:
        return [f"0-{PREDICTIONS}"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
        return _PausingPartition(self.batches, self.seen)


def test_a_quiet_input_closes_the_open_windows_after_idle_close_s(
    data: Data, tmp_path: Path
) -> None:
    seen: list[MonitorMessage] = []
    settings = settings_in(tmp_path).model_copy(
        update={"monitoring": KNOBS.model_copy(update={"idle_close_s": 0.3})}
    )
    first = data.parts[f"0-{PREDICTIONS}"][:2]  # a window and a half of partition 0
    flow = build_flow(
        settings, tail=False, source=PausingSource(first, seen),
        registry=StaticRegistry({3: PROFILE, 4: None}), monitor_sink=TestingSink(seen),
        dlq_sink=TestingSink([]), products=frozenset(), clock=lambda: ANCHOR,
    )  # fmt: skip
    started = time.monotonic()
    run_main(flow, epoch_interval=timedelta(milliseconds=20))
    assert seen, "no window closed while the input was quiet"
    assert time.monotonic() - started < 15  # it did not wait for the end of the input
    bodies = [orjson.loads(m.value or b"") for m in seen]
    assert {b["phase"] for b in bodies} == {"predictions"}
    # the second window's newest request is not 65 s past its start: only quiet closes it
    windows = {b["window_start"]: b["metrics"]["requests"] for b in bodies}
    assert set(windows) == {iso(START), iso(START + WINDOW_S)}
    assert 0 < windows[iso(START + WINDOW_S)] < 30


def test_the_table_keeps_records_by_key_when_a_replay_numbers_them_otherwise(
    tmp_path: Path,
) -> None:
    target = metrics_target(settings_in(tmp_path))

    def record(seq: int, start: float, phase: str = "predictions") -> MonitorRecord:
        return MonitorRecord(phase, seq, "plant-recommender", 3, start, start + 60, 1.0,
                             {"requests": start})  # fmt: skip

    first = MetricsPartition(target, FlushPolicy())
    first.write_batch([record(1, 0.0), record(2, 60.0)])
    first.flush()
    first.write_batch([record(3, 120.0, "outcomes")])  # lost in the crash: never committed
    # the replay closed the second window before the first, then the third comes
    replay = MetricsPartition(target, FlushPolicy())
    replay.write_batch([record(1, 60.0), record(2, 0.0), record(3, 120.0, "outcomes")])
    replay.close()
    table = DeltaTable(target.uri)
    rows = table.to_pyarrow_table()
    found = sorted(zip(rows.column("phase").to_pylist(), rows.column("value").to_pylist(),
                       strict=True))  # fmt: skip
    assert found == [("outcomes", 120.0), ("predictions", 0.0), ("predictions", 60.0)]
    assert table.transaction_version(app_id(APP_PREFIX, TABLE, SEQ_KEY)) == 3
    again = MetricsPartition(target, FlushPolicy())
    again.write_batch([record(9, 0.0)])
    again.close()
    assert again.commits == 0
