"""Learner checkpoints in MLflow: each one a model version, with the state it came from.

A checkpoint is one MLflow run of the profile's experiment that holds

- the model, registered as a new version of the profile's ``plant-recommender``
  (``RecommenderModel(RiverScorer(pipeline))``), with version tags
  ``model_kind=river``, ``learner=incremental``, ``learner_profile``, the consumed
  Kafka offsets (``learner_offsets``, JSON), the counters and the version the
  learner resumed from;
- the whole :class:`~training.learner_state.LearnerState` as the artifact
  ``learner/state.pkl`` and the offsets as ``learner/offsets.json``;
- the prequential log loss and AUC and the counters as run metrics.

The state artifact is logged *before* the version is registered, and the version
is created with its tags in one request, so a version tagged ``learner=incremental``
always has its state: a crash at any point leaves at worst a run without a
version, and the learner resumes from the previous version. :func:`load_latest_checkpoint`
restores the newest such version.

Writing takes a second or two, so :class:`CheckpointWriter` does it on a thread
of its own. The dataflow only pickles the state (a consistent copy at a batch
boundary) and hands it over; when a newer checkpoint arrives before the previous
one was written, the older is skipped — the newer one holds everything it did.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from infra.errors import StackError
from infra.plantly.catalog import load_catalog
from infra.settings import Settings
from training.contract import assemble_rows
from training.learner_state import LearnerState
from training.pyfunc import RecommenderModel
from training.registry import (
    RegisteredVersion,
    Registry,
    configure,
    experiment_name,
    log_recommender,
)
from training.river_model import RiverScorer

LEARNER_TAG: Final = "learner"
LEARNER_KIND: Final = "incremental"
STATE_ARTIFACT: Final = "learner/state.pkl"
OFFSETS_ARTIFACT: Final = "learner/offsets.json"
_MAX_TAG_CHARS: Final = 5_000  # MLflow's limit on a tag value
_WRITE_ATTEMPTS: Final = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A snapshot of the learner and what to say about it, taken between batches.

    Taking it pickles the state on the learning path (~0.1 s for a week of traffic);
    everything slower happens in :func:`write_checkpoint`, on the writer's thread.
    """

    state: bytes
    positions: dict[str, int]
    counters: dict[str, int]
    metrics: dict[str, float]
    resumed_from: int | None  # the model version the learner restored, None on a fresh start

    @classmethod
    def of(cls, state: LearnerState, resumed_from: int | None) -> Checkpoint:
        return cls(
            state=state.snapshot(),
            positions=dict(state.positions),
            counters=state.counters.as_dict(),
            metrics=state.metric_values(),
            resumed_from=resumed_from,
        )

    def tags(self, profile: str) -> dict[str, str]:
        tags = {
            LEARNER_TAG: LEARNER_KIND,
            "learner_profile": profile,
            "learner_resumed_from": "none" if self.resumed_from is None else str(self.resumed_from),
        }
        tags.update({f"learner_{name}": str(value) for name, value in self.counters.items()})
        offsets = json.dumps(self.positions, sort_keys=True)
        if len(offsets) <= _MAX_TAG_CHARS:  # many partitions: the artifact alone has them
            tags["learner_offsets"] = offsets
        return tags


@dataclass(frozen=True)
class RestoredCheckpoint:
    """The newest checkpoint of a profile: its version and the learner state in it."""

    version: RegisteredVersion
    state: LearnerState


def write_checkpoint(settings: Settings, checkpoint: Checkpoint) -> RegisteredVersion:
    """Log ``checkpoint`` as one run and register its model as a new version."""
    client = configure(settings)
    experiment_id = _experiment_id(client, experiment_name(settings))
    # a private copy of the model: the learner goes on learning meanwhile
    model = LearnerState.restore(checkpoint.state).model
    run_name = f"learner-{checkpoint.counters.get('events', 0)}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name):
        numbers = {k: v for k, v in checkpoint.metrics.items() if v == v}  # NaN: not yet
        numbers.update({f"learner_{k}": float(v) for k, v in checkpoint.counters.items()})
        mlflow.log_metrics(numbers)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / Path(STATE_ARTIFACT).name
            path.write_bytes(checkpoint.state)
            mlflow.log_artifact(str(path), artifact_path=str(Path(STATE_ARTIFACT).parent))
        mlflow.log_dict(checkpoint.positions, OFFSETS_ARTIFACT)
        return log_recommender(
            settings,
            RecommenderModel(RiverScorer(model)),
            input_example=example_rows(),
            delta_versions={},
            tags=checkpoint.tags(settings.profile),
        )


def example_rows() -> pd.DataFrame:
    """One contract row (a shopper never seen, the catalog's first plant)."""
    catalog = load_catalog()
    product_id = next(iter(catalog))
    return pd.DataFrame(
        assemble_rows("u-example", "US-CA", "mobile", {}, [(product_id, {})], catalog, 0.0)
    )


def latest_checkpoint_version(settings: Settings) -> RegisteredVersion | None:
    """The newest version the incremental learner of this profile registered."""
    return Registry(settings).latest(
        **{LEARNER_TAG: LEARNER_KIND, "learner_profile": settings.profile}
    )


def load_latest_checkpoint(settings: Settings) -> LearnerState | None:
    """The learner state of the newest checkpoint, or None when there is none."""
    restored = load_latest(settings)
    return None if restored is None else restored.state


def load_latest(settings: Settings) -> RestoredCheckpoint | None:
    """:func:`load_latest_checkpoint` with the version it came from.

    Raises :class:`~infra.errors.StackError` when MLflow does not answer: the registry
    search reads an error as "no version", and a learner that took an unreachable
    server for an empty one would start over from scratch.
    """
    try:
        configure(settings).search_experiments(max_results=1)
    except MlflowException as error:
        raise StackError(f"cannot reach MLflow at {settings.mlflow_uri}: {error.message}") from None
    version = latest_checkpoint_version(settings)
    if version is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=STATE_ARTIFACT, dst_path=folder,
            tracking_uri=settings.mlflow_uri,
        )  # fmt: skip
        state = LearnerState.restore(Path(local).read_bytes())
    return RestoredCheckpoint(version, state)


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created meanwhile by another process
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


class CheckpointPolicy:
    """Checkpoint after ``every_events`` consumed events or ``every_s`` seconds with news."""

    def __init__(self, every_events: int, every_s: float, clock: Callable[[], float]) -> None:
        self.every_events = every_events
        self.every_s = every_s
        self.clock = clock
        self.last_at = clock()
        self.last_events = 0

    def due(self, events: int) -> bool:
        news = events - self.last_events
        return news >= self.every_events or (
            news > 0 and self.clock() - self.last_at >= self.every_s
        )

    def next_time(self) -> float:
        """Clock time of the next time-based checkpoint."""
        return self.last_at + self.every_s

    def taken(self, events: int) -> None:
        self.last_at = self.clock()
        self.last_events = events


Write = Callable[[Checkpoint], RegisteredVersion]


class CheckpointWriter:
    """Writes checkpoints on a thread of its own, newest first; see the module docstring.

    ``on_written`` and ``on_failed`` are told the outcome (for metrics). :meth:`close`
    waits for the last checkpoint and raises when it could not be written.
    """

    def __init__(
        self,
        write: Write,
        on_written: Callable[[RegisteredVersion, float], None] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
        retry_wait_s: float = 1.0,
    ) -> None:
        self.write = write
        self.on_written = on_written
        self.on_failed = on_failed
        self.retry_wait_s = retry_wait_s
        self.written: list[RegisteredVersion] = []
        self.superseded = 0
        self.error: BaseException | None = None
        self._next: Checkpoint | None = None
        self._closing = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, checkpoint: Checkpoint) -> None:
        """Queue ``checkpoint``, replacing one not written yet; never blocks on MLflow."""
        with self._wake:
            if self._closing:
                raise RuntimeError("the checkpoint writer is closed")
            if self._next is not None:
                self.superseded += 1
            self._next = checkpoint
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="learner-checkpoints", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        """Write what is queued, stop the thread; raise if the last write failed."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self.error is not None:
            raise RuntimeError("the last learner checkpoint was not written") from self.error

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._next is None and not self._closing:
                    self._wake.wait()
                checkpoint, self._next = self._next, None
                if checkpoint is None:
                    return  # closing, nothing left
            self._write_with_retries(checkpoint)

    def _write_with_retries(self, checkpoint: Checkpoint) -> None:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                version = self.write(checkpoint)
            except Exception as error:  # MLflow down, disk full: log, retry, report
                log.warning("learner checkpoint attempt %d failed: %s", attempt, error)
                if self.on_failed is not None:
                    self.on_failed(error)
                self.error = error
                with self._wake:
                    if self._next is not None:
                        return  # a newer checkpoint replaces this one
                time.sleep(self.retry_wait_s * attempt)
                continue
            self.error = None
            self.written.append(version)
            if self.on_written is not None:
                self.on_written(version, time.perf_counter() - started)
            return
