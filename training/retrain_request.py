"""The ``ml.retrain`` message: what to retrain, why, and the evidence behind it.

A person or a script sends ``{"reason": ..., "kind": ..., "window_days": ...}``;
Alertmanager's webhook (:mod:`training.alert_receiver`) adds the alert's
``evidence`` and an ``incident`` id, so the version trained for it can say why
it exists. Both fields are optional: messages written before they existed
still parse.

>>> old = RetrainRequest.model_validate_json('{"reason": "drift", "kind": "river"}')
>>> old.evidence is None and old.incident is None
True
>>> starts = datetime(2026, 12, 2, 11, 45, 53, 195141, tzinfo=UTC)
>>> incident_id("e63a8a0bf76675b5", starts)
'e63a8a0bf76675b5@2026-12-02T11:45:53.195141Z'
>>> sorted(retrain_tags(RetrainRequest(reason="by hand")))
['retrain_reason']
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

# a fingerprint (hex), "@", then the alert's startsAt in UTC with microseconds
INCIDENT_PATTERN: Final = r"^[0-9a-f]{8,64}@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
REASON_TAG: Final = "retrain_reason"
INCIDENT_TAG: Final = "retrain_incident"
EVIDENCE_TAG: Final = "retrain_evidence"
REQUESTED_AT_TAG: Final = "retrain_requested_at"


class RetrainEvidence(BaseModel):
    """Why a retrain was asked for: one firing alert, as Alertmanager reported it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    source: Literal["alertmanager"] = "alertmanager"
    alert: str = Field(min_length=1, max_length=200)
    severity: str | None = Field(None, max_length=50)
    # the series that crossed the line: the rule's ``metric`` annotation, else the
    # expression Prometheus put in the generator URL
    metric: str | None = Field(None, max_length=1_000)
    expression: str | None = Field(None, max_length=1_000)
    value: float | None = None
    threshold: float | None = None
    window: str | None = Field(None, max_length=100)
    window_end: datetime | None = None
    model_version: int | None = Field(None, ge=1)
    feature: str | None = Field(None, max_length=200)
    summary: str | None = Field(None, max_length=500)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    starts_at: datetime
    generator_url: str | None = Field(None, max_length=2_000)
    # the alert's other labels (alertname, severity, retrain, model_version and
    # feature have fields of their own)
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)


class RetrainRequest(BaseModel):
    """One ``ml.retrain`` message."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reason: str = Field(min_length=1, max_length=500)
    kind: Literal["torch", "river"] = "torch"
    window_days: float | None = Field(None, gt=0, le=30)
    requested_at: datetime | None = None
    evidence: RetrainEvidence | None = None
    incident: str | None = Field(None, pattern=INCIDENT_PATTERN)


def incident_id(fingerprint: str, starts_at: datetime) -> str:
    """One incident: an alert's fingerprint and when it started firing.

    Alertmanager repeats a notification with the same pair every
    ``repeat_interval``; an alert that resolves and fires again starts anew.
    """
    moment = starts_at.astimezone(UTC)
    return f"{fingerprint}@{moment:%Y-%m-%dT%H:%M:%S.%f}Z"


def retrain_tags(request: RetrainRequest) -> dict[str, str]:
    """The tags a version trained for ``request`` carries (run and registry)."""
    tags = {REASON_TAG: request.reason}
    if request.incident is not None:
        tags[INCIDENT_TAG] = request.incident
    if request.evidence is not None:
        tags[EVIDENCE_TAG] = request.evidence.model_dump_json(exclude_none=True)
    if request.requested_at is not None:
        tags[REQUESTED_AT_TAG] = request.requested_at.isoformat()
    return tags
