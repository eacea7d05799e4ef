"""The model registry: log a scorer as a version of ``plant-recommender``, move aliases.

Every version carries what it was trained from as version tags: the Delta table
versions read (``delta.<table>``), the feature set version, the git revision,
the model kind; the pip environment is logged with the model. Aliases are
``champion`` (served) and ``challenger`` (canary, shadow, and the trigger for
the promotion gates). The previous champion is kept in the registered model's
``previous_champions`` tag, newest last, so :meth:`Registry.rollback` can
restore it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, distributions, version
from pathlib import Path
from typing import Any, Final

import httpx
import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flows.features.definitions import FEATURE_SET_VERSION
from infra.errors import NotFoundError, StackError, TributaryError
from infra.settings import Settings
from training.pyfunc import RecommenderModel, signature

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
MODEL_PATH: Final = "model"
PREVIOUS_TAG: Final = "previous_champions"
_HISTORY_KEPT: Final = 20
# what a loaded model needs; the full environment goes in an artifact
_RUNTIME_PACKAGES: Final = ("mlflow", "pandas", "numpy", "torch", "river", "tributary")


class RegistryError(TributaryError):
    """The registry refused or lacks what was asked (no champion to roll back to, …)."""

    code = "registry_error"
    http_status = 409


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def configure(settings: Settings) -> MlflowClient:
    """Point this process's MLflow at the settings' server; the client to use.

    The first call for a server checks that it answers, so a command fails in
    seconds with a one-line :class:`~infra.errors.StackError` instead of riding
    MLflow's retries for minutes.
    """
    _quiet_mlflow()
    if settings.mlflow_uri not in _ANSWERED:
        _check_answers(settings.mlflow_uri)
        _ANSWERED.add(settings.mlflow_uri)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(settings.mlflow_uri, settings.mlflow_uri)


_ANSWERED: set[str] = set()
_HEALTH_TIMEOUT_S: Final = 5.0


def _check_answers(uri: str) -> None:
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=_HEALTH_TIMEOUT_S)
    except httpx.HTTPError as error:
        hint = "is `tributary up` running?"
        raise StackError(f"MLflow at {uri} does not answer ({error}); {hint}") from error
    if response.status_code != 200:
        raise StackError(f"MLflow at {uri} answered /health with {response.status_code}")


class _DropCloudPickleNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "CloudPickle" not in record.getMessage()


@cache
def _quiet_mlflow() -> None:
    """Our commands report versions and runs themselves: no URLs on stdout, no INFO chatter.

    Pickling the scorer is deliberate (the model class ships with the package), so
    MLflow's notice about it on every log is dropped too.
    """
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # a server that went away mid-command: fail within a minute, not after seven retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    logger = logging.getLogger("mlflow")
    if logger.level in (logging.NOTSET, logging.INFO, logging.DEBUG):
        logger.setLevel(logging.WARNING)
    logging.getLogger("mlflow.pyfunc").addFilter(_DropCloudPickleNotice())


def experiment_name(settings: Settings) -> str:
    return settings.registered_model_name


@cache
def git_revision() -> str:
    """The checkout's commit, with ``-dirty`` when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def runtime_requirements() -> list[str]:
    """Pinned requirements for loading a model: the packages scoring imports."""
    pins = []
    for name in _RUNTIME_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # a package this install lacks
            continue
    return pins


def pip_freeze() -> str:
    """Every installed distribution and version, as ``pip freeze`` would list them."""
    lines = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def log_recommender(
    settings: Settings,
    model: RecommenderModel,
    *,
    input_example: pd.DataFrame,
    delta_versions: Mapping[str, int],
    tags: Mapping[str, str] | None = None,
) -> RegisteredVersion:
    """Log ``model`` in the active run and register it as a new version.

    Must run inside ``mlflow.start_run()``; the run gets the same lineage tags.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_recommender needs an active MLflow run")
    lineage = lineage_tags(delta_versions, model.kind)
    all_tags = {**lineage, **(tags or {})}
    mlflow.set_tags(all_tags)
    mlflow.log_text(pip_freeze(), "environment/pip-freeze.txt")
    info = mlflow.pyfunc.log_model(
        name=MODEL_PATH,
        python_model=model,
        signature=signature(),
        input_example=input_example,
        pip_requirements=runtime_requirements(),
    )
    client = configure(settings)
    name = settings.registered_model_name
    _ensure_registered_model(client, name)
    # the client call, unlike mlflow.register_model, prints nothing
    created = client.create_model_version(
        name, info.model_uri, run_id=run.info.run_id, tags=all_tags, model_id=info.model_id
    )
    return RegisteredVersion(name, int(created.version), run.info.run_id, all_tags)


def lineage_tags(delta_versions: Mapping[str, int], kind: str) -> dict[str, str]:
    """Version tags naming what a model was trained from.

    >>> lineage_tags({"bronze/events": 3}, "torch")["delta.bronze/events"]
    '3'
    """
    tags = {f"delta.{table}": str(number) for table, number in sorted(delta_versions.items())}
    tags.update(
        {
            "feature_set_version": str(FEATURE_SET_VERSION),
            "git_revision": git_revision(),
            "model_kind": kind,
        }
    )
    return tags


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile by another process


class Registry:
    """Aliases and tags of ``plant-recommender`` versions in one MLflow server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = configure(settings)
        self.name = settings.registered_model_name

    def version(self, number: int) -> RegisteredVersion:
        try:
            found = self.client.get_model_version(self.name, str(number))
        except MlflowException:
            raise NotFoundError(f"{self.name} has no version {number}") from None
        return _registered(found)

    def alias(self, alias: str) -> RegisteredVersion | None:
        try:
            return _registered(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def latest(self, **tags: str) -> RegisteredVersion | None:
        """The newest version whose tags include ``tags``."""
        query = " and ".join([f"name = '{self.name}'"] + [
            f"tags.`{key}` = '{value}'" for key, value in tags.items()
        ])  # fmt: skip
        try:
            found = self.client.search_model_versions(
                query, order_by=["version_number DESC"], max_results=1
            )
        except MlflowException:
            return None
        return _registered(found[0]) if found else None

    def set_tags(self, number: int, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(number), key, value)

    def set_alias(self, alias: str, number: int) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(number))

    def make_champion(self, number: int) -> int | None:
        """Point ``champion`` at ``number``; record and return the one it replaces."""
        previous = self.alias(CHAMPION)
        if previous is not None and previous.version != number:
            history = [*self.champion_history(), previous.version][-_HISTORY_KEPT:]
            self.client.set_registered_model_tag(self.name, PREVIOUS_TAG, json.dumps(history))
        self.set_alias(CHAMPION, number)
        return None if previous is None else previous.version

    def rollback(self) -> tuple[int, int]:
        """Restore the previous champion; returns (from version, to version)."""
        current = self.alias(CHAMPION)
        history = self.champion_history()
        if current is None or not history:
            raise RegistryError(f"{self.name} has no previous champion to roll back to")
        target = history.pop()
        self.client.set_registered_model_tag(self.name, PREVIOUS_TAG, json.dumps(history))
        self.set_alias(CHAMPION, target)
        self.set_tags(target, {"rolled_back_from": str(current.version)})
        return current.version, target

    def champion_history(self) -> list[int]:
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException:
            return []
        raw = model.tags.get(PREVIOUS_TAG)
        return [int(v) for v in json.loads(raw)] if raw else []

    def load(self, number: int) -> RecommenderModel:
        """The version's :class:`RecommenderModel`, unwrapped from its pyfunc."""
        return load_model(self.version(number).uri)


def load_model(uri: str) -> RecommenderModel:
    """Load a registered model URI (``models:/name/3``, ``models:/name@champion``)."""
    try:
        loaded: Any = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        raise NotFoundError(f"cannot load {uri}: {error.message}") from error
    model = loaded.unwrap_python_model()
    if not isinstance(model, RecommenderModel):
        raise RegistryError(f"{uri} is not a plant-recommender model")
    return model


def _registered(found: ModelVersion) -> RegisteredVersion:
    return RegisteredVersion(
        name=found.name, version=int(found.version), run_id=found.run_id or "",
        tags=dict(found.tags or {}),
    )  # fmt: skip
