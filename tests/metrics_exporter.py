"""A process exporting every series the dashboards read, with values, for a real Prometheus.

``python -m tests.metrics_exporter --flows-port P --api-port Q`` sets every
monitor gauge of :mod:`monitoring.metrics` for model versions 1 (drifted) and
2 (retrained), and keeps the counters and histograms of the flows
(:mod:`flows.metrics`), the retrain worker and the API
(:class:`serving.metrics.ServingMetrics`) moving, so rates and quantiles have
data. The monitor and flow series are served on ``--flows-port`` (the default
registry, as a flow process serves them), the API's on ``--api-port``.
"""

from __future__ import annotations

import argparse
import random
import time

from prometheus_client import start_http_server

from flows import metrics as flows
from monitoring import metrics as monitor
from serving.metrics import ServingMetrics
from training.contract import CATEGORICALS, NUMERIC
from training.retrainer import RUNS

VERSIONS = {"1": 0.34, "2": 0.03}  # model version -> PSI of its drifting features
FLOWS = ("ingest", "features", "monitor")


def set_monitor_gauges(version: str, drift: float) -> None:
    """Every ``tributary_monitor_*`` gauge of one version, at plausible values."""
    monitor.WINDOW_REQUESTS.labels(version).set(620)  # over the drift rules' guard of 300
    monitor.WINDOW_END.labels(version).set(time.time() - 5)
    monitor.HAS_REFERENCE.labels(version).set(1)
    monitor.CTR.labels(version).set(0.08 - drift / 20)
    monitor.CONVERSION.labels(version).set(0.03 - drift / 40)
    monitor.MEAN_SCORE.labels(version).set(0.031)
    monitor.ROC_AUC.labels(version).set(0.76 - drift / 4)
    monitor.LOG_LOSS.labels(version).set(0.14)
    monitor.ESTIMATED_AUC.labels(version).set(0.77 - drift / 4)
    monitor.ESTIMATED_CONVERSION.labels(version).set(0.032)
    monitor.REFERENCE_AUC.labels(version).set(0.76)
    monitor.REFERENCE_CONVERSION.labels(version).set(0.03)
    monitor.LABELLED.labels(version).set(4_000)
    monitor.EXPECTED_AUC.labels(version).set(0.77)
    monitor.EXPECTED_CONVERSION.labels(version).set(0.031)
    monitor.CANDIDATE_ESTIMATED_AUC.labels(version).set(0.8 - drift / 4)
    monitor.REFERENCE_ESTIMATED_AUC.labels(version).set(0.8)
    for feature in NUMERIC:
        psi = drift if feature in ("price", "product_clicks_1h") else 0.02
        monitor.FEATURE_PSI.labels(version, feature).set(psi)
    for feature in CATEGORICALS:
        monitor.FEATURE_CHI2_PVALUE.labels(version, feature).set(0.4)
        monitor.FEATURE_JS_DISTANCE.labels(version, feature).set(0.03)
    monitor.SCORE_PSI.labels(version).set(drift * 0.8)
    monitor.CONCEPT_DRIFT.labels(version).inc(0)
    for view in ("user", "product"):
        monitor.FEATURE_AGE.labels(version, view).set(42.0)
    monitor.REQUESTS.labels(version).inc(0)


def tick(serving: ServingMetrics, rng: random.Random) -> None:
    """One step of traffic: counters grow, histograms get observations."""
    for version in VERSIONS:
        monitor.REQUESTS.labels(version).inc(50)
    monitor.LAG.observe(rng.uniform(0.2, 1.5))
    monitor.DROPPED.labels("unknown_version").inc(rng.choice((0, 1)))
    now = time.time()
    for flow in FLOWS:
        flows.EVENTS_IN.labels(flow, "shop.events").inc(100)
        flows.REJECTS.labels(flow, "invalid_json").inc(rng.choice((0, 1)))
        flows.LAST_PROCESSED.labels(flow).set(now)
    for route in ("/v1/recommendations", "/v1/predict"):
        serving.requests.labels(route, "200").inc(20)
        for _ in range(5):
            serving.request_seconds.labels(route).observe(rng.uniform(0.001, 0.004))
    serving.prediction_log.labels("sent").inc(20)
    serving.prediction_log.labels("dropped").inc(0)
    RUNS.labels("retrain", "promoted").inc(0)
    RUNS.labels("retrain", "rejected").inc(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows-port", type=int, required=True)
    parser.add_argument("--api-port", type=int, required=True)
    args = parser.parse_args()
    serving = ServingMetrics()
    for version, drift in VERSIONS.items():
        set_monitor_gauges(version, drift)
    monitor.CONCEPT_DRIFT.labels("1").inc()
    for kind, held in (("awaiting_labels", 1200), ("pending_impressions", 300), ("orphans", 4)):
        monitor.HELD.labels(kind).set(held)
    monitor.PARITY_MISMATCH.set(0.0)
    monitor.PARITY_CHECKED.set(5_000)
    RUNS.labels("retrain", "promoted").inc()
    start_http_server(args.flows_port, addr="127.0.0.1")
    start_http_server(args.api_port, addr="127.0.0.1", registry=serving.registry)
    rng = random.Random(3)
    while True:
        tick(serving, rng)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
