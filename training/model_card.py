"""Model cards: what a model version is for, what it learned from, how well it does.

A :class:`ModelCard` gathers what the registry records about a version (its
lineage tags, the validation metrics, the promotion gates it went through) and
:func:`render_model_card` writes it as Markdown, in the spirit of Mitchell et
al., *Model Cards for Model Reporting* (2019). The same card always renders to
the same text, so cards can be diffed between versions.

>>> from datetime import UTC, datetime
>>> card = ModelCard(
...     name="plant-recommender", version=3, kind="torch",
...     data=TrainingData(
...         start=datetime(2026, 11, 1, tzinfo=UTC), end=datetime(2026, 11, 8, tzinfo=UTC),
...         delta_versions={"bronze/events": 12}, train_rows=800, valid_rows=200,
...         label_rate=0.031, feature_set_version=1, git_revision="abc123",
...     ),
...     valid_auc=0.7712, valid_log_loss=0.1525,
... )
>>> text = render_model_card(card)
>>> text.splitlines()[0]
'# plant-recommender version 3 (torch)'
>>> [line for line in text.splitlines() if line.startswith("## ")]
['## Intended use', '## Training data', '## Metrics', '## Limitations']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from training.metrics import SegmentAuc

INTENDED_USE: Final = (
    "Ranks the plants a shopper is shown by the probability that they buy each one "
    "within 30 minutes of seeing it, for the recommendations and predictions of the "
    "plantly.shop API. Scores are meant for ranking candidates that already passed "
    "the compliance filter; they are not a decision about any person."
)
LIMITATIONS: Final = (
    "Trained on a simulated shop: shoppers, tastes and prices are synthetic.",
    "Shoppers and plants unseen in training get no learned preference, only what "
    "their features and context say.",
    "Labels count purchases within 30 minutes of an impression; later purchases are negatives.",
    "Segments with few positives have wide AUC error bars; read them with the standard error.",
)


@dataclass(frozen=True)
class TrainingData:
    """Where the training rows came from: the time range and the pinned table versions.

    ``notes`` are extra lines about the run (device, epochs, ...); naive times are UTC.
    """

    start: datetime
    end: datetime
    delta_versions: Mapping[str, int]
    train_rows: int
    valid_rows: int
    label_rate: float
    feature_set_version: int
    git_revision: str
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class GateResult:
    """One promotion gate's verdict on the version."""

    name: str
    passed: bool
    details: str = ""


@dataclass(frozen=True)
class ModelCard:
    """One registered version; ``version`` is None before it is registered."""

    name: str
    version: int | None
    kind: str
    data: TrainingData
    valid_auc: float
    valid_log_loss: float
    segments: Sequence[SegmentAuc] = ()
    gates: Sequence[GateResult] = ()
    intended_use: str = INTENDED_USE
    limitations: Sequence[str] = field(default=LIMITATIONS)


def render_model_card(card: ModelCard) -> str:
    """The card as Markdown, ending with a newline."""
    version = "(unregistered)" if card.version is None else f"version {card.version}"
    sections = [
        f"# {card.name} {version} ({card.kind})",
        f"## Intended use\n\n{card.intended_use}",
        f"## Training data\n\n{_training_data(card.data)}",
        f"## Metrics\n\n{_metrics(card)}",
    ]
    if card.gates:
        sections.append(f"## Promotion gates\n\n{_gates(card.gates)}")
    limitations = "\n".join(f"- {line}" for line in card.limitations) or "- none recorded"
    sections.append(f"## Limitations\n\n{limitations}")
    return "\n\n".join(sections) + "\n"


def _training_data(data: TrainingData) -> str:
    tables = ", ".join(f"`{t}` v{n}" for t, n in sorted(data.delta_versions.items())) or "none"
    lines = [
        f"- Time range: {_utc(data.start)} to {_utc(data.end)} (event time)",
        f"- Delta tables: {tables}",
        f"- Rows: {data.train_rows:,} training, {data.valid_rows:,} validation "
        "(validation is the latest part of the range)",
        f"- Label rate: {data.label_rate:.2%}",
        f"- Feature set version: {data.feature_set_version}",
        f"- Code revision: `{data.git_revision}`",
        *(f"- {note}" for note in data.notes),
    ]
    return "\n".join(lines)


def _metrics(card: ModelCard) -> str:
    overall = f"Validation AUC {_number(card.valid_auc)}, log loss {_number(card.valid_log_loss)}."
    if not card.segments:
        return overall
    rows = [
        "| segment | rows | positives | AUC | standard error |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {_cell(s.name)} | {s.rows:,} | {s.positives:,} | {_number(s.auc)} "
            f"| {_number(s.standard_error)} |"
            for s in card.segments
        ),
    ]
    return overall + "\n\n" + "\n".join(rows)


def _gates(gates: Sequence[GateResult]) -> str:
    rows = ["| gate | result | details |", "|---|---|---|"]
    rows += [
        f"| {_cell(g.name)} | {'passed' if g.passed else '**failed**'} | {_cell(g.details)} |"
        for g in gates
    ]
    return "\n".join(rows)


def _number(value: float) -> str:
    """Four decimals; ``n/a`` for NaN or infinity (a segment without both labels)."""
    return f"{value:.4f}" if math.isfinite(value) else "n/a"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
