"""The steady-replay benchmark, small: its report, and no drift rule firing on steady traffic.

The run is the benchmark's own (:mod:`tests.benchmarks.steady_replay`) at a low
rate and a small population: a first model trained on 2 days of the shop's own
picks serves 8 days of warm-up and the 2-day training window, and the model
trained on that window serves the replay day. 8 days rather than 30 keep the
test to well under a minute (the 30-day features still grow by a ninth between
the reference and the replay, which the full benchmark does not allow), and
half the training window is validation so that ~350 reference requests are
sampled, as many as the replay holds. One day-long window (the longest the
settings allow) holds enough requests for the drift rules' guard, so they are
evaluated on real statistics; the 5-minute production windows hold a handful
each and are not.
"""

from __future__ import annotations

from typing import Any

import pytest

from monitoring.windows import MonitorRecord
from tests.alert_replay import CHECKS, evaluate, load_rules, yaml_problems
from tests.benchmarks.steady_replay import bench_steady_replay
from tests.steady_traffic import DAY_S, SteadyConfig

CONFIG = SteadyConfig(
    events_per_day=4_500, users=500, warm_days=8.0, train_days=2.0, replay_days=1.0,
    validation_fraction=0.5,
)  # fmt: skip
WINDOWS = {"replay": DAY_S, "production": 300.0}
DRIFT = (
    "TributaryFeatureDrift", "TributaryCategoricalDrift", "TributaryScoreDrift",
    "TributaryEstimatedPerformanceDrop", "TributaryNoReferenceProfile",
)  # fmt: skip
RULE_KEYS = {
    "windows", "evaluated", "over_threshold", "over_threshold_unguarded", "fired", "incidents",
    "fired_at_h", "for_s", "statistic", "worst", "worst_unguarded",
}  # fmt: skip


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    assert CONFIG.replay_start % DAY_S == 0  # the replay is one window
    return bench_steady_replay(CONFIG, WINDOWS)


def test_the_report_has_every_rule_for_every_configuration(report: dict[str, Any]) -> None:
    assert set(report) == {"config", "traffic", "training", "monitors", "seconds", "fired"}
    assert set(report["monitors"]) == set(WINDOWS)
    for feed in report["monitors"].values():
        assert feed["rejected"] == 0  # every logged record passes the monitor's checks
        assert set(feed["rules"]) == {check.alert for check in CHECKS}
        for found in feed["rules"].values():
            assert set(found) == RULE_KEYS
            assert found["evaluated"] <= found["windows"]
    production = report["monitors"]["production"]
    assert production["windows"]["predictions"] > 200
    assert production["requests_per_window"]["max"] < 300
    assert production["rules"]["TributaryFeatureDrift"]["evaluated"] == 0


def test_the_replay_is_served_logged_and_labelled(report: dict[str, Any]) -> None:
    traffic, training = report["traffic"], report["training"]
    assert traffic["requests"] == traffic["sessions"] > 300
    assert traffic["shown"] > 5 * traffic["requests"]
    assert training["reference_requests"] > 250
    assert 0.6 < training["valid_auc"] < 0.95
    replay = report["monitors"]["replay"]
    assert replay["windows"] == {"predictions": 1, "outcomes": 1}
    assert replay["requests_per_window"]["min"] == traffic["requests"]
    assert replay["labelled_per_window"]["min"] > 0.8 * traffic["shown"]


def test_steady_traffic_fires_no_drift_rule(report: dict[str, Any]) -> None:
    replay = report["monitors"]["replay"]
    for alert in DRIFT:
        found = replay["rules"][alert]
        assert found["evaluated"] == 1, alert
        assert not found["fired"], (alert, found["worst"])
    for feed in report["monitors"].values():
        assert not any(feed["rules"][alert]["fired"] for alert in DRIFT)


# -- the rule mirrors ----------------------------------------------------------------


def test_every_monitor_rule_is_mirrored_with_its_yaml_thresholds() -> None:
    rules = load_rules()
    assert yaml_problems(rules) == []
    monitor_rules = {name for name, rule in rules.items() if "tributary_monitor_" in rule["expr"]}
    parity = {"TributaryParityMismatch"}  # compares online with offline, not traffic
    assert {check.alert for check in CHECKS} == monitor_rules - parity


def _outcome(end: float, auc: float, labelled: float = 4000.0) -> MonitorRecord:
    metrics = {"roc_auc": auc, "expected_roc_auc": 0.75, "labelled": labelled}
    return MonitorRecord("outcomes", 1, "m", 1, end - 300.0, end, 0.0, metrics)


def test_a_ten_minute_rule_needs_two_five_minute_windows_in_a_row() -> None:
    auc = next(check for check in CHECKS if check.alert == "TributaryAucDrop")
    low, fine = 0.6, 0.74
    one = [_outcome(300.0, fine), _outcome(600.0, low), _outcome(900.0, fine)]
    two = [_outcome(300.0, low), _outcome(600.0, low), _outcome(900.0, fine)]
    unguarded = [_outcome(300.0, low), _outcome(600.0, low, labelled=100.0), _outcome(900.0, low)]
    assert evaluate(auc, one, 300.0, for_s=600.0)["fired"] is False
    assert evaluate(auc, two, 300.0, for_s=600.0)["incidents"] == 1
    found = evaluate(auc, unguarded, 300.0, for_s=600.0)
    assert (found["fired"], found["over_threshold"], found["over_threshold_unguarded"]) == (
        False, 2, 3,
    )  # fmt: skip
    assert found["worst"] == pytest.approx(-0.15)
