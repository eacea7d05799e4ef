"""Point-in-time training sets: labels, as-of features, no leakage from the future."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.features.definitions import FeatureValue
from flows.features.tiles import EntityTiles
from infra.contracts.tables import BRONZE_EVENTS
from infra.errors import InvalidInputError
from infra.plantly.catalog import load_catalog
from infra.plantly.compliance import allowed_candidates
from infra.plantly.simulator import SimulationConfig
from training.checks import check_training_set
from training.contract import COLUMNS
from training.dataset import TrainingSet, build_rows, describe, simulated_events, time_split
from training.replay import REQUEST, REQUEST_COLUMNS, ReferenceRequests

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
CATALOG = load_catalog()
PLANT = "monstera-deliciosa-4in"
OTHER = "monstera-deliciosa-6in"
INVASIVE_IN_FL = next(p.product_id for p in CATALOG.values() if "US-FL" in p.invasive_regions)
USER_FEATURES = [c for c in COLUMNS if c.startswith("user_") and c != "user_id"]
PRODUCT_FEATURES = [c for c in COLUMNS if c.startswith("product_") and c != "product_id"]

Spec = tuple[float, str, str, str] | tuple[float, str, str, str, str | None, str]


def _events(*specs: Spec) -> pa.Table:
    """Events from (seconds after T0, type, user, product[, session, region]).

    A late filler keeps labels known; region defaults to US-CA, session to none.
    """
    rows = []
    for offset, spec in enumerate([*specs, (7200.0, "click", "u-filler", OTHER)]):
        dt, kind, user, product = spec[:4]
        session, region = spec[4:] if len(spec) == 6 else (None, "US-CA")
        ts = datetime.fromtimestamp(T0 + dt, UTC)
        rows.append({
            "event_id": f"e{offset}", "event_type": kind, "event_ts": ts, "event_date": ts.date(),
            "user_id": user, "product_id": product, "session_id": session, "request_id": None,
            "region": region, "device": "mobile",
            "price": 10.0 if kind in ("add_to_cart", "purchase") else None,
            "quantity": 1 if kind == "purchase" else None, "schema_version": 1,
            "source_topic": "shop.events", "source_partition": 0, "source_offset": offset,
        })  # fmt: skip
    return pa.Table.from_pylist(rows, schema=BRONZE_EVENTS)


def _build(events: pa.Table) -> dict[str, list[object]]:
    frame = build_rows(events, T0 - 3600, T0 + 3600, CATALOG)
    return {name: frame[name].tolist() for name in frame.columns}


def test_features_are_as_of_the_impression_and_ignore_the_future() -> None:
    rows = _build(
        _events(
            (-120.0, "click", "u-1", PLANT),  # before: counted
            (0.0, "impression", "u-1", PLANT),  # the row
            (0.0, "click", "u-1", PLANT),  # same instant: strictly-before excludes it
            (60.0, "click", "u-1", PLANT),  # after: would change clicks_1h if leaked
            (90.0, "impression", "u-1", OTHER),
        )
    )
    assert rows["product_id"] == [PLANT, OTHER]
    assert rows["user_clicks_1h"] == [1, 3]
    assert rows["user_impressions_1h"] == [0, 1]  # the impression does not see itself
    assert rows["product_clicks_1h"] == [1, 0]
    assert rows["user_hours_since_last_event"][0] == pytest.approx(120 / 3600)


def test_label_is_a_purchase_of_the_same_product_within_30_minutes() -> None:
    rows = _build(
        _events(
            (0.0, "impression", "u-1", PLANT),  # bought at +29 min: positive
            (10.0, "impression", "u-2", PLANT),  # u-2 buys a different plant: negative
            (20.0, "impression", "u-3", PLANT),  # bought at +31 min: negative
            (1740.0, "purchase", "u-1", PLANT),
            (1750.0, "purchase", "u-2", OTHER),
            (1880.0, "purchase", "u-3", PLANT),
        )
    )
    assert list(zip(rows["user_id"], rows["label"], strict=True)) == [
        ("u-1", 1), ("u-2", 0), ("u-3", 0),
    ]  # fmt: skip


def test_a_purchase_does_not_change_features_before_it_happens() -> None:
    impression = (0.0, "impression", "u-1", PLANT)
    without = _build(_events(impression))
    with_purchase = _build(_events(impression, (600.0, "purchase", "u-1", PLANT)))
    assert with_purchase["label"] == [1] and without["label"] == [0]
    features = [c for c in COLUMNS if c.startswith(("user_", "product_")) and c != "user_id"]
    assert {c: with_purchase[c] for c in features} == {c: without[c] for c in features}


def test_impressions_without_30_minutes_of_hindsight_are_left_out() -> None:
    events = _events((0.0, "impression", "u-1", PLANT))
    skipped: dict[str, int] = {}
    frame = build_rows(events.slice(0, 1), T0 - 3600, T0 + 3600, CATALOG, skipped)
    assert len(frame) == 0 and skipped == {"label_not_known_yet": 1}


def test_time_split_keeps_validation_after_training() -> None:
    frame = build_rows(
        simulated_events(
            SimulationConfig(events=3000, seed=2, history_days=1, users=200,
                             anchor=datetime(2026, 11, 20, tzinfo=UTC))
        ),
        0.0, T0, CATALOG,
    )  # fmt: skip
    train, valid = time_split(frame, 0.25)
    assert len(train) + len(valid) == len(frame)
    assert train["event_ts"].max() < valid["event_ts"].min()
    assert 0.2 < len(valid) / len(frame) < 0.3
    with pytest.raises(InvalidInputError):
        time_split(frame, 1.5)


def test_a_simulated_set_passes_the_data_check() -> None:
    frame = build_rows(
        simulated_events(
            SimulationConfig(events=20_000, seed=4, history_days=2, users=500,
                             anchor=datetime(2026, 11, 20, tzinfo=UTC))
        ),
        0.0, T0, CATALOG,
    )  # fmt: skip
    report = check_training_set(frame)
    assert report.passed, report.failures()
    assert {c.name for c in report.checks} == {"schema", "null_rates", "label_balance", "pii_scan"}


# -- reference requests: what serving would score at session starts ---------------------


def test_reference_requests_are_session_starts_in_the_validation_part() -> None:
    events = _events(
        (-120.0, "click", "u-2", PLANT, "s-0", "US-FL"),  # history: counted
        (0.0, "impression", "u-1", PLANT, "s-1", "US-CA"),  # s-1 starts before the part
        (5.0, "impression", "u-4", PLANT, "s-4", "US-CA"),  # s-4 too
        (10.0, "impression", "u-1", OTHER, "s-1", "US-CA"),
        (20.0, "impression", "u-2", PLANT, "s-2", "US-FL"),  # the part starts: request 0
        (20.0, "click", "u-2", PLANT, "s-2", "US-FL"),  # same instant: not counted yet
        (30.0, "impression", "u-2", OTHER, "s-2", "US-FL"),  # s-2 again: no new request
        (40.0, "impression", "u-3", INVASIVE_IN_FL, "s-3", "US-FL"),  # request 1, a new user
        (50.0, "impression", "u-4", OTHER, "s-4", "US-CA"),  # s-4 started at 5: none
    )
    requests = ReferenceRequests(validation_fraction=0.5, max_requests=10)
    frame = build_rows(events, T0 - 3600, T0 + 3600, CATALOG, requests=requests)
    reference = requests.frame
    # seven impressions: time_split(0.5) validates from the fourth, at +20 s
    assert requests.sample_from == time_split(frame, 0.5)[1]["event_ts"].min() == T0 + 20
    assert requests.sessions == 2 and reference[REQUEST].nunique() == 2  # under the cap: all
    assert list(reference.columns) == [*COLUMNS, *REQUEST_COLUMNS]
    firsts = reference.groupby(REQUEST).first()
    assert firsts["session_id"].tolist() == ["s-2", "s-3"]
    assert firsts["event_ts"].tolist() == [T0 + 20, T0 + 40]
    assert firsts["event_id"].tolist() == ["e4", "e7"]
    allowed = allowed_candidates(CATALOG, "US-FL", CATALOG)
    for _, rows in reference.groupby(REQUEST):
        assert rows["product_id"].tolist() == allowed  # every allowed product, once
        assert set(rows["region"]) == {"US-FL"} and set(rows["device"]) == {"mobile"}
    assert INVASIVE_IN_FL not in set(reference["product_id"])
    assert reference["invasive_here"].sum() == 0
    # the user's features are the session's first impression row's: as of +20 s, strictly
    request = reference[reference[REQUEST] == 0]
    row = frame[frame["event_id"] == "e4"]
    assert request[USER_FEATURES].drop_duplicates().to_dict("records") == (
        row[USER_FEATURES].to_dict("records")
    )
    assert request["user_clicks_1h"].iloc[0] == 1  # the click at -120 s, not the one at +20 s
    plant = request[request["product_id"] == PLANT]
    assert plant[PRODUCT_FEATURES].to_dict("records") == row[PRODUCT_FEATURES].to_dict("records")
    later = reference[(reference[REQUEST] == 1) & (reference["product_id"] == PLANT)]
    assert later["product_clicks_1h"].tolist() == [2]  # by +40 s the click at +20 s counts
    assert later["product_impressions_1h"].tolist() == [3]
    assert later["user_hours_since_last_event"].tolist() == [720.0]  # u-3 is new


def test_no_reference_requests_without_sessions_or_impressions() -> None:
    events = _events((0.0, "impression", "u-1", PLANT), (10.0, "impression", "u-2", PLANT))
    requests = ReferenceRequests(validation_fraction=0.5)
    build_rows(events, T0 - 3600, T0 + 3600, CATALOG, requests=requests)
    assert requests.sample_from == T0 + 10 and requests.sessions == 0
    assert requests.frame.empty and list(requests.frame.columns) == [*COLUMNS, *REQUEST_COLUMNS]
    one = ReferenceRequests()
    build_rows(_events((0.0, "impression", "u-1", PLANT, "s-1", "US-CA")), T0 - 3600,
               T0 + 3600, CATALOG, requests=one)  # fmt: skip
    assert one.sample_from is None and one.frame.empty  # one row cannot be split
    with pytest.raises(InvalidInputError):
        ReferenceRequests(validation_fraction=1.0)


@pytest.fixture(scope="module")
def two_days() -> pa.Table:
    return simulated_events(
        SimulationConfig(events=20_000, seed=4, history_days=2, users=500,
                         anchor=datetime(2026, 11, 20, tzinfo=UTC))
    )  # fmt: skip


def _sampled(events: pa.Table, max_requests: int) -> tuple[pd.DataFrame, ReferenceRequests]:
    requests = ReferenceRequests(validation_fraction=0.25, max_requests=max_requests)
    frame = build_rows(events, 0.0, T0, CATALOG, requests=requests)
    return frame, requests


def test_sampled_requests_start_their_sessions_and_score_every_allowed_product(
    two_days: pa.Table,
) -> None:
    frame, requests = _sampled(two_days, 40)
    reference = requests.frame
    assert reference[REQUEST].nunique() == 40 < requests.sessions
    assert requests.sample_from == time_split(frame, 0.25)[1]["event_ts"].min()
    impressions = two_days.filter(pc.equal(two_days["event_type"], "impression")).to_pandas()
    impressions["ts"] = impressions["event_ts"].map(lambda t: t.timestamp())
    first = impressions.sort_values(["ts", "source_offset"]).groupby("session_id").first()
    assert requests.sessions == int((first["ts"] >= requests.sample_from).sum())
    rows = frame.set_index("event_id")
    matched = 0
    for number, request in reference.groupby(REQUEST):
        session = request["session_id"].iloc[0]
        assert request["event_id"].iloc[0] == first.loc[session, "event_id"]
        assert request["event_ts"].iloc[0] == first.loc[session, "ts"] >= requests.sample_from
        region = request["region"].iloc[0]
        assert request["product_id"].tolist() == allowed_candidates(CATALOG, region, CATALOG)
        if request["event_id"].iloc[0] in rows.index:  # not left out of the training rows
            row = rows.loc[request["event_id"].iloc[0], USER_FEATURES]
            assert request[USER_FEATURES].iloc[0].tolist() == row.tolist(), number
            matched += 1
    assert matched >= 35
    assert reference["invasive_here"].sum() == 0
    # spread over the part, not bunched at its start or end
    times = reference.groupby(REQUEST)["event_ts"].first()
    last = first["ts"].max()
    span = last - requests.sample_from
    assert times.is_monotonic_increasing
    assert times.iloc[0] < requests.sample_from + span / 4 and times.iloc[-1] > last - span / 4


def test_the_sample_is_deterministic_and_the_cap_holds(two_days: pa.Table) -> None:
    _, forty = _sampled(two_days, 40)
    _, again = _sampled(two_days.take(list(range(two_days.num_rows))[::-1]), 40)
    pd.testing.assert_frame_equal(forty.frame, again.frame)  # any order of rows
    _, ten = _sampled(two_days, 10)
    assert ten.frame[REQUEST].nunique() == 10
    # the sessions with the smallest hashes: a smaller cap keeps a subset
    assert set(ten.frame["session_id"]) < set(forty.frame["session_id"])
    assert ten.sessions == forty.sessions  # (a cap above the sessions takes all: above)


def test_reused_product_reads_equal_fresh_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    # a busy hour: several sampled sessions start in the same minute
    busy = simulated_events(
        SimulationConfig(events=20_000, seed=5, history_days=1 / 24, users=500,
                         anchor=datetime(2026, 11, 20, tzinfo=UTC))
    )  # fmt: skip
    reads = 0
    features = EntityTiles.features

    def counted(self: EntityTiles, view: object, as_of: float) -> object:
        nonlocal reads
        reads += 1
        return features(self, view, as_of)  # type: ignore[arg-type]

    monkeypatch.setattr(EntityTiles, "features", counted)
    _, reused = _sampled(busy, 60)
    reads_reused, reads = reads, 0

    def fresh_read(
        self: ReferenceRequests, replay: Any, product_id: str, ts: float
    ) -> dict[str, FeatureValue]:
        return replay.product(product_id, ts)  # type: ignore[no-any-return]

    monkeypatch.setattr(ReferenceRequests, "_product", fresh_read)
    _, fresh = _sampled(busy, 60)
    pd.testing.assert_frame_equal(reused.frame, fresh.frame)
    assert reads_reused < reads - 5_000  # reads were saved, and they changed nothing


def test_a_training_set_reports_its_reference_requests() -> None:
    reference = pd.DataFrame({REQUEST: [0, 0, 1], "product_id": ["a", "b", "a"]})
    frame = pd.DataFrame({"label": [0, 1]})
    start, end = datetime(2026, 11, 19, tzinfo=UTC), datetime(2026, 11, 20, tzinfo=UTC)
    training_set = TrainingSet(frame, start, end, {}, {}, reference)
    assert training_set.reference_requests == 2
    assert '"reference_requests": 2' in describe(training_set)
    assert TrainingSet(frame, start, end, {}).reference_requests == 0
