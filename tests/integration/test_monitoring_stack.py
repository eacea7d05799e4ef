"""Prometheus and Alertmanager as parts of a real stack: rules loaded, wired, alerts routed.

One stack with monitoring for the module (Debian's ``prometheus`` and
``prometheus-alertmanager`` on free loopback ports). A small HTTP server on the
stack's ``training.webhook_port`` stands where the retrain worker listens and
keeps what Alertmanager delivers; a metrics endpoint announced like a flow
(``flows.runner.announce_metrics``) makes the real rules fire.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from typer.testing import CliRunner

from flows.runner import announce_metrics
from infra.cli.app import build_app
from infra.settings import Settings
from infra.stack import status
from infra.stack.alerting import RETRAIN_RECEIVER
from infra.stack.parts import PART_NAMES
from monitoring.alerts import rules_dir
from tests.local_stack import free_port, running_stack, settings_env

pytestmark = pytest.mark.integration

T = TypeVar("T")
RULE_NAMES = {
    rule["alert"]
    for path in rules_dir().glob("*.rules.yml")
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
}


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: nothing within {timeout:g} s")


class Deliveries:
    """An HTTP server at the retrain worker's address that keeps every webhook body."""

    def __init__(self, port: int) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                owner.paths.append(self.path)
                owner.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str, version: str) -> list[dict[str, Any]]:
        return [
            alert
            for body in list(self.bodies)
            for alert in body["alerts"]
            if alert["labels"].get("alertname") == name
            and alert["labels"].get("model_version") == version
        ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with running_stack(tmp_path_factory.mktemp("monitoring"), monitoring=True) as settings:
        yield settings


@pytest.fixture(scope="module")
def deliveries(stack: Settings) -> Iterator[Deliveries]:
    receiver = Deliveries(stack.training.webhook_port)
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def exporter(stack: Settings) -> Iterator[dict[str, Gauge]]:
    """Monitor gauges served and announced as ``monitor-0``; a counter as ``retrainer-0``."""
    registry = CollectorRegistry()
    version, feature = ["model_version"], ["model_version", "feature"]
    gauges = {
        "psi": Gauge("tributary_monitor_feature_psi", "", feature, registry=registry),
        "requests": Gauge("tributary_monitor_window_requests", "", version, registry=registry),
        "end": Gauge(
            "tributary_monitor_window_end_timestamp_seconds", "", version, registry=registry
        ),
        "parity": Gauge("tributary_monitor_parity_mismatch_ratio", "", registry=registry),
        "checked": Gauge("tributary_monitor_parity_checked_values", "", registry=registry),
    }
    worker_registry = CollectorRegistry()
    Counter("tributary_retrain_runs", "", ["job", "outcome"], registry=worker_registry)
    servers = []
    for name, reg in (("monitor-0", registry), ("retrainer-0", worker_registry)):
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=reg)[0])
        announce_metrics(stack, name, port)
    yield gauges
    for server in servers:
        server.shutdown()


def _prometheus(settings: Settings, path: str) -> Any:
    url = f"http://{settings.prometheus_address}{path}"
    response = httpx.get(url, timeout=5, trust_env=False)
    response.raise_for_status()
    return response.json()["data"]


def _alertmanager(settings: Settings) -> str:
    return f"http://{settings.alertmanager_address}"


def test_status_shows_both_parts_healthy(stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    report = status(stack)
    assert [part.name for part in report.parts] == list(PART_NAMES)
    for name in ("prometheus", "alertmanager"):
        part = report.part(name)
        assert (part.state, part.healthy, part.detail) == ("running", True, "HTTP 200")
    assert report.alerts_error is None

    for name, value in settings_env(stack).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRIBUTARY_CONFIG", str(stack.state_dir / "none.toml"))
    result = CliRunner().invoke(build_app(), ["status", "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    parts = {part["name"]: part for part in cli["parts"]}
    assert parts["alertmanager"]["address"] == str(stack.alertmanager_address)
    assert parts["alertmanager"]["healthy"] is True and parts["prometheus"]["healthy"] is True
    assert isinstance(cli["alerts"], list) and cli["alerts_error"] is None


def test_prometheus_loaded_every_rule(stack: Settings) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = _prometheus(stack, "/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

    rules = wait_for(evaluated, 30, "every rule evaluated without error")
    assert {rule["name"] for rule in rules} == RULE_NAMES
    assert {rule["type"] for rule in rules} == {"alerting"}


def test_prometheus_knows_the_alertmanager(stack: Settings) -> None:
    managers = _prometheus(stack, "/api/v1/alertmanagers")
    assert managers["activeAlertmanagers"] == [
        {"url": f"http://{stack.alertmanager_address}/api/v2/alerts"}
    ]
    assert managers["droppedAlertmanagers"] == []


def test_flows_and_the_retrain_worker_get_their_own_jobs(
    stack: Settings, exporter: dict[str, Gauge]
) -> None:
    def scraped() -> dict[str, str] | None:
        targets = _prometheus(stack, "/api/v1/targets")["activeTargets"]
        found = {
            t["labels"]["process"]: t["labels"]["job"]
            for t in targets
            if "process" in t["labels"] and t["health"] == "up"
        }
        return found if len(found) == 2 else None

    jobs = wait_for(scraped, 30, "both announced processes scraped")
    assert jobs == {"monitor-0": "tributary-flows", "retrainer-0": "tributary-retrainer"}


def _post_alerts(settings: Settings, alerts: list[dict[str, Any]]) -> None:
    url = f"{_alertmanager(settings)}/api/v2/alerts"
    httpx.post(url, json=alerts, timeout=5, trust_env=False).raise_for_status()


def test_an_alert_posted_to_alertmanager_is_routed_by_its_retrain_label(
    stack: Settings, deliveries: Deliveries
) -> None:
    drift = {"alertname": "TributaryFeatureDrift", "model_version": "41", "feature": "price",
             "retrain": "true", "severity": "warning"}  # fmt: skip
    down = {"alertname": "TributaryApiDown", "model_version": "41", "severity": "critical"}
    _post_alerts(stack, [{"labels": drift, "annotations": {"summary": "test"}}, {"labels": down}])

    def routed() -> dict[str, str] | None:
        url = f"{_alertmanager(stack)}/api/v2/alerts/groups"
        groups = httpx.get(url, timeout=5, trust_env=False).json()
        seen = {
            alert["labels"]["alertname"]: group["receiver"]["name"]
            for group in groups
            for alert in group["alerts"]
            if alert["labels"].get("model_version") == "41"
        }
        return seen if len(seen) == 2 else None

    receivers = wait_for(routed, 15, "both alerts grouped")
    assert receivers == {"TributaryFeatureDrift": RETRAIN_RECEIVER, "TributaryApiDown": "null"}

    [delivered] = wait_for(
        lambda: deliveries.alerts("TributaryFeatureDrift", "41") or None, 30, "the webhook call"
    )
    assert delivered["labels"] == drift and delivered["status"] == "firing"
    body = next(b for b in deliveries.bodies if delivered in b["alerts"])
    assert body["version"] == "4" and body["receiver"] == RETRAIN_RECEIVER
    assert body["groupLabels"] == {"alertname": "TributaryFeatureDrift", "model_version": "41"}
    assert set(deliveries.paths) == {"/alertmanager"}
    time.sleep(6)  # past group_wait of the other group, which must stay undelivered
    assert deliveries.alerts("TributaryApiDown", "41") == []


def test_a_drifting_metric_fires_the_real_rule_up_to_the_webhook(
    stack: Settings, exporter: dict[str, Gauge], deliveries: Deliveries
) -> None:
    window_end = float(int(time.time()) - 3)
    exporter["psi"].labels("3", "user_clicks_1h").set(0.5)
    exporter["psi"].labels("3", "price").set(0.05)
    exporter["requests"].labels("3").set(1200)
    exporter["end"].labels("3").set(window_end)
    exporter["parity"].set(0.02)
    exporter["checked"].set(200)

    def firing() -> dict[str, Any] | None:
        alerts = {a.name: a for a in status(stack).alerts if a.state == "firing"}
        wanted = ("TributaryFeatureDrift", "TributaryParityMismatch")
        return alerts if all(name in alerts for name in wanted) else None

    alerts = wait_for(firing, 60, "drift and parity alerts firing in `status`")
    drift = alerts["TributaryFeatureDrift"]
    assert drift.labels["model_version"] == "3" and drift.labels["feature"] == "user_clicks_1h"
    assert drift.labels["retrain"] == "true" and drift.severity == "warning"
    assert alerts["TributaryParityMismatch"].severity == "critical"

    [delivered] = wait_for(
        lambda: deliveries.alerts("TributaryFeatureDrift", "3") or None, 30, "the webhook call"
    )
    notes = delivered["annotations"]
    assert (notes["metric"], notes["threshold"], notes["value"]) == (
        "tributary_monitor_feature_psi", "0.2", "0.5",
    )  # fmt: skip
    assert notes["window_end"] == f"{window_end:.0f}" and notes["window"].startswith("ending ")
    assert notes["runbook_url"] == "docs/runbook.md#tributaryfeaturedrift"
    assert delivered["generatorURL"].startswith(f"http://{stack.prometheus_address}/")
    assert not any(
        alert["labels"]["alertname"] == "TributaryParityMismatch"
        for body in deliveries.bodies
        for alert in body["alerts"]
    )


def test_status_table_lists_the_firing_alerts(
    stack: Settings, exporter: dict[str, Gauge], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter["parity"].set(0.5)
    exporter["checked"].set(10)
    wait_for(
        lambda: any(a.name == "TributaryParityMismatch" and a.state == "firing"
                    for a in status(stack).alerts) or None,
        30, "the parity alert firing",
    )  # fmt: skip
    for name, value in settings_env(stack).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRIBUTARY_CONFIG", str(Path(stack.state_dir) / "none.toml"))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(build_app(), ["status"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "TributaryParityMismatch" in line]
    assert len(rows) == 1 and "firing" in rows[0] and "critical" in rows[0]
