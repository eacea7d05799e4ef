"""``tributary promote --version N``: gather what the gates need, run them, move ``champion``.

The gates judge a version on the validation rows its training run logged
(``validation/validation.parquet``), against the current champion scored on
those same rows. A version without them (an incremental-learner checkpoint) is
judged on a fresh set built from the latest ``validation_fraction`` of the
training window in Delta. Results go to version tags (``gate.<name>`` = pass or
fail, ``gate.<name>.detail``, ``gates`` = passed or failed) and to a "Promotion
gates" section of the version's model card.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from infra.errors import TributaryError
from infra.plantly.catalog import Catalog, load_catalog
from infra.settings import Settings
from training.dataset import build_training_set, newest_event_time, time_split
from training.gates import Gate, GateResult, GateSubject, run_gates
from training.registry import CHAMPION, RegisteredVersion, Registry

VALIDATION_ARTIFACT: Final = "validation/validation.parquet"
MODEL_CARD_ARTIFACT: Final = "model_card.md"
_GATES_HEADING: Final = "## Promotion gates"
_TEXT_SUFFIXES: Final = (".md", ".json", ".txt", ".yaml", ".yml", ".csv")
_MAX_TEXT_BYTES: Final = 2 * 1024 * 1024


class GateFailedError(TributaryError):
    """A version failed at least one promotion gate; the champion did not move."""

    code = "gates_failed"
    http_status = 409

    def __init__(self, report: PromotionReport) -> None:
        failed = [r.line() for r in report.results if not r.passed]
        super().__init__(f"version {report.version} not promoted: " + "; ".join(failed))
        self.report = report


@dataclass
class PromotionReport:
    version: int
    results: list[GateResult]
    promoted: bool = False
    previous_champion: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "passed": self.passed, "promoted": self.promoted,
            "previous_champion": self.previous_champion, "seconds": round(self.seconds, 2),
            "gates": [{"gate": r.gate, "passed": r.passed, "detail": r.detail,
                       "numbers": r.numbers} for r in self.results],
        }  # fmt: skip


def evaluate(
    settings: Settings,
    number: int,
    *,
    gates: list[Gate] | None = None,
    catalog: Catalog | None = None,
) -> PromotionReport:
    """Run the gates on version ``number`` and record the results; moves no alias."""
    started = time.perf_counter()
    registry = Registry(settings)
    version = registry.version(number)
    subject = _subject(settings, registry, version, catalog or load_catalog())
    results = run_gates(subject, gates)
    report = PromotionReport(number, results, seconds=time.perf_counter() - started)
    _record(registry, version, report)
    return report


def promote(
    settings: Settings,
    number: int,
    *,
    gates: list[Gate] | None = None,
    catalog: Catalog | None = None,
) -> PromotionReport:
    """Gates, then ``champion`` → ``number`` only if every gate passed."""
    report = evaluate(settings, number, gates=gates, catalog=catalog)
    if not report.passed:
        raise GateFailedError(report)
    registry = Registry(settings)
    report.previous_champion = registry.make_champion(number)
    report.promoted = True
    registry.set_tags(number, {"promoted_at": _now()})
    return report


def _subject(
    settings: Settings, registry: Registry, version: RegisteredVersion, catalog: Catalog
) -> GateSubject:
    model_info = mlflow.models.get_model_info(version.uri)
    champion = registry.alias(CHAMPION)
    champion_model = None
    if champion is not None and champion.version != version.version:
        champion_model = registry.load(champion.version)
    return GateSubject(
        version=version.version,
        model=registry.load(version.version),
        validation=_validation_rows(settings, registry, version),
        catalog=catalog,
        signature=model_info.signature,
        tags=version.tags,
        champion=champion_model,
        champion_version=None if champion_model is None or champion is None else champion.version,
        artifacts_text=_text_artifacts(registry, version.run_id),
    )


def _validation_rows(
    settings: Settings, registry: Registry, version: RegisteredVersion
) -> pd.DataFrame:
    if version.run_id:
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = registry.client.download_artifacts(
                    version.run_id, VALIDATION_ARTIFACT, folder
                )
                return pd.read_parquet(path)
            except (MlflowException, OSError):
                pass  # not logged with the version: build one below
    window = timedelta(days=settings.training.window_days)
    end = newest_event_time(settings)
    training_set = build_training_set(settings, end - window, end)
    return time_split(training_set.frame, settings.training.validation_fraction)[1]


def _text_artifacts(registry: Registry, run_id: str) -> dict[str, str]:
    """Small text artifacts of the run (model card, input example, reports) by path."""
    if not run_id:
        return {}
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as folder:
        local = Path(registry.client.download_artifacts(run_id, "", folder))
        for path in sorted(local.rglob("*")):
            if path.suffix in _TEXT_SUFFIXES and path.stat().st_size <= _MAX_TEXT_BYTES:
                found[str(path.relative_to(local))] = path.read_text(errors="replace")
    return found


def _record(registry: Registry, version: RegisteredVersion, report: PromotionReport) -> None:
    tags = {"gates": "passed" if report.passed else "failed", "gates_at": _now()}
    for result in report.results:
        tags[f"gate.{result.gate}"] = "pass" if result.passed else "fail"
        tags[f"gate.{result.gate}.detail"] = result.detail[:4_000]
    registry.set_tags(version.version, tags)
    if version.run_id:
        _update_model_card(registry, version.run_id, report)
        registry.client.log_text(
            version.run_id, json.dumps(report.to_dict(), indent=2), "gates/latest.json"
        )


def _update_model_card(registry: Registry, run_id: str, report: PromotionReport) -> None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = registry.client.download_artifacts(run_id, MODEL_CARD_ARTIFACT, folder)
            card = Path(path).read_text()
        except (MlflowException, OSError):
            card = f"# Model card: version {report.version}\n"
    card = card.split(_GATES_HEADING)[0].rstrip() + "\n\n" + gates_section(report)
    registry.client.log_text(run_id, card, MODEL_CARD_ARTIFACT)


def gates_section(report: PromotionReport) -> str:
    """The model card's gate table (replaced on every evaluation)."""
    verdict = "all passed" if report.passed else "FAILED"
    lines = [
        _GATES_HEADING, "", f"Evaluated {_now()}: {verdict}.", "",
        "| gate | result | detail |", "|---|---|---|",
    ]  # fmt: skip
    for result in report.results:
        detail = result.detail.replace("|", "\\|")
        lines.append(f"| {result.gate} | {'pass' if result.passed else 'FAIL'} | {detail} |")
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
