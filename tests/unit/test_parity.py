"""Online/offline parity over hand-built events: records made by the real serving code.

The serving app runs in process over the fakes of :mod:`serving.testing`; its
fake Redis holds tiles folded from the same hand-built events that stand in
for ``bronze/events``, as the feature flow would have written them. The
prediction log it produces is what parity reads.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Gauge

from flows.features.tiles import EntityTiles
from infra.cli.app import main
from infra.contracts.tables import BRONZE_EVENTS
from infra.plantly.catalog import load_catalog
from infra.settings import Settings
from monitoring import parity
from monitoring.parity import ParityLoop, ParityReport, ParityTally, check_records
from monitoring.prediction_sample import LoggedPrediction, RecordError, parse_prediction
from serving.app import create_app
from serving.testing import FakeRedis, FakeSource, ListSink, fake_backends
from training.contract import COLUMNS, assemble_rows

CATALOG = load_catalog()
SAFE = [p.product_id for p in CATALOG.values() if not p.invasive_regions][:12]
USERS = ["u-1", "u-2", "u-3"]
Event = tuple[str, float, str, str, float | None, int | None]


def history(now: float) -> list[Event]:
    """Two days of activity of three users on eight products, ending a minute ago."""
    events: list[Event] = []
    for n in range(240):
        ts = round(now - 60 - n * 719.3, 3)
        user, product = USERS[n % 3], SAFE[n % 8]
        kind = ("impression", "impression", "click", "add_to_cart", "purchase")[n % 5]
        price, quantity = (
            (CATALOG[product].price, 1 + n % 2) if kind == "purchase" else (None, None)
        )
        events.append((kind, ts, user, product, price, quantity))
    return events


def bronze(events: Sequence[Event]) -> pa.Table:
    """``events`` as bronze rows (the columns parity reads), out of order on purpose."""
    return bronze_in_order(sorted(events, key=lambda e: e[2]))


def bronze_in_order(rows: Sequence[Event]) -> pa.Table:
    return pa.table(
        {
            "event_type": [e[0] for e in rows],
            "event_ts": pa.array(
                [datetime.fromtimestamp(e[1], UTC) for e in rows],
                BRONZE_EVENTS.field("event_ts").type,
            ),
            "user_id": [e[2] for e in rows],
            "product_id": [e[3] for e in rows],
            "price": pa.array([e[4] for e in rows], pa.float64()),
            "quantity": pa.array([e[5] for e in rows], pa.int32()),
        }
    )


def online_store(settings: Settings, events: Sequence[Event]) -> FakeRedis:
    """What the feature flow writes after processing ``events``."""
    users: dict[str, EntityTiles] = {}
    products: dict[str, EntityTiles] = {}
    for kind, ts, user, product, price, quantity in events:
        users.setdefault(user, EntityTiles()).add(kind, ts, price, quantity)
        products.setdefault(product, EntityTiles()).add(kind, ts, price, quantity)
    redis = FakeRedis()
    for view, states in (("user", users), ("product", products)):
        for entity, tiles in states.items():
            redis.put(settings, view, entity, tiles)
    return redis


def serve(redis: FakeRedis, requests: list[dict[str, Any]]) -> list[LoggedPrediction]:
    """Answer ``requests`` with the real app; the prediction log it wrote, parsed."""
    settings = Settings()
    sink = ListSink()
    backends = fake_backends(FakeSource({1: 0.1}, champion=1), redis, sink)
    with TestClient(create_app(settings, backends=backends)) as client:
        for body in requests:
            response = client.post("/v1/recommendations", json=body)
            assert response.status_code == 200, response.text
    return [parse_prediction(orjson.dumps(value)) for _, value in sink.records]


REQUESTS: list[dict[str, Any]] = [
    {"user_id": "u-1", "region": "US-CA", "candidates": SAFE, "device": "mobile"},
    {"user_id": "u-2", "region": "US-FL", "candidates": SAFE[2:10]},
    {"user_id": "never-seen", "region": "US-TX", "candidates": SAFE[:3], "device": "tablet"},
    {"user_id": "u-3", "region": "US-CA"},  # the whole catalog
]


@pytest.fixture(scope="module")
def served() -> tuple[list[Event], list[LoggedPrediction]]:
    events = history(time.time())
    records = serve(online_store(Settings(), events), REQUESTS)
    assert len(records) == len(REQUESTS)
    return events, records


def test_records_served_by_the_same_code_match_exactly(
    served: tuple[list[Event], list[LoggedPrediction]],
) -> None:
    events, records = served
    tally = check_records(records, bronze(events), CATALOG)
    assert tally.records == 4 and tally.events_replayed == len(events)
    assert tally.values == sum(r.rows for r in records) * len(COLUMNS) > len(CATALOG) * 10
    assert tally.mismatched_values == 0, tally.examples
    assert set(tally.by_column) == set(COLUMNS)
    # real activity was compared, not only defaults
    logged = records[0].features
    assert cast(int, logged["user_purchases_30d"][0]) > 0
    assert any(cast(float, value) > 0 for value in logged["product_ctr_24h"])
    assert cast(float, logged["user_hours_since_last_event"][0]) < 1


def changed(record: LoggedPrediction, column: str, row: int, value: object) -> LoggedPrediction:
    features = {name: list(values) for name, values in record.features.items()}
    features[column][row] = value
    return LoggedPrediction(
        record.request_id, record.ts, record.user_id, record.region, record.device,
        record.candidates, features,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("column", "row", "value"),
    [
        ("user_purchases_30d", 0, 99),
        ("product_ctr_24h", 3, 0.123),
        ("user_hours_since_last_event", 5, 700.0),
        ("category", 1, "not-a-category"),
        ("price", 7, 1.0),
    ],
)
def test_a_changed_value_is_attributed_to_its_feature(
    served: tuple[list[Event], list[LoggedPrediction]], column: str, row: int, value: object
) -> None:
    events, records = served
    broken = changed(records[0], column, row, value)
    tally = check_records([broken, *records[1:]], bronze(events), CATALOG)
    assert tally.mismatched_values == 1 and tally.mismatched_records == 1
    assert {name for name, count in tally.by_column.items() if count} == {column}
    (example,) = tally.examples
    assert (example.request_id, example.column) == (records[0].request_id, column)
    assert example.product_id == records[0].candidates[row] and example.online == value
    # hours since the last event differ by the log's millisecond rounding of ts
    assert example.offline == pytest.approx(records[0].features[column][row], abs=1e-6)


def test_a_redis_state_with_other_counts_is_caught() -> None:
    events = history(time.time())
    settings = Settings()
    redis = online_store(settings, events)
    tampered = EntityTiles()
    for kind, ts, user, _, price, quantity in events:
        if user == "u-2":
            tampered.add(kind, ts, price, quantity)
    for _ in range(3):
        tampered.add("impression", round(time.time() - 30, 3))
    redis.put(settings, "user", "u-2", tampered)
    records = serve(redis, REQUESTS)
    tally = check_records(records, bronze(events), CATALOG)
    assert {e.request_id for e in tally.examples} == {records[1].request_id}
    assert tally.by_column["user_impressions_1h"] == records[1].rows
    assert tally.by_column["user_ctr_7d"] == records[1].rows
    assert tally.mismatched_records == 1
    # u-2's newest event in bronze is minutes old, and lag never adds events
    assert all((e.event_age_s or 0) > 600 for e in tally.examples)
    forgiving = check_records(records, bronze(events), CATALOG, lag_allowance_s=60)
    assert forgiving.by_column == tally.by_column and not any(forgiving.lagged.values())


def test_an_event_not_yet_in_redis_is_a_difference() -> None:
    """Feature lag: bronze holds an event stamped before the request that Redis lacked."""
    events = history(time.time())
    records = serve(online_store(Settings(), events), REQUESTS[:1])
    late = ("click", round(records[0].ts - 5, 3), "u-1", SAFE[0], None, None)
    tally = check_records(records, bronze([*events, late]), CATALOG)
    assert tally.by_column["user_clicks_1h"] == len(SAFE)
    assert tally.by_column["product_clicks_1h"] == 1
    assert tally.by_column["user_hours_since_last_event"] == len(SAFE)
    # every difference is on an entity with an event 5 s before the request
    assert all(e.event_age_s == pytest.approx(5.0) for e in tally.examples)
    forgiving = check_records(records, bronze([*events, late]), CATALOG, lag_allowance_s=10)
    assert forgiving.mismatched_values == 0 and forgiving.records == 1
    assert forgiving.lagged["user_clicks_1h"] == len(SAFE)
    assert forgiving.lagged["product_clicks_1h"] == 1
    too_short = check_records(records, bronze([*events, late]), CATALOG, lag_allowance_s=2)
    assert too_short.by_column == tally.by_column


def in_partitions(events: Sequence[Event], partitions: Sequence[int]) -> pa.Table:
    """Bronze rows with Kafka positions: event i in ``partitions[i]``, offsets in list order."""
    table = bronze_in_order(events)
    offsets = list(range(len(events)))
    return table.append_column("source_partition", pa.array(partitions, pa.int32())).append_column(
        "source_offset", pa.array(offsets, pa.int64())
    )


def served_from(online: Sequence[Event], ts: float) -> LoggedPrediction:
    """A request of u-1 for SAFE[0] at ``ts`` answered from a store that had seen ``online``."""
    user, product = EntityTiles(), EntityTiles()
    for kind, event_ts, who, pid, price, quantity in online:
        if who == "u-1":
            user.add(kind, event_ts, price, quantity)
        if pid == SAFE[0]:
            product.add(kind, event_ts, price, quantity)
    rows = assemble_rows(
        "u-1", "US-CA", "mobile", user.features("user", ts),
        [(SAFE[0], product.features("product", ts))], CATALOG, ts,
    )  # fmt: skip
    return LoggedPrediction("r-lag", ts, "u-1", "US-CA", "mobile", [SAFE[0]], rows)


def test_lag_is_a_prefix_of_each_partition_and_nothing_else() -> None:
    t = 1_796_205_630.0
    events: list[Event] = [
        ("impression", t - 900.0, "u-1", SAFE[0], None, None),
        ("impression", t - 3.0, "u-2", SAFE[0], None, None),  # partition 0, offset 1
        ("purchase", t - 2.0, "u-3", SAFE[0], 12.5, 2),  # partition 1, offset 2
        ("click", t - 1.0, "u-1", SAFE[0], None, None),  # partition 0, offset 3
    ]
    table = in_partitions(events, [0, 0, 1, 0])
    # partition 1 processed, partition 0 not past offset 0: not a time prefix, yet lag
    record = served_from([events[0], events[2]], t)
    assert check_records([record], table, CATALOG).mismatched_values > 0
    forgiven = check_records([record], table, CATALOG, lag_allowance_s=5)
    assert forgiven.mismatched_values == 0 and sum(forgiven.lagged.values()) > 0
    # offset 3 counted before offset 1 of the same partition: no flow does that
    skipped = served_from([events[0], events[2], events[3]], t)
    assert check_records([skipped], table, CATALOG, lag_allowance_s=5).mismatched_values > 0
    # an event missing from before the allowance is not lag
    old = served_from(events[1:], t)
    assert check_records([old], table, CATALOG, lag_allowance_s=5).mismatched_values > 0


def logged_at(as_of: float, ts: float, events: Sequence[Event]) -> LoggedPrediction:
    """A record of u-1 and SAFE[0] read at ``as_of``, logged with time ``ts``; events are u-1's."""
    user = EntityTiles()
    for kind, event_ts, _, _, price, quantity in events:
        user.add(kind, event_ts, price, quantity)
    rows = assemble_rows(
        "u-1", "US-CA", "mobile", user.features("user", as_of), [(SAFE[0], {})], CATALOG, as_of
    )
    return LoggedPrediction("r-1", ts, "u-1", "US-CA", "mobile", [SAFE[0]], rows)


def test_millisecond_timestamps_are_forgiven_and_nothing_more() -> None:
    minute = 1_796_205_600.0  # 2026-12-02T10:00:00Z, a whole minute
    # the second event is in the 1 h window read just before the minute, not at it
    events: list[Event] = [
        ("impression", minute - 1.5, "u-1", SAFE[1], None, None),
        ("impression", minute - 3599.0, "u-1", SAFE[1], None, None),
    ]
    # read 0.3 ms before the minute, logged as the minute itself
    read_before = logged_at(minute - 0.0003, minute, events)
    assert read_before.features["user_impressions_1h"] == [2]
    assert check_records([read_before], bronze(events), CATALOG).mismatched_values == 0
    # a reading 0.4 ms off inside a minute: only the hours since the last event move
    inside = logged_at(minute + 30.0004, minute + 30.0, events)
    assert check_records([inside], bronze(events), CATALOG).mismatched_values == 0
    # 50 ms off is no rounding: reported
    off = logged_at(minute + 30.05, minute + 30.0, events)
    tally = check_records([off], bronze(events), CATALOG)
    assert tally.by_column["user_hours_since_last_event"] == 1 and tally.mismatched_values == 1


def test_a_candidate_missing_from_the_catalog_is_skipped_and_counted(
    served: tuple[list[Event], list[LoggedPrediction]],
) -> None:
    events, records = served
    stranger = LoggedPrediction("r-x", records[0].ts, "u-1", "US-CA", "mobile", ["gone"], {})
    tally = check_records([stranger, records[1]], bronze(events), CATALOG)
    assert tally.skipped == {"product_not_in_catalog": 1} and tally.records == 1


# -- strict parsing -------------------------------------------------------------


def valid_payload() -> dict[str, Any]:
    rows = assemble_rows("u-1", "US-CA", "mobile", {}, [(p, {}) for p in SAFE[:2]], CATALOG, 0.0)
    return {
        "request_id": "r-1", "ts": "2026-12-02T10:00:00.250Z", "route": "recommendations",
        "user_id": "u-1", "region": "US-CA", "device": "mobile", "candidates": SAFE[:2],
        "features": rows, "model": {"name": "m", "version": 1, "alias": "champion"},
    }  # fmt: skip


def test_a_valid_record_parses() -> None:
    record = parse_prediction(orjson.dumps(valid_payload()))
    assert record.ts == datetime(2026, 12, 2, 10, 0, 0, 250000, UTC).timestamp()
    assert record.rows == 2 and list(record.features) == list(COLUMNS)


def with_change(path: str, value: object) -> bytes:
    payload = valid_payload()
    target = payload
    *parents, last = path.split(".")
    for part in parents:
        target = target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return orjson.dumps(payload)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (with_change("ts", "2026-12-02T10:00:00"), "invalid_record"),
        (with_change("ts", 1796205600.0), "invalid_record"),
        (with_change("user_id", KeyError), "invalid_record"),
        (with_change("features.price", [None, 1.0]), "contract_mismatch"),
        (with_change("features.pet_safe", [True, False]), "contract_mismatch"),
        (with_change("features.pet_safe", [1.0, 0.0]), "contract_mismatch"),
        (with_change("features.category", [1, 2]), "contract_mismatch"),
        (with_change("features.price", [1.0]), "contract_mismatch"),
        (with_change("features.user_ctr_7d", KeyError), "contract_mismatch"),
        (with_change("features.surprise", [1, 2]), "contract_mismatch"),
    ],
)
def test_records_that_break_the_contract_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as refused:
        parse_prediction(raw)
    assert refused.value.reason == reason


# -- the report, the periodic loop and the command -----------------------------


def report(mismatches: int, values: int = 2100) -> ParityReport:
    tally = ParityTally(records=10, values=values)
    tally.by_column["user_clicks_1h"] = mismatches
    tally.mismatched_records = min(mismatches, 1)
    return ParityReport(
        sample=200, lag_allowance_s=0.0, delta_versions={"bronze/events": 7}, messages=12,
        unparsed={"invalid_record": 2}, tally=tally, window=None, seconds=0.5,
    )  # fmt: skip


def test_the_report_as_json() -> None:
    body = report(3).to_dict()
    assert body["mismatch_ratio"] == pytest.approx(3 / 2100)
    assert body["values_mismatched"] == 3 and body["delta_versions"] == {"bronze/events": 7}
    assert set(body["mismatches"]) == set(COLUMNS)
    assert body["records_unparsed"] == {"invalid_record": 2}
    empty = report(0, values=0)
    assert math.isnan(empty.mismatch_ratio) and empty.to_dict()["mismatch_ratio"] is None
    json.dumps(body)  # plain JSON


def gauges() -> tuple[CollectorRegistry, Gauge, Gauge]:
    registry = CollectorRegistry()
    ratio = Gauge("ratio", "r", registry=registry)
    return registry, ratio, Gauge("checked", "c", registry=registry)


def test_the_loop_sets_the_gauges_and_survives_failures() -> None:
    outcomes: list[ParityReport | Exception] = [report(21), RuntimeError("kafka down"), report(0)]
    ran = threading.Event()

    def check(settings: Settings, sample: int) -> ParityReport:
        assert sample == 50
        outcome = outcomes.pop(0) if outcomes else report(0)
        if not outcomes:
            ran.set()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    registry, ratio, checked = gauges()
    loop = ParityLoop(
        Settings(), every_s=0.01, sample=50, check=check, ratio_gauge=ratio, checked_gauge=checked
    )
    assert loop.run_once() is not None
    assert registry.get_sample_value("ratio") == pytest.approx(0.01)
    assert registry.get_sample_value("checked") == 2100
    loop.start()
    assert ran.wait(10)
    loop.stop(timeout=10)
    assert loop.failures == 1 and loop.checks >= 3
    assert registry.get_sample_value("ratio") == 0.0
    with pytest.raises(RuntimeError):
        loop.start()


def test_the_loop_defaults_come_from_the_settings() -> None:
    loop = ParityLoop(Settings())
    assert (loop.every_s, loop.sample, loop.lag_allowance_s) == (600, 200, 10.0)


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ParityReport]]:
    answers: list[ParityReport] = []

    def check(settings: Settings, sample: int, **_: Any) -> ParityReport:
        answers[0].sample = sample
        return answers[0]

    monkeypatch.setattr(parity, "check_parity", check)
    yield answers


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(args)
    return int(done.value.code or 0)


def test_cli_sample_zero_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["parity", "--sample", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--sample" in err and err.count("\n") == 1


@pytest.mark.parametrize(("mismatches", "code"), [(0, 0), (4, 1)])
def test_cli_exit_code_follows_the_mismatches(
    canned: list[ParityReport], capsys: pytest.CaptureFixture[str], mismatches: int, code: int
) -> None:
    canned.append(report(mismatches))
    assert run_cli(["parity", "--sample", "30", "--json"]) == code
    body = json.loads(capsys.readouterr().out)
    assert body["sample"] == 30 and body["values_mismatched"] == mismatches
    assert run_cli(["parity"]) == code
    out = capsys.readouterr().out
    assert "bronze/events version 7" in out and "user_clicks_1h" in out
    assert ("MISMATCHES" in out) == bool(mismatches)
