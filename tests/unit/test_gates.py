"""Gate logic on synthetic scores: thresholds, noise allowance, champion comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd

from infra.plantly.catalog import load_catalog
from training.gates import AucGate, GateSubject, LatencyGate, SegmentGate, run_gates
from training.pyfunc import RecommenderModel, signature


class Column:
    """Scores a row by one column: as good as that column is."""

    kind = "test-column"

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(rows[self.name].to_numpy(dtype=float))


def _frame(rows: int = 20_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.random(rows) < 0.1
    frame = pd.DataFrame({
        "product_id": ["p"] * rows,
        "region": rng.choice(["US-CA", "US-NY", "GB-ENG"], rows),
        "device": rng.choice(["mobile", "desktop"], rows),
        "label": label.astype(int),
    })  # fmt: skip
    frame["good"] = label * 1.0 + rng.normal(0, 0.8, rows)  # AUC ≈ 0.81
    frame["noise"] = rng.random(rows)
    # useless on US-NY only
    frame["blind_ny"] = np.where(frame["region"] == "US-NY", rng.random(rows), frame["good"])
    return frame


def _subject(frame: pd.DataFrame, column: str, champion: str | None = None) -> GateSubject:
    return GateSubject(
        version=2, model=RecommenderModel(Column(column)), validation=frame,
        catalog=load_catalog(), signature=signature(), tags={"feature_set_version": "1"},
        champion=None if champion is None else RecommenderModel(Column(champion)),
        champion_version=None if champion is None else 1,
    )  # fmt: skip


def test_auc_gate_needs_the_floor_and_the_champion_level() -> None:
    frame = _frame()
    assert AucGate().check(_subject(frame, "good")).passed
    noise = AucGate().check(_subject(frame, "noise"))
    assert not noise.passed and noise.numbers["needed"] == 0.6
    frame["better"] = frame["good"] + frame["label"] * 2.0
    against_better = AucGate().check(_subject(frame, "good", champion="better"))
    assert not against_better.passed
    assert against_better.numbers["champion_version"] == 1
    assert against_better.numbers["needed"] > against_better.numbers["auc"]


def test_segment_gate_catches_a_blind_segment_and_names_it() -> None:
    result = SegmentGate().check(_subject(_frame(), "blind_ny"))
    assert not result.passed
    assert result.numbers["failing"] == ["region=US-NY"]
    assert "region=US-NY" in result.detail


def test_segment_gate_tolerates_noise_in_small_segments() -> None:
    frame = _frame(rows=3_000, seed=3)
    result = SegmentGate().check(_subject(frame, "good"))
    assert result.passed, result.detail
    tiny = frame.head(150)  # too few positives per segment to judge any
    judged = SegmentGate().check(_subject(tiny, "noise"))
    assert judged.passed and judged.numbers["not_judged"]


def test_a_crashing_gate_fails_instead_of_stopping_the_run() -> None:
    frame = _frame(rows=500)
    frame = frame.drop(columns=["good"])
    results = run_gates(_subject(frame, "good"), [AucGate(), LatencyGate(repeats=5, rounds=1)])
    assert [r.passed for r in results] == [False, False]
    assert results[0].detail.startswith("error: KeyError")
