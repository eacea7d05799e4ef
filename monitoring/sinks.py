"""Where the monitor's records go besides Delta: ``ml.monitor`` and the Prometheus gauges.

- ``ml.monitor`` (key: the model version as text) gets one JSON object per
  record (:func:`encode_record`; schema in ``docs/monitoring.md``). Delivery is
  at-least-once, like every Kafka sink here: a replay sends a record again.
  Readers deduplicate on (``phase``, ``model.version``, ``window_start``), which
  a replay never changes; ``seq`` usually repeats too, but a replay may number
  records that were emitted close together in another order
  (:mod:`monitoring.metrics_table` explains).
- The gauges of :mod:`monitoring.metrics` are set when a record is written
  (:class:`GaugeSink`), on the worker that holds the monitor's state.
- ``monitoring/metrics`` (Delta): :mod:`monitoring.metrics_table`.

NaN (an AUC of one class, a rate of nothing) is ``null`` in JSON and NaN in
Prometheus.

>>> record = MonitorRecord("outcomes", 7, "m", 3, 0.0, 300.0, 301.0, {"ctr": 0.5})
>>> body = orjson.loads(encode_record(record))
>>> body["window_end"], body["seq"], body["metrics"]
('1970-01-01T00:05:00.000Z', 7, {'ctr': 0.5})
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.sinks.dlq import CountingSink
from infra.plantly.encoding import rfc3339
from infra.settings import Settings
from monitoring import metrics as gauges
from monitoring.windows import MonitorRecord

if TYPE_CHECKING:
    from monitoring.parity import ParityLoop

FLOW: Final = "monitor"
SCHEMA_VERSION: Final = 1
COUNTS: Final = frozenset(
    {"requests", "rows", "shown", "impressions", "clicks", "purchases", "labelled", "concept_drift"}
)
"""Metrics that are whole numbers: integers in JSON (floats in Delta and Prometheus)."""
MonitorMessage = KafkaSinkMessage[bytes | None, bytes | None]
# a version is retired this many windows after traffic moved on from it
RETIRE_AFTER_WINDOWS: Final = 3


# -- ml.monitor ------------------------------------------------------------------


def record_body(record: MonitorRecord) -> dict[str, Any]:
    """The ``ml.monitor`` JSON object of a record."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "phase": record.phase,
        "seq": record.seq,
        "model": {"name": record.model_name, "version": record.version},
        "window_start": rfc3339(record.window_start),
        "window_end": rfc3339(record.window_end),
        "emitted_at": rfc3339(record.emitted_at),
        "metrics": {
            name: int(value) if name in COUNTS else value for name, value in record.metrics.items()
        },
    }
    if record.phase == "predictions":
        body["features"] = record.features
        body["score_bins"] = {
            "shares": record.score_shares,
            "reference_shares": record.reference_shares,
        }
        body["feature_age_p95_seconds"] = record.feature_ages
        body["reference"] = dict(record.reference)
    return body


def encode_record(record: MonitorRecord) -> bytes:
    return orjson.dumps(record_body(record))  # NaN becomes null


def monitor_message(record: MonitorRecord) -> MonitorMessage:
    return KafkaSinkMessage(str(record.version).encode(), encode_record(record))


def kafka_monitor_sink(settings: Settings) -> CountingSink[MonitorMessage]:
    """The profile's ``ml.monitor`` through Bytewax's ``KafkaSink``, counted."""
    brokers = [server.strip() for server in settings.kafka_bootstrap.split(",")]
    config = {"enable.idempotence": "true", "linger.ms": "5"}
    sink = KafkaSink(brokers, settings.topic(settings.topics.monitor), add_config=config)
    return CountingSink(sink, FLOW, "monitor")


# -- Prometheus ------------------------------------------------------------------


def export_gauges(record: MonitorRecord, now: float | None = None) -> None:
    """Set the gauges of the record's version from its numbers."""
    version = str(record.version)
    values = record.metrics
    if record.phase == "outcomes":
        gauges.CTR.labels(version).set(values["ctr"])
        gauges.CONVERSION.labels(version).set(values["conversion"])
        gauges.ROC_AUC.labels(version).set(values["roc_auc"])
        gauges.LOG_LOSS.labels(version).set(values["log_loss"])
        gauges.LABELLED.labels(version).set(values["labelled"])
        gauges.EXPECTED_AUC.labels(version).set(values["expected_roc_auc"])
        gauges.EXPECTED_CONVERSION.labels(version).set(values["expected_conversion"])
        gauges.CONCEPT_DRIFT.labels(version).inc(record.detections)
        return
    gauges.WINDOW_REQUESTS.labels(version).set(values["requests"])
    gauges.WINDOW_END.labels(version).set(record.window_end)
    gauges.MEAN_SCORE.labels(version).set(values["mean_score"])
    gauges.ESTIMATED_AUC.labels(version).set(values["estimated_roc_auc"])
    gauges.ESTIMATED_CONVERSION.labels(version).set(values["estimated_conversion"])
    gauges.CANDIDATE_ESTIMATED_AUC.labels(version).set(values["candidate_estimated_roc_auc"])
    available = bool(record.reference.get("available"))
    gauges.HAS_REFERENCE.labels(version).set(1.0 if available else 0.0)
    if available:
        gauges.REFERENCE_AUC.labels(version).set(float(record.reference["roc_auc"]))
        gauges.REFERENCE_CONVERSION.labels(version).set(float(record.reference["positive_rate"]))
        estimated = float(record.reference.get("estimated_roc_auc", float("nan")))
        gauges.REFERENCE_ESTIMATED_AUC.labels(version).set(estimated)
    if "score_psi" in values:
        gauges.SCORE_PSI.labels(version).set(values["score_psi"])
    _export_features(version, record)
    for view, age in record.feature_ages.items():
        gauges.FEATURE_AGE.labels(version, view).set(age)
    lag = (time.time() if now is None else now) - record.window_end
    gauges.LAG.observe(max(lag, 0.0))


def _export_features(version: str, record: MonitorRecord) -> None:
    for feature, values in record.features.items():
        if "psi" in values:
            gauges.FEATURE_PSI.labels(version, feature).set(values["psi"])
        if "chi2_pvalue" in values:
            gauges.FEATURE_CHI2_PVALUE.labels(version, feature).set(values["chi2_pvalue"])
            gauges.FEATURE_JS_DISTANCE.labels(version, feature).set(values["js_distance"])


_VERSION_GAUGES: Final = (
    gauges.WINDOW_REQUESTS, gauges.WINDOW_END, gauges.HAS_REFERENCE, gauges.CTR, gauges.LABELLED,
    gauges.CONVERSION, gauges.MEAN_SCORE, gauges.ROC_AUC, gauges.LOG_LOSS,
    gauges.ESTIMATED_AUC, gauges.ESTIMATED_CONVERSION, gauges.CANDIDATE_ESTIMATED_AUC,
    gauges.EXPECTED_AUC, gauges.EXPECTED_CONVERSION, gauges.REFERENCE_AUC,
    gauges.REFERENCE_ESTIMATED_AUC, gauges.REFERENCE_CONVERSION, gauges.SCORE_PSI,
    gauges.CONCEPT_DRIFT,
)  # fmt: skip
_FEATURE_GAUGES: Final = (
    gauges.FEATURE_PSI, gauges.FEATURE_CHI2_PVALUE, gauges.FEATURE_JS_DISTANCE,
)  # fmt: skip


def retire_version(version: int, features: Iterable[str], views: Iterable[str]) -> None:
    """Remove a version's series: a version no longer served must not keep its alerts firing."""
    label = str(version)
    for gauge in _VERSION_GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(label)
    for feature in features:
        for gauge in _FEATURE_GAUGES:
            with contextlib.suppress(KeyError):
                gauge.remove(label, feature)
    for view in views:
        with contextlib.suppress(KeyError):
            gauges.FEATURE_AGE.remove(label, view)


class _GaugePartition(StatelessSinkPartition[MonitorRecord]):
    """Sets the gauges; retires versions that stopped serving; hosts the parity loop.

    A version whose newest window ends ``retire_after_s`` before the newest
    window of any version (traffic moved to another champion) has its series
    removed, so its last drift values stop firing alerts.
    """

    def __init__(self, retire_after_s: float, parity: ParityLoop | None) -> None:
        self.retire_after_s = retire_after_s
        self.newest: dict[int, float] = {}
        self.features: dict[int, set[str]] = defaultdict(set)
        self.views: dict[int, set[str]] = defaultdict(set)
        self.parity = parity
        if parity is not None:
            parity.start()

    def write_batch(self, items: list[MonitorRecord]) -> None:
        for record in items:
            export_gauges(record)
            if record.phase == "predictions":
                end = self.newest.get(record.version, record.window_end)
                self.newest[record.version] = max(end, record.window_end)
                self.features[record.version].update(record.features)
                self.views[record.version].update(record.feature_ages)
        self._retire()

    def _retire(self) -> None:
        latest = max(self.newest.values(), default=0.0)
        for version, end in list(self.newest.items()):
            if latest - end > self.retire_after_s:
                retire_version(version, self.features.pop(version), self.views.pop(version))
                del self.newest[version]

    def close(self) -> None:
        if self.parity is not None:
            self.parity.stop()


class GaugeSink(DynamicSink[MonitorRecord]):
    """Sets the Prometheus gauges, in the process whose worker holds the state.

    With ``settings.monitoring.parity_every_s`` > 0, worker 0 also runs the
    periodic parity check (:class:`~monitoring.parity.ParityLoop`).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GaugePartition:
        settings = self.settings
        if settings is None:
            return _GaugePartition(float("inf"), None)
        knobs = settings.monitoring
        parity = None
        if worker_index == 0 and knobs.parity_every_s > 0:
            from monitoring.parity import ParityLoop  # pandas and Delta: only where it runs

            parity = ParityLoop(settings)
        return _GaugePartition(RETIRE_AFTER_WINDOWS * knobs.window_s, parity)
