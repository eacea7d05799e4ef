"""The ingest flow against the real broker and real Delta tables.

Bad input lands in the DLQ with exactly the reason the simulator broke it for;
every good event lands in bronze exactly once, also when the flow runs again
over the same topics (a restart without recovery) or is killed mid-run and
resumed from its recovery store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import init_db_dir
from bytewax.testing import run_main as _run_main
from deltalake import DeltaTable

from flows.ingest import build_flow
from infra.contracts import DlqHeaders, RejectionReason
from infra.contracts.tables import TableName
from infra.kafka.reader import end_offsets, read_topic
from infra.plantly.simulator import Scenario, ShopSimulator, SimMessage, SimulationConfig
from infra.plantly.traffic import KafkaSink, send_traffic
from infra.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run_main(flow: Dataflow) -> None:
    _run_main(flow)


class _Recorder:
    """A traffic sink that keeps what was sent, with the reason each bad event expects."""

    def __init__(self) -> None:
        self.messages: list[SimMessage] = []

    def write(self, message: SimMessage) -> None:
        self.messages.append(message)

    def close(self) -> None:
        return


def simulate(settings: Settings, events: int) -> list[SimMessage]:
    config = SimulationConfig(
        events=events, seed=23, history_days=2, anchor=datetime.now(UTC),
        scenario=Scenario.BAD_INPUT, bad_fraction=0.05,
    )  # fmt: skip
    recorder = _Recorder()
    send_traffic(ShopSimulator(config), [KafkaSink(settings), recorder])
    return recorder.messages


def table(settings: Settings, name: str) -> pa.Table:
    return DeltaTable(settings.table_uri(name)).to_pyarrow_table()


def _ids(messages: list[SimMessage], topic: str, field: str) -> list[str]:
    return [json.loads(m.value)[field] for m in messages if m.topic == topic and m.expected is None]


def assert_bronze_exactly_once(settings: Settings, sent: list[SimMessage]) -> None:
    events = table(settings, TableName.BRONZE_EVENTS)
    landed = events.column("event_id").to_pylist()
    good = _ids(sent, "events", "event_id")
    assert len(landed) == len(good) and sorted(landed) == sorted(good)
    positions = list(zip(*(events.column(c).to_pylist() for c in _SOURCE), strict=True))
    assert len(set(positions)) == len(positions)

    orders = table(settings, TableName.BRONZE_ORDERS)
    assert not {"email", "shipping_address"} & set(orders.schema.names)
    assert sorted(orders.column("order_id").to_pylist()) == sorted(_ids(sent, "orders", "order_id"))
    pii = table(settings, TableName.PII_CUSTOMERS)
    emails = {json.loads(m.value)["email"] for m in sent if m.topic == "orders"}
    order_ids = sorted(orders.column("order_id").to_pylist())
    assert sorted(pii.column("order_id").to_pylist()) == order_ids
    assert set(pii.column("email").to_pylist()) == emails
    for bronze in (events, orders):  # no email, in any text column, outside pii/customers
        for name in bronze.schema.names:
            if pa.types.is_string(bronze.schema.field(name).type):
                assert not pc.any(pc.match_substring(bronze.column(name), "@")).as_py(), name


_SOURCE = ("source_topic", "source_partition", "source_offset")


def dead_letters(settings: Settings) -> list[tuple[bytes, DlqHeaders, bytes | None]]:
    records = read_topic(settings, settings.topic(settings.topics.dlq))
    return [(r.value, DlqHeaders.from_kafka(r.headers), r.key) for r in records]


def test_ingest_routes_bad_input_and_lands_good_events_once(profile_settings: Settings) -> None:
    settings = profile_settings
    sent = simulate(settings, 20_000)
    events_topic = settings.topic(settings.topics.events)
    assert sum(end_offsets(settings, events_topic).values()) == 20_000

    run_main(build_flow(settings, tail=False))

    expected = Counter((m.value, m.expected) for m in sent if m.expected is not None)
    dlq = dead_letters(settings)
    assert Counter((value, headers.reason) for value, headers, _ in dlq) == expected
    assert {reason for _, reason in expected} == set(RejectionReason)
    keys = {m.value: m.key for m in sent}
    assert all(key == keys[value] for value, _, key in dlq)
    assert all(h.source_topic == events_topic for _, h, _ in dlq)
    assert_bronze_exactly_once(settings, sent)
    first = {(h.source_partition, h.source_offset) for _, h, _ in dlq}

    # a restart without recovery reads both topics from the beginning again
    run_main(build_flow(settings, tail=False))
    assert_bronze_exactly_once(settings, sent)
    again = dead_letters(settings)
    assert {(h.source_partition, h.source_offset) for _, h, _ in again} == first
    assert len(again) == 2 * len(dlq)  # the DLQ is at-least-once: replays send again


def _bytewax_run(recovery: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "bytewax.run", "flows.ingest:from_env(tail=False)",
        "-r", str(recovery), "-s", "1", "-b", "30",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ))


def _versions(settings: Settings) -> int:
    uri = settings.table_uri(TableName.BRONZE_EVENTS)
    return DeltaTable(uri).version() if DeltaTable.is_deltatable(uri) else -1


def test_killed_and_resumed_from_recovery_lands_each_event_once(
    profile_settings: Settings, tmp_path: Path
) -> None:
    settings = profile_settings
    sent = simulate(settings, 150_000)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)

    first = _bytewax_run(recovery)
    deadline = time.monotonic() + 120
    while _versions(settings) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # no close(), no final snapshot: a real crash
    assert first.wait(30) == -signal.SIGKILL
    partial = table(settings, TableName.BRONZE_EVENTS).num_rows
    assert 0 < partial < len(_ids(sent, "events", "event_id"))

    second = _bytewax_run(recovery)
    assert second.wait(300) == 0
    assert_bronze_exactly_once(settings, sent)
