"""``tributary train``: a training set from Delta, a model, a tracked and registered version.

One run does, in order: pick the window (``window_days`` ending at the newest
bronze event, or an explicit range), build the point-in-time set and pass its
data check, split by time, fit (River or PyTorch), evaluate on the validation
rows (overall and per segment), and log everything to MLflow — params,
per-epoch metrics, the data check, the validation rows (the gates re-score
them), the reference profile the monitor measures drift against
(:mod:`training.profiles`: the model's scores of serving-shaped requests of the
validation part — those serving logged when a model already served then,
:mod:`training.logged_reference`, else ones rebuilt by replay), the model
card, and the model with its signature, input example, Delta versions,
feature set version, git revision and pip environment. The version is
registered; with ``challenger=True`` it also gets the ``challenger`` alias,
which is what triggers the gates through the registry webhook.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import mlflow
import pandas as pd

from flows.features.definitions import FEATURE_SET_VERSION
from infra.errors import InvalidInputError
from infra.settings import Settings
from training.checks import check_training_set
from training.contract import COLUMNS
from training.dataset import TrainingSet, build_training_set, newest_event_time, time_split
from training.logged_reference import choose_reference, read_logged
from training.metrics import log_loss, roc_auc, segment_aucs
from training.model_card import ModelCard, TrainingData, render_model_card
from training.profiles import ReferenceProfile, build_profile, log_profile
from training.promotion import MODEL_CARD_ARTIFACT, VALIDATION_ARTIFACT
from training.pyfunc import RecommenderModel, Scorer
from training.registry import (
    CHALLENGER,
    RegisteredVersion,
    Registry,
    configure,
    experiment_name,
    git_revision,
    log_recommender,
)
from training.replay import REFERENCE_REQUESTS

ModelKind = Literal["river", "torch"]
MODEL_KINDS: tuple[ModelKind, ...] = ("river", "torch")


@dataclass
class TrainRequest:
    kind: ModelKind
    device: Literal["auto", "cpu", "cuda"] = "auto"
    start: datetime | None = None
    end: datetime | None = None
    window_days: float | None = None
    seed: int = 0
    max_epochs: int | None = None
    # a small network trains fastest on one thread; more only pay on idle, many-core hosts
    cpu_threads: int | None = 1
    challenger: bool = False
    progress: bool = True


@dataclass
class TrainReport:
    version: int
    run_id: str
    kind: str
    rows: int
    train_rows: int
    validation_rows: int
    label_rate: float
    valid_auc: float
    valid_log_loss: float
    delta_versions: dict[str, int]
    seconds: float
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    reference_requests: int = 0  # the reference profile's requests (logged or replayed)
    reference_rows: int = 0
    reference_kind: str = "requests"
    logged_requests: int = 0  # logged requests found in the validation part

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Fitted:
    scorer: Scorer
    params: dict[str, Any]
    device: str
    extra: dict[str, Any]


def train(settings: Settings, request: TrainRequest) -> TrainReport:
    """Train one model version end to end; see the module docstring."""
    if request.kind not in MODEL_KINDS:
        raise InvalidInputError(f"unknown model kind {request.kind!r}; choose river or torch")
    started = time.perf_counter()
    training_set = build_training_set(
        settings, *_window(settings, request), reference_requests=REFERENCE_REQUESTS
    )
    data_check = check_training_set(training_set.frame)
    train_rows, valid_rows = time_split(training_set.frame, settings.training.validation_fraction)
    configure(settings)
    mlflow.set_experiment(experiment_name(settings))
    with mlflow.start_run(run_name=f"{request.kind}-{training_set.end:%Y%m%d-%H%M}"):
        mlflow.log_params(_data_params(training_set, request, len(train_rows), len(valid_rows)))
        mlflow.log_dict(data_check.to_dict(), "data_check.json")
        fitted = _fit(request, train_rows, valid_rows)
        mlflow.log_params(fitted.params)
        model = RecommenderModel(fitted.scorer)
        scores = model.score_frame(valid_rows)["score"].to_numpy()
        metrics = _evaluate(valid_rows, scores)
        mlflow.log_metrics(metrics)
        profile = _profile(settings, model, training_set, valid_rows, scores)
        log_profile(profile)
        _log_validation(valid_rows)
        version = _register(settings, model, training_set, valid_rows, request)
        card = _card(version, request, training_set, valid_rows, scores, metrics)
        mlflow.log_text(card, MODEL_CARD_ARTIFACT)
    registry = Registry(settings)
    registry.set_tags(version.version, {"valid_auc": f"{metrics['valid_auc']:.4f}"})
    if request.challenger:
        registry.set_alias(CHALLENGER, version.version)
    return TrainReport(
        version=version.version, run_id=version.run_id, kind=request.kind,
        rows=len(training_set.frame), train_rows=len(train_rows), validation_rows=len(valid_rows),
        label_rate=round(training_set.label_rate, 5), valid_auc=round(metrics["valid_auc"], 4),
        valid_log_loss=round(metrics["valid_log_loss"], 4),
        delta_versions=training_set.delta_versions, seconds=round(time.perf_counter() - started, 1),
        device=fitted.device, extra=fitted.extra,
        reference_requests=profile.requests, reference_rows=profile.rows,
        reference_kind=profile.reference_kind, logged_requests=profile.logged_requests,
    )  # fmt: skip


def _profile(
    settings: Settings,
    model: RecommenderModel,
    training_set: TrainingSet,
    valid_rows: pd.DataFrame,
    scores: Any,
) -> ReferenceProfile:
    """The reference profile: the new model's scores of the reference requests, and validation.

    The requests are the ones serving logged in the validation part when there
    are enough (:mod:`training.logged_reference`), else the replayed ones.
    """
    valid_start = float(valid_rows["event_ts"].min())
    logged = read_logged(settings, valid_start, training_set.end.timestamp())
    reference, use_logged = choose_reference(logged, training_set.reference_rows)
    reference_scores = model.score_frame(reference)["score"].to_numpy() if len(reference) else []
    profile = build_profile(
        reference, reference_scores, valid_rows, scores,
        window=(training_set.start, training_set.end),
        kind="logged" if use_logged else None, logged_requests=logged.found,
    )  # fmt: skip
    mlflow.log_params(
        {"reference_kind": profile.reference_kind, "logged_requests": profile.logged_requests}
    )
    return profile


def _window(settings: Settings, request: TrainRequest) -> tuple[datetime, datetime]:
    end = request.end or newest_event_time(settings)
    days = request.window_days or settings.training.window_days
    start = request.start or end - timedelta(days=days)
    if start >= end:
        raise InvalidInputError(f"the training window is empty: {start} .. {end}")
    return start, end


def _fit(request: TrainRequest, train_rows: pd.DataFrame, valid_rows: pd.DataFrame) -> _Fitted:
    if request.kind == "river":
        from training.river_model import fit_river

        began = time.perf_counter()
        scorer = fit_river(train_rows)
        seconds = time.perf_counter() - began
        extra = {"examples_per_s": round(len(train_rows) / max(seconds, 1e-9))}
        return _Fitted(scorer, {"model": "river-logistic-regression"}, "cpu", extra)
    return _fit_torch(request, train_rows, valid_rows)


def _fit_torch(
    request: TrainRequest, train_rows: pd.DataFrame, valid_rows: pd.DataFrame
) -> _Fitted:
    from training.torch_train import EpochResult, TorchConfig, fit_torch

    overrides: dict[str, Any] = {
        "device": request.device, "seed": request.seed, "cpu_threads": request.cpu_threads,
    }  # fmt: skip
    if request.max_epochs is not None:
        overrides["max_epochs"] = request.max_epochs
    config = TorchConfig(**overrides)

    def on_epoch(epoch: EpochResult) -> None:
        numbers = {k: float(v) for k, v in asdict(epoch).items() if k != "epoch"}
        mlflow.log_metrics({f"epoch_{k}": v for k, v in numbers.items()}, step=epoch.epoch)

    result = fit_torch(train_rows, valid_rows, config, progress=request.progress,
                       on_epoch=on_epoch)  # fmt: skip
    params = {f"torch_{k}": v for k, v in config.model_dump().items()}
    extra = {"best_epoch": result.best_epoch, "amp": result.amp,
             "examples_per_s": round(max(h.examples_per_s for h in result.history))}  # fmt: skip
    return _Fitted(result.scorer, params, str(result.device), extra)


def _evaluate(valid_rows: pd.DataFrame, scores: Any) -> dict[str, float]:
    labels = valid_rows["label"].to_numpy()
    return {"valid_auc": roc_auc(labels, scores), "valid_log_loss": log_loss(labels, scores)}


def _data_params(
    training_set: TrainingSet, request: TrainRequest, train_rows: int, valid_rows: int
) -> dict[str, Any]:
    return {
        "kind": request.kind, "window_start": training_set.start.isoformat(),
        "window_end": training_set.end.isoformat(), "rows": len(training_set.frame),
        "train_rows": train_rows, "validation_rows": valid_rows,
        "label_rate": round(training_set.label_rate, 5), "seed": request.seed,
        "skipped": json.dumps(training_set.skipped),
        "reference_requests": training_set.reference_requests,
    }  # fmt: skip


def _log_validation(valid_rows: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(VALIDATION_ARTIFACT).name
        valid_rows[[*COLUMNS, "label", "event_ts"]].to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(VALIDATION_ARTIFACT).parent))


def _register(
    settings: Settings,
    model: RecommenderModel,
    training_set: TrainingSet,
    valid_rows: pd.DataFrame,
    request: TrainRequest,
) -> RegisteredVersion:
    example = valid_rows[list(COLUMNS)].head(5)
    tags = {"window_start": training_set.start.isoformat(),
            "window_end": training_set.end.isoformat()}  # fmt: skip
    return log_recommender(
        settings, model, input_example=example, delta_versions=training_set.delta_versions,
        tags=tags,
    )  # fmt: skip


def _card(
    version: RegisteredVersion,
    request: TrainRequest,
    training_set: TrainingSet,
    valid_rows: pd.DataFrame,
    scores: Any,
    metrics: dict[str, float],
) -> str:
    data = TrainingData(
        start=training_set.start, end=training_set.end,
        delta_versions=training_set.delta_versions, train_rows=len(training_set.frame) -
        len(valid_rows), valid_rows=len(valid_rows), label_rate=training_set.label_rate,
        feature_set_version=FEATURE_SET_VERSION, git_revision=git_revision(),
    )  # fmt: skip
    card = ModelCard(
        name=version.name, version=version.version, kind=request.kind, data=data,
        valid_auc=metrics["valid_auc"], valid_log_loss=metrics["valid_log_loss"],
        segments=segment_aucs(valid_rows, scores),
    )  # fmt: skip
    return render_model_card(card)
