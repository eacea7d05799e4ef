"""The dashboard's panels from the Delta table ``monitoring/metrics``.

The monitor flow writes every window statistic there in long form, one row per
number (``window_start``, ``window_end``, ``model_version``, ``phase``,
``metric``, ``feature``, ``value``, ``emitted_at``, ``seq``). This module reads
the recent rows and shapes them into what the charts draw: series per model
version over time (KPIs, estimated vs realised performance, score PSI, feature
freshness), and for one *focus* version (the champion when it has rows, else
the version with the newest window) the newest window's feature drift and
score distribution against its reference. A missing table gives empty panels
with a message, never an error. Reading blocks: the API calls
:func:`load_panels` in a thread.

>>> from datetime import UTC, datetime
>>> t = datetime(2026, 12, 2, 10, 5, tzinfo=UTC)
>>> frame = pd.DataFrame({
...     "window_end": [t, t], "model_version": [3, 3], "phase": ["outcomes"] * 2,
...     "metric": ["ctr", "conversion"], "feature": ["", ""], "value": [0.12, float("nan")],
...     "emitted_at": [t, t], "seq": [1, 1]})
>>> panels = metrics_panels(frame, table="monitoring/metrics")
>>> [(s.name, s.x, s.y) for s in panels.kpis]
[('v3 conversion', ['2026-12-02T10:05:00Z'], [None]), ('v3 ctr', ['2026-12-02T10:05:00Z'], [0.12])]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from pydantic import BaseModel, Field

from infra.errors import NotFoundError
from infra.lake import open_table
from infra.settings import Settings

TABLE: Final = "monitoring/metrics"
# Drift thresholds drawn on the charts, the alert rules' (monitoring/alerts/drift.rules.yml):
# PSI >= 0.2 for numeric features and the score, Jensen-Shannon distance >= 0.2 for
# categoricals. The chi-square p-value is shown, not alerted on (under no drift it is
# uniform: p < 0.01 in 1 % of windows whatever their size); the page marks p < 0.01.
PSI_THRESHOLD: Final = 0.2
JS_THRESHOLD: Final = 0.2
CHI2_PVALUE_THRESHOLD: Final = 0.01
# more windows than this in range are averaged into buckets: the browser stays fast
MAX_POINTS: Final = 600
_COLUMNS: Final = ["window_end", "model_version", "phase", "metric", "feature", "value"]
_KEY: Final = ["window_end", "model_version", "phase", "metric", "feature"]
_DRIFT: Final = ("feature_psi", "feature_js_distance", "feature_chi2_pvalue")


class Series(BaseModel):
    """One line: a metric of one version (and feature) over window ends (UTC)."""

    name: str
    model_version: int
    metric: str
    feature: str = ""
    x: list[str]
    y: list[float | None]


class FeatureDrift(BaseModel):
    """The newest window's drift of one feature; the statistics its type has."""

    feature: str
    psi: float | None = None
    js_distance: float | None = None
    chi2_pvalue: float | None = None


class ScoreDistribution(BaseModel):
    """Share of the window's scores per reference bin, and the reference's own shares."""

    model_version: int
    window_end: str
    bins: list[str]
    current: list[float | None]
    reference: list[float | None]
    score_psi: float | None


class Thresholds(BaseModel):
    psi: float = PSI_THRESHOLD
    js_distance: float = JS_THRESHOLD
    chi2_pvalue: float = CHI2_PVALUE_THRESHOLD


class MetricsPanels(BaseModel):
    """Everything the charts draw from the table; ``message`` says why a part is empty."""

    available: bool
    message: str | None = None
    table: str
    rows: int = 0
    versions: list[int] = Field(default_factory=list)
    focus_version: int | None = None
    newest_window: str | None = None
    thresholds: Thresholds = Field(default_factory=Thresholds)
    requests: list[Series] = Field(default_factory=list)
    kpis: list[Series] = Field(default_factory=list)
    auc: list[Series] = Field(default_factory=list)
    conversion: list[Series] = Field(default_factory=list)
    concept_drift: list[Series] = Field(default_factory=list)
    score_psi: list[Series] = Field(default_factory=list)
    score_distribution: ScoreDistribution | None = None
    drift_window: str | None = None
    numeric_drift: list[FeatureDrift] = Field(default_factory=list)
    categorical_drift: list[FeatureDrift] = Field(default_factory=list)
    freshness: list[Series] = Field(default_factory=list)


def load_panels(
    settings: Settings, hours: float, champion: int | None = None, now: datetime | None = None
) -> MetricsPanels:
    """The panels over the last ``hours`` (blocking: Delta is read here)."""
    uri = settings.table_uri(TABLE)
    since = (now or datetime.now(UTC)) - timedelta(hours=hours)
    try:
        frame = read_metrics(settings, ds.field("window_end") >= _timestamp(since))
    except NotFoundError:
        message = f"no {TABLE} table yet at {uri}: start the monitor (`tributary run monitor`)"
        return MetricsPanels(available=False, message=message, table=uri)
    focus = focus_version(frame, champion)
    if focus is not None and not _has_reference(frame, focus):
        # the reference shares may have been written before the range: look them up
        wanted = (ds.field("phase") == "reference") & (ds.field("model_version") == focus)
        frame = pd.concat([frame, read_metrics(settings, wanted)], ignore_index=True)
    return metrics_panels(frame, table=uri, champion=champion)


def read_metrics(settings: Settings, where: ds.Expression) -> pd.DataFrame:
    """The table's rows matching ``where``, newest emission per statistic."""
    table = open_table(settings, TABLE, "start the monitor (`tributary run monitor`)")
    columns = [*_COLUMNS, "emitted_at", "seq"]
    data = table.to_pyarrow_dataset().to_table(columns=columns, filter=where)
    return latest_rows(data.to_pandas())


def latest_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per statistic: a window re-emitted (late outcomes) keeps its newest value."""
    ordered = frame.sort_values(["emitted_at", "seq"], kind="stable")
    return ordered.drop_duplicates(_KEY, keep="last").reset_index(drop=True)


def focus_version(frame: pd.DataFrame, champion: int | None) -> int | None:
    """The champion when the table has its rows, else the version with the newest window."""
    if frame.empty:
        return None
    versions = set(frame["model_version"].astype(int))
    if champion is not None and champion in versions:
        return champion
    newest = frame.sort_values(["window_end", "model_version"]).iloc[-1]
    return int(newest["model_version"])


def metrics_panels(
    frame: pd.DataFrame, *, table: str, champion: int | None = None
) -> MetricsPanels:
    """Shape deduplicated rows (see :func:`latest_rows`) into the panels."""
    if frame.empty:
        return MetricsPanels(available=True, table=table, message="no windows in this range yet")
    focus = focus_version(frame, champion)
    timeline = _downsample(frame[frame["phase"] != "reference"])
    drift, drift_window = _latest_drift(frame, focus)
    return MetricsPanels(
        available=True,
        table=table,
        rows=len(frame),
        versions=sorted(set(frame["model_version"].astype(int))),
        focus_version=focus,
        newest_window=_iso(frame["window_end"].max()),
        requests=series(timeline, ["requests"]),
        kpis=series(timeline, ["ctr", "conversion"]),
        auc=series(timeline, ["roc_auc", "estimated_roc_auc"]),
        conversion=series(timeline, ["conversion", "estimated_conversion"]),
        concept_drift=_detections(frame),
        score_psi=series(timeline, ["score_psi"]),
        score_distribution=score_distribution(frame, focus),
        drift_window=drift_window,
        numeric_drift=[d for d in drift if d.psi is not None],
        categorical_drift=[d for d in drift if d.psi is None],
        freshness=series(timeline, ["feature_age_p95_seconds"], by_feature=True),
    )


def series(
    frame: pd.DataFrame, metrics: Iterable[str], *, by_feature: bool = False
) -> list[Series]:
    """One :class:`Series` per version (and feature) and metric, ordered by version."""
    rows = frame[frame["metric"].isin(list(metrics))]
    found = []
    keys = ["model_version", "metric", "feature"] if by_feature else ["model_version", "metric"]
    for key, group in rows.groupby(keys, sort=True):
        version, metric = int(key[0]), str(key[1])
        feature = str(key[2]) if by_feature else ""
        group = group.sort_values("window_end")
        name = f"v{version} {feature or metric}"
        x, y = [_iso(t) for t in group["window_end"]], _values(group["value"])
        found.append(
            Series(name=name, model_version=version, metric=metric, feature=feature, x=x, y=y)
        )
    return found


def score_distribution(frame: pd.DataFrame, version: int | None) -> ScoreDistribution | None:
    """The newest window's score shares per bin for ``version``, beside the reference's."""
    mine = frame[(frame["model_version"] == version) & (frame["metric"] == "score_bin_share")]
    current = mine[mine["phase"] != "reference"]
    if version is None or current.empty:
        return None
    newest = current["window_end"].max()
    shares = _by_bin(current[current["window_end"] == newest])
    reference_rows = mine[mine["phase"] == "reference"]
    reference = {}
    if not reference_rows.empty:
        last = reference_rows["window_end"].max()
        reference = _by_bin(reference_rows[reference_rows["window_end"] == last])
    bins = sorted(set(shares) | set(reference), key=_bin_order)
    psi = frame[
        (frame["model_version"] == version)
        & (frame["metric"] == "score_psi")
        & (frame["window_end"] == newest)
    ]["value"]  # fmt: skip
    return ScoreDistribution(
        model_version=version,
        window_end=_iso(newest),
        bins=bins,
        current=[_number(shares.get(b)) for b in bins],
        reference=[_number(reference.get(b)) for b in bins] if reference else [],
        score_psi=_number(psi.iloc[-1]) if len(psi) else None,
    )


def _latest_drift(
    frame: pd.DataFrame, version: int | None
) -> tuple[list[FeatureDrift], str | None]:
    rows = frame[(frame["model_version"] == version) & frame["metric"].isin(_DRIFT)]
    if rows.empty:
        return [], None
    newest = rows["window_end"].max()
    latest = rows[rows["window_end"] == newest]
    drift: dict[str, dict[str, float | None]] = {}
    for feature, metric, value in latest[["feature", "metric", "value"]].itertuples(index=False):
        drift.setdefault(str(feature), {})[str(metric).removeprefix("feature_")] = _number(value)
    found = [FeatureDrift(feature=name, **stats) for name, stats in sorted(drift.items())]
    return found, _iso(newest)


def _detections(frame: pd.DataFrame) -> list[Series]:
    """Windows where the concept-drift detector fired, per version."""
    fired = frame[(frame["metric"] == "concept_drift") & (frame["value"] >= 1.0)]
    return series(fired, ["concept_drift"])


def _downsample(frame: pd.DataFrame) -> pd.DataFrame:
    """At most :data:`MAX_POINTS` window ends: more are averaged into equal buckets."""
    ends = frame["window_end"]
    if ends.nunique() <= MAX_POINTS:
        return frame
    first = ends.min()
    bucket = pd.Timedelta(
        seconds=math.ceil((ends.max() - first).total_seconds() / (MAX_POINTS - 1))
    )
    bucketed = frame.assign(window_end=first + ((ends - first) // bucket) * bucket)
    keys = ["window_end", "model_version", "phase", "metric", "feature"]
    return bucketed.groupby(keys, as_index=False)["value"].mean()


def _has_reference(frame: pd.DataFrame, version: int) -> bool:
    mine = frame[(frame["model_version"] == version) & (frame["phase"] == "reference")]
    return not mine.empty


def _by_bin(rows: pd.DataFrame) -> dict[str, float]:
    return {str(f): float(v) for f, v in rows[["feature", "value"]].itertuples(index=False)}


def _bin_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def _values(values: pd.Series) -> list[float | None]:
    return [_number(v) for v in values]


def _number(value: object) -> float | None:
    """A finite float with 6 significant digits (JSON has no NaN), else None."""
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return float(f"{number:.6g}") if math.isfinite(number) else None


def _iso(value: object) -> str:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(UTC)
    return str(stamp.tz_convert(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _timestamp(moment: datetime) -> pa.Scalar:
    return pa.scalar(moment, type=pa.timestamp("us", tz="UTC"))
