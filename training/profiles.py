"""Reference profiles: what a model is asked to score, and how it scored it, at training time.

Every ``tributary train`` run (torch and River) logs one profile as the MLflow
artifact :data:`PROFILE_ARTIFACT` of its run; the monitor measures drift of
served traffic against the serving champion's profile. The profile lives here,
below ``monitoring``, because imports go one way: training writes it, the
monitor (which may import training) reads it.

**What population it describes.** The monitor bins what serving logs: per
request, asked as a session starts, the user's features and every catalog
product allowed in the region, and the model's score of each. So the profile
describes the same population: the training set's *reference requests*
(:class:`training.replay.ReferenceRequests`: sampled session starts of the
window's latest part, each with every allowed product), scored by the trained
model. Training rows would not do: they are impressions the shop chose to show
(popular products, read mid-session), whose 1-hour product counts and hours
since the user's last event are another distribution altogether — a permanent
false drift (PSI 2 to 9 on steady traffic). The validation impressions still
give ``positive_rate`` and ``roc_auc``, the reference for the realised KPIs,
since only shown items get labels.

Once a model serves, it changes the traffic it is measured on (the API, not
the shop, now picks what is shown), so a window in which a model already
served is described by what serving *logged*: when ``ml.predictions`` holds
enough requests of the validation part, those rows, re-scored by the new
model, are the reference (kind ``"logged"``; :mod:`training.logged_reference`).

The user and context columns (:data:`PER_REQUEST`) count once per request, the
product columns once per row, exactly as the monitor counts served requests.

A numeric column is summarised by quantile bins of the reference rows: interior
cut points ``edges`` and ``counts`` per bin, where the bin of ``x`` is
``np.searchsorted(edges, x, side="right")`` (bin ``i`` holds
``edges[i-1] <= x < edges[i]``). Edges come from ``np.quantile`` and are moved
up to the next value seen in the data, so a quantile falling on a repeated
value keeps that value in the lower bin; equal edges are merged. A count
feature that is zero for most rows therefore gets a bin of its own for zero and
fewer bins overall, instead of empty ones. A categorical column is its
category counts. The model's scores of the reference rows get the same binning
as a numeric column. The JSON is a few KB.

>>> clicks = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 9])
>>> profile = NumericProfile.of(clicks, bins=4)
>>> profile.edges, profile.counts
([1.0, 2.0], [6, 1, 3])
>>> bin_counts(profile.edges, np.array([0, 1, 2.5, 3, 100])).tolist()
[1, 1, 3]
>>> category_counts(["US-CA", "US-NY", "US-CA"])
{'US-CA': 2, 'US-NY': 1}
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, ValidationError

from infra.errors import StackError
from infra.settings import Settings
from training.contract import CATEGORICALS, NUMERIC
from training.metrics import estimated_roc_auc, roc_auc
from training.registry import Registry
from training.replay import REQUEST

PROFILE_ARTIFACT: Final = "monitoring/reference_profile.json"
SCORE: Final = "score"
"""The name :meth:`ReferenceProfile.bin_numeric` takes for the model's scores."""
DEFAULT_BINS: Final = 10
ReferenceKind = Literal["logged", "requests", "impressions"]
PER_REQUEST: Final = ("region", "device", *(name for name in NUMERIC if name.startswith("user_")))
"""Columns that hold one value per request, repeated on each of its rows; they count once
per request, since 50 copies of one shopper's region are one observation, not 50 (a
chi-square test over rows would be 50 times too sure). The monitor counts served
requests the same way (:func:`monitoring.windows.aggregate`)."""

log = logging.getLogger(__name__)


def bin_counts(edges: ArrayLike, values: ArrayLike) -> np.ndarray:
    """Count ``values`` per bin of ``edges`` (``len(edges) + 1`` bins; NaN goes last).

    One ``searchsorted`` and one ``bincount``: tens of nanoseconds per value.
    """
    cuts = np.asarray(edges, dtype=np.float64)
    bins = np.searchsorted(cuts, np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(bins, minlength=len(cuts) + 1)


def category_counts(values: Iterable[object]) -> dict[str, int]:
    """Count values by their text (``str(value)``).

    A list goes through :class:`collections.Counter` (C code, ~30 ns a value);
    a numpy array of fixed-width strings through ``np.unique``, since iterating
    it would make a numpy scalar per value.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "US":
        found, counts = np.unique(values, return_counts=True)
        return {str(value): int(count) for value, count in zip(found, counts, strict=True)}
    counted = Counter(values.tolist() if isinstance(values, np.ndarray) else values)
    return {str(value): int(count) for value, count in counted.items()}


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Interior cut points of at most ``bins`` bins of roughly equal mass.

    >>> quantile_edges(np.arange(100.0), 4)
    [25.0, 50.0, 75.0]
    >>> quantile_edges(np.zeros(10), 10)
    []
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0 or bins < 2:
        return []
    cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    seen = np.unique(finite)
    # with side="right" an edge equal to a value puts that value in the upper bin;
    # the next larger value seen keeps it below, as "x <= quantile" means
    above = np.searchsorted(seen, cuts, side="right")
    return [float(edge) for edge in np.unique(seen[above[above < seen.size]])]


class NumericProfile(BaseModel):
    """Quantile bins of one numeric column: interior ``edges`` and ``counts`` per bin."""

    model_config = ConfigDict(frozen=True)

    edges: list[float]
    counts: list[int]

    @classmethod
    def of(cls, values: ArrayLike, bins: int = DEFAULT_BINS) -> NumericProfile:
        array = np.asarray(values, dtype=np.float64)
        edges = quantile_edges(array, bins)
        return cls(edges=edges, counts=bin_counts(edges, array).tolist())

    @property
    def rows(self) -> int:
        return sum(self.counts)


class CategoricalProfile(BaseModel):
    """Category counts of one categorical column."""

    model_config = ConfigDict(frozen=True)

    counts: dict[str, int]


class ReferenceProfile(BaseModel):
    """A trained version's reference: the rows it is asked to score, its scores, its KPIs.

    ``numeric``, ``categorical`` and ``score`` describe the reference rows
    (``rows`` of them, from ``requests`` requests; see the module docstring);
    ``estimated_roc_auc`` and ``estimated_conversion`` are the CBPE estimates
    over all their scores pooled, which the monitor's per-window estimates over
    every scored candidate are compared with. ``positive_rate`` and
    ``roc_auc`` are the validation impressions' label rate and AUC.

    ``reference_kind`` is ``"logged"`` for requests serving logged in the
    window's validation part (``logged_requests`` of them were found; see
    :mod:`training.logged_reference`), ``"requests"`` for serving-shaped
    reference requests rebuilt by replay, ``"impressions"`` when the rows are
    impressions instead: profiles written before reference requests existed
    (they read with the defaults below), and windows too small to sample a
    session start, where the validation rows and scores stand in. Columns of
    :data:`PER_REQUEST` are counted once per request, as the monitor counts them.
    """

    # the AUC is NaN when validation held one class; JSON carries it as NaN, not null
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    format: Literal[1] = 1
    rows: int
    window_start: datetime
    window_end: datetime
    numeric: dict[str, NumericProfile]
    categorical: dict[str, CategoricalProfile]
    score: NumericProfile
    positive_rate: float
    roc_auc: float
    reference_kind: ReferenceKind = "impressions"
    requests: int = 0
    logged_requests: int = 0
    estimated_roc_auc: float = float("nan")
    estimated_conversion: float = float("nan")

    def numeric_profile(self, name: str) -> NumericProfile:
        """The bins of a numeric contract column, or of the scores for ``"score"``."""
        return self.score if name == SCORE else self.numeric[name]

    def bin_numeric(self, name: str, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` in the reference bins of ``name`` (a column or ``"score"``)."""
        return bin_counts(self.numeric_profile(name).edges, values)


def build_profile(
    reference_rows: pd.DataFrame,
    reference_scores: ArrayLike,
    valid_rows: pd.DataFrame,
    valid_scores: ArrayLike,
    *,
    bins: int = DEFAULT_BINS,
    window: tuple[datetime, datetime] | None = None,
    kind: ReferenceKind | None = None,
    logged_requests: int = 0,
) -> ReferenceProfile:
    """Profile ``reference_rows`` (contract columns) and the model's ``reference_scores`` of them.

    Reference rows with a ``request`` column are requests (kind ``"requests"``
    unless ``kind`` says ``"logged"``); without one they are impressions. With
    no reference rows at all, the validation rows and scores stand in. Columns
    of :data:`PER_REQUEST` count once per request (an impression is a request
    of one row), the others once per row. ``valid_rows`` (with ``label``) and
    ``valid_scores`` give ``positive_rate`` and ``roc_auc``. ``window`` is the
    training window; without it, the span of the rows' ``event_ts``.
    ``logged_requests``: how many logged requests the window held (recorded).
    """
    if len(reference_rows) == 0:
        reference_rows, reference_scores = valid_rows, valid_scores
    scores = np.asarray(reference_scores, dtype=np.float64)
    if len(scores) != len(reference_rows):
        raise ValueError(f"{len(scores)} scores for {len(reference_rows)} reference rows")
    labels = valid_rows["label"].to_numpy(dtype=np.float64)
    start, end = window or _event_span(reference_rows, valid_rows)
    requests = REQUEST in reference_rows.columns
    firsts = _first_rows(reference_rows)
    return ReferenceProfile(
        rows=len(reference_rows), window_start=start, window_end=end,
        numeric={
            name: NumericProfile.of(_column(reference_rows, name, firsts), bins)
            for name in NUMERIC
        },
        categorical={
            name: _categorical(_column(reference_rows, name, firsts)) for name in CATEGORICALS
        },
        score=NumericProfile.of(scores, bins),
        positive_rate=float(labels.mean()) if labels.size else float("nan"),
        roc_auc=roc_auc(labels, valid_scores),
        reference_kind=(kind or "requests") if requests else "impressions",
        requests=int(reference_rows[REQUEST].nunique()) if requests else 0,
        logged_requests=logged_requests,
        estimated_roc_auc=estimated_roc_auc(scores),
        estimated_conversion=float(scores.mean()) if scores.size else float("nan"),
    )  # fmt: skip


def _first_rows(rows: pd.DataFrame) -> np.ndarray | None:
    """Where each request's rows start (a request's rows are contiguous); None for impressions."""
    if REQUEST not in rows.columns:
        return None
    numbers = rows[REQUEST].to_numpy()
    starts: np.ndarray = np.flatnonzero(np.r_[True, numbers[1:] != numbers[:-1]])
    return starts


def _column(rows: pd.DataFrame, name: str, firsts: np.ndarray | None) -> np.ndarray:
    """A column's values the monitor's way: one per request for :data:`PER_REQUEST`."""
    values: np.ndarray = rows[name].to_numpy()
    return values[firsts] if firsts is not None and name in PER_REQUEST else values


def _categorical(values: np.ndarray) -> CategoricalProfile:
    return CategoricalProfile(counts=dict(sorted(category_counts(values.tolist()).items())))


def _event_span(*frames: pd.DataFrame) -> tuple[datetime, datetime]:
    times = np.concatenate([f["event_ts"].to_numpy(np.float64) for f in frames])
    if len(times) == 0:
        raise ValueError("cannot profile an empty training set")
    return (
        datetime.fromtimestamp(float(np.min(times)), UTC),
        datetime.fromtimestamp(float(np.max(times)), UTC),
    )


def log_profile(profile: ReferenceProfile) -> None:
    """Log ``profile`` as :data:`PROFILE_ARTIFACT` of the active MLflow run."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_profile needs an active MLflow run")
    mlflow.log_text(profile.model_dump_json(), PROFILE_ARTIFACT)


def load_profile(settings: Settings, version: int) -> ReferenceProfile | None:
    """The profile logged with ``version``'s run; None (and one log line) without one.

    Versions trained before profiles existed, and the incremental learner's
    checkpoints, have none: the monitor measures no drift for them. An unknown
    version raises :class:`~infra.errors.NotFoundError`; a server that does not
    answer raises :class:`~infra.errors.StackError` (never None, which a caller
    may remember for good).
    """
    registry = Registry(settings)
    found = registry.version(version)
    if not found.run_id or not _has_profile(registry, found.run_id):
        log.warning(
            "model version %d has no reference profile (%s in run %s): no drift is measured "
            "for it", version, PROFILE_ARTIFACT, found.run_id or "-",
        )  # fmt: skip
        return None
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = registry.client.download_artifacts(found.run_id, PROFILE_ARTIFACT, folder)
            text = Path(path).read_text(encoding="utf-8")
        except (MlflowException, OSError) as error:
            raise StackError(f"cannot read the reference profile of version {version}: "
                             f"{error}") from None  # fmt: skip
    try:
        return ReferenceProfile.model_validate_json(text)
    except ValidationError as error:
        log.warning("model version %d has an unreadable reference profile: %s", version,
                    str(error).splitlines()[0])  # fmt: skip
        return None


def _has_profile(registry: Registry, run_id: str) -> bool:
    folder = PROFILE_ARTIFACT.rsplit("/", 1)[0]
    try:
        listed = registry.client.list_artifacts(run_id, folder)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":  # the run was deleted
            return False
        raise StackError(f"cannot list the artifacts of run {run_id}: {error.message}") from None
    except OSError as error:  # requests' connection errors
        raise StackError(f"cannot list the artifacts of run {run_id}: {error}") from None
    return any(artifact.path == PROFILE_ARTIFACT for artifact in listed)
