"""``POST /alertmanager``: a firing retrain alert becomes one ``ml.retrain`` request.

Alertmanager routes the alerts labelled ``retrain="true"`` to the retrain
worker's webhook receiver. Each notification (webhook body version 4) is
validated; every *firing* alert with that label becomes a
:class:`~training.retrain_request.RetrainRequest` carrying the alert as
evidence and its incident id (fingerprint + ``startsAt``). Resolved alerts are
ignored. :mod:`training.incidents` makes sure each incident is produced once.

The answer tells Alertmanager what to do: 200 when every request is in Kafka
(or was already), 503 when Redis or Kafka failed, so it retries and nothing is
lost, 400 for a body it should not resend, 401 for an untrusted sender, 413
for an oversized body. Unknown fields are ignored rather than refused:
Alertmanager adds fields without changing the version, and a 4xx would drop
the incident for good.

>>> note = AlertmanagerNotification.model_validate_json(SAMPLE, strict=True)
>>> request = request_for(note.alerts[0], datetime(2026, 12, 2, 12, tzinfo=UTC))
>>> request.reason
'TributaryFeatureDrift on model v3, feature user_clicks_1h: psi = 0.31 (threshold 0.2, window 5m)'
>>> request.incident
'e63a8a0bf76675b5@2026-12-02T11:45:53.195141Z'
>>> request.evidence.expression
'psi >= 0.2'
"""

from __future__ import annotations

import hmac
import logging
import math
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Final, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis import RedisError

from infra.settings import Settings
from training.incidents import Claim, PublishError
from training.retrain_request import RetrainEvidence, RetrainRequest, incident_id
from training.webhook import Reply

_LOG = logging.getLogger("training.alert_receiver")
ALERT_PATH: Final = "/alertmanager"
MAX_BODY: Final = 1024 * 1024
RETRAIN_LABEL: Final = "retrain"
KIND_LABEL: Final = "retrain_kind"
_OWN_LABELS: Final = frozenset({"alertname", "severity", RETRAIN_LABEL, "model_version", "feature"})
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
ALERTS = Counter(
    "tributary_retrain_alerts",
    "Alerts Alertmanager delivered to the retrain worker, by what became of them.",
    ["outcome"],
)
SAMPLE: Final = (
    '{"receiver":"tributary-retrain","status":"firing","alerts":[{"status":"firing",'
    '"labels":{"alertname":"TributaryFeatureDrift","feature":"user_clicks_1h",'
    '"model_version":"3","retrain":"true","severity":"warning"},"annotations":'
    '{"metric":"psi","summary":"PSI is 0.31","threshold":"0.2","value":"0.31","window":"5m"},'
    '"startsAt":"2026-12-02T11:45:53.195141865Z","endsAt":"0001-01-01T00:00:00Z",'
    '"generatorURL":"http://127.0.0.1:19090/graph?g0.expr=psi+%3E%3D+0.2\\u0026g0.tab=1",'
    '"fingerprint":"e63a8a0bf76675b5"}],"groupLabels":{},"commonLabels":{},'
    '"commonAnnotations":{},"externalURL":"http://vm:45077","version":"4",'
    '"groupKey":"{}:{}","truncatedAlerts":0}'
)


class AlertmanagerAlert(BaseModel):
    """One alert of a notification, as Alertmanager 0.25 sends it."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = Field(pattern=r"^[0-9a-f]{8,64}$")

    @property
    def incident(self) -> str:
        return incident_id(self.fingerprint, self.starts_at)

    @property
    def wants_retrain(self) -> bool:
        return self.status == "firing" and self.labels.get(RETRAIN_LABEL) == "true"


class AlertmanagerNotification(BaseModel):
    """A webhook body, version 4 (the only one Alertmanager has sent since 0.16)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str
    group_key: str = Field(alias="groupKey")
    group_labels: dict[str, str] = Field(alias="groupLabels")
    common_labels: dict[str, str] = Field(alias="commonLabels")
    common_annotations: dict[str, str] = Field(alias="commonAnnotations")
    external_url: str = Field(alias="externalURL")
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    alerts: list[AlertmanagerAlert] = Field(max_length=10_000)


def evidence_of(alert: AlertmanagerAlert) -> RetrainEvidence:
    """What the alert says, clipped to the evidence's limits (a long text never refuses it)."""
    labels, notes = alert.labels, alert.annotations
    expression = _expression(alert.generator_url)
    version = labels.get("model_version", "")
    others = {k[:100]: v[:200] for k, v in sorted(labels.items()) if k not in _OWN_LABELS}
    return RetrainEvidence(
        alert=(labels.get("alertname") or "unnamed")[:200],
        severity=_clip(labels.get("severity"), 50),
        metric=_clip(notes.get("metric") or expression, 1_000),
        expression=_clip(expression, 1_000),
        value=_number(notes.get("value")),
        threshold=_number(notes.get("threshold")),
        window=_clip(notes.get("window") or labels.get("window"), 100),
        window_end=_moment(notes.get("window_end")),
        model_version=int(version) if version.isdigit() and int(version) > 0 else None,
        feature=_clip(labels.get("feature"), 200),
        summary=_clip(notes.get("summary"), 500),
        fingerprint=alert.fingerprint,
        starts_at=alert.starts_at,
        generator_url=_clip(alert.generator_url or None, 2_000),
        labels=dict(list(others.items())[:20]),
    )  # fmt: skip


def reason_of(evidence: RetrainEvidence) -> str:
    """One line for people: which alert, on what, how far over the line."""
    where = "".join([
        f" on model v{evidence.model_version}" if evidence.model_version else "",
        f", feature {evidence.feature}" if evidence.feature else "",
    ])  # fmt: skip
    numbers = []
    if evidence.threshold is not None:
        numbers.append(f"threshold {evidence.threshold:g}")
    if evidence.window:
        numbers.append(f"window {evidence.window}")
    measured = ""
    if evidence.value is not None:
        name = evidence.metric if evidence.metric and len(evidence.metric) <= 80 else "value"
        measured = f": {name} = {evidence.value:g}"
    elif evidence.summary:
        measured = f": {evidence.summary}"
    extra = f" ({', '.join(numbers)})" if numbers else ""
    return f"{evidence.alert}{where}{measured}{extra}"[:500]


def request_for(alert: AlertmanagerAlert, now: datetime) -> RetrainRequest:
    """The ``ml.retrain`` request one firing alert becomes."""
    evidence = evidence_of(alert)
    kind = alert.labels.get(KIND_LABEL)
    return RetrainRequest(
        reason=reason_of(evidence),
        kind="river" if kind == "river" else "torch",
        requested_at=now,
        evidence=evidence,
        incident=alert.incident,
    )


def _expression(generator_url: str) -> str | None:
    """The PromQL expression Prometheus puts in an alert's generator URL."""
    found = parse_qs(urlsplit(generator_url).query).get("g0.expr")
    return found[0] if found else None


def _number(text: str | None) -> float | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _moment(text: str | None) -> datetime | None:
    """A Unix time in seconds, as the rules' ``window_end`` annotation carries it."""
    seconds = _number(text)
    if seconds is None or not 0 < seconds < 1e11:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


class Ledger(Protocol):
    """What the receiver needs of :class:`training.incidents.IncidentLedger`."""

    def claim(self, incident: str) -> tuple[Claim, str]: ...
    def mark_sent(self, incident: str) -> None: ...
    def release(self, incident: str, token: str) -> None: ...


class Publisher(Protocol):
    """What the receiver needs of :class:`training.incidents.RetrainPublisher`."""

    def publish(self, key: bytes, value: bytes) -> None: ...


class IncidentBusyError(Exception):
    """Another delivery is producing this incident right now."""


class AlertReceiver:
    """The ``/alertmanager`` route of the retrain worker's webhook receiver."""

    max_body = MAX_BODY

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.publisher = publisher
        self.clock = clock or (lambda: datetime.now(UTC))
        secret = settings.training.webhook_secret
        self.secret = None if secret is None else secret.get_secret_value()

    def trusted(self, headers: Mapping[str, str], client: str) -> bool:
        """A bearer token equal to the shared secret; without a secret, loopback only."""
        if self.secret is None:
            return client in _LOOPBACK
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.secret}".encode())

    def accept(self, headers: Mapping[str, str], body: bytes, client: str) -> Reply:
        """Decide on one notification; public so it can be tested without sockets."""
        if not self.trusted(headers, client):
            ALERTS.labels("unauthorized").inc()
            message = "send the shared secret as a bearer token (or deliver from loopback)"
            return Reply.error(HTTPStatus.UNAUTHORIZED, "unauthorized", message)
        try:
            note = AlertmanagerNotification.model_validate_json(body, strict=True)
        except ValidationError as error:
            ALERTS.labels("invalid").inc()
            return Reply.error(HTTPStatus.BAD_REQUEST, "invalid_payload", _first(error))
        return self._deliver_all(note)

    def _deliver_all(self, note: AlertmanagerNotification) -> Reply:
        tally: Tally[str] = Tally()
        for alert in note.alerts:
            try:
                outcome = self.deliver(alert) if alert.wants_retrain else "ignored"
            except (RedisError, PublishError, IncidentBusyError) as error:
                ALERTS.labels("failed").inc()
                _LOG.warning("alert %s not delivered yet: %s", alert.incident, error)
                message = f"incident {alert.incident} not delivered: {error}"
                return Reply.error(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", message)
            ALERTS.labels(outcome).inc()
            tally[outcome] += 1
        return Reply(HTTPStatus.OK, {"sent": tally["sent"], "duplicates": tally["duplicate"],
                                     "ignored": tally["ignored"]})  # fmt: skip

    def deliver(self, alert: AlertmanagerAlert) -> Literal["sent", "duplicate"]:
        """Produce the alert's request unless its incident was produced already."""
        request = request_for(alert, self.clock())
        incident = alert.incident
        claim, token = self.ledger.claim(incident)
        if claim == "sent":
            return "duplicate"
        if claim == "busy":
            raise IncidentBusyError("another delivery is producing it now")
        if claim == "retaken":
            _LOG.warning("incident %s was left pending: producing it again", incident)
        try:
            self.publisher.publish(alert.fingerprint.encode(), request.model_dump_json().encode())
        except PublishError:
            self.ledger.release(incident, token)
            raise
        self.ledger.mark_sent(incident)
        _LOG.info("ml.retrain for incident %s: %s", incident, request.reason)
        return "sent"


def _first(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem.get("loc", ()))
    # loc and msg only: the input may hold anything the sender put there
    return f"{where}: {problem['msg']}"[:500] if where else str(problem["msg"])[:500]
