"""The monitor's alert rules, evaluated in Python on a run of window records.

Each :class:`RuleCheck` mirrors one rule of ``monitoring/alerts/*.rules.yml``
that reads the monitor's window statistics: the same statistic, threshold and
guard, and the rule's own ``for:`` read from the YAML. :func:`yaml_problems`
holds each mirror to its rule's expression, so a threshold changed in the YAML
and not here fails a test instead of measuring the wrong rule.

**Time.** The monitor sets a gauge when a window's record is emitted and it
stands until the version's next record of that phase, so record ``i`` holds the
rule's condition from its ``window_end`` to the next record's (the last one for
``window_s``). A series fires when a run of consecutive records with the
condition true holds it for at least the rule's ``for:`` (``10s``: any one
window; ``10m``: two 5-minute windows or ten 1-minute ones). A window whose
guard fails (too few requests or labelled items) breaks a run, as the ``and on``
clause drops the series. ``TributaryConceptDrift`` fires on any detection.

>>> from monitoring.windows import MonitorRecord
>>> def window(end: float, psi: float) -> MonitorRecord:
...     return MonitorRecord("predictions", 1, "m", 1, end - 300, end, 0.0,
...                          {"requests": 400.0}, features={"price": {"psi": psi}})
>>> drift = next(c for c in CHECKS if c.alert == "TributaryFeatureDrift")
>>> found = evaluate(drift, [window(300.0, 0.05), window(600.0, 0.31)], 300.0, for_s=10.0)
>>> found["fired"], found["over_threshold"], found["worst"]["price"]
(True, 1, 0.31)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from monitoring.alerts import rules_dir
from monitoring.windows import MonitorRecord

REQUESTS_GUARD: Final = 300.0
LABELLED_GUARD: Final = 3000.0
PSI: Final = 0.2
JS: Final = 0.2
AUC_DROP: Final = 0.05
CONVERSION_SHARE: Final = 0.8
Series = Callable[[MonitorRecord], dict[str, float]]


@dataclass(frozen=True)
class RuleCheck:
    """One alert rule as a test on window records; ``series`` maps a label to its value."""

    alert: str
    phase: Literal["predictions", "outcomes"]
    statistic: str  # what ``worst`` reports
    series: Series
    breached: Callable[[float], bool]
    guard: Callable[[MonitorRecord], bool]
    worst: Literal["max", "min"]
    expr_parts: tuple[str, ...]  # what the YAML expression must contain


def _requests(record: MonitorRecord) -> bool:
    return record.metrics.get("requests", 0.0) >= REQUESTS_GUARD


def _labelled(record: MonitorRecord) -> bool:
    return record.metrics.get("labelled", 0.0) >= LABELLED_GUARD


def _always(record: MonitorRecord) -> bool:
    return True


def _feature(statistic: str) -> Series:
    def values(record: MonitorRecord) -> dict[str, float]:
        return {name: found[statistic] for name, found in record.features.items()
                if statistic in found}  # fmt: skip

    return values


def _one(compute: Callable[[MonitorRecord], float]) -> Series:
    return lambda record: {"": compute(record)}


def _metric(name: str) -> Callable[[MonitorRecord], float]:
    return lambda record: record.metrics.get(name, math.nan)


def _estimated_gap(record: MonitorRecord) -> float:
    reference = float(record.reference.get("estimated_roc_auc", math.nan))
    return record.metrics.get("candidate_estimated_roc_auc", math.nan) - reference


def _auc_gap(record: MonitorRecord) -> float:
    metrics = record.metrics
    return metrics.get("roc_auc", math.nan) - metrics.get("expected_roc_auc", math.nan)


def _conversion_share(record: MonitorRecord) -> float:
    expected = record.metrics.get("expected_conversion", math.nan)
    conversion = record.metrics.get("conversion", math.nan)
    return conversion / expected if expected > 0 else math.nan


def _has_reference(record: MonitorRecord) -> float:
    return 1.0 if record.reference.get("available") else 0.0


CHECKS: Final = (
    RuleCheck("TributaryFeatureDrift", "predictions", "psi", _feature("psi"),
              lambda v: v >= PSI, _requests, "max",
              ("tributary_monitor_feature_psi >= 0.2", "window_requests >= 300")),
    RuleCheck("TributaryCategoricalDrift", "predictions", "js_distance", _feature("js_distance"),
              lambda v: v >= JS, _requests, "max",
              ("tributary_monitor_feature_js_distance >= 0.2", "window_requests >= 300")),
    RuleCheck("TributaryScoreDrift", "predictions", "score_psi", _one(_metric("score_psi")),
              lambda v: v >= PSI, _requests, "max",
              ("tributary_monitor_score_psi >= 0.2", "window_requests >= 300")),
    RuleCheck("TributaryEstimatedPerformanceDrop", "predictions",
              "candidate_estimated_roc_auc - reference_estimated_roc_auc",
              _one(_estimated_gap), lambda v: v < -AUC_DROP, _requests, "min",
              ("tributary_monitor_candidate_estimated_roc_auc",
               "(tributary_monitor_reference_estimated_roc_auc - 0.05)",
               "window_requests >= 300")),
    RuleCheck("TributaryNoReferenceProfile", "predictions", "has_reference",
              _one(_has_reference), lambda v: v == 0, _always, "min",
              ("tributary_monitor_has_reference == 0",)),
    RuleCheck("TributaryAucDrop", "outcomes", "roc_auc - expected_roc_auc", _one(_auc_gap),
              lambda v: v < -AUC_DROP, _labelled, "min",
              ("tributary_monitor_roc_auc", "(tributary_monitor_expected_roc_auc - 0.05)",
               "labelled_items >= 3000")),
    RuleCheck("TributaryConversionDrop", "outcomes", "conversion / expected_conversion",
              _one(_conversion_share), lambda v: v < CONVERSION_SHARE, _labelled, "min",
              ("tributary_monitor_conversion_ratio",
               "(0.8 * tributary_monitor_expected_conversion_ratio)", "labelled_items >= 3000")),
    RuleCheck("TributaryConceptDrift", "outcomes", "detections",
              _one(lambda record: float(record.detections)), lambda v: v > 0, _always, "max",
              ("increase(tributary_monitor_concept_drift_total[10m]) > 0",)),
)  # fmt: skip


# -- the YAML --------------------------------------------------------------------


def load_rules(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every alert rule of the rule files, by name."""
    rules: dict[str, dict[str, Any]] = {}
    for path in sorted((folder or rules_dir()).glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                rules[rule["alert"]] = rule
    return rules


def duration_s(text: str | None) -> float:
    """A Prometheus duration (``10s``, ``10m``, ``2h``) in seconds; no ``for:`` is 0.

    >>> duration_s("10m"), duration_s("10s"), duration_s(None)
    (600.0, 10.0, 0.0)
    """
    if not text:
        return 0.0
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text)
    return sum(int(number) * units[unit] for number, unit in parts)


def yaml_problems(rules: dict[str, dict[str, Any]]) -> list[str]:
    """How the mirrors depart from the YAML: a missing rule or a statistic, threshold
    or guard the expression does not hold (whitespace ignored)."""
    problems = []
    for check in CHECKS:
        rule = rules.get(check.alert)
        if rule is None:
            problems.append(f"{check.alert}: not in the rule files")
            continue
        expr = " ".join(str(rule["expr"]).split())
        problems += [f"{check.alert}: expr lacks {part!r}" for part in check.expr_parts
                     if part not in expr]  # fmt: skip
    return problems


# -- evaluation ------------------------------------------------------------------


def evaluate(
    check: RuleCheck, records: Iterable[MonitorRecord], window_s: float, for_s: float
) -> dict[str, Any]:
    """What ``check`` saw on ``records`` (one model version): see the module doc."""
    ordered = sorted((r for r in records if r.phase == check.phase), key=lambda r: r.window_end)
    guarded = [check.guard(record) for record in ordered]
    holds = [b.window_end - a.window_end for a, b in pairwise(ordered)]
    holds.append(window_s)
    labels = sorted({label for record in ordered for label in check.series(record)})
    over = unguarded = 0
    fired_at: list[float] = []  # window ends of the records where an incident fires
    worst: dict[str, float | None] = {}
    worst_any: dict[str, float | None] = {}
    for label in labels:
        values = [check.series(record).get(label, math.nan) for record in ordered]
        breached = [math.isfinite(v) and check.breached(v) for v in values]
        conditions = [b and g for b, g in zip(breached, guarded, strict=True)]
        over += sum(conditions)
        unguarded += sum(breached)
        fired_at += [ordered[i].window_end for i in _incidents(conditions, holds, for_s)]
        pick = max if check.worst == "max" else min
        worst[label] = _extreme(pick, [v for v, g in zip(values, guarded, strict=True) if g])
        worst_any[label] = _extreme(pick, values)
    return {
        "windows": len(ordered),
        "evaluated": sum(guarded),
        "over_threshold": over,
        "over_threshold_unguarded": unguarded,
        "fired": bool(fired_at),
        "incidents": len(fired_at),
        "fired_at": sorted(fired_at),
        "for_s": for_s,
        "statistic": check.statistic,
        "worst": _flat(worst),
        "worst_unguarded": _flat(worst_any),
    }


def _incidents(conditions: Sequence[bool], holds: Sequence[float], for_s: float) -> list[int]:
    """Where each run of true conditions whose values stood ``for_s`` together fires."""
    found: list[int] = []
    held, counted = 0.0, False
    for index, (condition, hold) in enumerate(zip(conditions, holds, strict=True)):
        if not condition:
            held, counted = 0.0, False
            continue
        held += hold
        if held >= for_s and not counted:
            found.append(index)
            counted = True
    return found


def _extreme(pick: Callable[[Iterable[float]], float], values: Iterable[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(pick(finite), 6) if finite else None


def _flat(by_label: dict[str, float | None]) -> Any:
    """One number for an unlabelled rule, else the number per feature."""
    return by_label.get("") if set(by_label) == {""} else by_label


def evaluate_all(
    records: Sequence[MonitorRecord], window_s: float, rules: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Every check on ``records``, with ``for:`` from ``rules`` (see :func:`load_rules`)."""
    return {
        check.alert: evaluate(check, records, window_s, duration_s(rules[check.alert].get("for")))
        for check in CHECKS
    }
