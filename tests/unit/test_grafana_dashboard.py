"""The Grafana provisioning JSON: well formed, every panel queryable, names that exist.

Whether each query returns data from a real Prometheus is
``tests/integration/test_grafana_panels.py``.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

import flows.metrics
import monitoring.metrics
import training.retrainer
from serving.metrics import ServingMetrics
from tests.grafana import data_panels, load_dashboard, runnable

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names(*registries: CollectorRegistry) -> set[str]:
    """Series names the project's metrics expose, as Prometheus stores them."""
    assert monitoring.metrics and flows.metrics and training.retrainer  # registered on import
    names = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def test_the_dashboard_is_provisionable() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "tributary-monitoring" and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model_version"]["datasource"]["uid"] == "${datasource}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(data_panels(dashboard)) >= 20


def test_every_panel_has_the_datasource_variable_and_a_query() -> None:
    for panel in data_panels(load_dashboard()):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert "$" not in runnable(target["expr"]), target["expr"]  # no unknown variable


def test_panels_fit_the_grid_without_overlapping() -> None:
    boxes = [(p["title"], p["gridPos"]) for p in load_dashboard()["panels"]]
    for title, box in boxes:
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, title

    def overlap(a: dict[str, int], b: dict[str, int]) -> bool:
        return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])  # fmt: skip

    clashes = [(a, b) for (a, pa), (b, pb) in combinations(boxes, 2) if overlap(pa, pb)]
    assert clashes == []


def test_queries_name_only_series_the_project_exports() -> None:
    known = exported_names(REGISTRY, ServingMetrics().registry) | {"up", "ALERTS"}
    used: dict[str, Any] = {}
    for panel in data_panels(load_dashboard()):
        for target in panel["targets"]:
            for name in re.findall(r"\b(tributary_\w+|up|ALERTS)\b", target["expr"]):
                used[name] = panel["title"]
    unknown = {name: title for name, title in used.items() if name not in known}
    assert unknown == {}
    monitor = {n for n in known if n.startswith("tributary_monitor_")} - {
        "tributary_monitor_lag_seconds_count", "tributary_monitor_lag_seconds_sum",
    }  # fmt: skip
    assert monitor - set(used) == set()  # every monitor gauge has a panel
