"""The monitor flow on the real stack: Kafka in and out, the MLflow registry, Delta.

A version is registered in MLflow with a reference profile (no training: a
small scorer and a profile of synthetic traffic), prediction records encoded
by serving's log and their impressions, clicks and purchases are produced to
the profile's real topics, and ``tributary run monitor`` runs through
:mod:`flows.runner` until the topics' end. ``ml.monitor``, ``shop.dlq`` and the
Delta table ``monitoring/metrics`` are then read back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from flows.runner import RunPlan, run_process
from flows.sinks.delta import app_id
from infra.contracts import DlqHeaders, RejectionReason
from infra.kafka.producer import Producer
from infra.kafka.reader import read_topic
from infra.plantly.catalog import load_catalog
from infra.plantly.encoding import encode_event
from infra.settings import MonitoringSettings, Settings
from monitoring.metrics_table import APP_PREFIX, SEQ_KEY, TABLE
from tests.monitor_traffic import (
    Traffic,
    by_window,
    expected_outcomes,
    make_traffic,
    reference_profile,
    window_of,
)
from training.contract import Rows, assemble_rows
from training.profiles import log_profile
from training.pyfunc import RecommenderModel
from training.registry import Registry, configure, experiment_name, log_recommender

pytestmark = pytest.mark.integration

WINDOW_S = 60.0
# parity has tests of its own; here it would only read a topic nobody wrote to
KNOBS = MonitoringSettings(
    window_s=WINDOW_S,
    allowed_lateness_s=5.0,
    idle_close_s=30.0,
    outcome_lateness_s=120.0,
    parity_every_s=0,
)


class CtrScorer:
    """Scores by the product's CTR; the monitor never calls it, the registry needs one."""

    kind = "test-ctr"

    def score(self, rows: Rows) -> np.ndarray:
        ctr = np.asarray(rows["product_ctr_24h"], dtype=np.float64)
        scores: np.ndarray = ctr / (ctr + 0.1)
        return scores


def register_with_profile(settings: Settings) -> int:
    configure(settings)
    mlflow.set_experiment(experiment_name(settings))
    pid = load_catalog().plants[0].product_id
    example = pd.DataFrame(
        assemble_rows("u-1", "US-CA", "mobile", {}, [(pid, {})], load_catalog(), 0.0)
    )
    with mlflow.start_run():
        log_profile(reference_profile())
        version = log_recommender(
            settings, RecommenderModel(CtrScorer()), input_example=example, delta_versions={}
        )
    Registry(settings).make_champion(version.version)
    return version.version


def produce(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(settings)
    for key, value in messages:
        producer.send(settings.topic(topic), value, key)
    producer.close()


def monitor_messages(settings: Settings) -> list[dict[str, Any]]:
    records = read_topic(settings, settings.topic(settings.topics.monitor))
    out = []
    for record in records:
        body = json.loads(record.value)
        assert record.key == str(body["model"]["version"]).encode()
        out.append(body)
    return out


def produce_traffic(settings: Settings, version: int) -> Traffic:
    """Requests of three windows, two bad records, their events and a late event per user key."""
    start = window_of(time.time() - 4 * 3600, WINDOW_S)
    model = settings.registered_model_name
    traffic = make_traffic(start, 3, 40, window_s=WINDOW_S, versions=(version,), model=model)
    good = traffic.predictions[0][1]
    unknown = good.replace(f'"version":{version}'.encode(), b'"version":999', 1)
    predictions = [(key, value) for key, value, _ in traffic.predictions]
    predictions += [(b"u-bad", b'{"request_id": 1'), (b"u-bad", unknown)]
    produce(settings, settings.topics.predictions, predictions)
    pid = load_catalog().plants[0].product_id
    late = start + 3 * 3600  # moves every events partition's time past every label
    sentinels = [
        (f"s-{i}".encode(), encode_event(f"s{i}", "add_to_cart", late, f"s-{i}", pid, "s",
                                         "US-CA", "mobile", 9.99, None))
        for i in range(64)
    ]  # fmt: skip
    events = sorted(traffic.events, key=lambda e: e[2])
    produce(settings, settings.topics.events, [(u.encode(), v) for u, v, _ in events] + sentinels)
    return traffic


def test_the_monitor_reports_windows_outcomes_and_drift_from_the_real_topics(
    profile_settings: Settings,
) -> None:
    settings = profile_settings.model_copy(update={"monitoring": KNOBS, "metrics_port": 0})
    traffic = produce_traffic(settings, register_with_profile(settings))

    run_process(settings, RunPlan("monitor", tail=False, recovery=True))

    found = monitor_messages(settings)
    predictions_phase = {(b["model"]["version"], b["window_start"]): b for b in found
                         if b["phase"] == "predictions"}  # fmt: skip
    expected = by_window(traffic, WINDOW_S)
    assert set(predictions_phase) == set(expected)
    for key, requests in expected.items():
        body = predictions_phase[key]
        assert body["metrics"]["requests"] == len(requests)
        assert body["reference"]["available"] is True
        assert 0.0 <= body["features"]["price"]["psi"] < 5.0
    outcomes = {(b["model"]["version"], b["window_start"]): b for b in found
                if b["phase"] == "outcomes"}  # fmt: skip
    truth = expected_outcomes(traffic, WINDOW_S)
    assert set(outcomes) == set(truth)
    for key, values in truth.items():
        metrics = outcomes[key]["metrics"]
        for name in ("impressions", "clicks", "purchases"):
            assert metrics[name] == values[name], (key, name)

    assert_the_bad_records_are_in_the_dlq(settings)
    table = DeltaTable(settings.table_uri(TABLE))
    rows = table.to_pyarrow_table()
    seqs = sorted(set(rows.column("seq").to_pylist()))
    assert seqs == sorted(int(b["seq"]) for b in found)
    assert table.transaction_version(app_id(APP_PREFIX, TABLE, SEQ_KEY)) == max(seqs)

    # from the beginning again, without the recovery store: the same records, no new rows
    run_process(settings, RunPlan("monitor", tail=False, recovery=False))
    assert DeltaTable(settings.table_uri(TABLE)).to_pyarrow_table().num_rows == rows.num_rows
    again = monitor_messages(settings)
    assert len(again) == 2 * len(found)  # ml.monitor is at-least-once: same seq, twice
    assert sorted(int(b["seq"]) for b in again) == sorted(2 * seqs)


def assert_the_bad_records_are_in_the_dlq(settings: Settings) -> None:
    dlq = [DlqHeaders.from_kafka(r.headers)
           for r in read_topic(settings, settings.topic(settings.topics.dlq))]  # fmt: skip
    assert sorted(h.reason for h in dlq) == [
        RejectionReason.INVALID_VALUE, RejectionReason.MALFORMED_JSON
    ]  # fmt: skip
    assert any("has no version 999" in h.detail for h in dlq)
