"""The outcome join alone: shown, clicked and bought within 30 minutes; orphans; bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring import stats
from monitoring.concept import ConceptDriftDetector, absolute_errors
from monitoring.outcomes import SHOW_WINDOW_S, OutcomeJoin, OutcomeTally, outcome_metrics
from monitoring.records import LoggedRequest, OutcomeEvent

P0 = "0-shop.events"
P1 = "1-shop.events"
LATENESS = 60.0
KEY = (3, 0.0)


def request(rid: str, ts: float = 10.0, items: tuple[str, ...] = ("a", "b", "c")) -> LoggedRequest:
    scores = tuple(0.9 - 0.1 * i for i in range(len(items)))
    return LoggedRequest(rid, ts, 3, items, scores)


def impression(ts: float, product: str, rid: str, user: str = "u1") -> OutcomeEvent:
    return OutcomeEvent("impression", ts, user, product, rid)


def event(kind: str, ts: float, product: str, user: str = "u1") -> OutcomeEvent:
    return OutcomeEvent(kind, ts, user, product, None)


def tick(ts: float, user: str = "clock") -> OutcomeEvent:
    """A valid event that only moves its partition's time."""
    return OutcomeEvent("add_to_cart", ts, user, "x", None)


def joined(max_pending: int = 1_000) -> OutcomeJoin:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=max_pending)
    join.add_requests(KEY, 300.0, [request("r1"), request("r2", ts=20.0)])
    join.close(KEY)
    return join


def finish(join: OutcomeJoin, part: str = P0, key: tuple[int, float] = KEY) -> OutcomeTally:
    join.consume(part, [tick(10_000.0)])
    assert join.ready(10_000.0 - LATENESS) == [key]
    return join.pop(key)


def outcomes(tally: OutcomeTally) -> list[tuple[str, str, bool, bool]]:
    return [(s.request_id, s.product_id, s.clicked, s.purchased) for s in tally.shown]


def test_clicks_and_purchases_within_30_minutes_count_later_ones_do_not() -> None:
    join = joined()
    join.consume(P0, [
        impression(12.0, "a", "r1"), impression(12.0, "b", "r1"), impression(21.0, "a", "r2"),
        event("click", 30.0, "a"),
        event("purchase", 12.0 + 1800.0, "a"),  # the last instant of r1/a's window
        event("purchase", 12.0 + 1800.5, "b"),  # half a second too late for r1/b
    ])  # fmt: skip
    tally = finish(join)
    # r2/a (shown at 21) saw the click at 30 and the purchase at 1812 as well
    assert outcomes(tally) == [
        ("r1", "a", True, True), ("r1", "b", False, False), ("r2", "a", True, True),
    ]  # fmt: skip
    assert [s.score for s in tally.shown] == [0.9, 0.8, 0.9]


def test_another_users_or_products_events_are_not_outcomes() -> None:
    join = joined()
    join.consume(P0, [
        impression(12.0, "a", "r1"),
        event("purchase", 100.0, "a", user="u2"), event("click", 100.0, "b"),
    ])  # fmt: skip
    assert outcomes(finish(join)) == [("r1", "a", False, False)]


def test_a_label_waits_for_its_partitions_watermark() -> None:
    join = joined()
    join.consume(P0, [impression(12.0, "a", "r1")])
    join.consume(P1, [tick(5_000.0)])  # another partition's time does not label it
    assert join.pending == 1 and join.ready(5_000.0) == []
    join.consume(P0, [tick(12.0 + 1800.0 + LATENESS)])  # not yet past
    assert join.pending == 1
    join.consume(P0, [event("purchase", 1_000.0, "a")], newest=12.0 + 1800.0 + LATENESS + 1)
    assert join.pending == 0
    assert join.ready(2_000.0) == [KEY]
    assert outcomes(join.pop(KEY)) == [("r1", "a", False, True)]


def test_an_impression_before_its_request_joins_when_the_request_arrives() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=100)
    join.consume(P0, [impression(12.0, "a", "r1"), event("purchase", 90.0, "a"), tick(9_000.0)])
    assert join.orphan_count == 1 and join.pending == 0  # labelled while it waits
    join.add_requests(KEY, 300.0, [request("r1")])
    join.close(KEY)
    assert join.orphan_count == 0
    assert join.ready(9_000.0 - LATENESS) == [KEY]
    assert outcomes(join.pop(KEY)) == [("r1", "a", False, True)]
    assert join.counters.attributed == 1 and join.counters.unmatched == 0


def test_a_pending_orphan_counts_for_its_window_once_it_joins() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=100)
    join.consume(P0, [impression(12.0, "a", "r1")])
    join.add_requests(KEY, 300.0, [request("r1")])
    join.close(KEY)
    assert join.tallies[KEY].pending == 1 and join.ready(1e9) == []
    join.consume(P0, [event("click", 40.0, "a"), tick(9_000.0)])
    assert outcomes(finish(join)) == [("r1", "a", True, False)]


def test_an_orphan_whose_request_never_comes_is_dropped_and_counted() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=100)
    join.consume(P0, [impression(12.0, "a", "lost"), impression(500.0, "a", "later")])
    join.expire_orphans(before=100.0)
    assert join.counters.unmatched == 1 and join.orphan_count == 1
    assert list(join.orphans) == ["later"] and join.pending == 1


def test_items_not_returned_or_shown_too_late_are_not_attributed() -> None:
    join = joined()
    join.consume(P0, [
        impression(12.0, "z", "r1"),  # not an item of r1
        impression(10.0 + SHOW_WINDOW_S + 1.0, "a", "r1"),  # shown long after the request
    ])  # fmt: skip
    assert join.counters.unattributed == 2 and join.pending == 0
    assert outcomes(finish(join)) == []


def test_an_impression_older_than_its_label_window_is_late_not_guessed() -> None:
    join = joined()
    join.consume(P0, [tick(5_000.0), impression(12.0, "a", "r1")])
    assert join.counters.late == 1
    assert outcomes(finish(join)) == []


def test_requests_beyond_the_cap_evict_the_oldest() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=2)
    join.add_requests(KEY, 300.0, [request("r1"), request("r2"), request("r3")])
    assert list(join.requests) == ["r2", "r3"] and join.counters.evicted_requests == 1
    join.consume(P0, [impression(12.0, "a", "r1")])  # its request is gone: an orphan
    assert join.orphan_count == 1


def test_pending_impressions_beyond_the_cap_are_evicted_and_counted_not_labelled() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=2)
    join.add_requests(KEY, 300.0, [request("r1")])
    join.close(KEY)
    join.consume(P0, [impression(12.0 + i, p, "r1") for i, p in enumerate("abc")])
    assert join.pending == 2 and join.counters.evicted_impressions == 1
    tally = finish(join)
    assert tally.evicted == 1 and [s.product_id for s in tally.shown] == ["b", "c"]
    metrics, _ = outcome_metrics(tally, ConceptDriftDetector())
    assert (metrics["impressions"], metrics["labelled"]) == (3.0, 2.0)


def test_orphans_beyond_the_cap_evict_the_oldest() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=2)
    join.consume(P0, [impression(10.0 + i, "a", f"r{i}") for i in range(3)])
    assert sorted(join.orphans) == ["r1", "r2"] and join.counters.evicted_orphans == 1


def test_windows_complete_in_order_per_version_after_their_labels() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=100)
    early, late, other = (3, 0.0), (3, 300.0), (4, 300.0)
    join.add_requests(early, 300.0, [request("r1")])
    join.add_requests(late, 600.0, [request("r2", ts=310.0)])
    join.add_requests(other, 600.0, [LoggedRequest("r3", 320.0, 4, ("a",), (0.5,))])
    for key in (late, other):
        join.close(key)
    assert join.ready(1e9) == [other]  # version 3 waits for its first window
    join.close(early)
    assert join.ready(300.0 + SHOW_WINDOW_S) == []  # impressions may still come
    assert join.ready(600.0 + SHOW_WINDOW_S) == [early]
    assert join.ready(600.0 + SHOW_WINDOW_S + 1) == [early, late, other]


def test_outcome_metrics_are_the_statistics_of_the_labelled_items() -> None:
    join = OutcomeJoin(lateness_s=LATENESS, max_pending=1_000)
    rng = np.random.default_rng(4)
    items = tuple(f"p{i}" for i in range(40))
    requests = [
        LoggedRequest(f"r{i}", 10.0 + i, 3, items, tuple(rng.uniform(0, 1, 40).tolist()))
        for i in range(30)
    ]
    join.add_requests(KEY, 300.0, requests)
    join.close(KEY)
    shown = [(r, p) for r in requests for p in items if rng.random() < 0.3]
    bought = {(r.request_id, p) for r, p in shown if rng.random() < 0.2}
    clicked = {(r.request_id, p) for r, p in shown if rng.random() < 0.4}
    evts = [impression(r.ts + 1.0, p, r.request_id) for r, p in shown]
    evts += [event("purchase", 200.0, p) for r, p in shown if (r.request_id, p) in bought]
    evts += [event("click", 100.0, p) for r, p in shown if (r.request_id, p) in clicked]
    join.consume(P0, sorted(evts, key=lambda e: e.ts))
    tally = finish(join)
    # a purchase or click of a product counts for every impression of it by the user
    # within 30 minutes: every request here is one user's, so expand the truth
    bought_products = {p for _, p in bought}
    clicked_products = {p for _, p in clicked}
    labels = np.array([p in bought_products for _, p in shown], dtype=float)
    scores = np.array([r.scores[items.index(p)] for r, p in shown])
    metrics, detections = outcome_metrics(tally, ConceptDriftDetector())
    assert metrics["labelled"] == metrics["impressions"] == len(shown)
    assert metrics["purchases"] == labels.sum()
    assert metrics["clicks"] == sum(p in clicked_products for _, p in shown)
    assert metrics["conversion"] == pytest.approx(labels.mean())
    assert metrics["roc_auc"] == pytest.approx(stats.roc_auc(labels, scores))
    assert metrics["log_loss"] == pytest.approx(stats.log_loss(labels, scores))
    expected = ConceptDriftDetector().update_many(absolute_errors(labels, scores))
    assert detections == expected and metrics["concept_drift"] == float(expected > 0)


def test_an_empty_window_has_no_rates() -> None:
    metrics, detections = outcome_metrics(OutcomeTally(3, 300.0), ConceptDriftDetector())
    assert metrics["impressions"] == 0.0 and detections == 0
    assert all(math.isnan(metrics[name]) for name in ("ctr", "conversion", "roc_auc", "log_loss"))


def test_concept_drift_fires_when_purchases_stop_following_the_scores() -> None:
    detector = ConceptDriftDetector()
    rng = np.random.default_rng(9)
    windows = []
    for index in range(12):
        scores = rng.beta(0.5, 12.0, 2_000)
        rate = scores if index < 8 else np.minimum(scores * 5, 1.0)  # buyers change their mind
        labels = (rng.random(2_000) < rate).astype(float)
        tally = OutcomeTally(3, 300.0 * (index + 1))
        tally.shown = [
            _labelled(300.0 * index + i * 0.1, bool(y), float(s))
            for i, (y, s) in enumerate(zip(labels, scores, strict=True))
        ]
        windows.append(outcome_metrics(tally, detector)[0]["concept_drift"])
    assert windows[:8] == [0.0] * 8
    assert 1.0 in windows[8:]


def _labelled(ts: float, label: bool, score: float):  # type: ignore[no-untyped-def]
    from monitoring.outcomes import Labelled

    return Labelled(ts, "r", "p", False, label, score)


def test_requests_are_forgotten_once_no_impression_can_join_them() -> None:
    join = joined()
    join.consume(P0, [impression(12.0, "a", "r1")])
    join.expire_requests(low_watermark=20.0 + SHOW_WINDOW_S)  # r1 (ts 10) goes, r2 (20) stays
    assert list(join.requests) == ["r2"]
    join.consume(P0, [impression(25.0, "b", "r1")])  # too late for r1: an orphan, unmatched
    assert join.orphan_count == 1
    assert outcomes(finish(join)) == [("r1", "a", False, False)]


def test_a_restored_join_goes_on_like_the_original() -> None:
    import pickle

    def feed(join: OutcomeJoin, steps: list[tuple[str, list[OutcomeEvent]]]) -> None:
        for part, events in steps:
            join.consume(part, events)

    early = [
        (P0, [impression(12.0, "a", "r1"), impression(13.0, "b", "r1"), event("click", 20, "a")]),
        (P1, [impression(14.0, "c", "r9", user="u2"), impression(15.0, "a", "r8", user="u3")]),
        (P1, [event("click", 100.0, "c", user="u2"), event("purchase", 600.0, "a", user="u3")]),
        (P1, [tick(2_500.0)]),  # both P1 impressions labelled while their requests are unknown
    ]
    late = [(P0, [event("purchase", 900.0, "b"), tick(9_000.0)]), (P1, [tick(9_000.0)])]
    whole = joined()
    feed(whole, early)
    restored = pickle.loads(pickle.dumps(joined_after(early)))
    assert (
        (restored.pending, restored.orphan_count) == (whole.pending, whole.orphan_count) == (2, 2)
    )
    for join in (whole, restored):
        join.add_requests(
            (3, 60.0), 120.0, [request("r8", items=("a",)), request("r9", items=("c",))]
        )
        join.close((3, 60.0))
        feed(join, late)
    assert outcomes(whole.pop(KEY)) == outcomes(restored.pop(KEY)) == [
        ("r1", "a", True, False), ("r1", "b", False, True),
    ]  # fmt: skip
    assert outcomes(whole.pop((3, 60.0))) == outcomes(restored.pop((3, 60.0))) == [
        ("r9", "c", True, False), ("r8", "a", False, True),
    ]  # fmt: skip


def joined_after(steps: list[tuple[str, list[OutcomeEvent]]]) -> OutcomeJoin:
    join = joined()
    for part, events in steps:
        join.consume(part, events)
    return join
