"""Every query of the Grafana dashboard returns data from a real Prometheus.

A real ``prometheus`` scrapes, every second, a process that exports the
project's own metric objects with values (:mod:`tests.metrics_exporter`: the
monitor's gauges, the flows' and the API's series, the retrain counter) under
the jobs the stack uses (``tributary-flows``, ``tributary-api``), with the
project's alert rules loaded: version 1 has drifted, so ``ALERTS`` has firing alerts. Each panel's
expression, with Grafana's variables filled in, goes through ``/api/v1/query``
and must return at least one series with a finite value.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grafana import data_panels, load_dashboard, runnable
from tests.local_stack import free_port
from tests.prometheus import query, running_prometheus, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("grafana-prometheus")
    flows_port, api_port = free_port(), free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "tests.metrics_exporter",
         "--flows-port", str(flows_port), "--api-port", str(api_port)],
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    targets = {
        "tributary-flows": [f"127.0.0.1:{flows_port}"],
        "tributary-api": [f"127.0.0.1:{api_port}"],
    }
    labels = {"tributary-flows": {"process": "monitor-0"}}
    try:
        with running_prometheus(folder, targets, labels=labels) as url:
            # rates need two scrapes inside their window, ALERTS one rule evaluation
            wait_for(url, 'count(up{job=~"tributary-.*"} == 1) == 2', timeout=90)
            wait_for(url, "rate(tributary_serving_requests_total[15s]) > 0", timeout=30)
            wait_for(url, 'ALERTS{alertname="TributaryFeatureDrift", alertstate="firing"}', 60)
            yield url
    finally:
        exporter.terminate()
        exporter.wait(15)


def test_every_panel_query_returns_data(prometheus: str) -> None:
    empty, checked = [], 0
    for panel in data_panels(load_dashboard()):
        for target in panel["targets"]:
            expr = runnable(target["expr"])
            result = query(prometheus, expr)
            values = [float(series["value"][1]) for series in result]
            checked += 1
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr} -> {values}")
    assert empty == [], "\n".join(empty)
    assert checked >= 30


def test_the_drift_rule_fires_for_the_drifted_version_only(prometheus: str) -> None:
    firing = query(prometheus, 'ALERTS{alertname="TributaryFeatureDrift", alertstate="firing"}')
    assert {(s["metric"]["model_version"], s["metric"]["feature"]) for s in firing} == {
        ("1", "price"), ("1", "product_clicks_1h"),
    }  # fmt: skip
