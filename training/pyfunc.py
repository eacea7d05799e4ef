"""One ``mlflow.pyfunc`` interface for every kind of plant-recommender model.

A trained model is a :class:`Scorer`: it turns a batch of contract rows (a
pandas DataFrame with :data:`training.contract.COLUMNS`) into one purchase
probability per row. :class:`RecommenderModel` wraps any scorer as an MLflow
``PythonModel`` whose output is a DataFrame of ``product_id`` and ``score``, so
the River and the PyTorch models load and answer the same way::

    model = mlflow.pyfunc.load_model("models:/plant-recommender@champion")
    model.predict(rows)  # DataFrame[product_id, score]

Serving calls :meth:`RecommenderModel.score_columns` on the unwrapped model
with a :class:`~training.contract.RowBatch`, skipping MLflow's per-call schema
checks and pandas, which cost more than scoring 50 rows; the gates check the
signature once per version instead.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types.schema import ColSpec, Schema

from training.contract import OUTPUT_COLUMNS, SPEC, Rows


@runtime_checkable
class Scorer(Protocol):
    """A trained model: purchase probabilities for contract rows."""

    kind: str

    def score(self, rows: Rows) -> np.ndarray:
        """One probability in [0, 1] per row, in row order.

        ``rows`` is a pandas DataFrame or a :class:`~training.contract.RowBatch`;
        use only ``np.asarray(rows[column])`` and ``len(rows)`` so both work.
        """
        ...


class RecommenderModel(PythonModel):
    """The pyfunc face of a :class:`Scorer`; pickled with it into the MLflow model."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    @property
    def kind(self) -> str:
        return self.scorer.kind

    def score_columns(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """(product ids, scores), one of each per row: the serving fast path.

        Every other way of scoring goes through here, so a model that overrides
        it (to re-rank or substitute products) is judged by the gates as served.
        """
        scores = np.asarray(self.scorer.score(rows), dtype=np.float64)
        if scores.shape != (len(rows),):
            raise ValueError(f"scorer returned {scores.shape} scores for {len(rows)} rows")
        return np.asarray(rows["product_id"]), scores

    def score_frame(self, rows: Rows) -> pd.DataFrame:
        product_ids, scores = self.score_columns(rows)
        return pd.DataFrame({"product_id": product_ids, "score": scores})

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return self.score_frame(model_input)


def signature() -> ModelSignature:
    """The serving feature contract as an MLflow signature."""
    inputs = Schema([ColSpec(kind, name) for name, kind in SPEC])
    outputs = Schema([ColSpec("string", OUTPUT_COLUMNS[0]), ColSpec("double", OUTPUT_COLUMNS[1])])
    return ModelSignature(inputs=inputs, outputs=outputs)


def signature_problems(logged: ModelSignature | None) -> list[str]:
    """How a version's signature departs from the contract; empty when compatible.

    Compatible means every contract column is there with its type (the model may
    not ask for anything else), and the output names ``product_id`` and ``score``.

    >>> signature_problems(signature())
    []
    >>> bad = ModelSignature(inputs=Schema([ColSpec("double", "user_id")]))
    >>> signature_problems(bad)[:2]
    ['input user_id is double, the contract says string', 'input product_id is missing']
    """
    if logged is None or logged.inputs is None:
        return ["the version has no input signature"]
    wanted = dict(SPEC)
    have = {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in logged.inputs.inputs}
    problems = []
    for name, kind in wanted.items():
        if name not in have:
            problems.append(f"input {name} is missing")
        elif have[name] != kind:
            problems.append(f"input {name} is {have[name]}, the contract says {kind}")
    problems += [f"input {name} is not in the contract" for name in have if name not in wanted]
    outputs = [] if logged.outputs is None else [s.name for s in logged.outputs.inputs]
    if list(outputs) != list(OUTPUT_COLUMNS):
        problems.append(f"output is {outputs}, the contract says {list(OUTPUT_COLUMNS)}")
    return problems
