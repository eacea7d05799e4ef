"""Model cards render every section, deterministically, and survive awkward values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd

from training.metrics import segment_aucs
from training.model_card import GateResult, ModelCard, TrainingData, render_model_card

DATA = TrainingData(
    start=datetime(2026, 11, 13, tzinfo=UTC),
    end=datetime(2026, 11, 20, 6, 30, tzinfo=timezone(timedelta(hours=1))),
    delta_versions={"catalog/products": 1, "bronze/events": 42},
    train_rows=100_781,
    valid_rows=25_196,
    label_rate=0.0371,
    feature_set_version=1,
    git_revision="0123abc",
    notes=("Trained on cpu; best epoch 2 of 5",),
)


def _card() -> ModelCard:
    frame = pd.DataFrame(
        {
            "region": ["US-CA", "US-CA", "US-CA", "US-NY", "US-NY"],
            "device": ["mobile", "mobile", "desktop", "mobile", "desktop"],
            "label": [0, 1, 0, 0, 0],
        }
    )
    segments = segment_aucs(frame, [0.1, 0.9, 0.2, 0.3, 0.4])
    gates = (
        GateResult("auc-vs-champion", True, "0.7712 >= 0.7650 - 0.005"),
        GateResult("segments", False, "region=US-NY | no positives"),
    )
    return ModelCard(
        name="plant-recommender",
        version=7,
        kind="torch",
        data=DATA,
        valid_auc=0.77123,
        valid_log_loss=0.15253,
        segments=segments,
        gates=gates,
    )


EXPECTED = """\
# plant-recommender version 7 (torch)

## Intended use

Ranks the plants a shopper is shown by the probability that they buy each one within 30 \
minutes of seeing it, for the recommendations and predictions of the plantly.shop API. Scores \
are meant for ranking candidates that already passed the compliance filter; they are not a \
decision about any person.

## Training data

- Time range: 2026-11-13 00:00 UTC to 2026-11-20 05:30 UTC (event time)
- Delta tables: `bronze/events` v42, `catalog/products` v1
- Rows: 100,781 training, 25,196 validation (validation is the latest part of the range)
- Label rate: 3.71%
- Feature set version: 1
- Code revision: `0123abc`
- Trained on cpu; best epoch 2 of 5

## Metrics

Validation AUC 0.7712, log loss 0.1525.

| segment | rows | positives | AUC | standard error |
|---|---:|---:|---:|---:|
| region=US-CA | 3 | 1 | 1.0000 | 0.0000 |
| region=US-NY | 2 | 0 | n/a | n/a |
| device=desktop | 2 | 0 | n/a | n/a |
| device=mobile | 3 | 1 | 1.0000 | 0.0000 |

## Promotion gates

| gate | result | details |
|---|---|---|
| auc-vs-champion | passed | 0.7712 >= 0.7650 - 0.005 |
| segments | **failed** | region=US-NY \\| no positives |

## Limitations

- Trained on a simulated shop: shoppers, tastes and prices are synthetic.
- Shoppers and plants unseen in training get no learned preference, only what their features \
and context say.
- Labels count purchases within 30 minutes of an impression; later purchases are negatives.
- Segments with few positives have wide AUC error bars; read them with the standard error.
"""


def test_the_card_renders_every_section_in_order() -> None:
    assert render_model_card(_card()) == EXPECTED


def test_rendering_is_deterministic() -> None:
    assert render_model_card(_card()) == render_model_card(_card())


def test_a_card_without_gates_or_version_leaves_those_out() -> None:
    card = ModelCard(
        name="plant-recommender",
        version=None,
        kind="river",
        data=DATA,
        valid_auc=float("nan"),
        valid_log_loss=0.2,
        limitations=(),
    )
    text = render_model_card(card)
    assert text.startswith("# plant-recommender (unregistered) (river)\n")
    assert "## Promotion gates" not in text
    assert "Validation AUC n/a, log loss 0.2000." in text
    assert text.endswith("## Limitations\n\n- none recorded\n")
