"""The learner flow against Kafka and MLflow: SIGKILLed mid-stream, it resumes from its checkpoint.

One run is killed after it wrote a checkpoint and restarted; it must end with the
same counts as an uninterrupted run over the same events: no labeled example lost,
none learned twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bytewax.testing import run_main

from infra.errors import NotFoundError
from infra.plantly.simulator import ShopSimulator, SimMessage, SimulationConfig
from infra.plantly.traffic import KafkaSink
from infra.settings import Settings
from tests.local_stack import settings_env
from training import learner_flow
from training.checkpoints import example_rows, latest_checkpoint_version, load_latest
from training.registry import RegisteredVersion, Registry

pytestmark = pytest.mark.integration

EVENTS = 20_000
CHECKPOINT_EVENTS = 1_500
# what `tributary run learner` does (flows.runner), without the CLI in between
RUN = """
import sys
from flows.runner import RunPlan, run_process
from infra.settings import load_settings
run_process(load_settings(), RunPlan(flow="learner", recovery=False, tail=sys.argv[1] == "tail"))
"""


def produce(settings: Settings, messages: list[SimMessage]) -> None:
    sink = KafkaSink(settings)
    for message in messages:
        sink.write(message)
    sink.close()


def halves(events: int) -> tuple[list[SimMessage], list[SimMessage]]:
    config = SimulationConfig(events=events, seed=4, history_days=1)
    messages = list(ShopSimulator(config).messages())
    cut = [i for i, message in enumerate(messages) if message.topic == "events"][events // 2]
    return messages[:cut], messages[cut:]


def start_learner(settings: Settings, mode: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **settings_env(settings),
        "TRIBUTARY_METRICS_PORT": "0",
        "TRIBUTARY_TRAINING__LEARNER_CHECKPOINT_EVENTS": str(CHECKPOINT_EVENTS),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", RUN, mode], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for_checkpoint(
    settings: Settings, child: subprocess.Popen[bytes], log: Path
) -> RegisteredVersion:
    deadline = time.monotonic() + 60
    while True:
        found = latest_checkpoint_version(settings)
        if found is not None:
            return found
        assert child.poll() is None, f"the learner ended early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no checkpoint in 60 s:\n{log.read_text()}"
        time.sleep(0.2)


def versions_after(settings: Settings, number: int) -> list[RegisteredVersion]:
    registry = Registry(settings)
    found = []
    while True:
        number += 1
        try:
            found.append(registry.version(number))
        except NotFoundError:  # the first missing number ends the list
            return found


def test_a_killed_learner_resumes_from_its_checkpoint_and_loses_nothing(
    profile_settings: Settings, tmp_path: Path
) -> None:
    settings = profile_settings
    first, second = halves(EVENTS)
    produce(settings, first)
    log = tmp_path / "learner.log"

    child = start_learner(settings, "tail", log)
    try:
        wait_for_checkpoint(settings, child, log)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    time.sleep(1.0)  # let a registration the kill interrupted land (or not)
    before = latest_checkpoint_version(settings)
    assert before is not None
    assert before.tags["learner"] == "incremental" and before.tags["model_kind"] == "river"
    assert 0 < int(before.tags["learner_events"]) < EVENTS

    produce(settings, second)
    finished = start_learner(settings, "until-end", log)
    assert finished.wait(timeout=120) == 0, log.read_text()

    resumed = versions_after(settings, before.version)
    assert resumed, "the restarted learner wrote no checkpoint"
    assert resumed[0].tags["learner_resumed_from"] == str(before.version)
    assert int(resumed[0].tags["learner_events"]) > int(before.tags["learner_events"])
    crashed = load_latest(settings)
    assert crashed is not None and crashed.version.version == resumed[-1].version

    clean_settings = settings.model_copy(update={"registered_model": "clean-recommender"})
    run_main(learner_flow.build_flow(clean_settings, tail=False, checkpoint_events=10**9))
    clean = load_latest(clean_settings)
    assert clean is not None and clean.version.tags["learner_resumed_from"] == "none"

    assert crashed.state.counters == clean.state.counters
    assert crashed.state.positions == clean.state.positions
    assert clean.state.counters.events == EVENTS
    assert clean.state.counters.labeled > 10_000 and clean.state.counters.positives > 100

    model = Registry(settings).load(crashed.version.version)
    scores = model.score_frame(example_rows())["score"]
    assert model.kind == "river" and 0.0 < float(scores.iloc[0]) < 0.5
