"""The dashboard's data: panels from a real Delta ``monitoring/metrics`` table, the cache.

Tables are written in ``tmp_path`` with the monitor's schema
(:mod:`tests.monitoring_samples`); Prometheus is asked for real, at a port
where nothing listens.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from infra.settings import Settings
from serving import monitoring_data
from serving.monitoring_data import TABLE, load_panels
from serving.monitoring_sources import PrometheusReader, version_info
from serving.monitoring_summary import TtlCache
from tests.local_stack import free_port
from tests.monitoring_samples import drift_story, row, write_rows

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def at(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


def write(settings: Settings, rows: list[dict[str, object]]) -> None:
    write_rows(settings.table_uri(TABLE), rows)


def test_a_missing_table_gives_empty_panels_that_say_why(settings: Settings) -> None:
    panels = load_panels(settings, 24, now=NOW)
    assert not panels.available and panels.kpis == [] and panels.score_distribution is None
    assert panels.message is not None and "no monitoring/metrics table yet" in panels.message


def test_series_per_version_and_metric_in_window_order(settings: Settings) -> None:
    write(settings, [
        row(at(2), 1, "outcomes", "ctr", 0.08),
        row(at(4), 1, "outcomes", "ctr", 0.10),
        row(at(2), 2, "outcomes", "ctr", 0.07),
        row(at(2), 2, "outcomes", "conversion", float("nan")),
        row(at(3), 2, "predictions", "estimated_roc_auc", 0.71),
        row(at(2), 2, "outcomes", "roc_auc", 0.69),
    ])  # fmt: skip
    panels = load_panels(settings, 1, now=NOW)
    assert panels.available and panels.versions == [1, 2] and panels.rows == 6
    kpis = {s.name: (s.x, s.y) for s in panels.kpis}
    assert kpis == {
        "v1 ctr": (["2026-12-02T11:56:00Z", "2026-12-02T11:58:00Z"], [0.1, 0.08]),
        "v2 conversion": (["2026-12-02T11:58:00Z"], [None]),  # NaN: a gap, not an error
        "v2 ctr": (["2026-12-02T11:58:00Z"], [0.07]),
    }
    assert [(s.metric, s.y) for s in panels.auc] == [
        ("estimated_roc_auc", [0.71]),
        ("roc_auc", [0.69]),
    ]
    assert panels.newest_window == "2026-12-02T11:58:00Z"


def test_rows_before_the_range_are_left_out(settings: Settings) -> None:
    write(
        settings, [row(at(90), 1, "outcomes", "ctr", 0.5), row(at(30), 1, "outcomes", "ctr", 0.1)]
    )
    (ctr,) = load_panels(settings, 1, now=NOW).kpis
    assert ctr.y == [0.1]
    assert load_panels(settings, 0.25, now=NOW).message == "no windows in this range yet"


def test_a_re_emitted_window_shows_its_newest_value(settings: Settings) -> None:
    end = at(40)
    write(settings, [row(end, 1, "outcomes", "ctr", 0.05, emitted_at=end + timedelta(seconds=5))])
    write(settings, [row(end, 1, "outcomes", "ctr", 0.09, emitted_at=end + timedelta(minutes=31))])
    (ctr,) = load_panels(settings, 1, now=NOW).kpis
    assert ctr.y == [0.09]


def drift_rows(version: int, end: datetime, psi: float) -> list[dict[str, object]]:
    return [
        row(end, version, "predictions", "feature_psi", psi, "price"),
        row(end, version, "predictions", "feature_psi", psi / 2, "user_clicks_1h"),
        row(end, version, "predictions", "feature_js_distance", 0.25, "region"),
        row(end, version, "predictions", "feature_chi2_pvalue", 1e-5, "region"),
        row(end, version, "predictions", "score_psi", psi, ""),
    ]


def test_drift_is_the_champions_newest_window(settings: Settings) -> None:
    write(settings, drift_rows(1, at(10), 0.05) + drift_rows(1, at(5), 0.3))
    write(settings, drift_rows(2, at(2), 0.01))
    newest = load_panels(settings, 1, now=NOW)  # no champion: the version with the newest window
    assert newest.focus_version == 2 and newest.drift_window == "2026-12-02T11:58:00Z"
    champion = load_panels(settings, 1, champion=1, now=NOW)
    assert champion.focus_version == 1 and champion.drift_window == "2026-12-02T11:55:00Z"
    assert [(d.feature, d.psi) for d in champion.numeric_drift] == [
        ("price", 0.3),
        ("user_clicks_1h", 0.15),
    ]
    (region,) = champion.categorical_drift
    assert (region.feature, region.js_distance, region.chi2_pvalue, region.psi) == (
        "region", 0.25, 1e-5, None,
    )  # fmt: skip
    assert champion.thresholds.psi == 0.2
    assert load_panels(settings, 1, champion=9, now=NOW).focus_version == 2  # no rows for v9


def test_score_distribution_beside_a_reference_written_before_the_range(
    settings: Settings,
) -> None:
    reference = [row(at(600), 3, "reference", "score_bin_share", 0.25, str(b)) for b in range(4)]
    shares = [0.1, 0.2, 0.3, 0.4]
    current = [
        row(at(1), 3, "predictions", "score_bin_share", s, str(b)) for b, s in enumerate(shares)
    ]
    older = [row(at(9), 3, "predictions", "score_bin_share", 0.25, str(b)) for b in range(4)]
    write(settings, [*reference, *current, *older, row(at(1), 3, "predictions", "score_psi", 0.23)])
    dist = load_panels(settings, 1, now=NOW).score_distribution
    assert dist is not None
    assert (dist.model_version, dist.window_end) == (3, "2026-12-02T11:59:00Z")
    assert dist.bins == ["0", "1", "2", "3"] and dist.current == shares
    assert dist.reference == [0.25] * 4 and dist.score_psi == 0.23


def test_freshness_is_one_series_per_view(settings: Settings) -> None:
    write(settings, [
        row(at(3), 1, "predictions", "feature_age_p95_seconds", 40.0, "user"),
        row(at(2), 1, "predictions", "feature_age_p95_seconds", 45.0, "user"),
        row(at(2), 1, "predictions", "feature_age_p95_seconds", 9.5, "product"),
    ])  # fmt: skip
    freshness = {s.name: s.y for s in load_panels(settings, 1, now=NOW).freshness}
    assert freshness == {"v1 product": [9.5], "v1 user": [40.0, 45.0]}


def test_long_ranges_are_averaged_into_at_most_max_points(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(settings, [row(at(30 - i), 1, "predictions", "requests", float(i)) for i in range(30)])
    monkeypatch.setattr(monitoring_data, "MAX_POINTS", 10)
    (requests,) = load_panels(settings, 1, now=NOW).requests
    assert 5 <= len(requests.x) <= 10
    assert sum(v for v in requests.y if v is not None) / len(requests.y) == pytest.approx(
        14.5, abs=2
    )


def test_the_drift_story_fills_every_panel(settings: Settings) -> None:
    write(settings, drift_story(NOW))
    panels = load_panels(settings, 2, champion=2, now=NOW)
    filled = {
        name: len(getattr(panels, name))
        for name in ("requests", "kpis", "auc", "conversion", "concept_drift", "score_psi",
                     "numeric_drift", "categorical_drift", "freshness")
    }  # fmt: skip
    assert all(filled.values()), filled
    assert panels.score_distribution is not None and len(panels.score_distribution.reference) == 10
    assert max(d.psi or 0 for d in panels.numeric_drift) < 0.2  # v2, retrained: no drift
    drifted = load_panels(settings, 2, champion=1, now=NOW)
    assert {d.feature for d in drifted.numeric_drift if (d.psi or 0) >= 0.2} == {
        "product_clicks_1h", "product_ctr_24h", "price",
    }  # fmt: skip


def test_an_unreachable_prometheus_is_a_state_not_an_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    panel = asyncio.run(PrometheusReader(url, timeout_s=1.0).read(1.0))
    assert not panel.available and panel.alerts == [] and panel.dlq_rate == []
    assert panel.message is not None and panel.message.startswith(
        f"Prometheus unreachable at {url}"
    )


def test_version_info_reads_gates_and_retrain_evidence() -> None:
    tags = {
        "model_kind": "torch", "gates": "passed", "gate.auc": "pass", "gate.auc.detail": "0.75",
        "gate.latency": "fail", "promoted_at": "2026-12-02T11:00:00Z",
        "retrain_reason": "TributaryFeatureDrift", "retrain_evidence": '{"feature": "price"}',
    }  # fmt: skip
    found = ModelVersion(
        "plant-recommender", "4", 1_796_212_800_000, aliases=["shadow"],
        tags=[ModelVersionTag(k, v) for k, v in tags.items()],
    )  # fmt: skip
    info = version_info(found, {"champion": 4, "challenger": 5})  # searches leave aliases out
    assert (info.version, info.kind, info.aliases) == (4, "torch", ["champion", "shadow"])
    assert (info.gates, info.gates_passed, info.gates_total) == ("passed", 1, 2)
    assert info.created_at == "2026-12-02T12:00:00Z"
    assert info.retrain_reason == "TributaryFeatureDrift"
    assert info.retrain_evidence == {"feature": "price"}


def test_the_cache_recomputes_after_its_ttl_and_shares_one_computation() -> None:
    clock = [0.0]
    cache = TtlCache[str, int](ttl_s=5.0, clock=lambda: clock[0])
    calls: list[int] = []

    async def compute() -> int:
        calls.append(1)
        await asyncio.sleep(0.01)
        return len(calls)

    async def scenario() -> list[int]:
        together = await asyncio.gather(*(cache.get("k", compute) for _ in range(5)))
        clock[0] = 4.9
        cached = await cache.get("k", compute)
        clock[0] = 5.1
        return [*together, cached, await cache.get("k", compute)]

    assert asyncio.run(scenario()) == [1, 1, 1, 1, 1, 1, 2]


def test_the_cache_keeps_a_bounded_number_of_keys() -> None:
    cache = TtlCache[int, int](ttl_s=60.0)

    async def fill() -> None:
        for key in range(100):
            await cache.get(key, lambda k=key: asyncio.sleep(0, k))  # type: ignore[misc]

    asyncio.run(fill())
    assert len(cache._values) == 32 and 99 in cache._values and 0 not in cache._values
