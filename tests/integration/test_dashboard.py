"""The dashboard in headless Chromium, served by ``tributary serve`` on the real stack.

The API runs as its own process with keys, on the session's Tansu, Redis and
MLflow (two registered versions, v2 champion after a drift-triggered retrain,
as the retrain worker tags it); ``monitoring/metrics`` holds the sample
incident; a real Prometheus with the project's alert rules scrapes the sample
exporter, whose version 1 has drifted (so drift alerts fire). Chromium opens
``/dashboard#key=...`` and every chart must hold Plotly SVG with traces and
points, every table rows; new rows in the table show up without a reload.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infra.settings import Settings
from serving.monitoring_data import TABLE
from tests.benchmarks.serving import api_process
from tests.chromium import open_page
from tests.dashboard_shot import sample_prometheus, shoot, wait_rendered
from tests.integration.test_serving_api import ADMIN_KEY, fresh_profile, register_scorer
from tests.local_stack import free_port
from tests.monitoring_samples import drift_story, now_utc, row, write_rows
from tests.scorers import PopularityScorer
from training.registry import Registry
from training.retrain_request import RetrainEvidence, RetrainRequest, incident_id, retrain_tags
from training.retrainer import LAST_RETRAIN_TAG

pytestmark = pytest.mark.integration

CHARTS = {
    "kpis", "requests", "auc", "conversion", "score", "score-psi", "numeric-drift",
    "categorical-drift", "freshness", "dlq",
}  # fmt: skip
STARTED = datetime(2026, 12, 2, 11, 20, tzinfo=UTC)
EVIDENCE = RetrainEvidence(
    alert="TributaryFeatureDrift", severity="warning", metric="tributary_monitor_feature_psi",
    value=0.34, threshold=0.2, model_version=1, feature="product_clicks_1h",
    fingerprint="0123456789abcdef", starts_at=STARTED,
)  # fmt: skip


def registered_story(settings: Settings) -> tuple[int, int]:
    """v1, then v2 retrained on a drift alert and promoted, tagged as the worker does."""
    registry = Registry(settings)
    first = register_scorer(settings, PopularityScorer())
    registry.make_champion(first)
    second = register_scorer(settings, PopularityScorer(bias=0.5))
    request = RetrainRequest(
        reason="TributaryFeatureDrift", evidence=EVIDENCE,
        incident=incident_id(EVIDENCE.fingerprint, STARTED),
    )  # fmt: skip
    registry.set_tags(second, retrain_tags(request))  # as the retrain worker tags a version
    registry.set_tags(second, {
        "gates": "passed", "gate.auc": "pass", "promoted_at": "2026-12-02T11:30:00+00:00",
    })  # fmt: skip
    registry.make_champion(second)
    outcome = {"job": "retrain", "outcome": "promoted", "detail": "v2 is champion", "version": 2}
    registry.client.set_registered_model_tag(registry.name, LAST_RETRAIN_TAG, json.dumps(outcome))
    return first, second


@pytest.fixture(scope="module")
def dashboard(
    stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, str]]:
    settings = fresh_profile(stack_settings, "db")
    assert registered_story(settings) == (1, 2)  # a fresh model: the story's version numbers
    write_rows(settings.table_uri(TABLE), drift_story(now_utc()))
    with sample_prometheus(tmp_path_factory.mktemp("dashboard-prometheus")) as prometheus:
        assert prometheus is not None
        port = int(prometheus.rsplit(":", 1)[1])
        served = settings.model_copy(update={"prometheus_port": port})
        with api_process(served, free_port(), api_key=ADMIN_KEY) as url:
            yield settings, url


def test_every_panel_draws_data_in_chromium(dashboard: tuple[Settings, str]) -> None:
    _, url = dashboard
    with open_page(f"{url}/dashboard#key={ADMIN_KEY}") as page:
        panels = {p["panel"]: p for p in wait_rendered(page)}
        assert page.evaluate("window.location.hash") == ""  # the key left the address bar
        tiles = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.tile .value')]"
            ".map((n) => [n.id, n.textContent]))"
        )
    assert set(panels) == CHARTS | {"alerts", "versions", "retrains"}
    for name in CHARTS:
        chart = panels[name]
        assert chart["state"] == "chart", chart
        assert chart["svgs"] > 0 and chart["traces"] > 0 and chart["points"] > 0, chart
        assert chart["drawn"] > 0, chart  # Plotly drew trace groups into the SVG
    assert panels["alerts"]["rows"] >= 1 and "TributaryFeatureDrift" in panels["alerts"]["text"]
    versions = panels["versions"]
    assert versions["rows"] == 2 and "product_clicks_1h" in versions["text"]
    assert "v2\tchampion" in versions["text"]  # the alias, though searches do not return it
    assert "alert=TributaryFeatureDrift, metric=tributary_monitor_feature_psi" in versions["text"]
    assert panels["retrains"]["rows"] >= 2 and "promoted" in panels["retrains"]["text"]
    assert tiles["tile-champion"] == "v2" and int(tiles["tile-alerts"]) >= 2  # the project's rules
    assert tiles["tile-ctr"].endswith(" %") and tiles["tile-dlq"].endswith(" %")


def test_new_windows_appear_without_a_reload(dashboard: tuple[Settings, str]) -> None:
    settings, url = dashboard
    with open_page(f"{url}/dashboard#key={ADMIN_KEY}") as page:
        wait_rendered(page)
        later = now_utc() + timedelta(minutes=5)
        write_rows(settings.table_uri(TABLE), [row(later, 2, "outcomes", "ctr", 0.5)])
        newest = later.strftime("%Y-%m-%dT%H:%M:%SZ")
        page.wait_until(
            f"window.tributaryDashboard.last.metrics.newest_window === '{newest}'", timeout=30
        )
        shown = page.evaluate(
            "document.getElementById('chart-kpis').data.find((t) => t.name === 'v2 ctr').y.at(-1)"
        )
    assert shown == 0.5


def test_without_a_key_the_page_asks_for_one(dashboard: tuple[Settings, str]) -> None:
    _, url = dashboard
    with open_page(f"{url}/dashboard") as page:
        page.wait_until("!document.getElementById('key-form').hidden", timeout=30)
        reason = page.evaluate("document.getElementById('key-reason').textContent")
        charts = page.evaluate("document.querySelectorAll('.main-svg').length")
    assert reason.startswith("Admin API key needed: missing X-API-Key header") and charts == 0


def test_make_dashboard_shot_writes_a_png(tmp_path: Path, dashboard: tuple[Settings, str]) -> None:
    _, url = dashboard
    out = tmp_path / "dashboard.png"
    panels = shoot(f"{url}/dashboard#key={ADMIN_KEY}", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    assert all(p["state"] in ("chart", "table") for p in panels)
