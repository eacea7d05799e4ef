"""`up`, `status`, `down` against the real processes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from confluent_kafka import Producer
from typer.testing import CliRunner

from infra.cli.app import build_app
from infra.errors import StackError
from infra.settings import Settings
from infra.stack import down, status, up
from infra.stack.process import port_problem
from infra.stack.procfs import cmdline
from tests.integration.conftest import NewStackSettings

CORE = ["kafka", "redis", "mlflow"]
ALL = [*CORE, "prometheus", "alertmanager"]


def _produce(settings: Settings, topic: str, count: int) -> None:
    # One partition, lingering: the records travel as one batch, which is
    # exactly where Tansu's ListOffsets undercounts.
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 50})
    for index in range(count):
        producer.produce(topic, value=b"{}", key=str(index), partition=0)
    assert producer.flush(10) == 0


@pytest.mark.integration
def test_lifecycle(new_stack_settings: NewStackSettings) -> None:
    settings = new_stack_settings("lifecycle")
    try:
        first = up(settings)
        assert [(a.name, a.action) for a in first.parts] == [(n, "started") for n in ALL]

        running = status(settings)
        assert [p.name for p in running.parts] == ALL
        assert all(p.state == "running" and p.healthy and p.pid for p in running.parts)
        pids = {p.name: p.pid for p in running.parts}

        again = up(settings)
        assert {a.name: (a.action, a.pid) for a in again.parts} == {
            name: ("already running", pid) for name, pid in pids.items()
        }

        events = settings.topic(settings.topics.events)
        _produce(settings, events, 25)
        topics = {t.name: t for t in status(settings).topics}
        assert set(settings.all_topics()) <= set(topics)
        assert {topics[name].partitions for name in settings.all_topics()} == {4}
        assert topics[events].messages == topics[events].end_offset == 25

        stopped = down(settings)
        assert {a.name: a.pid for a in stopped} == pids
        after = status(settings)
        stopped_parts = [(p.name, p.state, p.pid) for p in after.parts]
        assert stopped_parts == [(name, "stopped", None) for name in CORE]
        assert after.topics == []
        assert all(cmdline(pid) is None for pid in pids.values() if pid)
        assert list((settings.state_dir / "run").iterdir()) == []
        assert down(settings) == []
    finally:
        down(settings)


@pytest.mark.integration
def test_taken_port_fails_before_anything_starts(new_stack_settings: NewStackSettings) -> None:
    settings = new_stack_settings("taken")
    address = settings.kafka_address
    with socket.socket() as squatter:
        squatter.bind((address.host, address.port))
        squatter.listen()
        with pytest.raises(StackError) as caught:
            up(settings)

    assert caught.value.message == (
        f"kafka: {address} is already in use by another process "
        "(set TRIBUTARY_KAFKA_BOOTSTRAP to another port)"
    )
    assert not (settings.state_dir / "run").exists()
    assert port_problem(settings.redis_address) is None
    assert port_problem(settings.mlflow_address) is None


@pytest.mark.integration
def test_cli_status_json(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "STATE_DIR": str(stack_settings.state_dir),
        "KAFKA_BOOTSTRAP": stack_settings.kafka_bootstrap,
        "REDIS_URL": stack_settings.redis_url,
        "MLFLOW_URI": stack_settings.mlflow_uri,
        "PROMETHEUS_PORT": str(stack_settings.prometheus_port),
    }.items():
        monkeypatch.setenv(f"TRIBUTARY_{name}", value)
    monkeypatch.setenv("TRIBUTARY_CONFIG", str(Path(stack_settings.state_dir) / "none.toml"))

    result = CliRunner().invoke(build_app(), ["status", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    parts = {part["name"]: part for part in report["parts"]}
    assert list(parts) == CORE
    for part in parts.values():
        assert part["state"] == "running"
        assert part["healthy"] is True
        assert isinstance(part["pid"], int)
    assert parts["kafka"]["address"] == stack_settings.kafka_bootstrap
    topics = {topic["name"]: topic for topic in report["topics"]}
    for name in stack_settings.all_topics():
        assert topics[name]["partitions"] == stack_settings.topic_partitions
        assert topics[name]["end_offset"] >= 0
    assert report["topics_error"] is None
