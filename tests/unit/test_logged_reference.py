"""The logged reference: a reproducible sample of what serving logged in the validation part.

Records are the bytes serving's own :class:`~serving.prediction_log.PredictionRecord` writes
(:func:`tests.monitor_traffic.make_request`).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import numpy as np
import orjson
import pandas as pd
import pytest

from monitoring.windows import PER_REQUEST
from tests.monitor_traffic import Request, make_request
from training.contract import CATEGORICALS, COLUMNS, NUMERIC
from training.logged_reference import (
    MIN_LOGGED_REQUESTS,
    LoggedSample,
    choose_reference,
    logged_frame,
)
from training.profiles import build_profile
from training.replay import REQUEST

START = 1_800_000_000.0
END = START + 3_600.0


def logged(count: int, first: float, step: float, seed: int = 0) -> list[tuple[Request, bytes]]:
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    return [
        make_request(rng, nrng, f"r-{seed}-{n}", first + n * step, version=1, candidates=20)
        for n in range(count)
    ]


def smallest_hashes(ids: list[str], n: int) -> set[str]:
    """The sampling rule, computed independently."""

    def key(request_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")

    return set(sorted(ids, key=key)[:n])


def test_the_sample_is_the_smallest_hashes_whatever_the_order() -> None:
    served = logged(300, START, 10.0)
    values = [value for _, value in served]
    sample = LoggedSample.of(values, START, END, max_requests=50)
    shuffled = values[:]
    random.Random(7).shuffle(shuffled)
    again = LoggedSample.of(shuffled, START, END, max_requests=50)
    ids = [r.request_id for r in sample.records]
    assert ids == [r.request_id for r in again.records]
    in_range = [request.request_id for request, _ in served if request.ts <= END]
    assert sample.found == len(in_range) == 300
    assert set(ids) == smallest_hashes(in_range, 50)
    times = [r.ts for r in sample.records]
    assert times == sorted(times)  # request numbers follow time


def test_only_records_from_the_validation_start_to_the_window_end_count() -> None:
    before = logged(40, START - 400.0, 10.0, seed=1)  # the last ends just before the cut
    inside = logged(30, START, 120.0, seed=2)  # 0 .. 3,480 s after, the first at the cut
    after = logged(10, END + 1.0, 5.0, seed=3)
    values = [value for _, value in before + inside + after]
    sample = LoggedSample.of(values, START, END)
    assert sample.found == 30 and not sample.unparsed
    assert {r.request_id for r in sample.records} == {req.request_id for req, _ in inside}
    edge = logged(1, END, 1.0, seed=4)  # the window end itself is in
    assert LoggedSample.of([edge[0][1]], START, END).found == 1


def test_the_frame_holds_the_logged_rows_exactly() -> None:
    served = logged(12, START, 60.0)
    sample = LoggedSample.of([value for _, value in served], START, END)
    frame = sample.frame
    for name in COLUMNS:
        expected = [value for request, _ in served for value in request.columns[name]]
        assert frame[name].tolist() == expected, name
    assert frame[REQUEST].tolist() == [n for n in range(12) for _ in range(20)]
    assert frame["request_id"].tolist() == [r.request_id for r, _ in served for _ in range(20)]
    assert frame["event_ts"].tolist() == [
        pytest.approx(r.ts, abs=1e-3) for r, _ in served for _ in range(20)
    ]
    assert all(frame[name].dtype == np.float64 or frame[name].dtype == np.int64
               for name in NUMERIC)  # fmt: skip
    assert logged_frame([]).columns.tolist() == frame.columns.tolist()


def test_a_profile_of_logged_rows_counts_as_the_monitor_does() -> None:
    served = logged(150, START, 20.0)
    sample = LoggedSample.of([value for _, value in served], START, END)
    frame = sample.frame
    valid = frame.assign(label=np.arange(len(frame)) % 2)
    profile = build_profile(
        frame, np.linspace(0.0, 1.0, len(frame)), valid, np.full(len(frame), 0.5),
        kind="logged", logged_requests=sample.found,
    )  # fmt: skip
    assert profile.reference_kind == "logged" and profile.logged_requests == 150
    assert profile.requests == 150 and profile.rows == 150 * 20
    regions = Counter(request.columns["region"][0] for request, _ in served)
    assert profile.categorical["region"].counts == dict(regions)  # once per request
    categories = Counter(v for request, _ in served for v in request.columns["category"])
    assert profile.categorical["category"].counts == dict(categories)  # once per row
    for name in NUMERIC:
        expected = 150 if name in PER_REQUEST else 3_000
        assert sum(profile.numeric[name].counts) == expected, name
    assert set(PER_REQUEST) >= {"region", "device"} and set(PER_REQUEST) - set(CATEGORICALS)


def test_below_the_minimum_the_replayed_reference_stands_in() -> None:
    replayed = pd.DataFrame({REQUEST: [0, 0, 1]})
    few = LoggedSample.of(
        [value for _, value in logged(MIN_LOGGED_REQUESTS - 1, START, 1.0)], START, END
    )
    rows, used = choose_reference(few, replayed)
    assert not used and rows is replayed and few.found == MIN_LOGGED_REQUESTS - 1
    enough = LoggedSample.of(
        [value for _, value in logged(MIN_LOGGED_REQUESTS, START, 1.0)], START, END
    )
    rows, used = choose_reference(enough, replayed)
    assert used and rows[REQUEST].nunique() == MIN_LOGGED_REQUESTS


def test_duplicates_count_once_and_unreadable_records_are_counted() -> None:
    served = logged(5, START, 10.0)
    values = [value for _, value in served]
    reordered = orjson.loads(values[0])
    reordered = {"ts": reordered.pop("ts"), **reordered}  # not serving's layout: still read
    bad_type = orjson.loads(values[1])
    bad_type["features"]["price"][0] = True
    values[1] = orjson.dumps(bad_type)
    sample = LoggedSample.of(
        [orjson.dumps(reordered), *values[1:], values[2], b"not json", b'{"ts": 1}'], START, END
    )
    assert sample.found == 5
    assert sample.unparsed == Counter({"malformed_json": 2, "contract_mismatch": 1})
    assert [r.request_id for r in sample.records] == [served[i][0].request_id for i in (0, 2, 3, 4)]
