"""``make dashboard-shot``: a PNG of the monitoring dashboard, drawn by headless Chromium.

``python -m tests.dashboard_shot [--out PATH] [--url URL --key KEY]``

With ``--url`` it photographs a running dashboard (``tributary serve``; the key
is needed when the API has keys). Without it, it starts what it needs on
loopback, all of it thrown away afterwards: a ``monitoring/metrics`` Delta
table with the sample incident of :mod:`tests.monitoring_samples`, a real
Prometheus with the project's alert rules scraping the sample exporter
(:mod:`tests.metrics_exporter`; skipped when the ``prometheus`` binary is
missing: the page then shows it unreachable), and the
API in process (profile ``sample``, serving fakes, a fixed registry panel).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from infra.settings import Settings
from serving.app import create_app
from serving.monitoring_data import TABLE
from serving.monitoring_sources import RegistryPanel, VersionInfo
from serving.monitoring_summary import MonitoringData
from serving.testing import FakeSource, fake_backends
from tests.chromium import Page, open_page
from tests.local_stack import free_port
from tests.monitoring_samples import drift_story, now_utc, write_rows
from tests.prometheus import running_prometheus, wait_for

WIDTH: Final = 1400
# what each panel of the page holds: its state, Plotly's SVGs, traces and points drawn
PANELS_JS: Final = """
Array.from(document.querySelectorAll('[data-panel]')).map((n) => ({
  panel: n.dataset.panel,
  state: n.dataset.state || null,
  svgs: n.querySelectorAll('.main-svg').length,
  traces: n.data ? n.data.length : 0,
  points: n.data ? n.data.reduce((k, t) => k + (t.y || t.x || []).length, 0) : 0,
  drawn: n.querySelectorAll('g.trace, g.point').length,
  rows: n.querySelectorAll('tbody tr').length,
  text: n.innerText.slice(0, 4000),
}))
"""
RENDERED_JS: Final = "window.tributaryDashboard && window.tributaryDashboard.renders >= 1"


def wait_rendered(page: Page, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Wait for the first full render; what each panel holds."""
    page.wait_until("document.readyState === 'complete' && typeof Plotly === 'object'", timeout)
    page.wait_until(RENDERED_JS, timeout)
    time.sleep(1.0)  # the last charts finish drawing
    panels: list[dict[str, Any]] = page.evaluate(PANELS_JS)
    return panels


def sample_registry() -> RegistryPanel:
    """v1 trained first, v2 retrained after the drift alert: the story of the sample table."""
    evidence = {
        "source": "alertmanager", "alert": "TributaryFeatureDrift", "severity": "warning",
        "metric": "tributary_monitor_feature_psi", "feature": "product_clicks_1h", "value": 0.34,
        "threshold": 0.2, "model_version": 1, "fingerprint": "5f1c0a9e3b7d2c41",
    }  # fmt: skip
    detail = "TributaryFeatureDrift: v2 is champion (was 1)"
    now = now_utc()
    hours_ago = lambda h: (now - timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return RegistryPanel(
        available=True, model="plant-recommender", champion=2, previous_champions=[1],
        versions=[
            VersionInfo(version=2, aliases=["champion"], kind="torch", gates="passed",
                        gates_passed=6, gates_total=6, retrain_reason="TributaryFeatureDrift",
                        retrain_evidence=evidence, created_at=hours_ago(0.45),
                        promoted_at=hours_ago(0.4)),
            VersionInfo(version=1, kind="torch", gates="passed", gates_passed=6, gates_total=6,
                        created_at=hours_ago(30), promoted_at=hours_ago(29.9)),
        ],
        last_retrain={"job": "retrain", "outcome": "promoted", "detail": detail, "version": 2,
                      "finished_at": hours_ago(0.4)},
    )  # fmt: skip


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """uvicorn serving ``app`` on a free loopback port, in a thread; its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def sample_prometheus(folder: Path) -> Iterator[str | None]:
    """Prometheus over the sample exporter, drift alerts firing; None without the binary."""
    if shutil.which("prometheus") is None:  # the page then says Prometheus is unreachable
        print("no prometheus binary: the alert and DLQ panels stay empty", file=sys.stderr)
        yield None
        return
    flows_port, api_port = free_port(), free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "tests.metrics_exporter",
         "--flows-port", str(flows_port), "--api-port", str(api_port)]
    )  # fmt: skip
    try:
        targets = {"tributary-flows": [f"127.0.0.1:{flows_port}"]}
        with running_prometheus(folder, targets) as url:
            wait_for(url, 'ALERTS{alertname="TributaryFeatureDrift", alertstate="firing"}', 60)
            wait_for(url, "rate(tributary_flow_events_in_total[5m]) > 0", timeout=30)
            yield url
    finally:
        exporter.terminate()
        exporter.wait(15)


@contextmanager
def sample_dashboard(folder: Path) -> Iterator[str]:
    """The sample stack; the dashboard's URL, admin key in its fragment."""
    key = secrets.token_urlsafe(24)
    settings = Settings(profile="sample", state_dir=folder, api_keys=SecretStr(f"{key}:admin"))
    write_rows(settings.table_uri(TABLE), drift_story(now_utc()))
    with ExitStack() as stack:
        prometheus = stack.enter_context(sample_prometheus(folder / "prometheus"))
        app = create_app(settings, backends=fake_backends(FakeSource({1: 0.1, 2: 0.2}, champion=2)))
        app.state.monitoring = MonitoringData(
            settings, registry=sample_registry,
            prometheus_url=prometheus or f"http://127.0.0.1:{free_port()}",
        )  # fmt: skip
        url = stack.enter_context(serve_in_thread(app))
        yield f"{url}/dashboard#key={key}"


def shoot(url: str, out: Path) -> list[dict[str, Any]]:
    """Open ``url``, wait for the charts, write the PNG; what each panel held."""
    with open_page(url, width=WIDTH) as page:
        panels = wait_rendered(page)
        page.screenshot(out, WIDTH)
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot the monitoring dashboard.")
    parser.add_argument("--out", type=Path, default=Path(".tributary/dashboard.png"))
    parser.add_argument("--url", help="a running dashboard, e.g. http://127.0.0.1:8000/dashboard")
    parser.add_argument("--key", help="the admin API key of that dashboard's API")
    args = parser.parse_args()
    with ExitStack() as stack:
        if args.url:
            url = args.url + (f"#key={args.key}" if args.key else "")
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            url = stack.enter_context(sample_dashboard(folder))
        panels = shoot(url, args.out)
    empty = [p["panel"] for p in panels if p["state"] == "empty"]
    print(
        f"wrote {args.out}: {len(panels) - len(empty)} of {len(panels)} panels filled"
        + (f"; empty: {', '.join(empty)}" if empty else "")
    )


if __name__ == "__main__":
    main()
