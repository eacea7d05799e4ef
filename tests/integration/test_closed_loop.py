"""The closed loop end to end, on a stack of its own with Prometheus and Alertmanager.

A week of history and a busy last hour are ingested, a PyTorch champion goes
through the gates, then :func:`monitoring.demo.closed_loop` — what ``make
demo`` runs — starts the API, the ingest, feature and monitor flows and the
retrain worker as processes and sends live shoppers through the API: steady,
then the ``ficus-craze``. Nobody presses a button: the monitor's statistics
reach Prometheus, a rule fires, Alertmanager calls the retrain worker, the new
version passes the gates and the API serves it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from flows.runner import RunPlan, run_process
from infra.kafka.reader import read_topic
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings
from monitoring.demo import LoopResult, LoopTiming, closed_loop
from tests.local_stack import monitoring_settings_for, running_stack, settings_env
from training.promotion import promote
from training.registry import CHAMPION, Registry
from training.train import TrainRequest, train

pytestmark = pytest.mark.integration

RATE = 50.0
TIMING = LoopTiming(
    deploy_s=150.0, settle_s=60.0, rate=RATE, alert_timeout_s=240.0, champion_timeout_s=300.0
)


@pytest.fixture(scope="module")
def loop_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    folder: Path = tmp_path_factory.mktemp("loop")
    with running_stack(folder, monitoring=True, settings=monitoring_settings_for(folder)) as s:
        yield s


@pytest.fixture(scope="module")
def result(loop_stack: Settings) -> LoopResult:
    settings = loop_stack
    env = settings_env(settings)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        _history(settings)
        report = train(settings, TrainRequest(kind="torch", max_epochs=3, progress=False))
        promote(settings, report.version)
        return closed_loop(settings, Console(width=120), TIMING)


def _history(settings: Settings) -> None:
    """A quiet week, then an hour as busy as the live traffic, ingested and featurised."""
    week = SimulationConfig(events=30_000, seed=5, history_days=7)
    hour = SimulationConfig(events=int(RATE * 3600), seed=6, history_days=1 / 24)
    for config in (week, hour):
        send_traffic(ShopSimulator(config), [KafkaSink(settings)])
    quiet = settings.model_copy(update={"metrics_port": 0})
    for flow in ("ingest", "features"):
        run_process(quiet, RunPlan(flow=flow, recovery=False, tail=False))


def test_the_craze_is_caught_and_a_new_champion_is_served(
    loop_stack: Settings, result: LoopResult
) -> None:
    craze = result.craze
    assert craze.alert["labels"]["retrain"] == "true"
    assert craze.alert["labels"]["model_version"] == str(craze.before)
    assert craze.after != craze.before
    assert craze.served == craze.after  # the API answers with it, no restart
    champion = Registry(loop_stack).alias(CHAMPION)
    assert champion is not None and champion.version == craze.after
    tags = champion.tags
    assert tags["gates"] == "passed"
    assert tags["retrain_reason"].startswith(craze.alert["labels"]["alertname"])
    evidence = orjson.loads(tags["retrain_evidence"])
    assert evidence["model_version"] == craze.before
    assert evidence["threshold"] is not None and evidence["value"] is not None


def test_every_incident_gave_exactly_one_retrain_request(
    loop_stack: Settings, result: LoopResult
) -> None:
    topic = loop_stack.topic(loop_stack.topics.retrain)
    requests = [orjson.loads(record.value) for record in read_topic(loop_stack, topic)]
    incidents = Counter(request["incident"] for request in requests)
    assert incidents, "no retrain request at all"
    assert set(incidents.values()) == {1}
    assert result.craze.request["incident"] in incidents
    for request in requests:
        assert request["evidence"]["alert"].startswith("Tributary")
        assert request["evidence"]["fingerprint"] in request["incident"]


def test_a_retrained_champion_is_quiet_on_the_traffic_it_was_trained_for(
    result: LoopResult,
) -> None:
    if result.deployment is None:
        # the first champion raised nothing on steady traffic: nothing to re-check
        assert result.quiet_after_deployment is None
        return
    assert result.deployment.served == result.deployment.after
    assert result.quiet_after_deployment is True
