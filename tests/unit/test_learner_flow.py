"""The learner dataflow under one and two workers, with Kafka and MLflow stand-ins.

Kafka partitions are lists of :class:`KafkaBatch`; checkpoints are kept in a list
instead of MLflow. The expected counts come from a plain :class:`LearnerState`
fed each partition's valid events, since labels depend only on each partition's
order, not on how the partitions interleave.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import cluster_main, run_main
from prometheus_client import REGISTRY

from flows.kafka_source import KafkaBatch
from infra.errors import StackError
from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import Scenario, ShopSimulator, SimulationConfig
from infra.settings import Settings
from training.checkpoints import Checkpoint, CheckpointPolicy, CheckpointWriter
from training.learner_flow import LearnerStart, build_flow
from training.learner_state import LearnerEvent, LearnerState
from training.registry import RegisteredVersion

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
TOPIC = "shop.events"
PARTITIONS = 3
BATCH = 250


class _Partition(StatefulSourcePartition[KafkaBatch, int]):
    """Batches of one partition from ``start`` (an offset), like the Kafka source."""

    def __init__(self, batches: list[KafkaBatch], start: int | None) -> None:
        first = start or 0
        self.batches = [b for b in batches if b.offsets[-1] >= first]
        if self.batches and self.batches[0].offsets[0] < first:  # start mid-batch
            head = self.batches[0]
            cut = head.offsets.index(first)
            self.batches[0] = KafkaBatch(
                head.topic, head.partition, head.offsets[cut:], head.keys[cut:],
                head.values[cut:], head.timestamps[cut:],
            )  # fmt: skip
        self.position = first

    def next_batch(self) -> list[KafkaBatch]:
        if not self.batches:
            raise StopIteration()
        batch = self.batches.pop(0)
        self.position = batch.offsets[-1] + 1
        return [batch]

    def snapshot(self) -> int:
        return self.position


class BatchListSource(FixedPartitionedSource[KafkaBatch, int]):
    def __init__(self, parts: dict[str, list[KafkaBatch]]) -> None:
        self.parts = parts

    def list_parts(self) -> list[str]:
        return sorted(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self.parts[for_part], resume_state)


Traffic = tuple[dict[str, list[KafkaBatch]], dict[str, list[LearnerEvent]]]


def traffic(events: int = 4_000) -> Traffic:
    """Simulated messages spread over partitions by user, and each partition's valid events."""
    config = SimulationConfig(
        events=events, seed=8, history_days=1, anchor=ANCHOR, scenario=Scenario.BAD_INPUT
    )
    batches: dict[str, list[KafkaBatch]] = defaultdict(list)
    valid: dict[str, list[LearnerEvent]] = defaultdict(list)
    offsets = [0] * PARTITIONS
    for message in ShopSimulator(config).messages():
        if message.topic != "events":
            continue
        partition = sum(message.key) % PARTITIONS
        part = f"{partition}-{TOPIC}"
        if message.expected is None:
            row = json.loads(message.value)
            row["event_ts"] = datetime.fromisoformat(row["event_ts"])
            valid[part].append(LearnerEvent.from_mapping(row))
        if not batches[part] or len(batches[part][-1]) == BATCH:
            batches[part].append(KafkaBatch(TOPIC, partition))
        batch = batches[part][-1]
        batch.offsets.append(offsets[partition])
        batch.keys.append(message.key)
        batch.values.append(message.value)
        batch.timestamps.append(0.0)
        offsets[partition] += 1
    return dict(batches), dict(valid)


class Recorder:
    """Stands in for MLflow: keeps every checkpoint, numbers them like versions."""

    def __init__(self) -> None:
        self.checkpoints: list[Checkpoint] = []

    def __call__(self, checkpoint: Checkpoint) -> RegisteredVersion:
        self.checkpoints.append(checkpoint)
        return RegisteredVersion("learner-test", len(self.checkpoints), "run", {})


def run(
    parts: dict[str, list[KafkaBatch]], workers: int, start: LearnerStart, every: int
) -> Recorder:
    recorder = Recorder()
    flow = build_flow(
        Settings(metrics_port=0),
        tail=False,
        start=start,
        source=BatchListSource(parts),
        write=recorder,
        checkpoint_events=every,
        products=load_catalog().product_ids,
        clock=lambda: ANCHOR,
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return recorder


def expected_state(valid: dict[str, list[LearnerEvent]]) -> LearnerState:
    state = LearnerState()
    for part, events in sorted(valid.items()):
        state.learn_batch(part, events)
    return state


@pytest.fixture(scope="module")
def data() -> Traffic:
    return traffic()


def labeled_total(label: str) -> float:
    value = REGISTRY.get_sample_value("tributary_learner_labeled_examples_total", {"label": label})
    return value or 0.0


@pytest.mark.parametrize("workers", [1, 2])
def test_the_flow_learns_every_labeled_example_once(data: Traffic, workers: int) -> None:
    parts, valid = data
    expected = expected_state(valid)
    before = labeled_total("positive"), labeled_total("negative")
    recorder = run(parts, workers, LearnerStart(LearnerState()), every=1_000)
    final = LearnerState.restore(recorder.checkpoints[-1].state)
    assert final.counters == expected.counters
    assert expected.counters.labeled > 2_000 and expected.counters.positives > 20
    # positions include the invalid messages at the partitions' ends
    assert final.positions == {p: b[-1].offsets[-1] + 1 for p, b in parts.items()}
    positives = labeled_total("positive") - before[0]
    negatives = labeled_total("negative") - before[1]
    assert (positives, positives + negatives) == (
        expected.counters.positives,
        expected.counters.labeled,
    )


def test_checkpoints_follow_the_cadence_and_carry_their_state(data: Traffic) -> None:
    parts, _ = data
    recorder = run(parts, 1, LearnerStart(LearnerState()), every=1_000)
    events = [c.counters["events"] for c in recorder.checkpoints]
    assert len(events) >= 3 and events == sorted(events)
    assert all(c.resumed_from is None for c in recorder.checkpoints)
    for checkpoint in recorder.checkpoints:
        state = LearnerState.restore(checkpoint.state)
        assert state.counters.as_dict() == checkpoint.counters
        assert state.positions == checkpoint.positions
        assert 0.0 < checkpoint.metrics["log_loss"] < 1.0


def test_a_run_resumed_from_a_checkpoint_ends_like_an_uninterrupted_one(data: Traffic) -> None:
    parts, valid = data
    whole = run(parts, 1, LearnerStart(LearnerState()), every=1_000)
    middle = whole.checkpoints[1]
    resumed = run(parts, 2, LearnerStart(LearnerState.restore(middle.state), version=2), 1_000)
    assert resumed.checkpoints[0].resumed_from == 2
    assert resumed.checkpoints[0].counters["events"] > middle.counters["events"]
    assert resumed.checkpoints[-1].counters == whole.checkpoints[-1].counters
    assert resumed.checkpoints[-1].positions == whole.checkpoints[-1].positions
    assert whole.checkpoints[-1].counters == expected_state(valid).counters.as_dict()


def test_nothing_new_no_checkpoint(data: Traffic) -> None:
    parts, _ = data
    whole = run(parts, 1, LearnerStart(LearnerState()), every=1_000)
    done = LearnerState.restore(whole.checkpoints[-1].state)
    again = run(parts, 1, LearnerStart(done, version=9), every=1_000)
    assert again.checkpoints == []


def test_an_unreachable_mlflow_stops_the_start_instead_of_starting_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        silent = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(StackError, match=r"MLflow at .* does not answer"):
        LearnerStart.load(Settings(mlflow_uri=silent))


# -- the checkpoint policy and writer -------------------------------------------


def test_the_policy_checkpoints_on_events_or_time_but_only_with_news() -> None:
    now = [0.0]
    policy = CheckpointPolicy(every_events=100, every_s=60.0, clock=lambda: now[0])
    assert not policy.due(99) and policy.due(100)
    now[0] = 61.0
    assert policy.due(1)
    policy.taken(1)
    now[0] = 200.0
    assert not policy.due(1) and policy.due(2)
    assert policy.next_time() == 61.0 + 60.0


def checkpoint(events: int) -> Checkpoint:
    return Checkpoint(b"", {}, {"events": events}, {}, None)


def test_the_writer_skips_checkpoints_a_newer_one_replaced() -> None:
    release = threading.Event()
    written: list[int] = []

    def slow_write(c: Checkpoint) -> RegisteredVersion:
        release.wait(10)
        written.append(c.counters["events"])
        return RegisteredVersion("m", len(written), "run", {})

    writer = CheckpointWriter(slow_write)
    writer.submit(checkpoint(1))
    deadline = time.monotonic() + 10
    while writer._next is not None:  # wait until the thread took the first one
        assert time.monotonic() < deadline
        time.sleep(0.001)
    writer.submit(checkpoint(2))
    writer.submit(checkpoint(3))
    release.set()
    writer.close()
    assert written == [1, 3] and writer.superseded == 1
    assert [v.version for v in writer.written] == [1, 2]


def test_the_writer_retries_and_close_reports_a_checkpoint_it_could_not_write() -> None:
    attempts: list[int] = []

    def failing(c: Checkpoint) -> RegisteredVersion:
        attempts.append(c.counters["events"])
        raise ConnectionError("mlflow is down")

    writer = CheckpointWriter(failing, retry_wait_s=0.0)
    writer.submit(checkpoint(7))
    with pytest.raises(RuntimeError, match="not written"):
        writer.close()
    assert attempts == [7, 7, 7]
