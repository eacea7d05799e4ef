"""The data check a training set must pass before any model sees it.

Four checks, each named in the report: the **schema** (every contract column
with its type, plus ``label`` and ``event_ts``), **null rates** (features have
defaults, so any null is a bug upstream), **label balance** (enough positives
and negatives to learn and to measure AUC), and the **PII scan**. A failure
raises :class:`DataCheckError` naming every failed check and its numbers.

>>> import pandas as pd
>>> report = check_training_set(pd.DataFrame({"label": [0, 1]}), raise_on_failure=False)
>>> report.passed, report.failures()[0]
(False, 'schema: missing columns user_id, product_id, region, device, category, light, ...')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final

import pandas as pd

from infra.errors import TributaryError
from training.contract import SPEC
from training.pii import scan_frame

MIN_POSITIVES: Final = 20
MIN_NEGATIVES: Final = 20
LABEL_RATE_RANGE: Final = (0.001, 0.5)
_KINDS: Final = {
    "string": ("object", "string", "str"),
    "long": ("int64", "int32"),
    "double": ("float64",),
}


class DataCheckError(TributaryError):
    """A training set failed its data check; nothing was trained."""

    code = "data_check_failed"
    http_status = 422


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataCheckReport:
    rows: int
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
        }


def check_training_set(frame: pd.DataFrame, *, raise_on_failure: bool = True) -> DataCheckReport:
    """Run every check; raise :class:`DataCheckError` on failure unless told not to."""
    checks = [_schema(frame)]
    if checks[0].passed:
        checks += [_nulls(frame), _label_balance(frame), _pii(frame)]
    report = DataCheckReport(len(frame), checks)
    if raise_on_failure and not report.passed:
        raise DataCheckError("training set failed its data check: " + "; ".join(report.failures()))
    return report


def _schema(frame: pd.DataFrame) -> CheckResult:
    wanted = [*SPEC, ("label", "long"), ("event_ts", "double")]
    missing = [name for name, _ in wanted if name not in frame.columns]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        return CheckResult("schema", False, f"missing columns {shown}", {"missing": missing})
    wrong = {
        name: str(frame[name].dtype)
        for name, kind in wanted
        if str(frame[name].dtype) not in _KINDS[kind]
    }
    if wrong:
        detail = ", ".join(f"{name} is {dtype}" for name, dtype in wrong.items())
        return CheckResult("schema", False, f"wrong types: {detail}", {"wrong": wrong})
    return CheckResult("schema", True, f"{len(wanted)} columns as the contract says")


def _nulls(frame: pd.DataFrame) -> CheckResult:
    rates = {name: float(rate) for name, rate in frame.isna().mean().items() if rate > 0}
    if rates:
        detail = ", ".join(f"{name} {rate:.2%}" for name, rate in sorted(rates.items()))
        return CheckResult("null_rates", False, f"nulls in {detail}", {"null_rates": rates})
    return CheckResult("null_rates", True, "no nulls", {"null_rates": {}})


def _label_balance(frame: pd.DataFrame) -> CheckResult:
    positives = int(frame["label"].sum())
    negatives = len(frame) - positives
    rate = positives / len(frame) if len(frame) else 0.0
    numbers = {"positives": positives, "negatives": negatives, "label_rate": round(rate, 5)}
    low, high = LABEL_RATE_RANGE
    if positives < MIN_POSITIVES or negatives < MIN_NEGATIVES:
        detail = f"{positives} positives and {negatives} negatives; need {MIN_POSITIVES} of each"
        return CheckResult("label_balance", False, detail, numbers)
    if not low <= rate <= high:
        return CheckResult(
            "label_balance", False, f"label rate {rate:.4f} outside [{low}, {high}]", numbers
        )
    return CheckResult("label_balance", True, f"label rate {rate:.4f}", numbers)


def _pii(frame: pd.DataFrame) -> CheckResult:
    findings = scan_frame(frame)
    if findings:
        detail = f"{len(findings)} finding(s): " + "; ".join(map(str, findings[:3]))
        return CheckResult("pii_scan", False, detail, {"findings": [str(f) for f in findings]})
    return CheckResult("pii_scan", True, "no emails, phone numbers, cards or street addresses")
