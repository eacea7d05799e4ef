"""From candidates to a ranked, compliant list: the path serving and the gates share.

:func:`recommend` removes candidates invasive in the request's region (the
compliance filter of :mod:`infra.plantly.compliance`), builds contract rows from
the features it is given, scores them with the model and keeps the top ``k``.
The promotion gate runs this very function over every region, so a model is
judged by what serving would return with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flows.features.definitions import FeatureValue
from infra.plantly.catalog import Catalog
from infra.plantly.compliance import allowed_candidates
from training.contract import RowBatch, Rows, assemble_rows
from training.pyfunc import RecommenderModel

Features = Mapping[str, FeatureValue]


@dataclass(frozen=True, slots=True)
class ScoredItem:
    product_id: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    items: list[ScoredItem]
    rows: RowBatch  # what the model scored, for the prediction log
    removed: int  # candidates the compliance filter took out


def rank(model: RecommenderModel, rows: Rows, k: int) -> list[ScoredItem]:
    """The model's ``k`` best rows, highest score first (ties keep candidate order)."""
    if len(rows) == 0:
        return []
    ids, scores = model.score_columns(rows)
    order = np.argsort(-scores, kind="stable")[:k].tolist()
    # Python lists: indexing numpy arrays element by element costs more than converting
    id_list, score_list = ids.tolist(), scores.tolist()
    return [ScoredItem(str(id_list[i]), float(score_list[i])) for i in order]


def recommend(
    model: RecommenderModel,
    catalog: Catalog,
    *,
    user_id: str,
    region: str,
    device: str | None,
    candidates: Sequence[str],
    user_features: Features,
    product_features: Mapping[str, Features],
    as_of: float,
    k: int,
) -> Recommendation:
    """Filter, assemble, score and rank; missing product features take defaults."""
    allowed = allowed_candidates(catalog, region, candidates)
    columns = assemble_rows(
        user_id, region, device, user_features,
        [(pid, product_features.get(pid, {})) for pid in allowed], catalog, as_of,
    )  # fmt: skip
    rows = RowBatch(columns)
    return Recommendation(rank(model, rows, k), rows, len(candidates) - len(allowed))
