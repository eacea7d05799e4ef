"""``/dashboard`` and ``/v1/monitoring/summary`` in process, over the serving fakes.

The app's real lifespan, routers and error handlers run (``TestClient``); the
monitoring table is a real Delta table in ``tmp_path``, the registry a fixed
panel, and Prometheus a port where nothing listens.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from infra.settings import Settings
from serving.app import create_app
from serving.monitoring_data import TABLE
from serving.monitoring_sources import RegistryPanel, VersionInfo
from serving.monitoring_summary import MonitoringData
from serving.testing import FakeSource, fake_backends
from tests.local_stack import free_port
from tests.monitoring_samples import drift_story, now_utc, write_rows

PREDICT_KEY, ADMIN_KEY = "p-" + "x" * 30, "a-" + "y" * 30
KEYS = SecretStr(f"{PREDICT_KEY}:predict,{ADMIN_KEY}:admin")
SUMMARY = "/v1/monitoring/summary"


def registry_panel() -> RegistryPanel:
    return RegistryPanel(
        available=True, model="plant-recommender", champion=2, previous_champions=[1],
        versions=[VersionInfo(version=2, aliases=["champion"], retrain_reason="drift"),
                  VersionInfo(version=1)],
    )  # fmt: skip


def client_for(settings: Settings) -> TestClient:
    app = create_app(settings, backends=fake_backends(FakeSource({1: 0.1, 2: 0.2}, champion=2)))
    app.state.monitoring = MonitoringData(
        settings, registry=registry_panel, prometheus_url=f"http://127.0.0.1:{free_port()}"
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def with_keys(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(Settings(profile="t1", api_keys=KEYS, state_dir=tmp_path)) as client:
        yield client


@pytest.fixture
def open_dev(tmp_path: Path) -> Iterator[TestClient]:
    with client_for(Settings(state_dir=tmp_path)) as client:
        yield client


def test_the_summary_needs_the_admin_role_when_keys_are_set(with_keys: TestClient) -> None:
    missing = with_keys.get(SUMMARY)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    predict = with_keys.get(SUMMARY, headers={"X-API-Key": PREDICT_KEY})
    assert predict.status_code == 403 and predict.json()["error"]["code"] == "forbidden"
    admin = with_keys.get(SUMMARY, headers={"X-API-Key": ADMIN_KEY})
    assert admin.status_code == 200 and admin.json()["profile"] == "t1"


def test_dev_without_keys_is_open(open_dev: TestClient) -> None:
    response = open_dev.get(SUMMARY, params={"hours": 6})
    assert response.status_code == 200, response.text
    assert response.json()["hours"] == 6.0


def test_a_missing_table_and_prometheus_down_still_answer(open_dev: TestClient) -> None:
    body = open_dev.get(SUMMARY).json()
    metrics, prometheus = body["metrics"], body["prometheus"]
    assert metrics["available"] is False and metrics["kpis"] == []
    assert metrics["message"].startswith(f"no {TABLE} table yet")
    assert prometheus["available"] is False and prometheus["alerts"] == []
    assert prometheus["message"].startswith("Prometheus unreachable at http://127.0.0.1:")
    assert body["registry"]["champion"] == 2 and body["registry"]["previous_champions"] == [1]


def test_the_summary_carries_the_tables_panels(open_dev: TestClient, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    write_rows(settings.table_uri(TABLE), drift_story(now_utc()))
    metrics = open_dev.get(SUMMARY, params={"hours": 3}).json()["metrics"]
    assert metrics["available"] and metrics["focus_version"] == 2  # the registry's champion
    assert {s["name"] for s in metrics["kpis"]} == {
        "v1 ctr",
        "v1 conversion",
        "v2 ctr",
        "v2 conversion",
    }
    assert len(metrics["score_distribution"]["reference"]) == 10
    assert metrics["numeric_drift"] and metrics["categorical_drift"] and metrics["freshness"]


@pytest.mark.parametrize("hours", ["0", "-1", "10000", "soon"])
def test_a_bad_range_is_a_422(open_dev: TestClient, hours: str) -> None:
    response = open_dev.get(SUMMARY, params={"hours": hours})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


def test_the_page_loads_its_scripts_from_the_api_only(with_keys: TestClient) -> None:
    response = with_keys.get("/dashboard")  # the shell holds no data: no key needed
    assert response.status_code == 200 and response.headers["cache-control"] == "no-cache"
    sources = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    plotly = importlib.metadata.version("plotly")
    assert f"/dashboard/static/plotly.min.js?v={plotly}" in sources
    assert all(s.startswith("/dashboard/static/") for s in sources), sources
    for source in sources:
        assert with_keys.get(source).status_code == 200, source


def test_the_plotly_bundle_is_served_compressed_and_cached(with_keys: TestClient) -> None:
    packed = with_keys.get(
        "/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "gzip"}
    )  # the client decompresses
    assert packed.status_code == 200 and packed.headers["content-encoding"] == "gzip"
    assert packed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert int(packed.headers["content-length"]) < len(packed.content) / 2
    assert b"plotly.js v" in packed.content[:500]
    raw = with_keys.get("/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and raw.content == packed.content


def test_only_the_dashboards_files_are_served(with_keys: TestClient) -> None:
    for name in ("index.html", "..%2Fapp.py", "nope.js"):
        response = with_keys.get(f"/dashboard/static/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "not_found"
