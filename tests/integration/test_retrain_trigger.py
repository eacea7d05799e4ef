"""Alert → Alertmanager → webhook → one ``ml.retrain`` request → worker → tagged champion.

Everything real on loopback: Redis, Kafka (Tansu), MLflow from the session
stack, and Debian's ``prometheus-alertmanager`` 0.25 started per test with a
config that routes ``retrain="true"`` to our receiver and repeats every second.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mlflow
import pandas as pd
import pytest
from deltalake import write_deltalake
from mlflow.exceptions import MlflowException
from prometheus_client import REGISTRY
from pydantic import SecretStr

from infra.contracts.tables import PARTITION_BY, TableName
from infra.kafka.reader import read_topic
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import SimulationConfig
from infra.settings import Settings
from infra.stack.parts import scrape_targets_dir
from tests.local_stack import free_port
from tests.scorers import PopularityScorer, RandomScorer
from training.alert_receiver import (
    ALERT_PATH,
    AlertmanagerNotification,
    AlertReceiver,
    request_for,
)
from training.contract import COLUMNS
from training.dataset import build_rows, simulated_events, time_split
from training.incidents import IncidentLedger, RetrainPublisher
from training.promotion import MODEL_CARD_ARTIFACT, VALIDATION_ARTIFACT
from training.pyfunc import RecommenderModel, Scorer
from training.registry import CHAMPION, Registry, configure, experiment_name, log_recommender
from training.retrain_request import RetrainRequest
from training.retrainer import RetrainWorker, run_worker
from training.train import TrainReport, TrainRequest
from training.webhook import Reply, WebhookReceiver

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent.parent / "fixtures" / "alertmanager"
SECRET = "am-bearer-s3cret"
ANCHOR = datetime(2026, 11, 20, tzinfo=UTC)


# -- a real Alertmanager --------------------------------------------------------


def alertmanager_config(webhook_url: str, secret: str | None) -> str:
    auth = f"        http_config:\n          authorization:\n            credentials: {secret}\n"
    return (
        "route:\n  receiver: nobody\n  group_by: ['alertname', 'model_version', 'feature']\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1s\n  routes:\n"
        "    - receiver: tributary-retrain\n      matchers: ['retrain=\"true\"']\n"
        "receivers:\n  - name: nobody\n  - name: tributary-retrain\n    webhook_configs:\n"
        f"      - url: {webhook_url}\n        send_resolved: true\n" + (auth if secret else "")
    )


@contextmanager
def running_alertmanager(folder: Path, webhook_url: str, secret: str | None) -> Iterator[str]:
    """Alertmanager on a free loopback port, not clustered; its base URL."""
    config = folder / "alertmanager.yml"
    config.write_text(alertmanager_config(webhook_url, secret))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={config}",
         f"--storage.path={folder / 'data'}", "--cluster.listen-address=",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=(folder / "alertmanager.log").open("w"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), 30, "alertmanager ready")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def fire(
    alertmanager: str, feature: str, *, ends_at: datetime | None = None, kind: str = "torch"
) -> None:
    """Post one drift alert to Alertmanager's API v2, as Prometheus would."""
    alert: dict[str, Any] = {
        "labels": {"alertname": "TributaryFeatureDrift", "severity": "warning",
                   "retrain": "true", "model_version": "3", "feature": feature,
                   "retrain_kind": kind},
        "annotations": {"summary": f"PSI of {feature} is 0.31", "value": "0.31",
                        "threshold": "0.2", "window": "5m",
                        "metric": "tributary_monitor_feature_psi"},
        "generatorURL": "http://127.0.0.1:19090/graph?g0.expr=tributary_monitor_feature_psi"
                        "+%3E%3D+0.2&g0.tab=1",
    }  # fmt: skip
    if ends_at is not None:
        alert["endsAt"] = ends_at.isoformat()
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- our receiver, recording what Alertmanager sent and what it was answered ---


@dataclass
class Recording:
    """Wraps the /alertmanager route and keeps every delivery and its answer."""

    inner: AlertReceiver
    deliveries: list[tuple[dict[str, str], bytes, Reply]] = field(default_factory=list)

    @property
    def max_body(self) -> int:
        return self.inner.max_body

    def accept(self, headers: Mapping[str, str], body: bytes, client: str) -> Reply:
        reply = self.inner.accept(headers, body, client)
        self.deliveries.append((dict(headers), body, reply))
        return reply

    def statuses(self) -> list[int]:
        return [int(reply.status) for _, _, reply in self.deliveries]


@dataclass
class Trigger:
    settings: Settings
    route: Recording
    receiver: WebhookReceiver

    @property
    def url(self) -> str:
        return self.receiver.base_url + ALERT_PATH


@contextmanager
def trigger(settings: Settings, publisher: RetrainPublisher) -> Iterator[Trigger]:
    ledger = IncidentLedger(settings)
    route = Recording(AlertReceiver(settings, ledger, publisher))
    receiver = WebhookReceiver(settings, print, port=0, routes={ALERT_PATH: route}).start()
    try:
        yield Trigger(settings, route, receiver)
    finally:
        receiver.stop()
        ledger.close()


@pytest.fixture
def secured(profile_settings: Settings) -> Settings:
    training = profile_settings.training.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    return profile_settings.model_copy(update={"training": training})


def retrain_messages(settings: Settings) -> list[RetrainRequest]:
    topic = settings.topic(settings.topics.retrain)
    return [RetrainRequest.model_validate_json(r.value) for r in read_topic(settings, topic)]


# -- the trigger -----------------------------------------------------------------


def test_a_firing_alert_gives_one_request_with_its_evidence_despite_repeats(
    secured: Settings, tmp_path: Path
) -> None:
    with (
        trigger(secured, RetrainPublisher(secured)) as hook,
        running_alertmanager(tmp_path, hook.url, SECRET) as alertmanager,
    ):
        fire(alertmanager, "user_clicks_1h")
        wait_for(lambda: len(hook.route.deliveries) >= 3, 30, "three notifications")
        fire(alertmanager, "user_clicks_1h", ends_at=datetime.now(UTC))
        wait_for(lambda: b'"status":"resolved"' in hook.route.deliveries[-1][1], 30, "resolved")
    headers, body, _ = hook.route.deliveries[0]
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["user-agent"].startswith("Alertmanager/0.25")
    assert set(hook.route.statuses()) == {200}
    assert [r.body["sent"] for _, _, r in hook.route.deliveries if r.body] == [1] + [0] * (
        len(hook.route.deliveries) - 1
    )
    # the real body has the shape of the fixture the unit tests use
    fixture = json.loads((FIXTURE / "firing-two-alerts-0.25.json").read_bytes())
    assert set(json.loads(body)) == set(fixture)
    assert set(json.loads(body)["alerts"][0]) == set(fixture["alerts"][0])
    note = AlertmanagerNotification.model_validate_json(body, strict=True)

    [request] = retrain_messages(secured)
    alert = note.alerts[0]
    assert request.incident == alert.incident and request.evidence is not None
    evidence = request.evidence
    assert (evidence.alert, evidence.feature, evidence.model_version) == (
        "TributaryFeatureDrift", "user_clicks_1h", 3,
    )  # fmt: skip
    assert (evidence.value, evidence.threshold, evidence.window) == (0.31, 0.2, "5m")
    assert evidence.expression == "tributary_monitor_feature_psi >= 0.2"
    assert evidence.fingerprint == alert.fingerprint and evidence.starts_at == alert.starts_at
    assert request.reason.startswith("TributaryFeatureDrift on model v3, feature user_clicks_1h")
    assert IncidentLedger(secured).state(alert.incident) == "sent"


def test_kafka_down_answers_503_and_alertmanager_retries_into_exactly_one_request(
    profile_settings: Settings, tmp_path: Path
) -> None:
    nowhere = profile_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    with (
        trigger(profile_settings, RetrainPublisher(nowhere, timeout_s=1.0)) as hook,
        running_alertmanager(tmp_path, hook.url, None) as alertmanager,
    ):
        fire(alertmanager, "product_price")
        wait_for(lambda: hook.route.statuses().count(503) >= 2, 30, "two refused deliveries")
        assert retrain_messages(profile_settings) == []  # nothing produced, nothing queued
        hook.route.inner.publisher = RetrainPublisher(profile_settings)  # Kafka is back
        wait_for(lambda: 200 in hook.route.statuses(), 60, "a delivery after Kafka is back")
        wait_for(lambda: hook.route.statuses()[-3:] == [200] * 3, 30, "repeats")
    statuses = hook.route.statuses()
    assert statuses[: statuses.index(200)] == [503] * statuses.index(200)
    [request] = retrain_messages(profile_settings)
    assert request.evidence is not None and request.evidence.feature == "product_price"
    errors = [r.body for _, _, r in hook.route.deliveries if r.status == 503]
    assert all(e is not None and "not delivered" in e["error"]["message"] for e in errors)


def test_concurrent_deliveries_of_one_incident_produce_one_request(
    profile_settings: Settings,
) -> None:
    body = (FIXTURE / "firing-two-alerts-0.25.json").read_bytes()
    with trigger(profile_settings, RetrainPublisher(profile_settings)) as hook:
        start = threading.Barrier(6)
        answers: list[int] = []

        def deliver() -> None:
            start.wait()
            answers.append(httpx.post(hook.url, content=body, timeout=30).status_code)

        threads = [threading.Thread(target=deliver) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert set(answers) <= {200, 503} and 200 in answers
        assert httpx.post(hook.url, content=body, timeout=30).json()["duplicates"] == 2
    messages = retrain_messages(profile_settings)
    assert sorted(str(m.evidence.feature) for m in messages if m.evidence) == [
        "product_price", "user_clicks_1h",
    ]  # fmt: skip


def test_the_redis_ledger_claims_once_retakes_stale_claims_and_expires(
    profile_settings: Settings,
) -> None:
    ledger = IncidentLedger(profile_settings, ttl_s=60, lease_s=0.3)
    incident = "00112233aabbccdd@2026-12-02T11:45:53.195141Z"
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        outcomes.append(ledger.claim(incident)[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["busy"] * 7 + ["claimed"]
    time.sleep(0.4)  # the claim's owner "crashed": the lease runs out
    outcome, token = ledger.claim(incident)
    assert outcome == "retaken" and ledger.state(incident) == "pending"
    ledger.release(incident, "someone-else")
    assert ledger.state(incident) == "pending"
    ledger.release(incident, token)
    assert ledger.state(incident) is None
    assert ledger.claim(incident)[0] == "claimed"
    ledger.mark_sent(incident)
    assert ledger.claim(incident)[0] == "sent" and ledger.state(incident) == "sent"
    assert 0 < int(ledger.client.ttl(ledger.key(incident))) <= 60
    assert ledger.key(incident).startswith(f"{profile_settings.profile}:retrain:incident:")


# -- the worker: evidence on the champion, cooldown, rejected retrains ---------------


@pytest.fixture(scope="module")
def validation() -> pd.DataFrame:
    config = SimulationConfig(events=60_000, seed=11, history_days=3, users=800, anchor=ANCHOR)
    frame = build_rows(simulated_events(config), 0.0, ANCHOR.timestamp(), load_catalog())
    return time_split(frame, 0.3)[1]


def registering(validation: pd.DataFrame, scorer: Scorer) -> Callable[..., TrainReport]:
    """A trainer that registers ``scorer`` at once, with the rows the gates need."""

    def trainer(settings: Settings, request: TrainRequest) -> TrainReport:
        configure(settings)
        mlflow.set_experiment(experiment_name(settings))
        with mlflow.start_run(), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(VALIDATION_ARTIFACT).name
            validation.to_parquet(path)
            mlflow.log_artifact(str(path), str(Path(VALIDATION_ARTIFACT).parent))
            mlflow.log_text("# Model card\n", MODEL_CARD_ARTIFACT)
            version = log_recommender(
                settings, RecommenderModel(scorer),
                input_example=validation[list(COLUMNS)].head(3),
                delta_versions={"bronze/events": 1},
            )  # fmt: skip
        return TrainReport(version.version, version.run_id, request.kind, len(validation), 0,
                           len(validation), 0.0, 0.0, 0.0, {}, 0.0)  # fmt: skip

    return trainer


def alert_request(feature: str, fingerprint: str) -> RetrainRequest:
    raw = json.loads((FIXTURE / "firing-two-alerts-0.25.json").read_bytes())
    alert = raw["alerts"][0]
    alert["labels"]["feature"], alert["fingerprint"] = feature, fingerprint
    note = AlertmanagerNotification.model_validate(raw, strict=False)
    return request_for(note.alerts[0], datetime.now(UTC))


def runs(job: str, outcome: str) -> float:
    labels = {"job": job, "outcome": outcome}
    return REGISTRY.get_sample_value("tributary_retrain_runs_total", labels) or 0.0


def test_the_champion_says_why_it_was_trained_and_the_cooldown_holds(
    profile_settings: Settings, validation: pd.DataFrame
) -> None:
    worker = RetrainWorker(profile_settings, trainer=registering(validation, PopularityScorer()))
    first = alert_request("user_clicks_1h", "0000000000000001")
    result = worker.retrain(first)
    assert result.outcome == "promoted", result.detail
    registry = Registry(profile_settings)
    champion = registry.alias(CHAMPION)
    assert champion is not None and champion.version == result.version
    assert champion.tags["retrain_reason"] == first.reason
    assert champion.tags["retrain_incident"] == first.incident
    evidence = json.loads(champion.tags["retrain_evidence"])
    assert evidence["feature"] == "user_clicks_1h" and evidence["value"] == 0.27
    assert evidence["fingerprint"] == "0000000000000001" and champion.tags["gates"] == "passed"
    run = registry.client.get_run(champion.run_id)
    assert run.data.tags["retrain_incident"] == first.incident

    skipped_before = runs("retrain", "skipped")
    for n in (2, 3):  # a second and a third incident inside the cooldown
        later = worker.retrain(alert_request("product_price", f"000000000000000{n}"))
        assert later.outcome == "skipped" and "cooldown" in later.detail
    assert runs("retrain", "skipped") == skipped_before + 2
    assert registry.alias(CHAMPION) == champion
    last = json.loads(registry.client.get_registered_model(registry.name).tags["last_retrain"])
    assert last["outcome"] == "skipped" and last["incident"].startswith("0000000000000003@")

    # the same incident delivered twice never trains twice, cooldown or not
    eager = profile_settings.model_copy(update={"training": profile_settings.training.model_copy(
        update={"retrain_cooldown_s": 0.0})})  # fmt: skip
    again = RetrainWorker(eager, trainer=registering(validation, PopularityScorer())).retrain(first)
    assert again.outcome == "skipped" and f"already trained v{champion.version}" in again.detail


def test_a_retrain_that_fails_its_gates_keeps_the_champion_and_does_not_loop(
    profile_settings: Settings, validation: pd.DataFrame
) -> None:
    good = RetrainWorker(profile_settings, trainer=registering(validation, PopularityScorer()))
    eager = profile_settings.model_copy(update={"training": profile_settings.training.model_copy(
        update={"retrain_cooldown_s": 0.0})})  # fmt: skip
    assert RetrainWorker(eager, trainer=registering(validation, PopularityScorer())).retrain(
        RetrainRequest(reason="first model", kind="river")
    ).outcome == "promoted"  # fmt: skip
    registry = Registry(profile_settings)
    champion = registry.alias(CHAMPION)
    rejected_before = runs("retrain", "rejected")

    bad = RetrainWorker(eager, trainer=registering(validation, RandomScorer()))
    result = bad.retrain(alert_request("user_clicks_1h", "00000000000000aa"))
    assert result.outcome == "rejected" and "auc: FAIL" in result.detail
    assert registry.alias(CHAMPION) == champion
    assert runs("retrain", "rejected") == rejected_before + 1
    last = json.loads(registry.client.get_registered_model(registry.name).tags["last_retrain"])
    assert last["outcome"] == "rejected" and last["version"] == result.version
    assert result.version is not None
    assert registry.version(result.version).tags["retrain_incident"].startswith("00000000000000aa")
    # the alert keeps firing: with the normal cooldown the next incident waits
    follow_up = good.retrain(alert_request("user_clicks_1h", "00000000000000ab"))
    assert follow_up.outcome == "skipped" and "cooldown" in follow_up.detail


# -- the whole loop: Alertmanager → run_worker → real training → tagged champion ----


@pytest.fixture
def bronze(secured: Settings) -> Settings:
    config = SimulationConfig(events=60_000, seed=5, history_days=3, users=800, anchor=ANCHOR)
    write_deltalake(
        secured.table_uri(TableName.BRONZE_EVENTS), simulated_events(config),
        partition_by=PARTITION_BY[TableName.BRONZE_EVENTS],
    )  # fmt: skip
    return secured


def test_alertmanager_to_a_new_champion_through_the_running_worker(
    bronze: Settings, tmp_path: Path
) -> None:
    port, stop = free_port(), threading.Event()
    worker = threading.Thread(target=run_worker, args=(bronze, stop, port, 0), daemon=True)
    worker.start()
    try:
        with running_alertmanager(tmp_path, f"http://127.0.0.1:{port}{ALERT_PATH}",
                                  SECRET) as alertmanager:  # fmt: skip
            fire(alertmanager, "user_clicks_1h", kind="river")  # river trains in seconds
            registry = Registry(bronze)
            wait_for(lambda: _last_retrain(registry) is not None, 300, "the retrain's outcome")
        last = _last_retrain(registry)
        assert last is not None and last["outcome"] == "promoted", last
        champion = registry.alias(CHAMPION)
        assert champion is not None and champion.version == last["version"]
        [request] = retrain_messages(bronze)
        assert champion.tags["retrain_incident"] == request.incident
        assert champion.tags["retrain_reason"] == request.reason
        assert json.loads(champion.tags["retrain_evidence"])["feature"] == "user_clicks_1h"
        metrics = _scrape_worker(bronze)
        assert 'tributary_retrain_runs_total{job="retrain",outcome="promoted"}' in metrics
        assert 'tributary_retrain_alerts_total{outcome="sent"}' in metrics
    finally:
        stop.set()
        worker.join(60)


def _last_retrain(registry: Registry) -> dict[str, Any] | None:
    """The worker's record of its latest retrain job, once there is one."""
    try:
        raw = registry.client.get_registered_model(registry.name).tags.get("last_retrain")
    except MlflowException:  # nothing registered yet
        return None
    record: dict[str, Any] | None = json.loads(raw) if raw else None
    return record if record is not None and record["job"] == "retrain" else None


def _scrape_worker(settings: Settings) -> str:
    announced = scrape_targets_dir(settings) / f"{settings.profile}-retrainer-0.json"
    [target] = json.loads(announced.read_text())
    assert target["labels"] == {"profile": settings.profile, "process": "retrainer-0"}
    return httpx.get(f"http://{target['targets'][0]}/metrics", timeout=5).text
