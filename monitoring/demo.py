"""The monitoring chapter of ``tributary demo``: the closed loop, with nobody pressing a button.

Steady traffic flows through the API while the monitor measures it against the
champion's reference profile. A champion trained on the shop's own choices
changes the traffic it is measured on once it picks what is shown (and serving
starts after a pause for training): when the monitor sees that, the loop turns
once — alert, ``ml.retrain`` request with its evidence, retrain, the six gates,
a new champion served without a restart — and the demo says so, then checks that
the retrained champion is quiet on steady traffic. Then the ``ficus-craze``
scenario shifts what shoppers want, and the loop turns again. KPIs are printed
before and after. :func:`closed_loop` is also what the end-to-end integration
test runs, with shorter phases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from infra.kafka.reader import end_offsets, read_topic
from infra.plantly.simulator import Scenario, ShopSimulator, SimulationConfig
from infra.plantly.storefront import ApiStorefront
from infra.plantly.traffic import KafkaSink
from infra.settings import Settings
from monitoring.prometheus import Prometheus
from monitoring.workers import LoopProcesses
from serving.demo import wait_ready
from training.registry import CHAMPION, Registry
from training.retrainer import LAST_RETRAIN_TAG

# One-minute windows: the drift alert must fire within two minutes of a shift. The
# simulator's live sessions happen in an instant, so a one-minute label window
# already holds every outcome and realised KPIs show within the chapter.
DEMO_ENV: Final[Mapping[str, str]] = {
    "TRIBUTARY_MONITORING__ALLOWED_LATENESS_S": "5",
    "TRIBUTARY_MONITORING__IDLE_CLOSE_S": "15",
    "TRIBUTARY_MONITORING__LABEL_WINDOW_S": "60",
    "TRIBUTARY_MONITORING__SHOW_WINDOW_S": "30",
    "TRIBUTARY_MONITORING__OUTCOME_LATENESS_S": "10",
    "TRIBUTARY_MONITORING__REFERENCE_POLL_S": "5",
    "TRIBUTARY_MONITORING__PARITY_EVERY_S": "120",
    "TRIBUTARY_SERVING__MODEL_POLL_S": "5",
    # two turns of the loop fit in the chapter
    "TRIBUTARY_TRAINING__RETRAIN_COOLDOWN_S": "120",
}
LOOP: Final = ("api", "ingest", "features", "monitor", "retrainer")
DRIFT_ALERTS: Final = frozenset(
    {"TributaryFeatureDrift", "TributaryCategoricalDrift", "TributaryScoreDrift",
     "TributaryEstimatedPerformanceDrop", "TributaryConceptDrift", "TributaryConversionDrop",
     "TributaryAucDrop"}
)  # fmt: skip
KPI_QUERIES: Final[Mapping[str, str]] = {
    "requests / window": "tributary_monitor_window_requests",
    "CTR (realised)": "tributary_monitor_ctr_ratio",
    "conversion (realised)": "tributary_monitor_conversion_ratio",
    "conversion (promised by the scores)": "tributary_monitor_expected_conversion_ratio",
    "AUC (realised)": "tributary_monitor_roc_auc",
    "AUC (promised by the scores)": "tributary_monitor_expected_roc_auc",
    "AUC estimate, all candidates": "tributary_monitor_candidate_estimated_roc_auc",
    "score PSI": "tributary_monitor_score_psi",
    "max feature PSI": "max by (model_version) (tributary_monitor_feature_psi)",
}


@dataclass(frozen=True)
class LoopTiming:
    """How long each phase may take; the test uses shorter ones than the demo."""

    deploy_s: float = 180.0  # steady traffic under the first champion
    settle_s: float = 90.0  # steady traffic under a champion retrained meanwhile
    rate: float = 50.0  # events/s, as in the history's last hour: ~5 API calls a second
    alert_timeout_s: float = 240.0
    champion_timeout_s: float = 300.0
    window_wait_s: float = 150.0  # for the new champion's first labelled window
    window_s: float = 60.0  # the monitor's windows: ~5 requests/s x 60 s clears the 300 guard
    shift: Scenario = Scenario.FICUS_CRAZE  # what happens after the steady phase


@dataclass
class Incident:
    """One turn of the loop: the alert, its retrain request, the champions around it."""

    alert: dict[str, Any]
    after_s: float  # from the phase's start to the alert firing
    request: dict[str, Any]
    before: int | None
    after: int | None  # the champion after the retrain: ``before`` when it was not promoted
    served: int
    outcome: str = "promoted"  # or the retrain worker's outcome and detail


@dataclass
class LoopResult:
    deployment: Incident | None  # the shift that deploying the first champion caused
    quiet_after_deployment: bool | None  # no drift alert for its successor on steady traffic
    craze: Incident | None  # None: no alert within the phase (said, not hidden)


def monitoring(settings: Settings, console: Console) -> None:
    """The demo chapter: the closed loop with the demo's timing."""
    closed_loop(settings, console, LoopTiming())


def closed_loop(settings: Settings, console: Console, timing: LoopTiming) -> LoopResult:
    """Run the loop end to end on the running stack; see the module docstring."""
    url = f"http://127.0.0.1:{settings.api_port}"
    watch = _Watch(settings, Prometheus.of(settings), console)
    console.print("tributary serve & tributary run ingest|features|monitor|retrainer")
    env = {**DEMO_ENV, "TRIBUTARY_MONITORING__WINDOW_S": f"{timing.window_s:g}"}
    with LoopProcesses(settings, LOOP, env) as loop:
        wait_ready(url, loop.children["api"], timeout=90.0)
        watch.check = loop.check
        traffic = _Traffic(settings, url, timing.rate)
        try:
            deployment, quiet = _steady(watch, traffic, timing)
            shift = timing.shift
            console.print(f"the {shift} begins: tributary simulate --scenario {shift}")
            traffic.switch(timing.shift)
            craze = _craze(watch, timing)
        finally:
            traffic.stop()
        alerts = f"http://{watch.prometheus.address}/alerts"
        console.print(f"dashboard: {url}/dashboard  ·  alerts: {alerts}")
    return LoopResult(deployment, quiet, craze)


def _craze(watch: _Watch, timing: LoopTiming) -> Incident | None:
    try:
        craze = watch.incident(timing.shift, timing.alert_timeout_s, timing.champion_timeout_s)
    except _NoAlertError as quiet:
        watch.console.print(f"[yellow]{quiet}: the {timing.shift} went unnoticed in this run[/]")
        watch.kpis(str(timing.shift))
        return None
    if craze.after is not None:
        watch.first_window(craze.after, timing.window_wait_s)
    watch.kpis(f"version {craze.after} serving the {timing.shift}")
    return craze


def _steady(
    watch: _Watch, traffic: _Traffic, timing: LoopTiming
) -> tuple[Incident | None, bool | None]:
    """Steady traffic; a model that changed its own traffic is caught and replaced first."""
    console = watch.console
    console.print(f"champion: version {watch.champion()}; steady traffic, {timing.rate:g} events/s")
    traffic.switch(Scenario.STEADY)
    try:
        deployment = watch.incident("steady traffic", timing.deploy_s, timing.champion_timeout_s)
    except _NoAlertError:
        watch.kpis("steady traffic")
        console.print("no drift or performance alert on steady traffic")
        return None, None
    console.print(
        "[yellow]the model trained on the shop's own choices now picks what is shown, and "
        "serving began after a pause: the monitor saw the traffic it is served move away "
        "from its reference, and the loop retrained on a window holding the served traffic[/]"
    )
    if deployment.outcome != "promoted":
        return deployment, None
    time.sleep(timing.settle_s)
    watch.kpis(f"steady traffic, version {deployment.after}")
    quiet = not watch.firing(deployment.after)
    still = watch.firing(deployment.after)
    verdict = "no drift alert" if quiet else f"[yellow]still firing: {', '.join(still)}[/]"
    console.print(f"version {deployment.after} on steady traffic: {verdict}")
    return deployment, quiet


class _NoAlertError(TimeoutError):
    """No drift or performance alert fired for the champion in time."""


class _Traffic:
    """Live shoppers at ``rate`` events/s, shown what the API ranks, from a thread.

    Paced here rather than by :func:`~infra.plantly.traffic.send_traffic` so that
    :meth:`switch` and :meth:`stop` end a scenario within a hundred events.
    """

    def __init__(self, settings: Settings, url: str, rate: float) -> None:
        self.settings = settings
        self.url = url
        self.rate = rate
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def switch(self, scenario: Scenario) -> None:
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(scenario, self._stop), name=f"traffic-{scenario}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self, scenario: Scenario, stop: threading.Event) -> None:
        # an hour's worth: the phase ends it long before
        config = SimulationConfig(
            events=int(3600 * self.rate), seed=int(time.time()), scenario=scenario, onset=0.0
        )
        storefront = ApiStorefront(self.url)
        sink = KafkaSink(self.settings)
        started, sent = time.monotonic(), 0
        try:
            for message in ShopSimulator(config, storefront=storefront).messages():
                sink.write(message)
                sent += message.topic == "events"
                if message.topic == "events" and sent % 100 == 0:
                    if stop.is_set():
                        break
                    time.sleep(max(0.0, started + sent / self.rate - time.monotonic()))
        finally:
            sink.close()
            storefront.close()


class _Watch:
    """What the demo reads: Prometheus's alerts and gauges, ml.retrain, the registry."""

    def __init__(self, settings: Settings, prometheus: Prometheus, console: Console) -> None:
        self.settings = settings
        self.prometheus = prometheus
        self.console = console
        self.check: Callable[[], None] = lambda: None

    def champion(self) -> int | None:
        version = Registry(self.settings).alias(CHAMPION)
        return None if version is None else version.version

    def firing(self, version: int | None, since: float = 0.0) -> list[str]:
        """Drift and performance alerts firing for ``version``, active since ``since``."""
        return sorted(
            alert["labels"]["alertname"] + (f"({alert['labels']['feature']})"
                                            if "feature" in alert["labels"] else "")
            for alert in self.prometheus.alerts()
            if alert["labels"].get("alertname") in DRIFT_ALERTS
            and alert["state"] == "firing"
            and alert["labels"].get("model_version") == str(version)
            and _epoch(alert.get("activeAt")) >= since
        )  # fmt: skip

    def incident(self, phase: str, alert_s: float, champion_s: float) -> Incident:
        """Wait for an alert about the champion, its retrain request, the next champion."""
        started, before = time.time(), self.champion()
        topic = self.settings.topic(self.settings.topics.retrain)
        retrain_start = end_offsets(self.settings, topic)
        alert = self._alert(before, started, alert_s)
        after_s = time.time() - started
        self.console.print(f"{phase}: alert firing {after_s:.0f} s in, for version {before}:")
        self.console.print_json(data=alert["labels"] | {"value": alert.get("value")})
        request = self._request(retrain_start, before)
        self.console.print("its ml.retrain request, with the evidence:")
        self.console.print_json(data=request)
        after, outcome = self._outcome(before, str(request.get("incident")), champion_s)
        if outcome != "promoted":
            self.console.print(f"[yellow]the retrain ended {outcome[:400]}[/]")
            self.console.print(f"version {before} stays champion; the cooldown holds")
            served = self._served(after)
            return Incident(alert, after_s, request, before, before, served, outcome)
        self._print_champion(after)
        served = self._served(after)
        self.console.print(f"the API now answers with version {served}, without a restart")
        return Incident(alert, after_s, request, before, after, served)

    def _alert(self, version: int | None, since: float, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            for alert in self.prometheus.alerts():
                labels = alert["labels"]
                if (labels.get("alertname") in DRIFT_ALERTS and alert["state"] == "firing"
                        and labels.get("model_version") == str(version)
                        and _epoch(alert.get("activeAt")) >= since - 5):  # fmt: skip
                    return alert
            time.sleep(2.0)
        raise _NoAlertError(f"no drift alert for version {version} within {timeout:.0f} s")

    def _request(self, start: Mapping[int, int], version: int | None) -> dict[str, Any]:
        topic = self.settings.topic(self.settings.topics.retrain)
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            self.check()
            for record in read_topic(self.settings, topic):
                body: dict[str, Any] = orjson.loads(record.value)
                evidence = body.get("evidence") or {}
                fresh = record.offset >= start.get(record.partition, 0)
                if fresh and evidence.get("model_version") == version:
                    return body
            time.sleep(1.0)
        raise TimeoutError("no ml.retrain request within 120 s of the alert (see loop-*.log)")

    def _outcome(self, before: int | None, incident: str, timeout: float) -> tuple[int, str]:
        """A new champion, or the retrain worker's record of why there is none."""
        registry = Registry(self.settings)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            now = self.champion()
            if now is not None and now != before:
                return now, "promoted"
            tags = registry.client.get_registered_model(registry.name).tags
            record: dict[str, Any] = orjson.loads(tags.get(LAST_RETRAIN_TAG) or "{}")
            if record.get("incident") == incident and record.get("outcome") != "promoted":
                return before or 0, f"{record.get('outcome')}: {record.get('detail')}"
            time.sleep(3.0)
        raise TimeoutError(f"no retrain outcome within {timeout:.0f} s (see loop-retrainer.log)")

    def _served(self, champion: int) -> int:
        url = f"http://127.0.0.1:{self.settings.api_port}/v1/recommendations"
        body = {"user_id": "u-000042", "region": "US-CA", "device": "mobile", "k": 3}
        version, deadline = -1, time.monotonic() + 60.0
        while version != champion and time.monotonic() < deadline:
            version = int(httpx.post(url, json=body, timeout=5.0).json()["model"]["version"])
            time.sleep(0.5)
        return version

    def _print_champion(self, version: int) -> None:
        tags = Registry(self.settings).version(version).tags
        self.console.print(f"new champion: version {version}, through the six gates")
        for key in ("retrain_reason", "retrain_incident", "gates"):
            if key in tags:
                self.console.print(f"  {key}: {tags[key][:300]}")

    def first_window(self, version: int, timeout: float) -> None:
        """Until the monitor closed a labelled window of ``version``, or ``timeout``."""
        deadline = time.monotonic() + timeout
        expr = f'tributary_monitor_labelled_items{{model_version="{version}"}}'
        while time.monotonic() < deadline and not self.prometheus.query(expr):
            self.check()
            time.sleep(3.0)

    def kpis(self, title: str) -> None:
        table = Table("statistic", "model version", "value", title=f"monitor, {title}")
        for name, expr in KPI_QUERIES.items():
            for labels, value in self.prometheus.query(expr):
                table.add_row(name, labels.get("model_version", "-"), f"{value:.4g}")
        self.console.print(table)


def _epoch(text: str | None) -> float:
    """Prometheus's RFC 3339 times (nanoseconds, ``Z``) as epoch seconds; 0 for none.

    >>> _epoch("2026-12-02T12:40:13.018956391Z")
    1796215213.018956
    """
    return datetime.fromisoformat(text).timestamp() if text else 0.0
