"""The River model: a logistic regression over standardized counts and one-hot context.

:func:`make_pipeline` builds what both River learners train — the incremental
learner (:mod:`training.learner_state`) one impression at a time from the
stream, and ``tributary train --kind river`` (:func:`fit_river`) from a point-in-time
training set::

    Select(numeric contract columns) | StandardScaler ─┐
                                                       ├─ LogisticRegression
    Select(categorical columns)      | OneHotEncoder  ─┘

The optimizer is AdaGrad (learning rate 0.05): its per-coordinate step sizes
give a rare region or category one-hot column larger steps than the numeric
columns that every row moves. Over 171k simulated impressions (3.2% positive)
it reached a prequential log loss of 0.130 and AUC 0.73, against 0.134 and 0.72
for plain SGD at 0.01 and 0.139 / 0.70 at 0.02. The intercept learns at 0.01 so
it settles on the ~3% base rate without oscillating. The encoder drops zeros:
only the four categories a row has reach the model, which gives the same
weights as the dense encoding (a zero input has a zero gradient) at a fraction
of the cost.

:class:`RiverScorer` is the :class:`~training.pyfunc.Scorer` served from MLflow.
It scores a batch with the pipeline's own parameters in numpy, equal to
``predict_proba_one`` row by row: 100 rows took 0.6 ms (p50) against 3.3 ms for
River's ``predict_proba_one`` loop and 19 ms for its ``predict_proba_many``.

>>> import pandas as pd
>>> from infra.plantly.catalog import load_catalog
>>> from training.contract import assemble_rows
>>> catalog = load_catalog()
>>> pid = next(iter(catalog))
>>> rows = pd.DataFrame(assemble_rows("u-1", "US-CA", "mobile", {}, [(pid, {})], catalog, 0.0))
>>> scorer = RiverScorer(make_pipeline())
>>> scorer.kind, scorer.score(rows).tolist()  # untrained: the intercept alone
('river', [0.5])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import pandas as pd
from river import compose, linear_model, optim, preprocessing

from training.contract import CATEGORICALS, COLUMNS, NUMERIC, Rows

LEARNING_RATE: Final = 0.05
INTERCEPT_LEARNING_RATE: Final = 0.01
# river.utils.math.sigmoid saturates beyond these logits; the batch path does the same
_SATURATED_LOGIT: Final = 30.0


Row = dict[str, Any]


class OnlineClassifier(Protocol):
    """River's binary classifier interface: what the learners and the scorer need."""

    def predict_proba_one(self, x: Row) -> dict[bool, float]: ...

    def learn_one(self, x: Row, y: bool) -> Any: ...


def make_pipeline(
    learning_rate: float = LEARNING_RATE, intercept_lr: float = INTERCEPT_LEARNING_RATE
) -> compose.Pipeline:
    """A fresh, untrained pipeline over the serving feature contract."""
    numeric = compose.Select(*NUMERIC) | preprocessing.StandardScaler()
    categorical = compose.Select(*CATEGORICALS) | preprocessing.OneHotEncoder(drop_zeros=True)
    classifier = linear_model.LogisticRegression(
        optimizer=optim.AdaGrad(learning_rate), intercept_lr=intercept_lr
    )
    pipeline: compose.Pipeline = (numeric + categorical) | classifier
    return pipeline


@dataclass(frozen=True)
class _LinearView:
    """The fitted parameters of a :func:`make_pipeline` pipeline, read once per batch."""

    means: np.ndarray
    scales: np.ndarray  # 1 / std, 0 where the variance is 0 (River then outputs 0)
    numeric_weights: np.ndarray
    categorical_weights: dict[str, dict[Any, float]]  # column -> value -> weight
    intercept: float

    @classmethod
    def of(cls, model: OnlineClassifier) -> _LinearView | None:
        """The view, or None when ``model`` is not shaped like :func:`make_pipeline`'s."""
        if not isinstance(model, compose.Pipeline):
            return None
        steps = list(model.steps.values())
        if len(steps) != 2 or not isinstance(steps[1], linear_model.LogisticRegression):
            return None
        parts = list(getattr(steps[0], "transformers", {}).values())
        if len(parts) != 2 or not all(isinstance(p, compose.Pipeline) for p in parts):
            return None
        scaler = list(parts[0].steps.values())[-1]
        encoder = list(parts[1].steps.values())[-1]
        if not isinstance(scaler, preprocessing.StandardScaler) or scaler.window_size is not None:
            return None
        if not isinstance(encoder, preprocessing.OneHotEncoder) or encoder.drop_first:
            return None
        classifier = steps[1]
        weights: dict[str, float] = classifier._weights.to_dict()
        # the scaler's stats are defaultdicts: read them without adding keys
        means = np.array([scaler.means.get(name, 0.0) for name in NUMERIC], dtype=np.float64)
        variances = np.array([scaler.vars.get(name, 0.0) for name in NUMERIC], dtype=np.float64)
        scales = np.zeros_like(variances)
        np.divide(1.0, np.sqrt(variances), out=scales, where=variances > 0)
        by_column: dict[str, dict[Any, float]] = {name: {} for name in CATEGORICALS}
        for name in CATEGORICALS:
            prefix = f"{name}_"
            for feature, weight in weights.items():
                if feature.startswith(prefix):
                    by_column[name][feature[len(prefix) :]] = weight
        return cls(
            means=means,
            scales=scales,
            numeric_weights=np.array([weights.get(n, 0.0) for n in NUMERIC], dtype=np.float64),
            categorical_weights=by_column,
            intercept=float(classifier.intercept),
        )

    def logits(self, rows: Rows) -> np.ndarray:
        values = np.column_stack([np.asarray(rows[name], dtype=np.float64) for name in NUMERIC])
        logits: np.ndarray = ((values - self.means) * self.scales) @ self.numeric_weights
        logits += self.intercept
        for name, weights in self.categorical_weights.items():
            # the encoder names a one-hot column f"{name}_{value}": match on str(value)
            logits += np.fromiter(
                (weights.get(str(v), 0.0) for v in np.asarray(rows[name]).tolist()),
                dtype=np.float64,
                count=len(rows),
            )
        return logits


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    clipped = np.clip(logits, -_SATURATED_LOGIT, _SATURATED_LOGIT)
    probabilities: np.ndarray = 1.0 / (1.0 + np.exp(-clipped))
    probabilities[logits > _SATURATED_LOGIT] = 1.0
    probabilities[logits < -_SATURATED_LOGIT] = 0.0
    return probabilities


class RiverScorer:
    """A River pipeline as a :class:`~training.pyfunc.Scorer`; pickles with cloudpickle."""

    kind = "river"

    def __init__(self, pipeline: OnlineClassifier) -> None:
        self.pipeline = pipeline

    def score(self, rows: Rows) -> np.ndarray:
        """Purchase probability per row; the parameters are read per call, never cached."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float64)
        view = _LinearView.of(self.pipeline)
        if view is None:  # some other pipeline: River's own, row by row
            return self.score_one_by_one(rows)
        return _sigmoid(view.logits(rows))

    def score_one_by_one(self, rows: Rows) -> np.ndarray:
        """The reference: ``predict_proba_one`` per row (slow; tests compare against it)."""
        columns = [np.asarray(rows[name]).tolist() for name in COLUMNS]
        records: list[Mapping[str, Any]] = [
            dict(zip(COLUMNS, values, strict=True)) for values in zip(*columns, strict=True)
        ]
        return np.fromiter(
            (self.pipeline.predict_proba_one(dict(r)).get(True, 0.0) for r in records),
            dtype=np.float64,
            count=len(records),
        )


def fit_river(
    train: pd.DataFrame, label: str = "label", time_column: str = "event_ts"
) -> RiverScorer:
    """Learn a fresh pipeline from ``train`` one row at a time, oldest first.

    Rows are sorted by ``time_column`` (stable) when the frame has it, so batch
    training sees examples in the order the incremental learner would.
    """
    if label not in train.columns:
        raise ValueError(f"the training frame has no {label!r} column")
    ordered = train.sort_values(time_column, kind="stable") if time_column in train else train
    pipeline = make_pipeline()
    features = ordered[list(COLUMNS)].to_dict("records")
    for x, y in zip(features, ordered[label].to_numpy(dtype=bool).tolist(), strict=True):
        pipeline.learn_one(x, y)
    return RiverScorer(pipeline)
