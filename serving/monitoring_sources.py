"""The dashboard's other two sources: Prometheus (alerts, DLQ rate) and the model registry.

Both answer with a panel that says what went wrong instead of raising: the
dashboard shows "Prometheus unreachable" or "registry unreachable" in place of
those panels and keeps drawing the rest. Prometheus is asked over its HTTP API
(``/api/v1/alerts``, ``/api/v1/query_range``, ``/api/v1/query``) with a short
timeout; the registry read is blocking (MLflow's client) and runs in a thread.

>>> alert = alert_info({"labels": {"alertname": "TributaryFeatureDrift",
...     "severity": "warning", "feature": "price", "model_version": "3"},
...     "annotations": {"summary": "price drifted"}, "state": "firing",
...     "activeAt": "2026-12-02T10:00:00Z", "value": "3.1e-01"})
>>> alert.name, alert.feature, alert.value
('TributaryFeatureDrift', 'price', 0.31)
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import httpx
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field

from infra.settings import Settings
from training.registry import CHALLENGER, CHAMPION, PREVIOUS_TAG, configure
from training.retrain_request import EVIDENCE_TAG, REASON_TAG
from training.retrainer import LAST_RETRAIN_TAG

PROMETHEUS_TIMEOUT_S: Final = 2.0
MAX_VERSIONS: Final = 30
DLQ_RATE_THRESHOLD: Final = 0.01  # the DLQ-rate alert's 1 %


def dlq_rate_query(profile: str) -> str:
    """Rejected / read per flow of ``profile``; flows without rejects get a line at 0.

    >>> print(dlq_rate_query("dev"))  # doctest: +NORMALIZE_WHITESPACE
    (sum by (flow) (rate(tributary_flow_rejects_total{profile=~"dev|"}[5m]))
     or 0 * sum by (flow) (rate(tributary_flow_events_in_total{profile=~"dev|"}[5m])))
     / sum by (flow) (rate(tributary_flow_events_in_total{profile=~"dev|"}[5m]))
    """
    rejects = f"sum by (flow) (rate(tributary_flow_rejects_total{_of(profile)}[5m]))"
    read = f"sum by (flow) (rate(tributary_flow_events_in_total{_of(profile)}[5m]))"
    return f"({rejects}\n or 0 * {read})\n / {read}"


def retrain_runs_query(profile: str, seconds: int) -> str:
    """Retrain and gate jobs by outcome over the last ``seconds``."""
    runs = f"tributary_retrain_runs_total{_of(profile)}"
    return f"sum by (outcome) (increase({runs}[{seconds}s]))"


def _of(profile: str) -> str:
    # flows and workers found by file discovery carry ``profile``; static targets do not
    return f'{{profile=~"{profile}|"}}'


class AlertInfo(BaseModel):
    """One alert Prometheus holds (firing, or pending its ``for`` duration)."""

    name: str
    state: str
    severity: str | None = None
    model_version: str | None = None
    feature: str | None = None
    summary: str | None = None
    description: str | None = None
    runbook_url: str | None = None
    active_at: str | None = None
    value: float | None = None
    retrain: bool = False


class RateSeries(BaseModel):
    name: str
    x: list[str]
    y: list[float | None]


class PrometheusPanel(BaseModel):
    available: bool
    message: str | None = None
    url: str
    alerts: list[AlertInfo] = Field(default_factory=list)
    dlq_rate: list[RateSeries] = Field(default_factory=list)
    dlq_threshold: float = DLQ_RATE_THRESHOLD
    retrain_runs: dict[str, float] = Field(default_factory=dict)


class VersionInfo(BaseModel):
    """A registered version, its aliases and why it exists (its tags)."""

    version: int
    created_at: str | None = None
    aliases: list[str] = Field(default_factory=list)
    kind: str | None = None
    gates: str | None = None
    gates_passed: int = 0
    gates_total: int = 0
    promoted_at: str | None = None
    rolled_back_from: str | None = None
    retrain_reason: str | None = None
    retrain_evidence: Any = None


class RegistryPanel(BaseModel):
    available: bool
    message: str | None = None
    model: str
    champion: int | None = None
    challenger: int | None = None
    previous_champions: list[int] = Field(default_factory=list)
    versions: list[VersionInfo] = Field(default_factory=list)
    last_retrain: dict[str, Any] | None = None


# -- Prometheus ------------------------------------------------------------------


class PrometheusReader:
    """Alerts, DLQ rate and retrain outcomes from the Prometheus at ``url``."""

    def __init__(
        self, url: str, profile: str = "dev", timeout_s: float = PROMETHEUS_TIMEOUT_S
    ) -> None:
        self.url = url.rstrip("/")
        self.profile = profile
        self.timeout_s = timeout_s

    async def read(self, hours: float, now: float | None = None) -> PrometheusPanel:
        end = time.time() if now is None else now
        start = end - hours * 3600
        step = max(15, math.ceil(hours * 3600 / 240))
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s) as client:
                alerts, dlq, runs = await asyncio.gather(
                    _api(client, "/api/v1/alerts", {}),
                    _api(client, "/api/v1/query_range", {
                        "query": dlq_rate_query(self.profile), "start": start, "end": end,
                        "step": step,
                    }),
                    _api(client, "/api/v1/query",
                         {"query": retrain_runs_query(self.profile, math.ceil(hours * 3600))}),
                )  # fmt: skip
        except httpx.TransportError as error:
            reason = str(error) or type(error).__name__
            message = f"Prometheus unreachable at {self.url}: {reason}"
            return PrometheusPanel(available=False, message=message, url=self.url)
        except PrometheusAnswerError as error:
            message = f"Prometheus at {self.url} failed: {error}"
            return PrometheusPanel(available=False, message=message, url=self.url)
        return PrometheusPanel(
            available=True,
            url=self.url,
            alerts=sorted(
                (alert_info(a) for a in alerts.get("alerts", []) if self._ours(a)),
                key=_alert_order,
            ),
            dlq_rate=[_rate_series(found) for found in dlq.get("result", [])],
            retrain_runs={
                str(r["metric"].get("outcome", "")): _sample(r["value"][1]) or 0.0
                for r in runs.get("result", [])
            },
        )

    def _ours(self, alert: dict[str, Any]) -> bool:
        """Alerts of this profile's processes, and of targets that name no profile."""
        profile: str = alert.get("labels", {}).get("profile", self.profile)
        return profile == self.profile


class PrometheusAnswerError(Exception):
    """Prometheus answered, but not with data (an error status, not JSON)."""


async def _api(client: httpx.AsyncClient, path: str, params: dict[str, Any]) -> dict[str, Any]:
    response = await client.get(path, params=params)
    try:
        body = response.json()
    except ValueError:
        raise PrometheusAnswerError(f"{path} answered {response.status_code}, not JSON") from None
    if response.status_code != 200 or body.get("status") != "success":
        raise PrometheusAnswerError(f"{path} answered {response.status_code}: {body.get('error')}")
    data: dict[str, Any] = body.get("data") or {}
    return data


def alert_info(alert: dict[str, Any]) -> AlertInfo:
    """The parts of one ``/api/v1/alerts`` entry the dashboard shows."""
    labels, notes = alert.get("labels", {}), alert.get("annotations", {})
    return AlertInfo(
        name=labels.get("alertname", "?"),
        state=alert.get("state", "?"),
        severity=labels.get("severity"),
        model_version=labels.get("model_version"),
        feature=labels.get("feature"),
        summary=notes.get("summary"),
        description=notes.get("description"),
        runbook_url=notes.get("runbook_url"),
        active_at=alert.get("activeAt"),
        value=_sample(alert.get("value")),
        retrain=labels.get("retrain") == "true",
    )


def _alert_order(alert: AlertInfo) -> tuple[int, int, str]:
    return (alert.state != "firing", alert.severity != "critical", alert.name)


def _rate_series(found: dict[str, Any]) -> RateSeries:
    points = found.get("values", [])
    return RateSeries(
        name=str(found.get("metric", {}).get("flow", "all")),
        x=[_iso(float(t)) for t, _ in points],
        y=[_sample(v) for _, v in points],
    )


def _sample(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return float(f"{number:.6g}") if math.isfinite(number) else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the registry ----------------------------------------------------------------


class MlflowRegistryReader:
    """The registered model's aliases, champion history and versions, from MLflow."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def read(self) -> RegistryPanel:
        name = self.settings.registered_model_name
        try:
            return read_registry(configure(self.settings), name)
        except Exception as error:  # whatever MLflow raises, the page shows it and goes on
            reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            return RegistryPanel(available=False, model=name, message=f"registry: {reason}")


def read_registry(client: MlflowClient, name: str) -> RegistryPanel:
    """Read ``name``'s aliases, tags and newest versions (blocking)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return RegistryPanel(available=True, model=name, message=f"no {name} registered yet")
    found = client.search_model_versions(
        f"name = '{name}'", order_by=["version_number DESC"], max_results=MAX_VERSIONS
    )
    aliases = {alias: int(number) for alias, number in (model.aliases or {}).items()}
    tags = dict(model.tags or {})
    return RegistryPanel(
        available=True,
        model=name,
        champion=aliases.get(CHAMPION),
        challenger=aliases.get(CHALLENGER),
        previous_champions=[int(v) for v in json.loads(tags.get(PREVIOUS_TAG) or "[]")],
        versions=[version_info(v, aliases) for v in found],
        last_retrain=_json_object(tags.get(LAST_RETRAIN_TAG)),
        message=None if found else f"{name} has no versions yet",
    )


def version_info(found: ModelVersion, aliases: Mapping[str, int] | None = None) -> VersionInfo:
    """What the dashboard shows of one version: its aliases, gates and retrain evidence.

    Searches do not fill a version's aliases: ``aliases`` (the registered
    model's, alias → version) adds them.
    """
    tags = dict(found.tags or {})
    number = int(found.version)
    held = {a for a, v in (aliases or {}).items() if v == number} | set(found.aliases or [])
    gates = [v for k, v in tags.items() if k.startswith("gate.") and not k.endswith(".detail")]
    evidence = tags.get(EVIDENCE_TAG)
    created = found.creation_timestamp
    return VersionInfo(
        version=number,
        created_at=None if not created else _iso(created / 1000),
        aliases=sorted(held),
        kind=tags.get("model_kind"),
        gates=tags.get("gates"),
        gates_passed=sum(v == "pass" for v in gates),
        gates_total=len(gates),
        promoted_at=tags.get("promoted_at"),
        rolled_back_from=tags.get("rolled_back_from"),
        retrain_reason=tags.get(REASON_TAG),
        retrain_evidence=_json_object(evidence) or evidence,
    )


def _json_object(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
